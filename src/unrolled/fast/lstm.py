r"""LSTM layer (optionally with projection), both directions at once: forward loop and BPTT.

.. math::
    o, i, f &= \sigma(\cdot),\ g = \tanh(\cdot)
        \quad\text{of}\quad W_{ih} x_s + b_{ih} + b_{hh} + W_{hh} h_{s-1} \\
    c_s &= f \odot c_{s-1} + i \odot g, \qquad
    r_s = o \odot \tanh(c_s), \qquad h_s = r_s \ \text{or}\ W_{hr} r_s

The time loop runs in C++ when the native loops are available (:mod:`.native`, on torch's own
weights and gate order ``(i, f, g, o)``: one vectorised pass per step does all the elementwise
math). The Python loops below are its specification and fallback, built from per-step torch
ops, and arrange the buffers for those ops instead:

The gate rows are reordered from torch's ``(i, f, g, o)`` to ``(o, i, f, g)``, so
that the backward finds the three gates that multiply ``dc`` (i, f, g) contiguous; gradients are
put back into torch's order at the end. The forward computes ``g`` as
``tanh(a) = 2 sigmoid(2a) - 1``: the g rows of the weights and bias are doubled (exact in floating
point), one sigmoid covers all four gates of a step, and the ``2s - 1`` folds into the cell
update. That avoids a tanh on a row-strided view, which is several times slower than anything
else in the step once torch runs two threads. The saved g block therefore holds ``s``; the
backward turns it back into ``g`` once for all steps.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import native
from .layer import (
    Timeline,
    project,
    reference_double_backward,
    remember,
    row_major,
    stack_directions,
    unbatched_flat_weights,
)

TO_OURS = [3, 0, 1, 2]  # torch's gate blocks (i, f, g, o) -> ours (o, i, f, g)
TO_TORCH = [1, 2, 3, 0]  # ours -> torch's


def reorder(rows: Tensor, order: list[int]) -> Tensor:
    """Permute the four H-row gate blocks of ``(4H, *)`` or ``(4H,)`` (a new tensor)."""
    return rows.unflatten(0, (4, -1))[order].flatten(0, 1)


def forward_rows(rows: Tensor) -> Tensor:
    """Torch's ``(4H, *)`` gate rows in our order, the g block doubled (see module doc)."""
    ours = reorder(rows, TO_OURS)
    ours[-(rows.shape[0] // 4) :] *= 2
    return ours


def lstm_layer_forward(
    mode: str, num_directions: int, timeline: Timeline, x, h0, c0, flat, keep: bool = False
):
    """One layer, ``D`` directions.

    Returns ``(output (T, B, D*P), h_n (D, B, P), c_n (D, B, H), (gates, cs, hs))`` with the
    step-major buffers ``gates (D, T, B, 4H)`` (activated: in the Python loops our order with
    the g block holding sigmoid(2a), in the native loop torch's order with g itself),
    ``cs (D, T+1, B, H)``
    and ``hs (D, T+1, B, P)`` (slot 0 the initial state). Without ``keep`` (nothing will be
    differentiated) only what the outputs need is kept. The loop runs in C++ when the native
    kernels are available (:mod:`.native`), else in per-step torch ops
    (:func:`python_forward_loop`).
    """
    weights = unbatched_flat_weights(flat, num_directions)
    num_steps, batch, _ = x.shape
    hidden, out_size = c0.shape[-1], h0.shape[-1]
    projected = weights[0][4] is not None
    w_hr_t = (
        stack_directions([w[4] for w in weights]).transpose(1, 2) if projected else None
    )  # (D, H, P)
    inputs = timeline.directions(x, num_directions)
    every_cell = keep or timeline.lengths is not None  # lengths: c_n is gathered afterwards
    cs = x.new_empty(num_directions, num_steps + 1 if every_cell else 1, batch, hidden)
    hs = x.new_empty(num_directions, num_steps + 1, batch, out_size)  # (D, T+1, B, P)
    cs[:, 0] = c0
    hs[:, 0] = h0
    kernels = native.usable(x)
    if kernels is not None:
        # The same loop in C++, on torch's own weights and gate order; the bias is added in
        # its elementwise pass (free there), so the projection is a plain GEMM (addmm would
        # first copy the bias into all T*B rows). Gates are activated in place.
        gates = project(inputs, [w[0] for w in weights], [None] * num_directions)  # (D,T,B,4H)
        none = x.new_empty(0)
        bias = none if weights[0][2] is None else torch.stack([w[2] + w[3] for w in weights])
        w_hh_t = stack_directions([w[1] for w in weights]).transpose(1, 2)  # (D, P, 4H)
        w_proj = none if w_hr_t is None else row_major(w_hr_t, num_steps)  # (D, H, P)
        kernels.lstm_forward(
            gates, bias, row_major(w_hh_t, num_steps), w_proj, cs, hs, timeline.live_rows, keep
        )
    else:
        w_hh_t = stack_directions([forward_rows(w[1]) for w in weights]).transpose(1, 2)
        bias = [None if w[2] is None else forward_rows(w[2] + w[3]) for w in weights]  # (4H,)
        w_ih = [forward_rows(w[0]) for w in weights]  # D x (4H, I)
        projection = project(inputs, w_ih, bias)  # (D, T, B, 4H)
        gates = python_forward_loop(projection, w_hh_t, w_hr_t, cs, hs, keep)
    output = timeline.output(hs[:, 1:], native=kernels is not None)
    c_n = timeline.final(cs) if every_cell else cs[:, 0]
    return output, timeline.final(hs), c_n, (gates, cs, hs)


def python_forward_loop(
    projection: Tensor, w_hh_t: Tensor, w_hr_t: Tensor | None, cs: Tensor, hs: Tensor, keep: bool
) -> Tensor:
    """The time loop in per-step torch ops (the native loop's specification and fallback).

    ``projection (D, T, B, 4H)`` holds the hoisted input projection; ``w_hh_t (D, P, 4H)`` and
    ``w_hr_t (D, H, P)`` are the transposed recurrent weights (gate rows in our order, g
    doubled); ``cs``/``hs`` have their slot 0 set. Fills ``cs``/``hs`` and returns the gates:
    ``projection`` activated in place when ``keep``, else a reused ``(D, 1, B, 4H)`` buffer.
    """
    num_directions, num_steps, batch, _ = projection.shape
    hidden = cs.shape[-1]
    projected = w_hr_t is not None
    every_cell = cs.shape[1] > 1
    # One direction: the loop runs on 2-D (B, *) views with 2-D matmuls, because addmm_ adds
    # in place where baddbmm first copies its input (a third of the GEMM's time at M).
    one_direction = num_directions == 1
    lead = (batch,) if one_direction else (num_directions, batch)
    tanh_c = projection.new_empty(*lead, hidden)  # ([D,] B, H), reused every step
    r = projection.new_empty(*lead, hidden) if projected else None  # ([D,] B, H)
    w_rec = w_hh_t[0] if one_direction else w_hh_t  # ([D,] P, 4H)
    w_proj = None if w_hr_t is None else (w_hr_t[0] if one_direction else w_hr_t)  # ([D,] H, P)
    matmul_add = torch.addmm if one_direction else torch.baddbmm
    matmul = torch.mm if one_direction else torch.bmm

    # Per-step views, made once: gates at s and their blocks, states at s. Kept, the gates are
    # activated in place inside the projection buffer; otherwise in one reused buffer.
    gates = projection if keep else projection.new_empty(num_directions, 1, batch, 4 * hidden)

    def all_steps(view: Tensor) -> list[Tensor]:  # (D, S, B, X) -> S x ([D,] B, X)
        return list(view[0].unbind(0) if one_direction else view.unbind(1))

    def per_step(view: Tensor) -> list[Tensor]:
        if keep:
            return all_steps(view)
        return [view[0, 0] if one_direction else view[:, 0]] * num_steps

    projection_steps = all_steps(projection)  # T x ([D,] B, 4H)
    gate_steps = per_step(gates)
    o_steps, i_steps, f_steps, s_steps = map(per_step, gates.unflatten(3, (4, hidden)).unbind(3))
    c_steps = all_steps(cs) if every_cell else [per_step(cs)[0]] * (num_steps + 1)
    h_steps = all_steps(hs)
    in_place = keep and one_direction
    for s in range(num_steps):
        # ([D,] B, P) @ ([D,] P, 4H) + hoisted x part
        if in_place:
            gate_steps[s].addmm_(h_steps[s], w_rec)
        else:
            matmul_add(projection_steps[s], h_steps[s], w_rec, out=gate_steps[s])
        gate_steps[s].sigmoid_()  # o, i, f and s = sigmoid(2a), g = 2s - 1
        c = torch.mul(f_steps[s], c_steps[s], out=c_steps[s + 1])
        c.addcmul_(i_steps[s], s_steps[s], value=2).sub_(i_steps[s])  # f * c_prev + i * g
        torch.tanh(c, out=tanh_c)
        if projected:
            torch.mul(o_steps[s], tanh_c, out=r)
            matmul(r, w_proj, out=h_steps[s + 1])  # ([D,] B, H) @ ([D,] H, P)
        else:
            torch.mul(o_steps[s], tanh_c, out=h_steps[s + 1])
    return gates


def python_backward_loop(
    gates: Tensor,
    cs: Tensor,
    d_h: Tensor,
    dc: Tensor,
    dc_arrivals: Tensor | None,
    w_hh: Tensor,
    w_hr: Tensor | None,
    keep_r: bool,
) -> tuple[Tensor, Tensor | None]:
    """BPTT in per-step torch ops (the native loop's specification and fallback).

    Reads the forward's ``gates (D, T, B, 4H)`` and ``cs (D, T+1, B, H)``; ``d_h (D, T, B, P)``
    holds the gradient arriving at each step's h and ends holding each step's full dh; ``dc
    (D, B, H)`` holds dc_n (or zeros, with ``dc_arrivals (D, T, B, H)`` the c_n gradient at
    each sequence's last step) and ends holding dc_0. ``w_hh (D, 4H, P)`` in our gate order,
    ``w_hr (D, P, H)``. Returns ``(d_pre (D, T, B, 4H), r (D, T, B, H) or None)``.
    """
    num_directions, num_steps = gates.shape[:2]
    hidden = cs.shape[-1]
    projected = w_hr is not None
    # The factors that map dh / dc to each gate's pre-activation gradient, for all steps at
    # once (into a new buffer: the saved activations must survive a retained graph); the
    # loop then only multiplies them in place.
    o, i, f, sigmoid_2a = gates.unflatten(3, (4, hidden)).unbind(3)  # 4 x (D, T, B, H)
    g = sigmoid_2a.mul(2).sub_(1)  # the forward kept sigmoid(2a); g = tanh(a)
    d_pre = torch.empty_like(gates)  # (D, T, B, 4H), our gate order
    pre_o, pre_i, pre_f, pre_g = d_pre.unflatten(3, (4, hidden)).unbind(3)
    c_prev, c = cs[:, :num_steps], cs[:, 1:]  # (D, T, B, H)
    tanh_c = torch.tanh(c)
    r = o * tanh_c if projected else None  # (D, T, B, H): what W_hr multiplied
    dc_from_dr = tanh_c.square().neg_().add_(1).mul_(o)  # dc += dr * o * (1 - tanh(c)^2)
    torch.addcmul(o, o, o, value=-1, out=pre_o).mul_(tanh_c)  # d_pre_o = dr o(1-o) tanh(c)
    del tanh_c
    torch.addcmul(i, i, i, value=-1, out=pre_i).mul_(g)  # d_pre_i = dc * i(1-i) * g
    torch.mul(g, g, out=pre_g).neg_().add_(1).mul_(i)  # d_pre_g = dc * (1 - g^2) * i
    torch.addcmul(f, f, f, value=-1, out=pre_f).mul_(c_prev)  # d_pre_f = dc f(1-f) c_prev

    # One direction: 2-D views and matmuls, as in the forward (addmm_ copies nothing).
    one_direction = num_directions == 1

    def all_steps(buf: Tensor) -> list[Tensor]:  # (D, T, B, *) -> T x ([D,] B, *)
        return list(buf[0].unbind(0) if one_direction else buf.unbind(1))

    matmul = torch.mm if one_direction else torch.bmm
    accumulate = torch.Tensor.addmm_ if one_direction else torch.Tensor.baddbmm_
    w_rec = w_hh[0] if one_direction else w_hh  # ([D,] 4H, P)
    w_proj = None if w_hr is None else (w_hr[0] if one_direction else w_hr)  # ([D,] P, H)
    dc_arrival_steps = None if dc_arrivals is None else all_steps(dc_arrivals)
    dc_loop = dc[0] if one_direction else dc  # a view: the loop updates dc in place
    dr = d_h.new_empty(dc_loop.shape) if projected else None  # ([D,] B, H)
    pre_steps = all_steps(d_pre)  # T x ([D,] B, 4H)
    o_steps = all_steps(pre_o)
    ifg_steps = all_steps(d_pre.unflatten(3, (4, hidden))[:, :, :, 1:])  # ([D,] B, 3, H)
    dc_from_dr_steps, f_steps, d_h_steps = map(all_steps, (dc_from_dr, f, d_h))
    dh = d_h_steps[num_steps - 1]
    for s in range(num_steps - 1, -1, -1):
        d_r = matmul(dh, w_proj, out=dr) if projected else dh  # ([D,] B, P) @ ([D,] P, H)
        if dc_arrival_steps is not None:
            dc_loop.add_(dc_arrival_steps[s])
        dc_loop.addcmul_(d_r, dc_from_dr_steps[s])  # dc = dc_next f_next + dr o tanh'(c)
        o_steps[s].mul_(d_r)  # d_pre_o
        ifg_steps[s].mul_(dc_loop.unsqueeze(-2))  # d_pre_i, d_pre_f, d_pre_g
        dc_loop.mul_(f_steps[s])  # dc_prev
        if s:  # dh_prev = d_out + d_pre @ W_hh: ([D,] B, 4H) @ ([D,] 4H, P)
            dh = accumulate(d_h_steps[s - 1], pre_steps[s], w_rec)
    return d_pre, r if keep_r else None


class LSTMLayer(torch.autograd.Function):
    """``(mode, D, lengths, x (T, B, I), h0 (D, B, P), c0 (D, B, H), *D x (w_ih, w_hh, b_ih,
    b_hh, w_hr)) -> (output (T, B, D*P), h_n (D, B, P), c_n (D, B, H))``."""

    @staticmethod
    def forward(ctx, mode, num_directions, lengths, x, h0, c0, *flat):
        timeline = Timeline(x.shape[0], lengths)
        output, h_n, c_n, buffers = lstm_layer_forward(
            mode, num_directions, timeline, x, h0, c0, flat, keep=True
        )
        remember(ctx, mode, num_directions, timeline, (x, h0, c0, *flat))
        ctx.save_for_backward(x, h0, c0, *flat, *buffers)
        return output, h_n, c_n

    @staticmethod
    def backward(ctx, d_output, d_h_n, d_c_n):
        if torch.is_grad_enabled():  # create_graph=True: differentiate the reference instead
            return (None,) * 3 + reference_double_backward(ctx, "LSTM", (d_output, d_h_n, d_c_n))
        x, h0, c0, *flat, gates, cs, hs = ctx.saved_tensors
        num_directions, timeline = ctx.num_directions, ctx.timeline
        weights = unbatched_flat_weights(flat, num_directions)
        needs = ctx.needs_input_grad[3:]
        num_steps = x.shape[0]
        hidden = cs.shape[-1]
        projected = weights[0][4] is not None
        kernels = native.usable(x) if ctx.native else None
        # The native loop keeps torch's gate order; the Python loops ours (o, i, f, g), which is
        # torch's rolled by one block (`rolled` below puts gradients back in torch's order).
        order = None if kernels is not None else TO_OURS
        rolled = 0 if kernels is not None else hidden
        w_hh = [w[1] if order is None else reorder(w[1], order) for w in weights]
        w_hh = stack_directions(w_hh)  # (D, 4H, P)
        w_hr = stack_directions([w[4] for w in weights]) if projected else None  # (D, P, H)

        d_h = timeline.step_major_grad(d_output, num_directions, d_h_n)  # (D, T, B, P)
        if timeline.lengths is None:
            dc = d_c_n.clone(memory_format=torch.contiguous_format)  # (D, B, H)
            dc_arrivals = None
        else:  # each sequence's c_n gradient enters at its own last step
            dc = d_c_n.new_zeros(d_c_n.shape)
            dc_arrivals = d_c_n.new_zeros(num_directions, num_steps, *d_c_n.shape[1:])
            timeline.add_at_final_step_(dc_arrivals, d_c_n)
        keep_r = projected and any(needs[3:])  # r = o tanh(c), what W_hr multiplied
        if kernels is not None:  # the same loop in C++, writing d_pre (and r)
            none = x.new_empty(0)
            # No one reads the gates after this backward once the graph is released: d_pre
            # overwrites them (same shape), else it is a buffer of its own.
            d_pre = gates if native.graph_released() else torch.empty_like(gates)  # (D,T,B,4H)
            r = torch.empty_like(cs[:, 1:]) if keep_r else None  # (D, T, B, H)
            kernels.lstm_backward(
                gates, cs, d_h, dc, none if dc_arrivals is None else dc_arrivals, w_hh,
                none if w_hr is None else w_hr, d_pre, none if r is None else r,
                timeline.live_rows,
            )  # fmt: skip
        else:
            d_pre, r = python_backward_loop(gates, cs, d_h, dc, dc_arrivals, w_hh, w_hr, keep_r)
        one_direction = num_directions == 1
        matmul = torch.mm if one_direction else torch.bmm
        w_rec = w_hh[0] if one_direction else w_hh  # ([D,] 4H, P)
        d_h0 = None
        if needs[1]:
            first = d_pre[0, 0] if one_direction else d_pre[:, 0]  # ([D,] B, 4H)
            d_h0 = matmul(first, w_rec)  # ([D,] B, 4H) @ ([D,] 4H, P)
            d_h0 = d_h0.unsqueeze(0) if one_direction else d_h0  # (D, B, P)

        grads = [None] * ctx.num_inputs
        if any(needs[3:]):  # W_hh, W_hr and biases first: d_pre is handed over to the input side
            prev = hs[:, :num_steps].flatten(1, 2)  # (D, T*B, P)
            d_w_hh = d_pre.flatten(1, 2).transpose(1, 2).bmm(prev)  # (D,4H,T*B) @ (D,T*B,P)
            d_bias = d_pre.sum((1, 2))  # (D, 4H)
            if projected:  # d_h holds every step's full dh now
                d_w_hr = d_h.flatten(1, 2).transpose(1, 2).bmm(r.flatten(1, 2))  # (D, P, H)
        del d_h, r
        # Direction 0's rows are spent before the reverse direction is put back in time order:
        # it goes there, no new buffer.
        per_direction = list(d_pre.unbind(0))  # D x (T, B, 4H) views
        del d_pre
        w_ih = [w[0] for w in weights]  # D x (4H, I)
        scratch = per_direction[0] if num_directions == 2 else None
        grads[0], d_w_ih = timeline.input_side_grads(
            per_direction, x, w_ih, needs[0], any(needs[3:]), rolled=rolled, scratch=scratch
        )  # (T, B, I), D x (4H, I) in torch's order
        grads[1], grads[2] = d_h0, dc
        if any(needs[3:]):
            for d in range(num_directions):
                base = 3 + 5 * d
                d_b, d_w = d_bias[d], d_w_hh[d]
                if order is not None:
                    d_b, d_w = reorder(d_b, TO_TORCH), reorder(d_w, TO_TORCH)
                grads[base : base + 4] = [d_w_ih[d], d_w, d_b, d_b.clone()]
                if projected:
                    grads[base + 4] = d_w_hr[d]
        return (None,) * 3 + tuple(g if need else None for g, need in zip(grads, needs))
