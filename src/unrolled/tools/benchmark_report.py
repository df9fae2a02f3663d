"""What ``unrolled bench`` shows: the header, one table per mode, the plot."""

from __future__ import annotations

import io
import math
from typing import NamedTuple

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

MIB = 1024 * 1024
#: a point whose samples typically stray more than this from their median is flagged
NOISY = 0.10


def say(console: Console, markup: str, indent: int = 2, hang: int = 4) -> None:
    """Print ``markup`` as a paragraph: broken between words at the console's width (a word
    longer than a line is folded), the first line indented by ``indent``, the others by
    ``hang``."""
    text = Text.from_markup(markup)
    lines = text.wrap(console, max(console.width - max(indent, hang), 20), overflow="fold")
    for number, line in enumerate(lines):
        line.rstrip()
        console.print(Text(" " * (hang if number else indent)).append_text(line), soft_wrap=True)


def header(console: Console, report: dict) -> None:
    env, settings = report["environment"], report["settings"]
    say(
        console,
        f"[bold]unrolled bench[/]: unrolled (backend [bold]{settings['backend']}[/]) vs "
        f"torch.nn, {'packed' if settings['packed'] else 'padded'} input, {settings['dtype']}",
        indent=0,
    )
    for line in plans(report["results"]):
        say(console, f"plan {line}")
    say(
        console,
        f"{env['date']} | torch {env['torch']} | unrolled {env['unrolled']} | "
        f"python {env['python']}",
    )
    say(
        console,
        f"CPU {env['cpu']} ({env.get('vendor', '?')}, {env.get('isa', '?')}; engine kernel "
        f"{env.get('engine_isa') or '-'}) | torch threads {env['threads']}",
    )
    if env.get("peak_gflops"):
        say(console, peak_line(env["peak_gflops"]))
    say(
        console,
        f"median of {settings['repeats']} interleaved samples (each >= "
        f"{settings['min_sample_s'] * 1e3:.0f} ms); ratio = unrolled / torch, below 1 = faster",
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
        say(console, f"load average {load['before']:.1f} before, {load['after']:.1f} after{note}")
    if settings["quick"]:
        say(console, "[yellow]--quick[/]: T is a quarter of the grid's, 5 repeats, shapes S, M, L "
                     "unless --shapes says otherwise")  # fmt: skip


def peak_line(peak: dict) -> str:
    """The peak's line of the header: ``{"min", "max", "size"}``, the GFLOP/s range of a square
    mm of that size timed with each point's forwards."""
    low, high = peak["min"], peak["max"]
    rate = f"{low:.0f}" if round(low) == round(high) else f"{low:.0f}-{high:.0f}"
    return (
        f"peak: {rate} GFLOP/s (square torch.mm of {peak['size']}, timed with each point's "
        'forwards); "fwd %peak" is unrolled\'s forward multiply-adds over its time, as a share '
        "of it"
    )


def plans(records: list[dict]) -> list[str]:
    """The distinct plans the points ran (``unrolled.plan``), each once, in order."""
    return list(dict.fromkeys(r["plan"] for r in records if "plan" in r))


def _ms(seconds: float) -> str:
    milliseconds = seconds * 1e3
    return f"{milliseconds:.0f}" if milliseconds >= 999.5 else f"{milliseconds:.3g}"


def _ratio(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    colour = "green" if value < 1 else "red"
    return f"[{colour}]{value:.2f}[/]"


def _percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{fraction:.0%}"


def _mib(n_bytes: int) -> str:
    return f"{n_bytes / MIB:.3g}"


class _Column(NamedTuple):
    key: str
    header: str
    cells: list[str]
    footer: str = ""
    label: bool = False  # a label may wrap; a number never does


def _dims(shape: dict) -> str:
    return f"{shape['batch']},{shape['steps']},{shape['input_size']},{shape['hidden_size']}"


def _label_columns(records: list[dict]) -> list[_Column]:
    names = [r["shape"]["name"] for r in records]
    columns = [_Column("shape", "shape", names, "geomean", label=True)]
    dims = [_dims(r["shape"]) for r in records]
    if any(name != dim.replace(",", "x") for name, dim in zip(names, dims)):  # else a repeat
        columns.append(_Column("dims", "B,T,I,H", dims, label=True))
    columns.append(_Column("config", "config", [r["config"] for r in records], label=True))
    return columns


def _legend(records: list[dict]) -> str:
    """What the named shapes stand for, once each: the B,T,I,H column's content when it is left
    out."""
    named = {r["shape"]["name"]: _dims(r["shape"]) for r in records}
    return "B,T,I,H: " + " ".join(f"{name}={dims}" for name, dims in named.items()
                                  if name != dims.replace(",", "x"))  # fmt: skip


def _table(title: str, columns: list[_Column], notes: list[str]) -> Table:
    table = Table(title=title, title_justify="left", show_footer=True, footer_style="bold",
                  box=box.SIMPLE_HEAD, padding=(0, 1), collapse_padding=True, pad_edge=False,
                  show_edge=False,
                  caption="\n".join(notes) or None, caption_justify="left")  # fmt: skip
    for column in columns:
        if column.label:
            table.add_column(column.header, footer=column.footer, overflow="fold")
        else:
            table.add_column(column.header, footer=column.footer, justify="right", no_wrap=True)
    for row in zip(*(column.cells for column in columns)):
        table.add_row(*row)
    return table


def table_width(table: Table) -> int:
    """The width ``table`` takes when nothing in it is wrapped or cut."""
    console = Console(width=10_000, file=io.StringIO())
    return Measurement.get(console, console.options, table).maximum


def _fit(title: str, columns: list[_Column], drops: list[set[str]], width: int | None,
         notes: dict[str, str]) -> Table:  # fmt: skip
    """The table with every column that fits in ``width``: while it is wider, leave out the next
    set of ``drops`` (lowest value first); a left-out column whose key is in ``notes`` leaves that
    note under the table instead. ``width=None``: every column."""
    left_out: set[str] = set()
    for drop in [set(), *drops]:
        left_out |= drop
        kept = [c for c in columns if c.key not in left_out]
        table = _table(title, kept, [notes[key] for key in notes if key in left_out])
        if width is None or table_width(table) <= width:
            break
    return table


def _times(records: list[dict], phase: str, name: str) -> list[str]:
    return [_ms(r[phase][name]["median_s"]) for r in records]


def mode_table(mode: str, records: list[dict], geomean: dict, width: int | None = None) -> Table:
    """One mode's points: times, ratios, % of peak, memory, noise, parity. Where all of it is
    wider than ``width``, columns are left out, lowest value first: parity when every point is
    ok (then said under the table), % peak, B,T,I,H (then named under the table), each
    implementation's memory, unrolled's times (ratio x torch's time), noise, torch's times. A
    number is never cut. ``width=None``: every column."""
    columns = _label_columns(records)
    for phase, short in (("forward", "fwd"), ("train", "train")):
        ratios = [_ratio(r[phase]["ratio"]) for r in records]
        columns += [
            _Column(f"torch_{short}", f"torch\n{short}", _times(records, phase, "torch")),
            _Column(f"unrolled_{short}", f"unrolled\n{short}", _times(records, phase, "unrolled")),
            _Column(f"{short}_ratio", f"{short}\nratio", ratios, _ratio(geomean[phase])),
        ]
        if phase == "forward" and any("peak_fraction" in r[phase]["unrolled"] for r in records):
            peaks = [_percent(r[phase]["unrolled"].get("peak_fraction")) for r in records]
            columns.append(_Column("peak", "fwd\n%peak", peaks))
    if any("memory" in r for r in records):
        memory = [r.get("memory") for r in records]
        for name in ("torch", "unrolled"):
            mib = [_mib(m[name]["peak_bytes"]) if m else "-" for m in memory]
            columns.append(_Column(f"{name}_mib", f"{name}\nMiB", mib))
        ratios = [_ratio(m["ratio"]) if m else "-" for m in memory]
        columns.append(_Column("mem_ratio", "mem\nratio", ratios, _ratio(geomean.get("memory"))))
    noises = [(f"{r['noise']:.0%}", r["noise"] > NOISY) for r in records]
    columns.append(_Column("noise", "noise", [f"[yellow]{n}[/]" if loud else n
                                              for n, loud in noises]))  # fmt: skip
    parities = [r["parity"] for r in records]
    columns.append(_Column("parity", "parity", [
        "ok" if p["ok"] else f"[bold red]DIFF {p['max_abs_diff']:.1e}[/]" for p in parities
    ]))  # fmt: skip
    drops = [{"parity"} if all(p["ok"] for p in parities) else set(), {"peak"}, {"dims"},
             {"unrolled_mib"}, {"torch_mib"}, {"unrolled_fwd", "unrolled_train"}, {"noise"},
             {"torch_fwd", "torch_train"}]  # fmt: skip
    notes = {"dims": _legend(records), "parity": "parity with torch.nn: ok at every point"}
    return _fit(f"{mode} (times: ms per call)", columns, drops, width, notes)


def compiled_table(mode: str, records: list[dict], geomean: dict,
                   width: int | None = None) -> Table:  # fmt: skip
    """``bench --compiled``: torch.compile(unrolled) against torch.nn and against eager
    unrolled, forward and training step. Where all of it is wider than ``width``: without
    B,T,I,H (then named under the table), then without the compiled times."""
    columns = _label_columns(records)
    for phase, short in (("forward", "fwd"), ("train", "train")):
        columns.append(_Column(f"{short}_ms", f"compiled\n{short}",
                               _times(records, phase, "compiled")))  # fmt: skip
        for key, name in (("compiled_ratio", "/ torch"), ("compiled_vs_eager", "/ eager")):
            ratios = [_ratio(r[phase][key]) for r in records]
            footer = _ratio(geomean.get(f"{phase} {key}"))
            columns.append(_Column(f"{short}_{key}", f"{short}\n{name}", ratios, footer))
    drops = [{"dims"}, {"train_ms"}, {"fwd_ms"}]
    title = f"{mode}, torch.compile(unrolled) (times: ms per call)"
    return _fit(title, columns, drops, width, {"dims": _legend(records)})


def _print_table(console: Console, table: Table) -> None:
    """A table at its own width where the console is narrower still: lines too long for the
    terminal then wrap, but no number is cut."""
    needed = table_width(table)
    console.print()
    console.print(table, width=needed if needed > console.width else None)


def tables(console: Console, report: dict) -> None:
    for mode, geomean in report["geomean"].items():
        rows = [r for r in report["results"] if r["mode"] == mode]
        _print_table(console, mode_table(mode, rows, geomean, console.width))
        if all("compiled" in r["forward"] for r in rows):
            _print_table(console, compiled_table(mode, rows, geomean, console.width))
    console.print()
    noisy = [r for r in report["results"] if r["noise"] > NOISY]
    if noisy:
        say(console, f"[yellow]note[/]: {len(noisy)} point(s) with noise > {NOISY:.0%} (median "
                     "absolute deviation of the samples over their median): rerun them on a "
                     "quieter machine or with more --repeats", indent=0, hang=2)  # fmt: skip
    bad = [r for r in report["results"] if not r["parity"]["ok"]]
    if bad:
        say(console, f"[bold red]warning[/]: {len(bad)} point(s) where unrolled's forward output "
                     "differs from torch.nn's beyond the tolerance; their times do not compare "
                     "like with like", indent=0, hang=2)  # fmt: skip


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


#: where the ratio axis may put a labelled tick
RATIO_TICKS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)
PHASES = (("forward", "forward (no_grad)", "#4c72b0"), ("train", "training step", "#dd8452"))


def _bar_label(ratio: float) -> str:
    return f"{ratio:.2f}" if ratio >= 0.01 else f"{ratio:.1g}"


def plot(report: dict, path: str) -> None:
    """The forward and training-step ratios of every point as bars from the ratio-1 line (down:
    unrolled is faster, up: slower), each labelled with its value; one panel per mode with its
    geometric means, a shared log axis; about 1000 px wide, readable at 800."""
    import matplotlib.ticker as ticker

    plt = pyplot()
    records = [r for r in report["results"] if all(_finite(r[p]["ratio"]) for p, *_ in PHASES)]
    modes = list(dict.fromkeys(r["mode"] for r in records))
    if not modes:
        raise ValueError("no point with both a forward and a training-step ratio to plot")
    ratios = [r[phase]["ratio"] for r in records for phase, *_ in PHASES]
    # room for the value labels; at least 0.1 to 2, so that each panel reads alike
    low, high = min(min(ratios) / 1.7, 0.08), max(max(ratios) * 1.7, 2.5)
    most = max(sum(r["mode"] == mode for r in records) for mode in modes)
    crowded = most > 10  # value labels turned upright, to stay apart
    figure, panels = plt.subplots(len(modes), 1, figsize=(10, max(5.6, 1.6 + 2.9 * len(modes))),
                                  sharey=True, squeeze=False, layout="constrained")  # fmt: skip
    width = 0.38
    for axes, mode in zip(panels[:, 0], modes):
        rows = [r for r in records if r["mode"] == mode]
        for offset, (phase, name, colour) in zip((-width / 2, width / 2), PHASES):
            x = [i + offset for i in range(len(rows))]
            values = [r[phase]["ratio"] for r in rows]
            axes.bar(x, [v - 1 for v in values], width, bottom=1, color=colour, label=name)
            for xi, value in zip(x, values):
                axes.annotate(_bar_label(value), (xi, value), xytext=(0, -3 if value < 1 else 3),
                              textcoords="offset points", ha="center",
                              va="top" if value < 1 else "bottom", fontsize=9,
                              rotation=90 if crowded else 0)  # fmt: skip
        axes.axhline(1.0, color="black", linewidth=1.2)
        axes.set_yscale("log")
        axes.set_ylim(low, high)
        axes.yaxis.set_major_locator(ticker.FixedLocator(RATIO_TICKS))
        axes.yaxis.set_major_formatter(ticker.FuncFormatter(lambda y, _: f"{y:g}"))
        axes.yaxis.set_minor_locator(ticker.NullLocator())
        axes.grid(axis="y", color="0.85", linewidth=0.8)
        axes.set_axisbelow(True)
        axes.set_xlim(-0.6, len(rows) - 0.4)
        labels, rotation = _tick_labels(rows, most)
        axes.set_xticks(range(len(rows)), labels, fontsize=10, rotation=rotation)
        axes.tick_params(axis="x", length=0)
        means = report.get("geomean", {}).get(mode, {})
        axes.set_title(mode, loc="left", fontsize=11, fontweight="bold")
        if all(_finite(means.get(phase)) for phase, *_ in PHASES):
            axes.set_title(f"geomean: forward {means['forward']:.2f}, training step "
                           f"{means['train']:.2f}", loc="right", fontsize=10)  # fmt: skip
    figure.supylabel("time unrolled / torch.nn (log scale; below 1 = unrolled is faster)",
                     fontsize=10)  # fmt: skip
    env, settings = report["environment"], report["settings"]
    figure.suptitle(
        f"unrolled ({settings['backend']}) vs torch.nn {env['torch']}: "
        f"{'packed' if settings['packed'] else 'padded'} {settings['dtype']}, "
        f"{env['threads']} thread{'s' if env['threads'] != 1 else ''}, {env['date'][:10]}\n"
        f"CPU {env['cpu']} "
        f"({env.get('isa') or '?'}; engine kernel {env.get('engine_isa') or '-'})",
        fontsize=11,
    )
    figure.legend(*panels[0, 0].get_legend_handles_labels(), loc="outside lower center", ncol=2,
                  fontsize=10, frameon=False)  # fmt: skip
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _tick_labels(rows: list[dict], most: int) -> tuple[list[str], int]:
    """The labels under the points' bars and their rotation: shape over config; a literal shape
    too long for its place split after its second "x"; still too long, one upright line each.
    ``most``: the points of the fullest panel, so that every panel is labelled alike."""
    fits = 96 // most  # characters a line of a label has room for
    labels = []
    for r in rows:
        name = r["shape"]["name"]
        parts = name.split("x")
        if len(name) > fits and len(parts) == 4:
            name = f"{parts[0]}x{parts[1]}x\n{parts[2]}x{parts[3]}"
        labels.append(f"{name}\n{r['config']}")
    if max(len(line) for label in labels for line in label.splitlines()) > fits:
        return [f"{r['shape']['name']} {r['config']}" for r in rows], 90
    return labels, 0


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value > 0
