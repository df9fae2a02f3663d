"""What every cell family of the fast backend shares: one layer, both directions at once, on
packed step-major buffers.

**The layout.** A batch of ``B`` sequences, sorted longest first, runs ``T`` steps; step ``s``
advances the ``batch_sizes[s]`` sequences still running, which are the first ``batch_sizes[s]``
rows of the batch (``batch_sizes`` is non-increasing). Every per-step buffer of a layer is
*packed step-major*: ``(D, N, X)`` with ``N = sum(batch_sizes)``, step ``s``'s rows contiguous at
row ``offset[s] = sum(batch_sizes[:s])``. Every state buffer is ``(D, B + N, X)``: the initial
state first (rows ``[0, B)``), then the state after step ``s`` at rows ``B + offset[s]``. A
``PackedSequence``'s data is exactly this layout for direction 0, and a full batch is the case
``batch_sizes = [B] * T``, ``(N, X) = (T*B, X)``: there is one layout, not two.

Direction 0's step ``s`` is time ``s``. The reverse direction's step ``s`` takes, in row ``j``,
time ``len_j - 1 - s``: each sequence reversed inside its own length, so that at every step the
two directions advance the same rows, and both end sequence ``j`` at its step ``len_j - 1``
(row ``B + offset[len_j - 1] + j`` of the states holds its final state). Putting the reverse
direction into or out of time order is one gather with one ``(N,)`` index, its own inverse
(:class:`Steps`).

Nothing is padded, so nothing is masked: the loops touch only live rows, the hoisted input part
and every weight gradient run on ``N`` rows, and a row that stops keeps its last state (which
is how the LSTM's one reused cell slot ends holding every ``c_n``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from .. import reference
from ..packed import lengths_from_batch_sizes, packed_positions, packed_to_padded, padded_to_packed
from ..regularizers import make_cells
from ..weights import LayerWeights
from .loops.rows import offsets


class Steps:
    """Where each step's rows lie in the packed step-major buffers of a call (see above).

    Args:
        batch_sizes: rows per step, ``T`` non-increasing integers (a PackedSequence's
            ``batch_sizes``; ``[B] * T`` for a full batch).
        device: where the gather indices live (the data's device).

    The native and Python loops take :attr:`sizes` (``batch_sizes`` as a list) and find every
    block from it; this class does the rest of the layer's bookkeeping around them.
    """

    def __init__(self, batch_sizes: Sequence[int] | Tensor, device: torch.device) -> None:
        sizes = batch_sizes.tolist() if isinstance(batch_sizes, Tensor) else list(batch_sizes)
        self.sizes: list[int] = [int(n) for n in sizes]
        self.num_steps = len(self.sizes)
        self.batch = self.sizes[0] if self.sizes else 0
        self.offsets = offsets(self.sizes)  # (T + 1): step s's rows [offsets[s], offsets[s+1])
        self.total = self.offsets[-1]
        self.uniform = all(n == self.batch for n in self.sizes)
        self.device = device
        self._reverse_index: Tensor | None = None
        self._final_rows: Tensor | None = None
        self._lengths: Tensor | None = None

    @classmethod
    def full(cls, num_steps: int, batch: int, device: torch.device) -> Steps:
        """The steps of a full batch, ``batch`` rows at each of ``num_steps`` steps, made
        without a Python pass over the steps (a small layer's call is ~100 us: a loop over
        T = 128 steps here was a fifth of it)."""
        steps = cls.__new__(cls)
        steps.sizes = [batch] * num_steps
        steps.num_steps, steps.batch = num_steps, (batch if num_steps else 0)
        # (T + 1) offsets, as offsets() gives them: step s's rows [s*B, (s+1)*B)
        steps.offsets = [s * batch for s in range(num_steps + 1)]
        steps.total, steps.uniform, steps.device = batch * num_steps, True, device
        steps._reverse_index = steps._final_rows = steps._lengths = None
        return steps

    # ---- the indices, made once per call, when first needed ----------------------------------

    def batch_sizes(self) -> Tensor:
        """``(T,)`` int64 on the CPU, as a PackedSequence holds them."""
        return torch.tensor(self.sizes, dtype=torch.int64)

    def _cpu_lengths(self) -> Tensor:
        """``(B,)`` int64 steps of each sequence, on the CPU (for building the indices)."""
        if self._lengths is None:
            self._lengths = lengths_from_batch_sizes(self.batch_sizes())  # (B,)
        return self._lengths

    @property
    def lengths(self) -> Tensor | None:
        """``(B,)`` int64 steps of each sequence, on the device; None for a full batch."""
        return None if self.uniform else self._cpu_lengths().to(self.device)

    @property
    def reverse_index(self) -> Tensor:
        """``(N,)``: packed row ``offset[s] + j`` of the reverse direction reads row
        ``offset[len_j - 1 - s] + j`` (an involution: the same index maps back)."""
        if self._reverse_index is None:
            step, row = packed_positions(self.batch_sizes())  # (N,) s and j of each row
            starts = torch.tensor(self.offsets[:-1])  # (T,)
            length = self._cpu_lengths()[row]  # (N,) len_j
            self._reverse_index = (starts[length - 1 - step] + row).to(self.device)  # (N,)
        return self._reverse_index

    @property
    def final_rows(self) -> Tensor:
        """``(B,)``: the row of a state buffer ``(D, B + N, X)`` holding each sequence's final
        state, ``B + offset[len_j - 1] + j``."""
        if self._final_rows is None:
            starts = torch.tensor(self.offsets)  # (T + 1,)
            rows = self.batch + starts[self._cpu_lengths() - 1] + torch.arange(self.batch)  # (B,)
            self._final_rows = rows.to(self.device)
        return self._final_rows

    def previous_segments(self) -> list[tuple[int, int, int]]:
        """``(first packed row, first state row, rows)`` of runs of steps whose previous states
        are contiguous rows of a state buffer: ``sum_s d_s^T h_{s-1}`` is then one GEMM per run
        (one in all for a full batch; a new run wherever a sequence has ended)."""
        runs: list[tuple[int, int, int]] = []
        for s, rows in enumerate(self.sizes):
            previous = 0 if s == 0 else self.batch + self.offsets[s - 1]  # h_{s-1}'s block
            if runs and runs[-1][1] + runs[-1][2] == previous:  # the run's states go on here
                first, state, count = runs[-1]
                runs[-1] = (first, state, count + rows)
                continue
            runs.append((self.offsets[s], previous, rows))
        return [run for run in runs if run[2] > 0]

    # ---- moving data between the user's order and the buffers ---------------------------------

    def reverse(self, seq: Tensor, out: Tensor | None = None) -> Tensor:
        """Packed ``(N, X)`` with each sequence reversed inside its own length (a new tensor,
        or written into ``out (N, X)``)."""
        if self.uniform:  # a full batch: the steps in reverse order, whole blocks
            blocks = seq.view(self.num_steps, self.batch, -1)  # (T, B, X)
            order = torch.arange(self.num_steps - 1, -1, -1, device=seq.device)  # (T,)
            if out is None:
                return blocks.index_select(0, order).view(self.total, -1)
            torch.index_select(blocks, 0, order, out=out.view(self.num_steps, self.batch, -1))
            return out
        if out is None:
            return seq.index_select(0, self.reverse_index)
        return torch.index_select(seq, 0, self.reverse_index, out=out)

    def directions(self, seq: Tensor, num_directions: int) -> list[Tensor]:
        """The layer input ``(N, X)`` -> each direction's packed step-major input."""
        return [seq, self.reverse(seq)] if num_directions == 2 else [seq]

    def output(self, states: Tensor) -> Tensor:
        """States ``(D, B + N, P)`` -> the packed output ``(N, D*P)``, time order.

        Always a tensor of its own, never a view of the states: a user may change the output
        in place before the backward (``out += residual``, ``ReLU(inplace=True)``), as with
        torch.nn, and the backward reads the saved states, which that must not touch (nor can
        autograd allow in-place changes to a view made inside a custom Function).
        """
        num_dirs, _, size = states.shape
        out = states.new_empty(self.total, num_dirs * size)  # (N, D*P)
        if num_dirs == 1:
            out.copy_(states[0, self.batch :])
        else:
            per_direction = out.view(self.total, num_dirs, size)  # (N, D, P)
            per_direction[:, 0] = states[0, self.batch :]
            per_direction[:, 1] = self.reverse(states[1, self.batch :])
        return out

    def final(self, states: Tensor) -> Tensor:
        """States ``(D, B + N, X)`` -> final states ``(D, B, X)``."""
        if self.uniform:
            return states[:, self.total :].clone()
        return states.index_select(1, self.final_rows)  # (D, B, X)

    def step_major_grad(
        self, d_output: Tensor, num_directions: int, d_final: Tensor, separate: bool = False
    ) -> Tensor | list[Tensor]:
        """Output gradient ``(N, D*P)`` and final-state gradient ``(D, B, P)`` -> the gradient
        arriving at each step's state, packed step-major ``(D, N, P)``; with ``separate``, as
        ``D`` tensors ``(N, P)`` of their own storage (a loop that turns them into
        per-direction gradients in place can then free each on its own)."""
        per_direction = d_output.unflatten(1, (num_directions, -1))  # (N, D, P)
        shape = (self.total, d_final.shape[-1])
        if separate:
            grads = [d_output.new_empty(shape) for _ in range(num_directions)]  # D x (N, P)
        else:
            stacked = d_output.new_empty(num_directions, *shape)  # (D, N, P)
            grads = list(stacked.unbind(0))
        grads[0].copy_(per_direction[:, 0])
        if num_directions == 2:
            self.reverse(per_direction[:, 1], out=grads[1])  # no (N, P) temporary
        for d, grad in enumerate(grads):
            self.add_at_final_step_(grad, d_final[d])
        return grads if separate else stacked

    def add_at_final_step_(self, grad: Tensor, d_final: Tensor) -> None:
        """``grad (N, X)[final row of sequence j] += d_final (B, X)[j]``, in place."""
        if self.uniform:
            grad[self.total - self.batch :] += d_final
        else:
            grad.index_add_(0, self.final_rows - self.batch, d_final)

    def sum_with_previous(self, d: Tensor, states: Tensor, out: Tensor | None = None) -> Tensor:
        """``sum_s d_s^T h_{s-1}``: ``d (N, G)``, states ``(B + N, P)`` -> ``(G, P)`` (the
        recurrent weight's gradient), one GEMM per run of :meth:`previous_segments`."""
        if out is None:
            out = d.new_empty(d.shape[-1], states.shape[-1])  # (G, P)
        out.zero_()
        for first, state, rows in self.previous_segments():
            # += (G, rows) @ (rows, P)
            out.addmm_(d[first : first + rows].t(), states[state : state + rows])
        return out

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
        """Gradients of the layer input and of each ``W_ih`` from the packed step-major
        gradient of the hoisted input part (:func:`project`), one GEMM (per gate-row block) each
        over all ``N`` rows.

        Args:
            d_pre: ``D`` packed step-major ``(N, G*H)`` gradients of ``x_d @ W_ih_d^T`` (rows of
                any stride). This function takes them out of the list and, the caller holding no
                other reference, frees each one that owns its storage as soon as it is spent, so
                they never all live next to every weight gradient.
            x: the layer input ``(N, I)``, time order.
            w_ih: ``D`` weights ``(G*H, I)`` in torch's row order.
            rolled: ``d_pre``'s columns are torch's rows rolled by this many (the last ``rolled``
                rows first), as the GRU's factors ``[n_x, r, z]`` are; 0 for torch's order.
                Handled by splitting the GEMMs instead of copying (large) weights into another
                order.
            scratch: a contiguous ``(N, G*H)`` buffer that nobody reads any more, for the
                reverse direction's gradient put back in time order: ``d_pre[0]`` when it is a
                view of a buffer that stays alive anyway (it is spent before the copy is
                made), or a saved buffer of the layer that the released graph drops after this
                backward. None allocates one.

        Returns:
            ``(d_x (N, I) or None, D x d_W_ih (G*H, I) in torch's order, or None)``.
        """
        rows, gate_rows = d_pre[0].shape
        # (columns of d_pre, rows of W_ih) pairs: torch's last `rolled` rows come first in d_pre.
        blocks = [(slice(0, gate_rows), slice(0, gate_rows))]
        if rolled:
            blocks = [(slice(0, rolled), slice(gate_rows - rolled, gate_rows)),
                      (slice(rolled, gate_rows), slice(0, gate_rows - rolled))]  # fmt: skip
        d_x = x.new_zeros(rows, x.shape[-1]) if need_input else None  # (N, I)
        d_w = [] if need_weights else None

        def one_direction(time_major: Tensor, w: Tensor) -> None:
            """Add ``time_major (N, G*H)``'s share to ``d_x`` and append its ``d_W_ih``."""
            if need_input:
                for cols, w_rows in blocks:
                    d_x.addmm_(time_major[:, cols], w[w_rows])  # (N, K) @ (K, I), K rows a block
            if need_weights:
                d_w_dir = x.new_empty(gate_rows, x.shape[-1])  # (G*H, I), torch's order
                for cols, w_rows in blocks:
                    torch.mm(time_major[:, cols].t(), x, out=d_w_dir[w_rows])  # (K, N) @ (N, I)
                d_w.append(d_w_dir)

        # Direction 0 is already in time order. The reverse direction is put back in time order
        # once (N*G*H), after direction 0 is done; then both gradients use x as it is, and
        # neither x nor the input gradient is ever reversed.
        buffers = d_pre[::-1]  # popped in direction order; the caller's list is emptied
        d_pre.clear()
        one_direction(buffers.pop(), w_ih[0])
        if len(w_ih) == 2:
            reverse_time_major = self.reverse(buffers.pop(), out=scratch)  # (N, G*H)
            one_direction(reverse_time_major, w_ih[1])
        return d_x, d_w


def project(
    inputs: Sequence[Tensor],
    w_ih: Sequence[Tensor],
    bias: Sequence[Tensor | None],
    out: Tensor | None = None,
) -> Tensor:
    """The input part ``x_d @ W_ih_d^T + b_d`` (:func:`unrolled.cells.input_part`) hoisted out
    of the loop: for every step and direction at once, one GEMM per direction over all ``N``
    rows, as a ``Cell``'s ``project`` does (the word "projection" is kept for the LSTM's
    ``W_hr``).

    Args:
        inputs: ``D`` packed step-major inputs ``(N, I)``.
        w_ih: ``D`` weights ``(G*H, I)``; bias: ``D`` biases ``(G*H,)`` or None.
        out: where to write, ``(D, N, G*H)`` with each ``out[d]`` contiguous; None allocates.

    Returns:
        ``(D, N, G*H)``, one GEMM per direction straight into the buffer.
    """
    rows, gate_rows = inputs[0].shape[0], w_ih[0].shape[0]
    if out is None:
        out = inputs[0].new_empty(len(inputs), rows, gate_rows)  # (D, N, G*H)
    for d, (x, w, b) in enumerate(zip(inputs, w_ih, bias)):
        if b is None:
            torch.mm(x, w.t(), out=out[d])  # (N, I) @ (I, G*H)
        else:
            torch.addmm(b, x, w.t(), out=out[d])  # (N, I) @ (I, G*H) + (G*H,)
    return out


#: What a layer Function takes before its weights, in order: settings, with no gradient (``masks``:
#: the layer's recurrent dropout and zoneout, a :class:`.masks.StepMasks`, or None), then the
#: tensors ``x, h0, c0`` (``c0`` None but for the LSTM). The weights follow flat: see
#: :func:`gradients_as_inputs`.
SETTINGS = ("plan", "num_directions", "steps", "masks")
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
    steps, masks, x, h0, c0)``, then each direction's weights flat, the five fields of
    :class:`LayerWeights` in order (``w_ih, w_hh, b_ih, b_hh, w_hr``), direction after
    direction. Its backward returns ``(None, None, None, None, d_x, d_h0, d_c0)`` (the settings
    have no gradient), then each direction's ``weight_grads`` (a :class:`LayerWeights` of
    gradients) flat in the same order; ``weight_grads`` is None when no weight wants a
    gradient. Whatever the caller computed, an input that needs no gradient
    (``ctx.needs_input_grad``) gets None.
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


def remember(ctx, plan, num_directions: int, steps: Steps, tensors: Sequence, masks=None) -> None:
    """What every layer Function's backward needs besides its saved tensors: the forward's plan
    (the backward runs the plan's loops, ``ctx.plan.loops``, and never asks again), the number
    of directions, the :class:`Steps`, the number of differentiable inputs (``x, h0, c0`` and
    the flat weights) and the call's draws (``masks``, a :class:`.masks.StepMasks` or None:
    neither an input nor an output, so kept on ``ctx`` as they are)."""
    ctx.plan, ctx.num_directions, ctx.steps = plan, num_directions, steps
    ctx.num_inputs, ctx.masks = len(tensors), masks


def hand_written_backward(ctx, grads: Sequence[Tensor], layer_backward) -> tuple:
    """A layer Function's backward: the reference under ``create_graph`` or torch.func, else
    ``layer_backward`` (BPTT) on the saved inputs and buffers with the forward's plan; the
    buffers may be overwritten once the graph is released. Laid out as
    :func:`gradients_as_inputs` says."""
    if differentiate_the_reference(grads):  # create_graph=True, or torch.func
        return reference_double_backward(ctx, grads)
    saved = ctx.saved_tensors
    extra = {"masks": ctx.masks} if ctx.masks is not None else {}
    d_x, d_h0, d_c0, weight_grads = layer_backward(
        ctx.plan, ctx.num_directions, ctx.steps, saved[: ctx.num_inputs],
        saved[ctx.num_inputs :], grads, wanted_grads(ctx), reuse=native_graph_released(), **extra,
    )  # fmt: skip
    return gradients_as_inputs(ctx, d_x, d_h0, d_c0, weight_grads)


def native_graph_released() -> bool:
    from . import native  # the native package imports nothing of this module

    return native.graph_released()


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
    """Backward with ``create_graph=True`` or under torch.func: differentiate the reference
    (:func:`differentiate_the_reference_layer`) from the saved inputs. Returns the backward's
    result, laid out as :func:`gradients_as_inputs` says."""
    inputs = ctx.saved_tensors[: ctx.num_inputs]
    drawn = None if ctx.masks is None else ctx.masks.drawn
    grads = differentiate_the_reference_layer(
        ctx.plan.mode, ctx.num_directions, ctx.steps, inputs, grads, drawn
    )
    return (None,) * len(SETTINGS) + grads


def differentiate_the_reference_layer(
    mode: str,
    num_directions: int,
    steps: Steps,
    inputs: Sequence,
    grads: Sequence[Tensor],
    masks: Sequence | None = None,
) -> tuple:
    """The gradients of one layer's ``inputs (x (N, I), h0, c0, *flat)`` from ``grads
    (d_output, d_h_n[, d_c_n])``, by autograd through the reference, with a graph.

    The hand-written backward is not itself differentiable, nor can vmap see through it, so
    then we rebuild this layer with the reference backend from the inputs and let autograd
    differentiate it (twice, if the caller wants; batched, under vmap): the packed input is
    padded for it and its output packed again, both differentiable. One gradient per input,
    None where an input needs none. ``masks``: the call's recurrent dropout and zoneout draws
    (``D`` :class:`~unrolled.regularizers.LayerMasks`), which the reference cells then read.
    """
    x, h0, c0, *flat = inputs
    weights = unbatched_flat_weights(flat, num_directions)
    with torch.enable_grad():
        hx = (h0, c0) if mode == "LSTM" else h0
        if steps.uniform:
            padded = x.view(steps.num_steps, steps.batch, -1)  # (T, B, I)
        else:
            padded, _ = packed_to_padded(x, steps.batch_sizes())  # (T, B, I)
        cells = None
        if masks is not None:
            cells = make_cells(mode, weights, num_directions, masks)
        output, h_n = reference.run(
            mode, padded, hx, weights, num_layers=1, num_directions=num_directions,
            lengths=steps.lengths, cells=cells,
        )  # fmt: skip
        if steps.uniform:
            output = output.reshape(steps.total, -1)  # (N, D*P)
        else:
            output = padded_to_packed(output, steps.batch_sizes())  # (N, D*P)
        outputs = [output, *h_n] if mode == "LSTM" else [output, h_n]
        targets = [x, h0, c0, *flat]
        wanted = [t for t in targets if t is not None and t.requires_grad]
        found = iter(
            torch.autograd.grad(
                outputs, wanted, grads[: len(outputs)], create_graph=True, allow_unused=True
            )
        )
    return tuple(next(found) if t is not None and t.requires_grad else None for t in targets)
