"""One time step of each built-in cell, written once: the executable specification.

Every built-in cell is two affine maps and an update:

* the **input part** ``xw = W_ih x + b_ih``, ``(B, G*H)``: it does not depend on the state, so a
  runner may compute it for all time steps at once before the loop;
* the **recurrent part** ``hw = W_hh h + b_hh``, ``(B, G*H)``: the one matmul per step;
* the **update**, elementwise: gates and new state from ``xw``, ``hw`` and the old state. Each
  update returns every intermediate by its name in the equations (a named tuple), so the
  explainer prints what the cell computed rather than recomputing it.

Shapes: ``B`` batch, ``I`` input size, ``H`` hidden size, ``P`` projection size (``H`` without
one), ``G`` the mode's number of gates. Gates are stacked in torch's order along the first dim of
the weights (LSTM ``i, f, g, o``; GRU ``r, z, n``), so ``weight_ih`` of an LSTM is ``(4H, I)``.

Each cell's equations are data (an :class:`~unrolled.equations.Equation` table right above its
update), rendered into the docstrings below, by ``unrolled explain``, and in the docs. Everything
else that computes a step calls these functions: the reference backend, the cell modules
(``RNNCell`` ...), streaming, recurrent dropout and zoneout. The fast backend's loops (Python and
C++) are hand-fused forms of the same updates with a hand-written backward, held to them by tests.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .equations import Equation, with_equations


def input_part(x: Tensor, weight_ih: Tensor, bias_ih: Tensor | None) -> Tensor:
    """``W_ih x + b_ih``: ``(..., I) -> (..., G*H)``; for one step or for all steps at once.

    ``F.linear`` computes exactly that; it is also the one op that tensor subclasses such as
    torch's per-sample-gradient ``ExpandedWeight`` know how to differentiate per sample."""
    return F.linear(x, weight_ih, bias_ih)


def recurrent_part(h: Tensor, weight_hh: Tensor, bias_hh: Tensor | None) -> Tensor:
    """``W_hh h + b_hh``: ``(B, P) -> (B, G*H)``, the one matmul that must wait for the state."""
    return F.linear(h, weight_hh, bias_hh)


# ---- Elman RNN -----------------------------------------------------------------------------


class RNNValues(NamedTuple):
    h: Tensor  # h' (B, H)


RNN_TANH_EQUATIONS = (Equation("h'", r"tanh(W_ih x + b_ih + W_hh h + b_hh)"),)
RNN_RELU_EQUATIONS = (Equation("h'", r"max(0, W_ih x + b_ih + W_hh h + b_hh)"),)


def rnn_tanh_update(xw: Tensor, hw: Tensor) -> RNNValues:
    """The tanh RNN's update from its input part ``xw`` and recurrent part ``hw``, ``(B, H)``."""
    return RNNValues(torch.tanh(xw + hw))


def rnn_relu_update(xw: Tensor, hw: Tensor) -> RNNValues:
    """The ReLU RNN's update from its input part ``xw`` and recurrent part ``hw``, ``(B, H)``."""
    return RNNValues(torch.relu(xw + hw))


@with_equations(RNN_TANH_EQUATIONS)
def rnn_tanh(
    x: Tensor,
    h: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None = None,
    bias_hh: Tensor | None = None,
) -> Tensor:
    """Elman RNN step with tanh.

    Args:
        x: ``(B, I)`` input at this step.
        h: ``(B, H)`` previous hidden state.
        weight_ih: ``(H, I)``; weight_hh: ``(H, H)``; bias_ih, bias_hh: ``(H,)`` or None.

    Returns:
        h': ``(B, H)``.
    """
    return rnn_tanh_update(
        input_part(x, weight_ih, bias_ih), recurrent_part(h, weight_hh, bias_hh)
    ).h


@with_equations(RNN_RELU_EQUATIONS)
def rnn_relu(
    x: Tensor,
    h: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None = None,
    bias_hh: Tensor | None = None,
) -> Tensor:
    """Elman RNN step with ReLU. Shapes as in :func:`rnn_tanh`."""
    return rnn_relu_update(
        input_part(x, weight_ih, bias_ih), recurrent_part(h, weight_hh, bias_hh)
    ).h


# ---- LSTM ----------------------------------------------------------------------------------


class LSTMValues(NamedTuple):
    i: Tensor  # input gate (B, H)
    f: Tensor  # forget gate (B, H)
    g: Tensor  # candidate cell (B, H)
    o: Tensor  # output gate (B, H)
    c: Tensor  # c' (B, H)
    h: Tensor  # h' (B, P)


LSTM_EQUATIONS = (
    Equation("i", "σ(W_ii x + b_ii + W_hi h + b_hi)"),
    Equation("f", "σ(W_if x + b_if + W_hf h + b_hf)"),
    Equation("g", "tanh(W_ig x + b_ig + W_hg h + b_hg)"),
    Equation("o", "σ(W_io x + b_io + W_ho h + b_ho)"),
    Equation("c'", "f ⊙ c + i ⊙ g"),
    Equation("h'", "o ⊙ tanh(c')", projected="W_hr (o ⊙ tanh(c'))"),
)


def lstm_update(xw: Tensor, hw: Tensor, c: Tensor, weight_hr: Tensor | None = None) -> LSTMValues:
    """The LSTM's update from its input part ``xw`` and recurrent part ``hw`` (both ``(B, 4H)``)
    and the old cell state ``c (B, H)``; with ``weight_hr (P, H)``, Sak et al.'s (2014) output
    projection."""
    gates = xw + hw  # (B, 4H): i, f, g, o
    i, f, g, o = gates.chunk(4, dim=-1)  # 4 x (B, H)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c_next = torch.addcmul(f * c, i, g)  # f ⊙ c + i ⊙ g, (B, H)
    h_next = o * torch.tanh(c_next)  # (B, H)
    if weight_hr is not None:
        h_next = F.linear(h_next, weight_hr)  # (B, H) @ (H, P) -> (B, P)
    return LSTMValues(i, f, g, o, c_next, h_next)


@with_equations(LSTM_EQUATIONS)
def lstm(
    x: Tensor,
    state: tuple[Tensor, Tensor],
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None = None,
    bias_hh: Tensor | None = None,
    weight_hr: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """LSTM step, with the optional output projection of Sak et al. (2014).

    Args:
        x: ``(B, I)``.
        state: ``(h, c)`` with h ``(B, P)`` (``P = H`` without projection) and c ``(B, H)``.
        weight_ih: ``(4H, I)``; weight_hh: ``(4H, P)``; biases ``(4H,)`` or None;
        weight_hr: ``(P, H)`` or None.

    Returns:
        ``(h', c')`` with shapes ``(B, P)`` and ``(B, H)``.
    """
    h, c = state
    xw, hw = input_part(x, weight_ih, bias_ih), recurrent_part(h, weight_hh, bias_hh)
    values = lstm_update(xw, hw, c, weight_hr)
    return values.h, values.c


# ---- GRU -----------------------------------------------------------------------------------


class GRUValues(NamedTuple):
    r: Tensor  # reset gate (B, H)
    z: Tensor  # update gate (B, H)
    n: Tensor  # candidate state (B, H)
    h: Tensor  # h' (B, H)


GRU_EQUATIONS = (
    Equation("r", "σ(W_ir x + b_ir + W_hr h + b_hr)"),
    Equation("z", "σ(W_iz x + b_iz + W_hz h + b_hz)"),
    Equation("n", "tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))"),
    Equation("h'", "(1 - z) ⊙ n + z ⊙ h"),
)


def gru_update(xw: Tensor, hw: Tensor, h: Tensor) -> GRUValues:
    """torch's GRU update (the reset gate multiplies ``W_hn h + b_hn``) from its input part
    ``xw`` and recurrent part ``hw`` (both ``(B, 3H)``) and the old state ``h (B, H)`` it
    carries. Recurrent dropout passes an ``hw`` computed from a dropped-out ``h``."""
    size = h.size(-1)  # H
    # r and z are sigmoids of the sum: one add and one sigmoid over all of (B, 3H) (the third
    # that belongs to n is not used: at small sizes one op costs less than two).
    r, z, _ = torch.sigmoid(xw + hw).chunk(3, dim=-1)  # 2 x (B, H)
    x_n, h_n = xw[..., 2 * size :], hw[..., 2 * size :]  # (B, H) each
    n = torch.tanh(torch.addcmul(x_n, r, h_n))  # x_n + r ⊙ h_n
    # (1 - z) ⊙ n + z ⊙ h = n + z ⊙ (h - n), torch's own form: one lerp where n and h share a
    # dtype (under autocast n is bfloat16 while h may be float32: then the three ops).
    h_next = torch.lerp(n, h, z) if n.dtype == h.dtype else n + z * (h - n)
    return GRUValues(r, z, n, h_next)


@with_equations(GRU_EQUATIONS)
def gru(
    x: Tensor,
    h: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None = None,
    bias_hh: Tensor | None = None,
) -> Tensor:
    """GRU step in torch's formulation (the reset gate multiplies ``W_hn h + b_hn``).

    Args:
        x: ``(B, I)``; h: ``(B, H)``; weight_ih: ``(3H, I)``; weight_hh: ``(3H, H)``;
        biases ``(3H,)`` or None.

    Returns:
        h': ``(B, H)``.
    """
    xw, hw = input_part(x, weight_ih, bias_ih), recurrent_part(h, weight_hh, bias_hh)
    return gru_update(xw, hw, h).h


#: The step function of each mode, keyed by torch's mode names.
CELLS = {"RNN_TANH": rnn_tanh, "RNN_RELU": rnn_relu, "LSTM": lstm, "GRU": gru}

#: The equations of each mode, keyed by torch's mode names.
EQUATIONS = {
    "RNN_TANH": RNN_TANH_EQUATIONS,
    "RNN_RELU": RNN_RELU_EQUATIONS,
    "LSTM": LSTM_EQUATIONS,
    "GRU": GRU_EQUATIONS,
}
