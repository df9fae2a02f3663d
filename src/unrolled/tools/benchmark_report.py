"""What ``unrolled bench`` shows: the header, one table per mode, the plot."""

from __future__ import annotations

import math

from rich import box
from rich.console import Console
from rich.table import Table

MIB = 1024 * 1024
#: a point whose samples typically stray more than this from their median is flagged
NOISY = 0.10


def header(console: Console, report: dict) -> None:
    env, settings = report["environment"], report["settings"]
    console.print(
        f"[bold]unrolled bench[/]: unrolled (backend [bold]{settings['backend']}[/]) vs "
        f"torch.nn, {'packed' if settings['packed'] else 'padded'} input, {settings['dtype']}"
    )
    for line in plans(report["results"]):
        console.print(f"  plan {line}")
    console.print(
        f"  {env['date']} | torch {env['torch']} | unrolled {env['unrolled']} | "
        f"python {env['python']}\n  CPU {env['cpu']} ({env.get('vendor', '?')}, "
        f"{env.get('isa', '?')}; engine kernel {env.get('engine_isa') or '-'}) | torch threads "
        f"{env['threads']}"
    )
    if env.get("peak_gflops"):
        console.print(
            f'  peak: {env["peak_gflops"]:.0f} GFLOP/s (best square torch.mm here); "fwd %peak" '
            "is unrolled's forward multiply-adds over its time, as a share of it"
        )
    console.print(
        f"  median of {settings['repeats']} interleaved samples (each >= "
        f"{settings['min_sample_s'] * 1e3:.0f} ms); ratio = unrolled / torch, below 1 = faster"
    )
    load = env.get("load_average", {})
    if load.get("before") is not None:
        busiest = max(v for v in load.values() if v is not None)
        note = ""
        if busiest > env["cpu_count"]:
            hint = ", try --threads 1" if env["threads"] > 1 else ""
            note = (
                f" [yellow](above the core count: other processes competed; expect noise{hint})[/]"
            )
        console.print(
            f"  load average {load['before']:.1f} before, {load['after']:.1f} after{note}"
        )
    if settings["quick"]:
        console.print("  [yellow]--quick[/]: T is a quarter of the grid's, 5 repeats, shapes "
                      "S, M, L unless --shapes says otherwise")  # fmt: skip


def plans(records: list[dict]) -> list[str]:
    """The distinct plans the points ran (``unrolled.plan``), each once, in order."""
    return list(dict.fromkeys(r["plan"] for r in records if "plan" in r))


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g}"


def _ratio(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    colour = "green" if value < 1 else "red"
    return f"[{colour}]{value:.2f}[/]"


def _percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{fraction:.0%}"


def _mib(n_bytes: int) -> str:
    return f"{n_bytes / MIB:.3g}"


def mode_table(mode: str, records: list[dict], geomean: dict) -> Table:
    with_memory = any("memory" in r for r in records)
    table = Table(title=mode, title_justify="left", show_footer=True, footer_style="bold",
                  box=box.SIMPLE_HEAD, padding=(0, 1))  # fmt: skip
    table.add_column("shape", footer="geomean")
    table.add_column("B,T,I,H", no_wrap=True)
    table.add_column("config")
    table.add_column("torch\nfwd ms", justify="right")
    table.add_column("unrolled\nfwd ms", justify="right")
    table.add_column("fwd\nratio", justify="right", footer=_ratio(geomean["forward"]))
    with_peak = any("peak_fraction" in r["forward"]["unrolled"] for r in records)
    if with_peak:
        table.add_column("fwd\n%peak", justify="right")
    table.add_column("torch\ntrain ms", justify="right")
    table.add_column("unrolled\ntrain ms", justify="right")
    table.add_column("train\nratio", justify="right", footer=_ratio(geomean["train"]))
    if with_memory:
        table.add_column("torch\nMiB", justify="right")
        table.add_column("unrolled\nMiB", justify="right")
        table.add_column("mem\nratio", justify="right", footer=_ratio(geomean.get("memory")))
    table.add_column("noise", justify="right")
    table.add_column("parity")
    for r in records:
        shape = r["shape"]
        row = [
            shape["name"],
            f"{shape['batch']},{shape['steps']},{shape['input_size']},{shape['hidden_size']}",
            r["config"],
            _ms(r["forward"]["torch"]["median_s"]),
            _ms(r["forward"]["unrolled"]["median_s"]),
            _ratio(r["forward"]["ratio"]),
            *([_percent(r["forward"]["unrolled"].get("peak_fraction"))] if with_peak else []),
            _ms(r["train"]["torch"]["median_s"]),
            _ms(r["train"]["unrolled"]["median_s"]),
            _ratio(r["train"]["ratio"]),
        ]
        if with_memory:
            memory = r.get("memory")
            row += (
                [
                    _mib(memory["torch"]["peak_bytes"]),
                    _mib(memory["unrolled"]["peak_bytes"]),
                    _ratio(memory["ratio"]),
                ]  # fmt: skip
                if memory
                else ["-", "-", "-"]
            )
        noise = f"{r['noise']:.0%}"
        row.append(f"[yellow]{noise}[/]" if r["noise"] > NOISY else noise)
        parity = r["parity"]
        row.append("ok" if parity["ok"] else f"[bold red]DIFF {parity['max_abs_diff']:.1e}[/]")
        table.add_row(*row)
    return table


def compiled_table(mode: str, records: list[dict], geomean: dict) -> Table:
    """``bench --compiled``: torch.compile(unrolled) against torch.nn and against eager
    unrolled, forward and training step."""
    table = Table(title=f"{mode}, torch.compile(unrolled)", title_justify="left",
                  show_footer=True, footer_style="bold", box=box.SIMPLE_HEAD,
                  padding=(0, 1))  # fmt: skip
    table.add_column("shape", footer="geomean")
    table.add_column("B,T,I,H", no_wrap=True)
    table.add_column("config")
    for phase, short in (("forward", "fwd"), ("train", "train")):
        table.add_column(f"compiled\n{short} ms", justify="right")
        for key, name in (("compiled_ratio", "/ torch"), ("compiled_vs_eager", "/ eager")):
            footer = _ratio(geomean.get(f"{phase} {key}"))
            table.add_column(f"{short}\n{name}", justify="right", footer=footer)
    for r in records:
        shape = r["shape"]
        row = [
            shape["name"],
            f"{shape['batch']},{shape['steps']},{shape['input_size']},{shape['hidden_size']}",
            r["config"],
        ]
        for phase in ("forward", "train"):
            row += [
                _ms(r[phase]["compiled"]["median_s"]),
                _ratio(r[phase]["compiled_ratio"]),
                _ratio(r[phase]["compiled_vs_eager"]),
            ]
        table.add_row(*row)
    return table


def tables(console: Console, report: dict) -> None:
    for mode, geomean in report["geomean"].items():
        rows = [r for r in report["results"] if r["mode"] == mode]
        console.print(mode_table(mode, rows, geomean))
        if all("compiled" in r["forward"] for r in rows):
            console.print(compiled_table(mode, rows, geomean))
    noisy = [r for r in report["results"] if r["noise"] > NOISY]
    if noisy:
        console.print(
            f"[yellow]note[/]: {len(noisy)} point(s) with noise > {NOISY:.0%} (median absolute "
            "deviation of the samples over their median): rerun them on a quieter machine "
            "or with more --repeats"
        )
    bad = [r for r in report["results"] if not r["parity"]["ok"]]
    if bad:
        console.print(
            f"[bold red]warning[/]: {len(bad)} point(s) where unrolled's forward output differs "
            "from torch.nn's beyond the tolerance; their times do not compare like with like"
        )


def pyplot():
    """matplotlib.pyplot on a file-only backend; called before measuring, so it fails early."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise SystemExit(
            "--plot needs matplotlib: pip install 'unrolled[plot]' (or matplotlib)"
        ) from error
    return plt


def plot(report: dict, path: str) -> None:
    """Bar chart of the forward and train ratios per point, log scale, a line at 1."""
    plt = pyplot()
    records = report["results"]
    labels = [f"{r['mode']}\n{r['shape']['name']} {r['config']}" for r in records]
    positions = range(len(records))
    width = 0.4
    figure, axes = plt.subplots(figsize=(max(6.0, 0.7 * len(records) + 2), 4.5))
    axes.bar([p - width / 2 for p in positions], [r["forward"]["ratio"] for r in records],
             width, label="forward (no_grad)")  # fmt: skip
    axes.bar([p + width / 2 for p in positions], [r["train"]["ratio"] for r in records],
             width, label="training step")  # fmt: skip
    axes.axhline(1.0, color="black", linewidth=1)
    axes.set_yscale("log")
    axes.set_xticks(list(positions), labels, fontsize=7)
    axes.set_ylabel("unrolled / torch.nn time (below 1 = faster)")
    env, settings = report["environment"], report["settings"]
    axes.set_title(
        f"unrolled ({settings['backend']}) vs torch {env['torch']}, "
        f"{'packed' if settings['packed'] else 'padded'}, {env['threads']} threads",
        fontsize=9,
    )
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
