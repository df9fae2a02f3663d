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

from .rows import directions_batched, state_views, step_views


def activate_rows(h: Tensor, relu: bool) -> None:
    """``h = act(pre)`` in place; ReLU keeps NaN, as torch's does."""
    if relu:
        h.relu_()
    else:
        h.tanh_()


def rnn_forward(
    hs: Tensor, w_rec: Sequence[Tensor], relu: bool, batch_sizes: Sequence[int], fused: bool = False
) -> None:
    """Forward: ``h_s = act(h_s's rows + h_{s-1} @ W_hh^T)``, ``w_rec`` D x ``W_hh^T (H, H)``.
    ``fused`` (the C++ loop's engine switch) changes nothing here."""
    one = hs.shape[0] == 1
    add_matmul = torch.Tensor.addmm_ if one else torch.Tensor.baddbmm_
    w = directions_batched(w_rec)  # ([D,] H, H)
    h_prev_steps, h_steps = state_views(hs, batch_sizes, one)
    for h_prev, h in zip(h_prev_steps, h_steps):  # ([D,] rows, H): x_s W_ih^T + b in, h_s out
        add_matmul(h, h_prev, w)  # += ([D,] rows, H) @ ([D,] H, H)
        activate_rows(h, relu)


def activation_slopes(states: Tensor, relu: bool) -> Tensor:
    """``act'`` at every state ``(N, H)`` at once: ``1 - h^2`` for tanh; for ReLU, where the
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
    batch_sizes: Sequence[int],
    fused: bool = False,
) -> None:
    """Backward: ``grads`` D x ``(N, H)`` holds the gradient reaching each h_s on entry and
    ``d_pre_s`` on exit (step s turns its own d_h_s into d_pre_s once the later steps have
    added to it); ``d_h_{s-1} += d_pre_s @ W_hh`` with ``w_hh`` D x ``(H, H)``."""
    batch = batch_sizes[0] if len(batch_sizes) else 0
    for d in range(hs.shape[0]):
        w = w_hh[d]  # (H, H)
        slopes = activation_slopes(hs[d, batch:], relu).unsqueeze(0)  # (1, N, H)
        slope_steps = step_views(slopes, batch_sizes, True)  # T x (rows, H)
        grad_steps = step_views(grads[d].unsqueeze(0), batch_sizes, True)
        for s in range(len(batch_sizes) - 1, -1, -1):
            grad = grad_steps[s]  # (rows, H)
            backward_rows(slope_steps[s], grad, relu)
            if s > 0:  # d_h_{s-1} += d_pre_s @ W_hh: (rows, H) @ (H, H)
                grad_steps[s - 1].narrow(0, 0, batch_sizes[s]).addmm_(grad, w)
