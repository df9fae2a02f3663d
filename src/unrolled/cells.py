"""One time step of each recurrent cell: pure functions, no loop, no state of their own.

Every function takes the input at one step and the previous state, plus the weights in torch's
layout, and returns the new state. Shapes use one set of letters: ``B`` batch, ``I`` input size,
``H`` hidden size, ``P`` projection size. Gates are stacked in torch's order along the first dim
of the weights (LSTM ``i, f, g, o``; GRU ``r, z, n``), so ``weight_ih`` of an LSTM is ``(4H, I)``.

These functions are the executable specification: the reference backend calls them once per
step, the cell modules (``RNNCell`` ...) call them once, and the fast backend must agree with them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``x @ weight.T + bias``, the affine map every gate is built from: ``(B, in) -> (B, out)``.

    ``F.linear`` computes exactly that; it is also the one op that tensor subclasses such as
    torch's per-sample-gradient ``ExpandedWeight`` know how to differentiate per sample."""
    return F.linear(x, weight, bias)


def rnn_tanh(
    x: Tensor,
    h: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None = None,
    bias_hh: Tensor | None = None,
) -> Tensor:
    r"""Elman RNN step with tanh.

    .. math::  h' = \tanh(W_{ih} x + b_{ih} + W_{hh} h + b_{hh})

    Args:
        x: ``(B, I)`` input at this step.
        h: ``(B, H)`` previous hidden state.
        weight_ih: ``(H, I)``; weight_hh: ``(H, H)``; bias_ih, bias_hh: ``(H,)`` or None.

    Returns:
        h': ``(B, H)``.
    """
    return torch.tanh(linear(x, weight_ih, bias_ih) + linear(h, weight_hh, bias_hh))


def rnn_relu(
    x: Tensor,
    h: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None = None,
    bias_hh: Tensor | None = None,
) -> Tensor:
    r"""Elman RNN step with ReLU.

    .. math::  h' = \max(0, W_{ih} x + b_{ih} + W_{hh} h + b_{hh})

    Shapes as in :func:`rnn_tanh`.
    """
    return torch.relu(linear(x, weight_ih, bias_ih) + linear(h, weight_hh, bias_hh))


def lstm(
    x: Tensor,
    state: tuple[Tensor, Tensor],
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None = None,
    bias_hh: Tensor | None = None,
    weight_hr: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    r"""LSTM step, with the optional output projection of Sak et al. (2014).

    .. math::
        i  &= \sigma(W_{ii} x + b_{ii} + W_{hi} h + b_{hi}) \\
        f  &= \sigma(W_{if} x + b_{if} + W_{hf} h + b_{hf}) \\
        g  &= \tanh(W_{ig} x + b_{ig} + W_{hg} h + b_{hg}) \\
        o  &= \sigma(W_{io} x + b_{io} + W_{ho} h + b_{ho}) \\
        c' &= f \odot c + i \odot g \\
        h' &= o \odot \tanh(c')            \quad\text{or, with a projection,}\quad
        h'  = W_{hr} (o \odot \tanh(c'))

    Args:
        x: ``(B, I)``.
        state: ``(h, c)`` with h ``(B, P)`` (``P = H`` without projection) and c ``(B, H)``.
        weight_ih: ``(4H, I)``; weight_hh: ``(4H, P)``; biases ``(4H,)`` or None;
        weight_hr: ``(P, H)`` or None.

    Returns:
        ``(h', c')`` with shapes ``(B, P)`` and ``(B, H)``.
    """
    h, c = state
    gates = linear(x, weight_ih, bias_ih) + linear(h, weight_hh, bias_hh)  # (B, 4H)
    i, f, g, o = gates.chunk(4, dim=-1)  # 4 x (B, H)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c_next = f * c + i * g
    h_next = o * torch.tanh(c_next)  # (B, H)
    if weight_hr is not None:
        h_next = linear(h_next, weight_hr, None)  # (B, H) @ (H, P) -> (B, P)
    return h_next, c_next


def gru(
    x: Tensor,
    h: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None = None,
    bias_hh: Tensor | None = None,
) -> Tensor:
    r"""GRU step in torch's formulation (the reset gate multiplies ``W_hn h + b_hn``).

    .. math::
        r  &= \sigma(W_{ir} x + b_{ir} + W_{hr} h + b_{hr}) \\
        z  &= \sigma(W_{iz} x + b_{iz} + W_{hz} h + b_{hz}) \\
        n  &= \tanh(W_{in} x + b_{in} + r \odot (W_{hn} h + b_{hn})) \\
        h' &= (1 - z) \odot n + z \odot h

    Args:
        x: ``(B, I)``; h: ``(B, H)``; weight_ih: ``(3H, I)``; weight_hh: ``(3H, H)``;
        biases ``(3H,)`` or None.

    Returns:
        h': ``(B, H)``.
    """
    x_r, x_z, x_n = linear(x, weight_ih, bias_ih).chunk(3, dim=-1)  # 3 x (B, H)
    h_r, h_z, h_n = linear(h, weight_hh, bias_hh).chunk(3, dim=-1)  # 3 x (B, H)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return (1 - z) * n + z * h


#: The step function of each mode, keyed by torch's mode names.
CELLS = {"RNN_TANH": rnn_tanh, "RNN_RELU": rnn_relu, "LSTM": lstm, "GRU": gru}
