"""``RNN``, ``LSTM``, ``GRU``: drop-in twins of torch.nn's layers.

Same constructor (plus keyword-only ``backend``), same parameter names and shapes, same forward
semantics. The module only does bookkeeping: check the arguments, turn every input form (batch
first, unbatched, PackedSequence, padded with ``lengths=``) into time-major ``(T, B, I)`` plus
optional lengths, call the backend, and turn the result back.
"""

from __future__ import annotations

import dataclasses
import warnings

import torch
from torch import Tensor, nn
from torch.overrides import handle_torch_function

from . import backends, checks, modes, precision, regularizers
from .builtin import bind
from .init import uniform_by_hidden_size_
from .inputs import overridden_by, to_time_major
from .packed import Sequences
from .recurrent_base import RecurrentBase
from .weights import LayerWeights, parameter_names


class RNNBase(RecurrentBase):
    """:class:`RNN`, :class:`LSTM` and :class:`GRU`: a :class:`~unrolled.recurrent_base.
    RecurrentBase` of built-in cells (:mod:`unrolled.builtin`) with torch's parameter names and
    state layout, whose whole-sequence runner is the one :func:`unrolled.backends.plan` picks."""

    def __init__(
        self,
        mode: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
        *,
        backend: str = "fast",
    ) -> None:
        super().__init__()
        checks.check_layer_arguments(
            mode, input_size, hidden_size, num_layers, bias, batch_first, dropout,
            bidirectional, proj_size,
        )  # fmt: skip
        backends.check_backend(backend)
        self.mode = mode
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        self.backend = backend

        factory = {"device": device, "dtype": dtype}
        gate_size = modes.of(mode).num_gates * hidden_size
        out_size = proj_size or hidden_size  # P: what each direction emits per step
        self._flat_weights_names: list[str] = []
        self._all_weights: list[list[str]] = []
        for layer in range(num_layers):
            for direction in range(self.num_directions):
                layer_input_size = input_size if layer == 0 else out_size * self.num_directions
                suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
                shapes = {
                    "weight_ih": (gate_size, layer_input_size),
                    "weight_hh": (gate_size, out_size),
                }
                if bias:
                    shapes.update(bias_ih=(gate_size,), bias_hh=(gate_size,))
                if proj_size > 0:
                    shapes["weight_hr"] = (proj_size, hidden_size)
                names = []
                for name, shape in shapes.items():
                    self.register_parameter(
                        name + suffix, nn.Parameter(torch.empty(shape, **factory))
                    )
                    names.append(name + suffix)
                self._flat_weights_names.extend(names)
                self._all_weights.append(names)
        self.reset_parameters()

    # ---- torch.nn compatibility --------------------------------------------------------------

    def reset_parameters(self) -> None:
        """torch's default initialisation: every parameter ~ U(-1/sqrt(H), 1/sqrt(H))."""
        uniform_by_hidden_size_(self.parameters(), self.hidden_size)

    def flatten_parameters(self) -> None:
        """No-op: there is no cuDNN weight buffer to compact. Kept so torch code runs unchanged."""

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    @property
    def _flat_weights(self) -> list[Tensor]:
        return [getattr(self, name) for name in self._flat_weights_names]

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size != 0:
            s += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        if self.batch_first is not False:
            s += f", batch_first={self.batch_first}"
        if self.dropout != 0:
            s += f", dropout={self.dropout}"
        if self.bidirectional is not False:
            s += f", bidirectional={self.bidirectional}"
        if self.backend != "fast":
            s += f", backend={self.backend!r}"
        if self.recurrent_dropout:
            s += f", recurrent_dropout={self.recurrent_dropout}"
        if any(self._zoneout_rates):
            s += f", zoneout={self.zoneout}"
        return s

    def layer_weights(self) -> list[LayerWeights]:
        """``L*D`` :class:`LayerWeights`, None where absent, row ``l*D + d``."""
        # Through the attributes: parametrized, pruned or replaced weights are what is used.
        return [
            LayerWeights(*(getattr(self, name) if name else None for name in names))
            for names in self._layer_weight_names()
        ]

    def _layer_weight_names(self) -> list[tuple[str | None, ...]]:
        """Per layer-direction, the five names of :class:`LayerWeights`' fields, None where
        absent; cached, since the configuration that decides them never changes."""
        names = self.__dict__.get("_weight_names")
        if names is None:
            registered = set(self._flat_weights_names)
            names = [
                tuple(n if n in registered else None for n in parameter_names(layer, direction))
                for layer in range(self.num_layers)
                for direction in range(self.num_directions)
            ]
            self.__dict__["_weight_names"] = names
        return names

    # ---- what RecurrentBase asks ---------------------------------------------------------------

    _state_word = "hidden"

    def _state_shapes(self, batch: int, like: Tensor) -> tuple[bool, list[tuple[int, ...]]]:
        h = (batch, self.proj_size or self.hidden_size)  # (B, P)
        if self.mode == "LSTM":
            return False, [h, (batch, self.hidden_size)]  # c (B, H)
        return True, [h]

    def _zero_state(self, batch: int, like: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """``hx=None``: zeros ``(L*D, B, P)``, for LSTM with ``c (L*D, B, H)``."""
        rows = self.num_layers * self.num_directions
        single, shapes = self._state_shapes(batch, like)
        zeros = tuple(like.new_zeros(rows, *shape) for shape in shapes)
        return zeros[0] if single else zeros

    def _check_state_structure(self, state, state_dim: int, like: Tensor) -> None:
        checks.check_hx_structure(self.mode, state, state_dim)

    def _check_input(self, inputs: Tensor, name: str = "input") -> None:
        weight = getattr(self, self._flat_weights_names[0])
        if name == "input":
            checks.check_sequence_input(inputs, self.input_size, weight)
            return
        if inputs.size(-1) != self.input_size:  # a step's x_t (B, I)
            raise RuntimeError(
                f"{name}.size(-1) must be equal to input_size. Expected {self.input_size}, "
                f"got {inputs.size(-1)}"
            )
        if inputs.dtype != weight.dtype:
            raise ValueError(
                f"{name} dtype ({inputs.dtype}) does not match weight dtype ({weight.dtype})"
            )

    def _autocast(self, sequences: Sequences, hx):
        dtype = precision.run_dtype(
            self.mode, False, sequences.held(), getattr(self, self._flat_weights_names[0])
        )
        if dtype is None:
            return sequences, hx
        # Under autocast: in the dtype torch's own layer would run in.
        return sequences.map(lambda t: precision.cast(t, dtype)), precision.cast(hx, dtype)

    def _run_layers(self, sequences: Sequences, hx, extra=None):
        """The planned runner on the sorted batch: ``(output sequences (D*P features), h_n)``
        with ``h_n`` in the loop's (sorted) row order."""
        weights = self.layer_weights()
        like = sequences.held()
        if hx is None:
            hx = self._zero_state(sequences.batch, like)
        masks = None
        if self._custom_step():  # the regularised step: this call's draws, for either backend
            masks = regularizers.draw_masks(
                self.mode, weights, sequences.num_steps, sequences.batch, like,
                recurrent_dropout=self.recurrent_dropout, zoneout=self._zoneout_rates,
                training=self.training,
            )  # fmt: skip
        return backends.run(
            self._plan(sequences, weights),
            sequences,
            hx,
            weights,
            num_layers=self.num_layers,
            num_directions=self.num_directions,
            dropout=self.dropout,
            training=self.training,
            masks=masks,
        )

    def _step_cells(self, batch: int, like: Tensor) -> list:
        weights = self.layer_weights()  # D = 1: one per layer
        if not self._custom_step():
            return bind(self.mode, weights)
        if self.training and self.recurrent_dropout > 0:
            raise RuntimeError(
                "step() in training mode with recurrent_dropout > 0 would draw a new mask at "
                "every step, but the mask belongs to the whole sequence: use forward() to train"
            )
        return regularizers.make_cells(
            self.mode, weights, 1, zoneout=self._zoneout_rates, training=self.training
        )

    # ---- forward -----------------------------------------------------------------------------

    def forward(self, input, hx=None, lengths=None):
        """Run the layer.

        Args:
            input: ``(T, B, I)`` (``(B, T, I)`` if ``batch_first``), unbatched ``(T, I)``, or a
                ``PackedSequence``.
            hx: initial state ``(L*D, B, P)`` (unbatched ``(L*D, P)``), for LSTM a tuple
                ``(h_0, c_0)`` with ``c_0`` of hidden size ``H``; None means zeros.
            lengths: beyond torch: valid steps of each sequence of a padded batched ``input``
                (``(B,)`` integers). Outputs past a sequence's length are zero, its final state is
                taken at its last valid step, and the reverse direction starts there. (It may be
                passed by position too: exporters that fill in every default positionally,
                as the TorchScript ONNX exporter does, must be able to call ``forward``.)

        Returns:
            ``(output, h_n)``, for LSTM ``(output, (h_n, c_n))``, shaped like torch's.
        """
        if overridden_by(input, hx):  # a __torch_function__ tensor-like: it decides, as for torch's
            return handle_torch_function(self.forward, (input, hx), input, hx, lengths=lengths)
        return self._run(input, hx, lengths)

    def _plan(self, sequences: Sequences, weights) -> backends.Plan:
        """The one decision of which code runs this call."""
        return backends.plan(
            self.mode, sequences, weights, backend=self.backend, lengths=sequences.lengths,
            custom_step=self._custom_step(), num_directions=self.num_directions,
        )  # fmt: skip

    # ---- beyond torch: recurrent dropout and zoneout (LSTM, GRU) -----------------------------

    recurrent_dropout: float = 0.0
    zoneout: float | tuple[float, float] = 0.0
    _zoneout_rates: tuple[float, float] = (0.0, 0.0)

    def _set_regularizers(self, recurrent_dropout, zoneout) -> None:
        self.recurrent_dropout = regularizers.check_rate("recurrent_dropout", recurrent_dropout)
        self._zoneout_rates = regularizers.check_zoneout(self.mode, zoneout)
        self.zoneout = tuple(zoneout) if isinstance(zoneout, (tuple, list)) else float(zoneout)

    def _custom_step(self) -> str:
        """What makes this call's step differ from torch's, in words ("" when nothing does):
        zoneout always (eval uses its expectation), recurrent dropout in training mode only."""
        parts = []
        if self.training and self.recurrent_dropout > 0:
            parts.append(f"recurrent_dropout={self.recurrent_dropout}")
        if any(self._zoneout_rates):
            parts.append(f"zoneout={self.zoneout}")
        return " and ".join(parts)

    # ---- interop -----------------------------------------------------------------------------

    def __prepare_scriptable__(self):
        """``torch.jit.script`` asks this first: say clearly that TorchScript is not supported."""
        raise RuntimeError(
            f"unrolled.{type(self).__name__} cannot be compiled by TorchScript (torch.jit.script, "
            "deprecated in this torch): use torch.compile(model) or torch.export.export(model, "
            f"args), or to_torch() for a torch.nn.{type(self).__name__} that scripts"
        )

    def to_torch(self) -> nn.RNNBase:
        """A plain ``torch.nn`` module with the same configuration and copied weights."""
        if self.recurrent_dropout or any(self._zoneout_rates):
            warnings.warn(
                "torch.nn has no recurrent_dropout or zoneout: the torch copy runs without them "
                "(and differs in eval mode when zoneout > 0)",
                stacklevel=2,
            )
        weight = getattr(self, self._flat_weights_names[0])
        kwargs = dict(
            num_layers=self.num_layers,
            bias=self.bias,
            batch_first=self.batch_first,
            dropout=self.dropout,
            bidirectional=self.bidirectional,
            device=weight.device,
            dtype=weight.dtype,
        )
        if self.mode == "LSTM":
            twin = nn.LSTM(self.input_size, self.hidden_size, proj_size=self.proj_size, **kwargs)
        elif self.mode == "GRU":
            twin = nn.GRU(self.input_size, self.hidden_size, **kwargs)
        else:
            nonlinearity = "tanh" if self.mode == "RNN_TANH" else "relu"
            twin = nn.RNN(self.input_size, self.hidden_size, nonlinearity=nonlinearity, **kwargs)
        from .interop import copy_weights  # interop imports this module

        copy_weights(self, twin)
        twin.train(self.training)
        return twin


class RNN(RNNBase):
    r"""Elman RNN, ``h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``; a twin of ``torch.nn.RNN``.

    ``RNN(input_size, hidden_size, num_layers=1, nonlinearity='tanh', bias=True,
    batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None, *,
    backend='fast')``
    """

    def __init__(self, *args, backend: str = "fast", **kwargs) -> None:
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if len(args) > 3:
            nonlinearity = args[3]
            args = args[:3] + args[4:]
        else:
            nonlinearity = kwargs.pop("nonlinearity", "tanh")
        mode = checks.check_nonlinearity(nonlinearity)
        self.nonlinearity = nonlinearity
        super().__init__(mode, *args, backend=backend, **kwargs)


class LSTM(RNNBase):
    r"""Long short-term memory, optionally with projections; a twin of ``torch.nn.LSTM``.

    ``LSTM(input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
    bidirectional=False, proj_size=0, device=None, dtype=None, *, backend='fast',
    recurrent_dropout=0.0, zoneout=0.0)``.
    The equations are in :func:`unrolled.cells.lstm`. Beyond torch: ``recurrent_dropout``
    (variational, on ``h`` before ``W_hh``) and ``zoneout`` (``p`` for ``h`` and ``c``, or a pair
    ``(p_h, p_c)``); both off by default, formulations in :mod:`unrolled.regularizers`.
    """

    def __init__(self, *args, backend: str = "fast", recurrent_dropout: float = 0.0,
                 zoneout: float | tuple[float, float] = 0.0, **kwargs) -> None:  # fmt: skip
        super().__init__("LSTM", *args, backend=backend, **kwargs)
        self._set_regularizers(recurrent_dropout, zoneout)


class GRU(RNNBase):
    r"""Gated recurrent unit in torch's formulation; a twin of ``torch.nn.GRU``.

    ``GRU(input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
    bidirectional=False, device=None, dtype=None, *, backend='fast', recurrent_dropout=0.0,
    zoneout=0.0)``.
    The equations are in :func:`unrolled.cells.gru`. Beyond torch: ``recurrent_dropout``
    (variational, on ``h`` before ``W_hh``) and ``zoneout``; both off by default, formulations in
    :mod:`unrolled.regularizers`.
    """

    def __init__(self, *args, backend: str = "fast", recurrent_dropout: float = 0.0,
                 zoneout: float = 0.0, **kwargs) -> None:  # fmt: skip
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__("GRU", *args, backend=backend, **kwargs)
        self._set_regularizers(recurrent_dropout, zoneout)


def plan(module: nn.Module, input, *, lengths=None) -> backends.Plan:
    """Which code a call ``module(input)`` runs, and why (the decision the call itself makes).

    ``print(unrolled.plan(lstm, x))`` gives e.g. ``LSTM: native loops (C++, AVX2), row-major
    W_hh^T; reason: float32 on CPU, native loops built here``. ``input`` (and ``lengths``) as
    the module's ``forward`` takes them; only their dtype, device and shape matter.

    Cells and custom :class:`~unrolled.Recurrent` stacks have one runner, the reference cell
    math; their plan says so.
    """
    if isinstance(module, RNNBase):
        sequences, _ = to_time_major(
            input, batch_first=module.batch_first, lengths=lengths, module_name=module._name
        )
        return module._plan(sequences, module.layer_weights())
    from .cell import Cell
    from .cell_modules import RNNCellBase
    from .recurrent import Recurrent
    from .variants.mingru import MinGRU

    if isinstance(module, RNNCellBase):
        reason = "a cell is one step: the cell functions, differentiated by autograd"
        return backends.Plan(module.mode, backends.REFERENCE, reason)
    if isinstance(module, MinGRU):
        parallel, measured = module.parallel_choice(input)
        if parallel:
            reason = (f"a training step over T > 1 steps: the parallel scan over time "
                      f"({module.scan_method}), differentiated by autograd")  # fmt: skip
            return backends.Plan("MinGRU", "parallel scan", reason, measured=measured)
        if measured:  # a training step where the captured steps were measured faster
            stepping = recurrent_plan(module, input, lengths)
            reason = f"{stepping.reason}; measured faster than the parallel scan here"
            return dataclasses.replace(stepping, reason=reason, measured=measured)
    if isinstance(module, Recurrent) and all(hasattr(c, "scan") for c in module.cells):
        return own_loop_plan(module, input)
    if isinstance(module, Recurrent):
        return recurrent_plan(module, input, lengths)
    if isinstance(module, Cell):
        reason = (f"a custom cell ({type(module).__name__}) is one step() in torch ops, "
                  "differentiated by autograd; in unrolled.Recurrent it runs the reference "
                  "loop")  # fmt: skip
        return backends.Plan(type(module).__name__, backends.REFERENCE, reason)
    raise TypeError(
        f"unrolled.plan: module must be one of unrolled's recurrent modules, got "
        f"{type(module).__name__}"
    )


def recurrent_plan(module, input, lengths) -> backends.Plan:
    """The plan of a ``Recurrent`` of step cells: their step captured and run by the C++ loop
    (:mod:`unrolled.captured`) where it can be, else the reference loop, and why (what the
    first cell, layer 0 forward, gets on this input)."""
    from . import captured

    sequences, _ = to_time_major(
        input, batch_first=module.batch_first, lengths=lengths, module_name=module._name
    )
    inputs = sequences.padded()  # (T, B, I)
    cell = module.cells[0]
    with torch.no_grad():
        input_part = cell.project(inputs)  # (T, B, *)
    state = cell.init_state(inputs.size(1), dtype=inputs.dtype, device=inputs.device)
    runner, why = captured.runner_name(cell, input_part, state, sequences.lengths)
    cells = ", ".join(dict.fromkeys(type(cell).__name__ for cell in module.cells))
    if runner:
        reason = (f"{cells} cells: step() captured once as ATen graphs (forward and backward of "
                  "a step), project() hoisted, the time loop and BPTT run the graphs")  # fmt: skip
        return backends.Plan(type(module).__name__, runner, reason)
    reason = (f"{cells} cells run the reference loop (stack and scan): project() hoisted, one "
              f"step() call per time step in torch ops, differentiated by autograd; not "
              f"captured: {why}")  # fmt: skip
    return backends.Plan(type(module).__name__, backends.REFERENCE, reason)


def own_loop_plan(module, input) -> backends.Plan:
    """The plan of a ``Recurrent`` whose cells all have a whole-sequence ``scan``: they run their
    own time loop. The runner is what the cells' ``scan_runner(input)`` says (e.g. "native
    loops" or "python loops" for the dtype and device of ``input``), else "own scan"."""
    data = input.data if hasattr(input, "batch_sizes") else input
    cells = ", ".join(dict.fromkeys(type(cell).__name__ for cell in module.cells))
    scan_runner = getattr(module.cells[0], "scan_runner", None)
    runner = scan_runner(data) if scan_runner is not None else "own scan"
    reason = f"{cells} cells run their own time loop (hand-written BPTT)"
    return backends.Plan(type(module).__name__, runner, reason)
