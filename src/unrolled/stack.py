"""Layers x directions on top of ``scan``: the shape of every multi-layer, bidirectional RNN.

Layer ``l`` reads layer ``l-1``'s output (the directions concatenated on the last dim); dropout
is applied between layers in training mode only; the final states come back in torch's order,
row ``l * D + d``. Used by the reference backend and by :class:`unrolled.Recurrent`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from .scan import State, describe, scan, step_result_error, valid_steps


class CellLike(Protocol):
    """What ``stack`` needs of the cell of one layer-direction: an input part and a step (a
    :class:`~unrolled.Cell` module, a :class:`~unrolled.builtin.BuiltinCell`, ...)."""

    def project(self, inputs: Tensor) -> Tensor:
        """``(T, B, I) -> (T, B, *)``: the input part, the work that does not depend on the
        state, for all steps at once."""

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        """One time step: ``(B, *) , state -> (B, O), state``."""


def run_direction(
    cell: CellLike,
    input_part: Tensor,
    state: State,
    *,
    reverse: bool,
    lengths: Tensor | None,
    capture: bool = False,
) -> tuple[Tensor, State]:
    """One layer-direction over time: the cell's own whole-sequence ``scan`` if it has one
    (e.g. MinGRU's parallel scan, same contract as :func:`unrolled.scan.scan` minus ``step``),
    else, with ``capture``, its step captured and run by a C++ loop (:mod:`unrolled.captured`,
    which falls back to the next), else the step-by-step loop."""
    whole_sequence = getattr(cell, "scan", None)
    if whole_sequence is not None:
        return whole_sequence(input_part, state, reverse=reverse, lengths=lengths)
    if capture:
        from . import captured

        return captured.run(cell, input_part, state, reverse=reverse, lengths=lengths)
    return scan(cell.step, input_part, state, reverse=reverse, lengths=lengths)


def stack(
    cells: Sequence[CellLike],
    inputs: Tensor,
    initial_states: Sequence[State],
    *,
    num_layers: int,
    num_directions: int,
    dropout: float = 0.0,
    training: bool = False,
    lengths: Tensor | None = None,
    check: bool = False,
    capture: bool = False,
) -> tuple[Tensor, list[State]]:
    """Run a stack of recurrent layers.

    Args:
        cells: ``L * D`` cells, one per layer-direction, index ``l * D + d`` (``d = 1`` reads in
            reverse).
        inputs: ``(T, B, I)``.
        initial_states: ``L * D`` states, same indexing.
        dropout: probability applied to every layer's output but the last, in training only.
        lengths: ``(B,)`` valid steps per sequence, or None.
        check: check each cell's ``project`` and output against the :class:`~unrolled.Cell`
            protocol (``Recurrent``'s user cells): a few shape comparisons per layer-direction.
        capture: run each cell's step captured (:mod:`unrolled.captured`) where it can be.

    Returns:
        ``(output (T, B, D * O), final_states)`` with ``final_states[l * D + d]``.
    """
    layer_input = inputs
    final_states: list[State] = []
    for layer in range(num_layers):
        outputs = []
        for direction in range(num_directions):
            index = layer * num_directions + direction
            input_part = cells[index].project(layer_input)  # (T, B, *)
            if check:
                check_projected(cells[index], layer_input, input_part)
            output, final = run_direction(
                cells[index],
                input_part,
                initial_states[index],
                reverse=direction == 1,
                lengths=lengths,
                capture=capture,
            )
            if check:
                check_output_width(
                    cells[index], output.shape[1:], index, num_layers, num_directions
                )
            outputs.append(output)  # (T, B, O)
            final_states.append(final)
        layer_input = torch.cat(outputs, dim=-1)  # (T, B, D*O)
        if dropout > 0 and training and layer < num_layers - 1:
            layer_input = dropout_between_layers(layer_input, dropout, lengths)
    return layer_input, final_states


def dropout_between_layers(layer_output: Tensor, p: float, lengths: Tensor | None) -> Tensor:
    """Dropout on a layer's output, drawing exactly the random numbers torch draws.

    torch drops out the ``(T, B, D*O)`` output of a padded batch, but only the ``N`` valid rows of
    a PackedSequence, in packed (time-major) order. With ``lengths`` we do the same on the valid
    rows, so a packed batch gets torch's masks and padding stays zero.
    """
    if lengths is None:
        return F.dropout(layer_output, p, training=True)
    valid = valid_steps(lengths, layer_output.size(0)).squeeze(-1)  # (T, B)
    rows = F.dropout(layer_output[valid], p, training=True)  # (N, D*O), time-major
    return layer_output.new_zeros(layer_output.shape).index_put((valid,), rows)  # (T, B, D*O)


def step_layers(
    cells: Sequence[CellLike],
    x_t: Tensor,
    states: Sequence[State],
    *,
    dropout: float = 0.0,
    training: bool = False,
    check: bool = False,
) -> tuple[Tensor, list[State]]:
    """One time step through a unidirectional stack: the streaming twin of :func:`stack`.

    Args:
        cells: ``L`` cells, bottom first. x_t: ``(B, I)``. states: ``L`` states.
        check: as :func:`stack`'s.

    Returns:
        ``(output_t (B, O), new_states)``.
    """
    new_states: list[State] = []
    last = len(cells) - 1
    for index, cell in enumerate(cells):
        one_step = x_t.unsqueeze(0)  # (1, B, I)
        projected = cell.project(one_step)  # (1, B, *)
        if check:
            check_projected(cell, one_step, projected)
        result = cell.step(projected[0], states[index])
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            raise step_result_error(cell.step, result)
        x_t, new_state = result  # (B, O)
        if check:
            if not isinstance(x_t, Tensor):
                raise TypeError(
                    f"{type(cell).__name__}.step() must return (output, new_state) with output a "
                    f"Tensor (B, hidden_size), got an output that is {describe(x_t)}"
                )
            check_output_width(cell, x_t.shape, index, len(cells), 1)
        new_states.append(new_state)
        if dropout > 0 and training and index < last:
            x_t = F.dropout(x_t, dropout, training=True)
    return x_t, new_states


def check_projected(cell: CellLike, inputs: Tensor, projected) -> None:
    """``project`` must keep its input's leading ``(T, B)`` dims: one row per time step."""
    name = type(cell).__name__
    if not isinstance(projected, Tensor):
        raise TypeError(f"{name}.project() must return a Tensor, got {describe(projected)}")
    if projected.dim() < 2 or projected.shape[:2] != inputs.shape[:2]:
        steps, batch = inputs.shape[:2]
        raise ValueError(
            f"{name}.project() must map each time step on its own and keep the leading "
            f"(T, B) dims of its input: given an input of shape {tuple(inputs.shape)}, expected "
            f"an output of shape ({steps}, {batch}, ...), got {tuple(projected.shape)}"
        )


def check_output_width(
    cell: CellLike, step_shape: tuple[int, ...], index: int, num_layers: int, num_directions: int
) -> None:
    """A step's output must be ``(B, hidden_size)``: the layer above is built to read
    ``D * hidden_size`` features. ``step_shape``: the shape of one step's output."""
    expected = getattr(cell, "hidden_size", None)  # None: a whole-sequence runner's wrapper
    width = step_shape[-1] if step_shape else None
    if expected is None or width == expected:
        return
    layer, direction = divmod(index, num_directions)
    where = f"layer {layer} ({'reverse' if direction else 'forward'}, cells[{index}])"
    if layer < num_layers - 1:
        reader = f"layer {layer + 1} reads {num_directions} * hidden_size = "
        reader += f"{num_directions * expected} features"
    else:
        reader = "a layer above it reads num_directions * hidden_size features"
    raise ValueError(
        f"{type(cell).__name__}.step() in {where} returned an output of shape "
        f"{tuple(step_shape)}: expected width {expected} (the cell's hidden_size), got {width}. "
        f"Each step's output must be (B, hidden_size); {reader}"
    )
