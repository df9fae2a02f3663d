"""What every cell family of the fast backend shares: one layer, both directions at once.

The fast loops run both directions of a layer over the same steps ``s = 0 .. T-1`` (the native
loops each direction on its own thread). To make that possible every per-step buffer is
*step-major*:
``(D, T, B, *)`` where ``[0, s]`` is time ``t = s`` and ``[1, s]`` is the reverse direction's
``s``-th step. Without ``lengths`` that is time ``T-1-s``; with ``lengths`` each sequence is
reversed inside its own length, ``t = lengths[b]-1-s`` (the reverse direction starts at the
sequence's own last valid step), and the padding stays at the end.

With that layout the two directions agree on everything that matters for ``lengths``: step ``s``
of sequence ``b`` is valid iff ``s < lengths[b]`` and the final state of both directions is the
state after step ``lengths[b]-1``. The loops therefore run every step without masking (the
layer input must be zero at padded steps: ``fast.run`` zeroes the first layer's input once, and
every layer's output is zero there, so padded steps compute finite values that nobody reads),
and ``lengths`` is honoured outside the loop: outputs at padded steps are set to zero (the
loops on sorted lengths shrink the batch and leave them zero already), the final
state is gathered at ``lengths - 1``, and in backward the output gradient is zeroed at padded
steps and the final state's gradient enters at step ``lengths - 1``. Padded steps then carry an
exactly zero gradient, as in the reference's ``torch.where``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from .. import reference
from ..weights import LayerWeights


class Timeline:
    """Maps time-major tensors to step-major ones and back, for ``D`` directions.

    Args:
        num_steps: ``T``.
        lengths: ``(B,)`` int64 valid steps per sequence, or None (all ``T``).
    """

    def __init__(self, num_steps: int, lengths: Tensor | None) -> None:
        self.num_steps = num_steps
        self.lengths = lengths
        self._live_rows: list[int] | None = None
        if lengths is None:
            self.padding = None
            self.reverse_index = None
            return
        steps = torch.arange(num_steps, device=lengths.device)[:, None]  # (T, 1)
        valid = steps < lengths[None, :]  # (T, B)
        self.padding = ~valid[:, :, None]  # (T, B, 1)
        # Inside a sequence step s reads time len-1-s; padding maps to itself (an involution).
        self.reverse_index = torch.where(valid, lengths[None, :] - 1 - steps, steps)  # (T, B)

    @property
    def live_rows(self) -> list[int]:
        """Per step ``s``, how many leading batch rows are still inside their sequence, when
        the batch is sorted by length, longest first (packed input always is); else ``[]``.

        Both directions agree (step ``s`` of sequence ``b`` is valid iff ``s < lengths[b]``),
        so a loop can advance only rows ``[0, live_rows[s])`` at step ``s``.
        """
        if self._live_rows is None:
            lengths = self.lengths
            self._live_rows = []
            if lengths is not None and bool((lengths[:-1] >= lengths[1:]).all()):
                steps = torch.arange(self.num_steps, device=lengths.device)[:, None]  # (T, 1)
                self._live_rows = (steps < lengths[None, :]).sum(1).tolist()  # (T,)
        return self._live_rows

    def zero_padding(self, seq: Tensor) -> Tensor:
        """``(T, B, X)`` with padded steps set to zero (a new tensor; ``seq`` is untouched)."""
        return seq if self.padding is None else seq.masked_fill(self.padding, 0)

    def reverse(self, seq: Tensor, out: Tensor | None = None) -> Tensor:
        """``(T, B, X)`` reversed in time, each sequence inside its own length (a new tensor, or
        written into ``out`` (T, B, X) without a temporary copy)."""
        if self.reverse_index is None:
            if out is None:
                return seq.flip(0)
            steps = torch.arange(self.num_steps - 1, -1, -1, device=seq.device)  # (T,)
            return torch.index_select(seq, 0, steps, out=out)
        index = self.reverse_index[:, :, None].expand(-1, -1, seq.shape[-1])  # (T, B, X)
        return seq.gather(0, index) if out is None else torch.gather(seq, 0, index, out=out)

    def directions(self, seq: Tensor, num_directions: int) -> list[Tensor]:
        """Time-major ``(T, B, X)``, zero at padded steps -> its ``D`` step-major views (the
        reverse maps padding to itself, so it stays zero there)."""
        return [seq, self.reverse(seq)] if num_directions == 2 else [seq]

    def output(self, states: Tensor) -> Tensor:
        """Step-major ``(D, T, B, P)`` hidden states -> time-major output ``(T, B, D*P)``, zero
        at padded steps (the loops leave them zero already when they shrink the batch: sorted
        lengths, :attr:`live_rows`).

        Always a tensor of its own, never a view of the states: a user may change the output
        in place before the backward (``out += residual``, ``ReLU(inplace=True)``), as with
        torch.nn, and the backward reads the saved states, which that must not touch (nor can
        autograd allow in-place changes to a view made inside a custom Function).
        """
        num_dirs, num_steps, batch, size = states.shape
        out = states.new_empty(num_steps, batch, num_dirs * size)  # (T, B, D*P)
        if num_dirs == 1:
            out.copy_(states[0])
        else:
            per_direction = out.view(num_steps, batch, num_dirs, size)  # (T, B, D, P)
            per_direction[:, :, 0] = states[0]
            per_direction[:, :, 1] = self.reverse(states[1])
        if self.padding is not None and not self.live_rows:
            out.masked_fill_(self.padding, 0)
        return out

    def final(self, states: Tensor) -> Tensor:
        """Step-major ``(D, T+1, B, X)`` (slot 0 = initial state) -> final states ``(D, B, X)``."""
        if self.lengths is None:
            return states[:, self.num_steps].clone()
        index = self.lengths.view(1, 1, -1, 1).expand(states.shape[0], 1, -1, states.shape[-1])
        return states.gather(1, index).squeeze(1)  # (D, B, X)

    def step_major_grad(
        self, d_output: Tensor, num_directions: int, d_final: Tensor, separate: bool = False
    ) -> Tensor | list[Tensor]:
        """Output gradient ``(T, B, D*P)`` and final-state gradient ``(D, B, P)`` -> the
        gradient arriving at each step's hidden state, step-major ``(D, T, B, P)``; with
        ``separate``, as ``D`` tensors ``(T, B, P)`` of their own storage (a loop that turns
        them into per-direction gradients in place can then free each on its own)."""
        num_steps, batch, _ = d_output.shape
        per_direction = d_output.unflatten(2, (num_directions, -1))  # (T, B, D, P)
        shape = (num_steps, batch, d_final.shape[-1])
        if separate:
            grads = [d_output.new_empty(shape) for _ in range(num_directions)]  # D x (T, B, P)
        else:
            stacked = d_output.new_empty(num_directions, *shape)  # (D, T, B, P)
            grads = list(stacked.unbind(0))
        grads[0].copy_(per_direction[:, :, 0])
        if num_directions == 2:
            self.reverse(per_direction[:, :, 1], out=grads[1])  # no (T, B, P) temporary
        for d, grad in enumerate(grads):
            if self.padding is not None:
                grad.masked_fill_(self.padding, 0)  # no gradient from padded outputs
            self.add_at_final_step_(grad.unsqueeze(0), d_final[d : d + 1])
        return grads if separate else stacked

    def add_at_final_step_(self, grad: Tensor, d_final: Tensor) -> None:
        """``grad (D, T, B, X)[:, lengths[b]-1, b] += d_final (D, B, X)``, in place."""
        if self.lengths is None:
            grad[:, self.num_steps - 1] += d_final
            return
        index = (self.lengths - 1).view(1, 1, -1, 1).expand(grad.shape[0], 1, -1, grad.shape[-1])
        grad.scatter_add_(1, index, d_final.unsqueeze(1))

    def input_side_grads(
        self,
        d_pre: list[Tensor],
        x: Tensor,
        w_ih: Sequence[Tensor],
        need_input: bool,
        need_weights: bool,
        rolled: int = 0,
        scratch: Tensor | None = None,
    ) -> tuple[Tensor | None, list[Tensor] | None]:
        """Gradients of the layer input and of each ``W_ih`` from the step-major gradient of the
        hoisted input part (:func:`project`), one GEMM (per gate-row block) each over all steps.

        Args:
            d_pre: ``D`` step-major ``(T, B, G*H)`` gradients of ``x_d @ W_ih_d^T`` (rows of any
                stride). This function takes them out of the list and, the caller holding no
                other reference, frees each one that owns its storage as soon as it is spent, so
                they never all live next to every weight gradient.
            x: the layer input ``(T, B, I)``, time-major, zero at padded steps.
            w_ih: ``D`` weights ``(G*H, I)`` in torch's row order.
            rolled: ``d_pre``'s columns are torch's rows rolled by this many (the last ``rolled``
                rows first), as the GRU's factors ``[n_x, r, z]`` are; 0 for torch's order.
                Handled by splitting the GEMMs instead of copying (large) weights into another
                order.
            scratch: a contiguous ``(T, B, G*H)`` buffer that nobody reads any more, for the
                reverse direction's gradient put back in time order: ``d_pre[0]`` when it is a
                view of a buffer that stays alive anyway (it is spent before the copy is
                made), or a saved buffer of the layer that the released graph drops after this
                backward. None allocates one.

        Returns:
            ``(d_x (T, B, I) or None, D x d_W_ih (G*H, I) in torch's order, or None)``.
        """
        num_steps, batch, gate_rows = d_pre[0].shape
        rows = num_steps * batch
        # (columns of d_pre, rows of W_ih) pairs: torch's last `rolled` rows come first in d_pre.
        blocks = [(slice(0, gate_rows), slice(0, gate_rows))]
        if rolled:
            blocks = [(slice(0, rolled), slice(gate_rows - rolled, gate_rows)),
                      (slice(rolled, gate_rows), slice(0, gate_rows - rolled))]  # fmt: skip
        d_x = x.new_zeros(num_steps, batch, x.shape[-1]) if need_input else None  # (T, B, I)
        x2d = x.reshape(rows, x.shape[-1]) if need_weights else None  # zero at padded steps
        d_w = [] if need_weights else None

        def one_direction(time_major: Tensor, w: Tensor) -> None:
            """Add ``time_major (T, B, G*H)``'s share to ``d_x`` and append its ``d_W_ih``."""
            d_dir = time_major.reshape(rows, gate_rows)  # (T*B, G*H)
            if need_input:
                d_x2d = d_x.view(rows, x.shape[-1])  # (T*B, I)
                for cols, w_rows in blocks:
                    d_x2d.addmm_(d_dir[:, cols], w[w_rows])  # (T*B, K) @ (K, I), K rows a block
            if need_weights:
                d_w_dir = x.new_empty(gate_rows, x.shape[-1])  # (G*H, I), torch's order
                for cols, w_rows in blocks:
                    torch.mm(d_dir[:, cols].t(), x2d, out=d_w_dir[w_rows])  # (K, T*B) @ (T*B, I)
                d_w.append(d_w_dir)

        # Direction 0 is already in time order. The reverse direction is put back in time order
        # once (T*B*G*H), after direction 0 is done; then both gradients use x as it is, and
        # neither x nor the input gradient is ever reversed.
        buffers = d_pre[::-1]  # popped in direction order; the caller's list is emptied
        d_pre.clear()
        one_direction(buffers.pop(), w_ih[0])
        if len(w_ih) == 2:
            reverse_time_major = self.reverse(buffers.pop(), out=scratch)  # (T, B, G*H)
            one_direction(reverse_time_major, w_ih[1])
        if d_x is not None and self.padding is not None:
            d_x.masked_fill_(self.padding, 0)
        return d_x, d_w


def project(
    inputs: Sequence[Tensor],
    w_ih: Sequence[Tensor],
    bias: Sequence[Tensor | None],
    out: Tensor | None = None,
) -> Tensor:
    """The input part ``x_d @ W_ih_d^T + b_d`` (:func:`unrolled.cells.input_part`) hoisted out
    of the loop: for every step and direction at once, one GEMM per direction, as a ``Cell``'s
    ``project`` does (the word "projection" is kept for the LSTM's ``W_hr``).

    Args:
        inputs: ``D`` step-major inputs ``(T, B, I)``.
        w_ih: ``D`` weights ``(G*H, I)``; bias: ``D`` biases ``(G*H,)`` or None.
        out: where to write, ``(D, T, B, G*H)`` with each ``out[d]`` contiguous; None allocates.

    Returns:
        ``(D, T, B, G*H)``, one GEMM per direction straight into the buffer.
    """
    num_steps, batch, _ = inputs[0].shape
    gate_rows = w_ih[0].shape[0]
    if out is None:
        out = inputs[0].new_empty(len(inputs), num_steps, batch, gate_rows)  # (D, T, B, G*H)
    for d, (x, w, b) in enumerate(zip(inputs, w_ih, bias)):
        x2d = x.reshape(num_steps * batch, x.shape[-1])  # (T*B, I)
        target = out[d].view(num_steps * batch, gate_rows)  # (T*B, G*H)
        if b is None:
            torch.mm(x2d, w.t(), out=target)  # (T*B, I) @ (I, G*H)
        else:
            torch.addmm(b, x2d, w.t(), out=target)  # (T*B, I) @ (I, G*H) + (G*H,)
    return out


def stack_directions(tensors: Sequence[Tensor]) -> Tensor:
    """``D`` same-shaped tensors as one ``(D, *)`` batch for ``bmm``; a view when ``D = 1`` (at
    large H the weights outweigh the activations, so copying them shows in peak memory)."""
    return tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(list(tensors))


#: What a layer Function takes before its weights, in order: settings, with no gradient, then
#: the tensors ``x, h0, c0`` (``c0`` None but for the LSTM). The weights follow flat: see
#: :func:`gradients_as_inputs`.
SETTINGS = ("plan", "num_directions", "lengths")
LEADING_INPUTS = (*SETTINGS, "x", "h0", "c0")


class Wanted(NamedTuple):
    """Which gradients a layer Function's backward must compute (``ctx.needs_input_grad``, by
    name)."""

    x: bool
    h0: bool
    weights: bool  # any weight of any direction


def wanted_grads(ctx) -> Wanted:
    """:class:`Wanted` of a layer Function's backward, read from ``ctx.needs_input_grad``."""
    needs = dict(zip(LEADING_INPUTS, ctx.needs_input_grad))
    weights = any(ctx.needs_input_grad[len(LEADING_INPUTS) :])
    return Wanted(x=needs["x"], h0=needs["h0"], weights=weights)


def gradients_as_inputs(
    ctx,
    d_x: Tensor | None,
    d_h0: Tensor | None,
    d_c0: Tensor | None,
    weight_grads: Sequence[LayerWeights] | None,
) -> tuple:
    """A layer Function's backward result: one gradient per input of its forward, laid out as
    those inputs were.

    Every layer Function's forward takes the :data:`LEADING_INPUTS` ``(plan, num_directions,
    lengths, x, h0, c0)``, then each direction's weights flat, the five fields of
    :class:`LayerWeights` in order (``w_ih, w_hh, b_ih, b_hh, w_hr``), direction after
    direction. Its backward returns ``(None, None, None, d_x, d_h0, d_c0)`` (the settings have no
    gradient), then each direction's ``weight_grads`` (a :class:`LayerWeights` of gradients) flat
    in the same order; ``weight_grads`` is None when no weight wants a gradient. Whatever the
    caller computed, an input that needs no gradient (``ctx.needs_input_grad``) gets None.
    """
    grads = [*(None for _ in SETTINGS), d_x, d_h0, d_c0]
    for direction in weight_grads or ():
        grads.extend(direction)
    grads.extend([None] * (len(ctx.needs_input_grad) - len(grads)))
    return tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad))


def unbatched_flat_weights(flat: Sequence, num_directions: int) -> list[LayerWeights]:
    """The flat weight arguments of a layer Function (``D`` times the five fields of
    :class:`LayerWeights`) back into ``D`` named :class:`LayerWeights`."""
    fields = len(LayerWeights._fields)
    return [LayerWeights(*flat[d * fields : (d + 1) * fields]) for d in range(num_directions)]


def remember(ctx, plan, num_directions: int, timeline: Timeline, tensors: Sequence) -> None:
    """What every layer Function's backward needs besides its saved tensors: the forward's plan
    (the backward runs the plan's loops, ``ctx.plan.loops``, and never asks again), the number
    of directions, the ``Timeline`` and the number of differentiable inputs (``x, h0, c0`` and
    the flat weights)."""
    ctx.plan, ctx.num_directions, ctx.timeline = plan, num_directions, timeline
    ctx.num_inputs = len(tensors)


def transforms_active() -> bool:
    """Whether a torch.func transform (grad, vmap, jacrev, ...) is running, here or around a
    backward (gradcheck's batched gradients vmap the backward): the native ops and the
    hand-written backward have no batching rules, the reference's torch ops all have."""
    try:
        return torch._C._functorch.peek_interpreter_stack() is not None
    except AttributeError:  # a torch without the query: assume none
        return False


def differentiate_the_reference(grads: Sequence[Tensor]) -> bool:
    """Whether a layer's backward must hand over to :func:`reference_double_backward`: a graph
    of the gradient is asked for (``create_graph=True``), or the backward runs under a
    torch.func transform, or its incoming gradients are batched (``torch.autograd.grad(...,
    is_grads_batched=True)``, as gradcheck's batched-gradient check calls it)."""
    if torch.is_grad_enabled() or transforms_active():
        return True
    batched = getattr(torch._C._functorch, "is_legacy_batchedtensor", lambda t: False)
    return any(g is not None and batched(g) for g in grads)


def reference_double_backward(ctx, grads: Sequence[Tensor]) -> tuple:
    """Backward with ``create_graph=True`` or under torch.func: differentiate the reference.

    The hand-written backward is not itself differentiable, nor can vmap see through it, so
    then we rebuild this layer with the reference backend from the saved inputs and let
    autograd differentiate it (twice, if the caller wants; batched, under vmap). Returns the
    backward's result, laid out as :func:`gradients_as_inputs` says.
    """
    x, h0, c0, *flat = ctx.saved_tensors[: ctx.num_inputs]
    mode, num_directions = ctx.plan.mode, ctx.num_directions
    weights = unbatched_flat_weights(flat, num_directions)
    with torch.enable_grad():
        hx = (h0, c0) if mode == "LSTM" else h0
        output, h_n = reference.run(
            mode, x, hx, weights, num_layers=1, num_directions=num_directions,
            lengths=ctx.timeline.lengths,
        )  # fmt: skip
        outputs = [output, *h_n] if mode == "LSTM" else [output, h_n]
        targets = [x, h0, c0, *flat]
        wanted = [t for t in targets if t is not None and t.requires_grad]
        found = iter(
            torch.autograd.grad(
                outputs, wanted, grads[: len(outputs)], create_graph=True, allow_unused=True
            )
        )
    settings = (None,) * len(SETTINGS)
    return settings + tuple(
        next(found) if t is not None and t.requires_grad else None for t in targets
    )
