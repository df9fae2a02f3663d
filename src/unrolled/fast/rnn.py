r"""Elman RNN layer (tanh or ReLU), both directions at once: forward loop and hand-written BPTT.

.. math::  h_s = act(\underbrace{W_{ih} x_s + b_{ih} + b_{hh}}_{\text{hoisted: one GEMM}}
           + W_{hh} h_{s-1})

Per step the forward does one matmul and one in-place activation (the Python loop both
directions in one batched matmul, the native loop each direction on its own thread), writing
straight into the step-major state buffer ``hs (D, T+1, B, H)`` that already holds the hoisted
projection. The backward runs only the chain ``d_pre_s = dh_s * act'(.)``,
``dh_{s-1} = d_pre_s @ W_hh`` per step, then one GEMM per weight over all steps.
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


def rnn_layer_forward(mode: str, num_directions: int, timeline: Timeline, x, h0, c0, flat):
    """One layer, ``D`` directions. Returns ``(output (T, B, D*H), h_n (D, B, H), hs)``."""
    weights = unbatched_flat_weights(flat, num_directions)
    num_steps, batch, _ = x.shape
    hidden = h0.shape[-1]
    w_hh_t = stack_directions([w[1] for w in weights]).transpose(1, 2)  # (D, H, H): W_hh^T
    bias = [None if w[2] is None else w[2] + w[3] for w in weights]  # D x (H,)

    hs = x.new_empty(num_directions, num_steps + 1, batch, hidden)  # (D, T+1, B, H)
    hs[:, 0] = h0
    # Slots 1..T first hold the projection, then (in place) the states.
    project(timeline.directions(x, num_directions), [w[0] for w in weights], bias, out=hs[:, 1:])
    kernels = native.usable(x)
    if kernels is not None:  # the same loop in C++
        kernels.rnn_forward(
            hs, row_major(w_hh_t, num_steps), mode == "RNN_RELU", timeline.live_rows
        )
    else:
        activate = torch.Tensor.tanh_ if mode == "RNN_TANH" else torch.Tensor.relu_
        steps = hs.unbind(1)  # T+1 views (D, B, H)
        h = steps[0]
        for h_next in steps[1:]:
            h = activate(h_next.baddbmm_(h, w_hh_t))  # (D, B, H) @ (D, H, H) + x_s W_ih^T + b
    output = timeline.output(hs[:, 1:], native=kernels is not None)
    return output, timeline.final(hs), hs


def python_backward_loop(mode: str, hs: Tensor, d_h: Tensor, w_hh: list[Tensor]) -> Tensor:
    """BPTT in per-step torch ops (the native loop's specification and fallback).

    ``hs (D, T+1, B, H)`` from the forward; ``d_h (D, T, B, H)`` the gradient reaching each
    ``h_s`` (updated in place to the full ``dh_s``); ``w_hh`` D x ``(H, H)``. Returns
    ``d_pre (D, T, B, H)``, the gradient of each step's pre-activation.
    """
    num_steps = hs.shape[1] - 1
    states = hs[:, 1:]  # (D, T, B, H)
    if mode == "RNN_TANH":
        d_pre = states.square().neg_().add_(1)  # tanh' = 1 - h^2, (D, T, B, H)
    else:
        d_pre = (states > 0).to(states.dtype)  # relu' = [h > 0]
    d_pre_steps, d_h_steps = d_pre.unbind(1), d_h.unbind(1)  # T x (D, B, H)
    d_pre_dir_steps = [d.unbind(0) for d in d_pre]  # D x T x (B, H)
    d_h_dir_steps = [d.unbind(0) for d in d_h]
    directions = list(zip(d_pre_dir_steps, d_h_dir_steps, w_hh))
    dh = d_h_steps[num_steps - 1]
    for s in range(num_steps - 1, 0, -1):
        d_pre_steps[s].mul_(dh)  # d_pre = dh * act'
        for d_pre_dir, d_h_dir, w in directions:
            d_h_dir[s - 1].addmm_(d_pre_dir[s], w)  # (B, H) @ (H, H) + d_out
        dh = d_h_steps[s - 1]
    d_pre_steps[0].mul_(dh)
    return d_pre


class RNNLayer(torch.autograd.Function):
    """``(mode, D, lengths, x (T, B, I), h0 (D, B, H), None, *D x (w_ih, w_hh, b_ih, b_hh, None))
    -> (output (T, B, D*H), h_n (D, B, H))``."""

    @staticmethod
    def forward(ctx, mode, num_directions, lengths, x, h0, c0, *flat):
        timeline = Timeline(x.shape[0], lengths)
        output, h_n, hs = rnn_layer_forward(mode, num_directions, timeline, x, h0, c0, flat)
        remember(ctx, mode, num_directions, timeline, (x, h0, c0, *flat))
        ctx.save_for_backward(x, h0, c0, *flat, hs)
        return output, h_n

    @staticmethod
    def backward(ctx, d_output, d_h_n):
        if torch.is_grad_enabled():  # create_graph=True: differentiate the reference instead
            return (None,) * 3 + reference_double_backward(ctx, ctx.mode, (d_output, d_h_n))
        x, h0, c0, *flat, hs = ctx.saved_tensors
        num_directions, timeline = ctx.num_directions, ctx.timeline
        weights = unbatched_flat_weights(flat, num_directions)
        needs = ctx.needs_input_grad[3:]
        num_steps = x.shape[0]
        # W_hh per direction, not stacked: a (D, H, H) copy would live through the whole loop.
        w_hh = [w[1] for w in weights]  # D x (H, H)

        kernels = native.usable(x) if ctx.native else None
        if kernels is not None:  # the same loop in C++
            # One buffer per direction, turned into d_pre in place: each is freed as soon as its
            # gradients are done.
            d_pre = timeline.step_major_grad(d_output, num_directions, d_h_n, separate=True)
            kernels.rnn_backward(hs, d_pre, w_hh, ctx.mode == "RNN_RELU", timeline.live_rows)
        else:
            d_h = timeline.step_major_grad(d_output, num_directions, d_h_n)  # (D, T, B, H)
            d_pre = list(python_backward_loop(ctx.mode, hs, d_h, w_hh).unbind(0))  # views
            # The chain is done: free the step gradients before the weight gradients are
            # allocated (they would otherwise set the step's peak memory).
            del d_h
        d_h0 = hs.new_empty(num_directions, *hs.shape[2:])  # (D, B, H)
        for d in range(num_directions):
            torch.mm(d_pre[d][0], w_hh[d], out=d_h0[d])  # (B, H) @ (H, H)

        grads = [None] * (ctx.num_inputs)
        grads[1] = d_h0 if needs[1] else None
        if any(needs[3:]):  # W_hh and biases first: d_pre is handed over to the input side next
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
        grads[0], d_w_ih = timeline.input_side_grads(
            d_pre, x, [w[0] for w in weights], needs[0], any(needs[3:]), scratch=scratch
        )  # (T, B, I), D x (H, I)
        if any(needs[3:]):
            for d in range(num_directions):
                base = 3 + 5 * d
                grads[base : base + 4] = [d_w_ih[d], d_w_hh[d], d_bias[d], d_bias[d].clone()]
        return (None,) * 3 + tuple(g if need else None for g, need in zip(grads, needs))
