"""Cells the tests share: docs/custom_cells.md's GRU, and how its weights pair with torch.nn.GRU's."""

from __future__ import annotations

import torch
from torch import nn

import unrolled


class MyGRU(unrolled.Cell):
    """The GRU of docs/custom_cells.md, in torch's formulation:
    ``r = σ(x_r + h_r), z = σ(x_z + h_z), n = tanh(x_n + r ⊙ h_n), h' = (1 - z) ⊙ n + z ⊙ h``."""

    def __init__(self, input_size, hidden_size):
        super().__init__()
        self.hidden_size = hidden_size
        self.ih = nn.Linear(input_size, 3 * hidden_size)
        self.hh = nn.Linear(hidden_size, 3 * hidden_size)

    def project(self, x):
        return self.ih(x)  # (T, B, I) @ (I, 3H) -> (T, B, 3H)

    def step(self, xp_t, h):
        x_r, x_z, x_n = xp_t.chunk(3, dim=-1)  # 3 x (B, H)
        h_r, h_z, h_n = self.hh(h).chunk(3, dim=-1)  # (B, H) @ (H, 3H) -> 3 x (B, H)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        h = (1 - z) * n + z * h
        return h, h


def gru_parameter_pairs(model: unrolled.Recurrent, reference: nn.GRU):
    """``(ours, torch's)`` for every parameter of a ``Recurrent`` of :class:`MyGRU` cells and the
    ``nn.GRU`` of the same shape (cell ``l * D + d`` is torch's ``_l{l}`` and, for ``d = 1``,
    ``_reverse``)."""
    directions = 2 if reference.bidirectional else 1
    for index, cell in enumerate(model.cells):
        layer, direction = divmod(index, directions)
        suffix = f"_l{layer}" + ("_reverse" if direction else "")
        for ours, name in ((cell.ih.weight, "weight_ih"), (cell.ih.bias, "bias_ih"),
                           (cell.hh.weight, "weight_hh"), (cell.hh.bias, "bias_hh")):  # fmt: skip
            yield ours, getattr(reference, name + suffix)


def copy_gru_weights(model: unrolled.Recurrent, reference: nn.GRU) -> None:
    """Give ``model``'s cells ``reference``'s weights."""
    with torch.no_grad():
        for ours, theirs in gru_parameter_pairs(model, reference):
            ours.copy_(theirs)
