"""``unrolled verify``: check unrolled against the torch.nn installed here, feature by feature.

Runs a fixed sweep of every mode and option plus ``--cases`` random configurations, on both
backends, comparing outputs, final states and every gradient with torch.nn (weights copied).
Prints a mode x feature table; ``--json FILE`` saves every case. Exit status 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from unrolled import backends
from unrolled.tools import conformance

SHOWN_FAILURES = 20


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cases",
        type=int,
        default=50,
        metavar="N",
        help="random configurations on top of the fixed sweep (default 50)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="S",
        help="seed of the random configurations (default 0)",
    )
    parser.add_argument(
        "--sweep",
        choices=["full", "quick", "none"],
        default="full",
        help="the fixed sweep: full (default), quick (one case per mode, input "
        "form and backend) or none (random cases only)",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--json", metavar="FILE", help="write the summary and every case here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _error(value: float) -> str:
    return "crash" if value == float("inf") else f"{value:.1e}"


def summary_table(rows: list[conformance.Row]) -> Table:
    table = Table(title="unrolled vs torch.nn: worst absolute errors", title_justify="left")
    for name, justify in [("mode", "left"), ("feature", "left"), ("cases", "right"),
                          ("outputs", "right"), ("gradients", "right"), ("", "left")]:  # fmt: skip
        table.add_column(name, justify=justify)
    previous = None
    for row in rows:
        if previous is not None and row.mode != previous:
            table.add_section()
        verdict = "[green]pass[/]" if row.passed else f"[bold red]FAIL {row.failed}[/]"
        table.add_row(row.mode if row.mode != previous else "", row.feature, str(row.cases),
                      _error(row.output_error), _error(row.gradient_error), verdict)  # fmt: skip
        previous = row.mode
    return table


def run(args: argparse.Namespace) -> int:
    console = Console()
    if args.cases < 0:
        console.print(f"[bold red]error[/]: --cases must be >= 0, got {args.cases}")
        return 2
    if args.cases == 0 and args.sweep == "none":
        console.print("[bold red]error[/]: nothing to check: --cases 0 with --sweep none; "
                      "give --cases N > 0 or a sweep (quick or full)")  # fmt: skip
        return 2
    try:
        device = conformance.check_device(args.device)
    except ValueError as error:
        console.print(f"[bold red]error[/]: {error}")
        return 2
    cases = conformance.default_cases(args.cases, args.seed, device, args.sweep)
    console.print(
        f"unrolled verify: {len(cases)} cases on {device} "
        f"({args.sweep} fixed sweep + {args.cases} random configurations, seed {args.seed})"
    )
    console.print("the fast backend's plans here (float64, as the cases):")
    for plan in backends.sample_plans(device, torch.float64):
        console.print(f"  {plan}", markup=False, soft_wrap=True)

    start = time.perf_counter()
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("{task.fields[status]}"),
                        console=console, disable=args.no_progress, transient=True)  # fmt: skip
    with progress:
        task = progress.add_task("checking", total=len(cases), status="")
        failed = 0

        def advance(result: conformance.Result) -> None:
            nonlocal failed
            failed += not result.passed
            status = f"[red]{failed} failed[/]" if failed else "[green]all equal so far[/]"
            progress.update(task, advance=1, status=status)

        results = conformance.run_campaign(cases, device, on_result=advance)
    seconds = time.perf_counter() - start

    console.print(summary_table(conformance.summarize(results)))
    failures = [r for r in results if not r.passed]
    for result in failures[:SHOWN_FAILURES]:
        console.print(f"[red]FAIL[/] {result.case.describe()}")
        for problem in result.problems[:3]:
            console.print(f"     {problem}", markup=False)
    if len(failures) > SHOWN_FAILURES:
        console.print(f"... and {len(failures) - SHOWN_FAILURES} more (see --json)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(conformance.to_json(results, device, args.seed, seconds), handle, indent=1)
        console.print(f"wrote {args.json}")
    tolerances = ", ".join(f"{d} {bound}" for d, bound in conformance.TOLERANCES.items())
    if failures:
        console.print(f"[bold red]FAIL[/]: {len(failures)} of {len(results)} cases differ from "
                      f"torch.nn ({tolerances}) in {seconds:.1f} s")  # fmt: skip
        return 1
    console.print(f"[bold green]PASS[/]: all {len(results)} cases equal torch.nn "
                  f"({tolerances}) in {seconds:.1f} s")  # fmt: skip
    return 0
