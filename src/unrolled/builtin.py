"""The built-in cells as :class:`~unrolled.Cell` s: the update of :mod:`unrolled.cells` bound to
one layer-direction's weights.

:class:`BuiltinCell` is what the layer loop (:func:`unrolled.stack.stack` and
:func:`unrolled.stack.step_layers`) runs for ``RNN``, ``LSTM`` and ``GRU``, whatever calls it:
the reference backend, ``step()`` for streaming, and, through :class:`RegularizedCell`,
recurrent dropout and zoneout. The torch-twin cell modules (``RNNCell`` ...) run the same
functions. A built-in state is ``h (B, P)``, or ``(h (B, P), c (B, H))`` for the LSTM; the
per-step output is ``h``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from . import cells
from .scan import State
from .weights import LayerWeights


@dataclass
class BuiltinCell:
    """The cell of ``mode`` bound to ``weights``, in the :class:`~unrolled.Cell` protocol.

    ``hoist_input``: ``project`` computes the input part ``W_ih x + b_ih`` for all steps at once
    (one GEMM); otherwise each step computes its own, as the equations read. The reference
    backend keeps it per step (it is the literal specification, and per-sample gradients need
    per-step ``(B, I)`` inputs); the cell modules hoist.
    """

    mode: str
    weights: LayerWeights
    hoist_input: bool = False

    @property
    def hidden_size(self) -> int:
        """What one step emits: ``P`` (``H`` without a projection)."""
        return self.weights.w_hh.shape[1]

    def init_state(self, batch_size: int, *, dtype: torch.dtype, device: torch.device) -> State:
        h = torch.zeros(batch_size, self.hidden_size, dtype=dtype, device=device)  # (B, P)
        if self.mode == "LSTM":
            cell_size = self.weights.w_hh.shape[0] // 4  # H
            return h, torch.zeros(batch_size, cell_size, dtype=dtype, device=device)
        return h

    def project(self, x: Tensor) -> Tensor:
        """``(T, B, I) -> (T, B, G*H)`` when hoisting, else ``x`` itself."""
        if self.hoist_input:
            return cells.input_part(x, self.weights.w_ih, self.weights.b_ih)
        return x

    def step(self, xp_t: Tensor, state: State) -> tuple[Tensor, State]:
        """One step; ``xp_t`` is ``project``'s row ``t``: ``(B, G*H)`` hoisted, else ``(B, I)``."""
        w = self.weights
        h = state[0] if self.mode == "LSTM" else state
        xw = xp_t if self.hoist_input else cells.input_part(xp_t, w.w_ih, w.b_ih)  # (B, G*H)
        hw = cells.recurrent_part(h, w.w_hh, w.b_hh)  # (B, G*H)
        return self.update(xw, hw, state)

    def update(self, xw: Tensor, hw: Tensor, state: State) -> tuple[Tensor, State]:
        """The elementwise part of a step, from the input part ``xw`` and recurrent part ``hw``
        (both ``(B, G*H)``): ``(output_t, new_state)``."""
        values = self.values(xw, hw, state)
        if self.mode == "LSTM":
            return values.h, (values.h, values.c)
        return values.h, values.h

    def values(self, xw: Tensor, hw: Tensor, state: State):
        """Every intermediate of the update, by its name in the equations: the mode's named
        tuple (``LSTMValues(i, f, g, o, c, h)``, ``GRUValues(r, z, n, h)``, ``RNNValues(h)``)."""
        if self.mode == "LSTM":
            return cells.lstm_update(xw, hw, state[1], self.weights.w_hr)
        if self.mode == "GRU":
            return cells.gru_update(xw, hw, state)
        if self.mode == "RNN_TANH":
            return cells.rnn_tanh_update(xw, hw)
        return cells.rnn_relu_update(xw, hw)


def bind(mode: str, weights: list[LayerWeights]) -> list[BuiltinCell]:
    """One :class:`BuiltinCell` per layer-direction, row ``l * D + d``."""
    return [BuiltinCell(mode, w) for w in weights]
