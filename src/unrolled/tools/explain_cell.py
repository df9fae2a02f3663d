"""``unrolled explain --cell MODULE:CLASS``: what runs a custom cell, and the graphs it runs.

For a cell class (an :class:`unrolled.Cell` built as ``CLASS(input_size, hidden_size)``) in an
:class:`unrolled.Recurrent`: the plan (captured step or plain loop, and why), the captured
forward and backward graphs of one step as ATen ops (which run once per call, which once per
step, what the forward keeps for the backward), and a check of the captured loop against the
plain one: outputs bit for bit, every gradient to rounding (PASS/FAIL).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable

import torch

import unrolled
from unrolled import captured
from unrolled.tools.explain import Config


def load_cell_class(spec: str) -> type:
    """``"package.module:Class"`` (or ``"Class"`` for one of unrolled's own cells) -> the class;
    a ``SystemExit`` with the reason when it cannot be found or is not a Cell."""
    module_name, _, name = spec.rpartition(":")
    if os.getcwd() not in sys.path:  # a module of the current folder, as `python -m` finds it
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name or "unrolled")
        cell_class = getattr(module, name)
    except (ImportError, AttributeError) as error:
        message = (
            f"unrolled explain --cell: cannot load {spec!r} ({error}); expected MODULE:CLASS, "
            "e.g. mypackage.cells:MyGRU, or one of unrolled's: IndRNN"
        )
        raise SystemExit(message) from None
    if not (isinstance(cell_class, type) and issubclass(cell_class, unrolled.Cell)):
        raise SystemExit(f"unrolled explain --cell: {spec} is not an unrolled.Cell subclass")
    return cell_class


def build(cell_class: type, config: Config, capture: bool) -> unrolled.Recurrent:
    torch.manual_seed(config.seed)
    model = unrolled.Recurrent(
        lambda size: cell_class(size, config.hidden_size), config.input_size,
        num_layers=config.layers, bidirectional=config.bidirectional,
    )  # fmt: skip
    for cell in model.cells:
        cell.capture = capture
    return model


def describe_graph(graph: torch.fx.GraphModule, title: str, hoisted: Callable) -> list[str]:
    """One line per ATen op of ``graph``: ``name = op(arguments)``, marked where it is hoisted."""
    lines = [title]
    for node in graph.graph.nodes:
        if node.op == "placeholder":
            continue
        if node.op == "output":
            results = ", ".join("None" if a is None else a.name for a in node.args[0])
            lines.append(f"    return {results}")
            continue
        arguments = ", ".join(_argument(a) for a in node.args)
        target = getattr(node.target, "__name__", str(node.target))
        once = "   # once per call: reads parameters only" if hoisted(node) else ""
        lines.append(f"    {node.name} = {target}({arguments}){once}")
    return lines


def _argument(value) -> str:
    if isinstance(value, torch.fx.Node):
        return value.name
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_argument(v) for v in value) + "]"
    return repr(value)


def compare(cell_class: type, config: Config) -> tuple[bool, float, bool]:
    """Run the captured and the plain loop on the same input: ``(outputs equal bit for bit,
    max |gradient difference| relative to the largest gradient, passed)``."""
    x = torch.randn(config.steps, config.batch, config.input_size, generator=_generator(config))
    results = []
    for capture in (True, False):
        model = build(cell_class, config, capture)
        leaf = x.clone().requires_grad_()
        output, final = model(leaf)
        finals = final if isinstance(final, tuple) else (final,)
        loss = output.square().sum() + sum(f.square().sum() for f in finals)
        grads = torch.autograd.grad(loss, [leaf, *model.parameters()], allow_unused=True)
        results.append(([output, *finals], grads))
    (outs_a, grads_a), (outs_b, grads_b) = results
    equal = all(torch.equal(a, b) for a, b in zip(outs_a, outs_b))
    scale = max((g.abs().max().item() for g in grads_b if g is not None), default=1.0) or 1.0
    worst = max(((a - b).abs().max().item() for a, b in zip(grads_a, grads_b)
                 if a is not None and b is not None), default=0.0)  # fmt: skip
    return equal, worst / scale, equal and worst / scale < 1e-5


def _generator(config: Config) -> torch.Generator:
    return torch.Generator().manual_seed(config.seed + 1)


def render(cell_class: type, config: Config) -> tuple[str, bool]:
    """The text of ``unrolled explain --cell``, and whether the check passed. ``config``: the
    network's sizes (its ``mode`` and ``proj_size`` are the built-in layers' and unused here)."""
    model = build(cell_class, config, capture=True)
    x = torch.randn(config.steps, config.batch, config.input_size, generator=_generator(config))
    plan = unrolled.plan(model, x)
    name = cell_class.__name__
    lines = [
        f"unrolled.Recurrent({name}, input_size={config.input_size}, hidden_size="
        f"{config.hidden_size}, num_layers={config.layers}, bidirectional={config.bidirectional})"
        f" on x of shape (T, B, I) = {tuple(x.shape)}",
        f"plan: {plan}",
    ]
    cell = model.cells[0]
    if hasattr(cell, "scan"):
        lines.append(f"{name} runs its own whole-sequence loop ({name}.scan), not step() by step")
        return "\n".join(lines), True
    with torch.no_grad():
        input_part = cell.project(x)  # (T, B, *)
    state = cell.init_state(config.batch, dtype=x.dtype, device=x.device)
    made = captured.captured_for(cell, input_part, state, None)
    if isinstance(made, str):
        lines.append(f"{name}.step() is not captured: {made}; each step runs from Python, "
                     "autograd records it")  # fmt: skip
        return "\n".join(lines), True
    hoisted = captured.hoisted_nodes(made.forward, made.num_params)
    ops = [n for n in made.forward.graph.nodes if n.op == "call_function"]
    backward_ops = [n for n in made.backward.graph.nodes if n.op == "call_function"]
    lines += [
        "",
        f"{name}.step() captured: the forward graph has {len(ops)} nodes ({len(hoisted)} run "
        f"once per call), and keeps {made.num_saved} tensors per step for the backward graph "
        f"({len(backward_ops)} nodes). Inputs: the cell's {made.num_params} parameters and "
        f"buffers, x_t, the state's {made.num_state} tensor(s) and the mask of running sequences "
        "(None without lengths).",
        "",
        *describe_graph(
            made.forward,
            "forward of one step (returns output_t, the new state, then what the backward keeps):",
            hoisted.__contains__,
        ),  # fmt: skip
        "",
        *describe_graph(
            made.backward,
            "backward of one step (returns the gradients of the parameters, x_t, the state):",
            lambda node: False,
        ),  # fmt: skip
    ]
    equal, worst, passed = compare(cell_class, config)
    lines += [
        "",
        f"captured loop vs plain loop: outputs and final state equal bit for bit: "
        f"{'yes' if equal else 'NO'}; max |gradient difference| / max |gradient| = {worst:.1e}  "
        f"{'PASS' if passed else 'FAIL'}",
    ]
    return "\n".join(lines), passed
