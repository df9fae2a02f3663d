"""``Recurrent``: layers, directions, variable lengths and streaming around any :class:`Cell`.

The time loop is :func:`unrolled.scan.scan` and the layers x directions are
:func:`unrolled.stack.stack`, the very code the built-in modules' reference backend runs; input
forms are normalised by :mod:`unrolled.inputs`, as in the built-in modules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from . import checks
from .cell import Cell
from .recurrent_base import RecurrentBase
from .scan import State, describe, split_states, stack_states
from .stack import CellLike, check_output_width, check_projected, run_direction, stack

#: ``choose_cells(inputs (T, B, I))``: the cells a call runs instead of ``self.cells``.
CellChoice = Callable[[Tensor], Sequence[CellLike]]


class CellList(nn.ModuleList):
    """``Recurrent.cells``: a ``torch.nn.ModuleList`` (same behaviour, same state_dict keys) of
    unrolled's own, so that a saved ``Recurrent`` loads with ``torch.load``'s default
    ``weights_only=True`` like unrolled's other classes (see :mod:`unrolled.serialization`)."""


class Recurrent(RecurrentBase):
    """A multi-layer, optionally bidirectional RNN built from a user's :class:`Cell`.

    Args:
        cell: a factory called as ``cell(layer_input_size)`` once per layer and direction, in the
            order (layer 0, forward), (layer 0, reverse), (layer 1, forward), ...; it returns a
            :class:`Cell`. Layer 0 gets ``input_size`` inputs, layer ``l > 0`` gets
            ``D * hidden_size``. All cells must share one ``hidden_size``.
        input_size: ``I``, features per step of the input.
        num_layers: ``L``. bidirectional: ``D = 2`` if True, else 1.
        batch_first: input and output are ``(B, T, *)`` instead of ``(T, B, *)``.
        dropout: dropout on each layer's output but the last, in training mode only.

    The cells are ``rec.cells[l * D + d]``.
    """

    _check_cells = True

    def __init__(
        self,
        cell: Callable[[int], Cell],
        input_size: int,
        num_layers: int = 1,
        bidirectional: bool = False,
        batch_first: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if isinstance(cell, nn.Module):  # callable, but a cell (or module), not a factory
            name = type(cell).__name__
            raise TypeError(
                "cell must be a factory that makes a new cell for each layer and direction, "
                f"called as cell(layer_input_size), got an instance of {name}: pass a factory, "
                f"e.g. unrolled.Recurrent(lambda size: {name}(size, ...), input_size, ...) or the "
                f"class itself if {name}(size) makes a cell, not "
                f"unrolled.Recurrent({name}(...), ...)"
            )
        if not callable(cell):
            raise TypeError(
                "cell must be a factory called as cell(layer_input_size) that returns a Cell, "
                f"got {type(cell).__name__}"
            )
        if not isinstance(bidirectional, bool):  # torch's layers take its truth; ours asks a bool
            raise TypeError(
                f"bidirectional should be of type bool, got: {type(bidirectional).__name__}"
            )
        # The layer-level checks are torch's; the hidden size is the cells' business (checked
        # below), so a valid placeholder stands in for it here.
        checks.check_layer_arguments(
            "RNN_TANH", input_size, 1, num_layers, True, batch_first, dropout, bidirectional, 0
        )
        self.input_size = input_size
        self.num_layers = num_layers
        self.bidirectional = bidirectional
        self.batch_first = batch_first
        self.dropout = float(dropout)
        num_directions = 2 if bidirectional else 1
        cells = []
        layer_input_size = input_size
        for _layer in range(num_layers):
            for _direction in range(num_directions):
                made = cell(layer_input_size)
                if not isinstance(made, Cell):
                    raise TypeError(
                        f"cell({layer_input_size}) must return an unrolled.Cell, "
                        f"got {type(made).__name__}"
                    )
                _check_hidden_size(made, cells[0] if cells else None)
                cells.append(made)
            layer_input_size = num_directions * cells[0].hidden_size
        self.cells = CellList(cells)
        self.hidden_size = cells[0].hidden_size

    def extra_repr(self) -> str:
        s = f"input_size={self.input_size}, hidden_size={self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.bidirectional:
            s += ", bidirectional=True"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        return s

    @torch.no_grad()
    def check_cells(self, input: Tensor) -> None:
        """Check the cells against the :class:`Cell` protocol on ``input``, more strictly than a
        call does; raise ``TypeError`` / ``ValueError`` naming the cell, the layer and the step.

        Every call already checks what costs nothing: that ``step`` returns a pair, that
        ``project`` keeps its input's leading ``(T, B)`` dims and that each step's output is
        ``(B, hidden_size)``. This also checks, at the cost of one ``project`` call per time
        step and layer-direction, that ``project`` maps each time step on its own: that
        ``project(x)[t]`` equals ``project(x[t:t+1])[0]`` (to ``torch.testing.assert_close``'s
        tolerance) for every ``t``. Use it once on a real batch with ``T >= 2``, e.g. in a test.
        It runs without gradients and in evaluation mode (no dropout, inside the cells or
        between layers), and puts every module back in the mode it was in.

        Args:
            input: ``(T, B, I)`` (``(B, T, I)`` if ``batch_first``) or unbatched ``(T, I)``.
        """
        if not isinstance(input, Tensor) or input.dim() not in (2, 3):
            raise ValueError(f"check_cells expects a 2D or 3D input tensor, got {describe(input)}")
        if input.dim() == 2:
            layer_input = input.unsqueeze(1)  # (T, 1, I)
        else:
            layer_input = input.transpose(0, 1) if self.batch_first else input  # (T, B, I)
        self._check_input(layer_input)
        modes = [(module, module.training) for module in self.modules()]
        self.eval()
        try:
            self._check_cells_on(layer_input)
        finally:
            for module, training in modes:
                module.training = training

    def _check_cells_on(self, layer_input: Tensor) -> None:
        """``check_cells`` on time-major ``(T, B, I)``, layer by layer."""
        batch, directions = layer_input.size(1), self.num_directions
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(directions):
                index = layer * directions + direction
                cell = self.cells[index]
                projected = cell.project(layer_input)
                check_projected(cell, layer_input, projected)
                where = f"layer {layer} ({'reverse' if direction else 'forward'}, cells[{index}])"
                _check_project_per_step(cell, layer_input, projected, where)
                state = cell.init_state(batch, dtype=layer_input.dtype, device=layer_input.device)
                output, _ = run_direction(
                    cell, projected, state, reverse=direction == 1, lengths=None
                )
                check_output_width(cell, output.shape[1:], index, self.num_layers, directions)
                outputs.append(output)
            layer_input = torch.cat(outputs, dim=-1)  # (T, B, D*H)

    # ---- what RecurrentBase asks ---------------------------------------------------------------

    def _state_shapes(self, batch: int, like: Tensor) -> tuple[bool, list[tuple[int, ...]]]:
        template = self._state_template(batch, like)
        leaves = [template] if isinstance(template, Tensor) else list(template)
        return isinstance(template, Tensor), [tuple(leaf.shape) for leaf in leaves]

    def _state_template(self, batch: int, like: Tensor) -> State:
        """The first cell's ``init_state``: the structure every layer-direction's state has."""
        return self.cells[0].init_state(batch, dtype=like.dtype, device=like.device)

    def _check_state_structure(self, state, state_dim: int, like: Tensor) -> None:
        template = self._state_template(1, like)
        _check_state_structure(tuple(state) if isinstance(state, list) else state, template)

    def _check_input(self, inputs: Tensor, name: str = "input") -> None:
        weight = next(self.parameters(), None)
        if weight is not None:
            checks.check_dtype("input", inputs, weight)
        if inputs.size(-1) != self.input_size:
            raise RuntimeError(
                "input.size(-1) must be equal to input_size. "
                f"Expected {self.input_size}, got {inputs.size(-1)}"
            )
        if name == "input" and inputs.size(0) == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")

    def _run_layers(self, sequences, state, choose_cells: CellChoice | None):
        inputs, lengths = sequences.padded(), sequences.lengths  # (T, B, I): the masked loop
        batch = inputs.size(1)
        if state is None:
            initial = [
                c.init_state(batch, dtype=inputs.dtype, device=inputs.device) for c in self.cells
            ]
        else:
            initial = split_states(state, len(self.cells))
        cells = self.cells if choose_cells is None else choose_cells(inputs)
        output, finals = stack(
            cells,
            inputs,
            initial,
            num_layers=self.num_layers,
            num_directions=self.num_directions,
            dropout=self.dropout,
            training=self.training,
            lengths=lengths,
            check=True,
            capture=True,
        )  # output (T, B, D*H)
        return sequences.like(output), stack_states(finals)

    def _step_cells(self, batch: int, like: Tensor):
        return self.cells

    # ---- running -----------------------------------------------------------------------------

    def forward(self, input, state=None, lengths=None):
        """Run the stack over a whole sequence.

        Args:
            input: ``(T, B, I)`` (``(B, T, I)`` if ``batch_first``), unbatched ``(T, I)``, or a
                ``PackedSequence``.
            state: initial state of every layer and direction stacked on a new leading dim, row
                ``l * D + d``: a tensor ``(L*D, B, *)`` or a tuple of them, as the cells'
                ``init_state`` (unbatched: ``(L*D, *)``). None: each cell's ``init_state``.
            lengths: valid steps of each sequence of a padded batched input, ``(B,)``.

        Returns:
            ``(output, final_state)``: output ``(T, B, D*H)`` in the input's form (a
            PackedSequence for a PackedSequence), final state stacked like ``state``.

        ``self._run(input, state, lengths, choose_cells)`` is the same with
        ``choose_cells(inputs (T, B, I))`` swapping in other cells (index ``l * D + d``), e.g.
        ones with a whole-sequence scan.
        """
        return self._run(input, state, lengths)


def _check_project_per_step(cell: Cell, inputs: Tensor, projected: Tensor, where: str) -> None:
    """``project(x)[t]`` must be ``project(x[t:t+1])[0]`` for every ``t`` (rounding aside)."""
    name = type(cell).__name__
    for t in range(inputs.size(0)):
        alone = cell.project(inputs[t : t + 1])  # (1, B, *)
        check_projected(cell, inputs[t : t + 1], alone)
        if alone.shape[1:] != projected.shape[1:]:
            raise ValueError(
                f"{name}.project() in {where} must map each time step on its own: on step {t} "
                f"alone it gives rows of shape {tuple(alone.shape[1:])}, expected "
                f"{tuple(projected.shape[1:])} as on the whole sequence"
            )
        try:
            torch.testing.assert_close(alone[0], projected[t])
        except AssertionError:
            difference = (alone[0] - projected[t]).abs().max().item()
            raise ValueError(
                f"{name}.project() in {where} must map each time step on its own: "
                f"project(x[{t}:{t + 1}])[0] differs from project(x)[{t}] by up to {difference:g}, "
                "expected equal (it mixes time steps, e.g. a sum or a convolution over T, so "
                "streaming, single steps and the reverse direction see different inputs)"
            ) from None


def _leaves(state) -> list[Tensor]:
    return [state] if isinstance(state, Tensor) else list(state)


def _check_hidden_size(cell: Cell, first: Cell | None) -> None:
    size = getattr(cell, "hidden_size", None)
    if not isinstance(size, int) or isinstance(size, bool):
        raise TypeError(f"{type(cell).__name__}.hidden_size must be an int, got {size!r}")
    if size <= 0:
        raise ValueError(f"{type(cell).__name__}.hidden_size must be greater than zero, got {size}")
    if first is not None and size != first.hidden_size:
        raise ValueError(
            "all cells of a Recurrent must share one hidden_size: expected "
            f"{first.hidden_size}, got {size} from {type(cell).__name__}"
        )


def _check_state_structure(state, template: State) -> None:
    """The user's state must have the structure of the cells' ``init_state``."""
    if isinstance(template, Tensor):
        if not isinstance(state, Tensor):
            raise TypeError(
                f"state must be a Tensor like the cells' init_state, got {_kind(state)}"
            )
    elif not (isinstance(state, tuple) and len(state) == len(template)):
        raise TypeError(
            f"state must be a tuple of {len(template)} tensors like the cells' init_state, "
            f"got {_kind(state)}"
        )
    for k, leaf in enumerate(_leaves(state)):
        if not isinstance(leaf, Tensor):
            raise TypeError(f"state[{k}] must be a Tensor, got {type(leaf).__name__}")


def _kind(value) -> str:
    if isinstance(value, Tensor):
        return f"a Tensor of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} elements"
    return type(value).__name__
