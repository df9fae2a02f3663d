r"""Recurrent dropout and zoneout for the built-in ``LSTM`` and ``GRU``, beyond torch.nn.

Both change the step, so a module that uses them runs the reference path (``stack`` and ``scan``
with the cell below) whatever its ``backend``; with both at 0 nothing here runs and the modules
stay exactly torch's.

**Recurrent dropout** (variational, Gal & Ghahramani 2016, "A Theoretically Grounded Application
of Dropout in Recurrent Neural Networks"): in training mode one Bernoulli mask ``m`` per sequence
and per layer-direction, drawn once per ``forward`` call and shared by all time steps and all
gates, drops units of the state *on its way into* ``W_hh``, scaled by ``1/(1-p)`` as
``F.dropout`` does so that evaluation needs no rescaling::

    LSTM:  gates = W_ih x + b_ih + W_hh (h * m / (1-p)) + b_hh        (c is not dropped)
    GRU:   r, z, n read W_hh (h * m / (1-p)) + b_hh; the carry z * h uses the undropped h

For an LSTM with ``proj_size`` the mask has ``P`` units. Evaluation mode: no dropout at all.
Only the recurrent connection is dropped; dropout on the inputs and between layers stays
``dropout=``'s job.

**Zoneout** (Krueger et al. 2016, "Zoneout: Regularizing RNNs by Randomly Preserving Hidden
Activations"): in training mode each unit keeps its previous value with probability ``p``, a
fresh mask ``d_t`` at every step::

    h_t = d_t * h_{t-1} + (1 - d_t) * h~_t       (h~_t: the ordinary cell update)

For the LSTM it applies to ``h`` and ``c`` with separate masks and rates ``(p_h, p_c)`` as in the
paper (which reports its best character-level results with ``p_c = 0.5, p_h = 0.05``);
``zoneout=p`` means ``p_h = p_c = p``. As in the paper's equations, the candidate ``h~_t =
o_t * tanh(c~_t)`` is computed from the cell update ``c~_t = f_t c_{t-1} + i_t g_t`` before
zoneout, and the next step's gates read the zoned-out ``h_t``, ``c_t``::

    c_t = d^c_t * c_{t-1} + (1 - d^c_t) * c~_t
    h_t = d^h_t * h_{t-1} + (1 - d^h_t) * o_t * tanh(c~_t)

With ``proj_size`` the zoned-out ``h`` is the projected one. The output at step ``t`` is the
zoned-out ``h_t`` (the state the next step reads, so that ``output[-1] == h_n`` as in torch; the
authors' TensorFlow wrapper returns the un-zoned ``h~_t`` as output instead). Evaluation mode is
deterministic and uses the expectation over the mask, ``h_t = p h_{t-1} + (1 - p) h~_t``
(likewise for ``c``), as the authors' reference implementation does at test time; so a module
with zoneout > 0 differs from torch.nn in eval mode too, by design.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from . import cells
from .builtin import BuiltinCell
from .scan import State
from .weights import LayerWeights


def check_rate(name: str, value: object) -> float:
    """A probability in [0, 1], checked like torch checks ``dropout``."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0 <= value <= 1:
        raise ValueError(
            f"{name} should be a number in range [0, 1] representing a probability, "
            f"got {name}={value!r}"
        )
    return float(value)


def check_zoneout(mode: str, zoneout: object) -> tuple[float, float]:
    """``zoneout`` -> ``(p_h, p_c)``; the LSTM also takes a pair, the GRU one number."""
    if mode == "LSTM" and isinstance(zoneout, (tuple, list)):
        if len(zoneout) != 2:
            raise ValueError(
                f"zoneout should be a number or a pair (p_h, p_c), got {len(zoneout)} values"
            )
        return check_rate("zoneout[0]", zoneout[0]), check_rate("zoneout[1]", zoneout[1])
    rate = check_rate("zoneout", zoneout)
    return rate, rate


def sample_recurrent_mask(batch: int, size: int, p: float, like: Tensor) -> Tensor:
    """``(B, size)`` mask, ``0`` with probability ``p`` else ``1/(1-p)``."""
    if p >= 1:
        return like.new_zeros(batch, size)
    kept = torch.bernoulli(like.new_full((batch, size), 1 - p))  # (B, size): 1 = unit kept
    return kept / (1 - p)


def sample_zoneout_mask(state: Tensor, p: float) -> Tensor:
    """Bool mask like ``state``: True (keep the previous value) with probability ``p``."""
    return torch.bernoulli(torch.full_like(state, p)).bool()


def zoneout(previous: Tensor, update: Tensor, p: float, training: bool) -> Tensor:
    if p == 0:
        return update
    if training:
        return torch.where(sample_zoneout_mask(update, p), previous, update)
    return p * previous + (1 - p) * update  # the expectation over the mask


@dataclass
class RegularizedCell(BuiltinCell):
    """A built-in LSTM/GRU layer-direction with recurrent dropout and zoneout: the same update
    (:meth:`BuiltinCell.update`), with the recurrent part read from the dropped-out state and
    zoneout applied to the new state."""

    recurrent_mask: Tensor | None = None  # (B, P), already scaled by 1/(1-p); None: no dropout
    zoneout: tuple[float, float] = (0.0, 0.0)  # (p_h, p_c)
    training: bool = False

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        w = self.weights
        lstm = self.mode == "LSTM"
        h = state[0] if lstm else state
        h_recurrent = h if self.recurrent_mask is None else h * self.recurrent_mask  # (B, P)
        xw = cells.input_part(x_t, w.w_ih, w.b_ih)  # (B, G*H)
        hw = cells.recurrent_part(h_recurrent, w.w_hh, w.b_hh)  # (B, G*H): from the dropped h
        h_new, new_state = self.update(xw, hw, state)  # the GRU carries the undropped h
        p_h, p_c = self.zoneout
        h_new = zoneout(h, h_new, p_h, self.training)
        if lstm:
            c_new = zoneout(state[1], new_state[1], p_c, self.training)
            return h_new, (h_new, c_new)
        return h_new, h_new


def make_cells(
    mode: str,
    weights: Sequence[LayerWeights],
    batch: int,
    like: Tensor,
    *,
    recurrent_dropout: float,
    zoneout: tuple[float, float],
    training: bool,
) -> list[RegularizedCell]:
    """One cell per layer-direction, each with its own per-sequence recurrent mask."""
    made = []
    for w in weights:
        mask = None
        if training and recurrent_dropout > 0:
            state_size = w.w_hh.shape[1]  # weight_hh (G*H, P)
            mask = sample_recurrent_mask(batch, state_size, recurrent_dropout, like)  # (B, P)
        made.append(
            RegularizedCell(mode, w, recurrent_mask=mask, zoneout=zoneout, training=training)
        )
    return made
