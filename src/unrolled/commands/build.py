"""``unrolled build``: build the fast backend's native loops now, ahead of their first use.

The loops are compiled for this machine the first time a layer needs them (about a minute on
two cores); this command does it up front, with a progress bar, so that the first training step
does not wait. ``make demo`` and ``make test`` run it. Exit status 0 when the native loops are
ready, 1 when they cannot be built here (the message says why; the fast backend then runs its
Python loops, with the same results).
"""

from __future__ import annotations

import argparse
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from unrolled import backends
from unrolled.fast import native
from unrolled.fast.native import build


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    start = time.monotonic()
    progress = Progress(TextColumn("compiling the native loops"), BarColumn(),
                        MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                        disable=args.no_progress, transient=True)  # fmt: skip
    with progress:
        task = progress.add_task("build", total=len(build.SOURCES) + 1)

        def advance(finished: int, total: int) -> None:
            progress.update(task, completed=finished, total=total)

        kernels = native.ops(progress=advance)
    out = Console()
    if kernels is None:
        reason = native.unavailable_reason()
        out.print(f"[bold red]native loops unavailable[/]: {reason}", soft_wrap=True)
        out.print("the fast backend runs its Python loops: the same results, slower")
        return 1
    seconds = time.monotonic() - start
    out.print(f"native loops ready for this CPU ({native.instruction_set()}), {seconds:.0f} s")
    out.print(f"  in {build.build_directory()}", soft_wrap=True)
    out.print("plans for float32 input on this CPU:")
    for plan in backends.sample_plans():
        out.print(f"  {plan}", markup=False, soft_wrap=True)
    return 0
