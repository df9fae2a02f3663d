"""The runner of a shape class is measured once per machine, remembered, and reported."""

from __future__ import annotations

import json

import pytest
import torch
from parity import compare

import unrolled
from unrolled import backends, tuning
from unrolled.fast import loops as python_loops
from unrolled.fast import native

needs_native = pytest.mark.skipif(
    native.ops() is None, reason=f"native loops unavailable: {native.status()}"
)


@pytest.fixture
def measuring(tmp_path, monkeypatch):
    """Tuning on, verdicts in a file of this test's own."""
    monkeypatch.setenv("UNROLLED_TUNING", "on")
    monkeypatch.setattr(tuning, "cache_file", lambda: tmp_path / "tuning.json")
    tuning.forget()
    yield tmp_path / "tuning.json"
    tuning.forget()


def test_shape_classes_round_sizes_up_to_powers_of_two():
    key = tuning.shape_class("LSTM", torch.float32, 2, 24, 24, 384, 768)
    assert key == f"LSTM float32 D2 threads{torch.get_num_threads()} T32 B32 I512 H1024"
    assert tuning.shape_class("GRU", torch.float64, 1, 1, 1, 1, 1).endswith("T1 B1 I1 H1")
    assert " T64 " in tuning.shape_class("GRU", torch.float64, 1, 1000, 1, 1, 1)  # trials: 64


def test_trials_are_as_long_as_the_call_up_to_a_limit():
    assert tuning.trial_steps(7) == 7
    assert tuning.trial_steps(10**4) == tuning.MAX_TRIAL_STEPS


def test_the_fastest_trial_wins_and_is_remembered_on_disk(measuring):
    calls = []

    def make_trials():
        calls.append(1)
        return {"slow": lambda: sum(range(200_000)), "quick": lambda: None}

    verdict = tuning.fastest("class A", make_trials)
    assert verdict.fastest == "quick" and set(verdict.seconds) == {"slow", "quick"}
    assert tuning.fastest("class A", make_trials) is verdict and len(calls) == 1
    stored = json.loads(measuring.read_text())
    assert stored["class A"]["fastest"] == "quick"
    tuning.forget()  # a new process: reads the file, measures nothing
    assert tuning.fastest("class A", make_trials).fastest == "quick" and len(calls) == 1
    assert "measured here: slow" in str(verdict)


def test_two_slowed_samples_of_the_fastest_do_not_lose_it_the_verdict(measuring, monkeypatch):
    """Trials interleaved, the order reversed every other round; the verdict is by median, so
    a machine that slows down during two of the fastest candidate's rounds does not hand the
    shape class to a slower candidate."""
    order, clock = [], [0.0]
    costs = {"engine": [1.0, 9.0, 1.0, 9.0, 1.0, 1.0], "blas": [2.0] * 6}  # warm-up first

    def trial(name):
        def run():
            order.append(name)
            clock[0] += costs[name].pop(0)

        return run

    monkeypatch.setattr(tuning.time, "perf_counter", lambda: clock[0])
    verdict = tuning.fastest("class N", lambda: {"engine": trial("engine"), "blas": trial("blas")})
    assert tuning.ROUNDS == 5
    assert verdict.fastest == "engine" and verdict.seconds == {"engine": 1.0, "blas": 2.0}
    rounds = order[2:]  # after each one's warm-up
    assert rounds == ["engine", "blas", "blas", "engine"] * 2 + ["engine", "blas"]


def test_an_unreadable_file_is_measured_again(measuring):
    measuring.write_text("not json")
    assert tuning.fastest("class B", lambda: {"only": lambda: None}).fastest == "only"
    assert "class B" in json.loads(measuring.read_text())


@needs_native
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_a_layer_plans_the_measured_runner_and_says_so(measuring, mode):
    layer = getattr(unrolled, mode)(5, 24, bidirectional=True)
    x = torch.randn(6, 3, 5)
    random_state = torch.get_rng_state()
    plan = unrolled.plan(layer, x)
    assert torch.equal(torch.get_rng_state(), random_state)  # trials draw from their own
    assert "measured here: fused engine" in str(plan) and "Python loops" in str(plan)
    assert plan.runner in (backends.NATIVE_LOOPS, backends.PYTHON_LOOPS)
    key = tuning.shape_class(layer.mode, torch.float32, 2, 6, 3, 5, 24)
    assert key in str(plan) and key in json.loads(measuring.read_text())
    assert unrolled.plan(layer, x) is plan  # remembered: the same plan object
    theirs = getattr(torch.nn, mode)(5, 24, bidirectional=True)
    ours = unrolled.from_torch(theirs)
    with torch.no_grad():  # whatever runs, it equals torch
        torch.testing.assert_close(ours(x)[0], theirs(x)[0], atol=3e-5, rtol=1e-4)


@needs_native
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_the_layers_above_the_first_are_a_shape_class_of_their_own(measuring, monkeypatch, mode):
    """Layers 2 and up read the D*H features below them, not the call's input: their runner is
    measured for their own input size, and where it differs from the first layer's they run it
    (forward and backward), the plan says so, and the numbers still equal torch's."""
    sizes = []

    def verdict(trials):  # the first layer's class: the engine; the layers above: Python loops
        winner = "fused engine" if len(sizes) == 1 else "Python loops"
        return tuning.Verdict(winner, {name: 0.001 for name in trials})

    real_trials = backends.trials

    def trials(candidates, inputs, layer, num_directions, input_size=None):
        sizes.append(input_size)
        return real_trials(candidates, inputs, layer, num_directions, input_size)

    monkeypatch.setattr(backends, "trials", trials)
    monkeypatch.setattr(tuning, "_measure", verdict)
    theirs = getattr(torch.nn, mode)(5, 24, 3, bidirectional=True).double()
    ours = unrolled.from_torch(theirs)
    x = torch.randn(6, 3, 5, dtype=torch.float64, requires_grad=True)
    plan = unrolled.plan(ours, x)
    assert sizes == [5, 48]  # measured once per class: the first layer, then those above
    assert plan.fused and plan.deeper is not None and plan.deeper.runner == backends.PYTHON_LOOPS
    assert [plan.for_layer(k) for k in range(3)] == [plan, plan.deeper, plan.deeper]
    assert "; layers 2 and up: python loops, row-major W_hh^T; reason:" in str(plan)
    assert "D2 threads" in plan.deeper.measured and " I64 " in plan.deeper.measured
    ran = []
    real_forward = python_loops.lstm_forward if mode == "LSTM" else python_loops.gru_forward
    name = "lstm_forward" if mode == "LSTM" else "gru_forward"
    monkeypatch.setattr(python_loops, name, lambda *a, **k: ran.append(1) or real_forward(*a, **k))
    compare(ours, theirs, (x,))  # outputs, states and every gradient, float64
    assert ran and len(ran) % 2 == 0  # layers 2 and 3 (only), in every forward


@needs_native
def test_off_plans_the_engine_without_measuring(monkeypatch, tmp_path):
    monkeypatch.setenv("UNROLLED_TUNING", "off")
    monkeypatch.setattr(tuning, "cache_file", lambda: tmp_path / "tuning.json")
    plan = unrolled.plan(unrolled.GRU(5, 24), torch.randn(6, 3, 5))
    assert plan.fused and not plan.measured and not (tmp_path / "tuning.json").exists()


@needs_native
def test_layers_with_a_projection_are_not_measured(measuring):
    plan = unrolled.plan(unrolled.LSTM(5, 24, proj_size=7), torch.randn(6, 3, 5))
    assert not plan.fused and not plan.measured and not measuring.exists()


@needs_native
def test_measuring_works_under_inference_mode_and_saved_tensor_hooks(measuring):
    """A first call may come from anywhere: inference_mode, a checkpointed region's hooks."""
    x = torch.randn(5, 2, 3)
    with torch.inference_mode():
        assert unrolled.plan(unrolled.GRU(3, 8), x).measured
    with torch.autograd.graph.save_on_cpu():
        assert unrolled.plan(unrolled.LSTM(3, 8), x).measured


@pytest.mark.parametrize("winner", ["parallel scan", "captured steps"])
def test_mingru_training_takes_the_measured_faster_of_scan_and_steps(measuring, monkeypatch,
                                                                     winner):  # fmt: skip
    from unrolled.variants import mingru, mingru_choice

    model = unrolled.MinGRU(3, 4)
    x = torch.randn(9, 2, 3)
    times = {"parallel scan": 0.002, "captured steps": 0.001}
    if winner == "parallel scan":
        times = {"parallel scan": 0.001, "captured steps": 0.002}
    monkeypatch.setattr(
        mingru_choice, "trials", lambda *a: {name: (lambda: None) for name in times}
    )
    monkeypatch.setattr(tuning, "_measure", lambda trials: tuning.Verdict(winner, times))
    found = unrolled.plan(model, x)
    assert "MinGRU training float32" in found.measured and winner in found.measured
    scans = []
    real = mingru.ParallelMinGRU
    monkeypatch.setattr(mingru, "ParallelMinGRU", lambda *a: scans.append(1) or real(*a))
    model(x)[0].sum().backward()  # what the plan said
    assert bool(scans) == (winner == "parallel scan")
    assert (found.runner == "parallel scan") == (winner == "parallel scan")
    with torch.no_grad():  # inference steps, measured or not
        assert not model.parallel_for(x)


def test_mingru_trials_run_both_ways_on_their_own_weights(measuring):
    from unrolled.variants import mingru_choice

    model = unrolled.MinGRU(3, 4)
    state = torch.random.get_rng_state()
    made = mingru_choice.trials(model, torch.zeros(1), 8, 2, 4, 4)
    assert set(made) == {"parallel scan", "captured steps"}
    for run in made.values():
        run()
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's stream untouched
