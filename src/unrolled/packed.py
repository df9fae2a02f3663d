"""``PackedSequence`` <-> padded-plus-lengths, done once at the module boundary.

A PackedSequence stores, for each time step ``t``, the rows of the ``batch_sizes[t]`` sequences
still running, sequences sorted by decreasing length. Unpacked, the same data is a time-major
``(T, B, *)`` tensor (sorted batch order) with zeros past each sequence's length. Both directions
are a single differentiable gather/scatter with precomputed indices, no Python loop over time.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _packed_positions(batch_sizes: Tensor) -> tuple[Tensor, Tensor]:
    """For every packed row, its time step and its (sorted) batch slot: two ``(N,)`` tensors."""
    batch_sizes = batch_sizes.to(torch.int64)
    num_steps = batch_sizes.numel()
    time = torch.repeat_interleave(torch.arange(num_steps), batch_sizes)  # (N,)
    row_starts = torch.cumsum(batch_sizes, 0) - batch_sizes  # (T,) first packed row of step t
    slot = torch.arange(time.numel()) - row_starts[time]  # (N,)
    return time, slot


def lengths_from_batch_sizes(batch_sizes: Tensor) -> Tensor:
    """``(B,)`` length of each sorted sequence: how many steps have more than ``b`` rows."""
    batch_sizes = batch_sizes.to(torch.int64)
    slots = torch.arange(int(batch_sizes[0]))  # (B,)
    return (batch_sizes[None, :] > slots[:, None]).sum(1)  # (B,)


def packed_to_padded(data: Tensor, batch_sizes: Tensor) -> tuple[Tensor, Tensor]:
    """``data (N, *)`` -> ``(padded (T, B, *), lengths (B,))``, both in sorted batch order.

    ``lengths`` is on ``data``'s device; ``batch_sizes`` is torch's CPU int64 tensor.
    """
    time, slot = _packed_positions(batch_sizes)
    num_steps, batch = batch_sizes.numel(), int(batch_sizes[0])
    padded = data.new_zeros((num_steps, batch, *data.shape[1:]))  # (T, B, *)
    index = (time.to(data.device), slot.to(data.device))
    padded.index_put_(index, data)  # in place: no copy of the zeros (autograd records it)
    return padded, lengths_from_batch_sizes(batch_sizes).to(data.device)


def padded_to_packed(padded: Tensor, batch_sizes: Tensor) -> Tensor:
    """``padded (T, B, *)`` -> ``data (N, *)``: the rows a PackedSequence keeps."""
    time, slot = _packed_positions(batch_sizes)
    return padded[time.to(padded.device), slot.to(padded.device)]  # (N, *)
