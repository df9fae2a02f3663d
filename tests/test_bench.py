"""``unrolled bench`` on tiny grids: the numbers it reports are consistent with its raw samples.

No timing assertions: benchmarks are not tests. These check the bookkeeping (medians, ratios,
geometric means, JSON layout, interleaving order), that packed input and the memory probe run,
and that the command line exits 0.
"""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence

from unrolled import cli
from unrolled.tools import benchmark, benchmark_memory
from unrolled.tools.compare import tolerance

POINT_FIELDS = ("mode", "shape", "layers", "bidirectional", "packed", "dtype")

TINY = ["--repeats", "5", "--min-sample-ms", "1", "--threads", "1"]


def run_cli(tmp_path, name: str, *options: str) -> tuple[int, dict]:
    path = tmp_path / f"{name}.json"
    status = cli.main(["bench", *TINY, "--json", str(path), *options])
    return status, json.loads(path.read_text())


@pytest.fixture(scope="module")
def grid_report(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("bench")
    plot = tmp_path / "ratios.png"
    status, report = run_cli(
        tmp_path, "grid", "--shapes", "2x5x3x4,1x3x2x3", "--configs", "1uni,2bi",
        "--plot", str(plot),
    )  # fmt: skip
    return status, report, plot


def test_cli_exits_zero_and_writes_every_point(grid_report):
    status, report, plot = grid_report
    assert status == 0
    assert set(report) == {"environment", "settings", "results", "geomean"}
    points = {(r["mode"], r["shape"]["name"], r["config"]) for r in report["results"]}
    assert points == {
        (mode, shape, config)
        for mode in ("rnn_tanh", "lstm", "gru")
        for shape in ("2x5x3x4", "1x3x2x3")
        for config in ("1uni", "2bi")
    }
    assert report["settings"]["repeats"] == 5 and report["settings"]["backend"] == "fast"
    for record in report["results"]:  # the plan each point ran, e.g. "LSTM: native loops ..."
        assert record["plan"].lower().startswith(record["mode"] + ": "), record["plan"]
    assert report["environment"]["threads"] == 1
    assert report["environment"]["torch"] == torch.__version__
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_machine_is_named_and_each_forward_is_a_share_of_its_peak(grid_report):
    _, report, _ = grid_report
    env = report["environment"]
    assert env["cpu"] and env["vendor"] and env["isa"]
    assert env["engine_isa"] in ("AVX-512", "AVX2", "NEON", "scalar", "")
    assert env["peak_gflops"] > 0
    for record in report["results"]:
        assert record["forward_flops"] == benchmark.forward_flops(
            benchmark.Point.from_dict({k: record[k] for k in POINT_FIELDS})
        )
        for name in ("torch", "unrolled"):
            timing = record["forward"][name]
            rate = record["forward_flops"] / timing["median_s"]
            assert timing["peak_fraction"] == pytest.approx(rate / (env["peak_gflops"] * 1e9))


def test_forward_flops_count_every_layer_and_direction():
    lstm = benchmark.Point("lstm", benchmark.Shape("x", 2, 3, 5, 7), 2, True)
    # layer 0: 2 directions x 2 T B (I + H) 4H; layer 1 reads 2H
    expected = 2 * 2 * 3 * 2 * (5 + 7) * 4 * 7 + 2 * 2 * 3 * 2 * (14 + 7) * 4 * 7
    assert benchmark.forward_flops(lstm) == expected


def test_medians_and_ratios_come_from_the_samples(grid_report):
    _, report, _ = grid_report
    for record in report["results"]:
        assert record["parity"]["ok"], record["parity"]
        for phase in ("forward", "train"):
            timing = record[phase]
            for name in ("torch", "unrolled"):
                samples = timing[name]["samples_s"]
                assert len(samples) == 5 and all(s > 0 for s in samples)
                assert timing[name]["median_s"] == statistics.median(samples)
                assert timing[name]["min_s"] == min(samples)
                deviation = statistics.median(abs(s - statistics.median(samples)) for s in samples)
                assert timing[name]["noise"] == pytest.approx(
                    deviation / statistics.median(samples)
                )
                assert timing[name]["calls_per_sample"] >= 1
            expected = timing["unrolled"]["median_s"] / timing["torch"]["median_s"]
            assert timing["ratio"] == pytest.approx(expected, rel=1e-12)
        noises = [
            record[p][n]["noise"] for p in ("forward", "train") for n in ("torch", "unrolled")
        ]
        assert record["noise"] == max(noises)


def test_geometric_means_per_mode(grid_report):
    _, report, _ = grid_report
    assert list(report["geomean"]) == ["rnn_tanh", "lstm", "gru"]
    for mode, means in report["geomean"].items():
        for phase in ("forward", "train"):
            ratios = [r[phase]["ratio"] for r in report["results"] if r["mode"] == mode]
            assert len(ratios) == 4
            expected = math.prod(ratios) ** (1 / len(ratios))
            assert means[phase] == pytest.approx(expected, rel=1e-12)
    assert benchmark.geometric_mean([2.0, 8.0]) == pytest.approx(4.0)
    assert math.isnan(benchmark.geometric_mean([]))


def test_packed_input_runs(tmp_path):
    status, report = run_cli(
        tmp_path, "packed", "--packed", "--modes", "lstm", "--configs", "2bi",
        "--shapes", "5x8x3x4", "--backend", "reference",
    )  # fmt: skip
    assert status == 0
    (record,) = report["results"]
    assert record["packed"] and report["settings"]["packed"]
    assert report["settings"]["backend"] == "reference"
    assert record["parity"]["ok"] and record["train"]["ratio"] > 0


def test_quick_and_float64(tmp_path):
    status, report = run_cli(
        tmp_path, "quick", "--quick", "--dtype", "float64", "--modes", "rnn_relu",
        "--configs", "1uni", "--shapes", "2x40x3x3",
    )  # fmt: skip
    assert status == 0
    (record,) = report["results"]
    assert report["settings"]["quick"] and report["settings"]["dtype"] == "float64"
    assert record["shape"]["steps"] == 10 and record["dtype"] == "float64"
    assert record["parity"]["ok"] and record["parity"]["max_abs_diff"] <= tolerance("float64").atol


def test_compiled_times_torch_compile_of_the_same_layer(tmp_path, capsys):
    status, report = run_cli(
        tmp_path, "compiled", "--compiled", "--modes", "gru", "--configs", "2bi",
        "--shapes", "3x6x4x5",
    )  # fmt: skip
    assert status == 0 and report["settings"]["compiled"]
    (record,) = report["results"]
    assert record["parity"]["compiled"]["ok"] and record["parity"]["ok"]
    for phase in ("forward", "train"):
        timing = record[phase]
        assert len(timing["compiled"]["samples_s"]) == 5
        compiled = timing["compiled"]["median_s"]
        assert timing["compiled_ratio"] == pytest.approx(compiled / timing["torch"]["median_s"])
        eager = timing["unrolled"]["median_s"]
        assert timing["compiled_vs_eager"] == pytest.approx(compiled / eager)
        assert report["geomean"]["gru"][f"{phase} compiled_vs_eager"] == pytest.approx(
            timing["compiled_vs_eager"]
        )
    assert "gru, torch.compile(unrolled)" in capsys.readouterr().out


def test_packed_lengths_are_uneven_from_a_quarter_to_all_steps():
    point = benchmark.Point("gru", benchmark.parse_shape("64x12x3x4"), 1, False, packed=True)
    packed = benchmark.make_input(point, seed=3)
    assert isinstance(packed, PackedSequence)
    lengths = torch.zeros(64, dtype=torch.long)
    for batch_size in packed.batch_sizes.tolist():
        lengths[:batch_size] += 1
    assert lengths.max() == 12 and lengths.min() >= 3 and len(set(lengths.tolist())) > 3
    assert packed.unsorted_indices is not None  # built with enforce_sorted=False


def test_memory_probe_reports_positive_bytes(tmp_path):
    status, report = run_cli(
        tmp_path, "memory", "--memory", "--modes", "gru", "--configs", "1uni",
        "--shapes", "16x32x16x32",
    )  # fmt: skip
    assert status == 0
    (record,) = report["results"]
    memory = record["memory"]
    for name in ("torch", "unrolled"):
        assert memory[name]["peak_bytes"] > 0
        assert memory[name]["saved_bytes"] > 0
        assert memory[name]["method"].startswith("VmHWM")
    expected = memory["unrolled"]["peak_bytes"] / memory["torch"]["peak_bytes"]
    assert memory["ratio"] == pytest.approx(expected)
    assert report["geomean"]["gru"]["memory"] == pytest.approx(expected)


def test_memory_probe_counts_saved_activations():
    """A longer sequence saves more for backward: the probe sees it (run in-process, for speed)."""
    threads = torch.get_num_threads()
    short, long = (
        benchmark_memory.probe({
            "point": benchmark.Point("rnn_tanh", benchmark.parse_shape(f"8x{steps}x8x16"), 1,
                                     False).to_dict(),
            "implementation": "unrolled", "backend": "reference", "threads": threads, "seed": 0,
        })
        for steps in (4, 64)
    )  # fmt: skip
    assert long["saved_bytes"] > 8 * short["saved_bytes"] > 0


def test_samples_are_interleaved_and_alternate_order():
    order = []
    calls = {"torch": lambda: order.append("t"), "unrolled": lambda: order.append("u")}
    settings = benchmark.Settings(repeats=5, warmup=1, min_sample_s=0.0)
    timing = benchmark.time_interleaved(calls, settings)
    # warm-up and calibration: 2 calls each; then 5 rounds of one sample each, order reversed
    # every round
    assert "".join(order) == "tt" + "uu" + "tu" + "ut" + "tu" + "ut" + "tu"
    assert all(len(timing[name]["samples_s"]) == 5 for name in calls)


def test_calls_per_sample_make_a_sample_long_enough():
    calls = {"torch": lambda: None, "unrolled": lambda: None}
    settings = benchmark.Settings(repeats=5, warmup=0, min_sample_s=0.001)
    timing = benchmark.time_interleaved(calls, settings)
    assert all(timing[name]["calls_per_sample"] > 1 for name in calls)


def test_quick_shortens_time_and_keeps_widths():
    assert benchmark.quick_shape(benchmark.SHAPES["S"]) == benchmark.Shape("S", 1, 64, 32, 32)
    assert benchmark.quick_shape(benchmark.SHAPES["XL"]).steps == 8


@pytest.mark.parametrize(
    "option, value",
    [("--shapes", "Q"), ("--shapes", "2x3x4"), ("--shapes", "0x3x4x5"), ("--configs", "2up"),
     ("--configs", "0uni"), ("--modes", "lstmx"), ("--backend", "slow"), ("--modes", ",")],
)  # fmt: skip
def test_bad_options_are_refused(option, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", option, value])
    assert exit_info.value.code == 2
    assert value in capsys.readouterr().err


def test_too_few_repeats_are_refused():
    with pytest.raises(SystemExit, match="--repeats must be >= 5"):
        cli.main(["bench", "--repeats", "3", "--shapes", "1x2x2x2"])


def test_default_grid_is_the_issue_grid():
    assert benchmark.SHAPES == {
        "S": benchmark.Shape("S", 1, 256, 32, 32),
        "M": benchmark.Shape("M", 16, 128, 64, 128),
        "L": benchmark.Shape("L", 64, 64, 256, 256),
        "XL": benchmark.Shape("XL", 32, 32, 512, 1024),
    }
    points = benchmark.grid(
        benchmark.DEFAULT_MODES, benchmark.SHAPES.values(),
        [benchmark.parse_config(c) for c in benchmark.DEFAULT_CONFIGS],
    )  # fmt: skip
    assert len(points) == 3 * 4 * 2
    assert {(p.layers, p.bidirectional) for p in points} == {(1, False), (2, True)}
