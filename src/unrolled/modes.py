"""The four recurrent modes, defined once: what every other module asks about a mode.

A mode is named by torch's own string (``"RNN_TANH"``, ``"RNN_RELU"``, ``"LSTM"``, ``"GRU"``),
which is what ``torch.nn.RNNBase.mode`` holds and what modules keep in ``self.mode``. Everything
else that depends on the mode (its gates, its torch class, its name on the command line) is a
field of its :class:`Mode`, looked up with :func:`of`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mode:
    """One recurrent mode and the facts that follow from it."""

    name: str  # torch's mode string, e.g. "LSTM"
    gates: str  # gate letters in torch's row order of weight_ih / weight_hh ("h" for Elman)
    torch_class: str  # the torch.nn layer: "RNN", "LSTM", "GRU"
    nonlinearity: str | None = None  # the Elman RNN's activation, "tanh" | "relu"

    @property
    def num_gates(self) -> int:
        """``G``: rows of ``weight_ih`` per hidden unit."""
        return len(self.gates)

    @property
    def cli_name(self) -> str:
        """The name the command line takes: ``rnn_tanh``, ``lstm``, ..."""
        return self.name.lower()

    @property
    def cell_class(self) -> str:
        """The torch.nn cell class: ``RNNCell``, ``LSTMCell``, ``GRUCell``."""
        return self.torch_class + "Cell"

    @property
    def has_cell_state(self) -> bool:
        """Whether the state is ``(h, c)`` rather than ``h`` alone."""
        return self.name == "LSTM"

    def __str__(self) -> str:
        return self.name


RNN_TANH = Mode("RNN_TANH", "h", "RNN", "tanh")
RNN_RELU = Mode("RNN_RELU", "h", "RNN", "relu")
LSTM = Mode("LSTM", "ifgo", "LSTM")
GRU = Mode("GRU", "rzn", "GRU")

#: Every mode, by torch's name, in the order tables and sweeps list them.
MODES: dict[str, Mode] = {m.name: m for m in (RNN_TANH, RNN_RELU, LSTM, GRU)}
#: torch's mode names.
NAMES: tuple[str, ...] = tuple(MODES)
#: The command line's names -> torch's.
CLI_NAMES: dict[str, str] = {m.cli_name: m.name for m in MODES.values()}


def of(name: str) -> Mode:
    """The :class:`Mode` named ``name`` (torch's string); ValueError names the four."""
    try:
        return MODES[name]
    except (KeyError, TypeError):
        raise ValueError(f"Unrecognized RNN mode: {name!r}; expected one of {NAMES}") from None


def from_nonlinearity(nonlinearity: str) -> str:
    """``"tanh" | "relu"`` -> torch's mode name, with torch's error for anything else."""
    for mode in (RNN_TANH, RNN_RELU):
        if nonlinearity == mode.nonlinearity:
            return mode.name
    raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
