r"""Elman RNN layer (tanh or ReLU), both directions: the buffers around the time loop, the
hoisted input part, and the weight gradients after BPTT.

What it must equal: :func:`unrolled.cells.rnn_tanh` or :func:`unrolled.cells.rnn_relu` at
every step (their equations are stated there, once), as :func:`unrolled.reference.run` loops
them. With ``d_pre`` the gradient of the step's pre-activation, what the backward adds, per step
``s`` from the last:

.. math::
    d\_pre_s = d\_h_s \, act'(h_s), \qquad d\_h_{s-1} \mathrel{+}= d\_pre_s W_{hh}

(``tanh' = 1 - h^2``; ``relu'`` is torch's: the gradient passes wherever ``h <= 0`` does not
hold), and then, over all steps at once: :math:`d\_W_{ih} = \sum_s d\_pre_s^T x_s`,
:math:`d\_W_{hh} = \sum_s d\_pre_s^T h_{s-1}`, :math:`d\_b_{ih} = d\_b_{hh} = \sum_s d\_pre_s`.

Per step the forward does one matmul and one in-place activation, writing straight into the
state buffer that already holds the hoisted input part (``W_ih x_s + b_ih + b_hh``); the
backward runs only the chain above per step, then one GEMM per weight over all steps. The time
loop is ``plan.loops.rnn_forward`` / ``rnn_backward``: the native C++ loop (``native/rnn.cpp``)
or the same loop in torch ops (``loops/rnn.py``), whichever the layer's plan chose in the
forward; the backward runs the plan's loop, never another one.

**The RNN buffer contract.** Packed step-major (see :mod:`.layer`: step ``s``'s rows at row
``offset[s]`` of an ``(N, X)`` buffer, states ``(B + N, X)`` with ``h_0`` first), every buffer
contiguous:

==============  ================  ==========================================================
buffer          shape             holds
==============  ================  ==========================================================
hs              (D, B + N, H)     ``h_0``; the rows of the steps hold ``x_s W_ih^T + b_ih +
                                  b_hh`` (the hoisted input part) on entry and the states
                                  ``h_s`` on exit, activated in place
w_rec           D x (H, H)        forward: ``W_hh^T`` (a view or a row-major copy)
w_hh            D x (H, H)        backward: ``W_hh`` per direction
grads           D x (N, H)        backward in: the gradient reaching each ``h_s``; out:
                                  ``d_pre_s``, the gradient of step s's pre-activation
relu            bool              ReLU instead of tanh; ``relu'`` is torch's: the gradient
                                  passes wherever ``h <= 0`` does not hold (NaN included)
batch_sizes     T ints            rows per step, non-increasing (``[B] * T``: a full batch)
==============  ================  ==========================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..weights import LayerWeights
from .layer import (
    Steps,
    Wanted,
    hand_written_backward,
    project,
    remember,
    unbatched_flat_weights,
)

if TYPE_CHECKING:
    from ..backends import Plan


def rnn_layer_forward(plan: Plan, num_directions: int, steps: Steps, x, h0, c0, flat):
    """One layer, ``D`` directions, on the packed layer input ``x (N, I)``. Returns ``(output
    (N, D*H), h_n (D, B, H), hs)``."""
    weights = unbatched_flat_weights(flat, num_directions)
    batch, hidden = steps.batch, h0.shape[-1]
    bias = [None if w.b_ih is None else w.b_ih + w.b_hh for w in weights]  # D x (H,)
    hs = x.new_empty(num_directions, batch + steps.total, hidden)  # (D, B + N, H)
    hs[:, :batch] = h0
    # The steps' rows first hold the hoisted input part, then (in place) the states.
    inputs = steps.directions(x, num_directions)
    project(inputs, [w.w_ih for w in weights], bias, out=hs[:, batch:])
    w_rec = [plan.arrange(w.w_hh.t()) for w in weights]  # D x (H, H)
    plan.loops.rnn_forward(hs, w_rec, plan.mode == "RNN_RELU", steps.sizes, plan.fused)
    return steps.output(hs), steps.final(hs), hs


class RNNLayer(torch.autograd.Function):
    """``(plan, D, steps, masks, x (N, I), h0 (D, B, H), None, *D x (w_ih, w_hh, b_ih, b_hh,
    None)) -> (output (N, D*H), h_n (D, B, H))``."""

    @staticmethod
    def forward(ctx, plan, num_directions, steps, masks, x, h0, c0, *flat):
        output, h_n, hs = rnn_layer_forward(plan, num_directions, steps, x, h0, c0, flat)
        remember(ctx, plan, num_directions, steps, (x, h0, c0, *flat))
        ctx.save_for_backward(x, h0, c0, *flat, hs)
        return output, h_n

    @staticmethod
    def backward(ctx, d_output, d_h_n):
        return hand_written_backward(ctx, (d_output, d_h_n), rnn_layer_backward)


def rnn_layer_backward(
    plan: Plan, num_directions: int, steps: Steps, inputs, buffers, grads, wanted: Wanted,
    reuse: bool = False,
) -> tuple:  # fmt: skip
    """BPTT of one layer: the gradients of ``inputs (x, h0, None, *flat)`` from ``grads
    (d_output, d_h_n)``, with the states ``buffers (hs,)`` its forward kept.

    ``reuse``: nobody reads the states after this backward (the graph is released), so they
    may hold the reverse direction's gradient. Returns ``(d_x, d_h0, None, weight_grads)``,
    None where ``wanted`` says a gradient is not needed.
    """
    d_output, d_h_n = grads[:2]
    x, _, _, *flat = inputs
    (hs,) = buffers
    weights = unbatched_flat_weights(flat, num_directions)
    # W_hh per direction, not stacked: a (D, H, H) copy would live through the whole loop.
    w_hh = [w.w_hh for w in weights]  # D x (H, H)
    # One buffer per direction, turned into d_pre in place: each is freed as soon as its
    # gradients are done.
    d_pre = steps.step_major_grad(d_output, num_directions, d_h_n, separate=True)
    relu = plan.mode == "RNN_RELU"
    plan.loops.rnn_backward(hs, d_pre, w_hh, relu, steps.sizes, plan.fused)
    d_h0 = hs.new_empty(num_directions, steps.batch, hs.shape[-1])  # (D, B, H)
    for d in range(num_directions):  # only the first step reads h_0, and all of it
        torch.mm(d_pre[d][: steps.batch], w_hh[d], out=d_h0[d])  # (B, H) @ (H, H)

    if wanted.weights:  # W_hh and biases first: d_pre is handed over to the input side next
        d_w_hh = [steps.sum_with_previous(d_pre[d], hs[d]) for d in range(num_directions)]
        d_bias = [step_grads.sum(0) for step_grads in d_pre]  # D x (H,)
    # With two directions the output is a copy, so the saved states are the layer's own; once
    # the graph is released they are dead here and hold the reverse direction's gradient in
    # time order (no new buffer for it).
    scratch = None
    if num_directions == 2 and reuse:
        scratch = hs[1, steps.batch :]  # (N, H)
    # d_pre is handed over (the list is emptied), so each direction's buffer is freed once its
    # input-side gradients are done.
    d_x, d_w_ih = steps.input_side_grads(
        d_pre, x, [w.w_ih for w in weights], wanted.x, wanted.weights, scratch=scratch
    )  # (N, I), D x (H, I)
    weight_grads = None
    if wanted.weights:
        weight_grads = [
            LayerWeights(w_ih=d_w_ih[d], w_hh=d_w_hh[d], b_ih=d_bias[d], b_hh=d_bias[d].clone())
            for d in range(num_directions)
        ]
    return d_x, d_h0, None, weight_grads
