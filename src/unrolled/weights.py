"""One layer-direction's weights, named: the unit every runner takes a layer's parameters in.

A layer with ``L`` layers and ``D`` directions has ``L * D`` of them, row ``l * D + d`` (``d = 1``
reads in reverse), in torch's shapes: ``w_ih (G*H, I)``, ``w_hh (G*H, P)``, ``b_ih, b_hh
(G*H,)``, ``w_hr (P, H)``, where ``G`` is the mode's number of gates and ``P = H`` without a
projection. What is absent (no bias, no projection) is None.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

#: torch's parameter names, in the order of :class:`LayerWeights`' fields.
PARAMETER_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")


class LayerWeights(NamedTuple):
    """``(w_ih, w_hh, b_ih, b_hh, w_hr)`` of one layer-direction; a tuple, so it unpacks too."""

    w_ih: Tensor  # (G*H, I)
    w_hh: Tensor  # (G*H, P)
    b_ih: Tensor | None = None  # (G*H,)
    b_hh: Tensor | None = None  # (G*H,)
    w_hr: Tensor | None = None  # (P, H)


def parameter_suffix(layer: int, direction: int) -> str:
    """torch's suffix of a layer-direction's parameter names: ``_l1``, ``_l1_reverse``."""
    return f"_l{layer}" + ("_reverse" if direction == 1 else "")


def parameter_names(layer: int, direction: int) -> tuple[str, ...]:
    """torch's five parameter names of a layer-direction, in :class:`LayerWeights`' order
    (absent ones simply are not registered)."""
    suffix = parameter_suffix(layer, direction)
    return tuple(kind + suffix for kind in PARAMETER_KINDS)
