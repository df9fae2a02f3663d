"""What the Python loops share with ``native/common.h``: optional buffers and live rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, TypeVar

from torch import Tensor


def given(tensor: Tensor | None) -> bool:
    """Whether an optional buffer is there: the ops take an empty tensor for "none" (as the C++
    schemas do), and the Python callers may pass None."""
    return tensor is not None and tensor.numel() > 0


def live_rows(live: Sequence[int], step: int, batch: int) -> int:
    """Rows advancing at ``step``: all of ``batch``, or ``live[step]`` (a batch sorted by length,
    longest first)."""
    return live[step] if len(live) else batch


def step_views(buffer: Tensor, one_direction: bool) -> list[Tensor]:
    """``(D, S, B, X)`` -> its ``S`` per-step views ``([D,] B, X)``, made once before a loop
    (making a view costs about as much as a small step's arithmetic). One direction drops the
    direction dim, so that the loop can use 2-D matmuls (addmm_ adds in place, baddbmm_ on a
    strided view first copies)."""
    return list(buffer[0].unbind(0)) if one_direction else list(buffer.unbind(1))


def first_rows(view: Tensor, rows: int, dim: int = -2) -> Tensor:
    """The first ``rows`` batch rows (dim ``dim``) of a step view ``([D,] B, X)`` (the view
    itself when that is all of them)."""
    return view if rows == view.shape[dim] else view.narrow(dim, 0, rows)


Blocks = TypeVar("Blocks", bound=NamedTuple)


def first_rows_of(blocks: Blocks, rows: int) -> Blocks:
    """A step's named views ``([D,] B, X)`` each cut to its first ``rows`` batch rows (the views
    themselves when that is all of them)."""
    if rows == blocks[0].shape[-2]:
        return blocks
    return type(blocks)(*(first_rows(view, rows) for view in blocks))
