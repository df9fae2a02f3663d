"""What the Python loops share with ``native/common.h``: optional buffers and live rows."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor


def given(tensor: Tensor | None) -> bool:
    """Whether an optional buffer is there: the ops take an empty tensor for "none" (as the C++
    schemas do), and the Python callers may pass None."""
    return tensor is not None and tensor.numel() > 0


def live_rows(live: Sequence[int], step: int, batch: int) -> int:
    """Rows advancing at ``step``: all of ``batch``, or ``live[step]`` (a batch sorted by length,
    longest first)."""
    return live[step] if len(live) else batch
