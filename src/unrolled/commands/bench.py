"""``unrolled bench``: time unrolled against torch.nn, side by side, interleaved, in one process.

For every mode x shape x config: the forward under ``no_grad`` and a training step (forward +
``output.sum().backward()``), median of ``--repeats`` interleaved samples, ratio unrolled / torch
(below 1 = faster), and the geometric mean of the ratios per mode. The method is described in
:mod:`unrolled.tools.benchmark` and ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from unrolled.tools import benchmark, benchmark_memory, benchmark_report

QUICK_SHAPES = ("S", "M", "L")
#: the width of the report when stdout is not a terminal and COLUMNS does not say
PIPED_WIDTH = 120


def _listed(parse):
    """argparse type: a comma-separated list, each item checked by ``parse``."""

    def parse_list(text: str) -> list:
        try:
            items = [parse(item.strip()) for item in text.split(",") if item.strip()]
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from error
        if not items:
            raise argparse.ArgumentTypeError(f"expected at least one item, got {text!r}")
        return items

    return parse_list


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--modes", type=_listed(benchmark.parse_mode),
                        default=list(benchmark.DEFAULT_MODES),
                        help=f"comma-separated: {','.join(benchmark.MODES)} (default "
                             f"{','.join(benchmark.DEFAULT_MODES)})")  # fmt: skip
    parser.add_argument("--shapes", type=_listed(benchmark.parse_shape), default=None,
                        help="comma-separated S,M,L,XL or literal BxTxIxH such as 2x8x4x6 "
                             "(default S,M,L,XL; S,M,L with --quick)")  # fmt: skip
    parser.add_argument("--configs", type=_listed(benchmark.parse_config),
                        default=[benchmark.parse_config(c) for c in benchmark.DEFAULT_CONFIGS],
                        help="comma-separated layers+direction: 1uni, 2bi, 3uni... "
                             "(default 1uni,2bi)")  # fmt: skip
    parser.add_argument("--backend", choices=["fast", "reference"], default="fast")
    parser.add_argument("--repeats", type=int, default=None,
                        help="interleaved samples per implementation, >= 5 (default 7; 5 with "
                             "--quick)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch intra-op threads (default: torch's current count, "
                             f"{torch.get_num_threads()} here)")  # fmt: skip
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument(
        "--packed",
        action="store_true",
        help="PackedSequence input (enforce_sorted=False), lengths from T/4 to T",
    )
    parser.add_argument("--memory", action="store_true",
                        help="peak memory of a training step, one fresh subprocess per "
                             "implementation and configuration")  # fmt: skip
    parser.add_argument(
        "--quick",
        action="store_true",
        help="about a minute: T/4, 5 repeats, 20 ms samples, shapes S,M,L",
    )
    parser.add_argument("--compiled", action="store_true",
                        help="also time torch.compile(unrolled layer) (inductor): vs torch.nn "
                             "and vs eager unrolled")  # fmt: skip
    parser.add_argument("--json", metavar="FILE", help="write every number to FILE")
    parser.add_argument("--plot", metavar="FILE.png", help="bar chart of the ratios (matplotlib)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-sample-ms", type=float, default=None,
                        help="a sample repeats the call until it lasts this long (default 50; "
                             "20 with --quick)")  # fmt: skip


def _settings(args: argparse.Namespace) -> benchmark.Settings:
    repeats = args.repeats if args.repeats is not None else (5 if args.quick else 7)
    if repeats < 5:
        raise SystemExit(f"--repeats must be >= 5 for a meaningful median, got {repeats}")
    min_sample_ms = args.min_sample_ms if args.min_sample_ms is not None else (
        20.0 if args.quick else 50.0)  # fmt: skip
    return benchmark.Settings(backend=args.backend, repeats=repeats,
                              min_sample_s=min_sample_ms / 1e3, seed=args.seed,
                              compiled=args.compiled)  # fmt: skip


def _points(args: argparse.Namespace) -> list[benchmark.Point]:
    shapes = args.shapes
    if shapes is None:
        names = QUICK_SHAPES if args.quick else benchmark.DEFAULT_SHAPES
        shapes = [benchmark.SHAPES[name] for name in names]
    if args.quick:
        shapes = [benchmark.quick_shape(shape) for shape in shapes]
    return benchmark.grid(args.modes, shapes, args.configs, packed=args.packed, dtype=args.dtype)


def _clock(seconds: float) -> str:
    """``0:42``, ``12:05``, ``1:02:03``."""
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class _Progress:
    """Where a run stands, on ``console`` (stderr): on a terminal, rich's bar with the time spent
    and the time left; otherwise (a log, a pipe) one plain line per finished point, so that a
    run that is not watched live still says how far it is and about how long it has to go. The
    time left is the mean time per finished point times the points left: about, since points
    differ in size."""

    def __init__(self, console: Console, total: int, clock=time.perf_counter) -> None:
        self.console, self.total, self.done, self.clock = console, total, 0, clock
        self.started = clock()
        self.bar = None
        if console.is_terminal:
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("elapsed,"),
                                TimeRemainingColumn(), TextColumn("left"), console=console,
                                transient=True, speed_estimate_period=24 * 3600)  # fmt: skip
            self.task = self.bar.add_task("bench", total=total)

    def __enter__(self) -> _Progress:
        if self.bar is not None:
            self.bar.start()
        else:
            self._say(f"bench: {self.total} point(s) to time")
        return self

    def __exit__(self, *exc_info) -> None:
        if self.bar is not None:
            self.bar.stop()

    def _say(self, line: str) -> None:
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def now(self, description: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, description=description)

    def finished(self, label: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.advance(self.task)
            return
        elapsed = self.clock() - self.started
        left = self.total - self.done
        eta = f", about {_clock(elapsed / self.done * left)} left" if left else ""
        self._say(f"bench: {self.done}/{self.total} {label} done, {_clock(elapsed)} elapsed{eta}")


def measure(args: argparse.Namespace, console: Console) -> dict:
    """Run the whole grid, saying how far it is on ``console`` (see :class:`_Progress`);
    returns the report dict."""
    settings = _settings(args)
    points = _points(args)
    load_before = benchmark.load_average()
    records = []
    with _Progress(console, len(points)) as progress:
        for point in points:
            label = f"{point.mode} {point.shape.name} {point.config}"
            progress.now(f"{label}: timing")
            record = benchmark.run_point(point, settings, peak=True)
            if args.memory:
                progress.now(f"{label}: memory")
                record["memory"] = _memory(point, settings, args.threads)
            records.append(record)
            progress.finished(label)
    environment = benchmark.environment(torch.get_num_threads())
    environment["load_average"] = {"before": load_before, "after": benchmark.load_average()}
    peaks = [record["peak_gflops"] for record in records]
    environment["peak_gflops"] = {
        "min": min(peaks),
        "max": max(peaks),
        "size": benchmark.PEAK_PROBE_SIZE,
    }
    return {
        "environment": environment,
        "settings": {
            "backend": settings.backend,
            "repeats": settings.repeats,
            "warmup": settings.warmup,
            "min_sample_s": settings.min_sample_s,
            "seed": settings.seed,
            "dtype": args.dtype,
            "packed": args.packed,
            "quick": args.quick,
            "memory": args.memory,
            "compiled": args.compiled,
        },
        "results": records,
        "geomean": benchmark.summarize(records),
    }


def _memory(point: benchmark.Point, settings: benchmark.Settings, threads: int) -> dict:
    probes = {name: benchmark_memory.measure(point, name, settings.backend, threads, settings.seed)
              for name in benchmark.IMPLEMENTATIONS}  # fmt: skip
    torch_peak = probes["torch"]["peak_bytes"]
    ratio = probes["unrolled"]["peak_bytes"] / torch_peak if torch_peak > 0 else None
    return {**probes, "ratio": ratio}


def output_console() -> Console:
    """The report's console on stdout: a terminal's width; when piped, COLUMNS where it is set,
    else :data:`PIPED_WIDTH`. The tables leave out their least useful columns to fit."""
    console = Console()
    if console.is_terminal or os.environ.get("COLUMNS", "").isdigit():
        return console
    return Console(width=PIPED_WIDTH)


def run(args: argparse.Namespace) -> int:
    if args.threads < 1:
        raise SystemExit(f"--threads must be >= 1, got {args.threads}")
    if args.plot:
        benchmark_report.pyplot()  # a missing matplotlib should stop us before, not after, a run
    console = output_console()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        report = measure(args, Console(stderr=True))
    finally:
        torch.set_num_threads(threads_before)  # when called as a library, leave torch as it was
    benchmark_report.header(console, report)
    benchmark_report.tables(console, report)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(report, file, indent=1)
        console.print(f"raw numbers written to {args.json}")
    if args.plot:
        benchmark_report.plot(report, args.plot)
        console.print(f"plot written to {args.plot}")
    return 0
