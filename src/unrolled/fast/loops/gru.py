r"""The GRU recurrence in torch ops: ``native/gru.cpp`` function for function.

Buffers: the GRU buffer contract in :mod:`unrolled.fast.gru`. The names, arguments, order of the
work, the rows each step advances and the rows it zeroes are the C++ loop's; one step's
elementwise math runs here as a few torch ops over a block of rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .rows import live_rows


def forward_rows(
    xw: Tensor,
    hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    n: Tensor,
    h_prev: Tensor,
    h: Tensor,
) -> None:
    r"""One step, a block of rows, with torch's biases ``b_ih, b_hh`` (3H each, rows r, z, n):

    .. math::
        r = \sigma(x_r + b_{ir} + b_{hr} + hh_r), \quad z = \sigma(x_z + b_{iz} + b_{hz} + hh_z) \\
        a = hh_n + b_{hn}, \quad n = \tanh(x_n + b_{in} + r \odot a), \quad
        h = n + z \odot (h_{prev} - n)

    ``xw (rows, 3H)`` is the hoisted ``x W_ih^T``; ``hh (rows, 3H)`` holds ``h_prev W_hh^T`` on
    entry and ``[r, z, a]`` on exit; ``n`` and ``h`` are ``(rows, H)``.
    """
    hidden = n.shape[1]
    x_rz, x_n = xw[:, : 2 * hidden], xw[:, 2 * hidden :]
    rz, a = hh[:, : 2 * hidden], hh[:, 2 * hidden :]
    pre_rz = x_rz if b_ih is None else x_rz + b_ih[: 2 * hidden] + b_hh[: 2 * hidden]
    torch.sigmoid(pre_rz + rz, out=rz)  # r, z
    r, z = rz.split(hidden, dim=1)
    if b_hh is not None:
        a.add_(b_hh[2 * hidden :])  # a = hh_n + b_hn
        x_n = x_n + b_ih[2 * hidden :]
    torch.addcmul(x_n, r, a, out=n).tanh_()  # n = tanh(x_n + b_in + r * a)
    torch.addcmul(n, z, h_prev - n, out=h)  # n + z (h_prev - n)


def backward_rows(
    hh: Tensor,
    n: Tensor,
    h_prev: Tensor,
    dh: Tensor,
    factors: Tensor,
    d_a: Tensor,
    dh_prev: Tensor,
) -> None:
    r"""One step backward, a block of rows, from ``dh`` (the full gradient reaching h_s):

    .. math::
        d\_pre_n &= dh (1 - z)(1 - n^2) \quad \text{(what } x_n, W_{in} \text{ saw)} \\
        d\_pre_r &= d\_pre_n \, a \, r (1 - r), \quad
        d\_pre_z = dh (h_{prev} - n) z (1 - z), \quad
        d_a = d\_pre_n \, r \quad \text{(what } W_{hn}, b_{hn} \text{ saw)}

    into ``factors (rows, 3H)`` as ``[n_x, r, z]`` and ``d_a (rows, H)``; and the lerp's own
    path ``dh * z`` added to ``dh_prev``. Every input is read before an output is written, so
    ``factors`` may be ``hh``'s own block and ``d_a`` may be ``dh``.
    """
    r, z, a = hh.split(n.shape[1], dim=1)  # 3 x (rows, H)
    d_pre_n = dh * (1 - z) * (1 - n * n)
    d_pre_r = d_pre_n * a * r * (1 - r)
    d_pre_z = dh * (h_prev - n) * z * (1 - z)
    d_pre_a = d_pre_n * r
    dh_prev.addcmul_(dh, z)
    torch.cat([d_pre_n, d_pre_r, d_pre_z], dim=1, out=factors)
    d_a.copy_(d_pre_a)


def gru_forward(
    xw: Tensor,
    hh: Tensor,
    ns: Tensor,
    hs: Tensor,
    w_rec: Tensor,
    biases: Sequence[Tensor],
    live: Sequence[int],
) -> None:
    """Forward (``forward_loop`` in C++): ``w_rec = W_hh^T (D, H, 3H)``; ``biases`` D x
    ``(b_ih, b_hh)``, each ``(3H,)``, or empty (bias=False)."""
    directions, steps, batch = xw.shape[:3]
    every_step = hh.shape[1] > 1  # kept for the backward, or one reused slot
    for d in range(directions):
        w = w_rec[d]  # (H, 3H)
        b_ih, b_hh = (biases[2 * d], biases[2 * d + 1]) if len(biases) else (None, None)
        for s in range(steps):
            rows = live_rows(live, s, batch)
            slot = s if every_step else 0
            hh_s = hh[d, slot, :rows]  # (rows, 3H)
            torch.mm(hs[d, s, :rows], w, out=hh_s)  # (rows, H) @ (H, 3H)
            forward_rows(
                xw[d, s, :rows], hh_s, b_ih, b_hh, ns[d, slot, :rows], hs[d, s, :rows],
                hs[d, s + 1, :rows],
            )  # fmt: skip
            hs[d, s + 1, rows:] = 0


def gru_backward(
    hh: Tensor,
    ns: Tensor,
    hs: Tensor,
    grads: Sequence[Tensor],
    w_hh: Sequence[Tensor],
    factors: Sequence[Tensor],
    d_h0: Tensor,
    live: Sequence[int],
) -> None:
    """Backward (``backward_loop`` in C++). ``grads`` D x ``(T, B, H)``: dh_s on entry, d_a on
    exit; ``factors`` D x ``(T, B, 3H)``: ``[n_x, r, z]`` per step (may be ``hh[d]``);
    ``d_h0 (D, B, H)``: the gradient of h_0; ``w_hh`` D x ``(3H, H)``, torch's rows (r, z, n)."""
    directions, steps, batch = hh.shape[:3]
    hidden = hs.shape[3]
    for d in range(directions):
        w_rz, w_n = w_hh[d][: 2 * hidden], w_hh[d][2 * hidden :]  # (2H, H), (H, H)
        d_h0[d].zero_()
        for s in range(steps - 1, -1, -1):
            rows = live_rows(live, s, batch)
            factors_s = factors[d][s, :rows]  # (rows, 3H)
            a_s = grads[d][s, :rows]  # (rows, H): dh_s in, d_a out
            dh_prev = grads[d][s - 1, :rows] if s > 0 else d_h0[d, :rows]
            backward_rows(
                hh[d, s, :rows], ns[d, s, :rows], hs[d, s, :rows], a_s, factors_s, a_s, dh_prev
            )
            factors[d][s, rows:] = 0
            grads[d][s, rows:] = 0
            # dh_{s-1} += [d_pre_r, d_pre_z] @ W_hr,hz + d_a @ W_hn: (rows, 2H) @ (2H, H) and
            # (rows, H) @ (H, H)
            dh_prev.addmm_(factors_s[:, hidden:], w_rz).addmm_(a_s, w_n)
