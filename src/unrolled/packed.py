"""A batch of sequences as the runners take it: packed step-major or padded time-major.

A PackedSequence stores, for each time step ``t``, the rows of the ``batch_sizes[t]`` sequences
still running, sequences sorted by decreasing length: ``data (N, *)``, step after step. Padded,
the same data is a time-major ``(T, B, *)`` tensor (sorted batch order) with zeros past each
sequence's length. A full batch is both at once: ``(T, B, *)`` flattened is ``(T*B, *)`` with
``batch_sizes = [B] * T``.

:class:`Sequences` holds a batch in the form it came in and gives the other form on demand: the
fast backend runs packed (nothing is padded there, see :mod:`unrolled.fast.layer`), the reference
backend and custom cells run padded with ``lengths`` (their readable masked loop). Each
conversion is one differentiable gather or scatter with precomputed indices, no loop over time;
for a full batch it is a view.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .scan import valid_steps


def packed_positions(batch_sizes: Tensor) -> tuple[Tensor, Tensor]:
    """For every packed row, its time step and its (sorted) batch slot: two ``(N,)`` CPU
    tensors."""
    batch_sizes = batch_sizes.to(torch.int64)
    num_steps = batch_sizes.numel()
    time = torch.repeat_interleave(torch.arange(num_steps), batch_sizes)  # (N,)
    row_starts = torch.cumsum(batch_sizes, 0) - batch_sizes  # (T,) first packed row of step t
    slot = torch.arange(time.numel()) - row_starts[time]  # (N,)
    return time, slot


def lengths_from_batch_sizes(batch_sizes: Tensor) -> Tensor:
    """``(B,)`` length of each sorted sequence: how many steps have more than ``b`` rows."""
    batch_sizes = batch_sizes.to(torch.int64)
    slots = torch.arange(int(batch_sizes[0]) if batch_sizes.numel() else 0)  # (B,)
    return (batch_sizes[None, :] > slots[:, None]).sum(1)  # (B,)


def batch_sizes_from_lengths(lengths: Tensor, num_steps: int) -> Tensor:
    """``(T,)`` int64 on the CPU: how many of the (sorted) sequences run at each step."""
    steps = torch.arange(num_steps)  # (T,)
    return (lengths.cpu()[None, :] > steps[:, None]).sum(1)  # (T,)


def _indices(batch_sizes: Tensor, rows: Tensor | None, device) -> tuple[Tensor, Tensor]:
    """Each packed row's ``(time, batch row)`` in a padded tensor whose sorted sequence ``k`` is
    at batch row ``rows[k]`` (``rows`` None: at row ``k``)."""
    time, slot = packed_positions(batch_sizes)  # (N,) each
    if rows is not None:
        slot = rows.cpu()[slot]
    return time.to(device), slot.to(device)


def packed_to_padded(
    data: Tensor, batch_sizes: Tensor, rows: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``data (N, *)`` -> ``(padded (T, B, *), lengths (B,))``, one differentiable scatter;
    sorted sequence ``k`` goes to batch row ``rows[k]`` (None: row ``k``, the sorted order).

    ``lengths`` (sorted order) is on ``data``'s device; ``batch_sizes`` is torch's CPU int64
    tensor.
    """
    num_steps, batch = batch_sizes.numel(), int(batch_sizes[0])
    padded = data.new_zeros((num_steps, batch, *data.shape[1:]))  # (T, B, *)
    # In place: no copy of the zeros (autograd records it).
    padded.index_put_(_indices(batch_sizes, rows, data.device), data)
    return padded, lengths_from_batch_sizes(batch_sizes).to(data.device)


def padded_to_packed(padded: Tensor, batch_sizes: Tensor, rows: Tensor | None = None) -> Tensor:
    """``padded (T, B, *)`` -> ``data (N, *)``, the rows a PackedSequence keeps, one gather;
    sorted sequence ``k`` is read from batch row ``rows[k]`` (None: row ``k``)."""
    return padded[_indices(batch_sizes, rows, padded.device)]  # (N, *)


class Sequences:
    """``B`` sequences of ``X`` features, sorted longest first, held packed or padded.

    Build one with :meth:`from_packed` (``data (N, X)`` and ``batch_sizes``) or
    :meth:`from_padded` (``(T, B, X)`` and sorted ``lengths`` or None); read it with
    :meth:`packed` / :meth:`padded`, which convert once and remember the result.

    Attributes:
        num_steps, batch: ``T`` and ``B``.
        lengths: ``(B,)`` int64 on the data's device, non-increasing; None when every sequence
            runs all ``T`` steps.
    """

    def __init__(
        self, packed: Tensor | None, padded: Tensor | None, num_steps: int, batch: int,
        batch_sizes: Tensor | None, lengths: Tensor | None, clean: bool = True,
        order: Tensor | None = None,
    ) -> None:  # fmt: skip
        self._packed, self._padded = packed, padded
        self._order = order  # the held padded form's batch rows, in sorted order: padded[:, order]
        self._clean = clean  # the padded form, if held, is zero past every length
        self._batch_sizes = batch_sizes  # made when first asked for a full batch
        self.lengths = lengths
        self.num_steps, self.batch = num_steps, batch

    @classmethod
    def from_packed(cls, data: Tensor, batch_sizes: Tensor) -> Sequences:
        """A PackedSequence's ``data (N, X)`` and ``batch_sizes (T,)`` (CPU int64)."""
        batch_sizes = batch_sizes.to(torch.int64)
        num_steps = batch_sizes.numel()
        batch = int(batch_sizes[0]) if num_steps else 0
        uniform = bool((batch_sizes == batch).all())
        lengths = None if uniform else lengths_from_batch_sizes(batch_sizes).to(data.device)
        return cls(data, None, num_steps, batch, batch_sizes, lengths)

    @classmethod
    def from_padded(
        cls, padded: Tensor, lengths: Tensor | None = None, order: Tensor | None = None
    ) -> Sequences:
        """Time-major ``(T, B, X)``, with ``lengths (B,)`` (or None: all ``T``) sorted longest
        first, or sorted by ``order`` (``padded[:, order]`` is sorted; then ``lengths`` is
        given sorted). The rows are taken in sorted order by the one gather that packs them
        (or the one that pads them). What the padding holds is never read (the packed form
        skips it, the padded form zeroes it)."""
        num_steps, batch = padded.shape[:2]
        if lengths is None or bool((lengths == num_steps).all()):
            if order is not None:
                padded = padded.index_select(1, order)  # (T, B, X)
            return cls(None, padded, num_steps, batch, None, None)
        batch_sizes = batch_sizes_from_lengths(lengths, num_steps)
        return cls(None, padded, num_steps, batch, batch_sizes, lengths, False, order)

    @property
    def uniform(self) -> bool:
        """Every sequence runs all ``T`` steps."""
        return self.lengths is None

    @property
    def batch_sizes(self) -> Tensor:
        """``(T,)`` int64 on the CPU: rows per step."""
        if self._batch_sizes is None:
            self._batch_sizes = torch.full((self.num_steps,), self.batch, dtype=torch.int64)
        return self._batch_sizes

    def held(self) -> Tensor:
        """The data in the form held now: padded ``(T, B, X)`` or packed ``(N, X)`` (for
        checks of its feature size, dtype and device)."""
        return self._packed if self._packed is not None else self._padded

    @property
    def dtype(self) -> torch.dtype:
        return self.held().dtype

    @property
    def device(self) -> torch.device:
        return self.held().device

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(T, B, X)``, the padded shape (whichever form is held)."""
        return (self.num_steps, self.batch, self.held().shape[-1])

    def packed(self) -> Tensor:
        """``(N, X)``, step after step (a view of a full padded batch, else one gather)."""
        if self._packed is None:
            padded = self._padded
            if self.uniform:
                self._packed = padded.reshape(self.num_steps * self.batch, padded.shape[-1])
            else:  # one gather of the valid rows, in sorted order
                self._packed = padded_to_packed(padded, self.batch_sizes, self._order)  # (N, X)
        return self._packed

    def padded(self) -> Tensor:
        """``(T, B, X)``, zero past each sequence's length (a view of a full packed batch)."""
        if self._padded is None:
            data = self._packed
            if self.uniform:
                self._padded = data.view(self.num_steps, self.batch, data.shape[-1])
            else:
                self._padded, _ = packed_to_padded(data, self.batch_sizes)  # (T, B, X)
        elif not self._clean:
            # Padded as given: whatever the padding holds (even inf or nan) must not reach a
            # gradient. Zeroed once (and sorted).
            padded = self._padded
            if self._order is not None:
                padded = padded.index_select(1, self._order)  # (T, B, X)
            valid = valid_steps(self.lengths, self.num_steps)  # (T, B, 1)
            self._padded = padded.masked_fill(~valid, 0.0)
            self._order = None
        self._clean = True
        return self._padded

    def padded_in_order(self, sorted_indices: Tensor) -> Tensor:
        """``(T, B, X)`` with row ``sorted_indices[k]`` holding sorted sequence ``k``: the
        padded form in a caller's own batch order, made by one scatter from the packed form
        (or one gather of the padded form)."""
        if self._packed is None or self.uniform:
            return self.padded().index_select(1, torch.argsort(sorted_indices))
        return packed_to_padded(self._packed, self.batch_sizes, sorted_indices)[0]

    def map(self, fn: Callable[[Tensor], Tensor]) -> Sequences:
        """The same sequences with ``fn`` applied to the data held (e.g. a dtype cast)."""
        packed = None if self._packed is None else fn(self._packed)
        padded = None if packed is not None or self._padded is None else fn(self._padded)
        order = self._order if packed is None else None
        return Sequences(
            packed, padded, self.num_steps, self.batch, self._batch_sizes, self.lengths,
            self._clean, order,
        )  # fmt: skip

    def like(self, data: Tensor) -> Sequences:
        """Other sequences with this batch's steps: ``data`` packed ``(N, Y)`` (2-D) or padded
        ``(T, B, Y)`` (3-D)."""
        packed, padded = (data, None) if data.dim() == 2 else (None, data)
        return Sequences(
            packed, padded, self.num_steps, self.batch, self._batch_sizes, self.lengths
        )
