"""IndRNN (Li, Li, Cook, Zhu & Gao 2018, "Independently Recurrent Neural Network"), a Cell."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import checks
from ..cell import Cell
from ..init import uniform_by_hidden_size_

_ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh}


class IndRNN(Cell):
    r"""Independently recurrent cell: every unit sees only its own past.

    .. math::  h' = \mathrm{act}(W_{ih} x + b_{ih} + u \odot h)

    ``u`` (``weight_hh``) is a vector: the recurrence is elementwise, so ``W_ih x + b_ih`` is the
    whole of the state-free work (``project``, one matmul for the sequence) and a step is three
    elementwise ops.

    Args:
        input_size: ``I``. hidden_size: ``H``.
        nonlinearity: ``"relu"`` (the paper's choice) or ``"tanh"``.
        bias: learn ``b_ih``.

    Parameters: ``weight_ih (H, I)`` and ``bias_ih (H,)`` ~ U(-1/sqrt(H), 1/sqrt(H));
    ``weight_hh (H,)`` ~ U(0, 1), so that no unit's memory explodes at the start of training (the
    paper bounds ``|u|``; clamp it yourself during training if your sequences are long).
    """

    def __init__(self, input_size: int, hidden_size: int, nonlinearity: str = "relu",
                 bias: bool = True, *, device=None, dtype=None) -> None:  # fmt: skip
        super().__init__()
        checks.check_cell_arguments(input_size, hidden_size, bias)
        if nonlinearity not in _ACTIVATIONS:
            raise ValueError(
                f"Unknown nonlinearity '{nonlinearity}'. Select from 'relu' or 'tanh'."
            )
        factory = {"device": device, "dtype": dtype}
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.nonlinearity = nonlinearity
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size, **factory))
        self.bias_ih = nn.Parameter(torch.empty(hidden_size, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        uniform_by_hidden_size_((self.weight_ih,), self.hidden_size)
        nn.init.uniform_(self.weight_hh, 0.0, 1.0)
        uniform_by_hidden_size_((self.bias_ih,), self.hidden_size)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, nonlinearity={self.nonlinearity!r}"

    def project(self, x: Tensor) -> Tensor:
        xw = x @ self.weight_ih.T  # (T, B, I) @ (I, H) -> (T, B, H)
        return xw if self.bias_ih is None else xw + self.bias_ih

    def step(self, xp_t: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        h_next = _ACTIVATIONS[self.nonlinearity](xp_t + self.weight_hh * h)  # (B, H)
        return h_next, h_next
