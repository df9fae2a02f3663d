r"""The Elman RNN recurrence (tanh or ReLU) in torch ops: ``native/rnn.cpp``'s loops on the same
buffers.

What it must equal: :func:`unrolled.cells.rnn_tanh` / :func:`unrolled.cells.rnn_relu` at every
step (the forward), and the derivative lines in :mod:`unrolled.fast.rnn` (the backward).
Buffers: the RNN buffer contract in :mod:`unrolled.fast.rnn`. The forward advances the
directions together (one batched matmul per step); the backward takes ``act'`` for all steps
at once before the loop (:func:`activation_slopes`) and runs the directions one after the other
(their gradient buffers are separate), as the C++ loop does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .rows import first_rows, live_rows, step_views


def activate_rows(h: Tensor, relu: bool) -> None:
    """``h = act(pre)`` in place; ReLU keeps NaN, as torch's does."""
    if relu:
        h.relu_()
    else:
        h.tanh_()


def rnn_forward(
    hs: Tensor, w_rec: Tensor, relu: bool, live: Sequence[int], fused: bool = False
) -> None:
    """Forward: ``h_s = act(hs[s+1] + h_{s-1} @ W_hh^T)``, ``w_rec = W_hh^T (D, H, H)``.
    ``fused`` (the C++ loop's engine switch) changes nothing here."""
    directions, slots, batch = hs.shape[:3]
    one = directions == 1
    add_matmul = torch.Tensor.addmm_ if one else torch.Tensor.baddbmm_
    w = w_rec[0] if one else w_rec  # ([D,] H, H)
    h_steps = step_views(hs, one)
    for s in range(slots - 1):
        rows = live_rows(live, s, batch)
        h = first_rows(h_steps[s + 1], rows)  # ([D,] rows, H): x_s W_ih^T + b in, h_s out
        add_matmul(h, first_rows(h_steps[s], rows), w)  # += ([D,] rows, H) @ ([D,] H, H)
        activate_rows(h, relu)
        if rows < batch:
            hs[:, s + 1, rows:] = 0


def activation_slopes(states: Tensor, relu: bool) -> Tensor:
    """``act'`` at every state ``(T, B, H)`` at once: ``1 - h^2`` for tanh; for ReLU, where the
    gradient stops (``h <= 0``, as torch's threshold_backward: a NaN state passes it on)."""
    return states <= 0 if relu else 1 - states * states


def backward_rows(slope: Tensor, grad: Tensor, relu: bool) -> None:
    """``d_pre = d_h * act'(h)``, in place over ``grad`` (``d_h``, a block of rows)."""
    if relu:
        grad.masked_fill_(slope, 0)
    else:
        grad.mul_(slope)


def rnn_backward(
    hs: Tensor,
    grads: Sequence[Tensor],
    w_hh: Sequence[Tensor],
    relu: bool,
    live: Sequence[int],
    fused: bool = False,
) -> None:
    """Backward: ``grads`` D x ``(T, B, H)`` holds the gradient reaching each h_s on entry and
    ``d_pre_s`` on exit (step s turns its own d_h_s into d_pre_s once the later steps have
    added to it); ``d_h_{s-1} += d_pre_s @ W_hh`` with ``w_hh`` D x ``(H, H)``."""
    directions, slots, batch = hs.shape[:3]
    for d in range(directions):
        w = w_hh[d]  # (H, H)
        slope_steps = activation_slopes(hs[d, 1:], relu).unbind(0)  # T x (B, H)
        grad_steps = grads[d].unbind(0)
        for s in range(slots - 2, -1, -1):
            rows = live_rows(live, s, batch)
            grad = first_rows(grad_steps[s], rows)  # (rows, H)
            backward_rows(first_rows(slope_steps[s], rows), grad, relu)
            if rows < batch:
                grads[d][s, rows:] = 0
            if s > 0:  # d_h_{s-1} += d_pre_s @ W_hh: (rows, H) @ (H, H)
                first_rows(grad_steps[s - 1], rows).addmm_(grad, w)
