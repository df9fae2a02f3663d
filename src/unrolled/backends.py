"""Which code runs a recurrent layer: decided in one place, once per call, with a reason.

Four runners can execute a layer call:

- ``reference``: the readable loop over the cell functions (:mod:`unrolled.reference`),
  differentiated by autograd; the executable specification, and the runner wherever only plain
  torch ops will do: a step the fast loops do not have (recurrent dropout, zoneout), dtypes
  other than float32 and float64, autocast, ``torch.func``
  transforms, per-sample gradients (``ExpandedWeight``);
- ``python loops``: the fast backend (hoisted input part, hand-written BPTT) with its time loops
  in torch ops (:mod:`unrolled.fast.loops`);
- ``native loops``: the same fast backend with its time loops in C++
  (:mod:`unrolled.fast.native`);
- ``graph operator``: under a graph capture (``torch.compile``, ``torch.export``,
  ``torch.jit.trace``), each layer is one ``torch.ops.unrolled.layer`` call
  (:mod:`unrolled.fast.operators`) whose kernel makes the eager plan and runs its loops.

:func:`plan` chooses one for a call, with the speed variants inside it, and says why. The
forward stores the plan in each layer's autograd context and the backward runs the plan's loops
(``plan.loops``) without asking again, so nothing that changes between the two (a build that
finishes, ``native.disabled()`` entered or left in any thread) can make a backward run a loop
its forward did not. :func:`run` executes a plan. ``unrolled.plan(module, input)`` asks the same
question of a module, for users who want to know why a layer is slow.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from . import fast, modes, precision, reference, regularizers, tuning
from .fast import loops as python_loops
from .fast import native, operators
from .fast.layer import transforms_active
from .packed import Sequences
from .weights import LayerWeights

BACKENDS = ("fast", "reference")
REFERENCE, PYTHON_LOOPS, NATIVE_LOOPS = "reference", "python loops", "native loops"
#: Under a graph capture: one ``unrolled::layer`` operator per layer
#: (:mod:`unrolled.fast.operators`), whose kernel makes the eager plan and runs its loops.
OPERATOR = "graph operator"
FAST_DTYPES = (torch.float32, torch.float64)
#: The modes whose fast loops run recurrent dropout and zoneout (without projection).
REGULARIZED_LOOPS = ("LSTM", "GRU")
#: Variants of the native loops, by the number of elements of W_hh (measured: common.h, and
#: benchmarks/README.md): MKL's packed GEMM from 2^20 on (LSTM, float32, full batch); a
#: row-major copy of W_hh^T up to 2^17 for sequences longer than one step.
PACKED_GEMM_FROM = 1 << 20
ROW_MAJOR_UP_TO = 1 << 17


@dataclass(frozen=True)
class Plan:
    """How one call of a layer runs, and why.

    Attributes:
        mode: ``RNN_TANH``, ``RNN_RELU``, ``LSTM`` or ``GRU``.
        runner: ``reference``, ``python loops`` or ``native loops``.
        reason: why this runner, in words.
        loops: the fast runners' time loops, ``torch.ops.unrolled`` or
            :mod:`unrolled.fast.loops` (same names, same buffers); None for the reference.
        packed_gemm: the native LSTM loop multiplies by ``W_hh`` through MKL's packed GEMM.
        row_major: the loops get a row-major copy of ``W_hh^T`` (and ``W_hr^T``) instead of a
            transposed view (faster small GEMMs; not worth it for large weights or one step).
        per_sample: the weights are ``ExpandedWeight``: the reference runs with them told that
            each step's input is batch-first.
        fused: the native loops run the fused engine (``native/engine.h``): the project's own
            vector kernel on ``W_hh`` packed once per call (LSTM: ``[W_ih; W_hh]``, the input
            part computed in the same pass), each step's gate math on the tile it just
            computed, one team of threads for the whole sequence.
        measured: where the runner was chosen by measuring the candidates on this machine
            (:mod:`unrolled.tuning`), their times; else empty.
        deeper: the plan of the layers after the first, where it differs: they read the
            ``D*H`` outputs of the layer below, not the call's input, so they are a shape class
            of their own and are measured as one (:func:`Plan.for_layer`); else None.
    """

    mode: str
    runner: str
    reason: str
    loops: object = field(default=None, compare=False, repr=False)
    packed_gemm: bool = False
    row_major: bool = False
    per_sample: bool = False
    fused: bool = False
    measured: str = ""
    deeper: Plan | None = None

    def for_layer(self, layer: int) -> Plan:
        """The plan layer ``layer`` (0 = the first) of the call runs."""
        return self if layer == 0 or self.deeper is None else self.deeper

    def arrange(self, transposed: Tensor) -> Tensor:
        """A transposed weight view as the plan's loops take it: a row-major copy or the view."""
        return transposed.contiguous() if self.row_major else transposed

    def __str__(self) -> str:
        """e.g. ``LSTM: native loops (C++, AVX512), W_hh by MKL's packed GEMM; reason: ...``."""
        how = self.runner
        if self.runner == NATIVE_LOOPS:
            how += f" (C++, {native.instruction_set()})"
        variants = []
        if self.packed_gemm:
            variants.append("W_hh by MKL's packed GEMM")
        if self.row_major:
            variants.append("row-major W_hh^T")
        if self.fused:
            variants.append(f"fused engine ({native.engine_instruction_set()} kernel)")
        details = "".join(f", {variant}" for variant in variants)
        measured = f"; {self.measured}" if self.measured else ""
        said = f"{self.mode}: {how}{details}; reason: {self.reason}{measured}"
        if self.deeper is not None:  # "LSTM: ...; layers 2 and up: native loops (C++, ...)..."
            said += "; layers 2 and up: " + str(self.deeper).removeprefix(f"{self.mode}: ")
        return said


def plan(
    mode: str,
    inputs: Tensor | Sequences,
    weights: Sequence[LayerWeights],
    *,
    backend: str = "fast",
    lengths: Tensor | None = None,
    custom_step: str = "",
    num_directions: int = 1,
    operator: bool = True,
) -> Plan:
    """Choose the runner for one call of a layer.

    Args:
        mode: ``RNN_TANH | RNN_RELU | LSTM | GRU``.
        inputs: the input sequences (or a time-major tensor ``(T, B, I)``): their dtype,
            device and ``shape`` ``(T, B, I)`` matter.
        weights: the layer's ``L*D`` :class:`~unrolled.weights.LayerWeights` (or plain 5-tuples
            in their order); ``W_hh``'s size chooses variants.
        backend: what the module asks for, ``"fast"`` or ``"reference"``.
        lengths: ``(B,)`` valid steps per sequence, or None (all ``T``).
        custom_step: non-empty when the step has recurrent dropout or zoneout: what it has, for
            the reason. The fast loops run them for :data:`REGULARIZED_LOOPS` without
            projection (not the fused engine, nor a graph operator); else the reference.
        num_directions: ``D``, for the shape class a runner is measured for.
        operator: under a graph capture, the layer may become one operator
            (:data:`OPERATOR`); False inside that operator's own kernel.
    """
    check_backend(backend)

    def chose(runner: str, reason: str, loops=None, packed_gemm=False, row_major=False,
              per_sample=False, fused=False, measured="", deeper=None) -> Plan:  # fmt: skip
        if custom_step and runner in (PYTHON_LOOPS, NATIVE_LOOPS):
            reason = f"{reason}; {custom_step} in the loop's step"
        key = (mode, runner, reason, loops, packed_gemm, row_major, per_sample, fused, measured,
               deeper)  # fmt: skip
        made = _PLANS.get(key)
        if made is None:
            made = _PLANS[key] = Plan(*key)
        return made

    compiling = torch.compiler.is_compiling()
    if not compiling and expanded_weights(weights):
        reason = "per-sample gradients (ExpandedWeight); the reference's F.linear has them"
        return chose(REFERENCE, reason, per_sample=True)  # any backend
    if backend == "reference":
        return chose(REFERENCE, "backend='reference': the cell functions step by step, autograd")
    if custom_step and (
        mode not in REGULARIZED_LOOPS or LayerWeights(*weights[0]).w_hr is not None
    ):
        return chose(REFERENCE, f"{custom_step} changes the step; only the reference loop runs it")
    if inputs.dtype not in FAST_DTYPES:
        return chose(REFERENCE, f"{inputs.dtype} input; the fast loops run float32 and float64")
    if precision.autocast_enabled(inputs.device.type):
        return chose(REFERENCE, "under autocast; the reference's torch ops follow its casts")
    capture = graph_capture() if operator else ""
    if capture and custom_step:
        return chose(REFERENCE, f"{capture}; the graph operator has no {custom_step}")
    if capture and operators.available():
        # made ahead (below): a plan made while dynamo traces would change what it guards on
        return OPERATOR_PLANS[mode, capture]
    if capture:
        return chose(REFERENCE, f"{capture}; this torch (< 2.4) has no torch.library.register_fake")
    if transforms_active():
        return chose(
            REFERENCE, "inside a torch.func transform; every transform sees through the reference"
        )
    num_steps, w_hh = inputs.shape[0], LayerWeights(*weights[0]).w_hh
    row_major = w_hh.numel() <= ROW_MAJOR_UP_TO and num_steps > 1
    if inputs.device.type != "cpu":
        reason = f"{inputs.device.type} tensors; the native loops are CPU-only"
        return chose(PYTHON_LOOPS, reason, loops=python_loops, row_major=row_major)
    if native.is_disabled():
        reason = "unrolled.fast.native.disabled() in this thread"
        return chose(PYTHON_LOOPS, reason, loops=python_loops, row_major=row_major)
    kernels = native.ops()
    if kernels is None:
        reason = native.unavailable_reason()
        return chose(PYTHON_LOOPS, reason, loops=python_loops, row_major=row_major)
    packed = (
        mode == "LSTM"
        and inputs.dtype == torch.float32
        and lengths is None
        and w_hh.numel() >= PACKED_GEMM_FROM
        and native.packed_gemm_available()
    )
    reason = NATIVE_REASONS[inputs.dtype]
    if custom_step:  # the BLAS loop: the engine has no dropout or zoneout
        return chose(NATIVE_LOOPS, reason, loops=kernels, row_major=row_major)
    if LayerWeights(*weights[0]).w_hr is not None:  # the engine has no projection
        return chose(NATIVE_LOOPS, reason, loops=kernels, packed_gemm=packed, row_major=row_major)
    engine = chose(NATIVE_LOOPS, reason, loops=kernels, fused=True)
    if not tuning.enabled():
        return engine
    candidates = {
        "fused engine": engine,
        "native BLAS loop": chose(
            NATIVE_LOOPS, reason, loops=kernels, packed_gemm=packed, row_major=row_major
        ),
        "Python loops": chose(PYTHON_LOOPS, reason, loops=python_loops, row_major=row_major),
    }
    batch, hidden = inputs.shape[1], w_hh.shape[1]

    def fastest_for(layer: LayerWeights, input_size: int) -> tuple[str, tuning.Verdict]:
        """The shape class of a layer shaped like ``layer`` reading ``input_size`` features,
        and the verdict on it, measured once per class."""
        key = tuning.shape_class(
            mode, inputs.dtype, num_directions, num_steps, batch, input_size, hidden
        )
        verdict = tuning.fastest(
            key, lambda: trials(candidates, inputs, layer, num_directions, input_size)
        )
        return key, verdict

    def measured(key: str, verdict: tuning.Verdict, deeper: Plan | None = None) -> Plan:
        fastest = candidates[verdict.fastest]
        return chose(
            fastest.runner, "the fastest runner for this shape class here", loops=fastest.loops,
            packed_gemm=fastest.packed_gemm, row_major=fastest.row_major, fused=fastest.fused,
            measured=f"{key}: {verdict}", deeper=deeper,
        )  # fmt: skip

    key, verdict = fastest_for(LayerWeights(*weights[0]), inputs.shape[2])
    deeper = None
    if len(weights) > num_directions:  # layers 2 and up read the D*H (or D*P) below them
        second = LayerWeights(*weights[num_directions])
        deeper_key, deeper_verdict = fastest_for(second, second.w_ih.shape[1])
        if deeper_verdict.fastest != verdict.fastest:
            deeper = measured(deeper_key, deeper_verdict)
    return measured(key, verdict, deeper)


def graph_capture() -> str:
    """What is capturing a graph of this call, in words ("" when nothing is): dynamo
    (``torch.compile``, ``torch.export``) or the TorchScript tracer (``torch.jit.trace``, the
    TorchScript ONNX exporter)."""
    if torch.compiler.is_compiling():
        exporting = getattr(torch.compiler, "is_exporting", lambda: False)()
        return "traced by torch.export" if exporting else "traced by torch.compile"
    if torch.jit.is_tracing():
        if torch.onnx.is_in_onnx_export():
            from . import onnx  # the exporter's symbolic for unrolled::layer

            onnx.register()
        return "traced by torch.jit.trace (the TorchScript ONNX exporter)"
    return ""


#: The captures :func:`graph_capture` names.
CAPTURES = (
    "traced by torch.compile",
    "traced by torch.export",
    "traced by torch.jit.trace (the TorchScript ONNX exporter)",
)


def python_loops_plan(mode: str, reason: str) -> Plan:
    """The fast backend with its loops in torch ops: what an operator's kernel runs where
    the eager plan would be the reference (``reason``)."""
    key = (mode, PYTHON_LOOPS, reason, python_loops, False, False, False, False, "")
    made = _PLANS.get(key)
    if made is None:
        made = _PLANS[key] = Plan(*key)
    return made


OPERATOR_PLANS = {
    (mode, capture): Plan(mode, OPERATOR, f"{capture}: one unrolled::layer operator per layer")
    for mode in modes.MODES
    for capture in CAPTURES
}


def trials(
    candidates: dict[str, Plan],
    inputs: Tensor,
    first: LayerWeights,
    num_directions: int,
    input_size: int | None = None,
) -> dict:
    """One trial per candidate plan, for :mod:`unrolled.tuning`: a forward of one layer shaped
    like ``first`` (the call's first layer, or with ``input_size`` the layers above it: the
    call's batch and steps, that layer's sizes), ``tuning.trial_steps`` steps, without
    autograd (so that a
    trial runs the same under ``no_grad``, ``inference_mode`` or saved-tensor hooks of the
    caller's), on weights and an input of its own (drawn from a generator of its own: the
    caller's random stream is left alone)."""
    first = LayerWeights(*first)
    generator = torch.Generator(device=inputs.device).manual_seed(0)
    batch = inputs.shape[1]
    input_size = inputs.shape[2] if input_size is None else input_size
    gate_rows, hidden = first.w_hh.shape  # (G*H, H): no projection here

    def rand(*shape: int) -> Tensor:
        out = torch.rand(*shape, generator=generator, device=inputs.device, dtype=inputs.dtype)
        return (out - 0.5) / hidden**0.5

    num_steps = tuning.trial_steps(inputs.shape[0])
    x = rand(num_steps * batch, input_size)  # (T*B, I), a full batch packed
    steps = fast.Steps.full(num_steps, batch, inputs.device)
    weights = [
        LayerWeights(rand(gate_rows, input_size), rand(gate_rows, hidden), rand(gate_rows),
                     rand(gate_rows), None)
        for _ in range(num_directions)
    ]  # fmt: skip
    h0 = x.new_zeros(num_directions, batch, hidden)
    mode = next(iter(candidates.values())).mode
    hx = (h0, h0.clone()) if mode == "LSTM" else h0

    def trial(plan: Plan) -> None:
        with torch.no_grad():
            fast.run(plan, x, steps, hx, weights, num_layers=1, num_directions=num_directions)

    return {name: (lambda plan=plan: trial(plan)) for name, plan in candidates.items()}


NATIVE_REASONS = {dtype: f"{dtype} on CPU, native loops built here".removeprefix("torch.")
                  for dtype in FAST_DTYPES}  # fmt: skip
#: Plans are immutable, and a layer makes one per call: the few distinct ones are made once.
_PLANS: dict[tuple, Plan] = {}


def run(
    plan: Plan,
    sequences: Sequences,
    hx: Tensor | tuple[Tensor, Tensor],
    weights: Sequence[LayerWeights],
    *,
    num_layers: int,
    num_directions: int,
    dropout: float = 0.0,
    training: bool = False,
    cells: Sequence | None = None,
    masks: Sequence[regularizers.LayerMasks] | None = None,
) -> tuple[Sequences, Tensor | tuple[Tensor, Tensor]]:
    """Run a layer call as ``plan`` says; the contract is :func:`unrolled.reference.run`'s
    (``cells``: the custom step's cells, one per layer-direction, for the reference runner;
    ``masks``: the call's recurrent dropout and zoneout draws, one per layer-direction, which
    every runner that takes them reads), on a sorted batch of sequences. Returns the output as
    sequences of the same steps (packed from the fast runners, padded from the reference) and
    the final state.

    The one entry of every runner: ``weights`` may be plain 5-tuples in
    :class:`~unrolled.weights.LayerWeights`' order (``functional.rnn`` passes them so); they are
    named here, once, so that every runner reads ``w.w_hh``, never ``w[1]``.
    """
    weights = [LayerWeights(*w) for w in weights]
    options = dict(
        num_layers=num_layers, num_directions=num_directions, dropout=dropout, training=training
    )  # fmt: skip
    if plan.runner == OPERATOR:
        # a graph may be differentiated unless it is exported (an export holds the forward)
        exporting = getattr(torch.compiler, "is_exporting", lambda: False)()
        output, h_n = operators.run(
            plan.mode,
            sequences,
            hx,
            weights,
            differentiable=not (exporting or torch.jit.is_tracing()),
            **options,
        )  # (T, B, D*P) or (N, D*P)
        return sequences.like(output), h_n
    if plan.runner == REFERENCE:  # the masked loop, on padded input
        inputs, lengths = sequences.padded(), sequences.lengths  # (T, B, I)
        if masks is not None:
            cells = regularizers.make_cells(plan.mode, weights, num_directions, masks)
        with per_step_batch_first(weights) if plan.per_sample else contextlib.nullcontext():
            output, h_n = reference.run(
                plan.mode, inputs, hx, weights, cells=cells, lengths=lengths, **options
            )  # (T, B, D*P)
        return sequences.like(output), h_n
    if sequences.uniform:
        steps = fast.Steps.full(sequences.num_steps, sequences.batch, sequences.device)
    else:
        steps = fast.Steps(sequences.batch_sizes, sequences.device)
    output, h_n = fast.run(
        plan, sequences.packed(), steps, hx, weights, masks=masks, **options
    )  # (N, D*P)
    return sequences.like(output), h_n


def expanded_weights(weights: Sequence[LayerWeights]) -> list:
    """The layer's weights that are torch's per-sample-gradient ``ExpandedWeight`` (what
    ``torch.nn.utils._per_sample_grad.call_for_per_sample_grads`` swaps in), if any."""
    try:
        from torch.nn.utils._expanded_weights import ExpandedWeight
    except ImportError:
        return []
    return [w for row in weights for w in row if isinstance(w, ExpandedWeight)]


@contextlib.contextmanager
def per_step_batch_first(weights: Sequence[LayerWeights]) -> Iterator[None]:
    """The reference applies each weight to one step at a time, ``(B, X)``: batch first,
    whatever the layer's ``batch_first`` (ExpandedWeight needs to know where the batch is)."""
    expanded = expanded_weights(weights)
    before = [w.batch_first for w in expanded]
    for w in expanded:
        w.set_batch_first(True)
    try:
        yield
    finally:
        for w, value in zip(expanded, before):
            w.set_batch_first(value)


def check_backend(name: str) -> None:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {sorted(BACKENDS)}, got backend={name!r}")


def sample_plans(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> list[Plan]:
    """The fast backend's plan for a small layer of each mode (H = 64, T = 8, B = 4) with
    ``dtype`` input on ``device``: what the commands print as "how the fast backend runs here".
    Makes the plans as a layer would (building the native loops if they are not built yet)."""
    hidden, steps, batch = 64, 8, 4
    plans = []
    for mode in modes.MODES.values():
        gates = mode.num_gates
        inputs = torch.empty(steps, batch, hidden, device=device, dtype=dtype)
        w_hh = torch.empty(gates * hidden, hidden, device=device, dtype=dtype)
        plans.append(plan(mode.name, inputs, [LayerWeights(w_ih=None, w_hh=w_hh)]))  # W_hh is read
    return plans
