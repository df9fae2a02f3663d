"""A layer's recurrent dropout and zoneout draws in the fast loops' layout.

The module draws them once per call, in time order (:func:`unrolled.regularizers.draw_masks`);
the reference loop reads them as they are, the fast loops in the packed step-major layout of
their buffers (:mod:`.layer`): the reverse direction's step ``s`` of sequence ``j`` is its time
``len_j - 1 - s``, so its zoneout weights are gathered into that order, like its input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from ..packed import padded_to_packed
from ..regularizers import LayerMasks
from .layer import Steps


class StepMasks(NamedTuple):
    """One layer's draws, all directions, as the loops read them (each None where unused).

    ``recurrent (D, B, P)``: the state's dropout mask before ``W_hh`` (0 or ``1/(1-p)``), one
    per sequence. ``zone_h (D, N, P)``, ``zone_c (D, N, H)``: the weight ``d`` of the previous
    value at each packed step row, ``state = d * previous + (1 - d) * update``; for the LSTM both
    are given or neither. ``drawn``: the same, as drawn (for the reference, which a double
    backward differentiates).
    """

    recurrent: Tensor | None
    zone_h: Tensor | None
    zone_c: Tensor | None
    drawn: Sequence[LayerMasks]  # as drawn, time order: what the reference cells read

    @property
    def zoned(self) -> bool:
        return self.zone_h is not None


def step_masks(
    mode: str, masks: Sequence[LayerMasks], steps: Steps, h_size: int, c_size: int, like: Tensor
) -> StepMasks:
    """The ``D`` directions' :class:`~unrolled.regularizers.LayerMasks` of one layer -> its
    :class:`StepMasks`."""
    recurrent = None
    if masks[0].recurrent is not None:
        recurrent = torch.stack([m.recurrent for m in masks])  # (D, B, P)

    def zone(field: str, size: int) -> Tensor:
        per_direction = []
        for d, m in enumerate(masks):
            value = getattr(m, field)
            if not isinstance(value, Tensor):  # evaluation (the rate) or none (0.0)
                per_direction.append(like.new_full((steps.total, size), value))  # (N, X)
                continue
            if steps.uniform:
                packed = value.reshape(steps.total, size)  # (T, B, X) -> (N, X)
            else:
                packed = padded_to_packed(value, steps.batch_sizes())  # (N, X), time order
            per_direction.append(steps.reverse(packed) if d == 1 else packed)
        return torch.stack(per_direction)  # (D, N, X)

    fields = ("zone_h", "zone_c") if mode == "LSTM" else ("zone_h",)
    if all(isinstance(getattr(masks[0], f), float) and getattr(masks[0], f) == 0 for f in fields):
        return StepMasks(recurrent, None, None, masks)
    zone_c = zone("zone_c", c_size) if mode == "LSTM" else None
    return StepMasks(recurrent, zone("zone_h", h_size), zone_c, masks)


def per_state_row(mask: Tensor, steps: Steps) -> Tensor:
    """``(D, B, P)`` per-sequence mask -> ``(D, B + N, P)``, the row of every state buffer row
    (its sequence's row of the mask): what multiplies each stored state."""
    if steps.uniform:  # (D, 1 + T, B, P), broadcast over the steps
        return mask.unsqueeze(1).expand(-1, steps.num_steps + 1, -1, -1).flatten(1, 2)
    rows = torch.cat([torch.arange(steps.batch), *(torch.arange(n) for n in steps.sizes)])
    return mask.index_select(1, rows.to(mask.device))  # (D, B + N, P)
