"""What the Python loops share with ``native/common.h``: optional buffers and where each step's
rows lie in the packed step-major buffers (the layout of :mod:`unrolled.fast.layer`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ...packed import packed_positions


def given(tensor: Tensor | None) -> bool:
    """Whether an optional buffer is there: the ops take an empty tensor for "none" (as the C++
    schemas do), and the Python callers may pass None."""
    return tensor is not None and tensor.numel() > 0


def directions_batched(tensors: Sequence[Tensor]) -> Tensor:
    """``D`` per-direction weights -> the one weight of a single direction, or the ``(D, *)``
    batch that ``bmm`` takes for two (the native loops take the list as it is: a stacked copy
    of large weights would show in peak memory)."""
    return tensors[0] if len(tensors) == 1 else torch.stack(list(tensors))


def offsets(batch_sizes: Sequence[int]) -> list[int]:
    """``T + 1`` row offsets: step ``s``'s rows are ``[offsets[s], offsets[s + 1])`` of an
    ``(N, X)`` buffer."""
    out = [0]
    for rows in batch_sizes:
        out.append(out[-1] + rows)
    return out


def step_views(buffer: Tensor, batch_sizes: Sequence[int], one_direction: bool) -> list[Tensor]:
    """``(D, N, X)`` -> its ``T`` per-step views ``([D,] rows_s, X)``, made once before a loop
    (making a view costs about as much as a small step's arithmetic). One direction drops the
    direction dim, so that the loop can use 2-D matmuls (addmm_ adds in place, baddbmm_ on a
    strided view first copies)."""
    source = buffer[0] if one_direction else buffer
    dim = 0 if one_direction else 1
    starts = offsets(batch_sizes)
    return [source.narrow(dim, start, rows) for start, rows in zip(starts, batch_sizes)]


def state_views(
    states: Tensor, batch_sizes: Sequence[int], one_direction: bool
) -> tuple[list[Tensor], list[Tensor]]:
    """States ``(D, B + N, X)`` -> per step, the views ``([D,] rows_s, X)`` of the state it
    starts from (the first ``rows_s`` rows of the block step ``s - 1`` wrote, or of ``h_0``) and
    of the state it writes."""
    source = states[0] if one_direction else states
    dim = 0 if one_direction else 1
    batch = batch_sizes[0] if len(batch_sizes) else 0
    starts = offsets(batch_sizes)
    previous = [source.narrow(dim, 0 if s == 0 else batch + starts[s - 1], rows)
                for s, rows in enumerate(batch_sizes)]  # fmt: skip
    following = [source.narrow(dim, batch + starts[s], rows) for s, rows in enumerate(batch_sizes)]
    return previous, following


def previous_states(states: Tensor, batch_sizes: Sequence[int]) -> Tensor:
    """States ``(..., B + N, X)`` -> ``(..., N, X)``: for every packed row, the state its step
    started from (a view for a full batch, else one gather), for the backward's factors that
    need it at all steps at once."""
    batch = batch_sizes[0] if len(batch_sizes) else 0
    if all(rows == batch for rows in batch_sizes):
        return states.narrow(-2, 0, sum(batch_sizes))
    starts = offsets(batch_sizes)
    first = torch.tensor([0] + [batch + start for start in starts[:-2]])  # (T,) h_{s-1}'s row
    step, row = packed_positions(torch.tensor(list(batch_sizes)))  # (N,) s and j of each row
    return states.index_select(-2, (first[step] + row).to(states.device))
