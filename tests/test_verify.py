"""``unrolled verify``: the campaign passes on correct code, covers what it claims, and fails
(exit status 1, mismatches named in the JSON) when a cell is even slightly wrong."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from unrolled import cells, cli
from unrolled.tools import conformance
from unrolled.tools.compare import tolerance
from unrolled.tools.conformance.cases import _LAYER_OPTIONS, _allowed, _canonical, all_pairs


def test_campaign_passes_on_a_tiny_sweep_and_random_cases():
    cases = conformance.fixed_sweep()[::16] + conformance.random_cases(3, seed=7)
    results = conformance.run_campaign(cases)
    assert len(results) == len(cases)
    failures = [(r.case.describe(), r.problems) for r in results if not r.passed]
    assert not failures
    for result in results:
        assert result.compared >= 2  # at least one output and one gradient
        limit = tolerance(result.case.dtype).atol
        assert result.output_error <= limit * 10 and result.gradient_error <= limit * 100
    rows = conformance.summarize(results)
    assert {row.feature for row in rows} >= {"all cases", "random", "float32"}
    assert all(row.passed for row in rows)


def test_fixed_sweep_covers_every_mode_form_backend_and_pair():
    sweep = conformance.fixed_sweep()
    assert sweep == conformance.fixed_sweep()  # deterministic
    combos = {(c.mode, c.form, c.backend) for c in sweep if not c.is_cell}
    expected = itertools.product(conformance.LAYER_MODES, conformance.FORMS, conformance.BACKENDS)
    assert combos == set(expected)
    assert {c.mode for c in sweep if c.is_cell} == set(conformance.CELL_MODES)
    assert any(c.proj_size for c in sweep if c.mode == "LSTM")
    assert any(c.dropout for c in sweep)
    for mode in conformance.LAYER_MODES:  # T=1, B=1, I=1 and H=1 for every mode
        sizes = [(c.steps, c.batch, c.input_size, c.hidden_size) for c in sweep if c.mode == mode]
        for k in range(4):
            assert any(size[k] == 1 for size in sizes), (mode, k)
    assert all(c.lengths is not None for c in sweep if c.form in ("packed", "lengths"))
    lengths = next(c.lengths for c in sweep if c.form == "packed")
    assert len(set(lengths)) > 1 and list(lengths) != sorted(lengths, reverse=True)
    # Every allowed pair of option values appears in some case of every layer mode.
    for mode in conformance.LAYER_MODES:
        mine = [c for c in sweep if c.mode == mode and c.backend == "fast"]
        for (a, va), (b, vb) in itertools.combinations(
            [(name, v) for name, values in _LAYER_OPTIONS.items() for v in values], 2
        ):
            if a == b or not _allowed({a: va, b: vb}):
                continue
            assert any(getattr(c, a) == va and getattr(c, b) == vb for c in mine), (mode, a, b)


def test_all_pairs_on_a_small_example():
    options = _canonical({"a": (0, 1, 2), "b": ("x", "y"), "c": (True, False), "d": (1, 2)})
    cases = all_pairs(
        options, core=["a"], allowed=lambda v: not (v.get("a") == 2 and v.get("b") == "y")
    )
    for (n1, v1s), (n2, v2s) in itertools.combinations(options.items(), 2):
        for v1, v2 in itertools.product(v1s, v2s):
            seen = any(c[n1] == v1 and c[n2] == v2 for c in cases)
            assert seen == (not ({n1: v1, n2: v2} == {"a": 2, "b": "y"}))
    assert len(cases) < 3 * 2 * 2 * 2  # fewer than the full product


def test_random_cases_are_reproducible_and_varied():
    first, again = conformance.random_cases(30, seed=3), conformance.random_cases(30, seed=3)
    assert first == again
    assert first != conformance.random_cases(30, seed=4)
    assert {c.backend for c in first} >= {"reference", "fast"}
    assert len({c.mode for c in first}) >= 4
    assert any(1 in (c.steps, c.batch, c.input_size, c.hidden_size) for c in first)
    for case in first:
        if case.lengths is not None:
            assert max(case.lengths) == case.steps and min(case.lengths) >= 1


def test_cli_writes_json(tmp_path, capsys):
    path = tmp_path / "verify.json"
    status = cli.main(["verify", "--sweep", "quick", "--cases", "3", "--seed", "1",
                       "--json", str(path), "--no-progress"])  # fmt: skip
    out = capsys.readouterr().out
    assert status == 0, out
    assert "PASS" in out and "worst absolute errors" in out
    report = json.loads(path.read_text())
    expected = len(conformance.default_cases(3, 1, sweep="quick"))
    assert report["passed"] is True and report["failed"] == 0
    assert report["cases"] == len(report["results"]) == expected
    assert report["environment"]["torch"] == torch.__version__
    assert report["environment"]["tolerances"]["float32"] == tolerance("float32")._asdict()
    row = report["summary"][0]
    assert set(row) == {"mode", "feature", "cases", "failed", "worst_output_error",
                        "worst_gradient_error", "passed"}  # fmt: skip
    backends = {r["case"]["backend"] for r in report["results"]}
    assert backends == {"reference", "fast", "cell"}
    assert {r["case"]["form"] for r in report["results"]} == set(conformance.FORMS)


def _slightly_wrong(right):
    def update(xw, hw):
        return cells.RNNValues(right(xw, hw).h * (1 + 1e-3))  # a 0.1% error: far above noise

    return update


def test_cli_fails_when_a_cell_is_slightly_wrong(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cells, "rnn_tanh_update", _slightly_wrong(cells.rnn_tanh_update))
    path = tmp_path / "verify.json"
    status = cli.main(["verify", "--sweep", "quick", "--cases", "0", "--json", str(path),
                       "--no-progress"])  # fmt: skip
    out = capsys.readouterr().out
    assert status == 1
    assert "FAIL" in out
    report = json.loads(path.read_text())
    assert report["passed"] is False
    failed_modes = {r["case"]["mode"] for r in report["results"] if not r["passed"]}
    # RNNCell(tanh) runs the same cell function; the other modes are untouched.
    assert failed_modes == {"RNN_TANH", "RNNCell_TANH"}
    # The reference backend runs the cells' updates (a fast backend has its own arithmetic).
    failed = [r for r in report["results"] if not r["passed"]]
    assert all(r["passed"] is False for r in report["results"] if r["case"]["backend"] != "fast"
               and r["case"]["mode"] in failed_modes)  # fmt: skip
    assert {r["case"]["backend"] for r in failed} >= {"reference", "cell"}
    for r in failed:  # a numeric mismatch, not a crash
        assert all("max |difference|" in p for p in r["problems"]), r["problems"]
        assert 1e-5 < r["output_error"] < 1e-1
    bad_rows = [row for row in report["summary"] if not row["passed"]]
    assert bad_rows and all(row["mode"] in failed_modes for row in bad_rows)


def test_a_crash_inside_unrolled_is_a_failure_not_a_crash(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(cells, "gru_update", broken)
    case = next(c for c in conformance.quick_sweep() if c.mode == "GRU")
    result = conformance.run_case(case)
    assert not result.passed
    assert "RuntimeError: boom" in result.problems[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(capsys):
    assert cli.main(["verify", "--device", "cuda", "--no-progress"]) == 2
    out = capsys.readouterr().out
    assert "CUDA is not available" in out
    with pytest.raises(ValueError, match="CUDA is not available"):
        conformance.check_device("cuda")


@pytest.mark.parametrize("device", ["gpu", "gpu:0", "tpu"])
def test_an_unknown_device_is_a_clear_error_not_a_traceback(device, capsys):
    assert cli.main(["verify", "--device", device, "--no-progress"]) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert f"device must be 'cpu' or 'cuda[:N]', got '{device}'" in out
    assert ("(for an NVIDIA GPU: cuda)" in out) == device.startswith("gpu")


@pytest.mark.parametrize("cases", ["0", "-3"])
def test_nothing_to_check_is_an_error_not_a_pass(cases, capsys):
    argv = ["verify", "--cases", cases, "--sweep", "none", "--no-progress"]
    assert cli.main(argv) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert "PASS" not in out
    assert ("nothing to check" in out) if cases == "0" else ("--cases must be >= 0, got -3" in out)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_campaign_on_cuda():
    cases = conformance.default_cases(2, seed=0, device="cuda", sweep="quick")
    assert not any(c.dropout for c in cases)
    results = conformance.run_campaign(cases, device="cuda")
    assert all(r.passed for r in results), [r.problems for r in results if not r.passed]
