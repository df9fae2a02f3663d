"""One decision per call, recorded: ``backends.plan`` chooses the runner (with its reason), the
forward stores it, and the backward runs the loops the forward ran, whatever happens in between:
``native.disabled()`` entered or left (in this thread or another), or the native build finishing
or failing after the forward. Every case compares all gradients with torch.nn and checks, by
recording the loop calls, that forward and backward ran the same loops."""

from __future__ import annotations

import threading

import pytest
import torch
from parity import assert_close, leaves

import unrolled
from unrolled import backends, captured, functional
from unrolled.fast import native

needs_native = pytest.mark.skipif(
    native.ops() is None, reason=f"native loops unavailable: {native.status()}"
)

TORCH_MODES = {
    "RNN_TANH": lambda *a, **k: torch.nn.RNN(*a, nonlinearity="tanh", **k),
    "RNN_RELU": lambda *a, **k: torch.nn.RNN(*a, nonlinearity="relu", **k),
    "LSTM": torch.nn.LSTM,
    "GRU": torch.nn.GRU,
}
MODES_AND_DIRECTIONS = [(m, b) for m in ("RNN_TANH", "LSTM", "GRU") for b in (False, True)]


# --- what the plan decides, and why ----------------------------------------------------------


def test_reference_backend():
    layer = unrolled.GRU(3, 4, backend="reference")
    plan = unrolled.plan(layer, torch.randn(5, 2, 3))
    assert plan.runner == backends.REFERENCE and plan.loops is None
    assert "backend='reference'" in plan.reason
    assert str(plan).startswith("GRU: reference; reason: ")


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_regularizers_say_where_they_run(mode):
    """Recurrent dropout and zoneout run in the fast loops' step (the BLAS loop, never the
    fused engine) where the mode has them, and the plan says so; with projection, under a
    graph capture or in other dtypes they run the reference loop."""
    cls = getattr(unrolled, mode)
    x = torch.randn(5, 2, 3)
    zoned = cls(3, 4, zoneout=0.1)
    plan = unrolled.plan(zoned, x)
    assert "zoneout" in plan.reason and not plan.fused
    fast = mode in backends.REGULARIZED_LOOPS
    assert (plan.runner != backends.REFERENCE) == fast, plan
    dropped = cls(3, 4, recurrent_dropout=0.2)
    assert "recurrent_dropout" in unrolled.plan(dropped, x).reason
    dropped.eval()  # recurrent dropout is off in eval mode: the step is torch's again
    plan = unrolled.plan(dropped, x)
    assert plan.runner != backends.REFERENCE and "recurrent_dropout" not in plan.reason
    if mode == "LSTM":
        projected = cls(3, 4, proj_size=2, zoneout=0.1)
        assert unrolled.plan(projected, x).runner == backends.REFERENCE
    zoned_bf16 = cls(3, 4, zoneout=0.1, dtype=torch.bfloat16)
    assert unrolled.plan(zoned_bf16, x.bfloat16()).runner == backends.REFERENCE


def test_other_dtypes_run_the_reference():
    layer = unrolled.LSTM(3, 4, dtype=torch.bfloat16)
    plan = unrolled.plan(layer, torch.randn(5, 2, 3, dtype=torch.bfloat16))
    assert plan.runner == backends.REFERENCE and "bfloat16" in plan.reason


def test_tracing_by_torch_compile_makes_one_operator_per_layer(monkeypatch):
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    plan = unrolled.plan(unrolled.RNN(3, 4), torch.randn(5, 2, 3))
    assert plan.runner == backends.OPERATOR and "torch.compile" in plan.reason
    # a step the fast loops do not have still traces through the reference
    plan = unrolled.plan(unrolled.GRU(3, 4, zoneout=0.1), torch.randn(5, 2, 3))
    assert plan.runner == backends.REFERENCE


def test_disabled_plans_the_python_loops():
    layer, x = unrolled.LSTM(3, 4), torch.randn(5, 2, 3)
    with native.disabled():
        plan = unrolled.plan(layer, x)
    assert plan.runner == backends.PYTHON_LOOPS and "disabled()" in plan.reason
    assert plan.loops is unrolled.fast.loops


@needs_native
def test_native_plan_and_its_variants():
    x = torch.randn(5, 2, 3)
    plan = unrolled.plan(unrolled.LSTM(3, 4), x)
    assert plan.runner == backends.NATIVE_LOOPS and plan.loops is native.ops()
    assert str(plan).startswith(f"LSTM: native loops (C++, {native.instruction_set()})")
    assert plan.fused and "fused engine" in str(plan)  # LSTM without projection
    assert not plan.row_major and not plan.packed_gemm  # the engine packs W_hh itself
    projected = unrolled.plan(unrolled.LSTM(3, 6, proj_size=4), x)
    assert not projected.fused and projected.row_major  # small W_hh, several steps
    for layer in (unrolled.GRU(3, 4), unrolled.RNN(3, 4), unrolled.RNN(3, 4, nonlinearity="relu")):
        assert unrolled.plan(layer, x).fused  # every family has the engine
    assert not unrolled.plan(unrolled.LSTM(3, 6, proj_size=4), x[:1]).row_major  # one step
    big = unrolled.LSTM(3, 520, proj_size=510)  # W_hh 2080 x 510: 2^20 elements and more
    if native.packed_gemm_available():
        assert unrolled.plan(big, x).packed_gemm
        assert "packed GEMM" in str(unrolled.plan(big, x))
    assert not unrolled.plan(big, x, lengths=torch.tensor([5, 3])).packed_gemm  # not full batch
    assert not unrolled.plan(big.double(), x.double()).packed_gemm  # float32 only
    assert not unrolled.plan(unrolled.GRU(3, 600), x).packed_gemm  # LSTM only


def test_plan_of_cells_recurrent_and_strangers():
    cell_plan = unrolled.plan(unrolled.LSTMCell(3, 4), torch.randn(2, 3))
    assert cell_plan.runner == backends.REFERENCE and cell_plan.mode == "LSTM"
    stack = unrolled.Recurrent(lambda size: unrolled.IndRNN(size, 4), input_size=3)
    stack_plan = unrolled.plan(stack, torch.randn(5, 2, 3))
    assert stack_plan.runner in (captured.NATIVE_LOOP, captured.PYTHON_LOOP)
    assert "IndRNN cells: step() captured" in stack_plan.reason
    stack.cells[0].capture = False
    stack_plan = unrolled.plan(stack, torch.randn(5, 2, 3))
    assert stack_plan.runner == backends.REFERENCE and "IndRNN cells run the reference loop" in (
        stack_plan.reason
    )
    assert "not captured: IndRNN.capture is False" in stack_plan.reason
    with pytest.raises(TypeError, match="module must be one of unrolled's recurrent modules"):
        unrolled.plan(torch.nn.LSTM(3, 4), torch.randn(5, 2, 3))


def test_plan_of_variants_says_what_runs(monkeypatch):
    x = torch.randn(6, 2, 3)  # (T, B, I)
    for cell in (unrolled.LayerNormLSTM(3, 4), unrolled.LayerNormGRU(3, 4), unrolled.IndRNN(3, 4)):
        found = unrolled.plan(cell, x[0])
        assert found.runner == backends.REFERENCE and type(cell).__name__ in found.reason
    mingru = unrolled.MinGRU(3, 4, batch_first=True)
    assert unrolled.plan(mingru, x.transpose(0, 1)).runner == "parallel scan"  # training step
    stepping = (captured.NATIVE_LOOP, captured.PYTHON_LOOP)  # the captured step's loop
    with torch.no_grad():  # inference steps, as the forward itself decides
        assert unrolled.plan(mingru, x.transpose(0, 1)).runner in stepping
    assert unrolled.plan(mingru, x[:1].transpose(0, 1)).runner in stepping  # T = 1
    calls = []
    real = unrolled.variants.mingru.ParallelMinGRU
    monkeypatch.setattr(unrolled.variants.mingru, "ParallelMinGRU",
                        lambda *a: calls.append(1) or real(*a))  # fmt: skip
    mingru(x.transpose(0, 1))  # what plan said: the forward takes the parallel scan
    assert calls


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="backend must be one of"):
        unrolled.LSTM(3, 4, backend="turbo")


# --- the backward runs what the forward ran ---------------------------------------------------


class Recorder:
    """Wraps a loops namespace (native ops or the Python loops) and logs each call by name."""

    def __init__(self, loops, tag: str, log: list):
        self._loops, self._tag, self._log = loops, tag, log

    def __getattr__(self, name):
        function = getattr(self._loops, name)
        if not name.endswith(("_forward", "_backward")):  # queries such as graph_released
            return function

        def recorded(*args):
            self._log.append((self._tag, name.rsplit("_", 1)[-1]))
            return function(*args)

        return recorded


@pytest.fixture
def calls(monkeypatch):
    """Every loop call made from now on, as ``(runner, "forward" | "backward")``."""
    log: list = []
    real_ops = native.ops()
    monkeypatch.setattr(backends, "python_loops", Recorder(backends.python_loops, "python", log))
    if real_ops is not None:
        recorded_ops = Recorder(real_ops, "native", log)
        monkeypatch.setattr(native, "ops", lambda progress=None: recorded_ops)
    return log


def make_pair(mode, bidirectional):
    torch.manual_seed(3)
    theirs = TORCH_MODES[mode](3, 5, num_layers=2, bidirectional=bidirectional).double()
    return unrolled.from_torch(theirs), theirs


def gradients(module, x, between=lambda: None):
    """Forward, then ``between()``, then backward; outputs and every gradient."""
    leaf = x.clone().requires_grad_()
    module.zero_grad()
    out = module(leaf)
    between()
    values = leaves(out)
    weights = [torch.linspace(-1, 1, v.numel(), dtype=v.dtype).view_as(v) for v in values]
    sum((v * w).sum() for v, w in zip(values, weights)).backward()
    return values + [leaf.grad] + [p.grad.clone() for p in module.parameters()]


def assert_equal_to_torch(ours, theirs, x, between=lambda: None):
    for k, (a, b) in enumerate(zip(gradients(ours, x, between), gradients(theirs, x))):
        assert_close(f"value {k}", a, b, torch.float64)


def runners_of(log):
    return {(runner, kind) for runner, kind in log}


@needs_native
@pytest.mark.parametrize("mode,bidirectional", MODES_AND_DIRECTIONS)
def test_forward_native_backward_inside_disabled(mode, bidirectional, calls):
    ours, theirs = make_pair(mode, bidirectional)
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    state = {}

    def enter_disabled():
        state["block"] = native.disabled()
        state["block"].__enter__()

    try:
        assert_equal_to_torch(ours, theirs, x, between=enter_disabled)
    finally:
        state["block"].__exit__(None, None, None)
    assert runners_of(calls) == {("native", "forward"), ("native", "backward")}


@pytest.mark.parametrize("mode,bidirectional", MODES_AND_DIRECTIONS)
def test_forward_inside_disabled_backward_outside(mode, bidirectional, calls):
    ours, theirs = make_pair(mode, bidirectional)
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    block = native.disabled()
    block.__enter__()
    assert_equal_to_torch(ours, theirs, x, between=lambda: block.__exit__(None, None, None))
    assert runners_of(calls) == {("python", "forward"), ("python", "backward")}


@needs_native
@pytest.mark.parametrize("mode,bidirectional", MODES_AND_DIRECTIONS)
def test_another_thread_toggling_disabled_changes_nothing_here(mode, bidirectional, calls):
    ours, theirs = make_pair(mode, bidirectional)
    stop = threading.Event()

    def toggle():
        while not stop.is_set():
            with native.disabled():
                pass

    thread = threading.Thread(target=toggle)
    thread.start()
    try:
        for step in range(5):
            x = torch.randn(
                6, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(step)
            )
            assert_equal_to_torch(ours, theirs, x)
    finally:
        stop.set()
        thread.join()
    assert runners_of(calls) == {("native", "forward"), ("native", "backward")}


@needs_native
@pytest.mark.parametrize("mode,bidirectional", MODES_AND_DIRECTIONS)
def test_a_build_finishing_after_the_forward_changes_nothing(mode, bidirectional, monkeypatch):
    """The real state machine: while another thread holds the build, a layer plans the Python
    loops; the build then finishes before the backward, which must still run the Python loops."""
    log: list = []
    monkeypatch.setattr(backends, "python_loops", Recorder(backends.python_loops, "python", log))
    built = Recorder(native.ops(), "native", log)
    monkeypatch.setattr(native, "_ops", None)
    monkeypatch.setattr(native, "_state", "untried")
    ours, theirs = make_pair(mode, bidirectional)
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    assert native._lock.acquire(blocking=False)  # "another thread" is building
    try:

        def build_finishes():
            native._ops, native._state = built, "ready"
            native._lock.release()

        assert_equal_to_torch(ours, theirs, x, between=build_finishes)
    finally:
        if native._lock.locked():
            native._lock.release()
    assert runners_of(log) == {("python", "forward"), ("python", "backward")}
    log.clear()
    assert_equal_to_torch(ours, theirs, x)  # the next call plans the finished build
    assert runners_of(log) == {("native", "forward"), ("native", "backward")}


@needs_native
@pytest.mark.parametrize("mode,bidirectional", MODES_AND_DIRECTIONS)
def test_native_lost_after_the_forward_still_backpropagates_natively(
    mode, bidirectional, calls, monkeypatch
):
    """The plan holds the loops it chose: a backward never looks them up again."""
    ours, theirs = make_pair(mode, bidirectional)
    x = torch.randn(6, 4, 3, dtype=torch.float64)

    def lose_native():
        monkeypatch.setattr(native, "ops", lambda progress=None: None)
        monkeypatch.setattr(native, "_state", "unavailable")

    assert_equal_to_torch(ours, theirs, x, between=lose_native)
    assert runners_of(calls) == {("native", "forward"), ("native", "backward")}


def test_functional_rnn_takes_the_same_plan():
    torch.manual_seed(0)
    theirs = torch.nn.GRU(3, 4).double()
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    weights = [
        (theirs.weight_ih_l0, theirs.weight_hh_l0, theirs.bias_ih_l0, theirs.bias_hh_l0, None)
    ]
    h0 = torch.zeros(1, 2, 4, dtype=torch.float64)
    for backend in ("fast", "reference"):
        out, h_n = functional.rnn("GRU", x, h0, weights, backend=backend)
        expected, expected_h = theirs(x, h0)
        assert_close("output", out, expected, torch.float64)
        assert_close("h_n", h_n, expected_h, torch.float64)
