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

**The RNN buffer contract.** Step-major (see :mod:`.layer`), every buffer contiguous:

==============  ================  ==========================================================
buffer          shape             holds
==============  ================  ==========================================================
hs              (D, T+1, B, H)    slot 0 ``h_0``; slots ``1..T`` hold ``x_s W_ih^T + b_ih +
                                  b_hh`` (the hoisted input part) on entry and the states
                                  ``h_s`` on exit, activated in place
w_rec           (D, H, H)         forward: ``W_hh^T`` (a view or a row-major copy)
w_hh            D x (H, H)        backward: ``W_hh`` per direction
grads           D x (T, B, H)     backward in: the gradient reaching each ``h_s``; out:
                                  ``d_pre_s``, the gradient of step s's pre-activation
relu            bool              ReLU instead of tanh; ``relu'`` is torch's: the gradient
                                  passes wherever ``h <= 0`` does not hold (NaN included)
live            [] or T ints      step ``s`` advances rows ``[0, live[s])``; rows past them
                                  are zero in ``hs`` (forward) and ``grads`` (backward)
==============  ================  ==========================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..weights import LayerWeights
from . import native
from .layer import (
    Timeline,
    differentiate_the_reference,
    gradients_as_inputs,
    project,
    reference_double_backward,
    remember,
    stack_directions,
    unbatched_flat_weights,
    wanted_grads,
)

if TYPE_CHECKING:
    from ..backends import Plan


def rnn_layer_forward(plan: Plan, num_directions: int, timeline: Timeline, x, h0, c0, flat):
    """One layer, ``D`` directions. Returns ``(output (T, B, D*H), h_n (D, B, H), hs)``."""
    weights = unbatched_flat_weights(flat, num_directions)
    num_steps, batch, _ = x.shape
    hidden = h0.shape[-1]
    bias = [None if w.b_ih is None else w.b_ih + w.b_hh for w in weights]  # D x (H,)
    hs = x.new_empty(num_directions, num_steps + 1, batch, hidden)  # (D, T+1, B, H)
    hs[:, 0] = h0
    # Slots 1..T first hold the hoisted input part, then (in place) the states.
    project(timeline.directions(x, num_directions), [w.w_ih for w in weights], bias, out=hs[:, 1:])
    w_rec = plan.arrange(stack_directions([w.w_hh for w in weights]).transpose(1, 2))  # (D, H, H)
    plan.loops.rnn_forward(hs, w_rec, plan.mode == "RNN_RELU", timeline.live_rows, plan.fused)
    output = timeline.output(hs[:, 1:])
    return output, timeline.final(hs), hs


class RNNLayer(torch.autograd.Function):
    """``(plan, D, lengths, x (T, B, I), h0 (D, B, H), None, *D x (w_ih, w_hh, b_ih, b_hh,
    None)) -> (output (T, B, D*H), h_n (D, B, H))``."""

    @staticmethod
    def forward(ctx, plan, num_directions, lengths, x, h0, c0, *flat):
        timeline = Timeline(x.shape[0], lengths)
        output, h_n, hs = rnn_layer_forward(plan, num_directions, timeline, x, h0, c0, flat)
        remember(ctx, plan, num_directions, timeline, (x, h0, c0, *flat))
        ctx.save_for_backward(x, h0, c0, *flat, hs)
        return output, h_n

    @staticmethod
    def backward(ctx, d_output, d_h_n):
        if differentiate_the_reference((d_output, d_h_n)):  # create_graph=True, or torch.func
            return reference_double_backward(ctx, (d_output, d_h_n))
        x, h0, c0, *flat, hs = ctx.saved_tensors
        num_directions, timeline = ctx.num_directions, ctx.timeline
        weights = unbatched_flat_weights(flat, num_directions)
        wanted = wanted_grads(ctx)
        num_steps = x.shape[0]
        # W_hh per direction, not stacked: a (D, H, H) copy would live through the whole loop.
        w_hh = [w.w_hh for w in weights]  # D x (H, H)
        # One buffer per direction, turned into d_pre in place: each is freed as soon as its
        # gradients are done.
        d_pre = timeline.step_major_grad(d_output, num_directions, d_h_n, separate=True)
        relu = ctx.plan.mode == "RNN_RELU"
        ctx.plan.loops.rnn_backward(hs, d_pre, w_hh, relu, timeline.live_rows, ctx.plan.fused)
        d_h0 = hs.new_empty(num_directions, *hs.shape[2:])  # (D, B, H)
        for d in range(num_directions):
            torch.mm(d_pre[d][0], w_hh[d], out=d_h0[d])  # (B, H) @ (H, H)

        if wanted.weights:  # W_hh and biases first: d_pre is handed over to the input side next
            d_w_hh = [
                step_grads.reshape(-1, step_grads.shape[-1]).t() @ prev.reshape(-1, prev.shape[-1])
                for step_grads, prev in zip(d_pre, hs[:, :num_steps])
            ]  # D x (H, T*B) @ (T*B, H)
            d_bias = [step_grads.sum((0, 1)) for step_grads in d_pre]  # D x (H,)
        # With two directions the output is a copy, so the saved states are the layer's own;
        # once the graph is released they are dead here and hold the reverse direction's
        # gradient in time order (no new buffer for it).
        scratch = hs[1, 1:] if num_directions == 2 and native.graph_released() else None
        # d_pre is handed over (the list is emptied), so each direction's buffer is freed once
        # its input-side gradients are done.
        d_x, d_w_ih = timeline.input_side_grads(
            d_pre, x, [w.w_ih for w in weights], wanted.x, wanted.weights, scratch=scratch
        )  # (T, B, I), D x (H, I)
        weight_grads = None
        if wanted.weights:
            weight_grads = [
                LayerWeights(w_ih=d_w_ih[d], w_hh=d_w_hh[d], b_ih=d_bias[d], b_hh=d_bias[d].clone())
                for d in range(num_directions)
            ]
        return gradients_as_inputs(ctx, d_x, d_h0, None, weight_grads)
