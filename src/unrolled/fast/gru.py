r"""GRU layer in torch's formulation, both directions: the buffers around the time loop, the
hoisted input part, and the weight gradients after BPTT.

What it must equal: :func:`unrolled.cells.gru` at every step (its equations are stated there,
once), as :func:`unrolled.reference.run` loops it. Below, ``a = W_hn h_{s-1} + b_hn`` is what
the reset gate ``r`` multiplies and ``d_pre`` is the gradient of a gate's pre-activation; what
the backward adds, per step ``s`` from the last:

.. math::
    d\_pre_n &= d\_h_s (1 - z)(1 - n^2), \quad d\_pre_r = d\_pre_n \, a \, r (1 - r), \quad
        d\_pre_z = d\_h_s (h_{s-1} - n) \, z (1 - z), \quad d\_a = d\_pre_n \, r \\
    d\_h_{s-1} &\mathrel{+}= d\_h_s \, z + [d\_pre_r, d\_pre_z] W_{h\{r,z\}} + d\_a \, W_{hn}

and then, over all steps at once: :math:`d\_W_{ih} = \sum_s [d\_pre_r, d\_pre_z, d\_pre_n]^T
x_s`, :math:`d\_W_{hh} = \sum_s [d\_pre_r, d\_pre_z, d\_a]^T h_{s-1}`, :math:`d\_b_{ih} = \sum_s
[d\_pre_r, d\_pre_z, d\_pre_n]`, :math:`d\_b_{hh} = \sum_s [d\_pre_r, d\_pre_z, d\_a]` (in the
buffers below, ``d_pre_n`` is ``n_x`` and ``d_a`` is ``n_h``).

The time loop is ``plan.loops.gru_forward`` / ``gru_backward``: the native C++ loop
(``native/gru.cpp``) or the same loop in torch ops (``loops/gru.py``), whichever the layer's
plan chose in the forward; the backward runs the plan's loop, never another one.

**The GRU buffer contract.** Step-major (see :mod:`.layer`), torch's gate order ``(r, z, n)``
and torch's own weights and biases, every buffer contiguous:

==============  ===================  =======================================================
buffer          shape                holds
==============  ===================  =======================================================
xw              (D, T, B, 3H)        forward in: ``x_s W_ih^T``, rows r, z, n, without bias
                                     (the loop adds ``b_ih`` and ``b_hh``); out: scratch
hh              (D, T, B, 3H)        forward: ``h_{s-1} W_hh^T``, then ``[r, z, a]``, ``a =
                                     W_hn h_{s-1} + b_hn`` (``b_hn`` cannot be hoisted: r
                                     multiplies it); ``(D, 1, B, 3H)``, one reused slot,
                                     when no backward reads it
ns              (D, T or 1, B, H)    the new-gate values ``n``
hs              (D, T+1, B, H)       slot 0 ``h_0``, slot ``s+1`` ``h_s``
w_rec           (D, H, 3H)           forward: ``W_hh^T`` (a view or a row-major copy)
w_hh            D x (3H, H)          backward: ``W_hh`` per direction (stacking would copy
                                     both directions' weights for the whole loop)
biases          D x (b_ih, b_hh)     each ``(3H,)``; empty without bias
grads           D x (T, B, H)        backward in: the gradient reaching each ``h_s``; out:
                                     ``d_a`` (``n_h``: what ``W_hn``, ``b_hn`` saw)
factors         D x (T, B, 3H)       backward out: ``[n_x, r, z]``, the pre-activation
                                     gradients ``W_ih`` saw, in the order (n, r, z): torch's
                                     rows rolled by one block; may be ``hh[d]`` itself
d_h0            (D, B, H)            backward out: the gradient of ``h_0``
live            [] or T ints         step ``s`` advances rows ``[0, live[s])``; rows past
                                     them are zero in ``hs`` (forward), ``grads`` and
                                     ``factors`` (backward)
==============  ===================  =======================================================

One buffer per direction and kind in the backward, so that each is freed as soon as it is
spent (``d_a`` after ``d_W_hh``, the factors after the input side), and neither is allocated
when it can be helped: ``d_a`` overwrites the step gradients it is computed from, and the
factors overwrite the saved ``[r, z, a]`` when the backward releases the graph (no one reads
them again; see ``native.graph_released``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

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


def gru_layer_forward(
    plan: Plan, num_directions: int, timeline: Timeline, x, h0, c0, flat, keep: bool = False
):
    """One layer, ``D`` directions.

    Returns ``(output (T, B, D*H), h_n (D, B, H), (ns, hh, hs))``, the buffers as the contract
    above leaves them. Without ``keep`` (nothing will be differentiated) ``hh`` and ``ns`` are
    one reused slot each.
    """
    weights = unbatched_flat_weights(flat, num_directions)
    num_steps, batch, _ = x.shape
    hidden = h0.shape[-1]
    hh = x.new_empty(num_directions, num_steps if keep else 1, batch, 3 * hidden)  # (D,T,B,3H)
    ns = x.new_empty(num_directions, num_steps if keep else 1, batch, hidden)  # (D, T, B, H)
    hs = x.new_empty(num_directions, num_steps + 1, batch, hidden)  # (D, T+1, B, H)
    hs[:, 0] = h0
    inputs = timeline.directions(x, num_directions)
    xw = project(inputs, [w.w_ih for w in weights], [None] * num_directions)  # (D, T, B, 3H)
    biases = [b.contiguous() for w in weights for b in (w.b_ih, w.b_hh) if b is not None]  # (3H,)
    w_rec = plan.arrange(stack_directions([w.w_hh for w in weights]).transpose(1, 2))  # (D,H,3H)
    plan.loops.gru_forward(xw, hh, ns, hs, w_rec, biases, timeline.live_rows, plan.fused)
    output = timeline.output(hs[:, 1:])
    return output, timeline.final(hs), (ns, hh, hs)


def hidden_side_grads(x_side: Tensor, n_h: Tensor, h_prev: Tensor) -> tuple[Tensor, Tensor]:
    """One direction's ``d_W_hh (3H, H)`` (torch's rows r, z, n) and the sums ``(4, H)`` of
    ``[n_x, r, z, n_h]`` over all steps and rows (the bias gradients), from its step-major
    gradients ``x_side (T, B, 3H)`` (``[n_x, r, z]``) and ``n_h (T, B, H)``, and the states
    ``h_prev (T, B, H)`` the steps started from (any strides that flatten to rows)."""
    hidden = h_prev.shape[-1]
    rows = x_side.reshape(-1, 3 * hidden)  # (T*B, 3H)
    a_rows = n_h.reshape(-1, hidden)  # (T*B, H)
    prev = h_prev.reshape(-1, hidden)  # (T*B, H)
    d_w_hh = h_prev.new_empty(3 * hidden, hidden)
    torch.mm(rows[:, hidden:].t(), prev, out=d_w_hh[: 2 * hidden])  # (2H, T*B) @ (T*B, H)
    torch.mm(a_rows.t(), prev, out=d_w_hh[2 * hidden :])  # (H, T*B) @ (T*B, H)
    sums = torch.cat([rows.sum(0), a_rows.sum(0)]).view(4, hidden)  # [n_x, r, z, n_h]
    return d_w_hh, sums


class GRULayer(torch.autograd.Function):
    """``(plan, D, lengths, x (T, B, I), h0 (D, B, H), None, *D x (w_ih, w_hh, b_ih, b_hh,
    None)) -> (output (T, B, D*H), h_n (D, B, H))``."""

    @staticmethod
    def forward(ctx, plan, num_directions, lengths, x, h0, c0, *flat):
        timeline = Timeline(x.shape[0], lengths)
        output, h_n, buffers = gru_layer_forward(
            plan, num_directions, timeline, x, h0, c0, flat, keep=True
        )
        remember(ctx, plan, num_directions, timeline, (x, h0, c0, *flat))
        ctx.save_for_backward(x, h0, c0, *flat, *buffers)
        return output, h_n

    @staticmethod
    def backward(ctx, d_output, d_h_n):
        if differentiate_the_reference((d_output, d_h_n)):  # create_graph=True, or torch.func
            return reference_double_backward(ctx, (d_output, d_h_n))
        x, h0, c0, *flat, n, hh, hs = ctx.saved_tensors
        num_directions, timeline = ctx.num_directions, ctx.timeline
        weights = unbatched_flat_weights(flat, num_directions)
        wanted = wanted_grads(ctx)
        num_steps, batch, _ = x.shape
        hidden = hs.shape[-1]
        # n_h takes the place of the step gradients it is computed from.
        n_h = timeline.step_major_grad(d_output, num_directions, d_h_n, separate=True)
        scratch = None  # where the input side may put the reverse direction in time order
        if native.graph_released():
            # No one reads hh after this backward: [n_x, r, z] overwrite its [r, z, a] (same
            # shape), and once direction 0 is spent its rows take the reverse direction.
            x_side = list(hh.unbind(0))  # D x (T, B, 3H) views
            scratch = x_side[0]
        else:  # a later backward will read hh again
            x_side = [torch.empty_like(hh[0]) for _ in range(num_directions)]
        d_h0 = hh.new_empty(num_directions, batch, hidden)  # (D, B, H)
        w_hh = [w.w_hh for w in weights]  # D x (3H, H)
        ctx.plan.loops.gru_backward(
            hh, n, hs, n_h, w_hh, x_side, d_h0, timeline.live_rows, ctx.plan.fused
        )
        h_prev = hs[:, :num_steps]  # (D, T, B, H)

        if wanted.weights:  # W_hh and biases first: the factors are handed over to the input side
            d_w_hh, d_sums = zip(*map(hidden_side_grads, x_side, n_h, h_prev))
        del n_h
        # [n_x, r, z] are handed over (the list is emptied), so each direction's own buffer is
        # freed once its input-side gradients are done. Their (n, r, z) is torch's (r, z, n)
        # rolled by one block.
        w_ih = [w.w_ih for w in weights]  # D x (3H, I)
        d_x, d_w_ih = timeline.input_side_grads(
            x_side, x, w_ih, wanted.x, wanted.weights, rolled=hidden, scratch=scratch
        )  # (T, B, I), D x (3H, I) in torch's order
        weight_grads = None
        if wanted.weights:
            weight_grads = [
                LayerWeights(
                    w_ih=d_w_ih[d],
                    w_hh=d_w_hh[d],
                    b_ih=d_sums[d][[1, 2, 0]].flatten(),  # (r, z, n_x)
                    b_hh=d_sums[d][1:].flatten(),  # (r, z, n_h)
                )
                for d in range(num_directions)
            ]
        return gradients_as_inputs(ctx, d_x, d_h0, None, weight_grads)
