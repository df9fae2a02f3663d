r"""LSTM layer (optionally with projection), both directions: the buffers around the time loop,
the hoisted input part, and the weight gradients after BPTT.

What it must equal: :func:`unrolled.cells.lstm` at every step (its equations are stated
there, once), as :func:`unrolled.reference.run` loops it. Below, ``r = o tanh(c)`` is what
``W_hr`` multiplies (``h = r`` without projection) and ``d_pre`` is the gradient of the gates'
pre-activations; what the backward adds, per step ``s`` from the last:

.. math::
    d\_r &= d\_h_s \ \text{or}\ d\_h_s W_{hr}, \qquad
        dc \mathrel{+}= d\_r \, o (1 - \tanh^2 c_s) \\
    d\_pre_i &= dc \, g \, i (1 - i), \quad d\_pre_f = dc \, c_{s-1} f (1 - f), \quad
        d\_pre_g = dc \, i (1 - g^2), \quad d\_pre_o = d\_r \tanh(c_s) \, o (1 - o) \\
    dc &\leftarrow dc \, f \ \text{(the gradient of } c_{s-1}\text{)}, \qquad
        d\_h_{s-1} \mathrel{+}= d\_pre_s W_{hh}

and then, over all steps at once: :math:`d\_W_{ih} = \sum_s d\_pre_s^T x_s`, :math:`d\_W_{hh}
= \sum_s d\_pre_s^T h_{s-1}`, :math:`d\_b_{ih} = d\_b_{hh} = \sum_s d\_pre_s`, :math:`d\_W_{hr}
= \sum_s d\_h_s^T r_s`.

The time loop itself is ``plan.loops.lstm_forward`` / ``lstm_backward``: the native C++ loop
(``native/lstm.cpp``) or the same loop in torch ops (``loops/lstm.py``), whichever the layer's
plan chose in the forward (:func:`unrolled.backends.plan`); the backward runs the plan's loop,
never another one. Both keep the buffers below, so either could back-propagate the other's
forward (``tests/test_loop_contract.py`` checks exactly that).

**The LSTM buffer contract.** Packed step-major (see :mod:`.layer`: step ``s``'s
``rows_s = batch_sizes[s]`` rows at row ``offset[s]`` of an ``(N, X)`` buffer, states ``(B + N,
X)`` with the initial state first), torch's gate order ``(i, f, g, o)`` and torch's own weights,
every buffer contiguous:

==============  ================  ==========================================================
buffer          shape             holds
==============  ================  ==========================================================
gates           (D, N, 4H)        forward in: ``x_s W_ih^T`` (the hoisted input part, no
                                  bias); forward out (``keep``): ``i, f, g, o`` activated
                                  (``g = tanh``), without ``keep``: scratch. Backward out:
                                  ``d_pre``, when the caller passes ``gates`` as ``d_pre``
bias            (D, 4H) or empty  ``b_ih + b_hh``, added in the step's elementwise pass
w_rec           D x (P, 4H)       forward: ``W_hh^T`` (a view or a row-major copy)
                D x (4H, P)       backward: ``W_hh``
w_proj          D x (H, P)        forward: ``W_hr^T``; backward D x ``(P, H)``: ``W_hr``;
                                  an empty list without projection (the weights are per
                                  direction: a stacked copy would show in peak memory)
cs              (D, B + N, H)     ``c_0``, then each step's ``c_s``; ``(D, B, H)``, one reused
                                  slot, when nothing reads the cells afterwards (a row that
                                  stops keeps its last cell: the slot ends holding ``c_n``)
hs              (D, B + N, P)     ``h_0``, then each step's ``h_s``
d_h             (D, N, P)         backward in: the gradient reaching each ``h_s`` from the
                                  output and ``h_n``; out: all of ``h_s``'s gradient
dc              (D, B, H)         backward in: ``d_c_n`` (a row is first touched at its last
                                  step, where its ``c_n`` gradient enters); out: ``d_c_0``
d_pre           (D, N, 4H)        backward out: the gradient of each gate's pre-activation,
                                  torch's order (may be ``gates`` itself)
r               (D, N, H)         backward out, with projection: ``o tanh(c)``, what W_hr
                or empty          multiplied
batch_sizes     T ints            rows per step, non-increasing (``[B] * T``: a full batch)
inputs, w_in    D x (N, I),       forward, given exactly with ``fused``: the packed
                D x (4H, I)       step-major layer input and ``W_ih``; the loop computes the
                                  input part itself and ``gates`` holds nothing on entry
                                  (without ``keep`` it may be empty). Otherwise ``gates``
                                  holds the input part
==============  ================  ==========================================================

``packed`` (forward) asks the native loop for MKL's packed GEMM on ``W_hh`` (float32, full
batch); ``fused`` (forward and backward) for the fused engine (no projection); the Python loop
computes the same products with plain GEMMs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..weights import LayerWeights
from .layer import (
    Steps,
    Wanted,
    hand_written_backward,
    project,
    remember,
    unbatched_flat_weights,
)
from .masks import StepMasks, per_state_row

if TYPE_CHECKING:
    from ..backends import Plan


def lstm_layer_forward(
    plan: Plan,
    num_directions: int,
    steps: Steps,
    x,
    h0,
    c0,
    flat,
    keep: bool = False,
    masks: StepMasks | None = None,
):
    """One layer, ``D`` directions, on the packed layer input ``x (N, I)``; ``masks``: its
    recurrent dropout and zoneout (no projection, not ``plan.fused``).

    Returns ``(output (N, D*P), h_n (D, B, P), c_n (D, B, H), (gates, cs, hs))``, the buffers
    as the contract above leaves them. Without ``keep`` (nothing will be differentiated) only
    what the outputs need is kept.
    """
    weights = unbatched_flat_weights(flat, num_directions)
    batch, rows = steps.batch, steps.total
    hidden, out_size = c0.shape[-1], h0.shape[-1]
    zoned = masks is not None and masks.zoned  # zoneout reads c_{s-1} after c~_s is made
    every_cell = keep or zoned
    cs = x.new_empty(num_directions, batch + rows if every_cell else batch, hidden)  # (D, B+N, H)
    hs = x.new_empty(num_directions, batch + rows, out_size)  # (D, B + N, P)
    cs[:, :batch] = c0
    hs[:, :batch] = h0
    none = x.new_empty(0)
    inputs = steps.directions(x, num_directions)  # D x (N, I), packed step-major
    w_ih = [w.w_ih for w in weights]
    if plan.fused:  # the fused engine multiplies [x_s, h_{s-1}] by [W_ih; W_hh]^T per tile
        gates = x.new_empty(num_directions, rows, 4 * hidden) if keep else none
        step_inputs = [seq.contiguous() for seq in inputs]
    else:  # hoisted: one GEMM; the loop adds the bias in its elementwise pass (addmm would
        # first copy the bias into all N rows)
        gates = project(inputs, w_ih, [None] * num_directions)  # (D, N, 4H)
        step_inputs = w_ih = []
    bias = none if weights[0].b_ih is None else torch.stack([w.b_ih + w.b_hh for w in weights])
    w_rec = [plan.arrange(w.w_hh.t()) for w in weights]  # D x (P, 4H)
    w_proj = []
    if weights[0].w_hr is not None:  # D x W_hr^T (H, P)
        w_proj = [plan.arrange(w.w_hr.t()) for w in weights]
    plan.loops.lstm_forward(
        gates,
        bias,
        w_rec,
        w_proj,
        cs,
        hs,
        steps.sizes,
        keep,
        plan.packed_gemm,
        plan.fused,
        step_inputs,
        w_ih,
        *loop_masks(masks, none),
    )
    c_n = steps.final(cs) if every_cell else cs  # one slot, a buffer of its own, holds every c_n
    return steps.output(hs), steps.final(hs), c_n, (gates, cs, hs)


def loop_masks(masks: StepMasks | None, none: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The loops' ``drop, zone_h, zone_c`` arguments (an empty tensor for each unused one)."""
    if masks is None:
        return none, none, none
    fields = (masks.recurrent, masks.zone_h, masks.zone_c)
    return tuple(none if t is None else t for t in fields)


class LSTMLayer(torch.autograd.Function):
    """``(plan, D, steps, masks, x (N, I), h0 (D, B, P), c0 (D, B, H), *D x (w_ih, w_hh, b_ih,
    b_hh, w_hr)) -> (output (N, D*P), h_n (D, B, P), c_n (D, B, H))``."""

    @staticmethod
    def forward(ctx, plan, num_directions, steps, masks, x, h0, c0, *flat):
        output, h_n, c_n, buffers = lstm_layer_forward(
            plan, num_directions, steps, x, h0, c0, flat, keep=True, masks=masks
        )
        remember(ctx, plan, num_directions, steps, (x, h0, c0, *flat), masks)
        ctx.save_for_backward(x, h0, c0, *flat, *buffers)
        return output, h_n, c_n

    @staticmethod
    def backward(ctx, d_output, d_h_n, d_c_n):
        return hand_written_backward(ctx, (d_output, d_h_n, d_c_n), lstm_layer_backward)


def lstm_layer_backward(
    plan: Plan, num_directions: int, steps: Steps, inputs, buffers, grads, wanted: Wanted,
    reuse: bool = False, masks: StepMasks | None = None,
) -> tuple:  # fmt: skip
    """BPTT of one layer: the gradients of ``inputs (x, h0, c0, *flat)`` from ``grads
    (d_output, d_h_n, d_c_n)``, with the ``buffers (gates, cs, hs)`` its forward kept and its
    ``masks``.

    ``reuse``: nobody reads the buffers after this backward (the graph is released), so
    ``d_pre`` may overwrite the gates. Returns ``(d_x, d_h0, d_c0, weight_grads)``: each None
    where ``wanted`` says it is not needed, ``weight_grads`` ``D`` :class:`LayerWeights`.
    """
    d_output, d_h_n, d_c_n = grads
    x, h0, c0, *flat = inputs
    gates, cs, hs = buffers
    weights = unbatched_flat_weights(flat, num_directions)
    has_projection = weights[0].w_hr is not None
    none = x.new_empty(0)
    w_hh = [w.w_hh for w in weights]  # D x (4H, P)
    w_hr = [w.w_hr for w in weights] if has_projection else []  # D x (P, H)

    d_h = steps.step_major_grad(d_output, num_directions, d_h_n)  # (D, N, P)
    # A row's c_n gradient waits in dc until its last step, the first to touch the row.
    dc = d_c_n.clone(memory_format=torch.contiguous_format)  # (D, B, H)
    keep_r = has_projection and wanted.weights  # r = o tanh(c), what W_hr multiplied
    # No one reads the gates after this backward once the graph is released: d_pre overwrites
    # them (same shape), else it is a buffer of its own.
    d_pre = gates if reuse else torch.empty_like(gates)  # (D, N, 4H)
    r = torch.empty_like(gates[..., : cs.shape[-1]]) if keep_r else none  # (D, N, H)
    drop, zone_h, zone_c = loop_masks(masks, none)
    plan.loops.lstm_backward(
        gates, cs, d_h, dc, w_hh, w_hr, d_pre, r, steps.sizes, plan.fused, drop, zone_h, zone_c
    )
    d_h0 = None
    if wanted.h0:  # only the first step reads h_0, and all of it
        d_h0 = first_state_grad(steps, d_pre, w_hh, d_h, masks)  # (D, B, P)
    if wanted.weights:  # W_hh, W_hr and biases first: d_pre is handed over to the input side
        if masks is not None and masks.recurrent is not None:  # W_hh multiplied h * drop
            hs = hs * per_state_row(masks.recurrent, steps)  # (D, B + N, P)
        d_w_hh = [
            steps.sum_with_previous(d_pre[d], hs[d]) for d in range(num_directions)
        ]  # D x (4H, P)
        d_bias = d_pre.sum(1)  # (D, 4H)
        if has_projection:  # d_h holds all of each h_s's gradient now
            d_w_hr = d_h.transpose(1, 2).bmm(r)  # (D, P, N) @ (D, N, H)
    del d_h, r
    # Direction 0's rows are spent before the reverse direction is put back in time order: it
    # goes there, no new buffer.
    per_direction = list(d_pre.unbind(0))  # D x (N, 4H) views
    del d_pre
    w_ih = [w.w_ih for w in weights]  # D x (4H, I)
    scratch = per_direction[0] if num_directions == 2 else None
    d_x, d_w_ih = steps.input_side_grads(
        per_direction, x, w_ih, wanted.x, wanted.weights, scratch=scratch
    )  # (N, I), D x (4H, I)
    weight_grads = None
    if wanted.weights:
        weight_grads = [
            LayerWeights(
                w_ih=d_w_ih[d],
                w_hh=d_w_hh[d],
                b_ih=d_bias[d],
                b_hh=d_bias[d].clone(),
                w_hr=d_w_hr[d] if has_projection else None,
            )
            for d in range(num_directions)
        ]
    return d_x, d_h0, dc, weight_grads


def first_state_grad(steps: Steps, d_pre, w_hh, d_h, masks: StepMasks | None):
    """``d_h0 (D, B, P)``: the first step's ``d_pre_0 @ W_hh`` (through the recurrent dropout
    mask), plus, with zoneout, what ``h_0`` passed on directly, ``d^h_0 * d_h_0``."""
    directions, batch = d_pre.shape[0], steps.batch
    d_h0 = d_pre.new_empty(directions, batch, d_h.shape[-1])  # (D, B, P)
    for d in range(directions):
        torch.mm(d_pre[d, :batch], w_hh[d], out=d_h0[d])  # (B, 4H) @ (4H, P)
    if masks is None:
        return d_h0
    if masks.recurrent is not None:
        d_h0 *= masks.recurrent
    if masks.zoned:
        d_h0.addcmul_(masks.zone_h[:, :batch], d_h[:, :batch])
    return d_h0
