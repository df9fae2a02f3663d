r"""The GRU recurrence in torch ops: ``native/gru.cpp``'s loops on the same buffers.

What it must equal: :func:`unrolled.cells.gru` at every step (the forward), and the derivative
lines in :mod:`unrolled.fast.gru` (the backward). Buffers: the GRU buffer contract in
:mod:`unrolled.fast.gru`. As in ``loops/lstm.py``, each line of the C++ loop's elementwise math
is a torch op over a whole block of rows, arranged for few ops per step: the forward advances
the directions together and folds the biases into the hoisted input part (``b_ih`` and
``b_hr, b_hz``, once for all steps) and into the recurrent GEMM (``b_hn``, which ``r``
multiplies); the backward computes the step-independent factors of ``backward_rows`` for all
steps first (:func:`backward_factors`) and the C++ loop's own directions one after the other
(their gradient buffers are separate).

Recurrent dropout and zoneout (:mod:`unrolled.regularizers`), as in ``loops/lstm.py``: ``drop
(D, B, H)`` multiplies the state on its way into ``W_hh`` (the carry ``z h_{s-1}`` reads the
undropped state); ``zone_h (D, N, H)`` weighs the previous state, ``h_s = d h_{s-1} + (1 - d)
h~_s``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from .rows import directions_batched, given, previous_states, state_views, step_views


class StepBlocks(NamedTuple):
    """One step's views ``([D,] B, *)`` into ``hh`` (``all``, ``rz``, ``r``, ``z``, ``a``) and
    into the hoisted input part (``x_rz``, ``x_n``)."""

    all: Tensor
    rz: Tensor
    r: Tensor
    z: Tensor
    a: Tensor
    x_rz: Tensor
    x_n: Tensor


def step_blocks(
    hh: Tensor, x_pre: Tensor, batch_sizes: Sequence[int], one_direction: bool
) -> list[StepBlocks]:
    """``hh (D, N or B, 3H)`` and ``x_pre (D, N, 3H)`` -> per step, its views ``([D,] rows_s,
    *)``."""
    hidden = hh.shape[-1] // 3
    blocks = (hh, hh[..., : 2 * hidden], *hh.split(hidden, dim=-1))
    if hh.shape[1] == x_pre.shape[1]:  # a slot per step
        hh_views = [step_views(b, batch_sizes, one_direction) for b in blocks]
    else:  # one reused slot: each step its first rows
        hh_views = [[(b[0] if one_direction else b).narrow(-2, 0, rows) for rows in batch_sizes]
                    for b in blocks]  # fmt: skip
    x_views = [step_views(b, batch_sizes, one_direction) for b in x_pre.split(2 * hidden, -1)]
    return [StepBlocks(*step) for step in zip(*hh_views, *x_views)]


def forward_rows(step: StepBlocks, n: Tensor, h_prev: Tensor, h: Tensor) -> None:
    """One step, a block of rows: the elementwise part of :func:`unrolled.cells.gru`, from the
    two affine parts to ``r, z, n`` and the new state ``h = n + z (h_prev - n)``.

    ``step.x_rz, step.x_n`` are the hoisted ``x W_ih^T`` with ``b_ih`` and ``b_hr, b_hz`` added;
    ``step.all`` holds ``h_prev W_hh^T`` with ``a = W_hn h_prev + b_hn`` in its n block on entry,
    and ``[r, z, a]`` on exit; ``n`` and ``h`` are ``([D,] rows, H)``.
    """
    step.rz.add_(step.x_rz).sigmoid_()  # r, z
    torch.addcmul(step.x_n, step.r, step.a, out=n).tanh_()
    torch.lerp(n, h_prev, step.z, out=h)  # n + z (h_prev - n)


def gru_forward(
    xw: Tensor,
    hh: Tensor,
    ns: Tensor,
    hs: Tensor,
    w_rec: Sequence[Tensor],
    biases: Sequence[Tensor],
    batch_sizes: Sequence[int],
    fused: bool = False,
    drop: Tensor | None = None,
    zone_h: Tensor | None = None,
) -> None:
    """Forward (``forward_loop`` in C++): ``w_rec`` D x ``W_hh^T (H, 3H)``; ``biases`` D x
    ``(b_ih, b_hh)``, each ``(3H,)``, or empty (bias=False). ``fused`` (the C++ loop's engine
    switch) changes nothing here.

    ``drop (D, B, H)``: recurrent dropout, the recurrent product reads ``h_{s-1} * drop`` (so
    ``hh`` holds ``(h_{s-1} * drop) W_hh^T``), the carry ``z h_{s-1}`` the undropped state;
    ``zone_h (D, N, H)``: zoneout, ``h_s = d h_{s-1} + (1 - d) h~_s`` with ``h~_s`` the
    ordinary update. Neither with ``fused``."""
    directions, _, gate_rows = xw.shape
    hidden = gate_rows // 3
    h_bias = None
    if len(biases):
        b_ih, b_hh = torch.stack(list(biases[0::2])), torch.stack(list(biases[1::2]))  # (D, 3H)
        x_bias = b_ih.clone()
        x_bias[:, : 2 * hidden] += b_hh[:, : 2 * hidden]
        xw += x_bias.view(directions, 1, gate_rows)  # every step: x W_ih^T + b_ih + [b_hr, b_hz]
        h_bias = torch.zeros_like(b_hh)
        h_bias[:, 2 * hidden :] = b_hh[:, 2 * hidden :]  # (D, 3H): b_hn rides with W_hn h
        h_bias = h_bias[0] if directions == 1 else h_bias[:, None]  # (3H,) or (D, 1, 3H)
    one = directions == 1
    w = directions_batched(w_rec)  # ([D,] H, 3H)
    blocks = step_blocks(hh, xw, batch_sizes, one)
    h_prev_steps, h_steps = state_views(hs, batch_sizes, one)
    if ns.shape[1] == xw.shape[1]:  # a slot per step, or one reused slot
        n_steps = step_views(ns, batch_sizes, one)
    else:
        n_steps = [(ns[0] if one else ns).narrow(-2, 0, rows) for rows in batch_sizes]
    dropping, zoned = given(drop), given(zone_h)
    if dropping:  # h_{s-1} * drop, what W_hh multiplies
        drop_rows = drop[0] if one else drop  # ([D,] B, H)
        dropped = torch.empty_like(drop_rows)
    if zoned:  # each step's weights of the previous and of the new state
        keep_h = step_views(zone_h, batch_sizes, one)  # T x ([D,] rows, H)
        new_h = step_views(1 - zone_h, batch_sizes, one)
    for s, rows in enumerate(batch_sizes):
        step, h_prev = blocks[s], h_prev_steps[s]  # ([D,] rows, *)
        h_rec = h_prev  # what W_hh multiplies
        if dropping:
            h_rec = torch.mul(
                h_prev, drop_rows.narrow(-2, 0, rows), out=dropped.narrow(-2, 0, rows)
            )
        if h_bias is None:
            (torch.mm if one else torch.bmm)(h_rec, w, out=step.all)  # ([D,] rows, H) @ (H, 3H)
        elif one:
            torch.addmm(h_bias, h_rec, w, out=step.all)  # (rows, H) @ (H, 3H) + b_hn
        else:
            torch.baddbmm(h_bias, h_rec, w, out=step.all)  # (D, rows, H) @ (D, H, 3H) + b_hn
        forward_rows(step, n_steps[s], h_prev, h_steps[s])  # the carry reads the undropped h
        if zoned:  # h~ -> d * previous + (1 - d) * new
            h_steps[s].mul_(new_h[s]).addcmul_(keep_h[s], h_prev)


def backward_factors(
    hh: Tensor, n: Tensor, h_prev: Tensor, factors: Tensor
) -> tuple[Tensor, Tensor]:
    r"""The step-independent half of ``backward_rows`` for one direction, all steps at once:

    .. math::
        factors \leftarrow [\, (1 - z)(1 - n^2),\ a \, r (1 - r),\ (h_{prev} - n) z (1 - z) \,]

    from ``hh (N, 3H)`` (``[r, z, a]``), ``n`` and ``h_prev`` ``(N, H)``, into ``factors
    (N, 3H)``, which may be ``hh`` itself. Returns ``(r, z)`` for the loop (copies when
    ``factors`` overwrites them).
    """
    hidden = n.shape[-1]
    r, z, a = hh.split(hidden, dim=-1)
    if factors.data_ptr() == hh.data_ptr():
        r, z = r.clone(), z.clone()
    to_n, to_r, to_z = factors.split(hidden, dim=-1)  # over hh's r, z, a blocks
    torch.mul(r, 1 - r, out=to_r).mul_(a)  # a still intact: to_r is z's old block
    torch.sub(h_prev, n, out=to_z).mul_(z * (1 - z))
    torch.mul(1 - z, 1 - n * n, out=to_n)
    return r, z


def backward_rows(
    n_x_z: Tensor, n_x: Tensor, r_block: Tensor, r: Tensor, z: Tensor, d_h: Tensor, d_h_prev: Tensor
) -> None:
    r"""One step backward, the half that depends on the recurrence, from ``d_h`` (all of the
    gradient reaching h_s). The step's factors block ``[n_x, r, z] (rows, 3H)`` holds the
    factors of :func:`backward_factors` on entry, as views: ``n_x_z (rows, 2, H)`` its n and z
    blocks, ``n_x`` and ``r_block`` its n and r blocks:

    .. math::
        d\_pre_n = d\_h \cdot f_n, \quad d\_pre_z = d\_h \cdot f_z, \quad
        d\_pre_r = d\_pre_n f_r, \quad d\_a = d\_pre_n \, r, \quad
        d\_h_{prev} \mathrel{+}= d\_h \, z

    leaving ``[n_x, r, z]`` in the factors block and ``d_a`` over ``d_h``.
    """
    n_x_z.mul_(d_h.unsqueeze(-2))  # d_pre_n, d_pre_z
    r_block.mul_(n_x)  # d_pre_r
    d_h_prev.addcmul_(d_h, z)
    torch.mul(n_x, r, out=d_h)  # d_a, over d_h (read above)


def zone_split_rows(keep: Tensor, new: Tensor, d_h: Tensor, d_h_prev: Tensor) -> None:
    """Zoneout, one step backward before :func:`backward_rows`: the gradient ``d_h`` of ``h_s =
    d h_{s-1} + (1 - d) h~_s`` splits between the previous state, ``d_h_prev += d d_h``, and the
    update, ``d_h <- (1 - d) d_h`` (in place: what :func:`backward_rows` reads); all ``(rows,
    H)``, ``keep`` the step's weights ``d`` and ``new`` their ``1 - d``."""
    d_h_prev.addcmul_(keep, d_h)
    d_h.mul_(new)


def gru_backward(
    hh: Tensor,
    ns: Tensor,
    hs: Tensor,
    grads: Sequence[Tensor],
    w_hh: Sequence[Tensor],
    factors: Sequence[Tensor],
    d_h0: Tensor,
    batch_sizes: Sequence[int],
    fused: bool = False,
    drop: Tensor | None = None,
    zone_h: Tensor | None = None,
) -> None:
    r"""Backward (``backward_loop`` in C++). ``grads`` D x ``(N, H)``: d_h_s on entry, d_a on
    exit; ``factors`` D x ``(N, 3H)``: ``[n_x, r, z]`` per step (may be ``hh[d]``);
    ``d_h0 (D, B, H)``: the gradient of h_0; ``w_hh`` D x ``(3H, H)``, torch's rows (r, z, n).

    ``drop``, ``zone_h``: the forward's (see :func:`gru_forward`). With zoneout, at each step
    before :func:`backward_rows` (:func:`zone_split_rows`), the update gets ``(1 - d) d_h_s``
    and ``h_{s-1}`` the rest directly; with recurrent dropout the product's gradient reaches
    ``h_{s-1}`` through the mask (the carry's ``d_h z`` does not):

    .. math::
        d\_h_s \leftarrow (1 - d) \, d\_h_s, \quad d\_h_{s-1} \mathrel{+}= d \, d\_h_s,
        \qquad d\_h_{s-1} \mathrel{+}= ([d\_pre_r, d\_pre_z, d\_a] W_{hh}) \cdot drop

    all of it into ``d_h0`` at the first step."""
    hidden = hs.shape[-1]
    dropping, zoned = given(drop), given(zone_h)
    if dropping:  # [d_pre_r, d_pre_z, d_a] @ W_hh, before the mask
        product = torch.empty_like(drop[0])  # (B, H)
    for d in range(hh.shape[0]):
        w_rz, w_n = w_hh[d][: 2 * hidden], w_hh[d][2 * hidden :]  # (2H, H), (H, H)
        h_prev = previous_states(hs[d], batch_sizes)  # (N, H)
        r, z = backward_factors(hh[d], ns[d], h_prev, factors[d])
        d_h0[d].zero_()

        def views(buffer: Tensor) -> list[Tensor]:
            return step_views(buffer.unsqueeze(0), batch_sizes, True)  # T x (rows, *)

        # Per-step views, made once: the factors block, its (n, z) pair, n and r blocks.
        factor_steps = views(factors[d])  # (rows, 3H)
        n_z_steps = views(factors[d].unflatten(-1, (3, hidden))[..., 0::2, :])  # (rows, 2, H)
        n_steps, r_block_steps = (views(factors[d][..., k * hidden : (k + 1) * hidden])
                                  for k in (0, 1))  # fmt: skip
        grad_steps, r_steps, z_steps = views(grads[d]), views(r), views(z)
        if zoned:  # each step's weights of the previous and of the new state
            keep_steps, new_steps = views(zone_h[d]), views(1 - zone_h[d])  # T x (rows, H)
        for s in range(len(batch_sizes) - 1, -1, -1):
            rows = batch_sizes[s]
            grad_s = grad_steps[s]  # (rows, H): d_h_s in, d_a out
            d_h_prev = (grad_steps[s - 1] if s > 0 else d_h0[d]).narrow(0, 0, rows)
            if zoned:
                zone_split_rows(keep_steps[s], new_steps[s], grad_s, d_h_prev)
            backward_rows(
                n_z_steps[s], n_steps[s], r_block_steps[s], r_steps[s], z_steps[s], grad_s,
                d_h_prev,
            )  # fmt: skip
            # [d_pre_r, d_pre_z] @ W_hr,hz + d_a @ W_hn: (rows, 2H) @ (2H, H) and (rows, H) @
            # (H, H)
            if dropping:  # d_h_{s-1} += that * drop
                into = torch.mm(factor_steps[s][:, hidden:], w_rz, out=product.narrow(0, 0, rows))
                into.addmm_(grad_s, w_n)
                d_h_prev.addcmul_(into, drop[d].narrow(0, 0, rows))
            else:  # d_h_{s-1} += that
                d_h_prev.addmm_(factor_steps[s][:, hidden:], w_rz).addmm_(grad_s, w_n)
