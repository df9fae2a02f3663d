"""``unrolled bench`` on tiny grids: the numbers it reports are consistent with its raw samples.

No timing assertions: benchmarks are not tests. These check the bookkeeping (medians, ratios,
geometric means, JSON layout, interleaving order), that packed input and the memory probe run,
and that the command line exits 0.
"""

from __future__ import annotations

import io
import json
import math
import re
import statistics
import struct

import pytest
import torch
from rich.console import Console
from rich.progress import TimeRemainingColumn
from torch.nn.utils.rnn import PackedSequence

from unrolled import cli
from unrolled.commands import bench
from unrolled.tools import benchmark, benchmark_memory, benchmark_report
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
    peak = env["peak_gflops"]
    assert 0 < peak["min"] <= peak["max"] and peak["size"] == benchmark.PEAK_PROBE_SIZE
    for record in report["results"]:
        assert record["forward_flops"] == benchmark.forward_flops(
            benchmark.Point.from_dict({k: record[k] for k in POINT_FIELDS})
        )
        assert peak["min"] <= record["peak_gflops"] <= peak["max"]
        for name in ("torch", "unrolled"):
            timing = record["forward"][name]
            rate = record["forward_flops"] / timing["median_s"]
            assert timing["peak_fraction"] == pytest.approx(rate / (record["peak_gflops"] * 1e9))


def test_the_peak_is_timed_in_the_forwards_rounds(monkeypatch):
    """The peak probe runs in the same interleaved rounds as the point's forwards (not once up
    front, not with the training steps), and each forward's fraction is taken of that."""
    rounds = []

    def fake_interleaved(calls, settings):
        rounds.append(sorted(calls))
        seconds = {"torch": 0.004, "unrolled": 0.002, benchmark.PEAK_PROBE: 0.5}
        return {name: {"median_s": seconds[name], "noise": 0.0} for name in calls}

    monkeypatch.setattr(benchmark, "time_interleaved", fake_interleaved)
    point = benchmark.Point("gru", benchmark.Shape("x", 2, 3, 4, 5), 1, False)
    settings = benchmark.Settings(repeats=5, warmup=1, min_sample_s=0.001)
    record = benchmark.run_point(point, settings, peak=True)
    assert rounds == [sorted(["torch", "unrolled", benchmark.PEAK_PROBE]), ["torch", "unrolled"]]
    probe_flops = 2 * benchmark.PEAK_PROBE_SIZE**3
    assert record["peak_gflops"] == pytest.approx(probe_flops / 0.5 / 1e9)
    unrolled_rate = record["forward_flops"] / 0.002
    assert record["forward"]["unrolled"]["peak_fraction"] == pytest.approx(
        unrolled_rate / (probe_flops / 0.5)
    )
    assert benchmark.PEAK_PROBE not in record["forward"]
    without = benchmark.run_point(point, settings)
    assert "peak_gflops" not in without and "peak_fraction" not in without["forward"]["torch"]


def test_the_header_names_the_peak_range():
    line = benchmark_report.peak_line({"min": 186.2, "max": 297.4, "size": 2048})
    assert line.startswith("peak: 186-297 GFLOP/s (square torch.mm of 2048, timed with each")
    assert benchmark_report.peak_line({"min": 199.6, "max": 200.2, "size": 2048}).startswith(
        "peak: 200 GFLOP/s"
    )


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


# ---------------------------------------------------------------------------------------------
# what bench prints and draws, from made-up reports (no timing)


def made_up_record(mode: str, name: str, dims: tuple, config: str, forward: float,
                   train: float, torch_ms: float = 1301.0) -> dict:  # fmt: skip
    """A record as benchmark.run_point writes it, with --memory and --compiled, wide numbers."""

    def timing(ratio: float, ms: float) -> dict:
        torch_s, unrolled_s = ms / 1e3, ratio * ms / 1e3
        return {
            "torch": {"median_s": torch_s, "noise": 0.01},
            "unrolled": {"median_s": unrolled_s, "noise": 0.02, "peak_fraction": 0.91},
            "ratio": ratio,
            "compiled": {"median_s": 1.5 * unrolled_s},
            "compiled_ratio": 1.5 * ratio,
            "compiled_vs_eager": 1.5,
        }  # fmt: skip

    batch, steps, inputs, hidden = dims
    return {
        "mode": mode, "config": config,
        "shape": {"name": name, "batch": batch, "steps": steps, "input_size": inputs,
                  "hidden_size": hidden},
        "plan": f"{mode.upper()}: native loops (C++, AVX512), fused engine (AVX-512 kernel); "
                f"reason: the fastest runner for this shape class here; {mode.upper()} float32 "
                f"D1 threads2 T{steps} B{batch}: measured here: fused engine 0.0712 ms",
        "forward": timing(forward, torch_ms), "train": timing(train, 3 * torch_ms),
        "memory": {"torch": {"peak_bytes": 123_456_789}, "unrolled": {"peak_bytes": 65_432_100},
                   "ratio": 0.53},
        "noise": 0.123, "parity": {"ok": True, "max_abs_diff": 1e-7},
    }  # fmt: skip


def made_up_report(records: list[dict]) -> dict:
    return {
        "environment": {"date": "2026-12-05 07:34 UTC", "torch": "2.13.0+cpu", "unrolled": "0.1.0",
                        "python": "3.11.7", "cpu": "AMD EPYC", "vendor": "AuthenticAMD",
                        "isa": "AVX512", "engine_isa": "AVX-512", "threads": 2, "cpu_count": 2,
                        "load_average": {"before": 2.5, "after": 1.9},
                        "peak_gflops": {"min": 195.1, "max": 199.3, "size": 2048}},
        "settings": {"backend": "fast", "repeats": 7, "warmup": 2, "min_sample_s": 0.05,
                     "seed": 0, "dtype": "float32", "packed": False, "quick": False,
                     "memory": True, "compiled": True},
        "results": records,
        "geomean": benchmark.summarize(records),
    }  # fmt: skip


NAMED = made_up_report([
    made_up_record(mode, name, dims, config, forward, train)
    for mode in ("lstm", "gru")
    for name, dims, forward, train in (("S", (1, 256, 32, 32), 0.1412, 12.3456),
                                        ("XL", (32, 32, 512, 1024), 1.0587, 0.0789))
    for config in ("1uni", "2bi")
])  # fmt: skip
LITERAL = made_up_report([
    made_up_record("rnn_tanh", "24x24x384x768", (24, 24, 384, 768), config, 0.4213, 0.9876, 0.0712)
    for config in ("1uni", "2bi")
])  # fmt: skip


def render(report: dict, width: int) -> str:
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    benchmark_report.header(console, report)
    benchmark_report.tables(console, report)
    return console.export_text()


@pytest.mark.parametrize("report", [NAMED, LITERAL], ids=["named shapes", "literal shapes"])
@pytest.mark.parametrize("width", [80, 100, 120, 200])
def test_tables_fit_the_console_and_cut_no_number(report, width):
    text = render(report, width)
    assert "…" not in text
    assert max(len(line.rstrip()) for line in text.splitlines()) <= width
    cells = text.split()
    for record in report["results"]:
        for phase in ("forward", "train"):
            timing = record[phase]
            for key in ("ratio", "compiled_ratio", "compiled_vs_eager"):
                assert f"{timing[key]:.2f}" in cells
            assert benchmark_report._ms(timing["torch"]["median_s"]) in cells
    assert "12%" in cells  # the noise column stays, even at 80 columns
    for means in report["geomean"].values():
        assert all(f"{value:.2f}" in cells for value in means.values())
    words = set(cells)
    for record in report["results"]:  # header lines break between words, never inside one
        assert set(record["plan"].split()) <= words


def test_a_narrow_console_leaves_out_the_least_useful_columns_first():
    lstm = [r for r in NAMED["results"] if r["mode"] == "lstm"]
    wide = benchmark_report.mode_table("lstm", lstm, NAMED["geomean"]["lstm"])
    headers = [str(c.header).replace("\n", " ") for c in wide.columns]
    assert headers == ["shape", "B,T,I,H", "config", "torch fwd", "unrolled fwd", "fwd ratio",
                       "fwd %peak", "torch train", "unrolled train", "train ratio", "torch MiB",
                       "unrolled MiB", "mem ratio", "noise", "parity"]  # fmt: skip
    narrow = benchmark_report.mode_table("lstm", lstm, NAMED["geomean"]["lstm"], width=80)
    headers = [str(c.header).replace("\n", " ") for c in narrow.columns]
    assert headers == ["shape", "config", "torch fwd", "unrolled fwd", "fwd ratio", "torch train",
                       "unrolled train", "train ratio", "mem ratio", "noise"]  # fmt: skip
    assert benchmark_report.table_width(narrow) <= 80
    # what was left out is said under the table: the shapes' sizes and that parity held
    assert "S=1,256,32,32" in narrow.caption and "XL=32,32,512,1024" in narrow.caption
    assert "parity" in narrow.caption
    # a literal shape's B,T,I,H would repeat its name: never shown
    rnn = LITERAL["results"]
    table = benchmark_report.mode_table("rnn_tanh", rnn, LITERAL["geomean"]["rnn_tanh"])
    assert "B,T,I,H" not in [c.header for c in table.columns] and table.caption is None


def test_a_failed_parity_keeps_its_column():
    records = [r for r in NAMED["results"] if r["mode"] == "gru"]
    records[0] = dict(records[0], parity={"ok": False, "max_abs_diff": 0.5})
    table = benchmark_report.mode_table("gru", records, NAMED["geomean"]["gru"], width=80)
    assert "parity" in [c.header for c in table.columns]


def test_piped_output_is_120_columns_unless_columns_says(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    assert bench.output_console().width == bench.PIPED_WIDTH == 120
    monkeypatch.setenv("COLUMNS", "80")
    assert bench.output_console().width == 80


def test_progress_off_a_terminal_is_one_plain_line_per_point():
    out = io.StringIO()
    now = iter([0.0, 10.0, 42.0, 3725.0])
    progress = bench._Progress(Console(file=out), 3, clock=lambda: next(now))
    assert progress.bar is None
    with progress:
        for label in ("lstm S 1uni", "lstm S 2bi", "lstm XL 2bi"):
            progress.now(f"{label}: timing")
            progress.finished(label)
    assert out.getvalue().splitlines() == [
        "bench: 3 point(s) to time",
        "bench: 1/3 lstm S 1uni done, 0:10 elapsed, about 0:20 left",
        "bench: 2/3 lstm S 2bi done, 0:42 elapsed, about 0:21 left",
        "bench: 3/3 lstm XL 2bi done, 1:02:05 elapsed",
    ]


def test_progress_on_a_terminal_is_a_bar_with_the_time_left():
    console = Console(file=io.StringIO(), force_terminal=True)
    progress = bench._Progress(console, 2)
    assert any(isinstance(column, TimeRemainingColumn) for column in progress.bar.columns)
    with progress:
        progress.finished("gru S 1uni")
    assert progress.bar.tasks[0].completed == 1


def test_the_command_reports_progress_on_stderr(tmp_path, capsys):
    status, _ = run_cli(tmp_path, "progress", "--modes", "gru", "--configs", "1uni,2bi",
                        "--shapes", "1x3x2x3")  # fmt: skip
    assert status == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("bench:")]
    assert lines[0] == "bench: 2 point(s) to time"
    assert re.fullmatch(r"bench: 1/2 gru 1x3x2x3 1uni done, 0:\d\d elapsed, about 0:\d\d left",
                        lines[1])  # fmt: skip
    assert re.fullmatch(r"bench: 2/2 gru 1x3x2x3 2bi done, 0:\d\d elapsed", lines[2])


def test_plot_bars_start_at_one_and_carry_their_values(tmp_path, monkeypatch):
    matplotlib_text = pytest.importorskip("matplotlib.text")
    plt = benchmark_report.pyplot()
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    path = tmp_path / "ratios.png"
    benchmark_report.plot(NAMED, str(path))
    png = path.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert 800 <= width <= 1400 and height >= width * 9 / 16
    (figure,) = figures
    panels = [axes for axes in figure.axes if axes.get_title(loc="left")]
    assert [axes.get_title(loc="left") for axes in panels] == ["lstm", "gru"]
    for axes, mode in zip(panels, ("lstm", "gru")):
        ratios = sorted(r[p]["ratio"] for r in NAMED["results"] if r["mode"] == mode
                        for p in ("forward", "train"))  # fmt: skip
        bars = axes.patches
        assert all(bar.get_y() == pytest.approx(1) for bar in bars)
        assert sorted(bar.get_y() + bar.get_height() for bar in bars) == pytest.approx(ratios)
        labels = {text.get_text() for text in axes.texts}
        assert {f"{ratio:.2f}" for ratio in ratios} <= labels
        assert axes.get_yscale() == "log"
        ticks = [label.get_text() for label in axes.get_yticklabels()]
        assert {"0.1", "0.2", "0.5", "1", "2", "5", "10"} <= set(ticks)
        assert "geomean" in axes.get_title(loc="right")
    assert any("CPU AMD EPYC" in text.get_text() for text in figure.findobj(matplotlib_text.Text))
    monkeypatch.undo()
    plt.close(figure)


def test_flax_comparison_skips_with_a_reason_without_jax(monkeypatch, capsys):
    """benchmarks/flax_compare.py without the optional extra: says why and exits 0."""
    import runpy
    import sys
    from pathlib import Path

    folder = Path(__file__).resolve().parent.parent / "benchmarks"
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setitem(sys.modules, "jax", None)  # import jax -> ImportError
    monkeypatch.setattr(sys, "argv", ["flax_compare.py", "--shapes", "2x4x3x5"])
    runpy.run_path(str(folder / "flax_compare.py"), run_name="__main__")
    assert "skipped: Flax and JAX are not installed" in capsys.readouterr().out
