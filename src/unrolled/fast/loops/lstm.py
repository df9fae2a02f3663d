r"""The LSTM recurrence in torch ops: ``native/lstm.cpp`` function for function.

Buffers: the LSTM buffer contract in :mod:`unrolled.fast.lstm`. The names, arguments, order of
the work, the rows each step advances and the rows it zeroes are the C++ loop's; one step's
elementwise math runs here as a few torch ops over a block of rows instead of one vectorised
pass element by element.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .rows import given, live_rows


def forward_rows(
    gates: Tensor, bias: Tensor | None, c_prev: Tensor, c: Tensor, out: Tensor
) -> None:
    r"""One step, a block of rows, with ``a = gates + bias``:

    .. math::
        i, f, o = \sigma(a_i, a_f, a_o), \quad g = \tanh(a_g), \quad
        c = f \odot c_{prev} + i \odot g, \quad out = o \odot \tanh(c)

    ``gates (rows, 4H)`` holds the pre-activations without the bias and gets the activated gates
    (torch's order i, f, g, o), in place. ``out (rows, H)`` is h (no projection) or r, the input
    of W_hr. ``c_prev`` may be ``c`` (one reused slot).
    """
    hidden = c.shape[1]
    if bias is not None:
        gates.add_(bias)  # a: (rows, 4H)
    i, f, g, o = gates.split(hidden, dim=1)  # 4 x (rows, H) views
    gates[:, : 2 * hidden].sigmoid_()  # i, f
    g.tanh_()
    o.sigmoid_()
    torch.addcmul(f * c_prev, i, g, out=c)  # f * c_prev + i * g
    torch.mul(o, torch.tanh(c), out=out)


def backward_rows(
    gates: Tensor,
    c_prev: Tensor,
    c: Tensor,
    dr: Tensor,
    dc: Tensor,
    dc_arrival: Tensor | None,
    d_pre: Tensor,
    r: Tensor | None,
) -> None:
    r"""One step backward, a block of rows. ``dr`` is the gradient reaching ``o * tanh(c)``
    (dh, or dh @ W_hr); ``dc`` holds dc_s on entry (plus ``dc_arrival``, the c_n gradient
    entering at this step) and dc_{s-1} on exit:

    .. math::
        dc &\mathrel{+}= dr \, o (1 - \tanh^2 c) \\
        d\_pre_o &= dr \tanh(c) \, o (1 - o), \quad d\_pre_i = dc \, g \, i (1 - i) \\
        d\_pre_f &= dc \, c_{prev} f (1 - f), \quad d\_pre_g = dc \, i (1 - g^2), \quad
        dc_{prev} = dc \, f

    into ``d_pre (rows, 4H)`` in torch's gate order; ``r`` (optional) gets ``o * tanh(c)``.
    Every input is read before ``d_pre`` is written, so ``d_pre`` may be the gates' own block.
    """
    hidden = c.shape[1]
    i, f, g, o = gates.split(hidden, dim=1)  # 4 x (rows, H)
    tanh_c = torch.tanh(c)
    if dc_arrival is not None:
        dc.add_(dc_arrival)
    dc.addcmul_(dr, o * (1 - tanh_c * tanh_c))
    if r is not None:
        torch.mul(o, tanh_c, out=r)
    d_pre_o = dr * tanh_c * o * (1 - o)
    d_pre_i = dc * g * i * (1 - i)
    d_pre_f = dc * c_prev * f * (1 - f)
    d_pre_g = dc * i * (1 - g * g)
    dc.mul_(f)  # dc_prev
    torch.cat([d_pre_i, d_pre_f, d_pre_g, d_pre_o], dim=1, out=d_pre)


def forward_direction(
    d: int,
    gates: Tensor,
    bias: Tensor,
    w_rec: Tensor,
    w_proj: Tensor,
    cs: Tensor,
    hs: Tensor,
    r: Tensor | None,
    live: Sequence[int],
) -> None:
    """The forward time loop of direction ``d``."""
    steps, batch = gates.shape[1], gates.shape[2]
    projected, every_cell = given(w_proj), cs.shape[1] > 1
    w = w_rec[d]  # (P, 4H)
    w_out = w_proj[d] if projected else None  # (H, P)
    b = bias[d] if given(bias) else None  # (4H,)
    for s in range(steps):
        rows = live_rows(live, s, batch)
        gate = gates[d, s, :rows]  # (rows, 4H)
        h_prev = hs[d, s, :rows]  # (rows, P)
        c_prev = cs[d, s if every_cell else 0, :rows]  # (rows, H)
        c = cs[d, s + 1, :rows] if every_cell else c_prev  # slot s+1, or the same slot
        out = r[d, :rows] if projected else hs[d, s + 1, :rows]
        gate.addmm_(h_prev, w)  # += (rows, P) @ (P, 4H)
        forward_rows(gate, b, c_prev, c, out)
        if projected:
            torch.mm(out, w_out, out=hs[d, s + 1, :rows])  # (rows, H) @ (H, P)
        hs[d, s + 1, rows:] = 0
        if every_cell:
            cs[d, s + 1, rows:] = 0


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
) -> None:
    """Forward over all directions (``forward_loop`` in C++). ``keep`` and ``packed`` are the
    C++ loop's speed switches (store the activated gates only when a backward reads them; MKL's
    packed GEMM for the recurrent product): here the gates are activated in place either way and
    the product is a plain GEMM, which the contract allows."""
    directions, _, batch, four_hidden = gates.shape
    r = gates.new_empty(directions, batch, four_hidden // 4) if given(w_proj) else None
    for d in range(directions):
        forward_direction(d, gates, bias, w_rec, w_proj, cs, hs, r, live)


def backward_direction(
    d: int,
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
) -> None:
    """The backward time loop of direction ``d``."""
    steps, batch = gates.shape[1], gates.shape[2]
    projected, arrivals, keep_r = given(w_proj), given(dc_arrivals), given(r)
    w = w_rec[d]  # (4H, P)
    w_out = w_proj[d] if projected else None  # (P, H)
    for s in range(steps - 1, -1, -1):
        rows = live_rows(live, s, batch)
        dh = d_h[d, s, :rows]  # (rows, P)
        dr = torch.mm(dh, w_out) if projected else dh  # (rows, P) @ (P, H)
        backward_rows(
            gates[d, s, :rows], cs[d, s, :rows], cs[d, s + 1, :rows], dr, dc[d, :rows],
            dc_arrivals[d, s, :rows] if arrivals else None, d_pre[d, s, :rows],
            r[d, s, :rows] if keep_r else None,
        )  # fmt: skip
        d_pre[d, s, rows:] = 0
        if keep_r:
            r[d, s, rows:] = 0
        if s > 0:  # dh_{s-1} += d_pre_s @ W_hh: (rows, 4H) @ (4H, P)
            d_h[d, s - 1, :rows].addmm_(d_pre[d, s, :rows], w)


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
) -> None:
    """Backward over all directions (``backward_loop`` in C++)."""
    for d in range(gates.shape[0]):
        backward_direction(d, gates, cs, d_h, dc, dc_arrivals, w_rec, w_proj, d_pre, r, live)
