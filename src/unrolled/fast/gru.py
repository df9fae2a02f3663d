r"""GRU layer in torch's formulation, both directions at once: forward loop and BPTT.

.. math::
    r, z &= \sigma(W_{i\{r,z\}} x_s + b_{i\{r,z\}} + b_{h\{r,z\}} + W_{h\{r,z\}} h_{s-1}) \\
    n &= \tanh(W_{in} x_s + b_{in} + r \odot a), \qquad a = W_{hn} h_{s-1} + b_{hn} \\
    h_s &= (1 - z) \odot n + z \odot h_{s-1} = \operatorname{lerp}(n, h_{s-1}, z)

In the Python loop ``b_hr, b_hz`` are hoisted with the input projection; ``b_hn`` cannot be
(``r`` multiplies it), so it rides with the per-step matmul and ``a`` is saved for the backward,
which is also why ``b_hh``'s n-block gradient differs from ``b_ih``'s. The native loop adds
both of torch's biases as they are in its elementwise pass (free there) and saves the same ``a``.

The backward keeps per step the pre-activation gradients ``[n_x, r, z, n_h]``: the first three
are what ``W_ih`` saw (rows ``n, r, z``), the last three what ``W_hh`` saw (rows ``r, z, n``,
torch's order). The Python loop keeps them as one ``(D, T, B, 4H)`` block, so that both weight
gradients are one GEMM over a contiguous slice; the native loop keeps ``[n_x, r, z]`` and
``n_h`` in separate buffers per direction, so that each is freed as soon as it is spent, and
allocates neither when it can help it: ``n_h`` overwrites the step gradients it is computed
from, and ``[n_x, r, z]`` the saved ``[r, z, a]`` when the backward releases the graph (no one
reads them again; see ``native.graph_released``).
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


def gru_layer_forward(
    mode: str, num_directions: int, timeline: Timeline, x, h0, c0, flat, keep: bool = False
):
    """One layer, ``D`` directions.

    Returns ``(output (T, B, D*H), h_n (D, B, H), (ns, hh, hs))`` with the step-major buffers
    ``ns (D, T, B, H)`` (the new-gate values n), ``hh (D, T, B, 3H)``
    (``[r, z, a]``) and ``hs (D, T+1, B, H)``. Without ``keep`` (nothing will be
    differentiated) ``hh`` is one reused ``(D, B, 3H)`` buffer.
    """
    weights = unbatched_flat_weights(flat, num_directions)
    num_steps, batch, _ = x.shape
    hidden = h0.shape[-1]
    w_hh_t = stack_directions([w[1] for w in weights]).transpose(1, 2)  # (D, H, 3H)
    inputs = timeline.directions(x, num_directions)
    w_ih = [w[0] for w in weights]
    hh = x.new_empty(num_directions, num_steps if keep else 1, batch, 3 * hidden)  # (D,T,B,3H)
    ns = x.new_empty(num_directions, num_steps if keep else 1, batch, hidden)  # (D, T, B, H)
    hs = x.new_empty(num_directions, num_steps + 1, batch, hidden)  # (D, T+1, B, H)
    hs[:, 0] = h0
    kernels = native.usable(x)
    if kernels is not None:
        # The same loop in C++. It adds torch's two biases as they are in its elementwise pass
        # (free there), so the projection is a plain GEMM and no combined bias is built.
        xw = project(inputs, w_ih, [None] * num_directions)  # (D, T, B, 3H)
        biases = [b.contiguous() for w in weights for b in w[2:4] if b is not None]  # (3H,)
        kernels.gru_forward(
            xw, hh, ns, hs, row_major(w_hh_t, num_steps), biases, timeline.live_rows
        )
    else:
        h_bias = None
        x_bias = [None] * num_directions
        if weights[0][2] is not None:
            zeros = weights[0][3].new_zeros(hidden)
            x_bias = [w[2] + torch.cat([w[3][: 2 * hidden], zeros]) for w in weights]  # (3H,)
            h_bias = torch.stack([torch.cat([zeros, zeros, w[3][2 * hidden :]]) for w in weights])
            h_bias = h_bias.unsqueeze(1)  # (D, 1, 3H): only b_hn
        xw = project(inputs, w_ih, x_bias)  # (D, T, B, 3H)
        python_forward_loop(xw, hh, ns, hs, w_hh_t, h_bias)
    output = timeline.output(hs[:, 1:], native=kernels is not None)
    return output, timeline.final(hs), (ns, hh, hs)


def python_forward_loop(
    xw: Tensor, hh: Tensor, ns: Tensor, hs: Tensor, w_hh_t: Tensor, h_bias: Tensor | None
) -> None:
    """The time loop in per-step torch ops (the native loop's specification and fallback).

    Fills ``hh (D, T or 1, B, 3H)`` with ``[r, z, a]``, ``ns`` with n and ``hs (D, T+1, B, H)``
    (slot 0 set) from ``xw (D, T, B, 3H)``, ``w_hh_t (D, H, 3H)`` and ``h_bias (D, 1, 3H)``
    (``b_hn`` in the n block) or None.
    """
    num_steps, hidden = xw.shape[1], hs.shape[-1]
    keep = hh.shape[1] == num_steps

    def per_step(view: Tensor) -> list[Tensor]:
        return list(view.unbind(1)) if keep else [view[:, 0]] * num_steps

    # Per-step views, made once.
    hh_steps = per_step(hh)  # T x (D, B, 3H)
    rz_steps = per_step(hh[..., : 2 * hidden])
    r_steps, z_steps, a_steps = map(per_step, hh.unflatten(3, (3, hidden)).unbind(3))
    x_rz_steps = xw[..., : 2 * hidden].unbind(1)
    x_n_steps = xw[..., 2 * hidden :].unbind(1)
    # n has its own buffer (rows contiguous: tanh on a row-strided view is many times slower
    # with two threads), and the dead x_r, x_z blocks are not saved.
    n_steps = per_step(ns)
    h_steps = hs.unbind(1)
    h = h_steps[0]
    for s in range(num_steps):
        if h_bias is not None:
            torch.baddbmm(h_bias, h, w_hh_t, out=hh_steps[s])  # (D, B, H) @ (D, H, 3H) + b_hn
        else:
            torch.bmm(h, w_hh_t, out=hh_steps[s])  # (D, B, H) @ (D, H, 3H)
        rz_steps[s].add_(x_rz_steps[s]).sigmoid_()  # r, z
        # n = tanh(x_n + r * a)
        n = torch.addcmul(x_n_steps[s], r_steps[s], a_steps[s], out=n_steps[s]).tanh_()
        h = torch.lerp(n, h, z_steps[s], out=h_steps[s + 1])  # (1 - z) * n + z * h


def python_backward_loop(
    n: Tensor, hh: Tensor, hs: Tensor, d_h: Tensor, w_hh: Tensor
) -> tuple[Tensor, Tensor]:
    """BPTT in per-step torch ops (the native loop's specification and fallback).

    Reads the forward's ``n (D, T, B, H)``, ``hh (D, T, B, 3H)`` (``[r, z, a]``) and ``hs``;
    ``d_h (D, T, B, H)`` is the gradient reaching each h_s (updated in place). Returns the
    per-step pre-activation gradients ``(D, T, B, 4H)`` as ``[n_x, r, z, n_h]`` and ``d_h0
    (D, B, H)``.
    """
    num_directions, num_steps, batch, _ = hh.shape
    hidden = hs.shape[-1]
    # The factors that turn dh into each pre-activation gradient, for all steps at once.
    r, z, a = hh.unflatten(3, (3, hidden)).unbind(3)  # (D, T, B, H) each
    h_prev = hs[:, :num_steps]  # (D, T, B, H)
    factors = hh.new_empty(num_directions, num_steps, batch, 4, hidden)  # [n_x, r, z, n_h]
    n_x, r_f, z_f, n_h = factors.unbind(3)
    torch.mul(n, n, out=n_x).neg_().add_(1)  # tanh'(.) = 1 - n^2
    n_x.addcmul_(n_x, z, value=-1)  # d_pre_n = dh * (1 - z) * (1 - n^2)
    torch.addcmul(r, r, r, value=-1, out=r_f).mul_(a)  # d_pre_r = d_pre_n * a * r(1-r)
    torch.sub(h_prev, n, out=z_f).mul_(torch.addcmul(z, z, z, value=-1))  # (h-n) z(1-z)
    n_h.copy_(r)  # d_a = d_pre_n * r

    n_z_steps = factors[:, :, :, 0::2].unbind(1)  # (D, B, 2, H): [n_x, z]
    r_nh_steps = factors[:, :, :, 1::2].unbind(1)  # (D, B, 2, H): [r, n_h]
    n_pre_steps = factors[:, :, :, 0:1].unbind(1)  # (D, B, 1, H)
    flat_factors = factors.flatten(3)  # (D, T, B, 4H)
    hh_pre_steps = flat_factors[..., hidden:].unbind(1)  # (D, B, 3H): [r, z, n_h]
    z_steps, d_h_steps = z.unbind(1), d_h.unbind(1)
    dh = d_h_steps[num_steps - 1]
    for s in range(num_steps - 1, -1, -1):
        n_z_steps[s].mul_(dh.unsqueeze(2))  # d_pre_n, d_pre_z
        r_nh_steps[s].mul_(n_pre_steps[s])  # d_pre_r, d_a
        direct = d_h_steps[s - 1].addcmul_(dh, z_steps[s]) if s else dh * z_steps[s]
        dh = direct.baddbmm_(hh_pre_steps[s], w_hh)  # (D, B, 3H) @ (D, 3H, H) + dh * z
    return factors.flatten(3), dh


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
    """``(mode, D, lengths, x (T, B, I), h0 (D, B, H), None, *D x (w_ih, w_hh, b_ih, b_hh, None))
    -> (output (T, B, D*H), h_n (D, B, H))``."""

    @staticmethod
    def forward(ctx, mode, num_directions, lengths, x, h0, c0, *flat):
        timeline = Timeline(x.shape[0], lengths)
        output, h_n, buffers = gru_layer_forward(
            mode, num_directions, timeline, x, h0, c0, flat, keep=True
        )
        remember(ctx, mode, num_directions, timeline, (x, h0, c0, *flat))
        ctx.save_for_backward(x, h0, c0, *flat, *buffers)
        return output, h_n

    @staticmethod
    def backward(ctx, d_output, d_h_n):
        if torch.is_grad_enabled():  # create_graph=True: differentiate the reference instead
            return (None,) * 3 + reference_double_backward(ctx, "GRU", (d_output, d_h_n))
        x, h0, c0, *flat, n, hh, hs = ctx.saved_tensors
        num_directions, timeline = ctx.num_directions, ctx.timeline
        weights = unbatched_flat_weights(flat, num_directions)
        needs = ctx.needs_input_grad[3:]
        num_steps, batch, _ = x.shape
        hidden = hs.shape[-1]
        kernels = native.usable(x) if ctx.native else None
        scratch = None  # where the input side may put the reverse direction in time order
        if kernels is not None:  # the same loop in C++, W_hh per direction (no copy)
            # Per direction, [n_x, r, z] (what W_ih saw) and n_h in buffers of their own: each
            # is freed as soon as it is spent (n_h after d_W_hh, the rest after the input side).
            # n_h takes the place of the step gradients it is computed from.
            n_h = timeline.step_major_grad(d_output, num_directions, d_h_n, separate=True)
            if native.graph_released():
                # No one reads hh after this backward: [n_x, r, z] overwrite its [r, z, a] (same
                # shape), and once direction 0 is spent its rows take the reverse direction.
                x_side = list(hh.unbind(0))  # D x (T, B, 3H) views
                scratch = x_side[0]
            else:  # a later backward will read hh again
                x_side = [torch.empty_like(hh[0]) for _ in range(num_directions)]
            dh = hh.new_empty(num_directions, batch, hidden)  # d_h0
            w_hh = [w[1] for w in weights]  # D x (3H, H)
            kernels.gru_backward(hh, n, hs, n_h, w_hh, x_side, dh, timeline.live_rows)
        else:
            d_h = timeline.step_major_grad(d_output, num_directions, d_h_n)  # (D, T, B, H)
            # Stacked for one baddbmm per step (a copy when D = 2: freed right after the loop,
            # so it is not there when the weight gradients set the peak).
            w_hh = stack_directions([w[1] for w in weights])  # (D, 3H, H)
            stacked, dh = python_backward_loop(n, hh, hs, d_h, w_hh)  # (D, T, B, 4H)
            x_side = list(stacked[..., : 3 * hidden].unbind(0))  # views of one buffer
            n_h = list(stacked[..., 3 * hidden :].unbind(0))
            del stacked, d_h
        del w_hh
        h_prev = hs[:, :num_steps]  # (D, T, B, H)

        grads = [None] * ctx.num_inputs
        grads[1] = dh
        if any(needs[3:]):  # W_hh and biases first: the factors are handed over to the input side
            d_w_hh, d_sums = zip(*map(hidden_side_grads, x_side, n_h, h_prev))
        del n_h
        # [n_x, r, z] are handed over (the list is emptied), so each direction's own buffer is
        # freed once its input-side gradients are done. Their (n, r, z) is torch's (r, z, n)
        # rolled by one block.
        w_ih = [w[0] for w in weights]  # D x (3H, I)
        grads[0], d_w_ih = timeline.input_side_grads(
            x_side, x, w_ih, needs[0], any(needs[3:]), rolled=hidden, scratch=scratch
        )  # (T, B, I), D x (3H, I) in torch's order
        if any(needs[3:]):
            for d in range(num_directions):
                base = 3 + 5 * d
                grads[base : base + 4] = [
                    d_w_ih[d],
                    d_w_hh[d],
                    d_sums[d][[1, 2, 0]].flatten(),  # b_ih: (r, z, n_x)
                    d_sums[d][1:].flatten(),  # b_hh: (r, z, n_h)
                ]
        return (None,) * 3 + tuple(g if need else None for g, need in zip(grads, needs))
