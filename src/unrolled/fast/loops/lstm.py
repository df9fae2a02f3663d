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

from .rows import first_rows, first_rows_of, given, live_rows, step_views


class GateBlocks(NamedTuple):
    """One step's gates, views into the gates buffer: ``all ([D,] B, 4H)`` and each gate ``([D,]
    B, H)`` in torch's order; ``i_f`` is ``i`` and ``f`` as one block (one sigmoid for both)."""

    all: Tensor
    i_f: Tensor
    i: Tensor
    f: Tensor
    g: Tensor
    o: Tensor


def gate_blocks(gates: Tensor, one_direction: bool) -> list[GateBlocks]:
    """``gates (D, T, B, 4H)`` -> per step, its :class:`GateBlocks`."""
    hidden = gates.shape[-1] // 4
    blocks = (gates, gates[..., : 2 * hidden], *gates.split(hidden, dim=-1))  # all, i_f, i, f, g, o
    return [GateBlocks(*step) for step in zip(*(step_views(b, one_direction) for b in blocks))]


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
    w_rec: Tensor,
    w_proj: Tensor,
    cs: Tensor,
    hs: Tensor,
    live: Sequence[int],
    keep: bool,
    packed: bool,
    fused: bool,
    inputs: Sequence[Tensor] = (),
    w_in: Sequence[Tensor] = (),
) -> None:
    """Forward (``forward_loop`` in C++). ``keep``, ``packed`` and ``fused`` are the C++ loop's
    speed switches (store the activated gates only when a backward reads them; MKL's packed
    GEMM for the recurrent product; the fused engine): here the gates are activated in place
    either way and the product is a plain GEMM, as the contract allows. With ``inputs`` the
    loop computes the input part itself, into ``gates``."""
    for x, w, target in zip(inputs, w_in, gates):  # (T, B, I) @ (I, 4H) -> (T, B, 4H)
        torch.matmul(x, w.t(), out=target)
    directions, steps, batch, four_hidden = gates.shape
    has_projection, every_cell = given(w_proj), cs.shape[1] > 1
    if given(bias):
        gates += bias.view(directions, 1, 1, four_hidden)  # a = x W_ih^T + b, every step
    # One direction: 2-D views and addmm_ (it adds in place; baddbmm_ on a strided view copies).
    one = directions == 1
    add_matmul = torch.Tensor.addmm_ if one else torch.Tensor.baddbmm_
    matmul = torch.mm if one else torch.bmm
    w = w_rec[0] if one else w_rec  # ([D,] P, 4H)
    w_out = (w_proj[0] if one else w_proj) if has_projection else None  # ([D,] H, P)
    r = gates.new_empty(directions, batch, four_hidden // 4) if has_projection else None
    r = r[0] if has_projection and one else r  # ([D,] B, H)
    gate_steps, h_steps, c_steps = gate_blocks(gates, one), step_views(hs, one), step_views(cs, one)
    if not every_cell:
        c_steps *= steps + 1  # one reused slot
    for s in range(steps):
        rows = live_rows(live, s, batch)
        step_gates = first_rows_of(gate_steps[s], rows)  # ([D,] rows, 4H or H)
        c_prev, c = first_rows(c_steps[s], rows), first_rows(c_steps[s + 1], rows)
        h_next = first_rows(h_steps[s + 1], rows)  # ([D,] rows, P)
        out = first_rows(r, rows) if has_projection else h_next
        # += ([D,] rows, P) @ ([D,] P, 4H)
        add_matmul(step_gates.all, first_rows(h_steps[s], rows), w)
        forward_rows(step_gates, c_prev, c, out)
        if has_projection:
            matmul(out, w_out, out=h_next)  # ([D,] rows, H) @ ([D,] H, P)
        if rows < batch:
            hs[:, s + 1, rows:] = 0
            if every_cell:
                cs[:, s + 1, rows:] = 0


def backward_factors(gates: Tensor, cs: Tensor, d_pre: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
    r"""The step-independent half of ``backward_rows``, for all steps at once:

    .. math::
        d\_pre &\leftarrow [\, g\, i (1 - i),\ c_{prev} f (1 - f),\ i (1 - g^2),\
                             \tanh(c)\, o (1 - o) \,] \\
        r\_slope &= \partial r / \partial c = o (1 - \tanh^2 c), \qquad
        r = o \tanh(c) \ \text{(if asked)}

    written into ``d_pre (D, T, B, 4H)`` (which may be ``gates`` itself: every gate is read
    before its block is written). Returns ``(r_slope (D, T, B, H), f (D, T, B, H))``, ``f``
    being a copy when ``d_pre`` overwrites the gates (the loop needs it for ``dc_prev = dc f``).
    """
    hidden = cs.shape[-1]
    steps = gates.shape[1]
    i, f, g, o = gates.split(hidden, dim=-1)  # 4 x (D, T, B, H)
    d_pre_i, d_pre_f, d_pre_g, d_pre_o = d_pre.split(hidden, dim=-1)
    c_prev, c = cs[:, :steps], cs[:, 1:]
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
    dc_arrival: Tensor | None,
) -> None:
    r"""One step backward, the half that depends on the recurrence. ``d_r`` is the gradient
    reaching ``r = o tanh(c)``; ``dc`` holds c_s's gradient on entry (plus ``dc_arrival``, the
    c_n gradient entering at this step) and c_{s-1}'s on exit; ``d_pre_o ([D,] rows, H)`` and
    ``d_pre_ifg ([D,] rows, 3, H)``, this step's blocks of ``d_pre``, hold its factors
    (:func:`backward_factors`) on entry and the pre-activation gradients on exit:

    .. math::
        dc \mathrel{+}= d\_r \cdot r\_slope, \quad
        d\_pre_{i,f,g} \mathrel{*}= dc, \quad d\_pre_o \mathrel{*}= d\_r, \quad
        dc_{prev} = dc \, f
    """
    if dc_arrival is not None:
        dc.add_(dc_arrival)
    dc.addcmul_(d_r, r_slope)
    d_pre_o.mul_(d_r)
    d_pre_ifg.mul_(dc.unsqueeze(-2))
    dc.mul_(f)  # dc_prev


def lstm_backward(
    gates: Tensor,
    cs: Tensor,
    d_h: Tensor,
    dc: Tensor,
    dc_arrivals: Tensor,
    w_rec: Tensor,
    w_proj: Tensor,
    d_pre: Tensor,
    r: Tensor,
    live: Sequence[int],
    fused: bool,
) -> None:
    """Backward (``backward_loop`` in C++; ``fused``, the C++ loop's engine switch, changes
    nothing here)."""
    directions, steps, batch, four_hidden = gates.shape
    hidden = four_hidden // 4
    has_projection, arrivals = given(w_proj), given(dc_arrivals)
    r_slope, f = backward_factors(gates, cs, d_pre, r)
    one = directions == 1
    add_matmul = torch.Tensor.addmm_ if one else torch.Tensor.baddbmm_
    matmul = torch.mm if one else torch.bmm
    w = w_rec[0] if one else w_rec  # ([D,] 4H, P)
    w_out = (w_proj[0] if one else w_proj) if has_projection else None  # ([D,] P, H)
    dc_rows = dc[0] if one else dc  # ([D,] B, H): the loop updates dc in place
    d_pre_steps, d_h_steps = step_views(d_pre, one), step_views(d_h, one)
    d_pre_o_steps = step_views(d_pre[..., 3 * hidden :], one)  # T x ([D,] B, H)
    d_pre_ifg_steps = step_views(d_pre[..., : 3 * hidden].unflatten(-1, (3, hidden)), one)
    r_slope_steps, f_steps = step_views(r_slope, one), step_views(f, one)
    arrival_steps = step_views(dc_arrivals, one) if arrivals else None
    for s in range(steps - 1, -1, -1):
        rows = live_rows(live, s, batch)
        d_h_s = first_rows(d_h_steps[s], rows)  # ([D,] rows, P)
        d_r = matmul(d_h_s, w_out) if has_projection else d_h_s  # ([D,] rows, P) @ ([D,] P, H)
        arrival = first_rows(arrival_steps[s], rows) if arrivals else None
        backward_rows(
            first_rows(d_pre_o_steps[s], rows), first_rows(d_pre_ifg_steps[s], rows, dim=-3),
            first_rows(r_slope_steps[s], rows), first_rows(f_steps[s], rows), d_r,
            first_rows(dc_rows, rows), arrival,
        )  # fmt: skip
        if rows < batch:
            d_pre[:, s, rows:] = 0
            if given(r):
                r[:, s, rows:] = 0
        if s > 0:  # d_h_{s-1} += d_pre_s @ W_hh: ([D,] rows, 4H) @ ([D,] 4H, P)
            add_matmul(first_rows(d_h_steps[s - 1], rows), first_rows(d_pre_steps[s], rows), w)
