r"""A custom cell's ``step`` at speed: captured once as ATen graphs, run by a C++ time loop.

Run step by step from Python, a user's :class:`~unrolled.Cell` pays for every op of every step
three times: Python's dispatch of the op, autograd recording it, and autograd's engine walking
it back. None of that depends on the numbers, so it can be paid once. The first call of a cell
with a given input shape, dtype and mode *captures* its step:

1. ``torch.func.functional_call`` makes the step a function of its parameters and buffers
   ``(params, x_t, state leaves[, running]) -> (output_t, new state leaves)``; with ``lengths``
   it also freezes finished sequences exactly as :func:`unrolled.scan.scan` does (``where``);
2. AOTAutograd traces it with example tensors into two ATen graphs: the **forward**, which also
   returns the tensors the backward will need ("saved"), and the **backward** of one step,
   ``(saved, d_output_t, d_new_state) -> (d_params, d_x_t, d_state)``;
3. each graph becomes a list of instructions for the native loop (``fast/native/captured.cpp``):
   one dispatcher call per ATen op, with arguments that are slots or constants. Ops that read
   only parameters (a weight's transpose, a weight norm) run once per call, not once per step.

The native loop runs the forward graph ``T`` times and keeps each step's saved tensors; its
backward runs the backward graph ``T`` times in the opposite order and sums the parameters'
gradients. Where the native ops are not built, the same graphs run step by step from Python
(:class:`PythonLoop`): slower, the same numbers.

The graphs call the very kernels eager mode calls, in the same order, so the forward is bit for
bit the uncaptured loop's; the capture is checked on its example before it is used (outputs
equal bit for bit, gradients to rounding) and is not used when it differs. Steps that cannot be
captured, or where the capture would be wrong, run today's loop (:func:`unrolled.scan.scan`,
differentiated by autograd), and :func:`unrolled.plan` says why: random ops or Python state that
changes between calls (the check catches a step that draws random numbers), data-dependent
Python control flow, in-place updates, a step under ``torch.func`` transforms, autocast, or
a graph capture such as ``torch.compile`` (which then sees the plain loop). A second-order
backward (``create_graph=True``) differentiates the plain loop instead, which autograd can
differentiate again.

A capture is kept per cell, per shapes, dtypes and device of its inputs, and per
``cell.training``. A cell whose step reads Python attributes that change between calls should
set ``capture = False`` (class or instance attribute) to always run the plain loop.
"""

from __future__ import annotations

import operator
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from .fast import native
from .fast.layer import differentiate_the_reference, transforms_active
from .precision import autocast_enabled
from .scan import State, scan, step_result_error, valid_steps

NATIVE_LOOP, PYTHON_LOOP, PLAIN_LOOP = "captured step (C++ loop)", "captured step (Python loop)", ""


class CaptureFailed(Exception):
    """Why a step cannot be captured (the plan's reason)."""


# ---- what a capture is -------------------------------------------------------------------------


@dataclass
class Capture:
    """One cell's step, captured for one input signature.

    ``forward``: ``(params..., x_t, state leaves..., [running]) -> (output_t, new leaves...,
    saved...)``; ``backward``: ``(saved..., d_output_t, d_new leaves...) -> (d_params..., d_x_t,
    d_leaves..., [None])``, both ``torch.fx.GraphModule`` s of ATen ops."""

    forward: torch.fx.GraphModule
    backward: torch.fx.GraphModule
    num_params: int
    num_state: int
    num_saved: int
    masked: bool
    native: Any = None  # torch.classes.unrolled.CapturedStep, made on first use


class _Step(nn.Module):
    """``cell.step`` as a module's forward, so that ``functional_call`` can swap its tensors."""

    def __init__(self, cell: nn.Module):
        super().__init__()
        self.cell = cell

    def forward(self, x_t: Tensor, state: State):
        return self.cell.step(x_t, state)


def cell_tensors(cell: nn.Module) -> tuple[list[str], list[Tensor]]:
    """The names (as seen from :class:`_Step`) and tensors of the cell's parameters and buffers,
    the captured graphs' first inputs, in a fixed order."""
    named = [*cell.named_parameters(), *cell.named_buffers()]
    return [f"cell.{name}" for name, _ in named], [t for _, t in named]


def step_function(cell: nn.Module, spec: pytree.TreeSpec):
    """``(tensors, x_t, leaves, running) -> [output_t, *new_leaves]``: the cell's step as a
    function of its tensors and of the state's leaves, freezing finished sequences (``running
    (B, 1)``, or None) as :func:`unrolled.scan.scan` does, with the same ops."""
    wrapper = _Step(cell)
    names, _ = cell_tensors(cell)

    def step(tensors, x_t, leaves, running):
        state = pytree.tree_unflatten(list(leaves), spec)
        result = torch.func.functional_call(wrapper, dict(zip(names, tensors)), (x_t, state))
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            raise step_result_error(cell.step, result)
        output, new_state = result
        new_leaves, new_spec = pytree.tree_flatten(new_state)
        if new_spec != spec:
            raise CaptureFailed(f"step() returned a state shaped {new_spec}, not {spec}")
        if running is not None:
            new_leaves = [torch.where(running, n, o) for n, o in zip(new_leaves, leaves)]
            output = torch.where(running, output, torch.zeros_like(output))
        return [output, *new_leaves]

    return step


# ---- capturing ---------------------------------------------------------------------------------


def capture(cell: nn.Module, x_t: Tensor, state: State, running: Tensor | None) -> Capture:
    """Trace ``cell``'s step on these example inputs into a forward and a backward graph and
    check them on the example; raises :class:`CaptureFailed` with the reason it cannot."""

    leaves, spec = pytree.tree_flatten(state)
    if not all(isinstance(leaf, Tensor) and leaf.is_floating_point() for leaf in leaves):
        raise CaptureFailed("the state is not made of floating-point tensors")
    if not x_t.is_floating_point():
        raise CaptureFailed(f"project() returned {x_t.dtype}, not floating-point")
    with torch.inference_mode(False):  # examples that autograd may record
        _, tensors = cell_tensors(cell)
        example = [t.detach().clone().requires_grad_(t.requires_grad) for t in tensors]
        x_example = x_t.detach().clone().requires_grad_()
        leaf_examples = [leaf.detach().clone().requires_grad_() for leaf in leaves]
        running = None if running is None else running.clone()
        return trace(cell, spec, example, x_example, leaf_examples, running)


def trace(cell: nn.Module, spec, example, x_example, leaf_examples, running) -> Capture:
    """:func:`capture` on example tensors of its own."""
    from functorch.compile import aot_function, default_partition, make_boxed_func

    step = step_function(cell, spec)
    graphs: dict[str, torch.fx.GraphModule] = {}

    def keep(name):
        def compiler(graph_module, example_inputs):
            graphs[name] = graph_module
            return make_boxed_func(graph_module.forward)

        return compiler

    traced = aot_function(
        step, fw_compiler=keep("forward"), bw_compiler=keep("backward"),
        partition_fn=default_partition,
    )  # fmt: skip
    try:
        with torch.enable_grad():
            outputs = traced(example, x_example, leaf_examples, running)
            if not all(o.requires_grad for o in outputs):
                raise CaptureFailed("an output of step() does not depend on its inputs")
            wanted = [t for t in (*example, x_example, *leaf_examples) if t.requires_grad]
            torch.autograd.grad(
                outputs, wanted, [torch.ones_like(o) for o in outputs], allow_unused=True
            )
    except CaptureFailed:
        raise
    except Exception as error:  # noqa: BLE001 - any tracing failure means: run the plain loop
        raise CaptureFailed(f"tracing step() failed: {type(error).__name__}: {error}") from None
    forward, backward = graphs["forward"], graphs["backward"]
    num_saved = check_layout(forward, backward, len(example), len(leaf_examples), running)
    made = Capture(forward, backward, len(example), len(leaf_examples), num_saved,
                   running is not None)  # fmt: skip
    check_against_the_step(made, step, example, x_example, leaf_examples, running)
    return made


def check_layout(forward: torch.fx.GraphModule, backward: torch.fx.GraphModule,
                 num_params: int, num_state: int, running: Tensor | None) -> int:  # fmt: skip
    """The number of tensors the forward graph saves for the backward graph, after checking
    that the graphs have the layout the loops read (AOTAutograd may lay out aliased or mutated
    outputs otherwise)."""
    forward_inputs = placeholders(forward)
    expected = num_params + 1 + num_state + 1  # running: a tensor, or None
    if running is None and len(forward_inputs) == expected - 1:  # a torch that drops the None
        expected -= 1
    backward_inputs = placeholders(backward)
    tangents = [n for n in backward_inputs if n.name.startswith("tangents")]
    num_saved = len(backward_inputs) - len(tangents)
    if (len(forward_inputs) != expected or len(tangents) != 1 + num_state
            or len(outputs_of(forward)) != 1 + num_state + num_saved
            or len(outputs_of(backward)) < num_params + 1 + num_state):  # fmt: skip
        raise CaptureFailed(
            "the traced graphs alias or mutate the step's inputs or outputs (e.g. a state "
            "returned unchanged, or an in-place update)"
        )
    for graph in (forward, backward):
        for node in graph.graph.nodes:
            if node.op in ("placeholder", "output"):
                continue
            if node.op != "call_function" or not (
                node.target is operator.getitem or isinstance(node.target, torch._ops.OpOverload)
            ):
                raise CaptureFailed(f"the step's graph has a {node.op} {node.target}")
            if node.target is not operator.getitem and node.target._schema.is_mutable:
                raise CaptureFailed(f"the step updates a tensor in place ({node.target})")
    return num_saved


#: How close the captured backward's gradients must be to autograd's on the example (they are
#: the same ops, summed in another order).
TOLERANCES = {
    torch.float64: {"rtol": 1e-9, "atol": 1e-12},
    torch.float16: {"rtol": 1e-2, "atol": 1e-3},
    torch.bfloat16: {"rtol": 3e-2, "atol": 1e-2},
    None: {"rtol": 1e-4, "atol": 1e-5},
}


def placeholders(graph: torch.fx.GraphModule) -> list[torch.fx.Node]:
    return [node for node in graph.graph.nodes if node.op == "placeholder"]


def outputs_of(graph: torch.fx.GraphModule) -> list:
    return list(next(n for n in graph.graph.nodes if n.op == "output").args[0])


def check_against_the_step(made: Capture, step, tensors, x_t, leaves, running) -> None:
    """Run one step both ways on the example: the captured forward must give the step's outputs
    bit for bit, its backward the gradients autograd gives (to rounding). Catches what tracing
    cannot see, such as random numbers drawn in ``step``."""
    with torch.enable_grad():
        eager = step(tensors, x_t, leaves, running)
        wanted = [t for t in (*tensors, x_t, *leaves) if t.requires_grad]
        ones = [torch.ones_like(o) for o in eager]
        eager_grads = torch.autograd.grad(eager, wanted, ones, allow_unused=True)
    loop = runner_for(made)
    with torch.no_grad():
        xp = x_t.detach()[None]  # (1, B, *)
        valid = None if running is None else running[None]  # (1, B, 1)
        plain = [t.detach() for t in tensors]
        tape, results = loop.forward(
            xp, [leaf.detach() for leaf in leaves], plain, valid, False, True
        )
        if not all(torch.equal(a, b) for a, b in zip(results, [eager[0][None], *eager[1:]])):
            raise CaptureFailed(
                "the captured step does not reproduce step() bit for bit on an example (random "
                "numbers or Python state read inside step()?)"
            )
        grads = loop.backward(tape, ones[0][None], ones[1:], xp, True)
    d_xp, d_leaves, d_tensors = (
        grads[0][0],
        grads[1 : 1 + made.num_state],
        grads[1 + made.num_state :],
    )
    captured = [g for g, t in zip([*d_tensors, d_xp, *d_leaves], [*tensors, x_t, *leaves])
                if t.requires_grad]  # fmt: skip
    for mine, theirs in zip(captured, eager_grads):
        if mine is None and theirs is None:
            continue
        mine = torch.zeros_like(theirs) if mine is None else mine
        theirs = torch.zeros_like(mine) if theirs is None else theirs
        if not torch.allclose(mine, theirs, **TOLERANCES.get(mine.dtype, TOLERANCES[None])):
            raise CaptureFailed("the captured backward disagrees with autograd on an example")


# ---- running: the native loop or the same graphs from Python -----------------------------------


class PythonLoop:
    """The loops of ``captured.cpp`` in Python, calling the graphs step by step: the fallback
    where the native ops are not built, and their specification."""

    def __init__(self, made: Capture):
        self.made = made
        # Whether the forward graph has a placeholder for an absent mask.
        self.takes_none = len(placeholders(made.forward)) > made.num_params + 1 + made.num_state

    def forward(self, xp, leaves, tensors, valid, reverse: bool, keep: bool):
        """``xp (T, B, *)`` -> ``(tape, [output (T, B, O), *final leaves])``."""
        made, num_steps = self.made, xp.size(0)
        outputs: list[Tensor | None] = [None] * num_steps
        saved = []
        for s in range(num_steps):
            t = num_steps - 1 - s if reverse else s
            extra = (valid[t],) if valid is not None else (None,) * self.takes_none  # (B, 1)
            results = made.forward(*tensors, xp[t], *leaves, *extra)
            outputs[t], leaves = results[0], list(results[1 : 1 + made.num_state])
            if keep:
                saved.append(results[1 + made.num_state :])
        return (saved, reverse), [torch.stack(outputs), *leaves]  # (T, B, O)

    def backward(self, tape, d_output, d_leaves, xp, release: bool):
        """-> ``[d_xp (T, B, *), *d_initial_leaves, *d_tensors]`` (None: no gradient)."""
        (saved, reverse), made = tape, self.made
        num_steps = len(saved)
        d_xp: list[Tensor | None] = [None] * num_steps
        d_tensors: list[Tensor | None] = [None] * made.num_params
        d_leaves = list(d_leaves)
        for s in range(num_steps - 1, -1, -1):
            t = num_steps - 1 - s if reverse else s
            grads = made.backward(*saved[s], d_output[t], *d_leaves)
            for p, d in enumerate(grads[: made.num_params]):
                if d is not None:
                    d_tensors[p] = d.clone() if d_tensors[p] is None else d_tensors[p].add_(d)
            d = grads[made.num_params]
            d_xp[t] = torch.zeros_like(xp[t]) if d is None else d
            rest = grads[made.num_params + 1 : made.num_params + 1 + made.num_state]
            d_leaves = [torch.zeros_like(o) if d is None else d for d, o in zip(rest, d_leaves)]
            if release:
                saved[s] = None
        return [torch.stack(d_xp), *d_leaves, *d_tensors]


class NativeLoop:
    """The loops of ``captured.cpp``, on the instructions :func:`describe` wrote."""

    def __init__(self, made: Capture):
        if made.native is None:
            made.native = describe(made)
        self.step = made.native

    def forward(self, xp, leaves, tensors, valid, reverse: bool, keep: bool):
        tape = torch.classes.unrolled.Tape()
        return tape, self.step.forward(tape, xp, list(leaves), list(tensors), valid, reverse, keep)

    def backward(self, tape, d_output, d_leaves, xp, release: bool):
        return list(self.step.backward(tape, d_output, list(d_leaves), xp, release))


def runner_for(made: Capture):
    """The native loop where the native ops are built and not disabled, else the Python one."""
    if not native.is_disabled() and native.ops() is not None:
        return NativeLoop(made)
    return PythonLoop(made)


# ---- the graphs as native instructions ---------------------------------------------------------

_ALIASES = {torch.ops.aten.detach.default, torch.ops.aten.alias.default}


def describe(made: Capture):
    """A ``torch.classes.unrolled.CapturedStep`` holding both graphs as instructions."""
    step = torch.classes.unrolled.CapturedStep(
        made.num_params, made.num_state, made.num_saved, made.masked
    )  # fmt: skip
    describe_graph(step, 0, made.forward, invariant_inputs=made.num_params)
    describe_graph(step, 1, made.backward, invariant_inputs=0)
    return step


def hoisted_nodes(graph: torch.fx.GraphModule, invariant_inputs: int) -> set[torch.fx.Node]:
    """The ops of ``graph`` that read only its first ``invariant_inputs`` inputs (the
    parameters), directly or through each other: the loop runs them once per call, in its
    prologue, not once per step (what ``unrolled explain --cell`` marks, too)."""
    inputs = placeholders(graph)
    invariant = set(inputs[:invariant_inputs])
    for node in graph.graph.nodes:
        if (
            node.op == "call_function"
            and node.all_input_nodes
            and all(source in invariant for source in node.all_input_nodes)
        ):
            invariant.add(node)
    return invariant - set(inputs)


def describe_graph(step, which: int, graph: torch.fx.GraphModule, invariant_inputs: int) -> None:
    """Write ``graph`` into ``step`` (``which``: 0 forward, 1 backward). Nodes that read only
    the first ``invariant_inputs`` inputs (the parameters) go to the prologue."""
    slots: dict[torch.fx.Node, Any] = {}  # node -> slot, or list of slots for a Tensor[] result
    hoisted = hoisted_nodes(graph, invariant_inputs)
    inputs = placeholders(graph)
    for index, node in enumerate(inputs):
        slots[node] = index
    next_slot = len(inputs)
    for node in graph.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target is operator.getitem or node.target in _ALIASES:
            # An element of a node's results, or a no-op for the loop (the same tensor).
            source = node.args[0]
            slots[node] = slots[source][node.args[1]] if node.target is operator.getitem else (
                slots[source])  # fmt: skip
            continue
        in_prologue = node in hoisted
        schema = node.target._schema
        step.begin(which, schema.name, schema.overload_name, in_prologue)
        for argument, value in zip(schema.arguments, arguments_of(node, schema)):
            write_argument(step, which, argument, value, slots)
        outs, counts, results = [], [], []
        for returned in schema.returns:
            if isinstance(returned.type, torch._C.ListType):  # Tensor[]: one slot per element
                count = len(node.meta["val"])
                results.append(list(range(next_slot, next_slot + count)))
                counts.append(count)
            else:
                results.append(next_slot)
                counts.append(-1)
                count = 1
            outs += list(range(next_slot, next_slot + count))
            next_slot += count
        slots[node] = results[0] if len(results) == 1 else results
        step.end(which, outs, counts)
    step.graph(which, len(inputs), next_slot)
    step.returns(which, [-1 if o is None else slots[o] for o in outputs_of(graph)])


def arguments_of(node: torch.fx.Node, schema) -> list:
    """The node's arguments in the schema's order, defaults filled in."""
    values = []
    for index, argument in enumerate(schema.arguments):
        if index < len(node.args):
            values.append(node.args[index])
        elif argument.name in node.kwargs:
            values.append(node.kwargs[argument.name])
        elif argument.has_default_value():
            values.append(argument.default_value)
        else:
            raise CaptureFailed(f"{schema.name}: no value for argument {argument.name}")
    return values


def write_argument(step, which: int, argument, value, slots) -> None:
    """One argument: a slot, a list of slots, or a constant of a type the loop knows."""
    if isinstance(value, torch.fx.Node):
        step.slot(which, slots[value])
    elif isinstance(value, (list, tuple)) and any(isinstance(v, torch.fx.Node) for v in value):
        optional = "Optional" in str(argument.type) or "?" in str(argument.type)
        step.slots(which, [-1 if v is None else slots[v] for v in value], optional)
    elif value is None:
        step.constant_none(which)
    elif isinstance(argument.type, torch._C.TensorType) and isinstance(value, (int, float)):
        if isinstance(value, bool) or (isinstance(value, int) and abs(value) >= 2**53):
            raise CaptureFailed(f"a constant the loop cannot pass: {argument.name}={value!r}")
        step.constant_number(which, float(value), isinstance(value, int))
    elif isinstance(value, bool):
        step.constant_bool(which, value)
    elif isinstance(value, int):
        step.constant_int(which, value)
    elif isinstance(value, float):
        step.constant_float(which, value)
    elif isinstance(value, torch.dtype):
        step.constant_dtype(which, value)
    elif isinstance(value, torch.layout):
        step.constant_layout(which, value)
    elif isinstance(value, torch.device):
        step.constant_device(which, value)
    elif isinstance(value, torch.memory_format):
        step.constant_memory_format(which, value)
    elif isinstance(value, (list, tuple)) and value and all(isinstance(v, bool) for v in value):
        step.constant_bools(which, [int(v) for v in value])
    elif isinstance(value, (list, tuple)) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        step.constant_ints(which, list(value))
    else:
        raise CaptureFailed(f"a constant the loop cannot pass: {argument.name}={value!r}")


# ---- per cell: the cache, the decision, the autograd Function ----------------------------------

_CAPTURES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCK = threading.RLock()  # re-entrant: a step may itself run a Recurrent


def _signature(tensors, x_t: Tensor, leaves, masked: bool, training: bool) -> tuple:
    described = tuple((tuple(t.shape), t.dtype, t.device, t.requires_grad) for t in tensors)
    state = tuple((tuple(leaf.shape), leaf.dtype, leaf.device) for leaf in leaves)
    return described, tuple(x_t.shape), x_t.dtype, x_t.device, state, masked, training


def why_not(cell: nn.Module, inputs: Tensor) -> str:
    """Why this call of ``cell`` must run the plain loop, before trying a capture ("" when
    nothing stands in the way)."""
    from .backends import graph_capture

    if not getattr(cell, "capture", True):
        return f"{type(cell).__name__}.capture is False"
    if transforms_active():
        return "a torch.func transform is running"
    if any(autocast_enabled(kind) for kind in ("cpu", "cuda")):
        return "autocast is on"
    captured_by = graph_capture()
    if captured_by:
        return f"{captured_by}: it traces the plain loop"
    if type(inputs) not in (Tensor, nn.Parameter):  # FakeTensor, functional tensors, ...
        return f"the input is a {type(inputs).__name__}, not a plain Tensor"
    return ""


def captured_for(cell: nn.Module, input_part: Tensor, state: State, lengths) -> Capture | str:
    """The cell's capture for these inputs (made on the first call), or why there is none."""
    reason = why_not(cell, input_part)
    if reason:
        return reason
    leaves, _ = pytree.tree_flatten(state)
    _, tensors = cell_tensors(cell)
    masked = lengths is not None
    key = _signature(tensors, input_part[0], leaves, masked, cell.training)
    with _LOCK:
        known = _CAPTURES.setdefault(cell, {})
        if key not in known:
            running = None if lengths is None else valid_steps(lengths, 1)[0]  # (B, 1)
            try:
                known[key] = capture(cell, input_part[0], state, running)
            except CaptureFailed as failed:
                known[key] = str(failed)
            except Exception as error:  # noqa: BLE001 - never worse than the plain loop
                known[key] = f"capturing step() failed: {type(error).__name__}: {error}"
        return known[key]


def runner_name(cell: nn.Module, input_part: Tensor, state: State, lengths) -> tuple[str, str]:
    """``(runner, reason)`` for :func:`unrolled.plan`: which loop runs this cell, and why."""
    made = captured_for(cell, input_part, state, lengths)
    if isinstance(made, str):
        return PLAIN_LOOP, made
    loop = runner_for(made)
    return (NATIVE_LOOP if isinstance(loop, NativeLoop) else PYTHON_LOOP), ""


def run(cell: nn.Module, input_part: Tensor, state: State, *, reverse: bool, lengths):
    """One layer-direction of a ``Recurrent``: the captured step where it can run (same
    contract as :func:`unrolled.scan.scan`), else the plain loop."""
    made = captured_for(cell, input_part, state, lengths)
    if isinstance(made, str):
        return scan(cell.step, input_part, state, reverse=reverse, lengths=lengths)
    leaves, spec = pytree.tree_flatten(state)
    _, tensors = cell_tensors(cell)
    settings = Settings(cell, spec, made, runner_for(made), reverse, lengths)
    output, *final = CapturedScan.apply(settings, len(leaves), input_part, *leaves, *tensors)
    return output, pytree.tree_unflatten(final, spec)


@dataclass
class Settings:
    """What one call of :class:`CapturedScan` runs: the cell and its state's structure (for the
    plain loop of a second-order backward), its capture, the loop, the direction, and each
    sequence's valid steps ``lengths (B,)`` (None: all run to ``T``)."""

    cell: nn.Module
    spec: pytree.TreeSpec
    made: Capture
    loop: Any
    reverse: bool
    lengths: Tensor | None


class CapturedScan(torch.autograd.Function):
    """``(settings, num_state, xp (T, B, *), *leaves, *tensors) -> (output (T, B, O), *final
    leaves)`` with the captured backward (or, for a second-order backward, autograd through
    the plain loop)."""

    @staticmethod
    def forward(ctx, settings: Settings, num_state, xp, *rest):
        leaves, tensors = rest[:num_state], rest[num_state:]
        keep = any(ctx.needs_input_grad)
        lengths = settings.lengths
        valid = None if lengths is None else valid_steps(lengths, xp.size(0))  # (T, B, 1)
        tape, (output, *final) = settings.loop.forward(
            xp, leaves, tensors, valid, settings.reverse, keep
        )
        ctx.cell, ctx.spec, ctx.loop, ctx.tape = settings.cell, settings.spec, settings.loop, tape
        ctx.reverse, ctx.lengths = settings.reverse, lengths
        ctx.num_state, ctx.output_shape = num_state, output.shape
        ctx.save_for_backward(xp, *rest)
        # The user may edit the final state in place; the tape may hold the same tensors.
        return (output, *(f.clone() for f in final))

    @staticmethod
    def backward(ctx, d_output, *d_final):
        xp, *rest = ctx.saved_tensors
        if differentiate_the_reference([d_output, *d_final]):
            return (None, None) + plain_loop_gradients(ctx, xp, rest, d_output, d_final)
        leaves = rest[: ctx.num_state]
        d_output = xp.new_zeros(ctx.output_shape) if d_output is None else d_output
        d_final = [torch.zeros_like(leaf) if d is None else d for d, leaf in zip(d_final, leaves)]
        grads = ctx.loop.backward(ctx.tape, d_output, d_final, xp, native.graph_released())
        return (None, None) + tuple(grads)


def plain_loop_gradients(ctx, xp, rest, d_output, d_final) -> tuple:
    """The backward by autograd through the plain loop, recomputed from the saved inputs: a
    graph of the gradient can be built from it (``create_graph=True``, torch.func)."""
    one_step = step_function(ctx.cell, ctx.spec)
    leaves, tensors = rest[: ctx.num_state], rest[ctx.num_state :]
    with torch.enable_grad():
        inputs = [xp, *leaves, *tensors]
        state = list(leaves)

        def step(x_t, state):
            output, *new = one_step(tensors, x_t, state, None)
            return output, new

        output, final = scan(step, xp, state, reverse=ctx.reverse, lengths=ctx.lengths)
        outs = [output, *final]
        grads = [d_output, *d_final]
        pairs = [(o, g) for o, g in zip(outs, grads) if g is not None]
        wanted = [i for i, t in enumerate(inputs) if t.requires_grad]
        result = torch.autograd.grad(
            [o for o, _ in pairs], [inputs[i] for i in wanted], [g for _, g in pairs],
            create_graph=torch.is_grad_enabled(), allow_unused=True,
        )  # fmt: skip
    full: list[Tensor | None] = [None] * len(inputs)
    for i, g in zip(wanted, result):
        full[i] = g
    return tuple(full)
