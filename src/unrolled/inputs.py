"""Every input form a sequence module accepts, turned into time-major ``(T, B, I)`` and back.

``RNN / LSTM / GRU`` and :class:`unrolled.Recurrent` share this: batch-first input, unbatched
2-D input, a ``PackedSequence`` (unpacked once to padded-plus-lengths, in its sorted order) and
padded input with ``lengths=``. :class:`Layout` remembers which form came in, so the output and
the final state go back in the same form, and moves a user's initial state into the sorted,
batched order the time loop runs in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor
from torch.nn.utils.rnn import PackedSequence
from torch.overrides import has_torch_function

from . import checks
from .packed import packed_to_padded, padded_to_packed
from .scan import valid_steps


def map_leaves(fn: Callable[[Tensor], Tensor], state):
    """Apply ``fn`` to a state: one tensor, or each tensor of a tuple/list."""
    return tuple(fn(s) for s in state) if isinstance(state, (tuple, list)) else fn(state)


@dataclass
class Layout:
    """How the user's input was laid out; everything needed to give results back the same way."""

    batch_first: bool
    batched: bool
    #: ``(batch_sizes, sorted_indices, unsorted_indices)`` of a PackedSequence input, else None.
    packing: tuple[Tensor, Tensor | None, Tensor | None] | None = None

    @property
    def state_dim(self) -> int:
        """Rank of a stacked state leaf as the user passes it: ``(L*D, B, *)`` or ``(L*D, *)``."""
        return 3 if self.batched else 2

    def state_in(self, hx):
        """User state -> the loop's: add the batch dim (unbatched), sort the batch (packed)."""
        if not self.batched:
            hx = map_leaves(lambda s: s.unsqueeze(1), hx)
        if self.packing is not None and self.packing[1] is not None:
            sorted_indices = self.packing[1]
            hx = map_leaves(lambda s: s.index_select(1, sorted_indices), hx)
        return hx

    def results_out(self, output: Tensor, h_n):
        """``output (T, B, O)`` and final state (leaves ``(L*D, B, *)``) back in the user's form."""
        if self.packing is not None:
            batch_sizes, sorted_indices, unsorted_indices = self.packing
            data = padded_to_packed(output, batch_sizes)  # (N, O)
            output = PackedSequence(data, batch_sizes, sorted_indices, unsorted_indices)
            if unsorted_indices is not None:
                h_n = map_leaves(lambda s: s.index_select(1, unsorted_indices), h_n)
            return output, h_n
        if self.batch_first:
            output = output.transpose(0, 1)  # (B, T, O)
        if not self.batched:
            output = output.squeeze(0 if self.batch_first else 1)
            h_n = map_leaves(lambda s: s.squeeze(1), h_n)
        return output, h_n


def to_time_major(
    input, *, batch_first: bool, lengths, module_name: str
) -> tuple[Tensor, Tensor | None, Layout]:
    """Normalise ``input`` to ``(inputs (T, B, I), lengths (B,) or None, layout)``.

    Checks the input's form (not its sizes or dtype, which depend on the module). ``lengths`` is
    validated here and returned as int64 on the inputs' device.
    """
    if isinstance(input, PackedSequence):
        if lengths is not None:
            raise ValueError("lengths= is for padded input: a PackedSequence carries its own")
        data, batch_sizes, sorted_indices, unsorted_indices = input
        if data.dim() != 2:
            raise RuntimeError(f"input must have 2 dimensions, got {data.dim()}")
        inputs, lengths = packed_to_padded(data, batch_sizes)  # (T, B, I) sorted, (B,)
        layout = Layout(batch_first, True, (batch_sizes, sorted_indices, unsorted_indices))
        return inputs, lengths, layout
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
    if lengths is not None:
        lengths = checks.check_lengths(lengths, inputs.size(1), inputs.size(0), inputs.device)
        # Whatever the padding holds (even inf or nan) must not reach a gradient: zero it.
        inputs = inputs.masked_fill(~valid_steps(lengths, inputs.size(0)), 0.0)  # (T, B, I)
    return inputs, lengths, Layout(batch_first, batched)


def overridden_by(*args) -> bool:
    """Whether an argument is a tensor-like that is not a Tensor but implements
    ``__torch_function__`` (a wrapper class): then the call goes through its protocol, as torch's
    own ops do (the wrapper unwraps, runs the call on tensors, and wraps the results). Tensor
    subclasses need nothing of the kind: they are Tensors."""
    plain = [a for a in args if a is not None and not isinstance(a, (Tensor, PackedSequence))]
    flat = [leaf for a in plain for leaf in (a if isinstance(a, (tuple, list)) else (a,))]
    return bool(flat) and has_torch_function(flat)
