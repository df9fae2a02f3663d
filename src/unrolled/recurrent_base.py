"""``RecurrentBase``: the one front door of every multi-layer recurrent module.

``unrolled.RNN / LSTM / GRU`` (torch's parameter names, built-in cells, two backends) and
``unrolled.Recurrent`` (a user's cells) are both this class. What they share lives here, once:

* input forms: batch-first, unbatched, padded with ``lengths=``, ``PackedSequence``
  (:mod:`unrolled.inputs` turns each into time-major ``(T, B, I)`` plus lengths, and back);
* state handling: a state is one tensor or a tuple of tensors (the cells' ``init_state``
  structure), stacked over layer-directions on dim 0 (row ``l * D + d``), checked leaf by leaf,
  split into one state per cell and stacked back (``scan.split_states``, ``scan.stack_states``);
* ``step()``: one time step through all layers (:func:`unrolled.stack.step_layers`).

A subclass says what differs: which cells run (``_step_cells``), how a whole sequence runs
(``_run_layers``: the reference loop, or for the built-in layers a faster runner of the same
plan), how its input and state are checked, and the names its errors use.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from . import checks
from .inputs import map_leaves, to_time_major
from .packed import Sequences
from .scan import State, split_states, stack_states
from .stack import step_layers


class RecurrentBase(nn.Module):
    """Layers x directions of recurrent cells; see the module docstring for the split of work.

    Subclasses set ``input_size``, ``num_layers``, ``bidirectional``, ``batch_first`` and
    ``dropout``, and implement the ``_``-hooks below.
    """

    input_size: int
    num_layers: int
    bidirectional: bool
    batch_first: bool
    dropout: float

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def _name(self) -> str:
        return type(self).__name__

    # ---- what a subclass says ----------------------------------------------------------------

    #: What ``forward``'s errors call the state: ``hidden`` (torch's word) or ``state``; its
    #: leaves are ``hidden[k]``. ``step()``'s errors call it ``state``, its argument's name.
    _state_word = "state"

    #: Whether the layer loop checks the cells' ``project`` and output against the
    #: :class:`~unrolled.Cell` protocol (user cells, whose mistakes would otherwise surface as
    #: raw shape errors); the built-in cells follow it by construction.
    _check_cells = False

    def _check_state_structure(self, state, state_dim: int, like: Tensor) -> None:
        """Raise if ``state`` (as the user gave it) does not have the structure of one
        layer-direction's state, or its leaves do not have ``state_dim`` dims (3 batched, 2
        unbatched)."""
        raise NotImplementedError

    def _check_input(self, inputs: Tensor, name: str = "input") -> None:
        """Raise if time-major ``inputs (T, B, I)`` (or a step's ``(B, I)``) does not fit."""
        raise NotImplementedError

    def _run_layers(self, sequences: Sequences, state: State | None, extra):
        """The whole sequence through all layers: ``(output sequences (D*O features), final
        stacked state)``. ``state`` is stacked (leaves ``(L*D, B, *)``) or None for the cells'
        initial states."""
        raise NotImplementedError

    def _step_cells(self, batch: int, like: Tensor) -> Sequence:
        """The ``L`` cells ``step()`` runs, bottom first (a unidirectional model)."""
        raise NotImplementedError

    # ---- one forward -------------------------------------------------------------------------

    def _run(self, input, state, lengths, extra=None):
        """``forward`` for every subclass: normalise the input form, check, run, restore the form.

        ``extra`` is passed through to ``_run_layers`` (e.g. a choice of runner)."""
        sequences, layout = to_time_major(
            input, batch_first=self.batch_first, lengths=lengths, module_name=self._name
        )
        sequences, state = self._autocast(sequences, state)
        held = sequences.held()  # (T, B, I) or packed (N, I): its size(-1), dtype, device
        self._check_input(held)
        if state is not None:
            state = self._user_state(
                state, layout.state_dim, layout.state_in, held, batch=sequences.batch
            )
        output, final = self._run_layers(sequences, state, extra)  # output: D*O features
        return layout.results_out(output, final)

    def _autocast(self, sequences: Sequences, state):
        """Under autocast, the dtype the module runs in (the built-in layers ask torch's)."""
        return sequences, state

    def _user_state(
        self, state, state_dim: int, to_loop, like: Tensor, word: str = "",
        batch: int | None = None,
    ) -> State:  # fmt: skip
        """A user's stacked state, checked and moved to the loop's form by ``to_loop`` (adds the
        batch dim of unbatched input, sorts the batch). ``batch``: ``B``, by default
        ``like.size(-2)`` (a step's ``(B, I)``). Returns leaves ``(L*D, B, *)``."""
        self._check_state_structure(state, state_dim, like)
        state = to_loop(tuple(state) if isinstance(state, list) else state)
        single, shapes = self._state_shapes(like.size(-2) if batch is None else batch, like)
        rows = self.num_layers * self.num_directions
        word = word or self._state_word
        for k, (leaf, shape) in enumerate(zip(_leaves(state), shapes)):
            name = word if single else f"{word}[{k}]"
            checks.check_state_tensor(name, leaf, (rows, *shape), like)
        return state

    def _state_shapes(self, batch: int, like: Tensor) -> tuple[bool, list[tuple[int, ...]]]:
        """``(single, leaf shapes (B, *))`` of one layer-direction's state: whether it is one
        tensor, and each leaf's shape; a user's stacked state has leaves ``(L*D, B, *)``."""
        raise NotImplementedError

    # ---- one step ----------------------------------------------------------------------------

    def step(self, x_t: Tensor, state=None):
        """One time step of a unidirectional model through all layers (online inference).

        Args:
            x_t: ``(B, I)`` or unbatched ``(I,)``.
            state: as ``forward``'s (leaves ``(L, B, *)``, unbatched ``(L, *)``), None for the
                initial state.

        Returns:
            ``(output_t (B, O), new_state)``; feeding ``new_state`` back continues the sequence
            exactly as one ``forward`` call over the whole sequence would.
        """
        x, batched = checks.check_step_input(self._name, self.bidirectional, x_t)  # (B, I)
        self._check_input(x, "x_t")
        batch = x.size(0)
        cells = self._step_cells(batch, x)
        if state is None:
            states = [c.init_state(batch, dtype=x.dtype, device=x.device) for c in cells]
        else:
            to_loop = (lambda s: s) if batched else (lambda s: map_leaves(_add_batch_dim, s))
            stacked = self._user_state(state, x_t.dim() + 1, to_loop, x, "state")
            states = split_states(stacked, self.num_layers)
        output, finals = step_layers(
            cells, x, states, dropout=self.dropout, training=self.training, check=self._check_cells
        )  # (B, O)
        new_state = stack_states(finals)
        if not batched:
            output = output.squeeze(0)
            new_state = map_leaves(lambda s: s.squeeze(1), new_state)
        return output, new_state


def _leaves(state) -> list[Tensor]:
    return [state] if isinstance(state, Tensor) else list(state)


def _add_batch_dim(leaf: Tensor) -> Tensor:
    return leaf.unsqueeze(1)  # (L, *) -> (L, 1, *)
