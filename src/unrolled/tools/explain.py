"""Step through a small recurrent network, equation by equation, and show where results land.

:func:`trace` runs a configuration one cell step at a time with the library's own cell functions
(:mod:`unrolled.cells`), recording every intermediate (the update's named values) of every step
of every layer and direction;
it then assembles ``output`` and ``h_n`` from those steps and checks them against torch.nn.
:func:`render` turns a trace into text: the equations (the cells' tables), the
shapes of everything in them, optionally the numbers, and the origin of each slice of ``output``
and each row of ``h_n``. :mod:`unrolled.tools.diagram` draws the same trace.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .. import cells, modes
from ..builtin import BuiltinCell
from ..equations import select, symbols
from ..interop import from_torch
from . import compare

MODES = modes.CLI_NAMES
DIRECTION_NAMES = ("forward", "reverse")
#: float32 agreement with torch.nn required for PASS (the table's float32 absolute bound).
TOLERANCE = compare.TOLERANCES[torch.float32].atol


@dataclass(frozen=True)
class Config:
    """A network small enough to print: ``B`` sequences of ``T`` steps, ``I`` in, ``H`` hidden."""

    mode: str = "RNN_TANH"
    layers: int = 1
    bidirectional: bool = False
    steps: int = 3
    batch: int = 1
    input_size: int = 2
    hidden_size: int = 3
    proj_size: int = 0
    seed: int = 0

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def out_size(self) -> int:
        """``P``: what one direction emits per step (the projection size if there is one)."""
        return self.proj_size or self.hidden_size


@dataclass
class Step:
    """One cell application: layer ``layer``, direction ``direction``, reading time ``t``."""

    layer: int
    direction: int
    t: int
    order: int  # 0 for the first step this layer-direction takes, 1 for the second, ...
    x: Tensor  # (B, I) for layer 0, (B, D*P) above
    state_in: tuple[Tensor, ...]  # (h,) or (h, c)
    values: dict[str, Tensor]  # every left-hand side of the equations, in order
    state_out: tuple[Tensor, ...]


@dataclass
class Trace:
    config: Config
    weights: dict[str, Tensor]  # torch's parameter names
    inputs: Tensor  # (B, T, I)
    steps: list[Step] = field(default_factory=list)
    output: Tensor | None = None  # (B, T, D*P), assembled from the steps
    h_n: Tensor | None = None  # (L*D, B, P)
    c_n: Tensor | None = None  # (L*D, B, H), LSTM only
    torch_output: Tensor | None = None
    torch_h_n: Tensor | None = None
    torch_c_n: Tensor | None = None
    cell_difference: float = 0.0  # the printed values vs the cell's step function

    @property
    def passed(self) -> bool:
        return max(self.max_difference, self.cell_difference) <= TOLERANCE

    def of(self, layer: int, direction: int) -> list[Step]:
        """The steps of one layer-direction in the order they were taken."""
        chosen = [s for s in self.steps if s.layer == layer and s.direction == direction]
        return sorted(chosen, key=lambda s: s.order)

    def at(self, layer: int, direction: int, t: int) -> Step:
        return next(s for s in self.of(layer, direction) if s.t == t)

    @property
    def max_difference(self) -> float:
        pairs = [(self.output, self.torch_output), (self.h_n, self.torch_h_n)]
        if self.c_n is not None:
            pairs.append((self.c_n, self.torch_c_n))
        return max(compare.largest_difference(a, b) for a, b in pairs)


# ---- the equations: the cells' tables -------------------------------------------------------


def equations(mode: str, projection: bool = False) -> list[tuple[str, str]]:
    """``[(lhs, rhs), ...]`` of the mode's cell, from its table in :mod:`unrolled.cells`."""
    return select(cells.EQUATIONS[mode], projection)


def weight_sources(config: Config, layer: int, direction: int) -> dict[str, tuple[str, slice]]:
    """Each weight symbol of the equations -> (torch parameter name, rows it takes)."""
    suffix = f"_l{layer}" + ("_reverse" if direction else "")
    hidden = config.hidden_size
    gates = modes.of(config.mode).gates
    if len(gates) > 1:
        sources = {}
        for k, gate in enumerate(gates):
            rows = slice(k * hidden, (k + 1) * hidden)
            sources[f"W_i{gate}"] = ("weight_ih" + suffix, rows)
            sources[f"W_h{gate}"] = ("weight_hh" + suffix, rows)
            sources[f"b_i{gate}"] = ("bias_ih" + suffix, rows)
            sources[f"b_h{gate}"] = ("bias_hh" + suffix, rows)
        if config.mode == "LSTM" and config.proj_size:
            sources["W_hr"] = ("weight_hr" + suffix, slice(None))
        return sources
    return {
        name: (name.replace("W_", "weight_").replace("b_", "bias_") + suffix, slice(None))
        for name in ("W_ih", "W_hh", "b_ih", "b_hh")
    }


# ---- running the network one step at a time ------------------------------------------------


def _step_values(mode: str, x: Tensor, state: tuple[Tensor, ...], w) -> dict[str, Tensor]:
    """Every left-hand side of the mode's equations at one step: the intermediates the cell's
    update returns by name (``c`` and ``h`` are the new ``c'`` and ``h'``)."""
    cell = BuiltinCell(mode, w)
    xw = cells.input_part(x, w.w_ih, w.b_ih)  # (B, G*H)
    hw = cells.recurrent_part(state[0], w.w_hh, w.b_hh)  # (B, G*H)
    values = cell.values(xw, hw, state if mode == "LSTM" else state[0])
    return {_PRIMED.get(name, name): value for name, value in values._asdict().items()}


#: The updates' field names that the equations write primed: the new state.
_PRIMED = {"h": "h'", "c": "c'"}


def _cell_state(mode: str, x: Tensor, state: tuple[Tensor, ...], w) -> tuple[Tensor, ...]:
    """The cell's step function (``unrolled.cells.CELLS``): what the cell modules run."""
    if mode == "LSTM":
        return cells.lstm(x, (state[0], state[1]), w.w_ih, w.w_hh, w.b_ih, w.b_hh, w.w_hr)
    return (cells.CELLS[mode](x, state[0], w.w_ih, w.w_hh, w.b_ih, w.b_hh),)


def torch_module(config: Config) -> nn.RNNBase:
    """The torch.nn layer of a configuration (batch_first, float32, torch's initialisation)."""
    kwargs = dict(num_layers=config.layers, bidirectional=config.bidirectional, batch_first=True)
    size = (config.input_size, config.hidden_size)
    if config.mode == "LSTM":
        return nn.LSTM(*size, proj_size=config.proj_size, **kwargs)
    if config.mode == "GRU":
        return nn.GRU(*size, **kwargs)
    return nn.RNN(*size, nonlinearity=config.mode[4:].lower(), **kwargs)


@torch.no_grad()
def trace(config: Config) -> Trace:
    """Run ``config`` step by step; assemble ``output``/``h_n``; run torch.nn beside it."""
    torch.manual_seed(config.seed)
    reference = torch_module(config).eval()
    twin = from_torch(reference, backend="reference")
    inputs = torch.randn(config.batch, config.steps, config.input_size)  # (B, T, I)
    result = Trace(config, dict(reference.named_parameters()), inputs)
    layer_weights = twin.layer_weights()

    D, B, H, P = config.directions, config.batch, config.hidden_size, config.out_size
    layer_input = inputs  # (B, T, I)
    finals = []
    for layer in range(config.layers):
        outputs = []
        for direction in range(D):
            w = layer_weights[layer * D + direction]
            state: tuple[Tensor, ...] = (torch.zeros(B, P),)  # hx=None means zeros
            if config.mode == "LSTM":
                state = (torch.zeros(B, P), torch.zeros(B, H))
            times = range(config.steps - 1, -1, -1) if direction else range(config.steps)
            by_time = {}
            for order, t in enumerate(times):
                x_t = layer_input[:, t]  # (B, I) or (B, D*P)
                values = _step_values(config.mode, x_t, state, w)
                new_state = _cell_state(config.mode, x_t, state, w)
                # The printed values must be what the cell's step computes.
                gap = compare.largest_difference(values["h'"], new_state[0])
                result.cell_difference = max(result.cell_difference, gap)
                result.steps.append(Step(layer, direction, t, order, x_t, state, values, new_state))
                by_time[t] = new_state[0]
                state = new_state
            outputs.append(torch.stack([by_time[t] for t in range(config.steps)], dim=1))
            finals.append(state)  # the state after this direction's LAST step
        layer_input = torch.cat(outputs, dim=-1)  # (B, T, D*P)
    result.output = layer_input
    result.h_n = torch.stack([s[0] for s in finals])  # (L*D, B, P)
    with warnings.catch_warnings():  # torch's note that projections skip oneDNN
        warnings.simplefilter("ignore", UserWarning)
        result.torch_output, torch_state = reference(inputs)
    if config.mode == "LSTM":
        result.c_n = torch.stack([s[1] for s in finals])  # (L*D, B, H)
        result.torch_h_n, result.torch_c_n = torch_state
    else:
        result.torch_h_n = torch_state
    return result


# ---- text -----------------------------------------------------------------------------------


def _shape(t: Tensor) -> str:
    return "(" + ", ".join(map(str, t.shape)) + (",)" if t.dim() == 1 else ")")


def _numbers(t: Tensor) -> str:
    rows = t.reshape(-1, t.shape[-1]) if t.dim() > 1 else t[None]
    return " / ".join("[" + " ".join(f"{v:+.4f}" for v in row.tolist()) + "]" for row in rows)


def _name(config: Config, layer: int, direction: int) -> str:
    label = f"layer {layer}"
    return label + (f" {DIRECTION_NAMES[direction]}" if config.bidirectional else "")


def _reads(config: Config, layer: int, t: int) -> str:
    if layer == 0:
        return f"input[:, {t}]"
    if config.bidirectional:
        return f"layer {layer - 1}'s output at t={t} = [forward h'_{t} | reverse h'_{t}]"
    return f"layer {layer - 1}'s h'_{t}"


def render(result: Trace, values: bool = False) -> str:
    """The whole explanation as text (one string, lines separated by newlines)."""
    config = result.config
    D, L, T = config.directions, config.layers, config.steps
    eqs = equations(config.mode, projection=bool(config.proj_size))
    lines = [
        f"{torch_module(config)}  (float32, batch_first=True, hx=None: zero initial state)",
        f"input: {_shape(result.inputs)} = (B, T, I): B={config.batch} sequence(s) of T={T} "
        f"steps, I={config.input_size} features each",
    ]
    if values:
        lines += [f"  input[:, {t}] = {_numbers(result.inputs[:, t])}" for t in range(T)]
    lines += ["", f"The {config.mode} cell (unrolled/cells.py, one time step):"]
    lines += [f"    {lhs:<3}= {rhs}" for lhs, rhs in eqs]
    legend = "  x: the step's input; h: the state before the step; h': after it."
    if modes.of(config.mode).num_gates > 1:
        legend += " σ is the sigmoid, ⊙ the elementwise product."
    lines.append(legend)
    if values and config.batch > 1:
        lines.append("  Numbers: one [...] per sequence of the batch, separated by /.")
    for layer in range(L):
        for direction in range(D):
            lines += _render_layer_direction(result, layer, direction, eqs, values)
    lines += _render_assembly(result, values)
    return "\n".join(lines)


def _render_layer_direction(result, layer, direction, eqs, values) -> list[str]:
    config = result.config
    T = config.steps
    steps = result.of(layer, direction)
    order = "t = 0, 1, ..., T-1" if not direction else "t = T-1, ..., 1, 0 (backwards in time)"
    lines = ["", f"== {_name(config, layer, direction)}: reads {order} " + "=" * 20]
    sources = weight_sources(config, layer, direction)
    used = dict.fromkeys(s for _, rhs in eqs for s in symbols(rhs) if s in sources)
    by_rows: dict[tuple, list[str]] = {}  # one line per gate: the symbols that share rows
    for symbol in used:
        name, rows = sources[symbol]
        by_rows.setdefault((rows.start, rows.stop, name.startswith("weight_hr")), []).append(symbol)
    for group in by_rows.values():
        parts = []
        for symbol in group:
            name, rows = sources[symbol]
            where = name if rows == slice(None) else f"{name}[{rows.start}:{rows.stop}]"
            parts.append(f"{symbol} = {where} {_shape(result.weights[name][rows])}")
        lines.append("  " + ",  ".join(parts))
    first = steps[0]
    shapes = {"x": first.x, "h": first.state_in[0], **first.values}
    if config.mode == "LSTM":
        shapes["c"] = first.state_in[1]
    shapes.update({s: result.weights[sources[s][0]][sources[s][1]] for s in used})
    block = []
    for lhs, rhs in eqs:
        operands = "  ".join(f"{s} {_shape(shapes[s])}" for s in symbols(rhs))
        block.append(f"    {lhs:<3}= {rhs}")
        block.append(f"         {operands}  ->  {lhs} {_shape(shapes[lhs])}")
    if direction == 1:
        lines.append("  shapes: as in the forward direction above")
    else:
        lines.append("  shapes (W x means x @ W.T: each row of x is one sequence of the batch):")
        lines += block
    row = layer * config.directions + direction
    for step in steps:
        before = (
            f"h_0[{row}] (zeros)"
            if step.order == 0
            else f"h' of t={step.t + (1 if direction else -1)}"
        )
        lines.append(
            f"  step {step.order + 1}/{T}: t={step.t}, x = {_reads(config, layer, step.t)}, "
            f"h = {before}"
        )  # fmt: skip
        if values:
            lines.append(f"      x   = {_numbers(step.x)}")
            lines.append(f"      h   = {_numbers(step.state_in[0])}")
            if config.mode == "LSTM":
                lines.append(f"      c   = {_numbers(step.state_in[1])}")
            for lhs, _ in eqs:
                lines.append(f"      {lhs:<3} = {_numbers(step.values[lhs])}")
    last = steps[-1]
    lines.append(
        f"  -> its h' at each t fills {_slot(config, layer, direction)}; its state after its "
        f"last step (t={last.t}) is h_n[{row}]"
        + (f" and c_n[{row}]" if config.mode == "LSTM" else "")
    )
    return lines


def _slot(config: Config, layer: int, direction: int) -> str:
    P = config.out_size
    columns = f"{direction * P}:{(direction + 1) * P}"
    where = (
        "output"
        if layer == config.layers - 1
        else f"layer {layer}'s output (layer {layer + 1}'s input)"
    )
    return f"{where}[:, t, {columns}]"


def _render_assembly(result: Trace, values: bool) -> list[str]:
    config = result.config
    D, L, T, P = config.directions, config.layers, config.steps, config.out_size
    last = L - 1
    lines = ["", "== where the results come from " + "=" * 40]
    lines.append(
        f"output {_shape(result.output)} = (B, T, D*P) with P={P} "
        f"({'the projection size' if config.proj_size else 'P = H'}) holds the LAST layer's "
        "h' at every t:"
    )
    for direction in range(D):
        columns = f"{direction * P}:{(direction + 1) * P}"
        seen = "x_0 .. x_t" if not direction else f"x_t .. x_{T - 1}"
        lines.append(
            f"  output[:, t, {columns}] = {_name(config, last, direction)}'s h' after reading t "
            f"(it has seen {seen})"
        )
    if values:
        for t in range(T):
            lines.append(f"  output[:, {t}] = {_numbers(result.output[:, t])}")
    lines.append(f"h_n {_shape(result.h_n)} = (L*D, B, P): row l*D + d is layer l, direction d, "
                 "after ITS last step:")  # fmt: skip
    for layer in range(L):
        for direction in range(D):
            row = layer * D + direction
            t_last = 0 if direction else T - 1
            text = (
                f"  h_n[{row}] = {_name(config, layer, direction)}, state after reading t={t_last}"
            )
            if layer == last:
                columns = f"{direction * P}:{(direction + 1) * P}"
                same = torch.equal(
                    result.h_n[row], result.output[:, t_last, direction * P : (direction + 1) * P]
                )
                text += f"  = output[:, {t_last}, {columns}]" + (
                    " (equal)" if same else " (DIFFERENT!)"
                )
            if direction:
                text += f"  <- not output[:, {T - 1}, ...]: the reverse direction ENDS at t=0"
            lines.append(text)
            if values:
                lines.append(f"           {_numbers(result.h_n[row])}")
    if D == 2 and T > 1:
        wrong = result.output[:, T - 1, P:]
        gap = compare.largest_difference(wrong, result.h_n[(L - 1) * D + 1])
        lines.append(
            f"  (the common mistake, output[:, -1, {P}:], differs from h_n[{(L - 1) * D + 1}] "
            f"by up to {gap:.3f})"
        )
    if result.c_n is not None:
        lines.append(
            f"c_n {_shape(result.c_n)} = (L*D, B, H): the cell states c', same rows as h_n."
        )
    lines.append("")
    difference = result.max_difference
    verdict = "PASS" if result.passed else "FAIL"
    lines.append(
        f"the values above vs unrolled.cells.{config.mode.lower()}'s step "
        f"(what the cell modules run):"
        f" max |difference| = {result.cell_difference:.1e}"
    )
    lines.append(
        f"assembled output, h_n{', c_n' if result.c_n is not None else ''} vs torch.nn."
        f"{type(torch_module(config)).__name__}: max |difference| = {difference:.1e}  {verdict}"
    )
    return lines
