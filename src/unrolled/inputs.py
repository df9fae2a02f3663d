"""Every input form a sequence module accepts, turned into one sorted batch of sequences and
back.

``RNN / LSTM / GRU`` and :class:`unrolled.Recurrent` share this: batch-first input, unbatched
2-D input, a ``PackedSequence`` (kept packed: :class:`~unrolled.packed.Sequences`) and padded
input with ``lengths=`` (sorted longest first once, if it is not). :class:`Layout` remembers
which form came in, so the output and the final state go back in the same form and order, and
moves a user's initial state into the sorted, batched order the time loop runs in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence
from torch.overrides import has_torch_function

from . import checks
from .packed import Sequences


def map_leaves(fn: Callable[[Tensor], Tensor], state):
    """Apply ``fn`` to a state: one tensor, or each tensor of a tuple/list."""
    return tuple(fn(s) for s in state) if isinstance(state, (tuple, list)) else fn(state)


@dataclass
class Layout:
    """How the user's input was laid out; everything needed to give results back the same way."""

    batch_first: bool
    batched: bool
    #: A PackedSequence came in (and goes out): its ``batch_sizes``.
    batch_sizes: Tensor | None = None
    #: The batch as the loop runs it (sorted longest first) and back: ``sorted[k]`` is the
    #: user's row at loop row ``k``; None when the user's order is already the loop's.
    sorted_indices: Tensor | None = None
    unsorted_indices: Tensor | None = None

    @property
    def state_dim(self) -> int:
        """Rank of a stacked state leaf as the user passes it: ``(L*D, B, *)`` or ``(L*D, *)``."""
        return 3 if self.batched else 2

    def state_in(self, hx):
        """User state -> the loop's: add the batch dim (unbatched), sort the batch."""
        if not self.batched:
            hx = map_leaves(lambda s: s.unsqueeze(1), hx)
        if self.sorted_indices is not None:
            hx = map_leaves(lambda s: s.index_select(1, self.sorted_indices), hx)
        return hx

    def results_out(self, output: Sequences, h_n):
        """The loop's output sequences and final state (leaves ``(L*D, B, *)``) back in the
        user's form and order."""
        unsorted = self.unsorted_indices
        if unsorted is not None:
            h_n = map_leaves(lambda s: s.index_select(1, unsorted), h_n)
        if self.batch_sizes is not None:
            data = output.packed()  # (N, O)
            return PackedSequence(data, self.batch_sizes, self.sorted_indices, unsorted), h_n
        if unsorted is None:
            out = output.padded()  # (T, B, O), zero past each length
        else:  # the user's order, by one scatter
            out = output.padded_in_order(self.sorted_indices)
        if self.batch_first:
            out = out.transpose(0, 1)  # (B, T, O)
        if not self.batched:
            out = out.squeeze(0 if self.batch_first else 1)
            h_n = map_leaves(lambda s: s.squeeze(1), h_n)
        return out, h_n


def to_time_major(
    input, *, batch_first: bool, lengths, module_name: str
) -> tuple[Sequences, Layout]:
    """Normalise ``input`` to ``(sequences, layout)``: the batch sorted longest first.

    Checks the input's form (not its sizes or dtype, which depend on the module). ``lengths`` is
    validated here.
    """
    if isinstance(input, PackedSequence):
        if lengths is not None:
            raise ValueError("lengths= is for padded input: a PackedSequence carries its own")
        data, batch_sizes, sorted_indices, unsorted_indices = input
        if data.dim() != 2:
            raise RuntimeError(f"input must have 2 dimensions, got {data.dim()}")
        layout = Layout(batch_first, True, batch_sizes, sorted_indices, unsorted_indices)
        return Sequences.from_packed(data, batch_sizes), layout
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a Tensor or a PackedSequence, got {type(input).__name__}")
    if input.dim() not in (2, 3):
        raise ValueError(
            f"{module_name}: Expected input to be 2D or 3D, got {input.dim()}D tensor instead"
        )
    batched = input.dim() == 3
    if not batched:
        if lengths is not None:
            raise ValueError("lengths= needs batched 3-D input, got unbatched 2-D input")
        input = input.unsqueeze(0 if batch_first else 1)
    inputs = input.transpose(0, 1) if batch_first else input  # (T, B, I)
    layout = Layout(batch_first, batched)
    if lengths is None:
        return Sequences.from_padded(inputs), layout
    lengths = checks.check_lengths(lengths, inputs.size(1), inputs.size(0), inputs.device)
    if not bool((lengths[:-1] < lengths[1:]).any()):
        return Sequences.from_padded(inputs, lengths), layout
    # Sorted once, longest first, stably (as pack_padded_sequence(enforce_sorted=False)): the
    # gather that packs the rows takes them in this order.
    order = torch.sort(lengths, descending=True, stable=True).indices  # (B,)
    layout.sorted_indices, layout.unsorted_indices = order, torch.argsort(order)
    return Sequences.from_padded(inputs, lengths[order], order), layout


def overridden_by(*args) -> bool:
    """Whether an argument is a tensor-like that is not a Tensor but implements
    ``__torch_function__`` (a wrapper class): then the call goes through its protocol, as torch's
    own ops do (the wrapper unwraps, runs the call on tensors, and wraps the results). Tensor
    subclasses need nothing of the kind: they are Tensors."""
    plain = [a for a in args if a is not None and not isinstance(a, (Tensor, PackedSequence))]
    flat = [leaf for a in plain for leaf in (a if isinstance(a, (tuple, list)) else (a,))]
    return bool(flat) and has_torch_function(flat)
