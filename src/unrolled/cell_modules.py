"""``RNNCell``, ``LSTMCell``, ``GRUCell``: one step, twins of torch.nn's cell classes.

Each is a thin module around the step function of the same name in :mod:`unrolled.cells`, and a
:class:`~unrolled.Cell` too (through :class:`~unrolled.builtin.BuiltinCell`), so
``Recurrent(lambda i: unrolled.GRUCell(i, 64))`` stacks torch's cells like any other.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.overrides import handle_torch_function

from . import cells, checks, precision
from .builtin import BuiltinCell
from .cell import Cell
from .init import uniform_by_hidden_size_
from .inputs import overridden_by
from .scan import State
from .weights import LayerWeights


class RNNCellBase(Cell):
    """Parameters ``weight_ih (G*H, I)``, ``weight_hh (G*H, H)``, ``bias_ih, bias_hh (G*H,)``.

    ``forward`` is torch's; ``init_state``, ``project`` and ``step`` are the :class:`Cell`
    protocol (``project`` hoists ``W_ih x + b_ih`` over all steps, ``step`` returns ``(h',
    new_state)``), both running the update of :mod:`unrolled.cells`.
    """

    mode: str

    def __init__(self, input_size: int, hidden_size: int, bias: bool, num_chunks: int,
                 device=None, dtype=None) -> None:  # fmt: skip
        super().__init__()
        checks.check_torch_cell_sizes(input_size, hidden_size)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        factory = {"device": device, "dtype": dtype}
        gate_size = num_chunks * hidden_size
        self.weight_ih = nn.Parameter(torch.empty((gate_size, input_size), **factory))
        self.weight_hh = nn.Parameter(torch.empty((gate_size, hidden_size), **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(gate_size, **factory))
            self.bias_hh = nn.Parameter(torch.empty(gate_size, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        uniform_by_hidden_size_(self.parameters(), self.hidden_size)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        if getattr(self, "nonlinearity", "tanh") != "tanh":
            s += f", nonlinearity={self.nonlinearity}"
        return s

    def _step(self, input: Tensor, hx, step):
        """Validate, run ``step(input (B, I), hx, *weights)`` (under autocast in the dtype
        torch's own cell would run in), and drop the batch dim of unbatched input again."""
        if overridden_by(input, hx):  # a __torch_function__ tensor-like decides, as for torch's
            return handle_torch_function(self.forward, (input, hx), input, hx)
        weights = self._weights()
        if isinstance(input, Tensor):
            dtype = precision.run_dtype(self.mode, True, input, weights[0])
            if dtype is not None:  # under autocast: autocast casts the weights in F.linear
                input, hx = precision.cast(input, dtype), precision.cast(hx, dtype)
        input, hx, batched = self._prepare(input, hx, weights[0])
        out = step(input, hx, *weights)
        if batched:
            return out
        return tuple(o.squeeze(0) for o in out) if isinstance(out, tuple) else out.squeeze(0)

    def _prepare(self, input: Tensor, hx, weight: Tensor) -> tuple[Tensor, object, bool]:
        """Validate as torch's cells do (same exception types, torch's messages), add the batch
        dim to unbatched input, and fill in a zero state."""
        name = type(self).__name__
        if not isinstance(input, Tensor):
            raise TypeError(f"input must be a Tensor, got {type(input).__name__}")
        if input.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None:
            checks.check_cell_hx(name, self.mode, hx)
        batched = input.dim() == 2
        if not batched:
            input = input.unsqueeze(0)
            if hx is not None:
                hx = tuple(s.unsqueeze(0) for s in hx) if self.mode == "LSTM" else hx.unsqueeze(0)
        checks.check_cell_input(input, self.input_size)
        batch = input.size(0)
        if hx is None:
            zeros = input.new_zeros(batch, self.hidden_size)
            hx = (zeros, zeros) if self.mode == "LSTM" else zeros
        else:
            states = hx if self.mode == "LSTM" else (hx,)
            for k, state in enumerate(states):
                checks.check_cell_state(k, state, input, self.hidden_size, batched)
        checks.check_cell_dtype(name, input, weight, hx if self.mode == "LSTM" else (hx,))
        return input, hx, batched

    def _weights(self) -> tuple:
        return self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh

    # ---- the Cell protocol, for Recurrent ------------------------------------------------------

    def _bound(self) -> BuiltinCell:
        return BuiltinCell(self.mode, LayerWeights(*self._weights()), hoist_input=True)

    def init_state(self, batch_size: int, *, dtype: torch.dtype, device: torch.device) -> State:
        return self._bound().init_state(batch_size, dtype=dtype, device=device)

    def project(self, x: Tensor) -> Tensor:
        return self._bound().project(x)  # (T, B, I) -> (T, B, G*H)

    def step(self, xp_t: Tensor, state: State) -> tuple[Tensor, State]:
        return self._bound().step(xp_t, state)  # (B, H), new state

    def __prepare_scriptable__(self):
        """``torch.jit.script`` asks this first: say clearly that TorchScript is not supported."""
        raise RuntimeError(
            f"unrolled.{type(self).__name__} cannot be compiled by TorchScript (torch.jit.script, "
            "deprecated in this torch): use torch.compile(model) or torch.export.export(model, "
            f"args), or to_torch() for a torch.nn.{type(self).__name__} that scripts"
        )

    def to_torch(self) -> nn.Module:
        """A plain ``torch.nn`` cell with the same configuration and copied weights."""
        factory = {"device": self.weight_ih.device, "dtype": self.weight_ih.dtype}
        if self.mode == "LSTM":
            twin = nn.LSTMCell(self.input_size, self.hidden_size, self.bias, **factory)
        elif self.mode == "GRU":
            twin = nn.GRUCell(self.input_size, self.hidden_size, self.bias, **factory)
        else:
            twin = nn.RNNCell(self.input_size, self.hidden_size, self.bias, self.nonlinearity,
                              **factory)  # fmt: skip
        from .interop import copy_weights  # interop imports this module

        copy_weights(self, twin)
        return twin


class RNNCell(RNNCellBase):
    r"""``h' = act(W_ih x + b_ih + W_hh h + b_hh)``; a twin of ``torch.nn.RNNCell``.

    ``RNNCell(input_size, hidden_size, bias=True, nonlinearity='tanh', device=None, dtype=None)``.
    ``forward(input (B, I) or (I,), hx (B, H) or (H,) or None) -> h' (B, H) or (H,)``.
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "tanh", device=None, dtype=None) -> None:  # fmt: skip
        self.mode = checks.check_nonlinearity(nonlinearity)
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, bias, 1, device, dtype)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        return self._step(input, hx, cells.CELLS[self.mode])  # (B, H)


class LSTMCell(RNNCellBase):
    r"""One LSTM step (equations in :func:`unrolled.cells.lstm`); a twin of ``torch.nn.LSTMCell``.

    ``LSTMCell(input_size, hidden_size, bias=True, device=None, dtype=None)``.
    ``forward(input (B, I), hx (h (B, H), c (B, H)) or None) -> (h', c')``.
    """

    mode = "LSTM"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 device=None, dtype=None) -> None:  # fmt: skip
        super().__init__(input_size, hidden_size, bias, 4, device, dtype)

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None):
        return self._step(input, hx, cells.lstm)  # (B, H), (B, H)


class GRUCell(RNNCellBase):
    r"""One GRU step (equations in :func:`unrolled.cells.gru`); a twin of ``torch.nn.GRUCell``.

    ``GRUCell(input_size, hidden_size, bias=True, device=None, dtype=None)``.
    ``forward(input (B, I), hx (B, H) or None) -> h' (B, H)``.
    """

    mode = "GRU"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 device=None, dtype=None) -> None:  # fmt: skip
        super().__init__(input_size, hidden_size, bias, 3, device, dtype)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        return self._step(input, hx, cells.gru)  # (B, H)
