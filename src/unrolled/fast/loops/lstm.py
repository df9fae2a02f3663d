r"""The LSTM recurrence in torch ops: ``native/lstm.cpp``'s loops on the same buffers.

What it must equal: :func:`unrolled.cells.lstm` at every step (the forward), and the derivative
lines in :mod:`unrolled.fast.lstm` (the backward). Buffers: the LSTM buffer contract in
:mod:`unrolled.fast.lstm`. The C++ loop runs one step's elementwise math element by element in
one vectorised pass; here each line of that math is a torch op over a whole block of rows, and
a torch op (or a view) costs microseconds however small its block. So the work is arranged for
as few ops per step as the math allows, keeping the C++ loop's names, formulas and order:

- the directions advance together, one batched matmul per step (``[D,] rows``-leading views;
  the C++ loop runs each direction on its own thread);
- every per-step view is made once, before the loop;
- the bias is added to every step's pre-activations in one op before the loop;
- the backward's ``backward_rows`` is split in two: :func:`backward_factors` computes, for all
  steps at once, every factor that does not depend on the recurrence (``o (1 - tanh^2 c)``,
  ``tanh(c) o (1 - o)``, ``g i (1 - i)``, ``c_prev f (1 - f)``, ``i (1 - g^2)``), and
  :func:`backward_rows` multiplies them by the step's ``d_r`` and ``dc``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from .rows import directions_batched, given, previous_states, state_views, step_views


class GateBlocks(NamedTuple):
    """One step's gates, views into the gates buffer: ``all ([D,] B, 4H)`` and each gate ``([D,]
    B, H)`` in torch's order; ``i_f`` is ``i`` and ``f`` as one block (one sigmoid for both)."""

    all: Tensor
    i_f: Tensor
    i: Tensor
    f: Tensor
    g: Tensor
    o: Tensor


def gate_blocks(gates: Tensor, batch_sizes: Sequence[int], one_direction: bool) -> list[GateBlocks]:
    """``gates (D, N, 4H)`` -> per step, its :class:`GateBlocks` ``([D,] rows_s, *)``."""
    hidden = gates.shape[-1] // 4
    blocks = (gates, gates[..., : 2 * hidden], *gates.split(hidden, dim=-1))  # all, i_f, i, f, g, o
    views = (step_views(b, batch_sizes, one_direction) for b in blocks)
    return [GateBlocks(*step) for step in zip(*views)]


def forward_rows(step_gates: GateBlocks, c_prev: Tensor, c: Tensor, out: Tensor) -> None:
    """One step, a block of rows: the elementwise part of :func:`unrolled.cells.lstm`, from
    the gates' pre-activations to ``c`` and ``o tanh(c)``.

    ``step_gates`` holds the pre-activations (bias included) and gets the activated gates, in
    place. ``out`` gets ``o tanh(c)``: h (no projection) or r, the input of W_hr. ``c_prev`` may
    be ``c`` (one slot).
    """
    step_gates.i_f.sigmoid_()
    step_gates.g.tanh_()
    step_gates.o.sigmoid_()
    torch.mul(step_gates.f, c_prev, out=c).addcmul_(step_gates.i, step_gates.g)  # f c_prev + i g
    torch.tanh(c, out=out).mul_(step_gates.o)


def lstm_forward(
    gates: Tensor,
    bias: Tensor,
    w_rec: Sequence[Tensor],
    w_proj: Sequence[Tensor],
    cs: Tensor,
    hs: Tensor,
    batch_sizes: Sequence[int],
    keep: bool,
    packed: bool,
    fused: bool,
    inputs: Sequence[Tensor] = (),
    w_in: Sequence[Tensor] = (),
    drop: Tensor | None = None,
    zone_h: Tensor | None = None,
    zone_c: Tensor | None = None,
) -> None:
    """Forward (``forward_loop`` in C++). ``keep``, ``packed`` and ``fused`` are the C++ loop's
    speed switches (store the activated gates only when a backward reads them; MKL's packed
    GEMM for the recurrent product; the fused engine): here the gates are activated in place
    either way and the product is a plain GEMM, as the contract allows. With ``inputs`` the
    loop computes the input part itself, into ``gates``.

    ``drop (D, B, H)``: recurrent dropout, the recurrent product reads ``h_{s-1} * drop``;
    ``zone_h``, ``zone_c (D, N, H)``: zoneout, ``h_s = d h_{s-1} + (1 - d) o tanh(c~_s)`` and
    ``c_s = d c_{s-1} + (1 - d) c~_s`` with ``c~_s = f c_{s-1} + i g`` (every cell kept: ``cs
    (D, B + N, H)``). Neither with projection or ``fused``."""
    for x, w, target in zip(inputs, w_in, gates):  # (N, I) @ (I, 4H) -> (N, 4H)
        torch.mm(x, w.t(), out=target)
    directions, _, four_hidden = gates.shape
    batch = hs.shape[1] - gates.shape[1]
    has_projection, every_cell = len(w_proj) > 0, cs.shape[1] > batch
    if given(bias):
        gates += bias.view(directions, 1, four_hidden)  # a = x W_ih^T + b, every step
    # One direction: 2-D views and addmm_ (it adds in place; baddbmm_ on a strided view copies).
    one = directions == 1
    add_matmul = torch.Tensor.addmm_ if one else torch.Tensor.baddbmm_
    matmul = torch.mm if one else torch.bmm
    w = directions_batched(w_rec)  # ([D,] P, 4H)
    w_out = directions_batched(w_proj) if has_projection else None  # ([D,] H, P)
    r = gates.new_empty(directions, batch, four_hidden // 4) if has_projection else None
    r = r[0] if has_projection and one else r  # ([D,] B, H)
    dropping, zoned = given(drop), given(zone_h)
    if dropping:  # h_{s-1} * drop, what W_hh multiplies
        drop_rows = drop[0] if one else drop  # ([D,] B, H)
        dropped = torch.empty_like(drop_rows)
    if zoned:  # each step's weights of the previous and of the new state
        keep_h, new_h = (
            step_views(zone_h, batch_sizes, one),
            step_views(1 - zone_h, batch_sizes, one),
        )
        keep_c, new_c = (
            step_views(zone_c, batch_sizes, one),
            step_views(1 - zone_c, batch_sizes, one),
        )
    gate_steps = gate_blocks(gates, batch_sizes, one)
    h_prev_steps, h_steps = state_views(hs, batch_sizes, one)
    if every_cell:
        c_prev_steps, c_steps = state_views(cs, batch_sizes, one)
    else:  # one reused slot: a row that stops keeps its last cell, its c_n
        slot = cs[0] if one else cs
        c_prev_steps = c_steps = [slot.narrow(-2, 0, rows) for rows in batch_sizes]
    for s, rows in enumerate(batch_sizes):
        step_gates = gate_steps[s]  # ([D,] rows, 4H or H)
        out = r.narrow(-2, 0, rows) if has_projection else h_steps[s]
        h_prev = h_prev_steps[s]
        if dropping:
            h_prev = torch.mul(
                h_prev, drop_rows.narrow(-2, 0, rows), out=dropped.narrow(-2, 0, rows)
            )
        add_matmul(step_gates.all, h_prev, w)  # += ([D,] rows, P) @ ([D,] P, 4H)
        forward_rows(step_gates, c_prev_steps[s], c_steps[s], out)
        if zoned:  # c~ and h~ -> d * previous + (1 - d) * new
            c_steps[s].mul_(new_c[s]).addcmul_(keep_c[s], c_prev_steps[s])
            out.mul_(new_h[s]).addcmul_(keep_h[s], h_prev_steps[s])
        if has_projection:
            matmul(out, w_out, out=h_steps[s])  # ([D,] rows, H) @ ([D,] H, P)


def backward_factors(
    gates: Tensor,
    cs: Tensor,
    d_pre: Tensor,
    r: Tensor,
    batch_sizes: Sequence[int],
    c_new: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    r"""The step-independent half of ``backward_rows``, for all steps at once:

    .. math::
        d\_pre &\leftarrow [\, g\, i (1 - i),\ c_{prev} f (1 - f),\ i (1 - g^2),\
                             \tanh(c)\, o (1 - o) \,] \\
        r\_slope &= \partial r / \partial c = o (1 - \tanh^2 c), \qquad
        r = o \tanh(c) \ \text{(if asked)}

    written into ``d_pre (D, N, 4H)`` (which may be ``gates`` itself: every gate is read
    before its block is written), from the cells ``cs (D, B + N, H)``. Returns ``(r_slope (D,
    N, H), f (D, N, H))``, ``f`` being a copy when ``d_pre`` overwrites the gates (the loop
    needs it for ``dc_prev = dc f``).
    """
    hidden = cs.shape[-1]
    i, f, g, o = gates.split(hidden, dim=-1)  # 4 x (D, N, H)
    d_pre_i, d_pre_f, d_pre_g, d_pre_o = d_pre.split(hidden, dim=-1)
    batch = cs.shape[1] - gates.shape[1]
    c_prev = previous_states(cs, batch_sizes)  # (D, N, H)
    c = cs[:, batch:] if c_new is None else c_new  # (D, N, H)
    tanh_c = torch.tanh(c)
    r_slope = torch.addcmul(o, o, tanh_c.square(), value=-1)  # o (1 - tanh^2 c)
    if given(r):
        torch.mul(o, tanh_c, out=r)
    if d_pre.data_ptr() == gates.data_ptr():
        f = f.clone()
    torch.mul(o, 1 - o, out=d_pre_o).mul_(tanh_c)
    factor_g = i * (1 - g * g)  # read i and g before their blocks are written
    torch.mul(i, 1 - i, out=d_pre_i).mul_(g)
    d_pre_g.copy_(factor_g)
    torch.mul(f, 1 - f, out=d_pre_f).mul_(c_prev)
    return r_slope, f


def backward_rows(
    d_pre_o: Tensor,
    d_pre_ifg: Tensor,
    r_slope: Tensor,
    f: Tensor,
    d_r: Tensor,
    dc: Tensor,
) -> None:
    r"""One step backward, the half that depends on the recurrence. ``d_r`` is the gradient
    reaching ``r = o tanh(c)``; ``dc`` holds c_s's gradient on entry (a row enters its last step
    holding its c_n gradient: no earlier step touched it) and c_{s-1}'s on exit; ``d_pre_o
    ([D,] rows, H)`` and ``d_pre_ifg ([D,] rows, 3, H)``, this step's blocks of ``d_pre``, hold
    its factors (:func:`backward_factors`) on entry and the pre-activation gradients on exit:

    .. math::
        dc \mathrel{+}= d\_r \cdot r\_slope, \quad
        d\_pre_{i,f,g} \mathrel{*}= dc, \quad d\_pre_o \mathrel{*}= d\_r, \quad
        dc_{prev} = dc \, f
    """
    dc.addcmul_(d_r, r_slope)
    d_pre_o.mul_(d_r)
    d_pre_ifg.mul_(dc.unsqueeze(-2))
    dc.mul_(f)  # dc_prev


def lstm_backward(
    gates: Tensor,
    cs: Tensor,
    d_h: Tensor,
    dc: Tensor,
    w_rec: Sequence[Tensor],
    w_proj: Sequence[Tensor],
    d_pre: Tensor,
    r: Tensor,
    batch_sizes: Sequence[int],
    fused: bool,
    drop: Tensor | None = None,
    zone_h: Tensor | None = None,
    zone_c: Tensor | None = None,
) -> None:
    r"""Backward (``backward_loop`` in C++; ``fused``, the C++ loop's engine switch, changes
    nothing here). ``drop``, ``zone_h``, ``zone_c``: the forward's (see :func:`lstm_forward`);
    with zoneout, at each step, before and after :func:`backward_rows`:

    .. math::
        d\_r = (1 - d^h) \, d\_h_s, \quad d\_h_{s-1} \mathrel{+}= d^h d\_h_s, \qquad
        dc \leftarrow (1 - d^c) dc \ \text{(into } c~\text{)}, \quad
        dc_{prev} = f \, dc~ + d^c dc

    and with recurrent dropout the product's gradient reaches ``h_{s-1}`` through the mask:
    ``d_h_{s-1} += (d_pre_s W_hh) * drop``."""
    directions, _, four_hidden = gates.shape
    hidden = four_hidden // 4
    has_projection = len(w_proj) > 0
    dropping, zoned = given(drop), given(zone_h)
    c_new = None
    if zoned:  # c~ = f c_prev + i g, what h~ = o tanh(c~) read (the stored c is zoned out)
        i, f, g, _ = gates.split(hidden, dim=-1)  # 4 x (D, N, H)
        c_new = torch.addcmul(f * previous_states(cs, batch_sizes), i, g)
    r_slope, f = backward_factors(gates, cs, d_pre, r, batch_sizes, c_new)
    one = directions == 1
    add_matmul = torch.Tensor.addmm_ if one else torch.Tensor.baddbmm_
    matmul = torch.mm if one else torch.bmm
    w = directions_batched(w_rec)  # ([D,] 4H, P)
    w_out = directions_batched(w_proj) if has_projection else None  # ([D,] P, H)
    dc_rows = dc[0] if one else dc  # ([D,] B, H): the loop updates dc in place

    def views(buffer: Tensor) -> list[Tensor]:
        return step_views(buffer, batch_sizes, one)

    d_pre_steps, d_h_steps = views(d_pre), views(d_h)
    d_pre_o_steps = views(d_pre[..., 3 * hidden :])  # T x ([D,] rows, H)
    d_pre_ifg_steps = views(d_pre[..., : 3 * hidden].unflatten(-1, (3, hidden)))
    r_slope_steps, f_steps = views(r_slope), views(f)
    if dropping:
        drop_rows = drop[0] if one else drop  # ([D,] B, H)
        product = torch.empty_like(drop_rows)  # d_pre_s @ W_hh, before the mask
    if zoned:
        keep_h, new_h = views(zone_h), views(1 - zone_h)
        keep_c, new_c = views(zone_c), views(1 - zone_c)
    for s in range(len(batch_sizes) - 1, -1, -1):
        rows = batch_sizes[s]
        d_h_s = d_h_steps[s]  # ([D,] rows, P)
        dc_s = dc_rows.narrow(-2, 0, rows)
        d_new = d_h_s
        if zoned:  # split the state gradients between the previous state and the update
            d_new = d_h_s * new_h[s]
            dc_keep = dc_s * keep_c[s]
            dc_s.mul_(new_c[s])
        d_r = matmul(d_new, w_out) if has_projection else d_new  # ([D,] rows, P) @ ([D,] P, H)
        backward_rows(d_pre_o_steps[s], d_pre_ifg_steps[s], r_slope_steps[s], f_steps[s], d_r, dc_s)
        if zoned:
            dc_s.add_(dc_keep)
            if s > 0:
                d_h_steps[s - 1].narrow(-2, 0, rows).addcmul_(keep_h[s], d_h_s)
        if s == 0:
            continue
        d_h_prev = d_h_steps[s - 1].narrow(-2, 0, rows)
        if dropping:  # d_h_{s-1} += (d_pre_s @ W_hh) * drop
            into = product.narrow(-2, 0, rows)
            matmul(d_pre_steps[s], w, out=into)  # ([D,] rows, 4H) @ ([D,] 4H, P)
            d_h_prev.addcmul_(into, drop_rows.narrow(-2, 0, rows))
        else:  # d_h_{s-1} += d_pre_s @ W_hh: ([D,] rows, 4H) @ ([D,] 4H, P)
            add_matmul(d_h_prev, d_pre_steps[s], w)
