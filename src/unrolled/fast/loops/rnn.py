r"""The Elman RNN recurrence (tanh or ReLU) in torch ops: ``native/rnn.cpp`` function for
function.

Buffers: the RNN buffer contract in :mod:`unrolled.fast.rnn`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .rows import live_rows


def activate_rows(h: Tensor, relu: bool) -> None:
    """``h = act(pre)`` in place, ``h (rows, H)``; ReLU keeps NaN, as torch's does."""
    if relu:
        h.relu_()
    else:
        h.tanh_()


def backward_rows(h: Tensor, dh: Tensor, d_pre: Tensor, relu: bool) -> None:
    """``d_pre = dh * act'(h)``: tanh' = 1 - h^2; ReLU passes dh where ``h <= 0`` does not hold
    (torch's threshold_backward: a NaN state passes its gradient on). ``d_pre`` may be ``dh``."""
    if relu:
        d_pre.copy_(dh.masked_fill(h <= 0, 0))
    else:
        torch.mul(dh, 1 - h * h, out=d_pre)


def rnn_forward(hs: Tensor, w_rec: Tensor, relu: bool, live: Sequence[int]) -> None:
    """Forward: ``h_s = act(hs[s+1] + h_{s-1} @ W_hh^T)``, ``w_rec = W_hh^T (D, H, H)``."""
    directions, slots, batch = hs.shape[:3]
    for d in range(directions):
        w = w_rec[d]  # (H, H)
        for s in range(slots - 1):
            rows = live_rows(live, s, batch)
            h = hs[d, s + 1, :rows]  # (rows, H): the hoisted projection in, h_s out
            h.addmm_(hs[d, s, :rows], w)  # += (rows, H) @ (H, H)
            activate_rows(h, relu)
            hs[d, s + 1, rows:] = 0


def rnn_backward(
    hs: Tensor, grads: Sequence[Tensor], w_hh: Sequence[Tensor], relu: bool, live: Sequence[int]
) -> None:
    """Backward: ``grads`` D x ``(T, B, H)`` holds the gradient reaching each h_s on entry and
    ``d_pre_s`` on exit (step s turns its own dh_s into d_pre_s once the later steps have added
    to it); ``dh_{s-1} += d_pre_s @ W_hh`` with ``w_hh`` D x ``(H, H)``."""
    directions, slots, batch = hs.shape[:3]
    for d in range(directions):
        w = w_hh[d]  # (H, H)
        for s in range(slots - 2, -1, -1):
            rows = live_rows(live, s, batch)
            grad = grads[d][s, :rows]  # (rows, H)
            backward_rows(hs[d, s + 1, :rows], grad, grad, relu)
            grads[d][s, rows:] = 0
            if s > 0:  # dh_{s-1} += d_pre_s @ W_hh: (rows, H) @ (H, H)
                grads[d][s - 1, :rows].addmm_(grad, w)
