"""``unrolled explain``: a small RNN unrolled step by step, with shapes, numbers and a picture.

Prints each equation of the cell with the shapes of everything in it, for every layer,
direction and time step (``--values`` adds the numbers), then where each slice of ``output`` and
each row of ``h_n`` comes from, and checks the assembled result against torch.nn (PASS/FAIL,
exit 1 on FAIL). ``--plot FILE.png`` draws the unrolled network and its hidden states.
"""

from __future__ import annotations

import argparse
import importlib
import re
import shutil
import sys
import textwrap

import torch

import unrolled
from unrolled import modes
from unrolled.tools import explain


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mode",
        choices=sorted(modes.CLI_NAMES) + ["rnn"],
        default=None,
        help="rnn (= rnn_tanh), rnn_relu, lstm or gru (default rnn; with --grad-flow: rnn, "
        "lstm and gru)",
    )
    parser.add_argument("--grad-flow", action="store_true",
                        help="instead: how far back the gradient reaches, ||dL/dh_t|| for a loss "
                             "on the last state, at several sizes of W_hh (T=60 unless --T; "
                             "--plot draws it)")  # fmt: skip
    parser.add_argument("--cell", metavar="MODULE:CLASS",
                        help="instead: a custom unrolled.Cell in unrolled.Recurrent, built as "
                             "CLASS(input_size, hidden_size): its plan, its step captured as "
                             "ATen graphs, and the captured loop checked against the plain "
                             "one (e.g. --cell IndRNN, --cell mypackage.cells:MyGRU)")  # fmt: skip
    parser.add_argument("--forget-bias", type=float, default=0.0,
                        help="with --grad-flow: added to the LSTM's forget-gate bias")  # fmt: skip
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--bidirectional", action="store_true")
    parser.add_argument("--T", type=int, default=None, help="time steps (default 3; 60 with "
                        "--grad-flow)")  # fmt: skip
    parser.add_argument("--batch", type=int, default=None, help="sequences (default 1; 2 with "
                        "--cell)")  # fmt: skip
    parser.add_argument("--input-size", type=int, default=None, help="(default 2; 3 with --cell)")
    parser.add_argument("--hidden-size", type=int, default=None, help="(default 3; 4 with --cell)")
    parser.add_argument("--proj-size", type=int, default=0, help="LSTM projection size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--values", action="store_true", help="print the numbers too")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="draw the unrolled network (needs matplotlib: pip install "
                        "'unrolled[plot]')")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    if args.grad_flow:
        return grad_flow(args)
    if args.cell:
        return explain_cell(args)
    sizes(args, {"T": 3, "batch": 1, "input_size": 2, "hidden_size": 3})
    args.mode = args.mode or "rnn"
    mode = modes.CLI_NAMES["rnn_tanh" if args.mode == "rnn" else args.mode]
    if args.proj_size and (mode != "LSTM" or not 0 < args.proj_size < args.hidden_size):
        raise SystemExit("unrolled explain: --proj-size is for lstm, 0 < proj < hidden size")
    config = explain.Config(
        mode=mode,
        layers=args.layers,
        bidirectional=args.bidirectional,
        steps=args.T,
        batch=args.batch,
        input_size=args.input_size,
        hidden_size=args.hidden_size,
        proj_size=args.proj_size,
        seed=args.seed,
    )
    if args.plot:
        try:
            diagram = importlib.import_module("unrolled.tools.diagram")  # matplotlib is optional
        except ImportError as error:
            print(
                f"unrolled explain --plot needs matplotlib ({error}): pip install 'unrolled[plot]'"
            )
            return 2
    result = explain.trace(config)
    width = output_width()
    print(wrap(f"(the fast backend runs this layer as {fast_plan(config)})", width) + "\n")
    print(wrap(explain.render(result, values=args.values), width))
    if args.plot:
        diagram.draw(result, args.plot)
        print(f"wrote {args.plot}")
    return 0 if result.passed else 1


def grad_flow(args: argparse.Namespace) -> int:
    """``--grad-flow``: the table of :mod:`unrolled.tools.grad_flow`, and its picture."""
    from unrolled.tools import grad_flow as flow

    steps = 60 if args.T is None else args.T
    if steps < 2:
        raise SystemExit(f"unrolled explain --grad-flow: --T must be >= 2, got {steps}")
    chosen = flow.MODES if args.mode is None else ("rnn_tanh" if args.mode == "rnn" else args.mode,)
    flows = flow.sweep(chosen, steps=steps, seed=args.seed, forget_bias=args.forget_bias)
    width = output_width()
    print(wrap(
        f"||dL/dh_t|| for L = <v, h_(T-1)>, T={steps}, k = T-1-t steps before the loss; W_hh = "
        "scale x a random orthogonal matrix per gate (float64, mean over 16 sequences):", width
    ) + "\n")  # fmt: skip
    print(flow.table(flows))
    print("\n" + wrap("far below 1 the early steps get almost no say in training (vanishing); far "
                      "above 1 they swamp the late ones (exploding)", width))  # fmt: skip
    if args.plot:
        try:
            flow.plot(flows, args.plot)
        except ImportError as error:
            print(
                f"unrolled explain --plot needs matplotlib ({error}): pip install 'unrolled[plot]'"
            )
            return 2
        print(f"wrote {args.plot}")
    return 0


def sizes(args: argparse.Namespace, defaults: dict[str, int]) -> None:
    """Fill the sizes not given on the command line with ``defaults`` (they differ between
    ``explain`` and ``explain --cell``), and check that every size is at least 1."""
    for name, default in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    for name in ("layers", *defaults):
        if getattr(args, name) < 1:
            raise SystemExit(f"unrolled explain: --{name.replace('_', '-')} must be >= 1")


def explain_cell(args: argparse.Namespace) -> int:
    """``--cell``: :mod:`unrolled.tools.explain_cell`'s text; exit 1 when the check fails."""
    from unrolled.tools import explain_cell as cells

    # two sequences, and sizes that differ from each other: the graphs' shapes say which is which
    sizes(args, {"T": 5, "batch": 2, "input_size": 3, "hidden_size": 4})
    config = explain.Config(
        layers=args.layers, bidirectional=args.bidirectional, steps=args.T, batch=args.batch,
        input_size=args.input_size, hidden_size=args.hidden_size, seed=args.seed,
    )  # fmt: skip
    text, passed = cells.render(cells.load_cell_class(args.cell), config)
    print(wrap(text, output_width()))
    return 0 if passed else 1


def output_width() -> int | None:
    """Where to wrap: a terminal's width (``COLUMNS`` where set); None when the output is not a
    terminal, so that a file or a pipe gets one fact per line, for grep."""
    return shutil.get_terminal_size().columns if sys.stdout.isatty() else None


#: never split across lines: a bracketed group (``(3, 2)``, ``[:, t, 0:3]``), an assignment
#: with its shape (``W_hi = weight_hh_l0[0:3] (3, 3)``), an arrow and what it gives
_GROUP = re.compile(r"\S+ += \S+(?: \([^()]*\))?|->\s+\S+ \([^()]*\)|\([^()]*\)|\[[^\[\]]*\]")


def wrap(text: str, width: int | None) -> str:
    """Each line of ``text`` wrapped at ``width`` between words (never inside a word or a
    bracketed group), continued under its own indent plus four spaces."""
    if width is None:
        return text
    out = []
    for line in text.splitlines():
        if len(line) <= width:
            out.append(line)
            continue
        indent = " " * (len(line) - len(line.lstrip()))
        glued = _GROUP.sub(lambda m: m.group(0).replace(" ", "\u00a0"), line)  # NBSP: no break
        wrapped = textwrap.wrap(glued, width=width, subsequent_indent=indent + "    ",
                                break_long_words=False, break_on_hyphens=False)  # fmt: skip
        out.extend(part.replace("\u00a0", " ") for part in wrapped)
    return "\n".join(out)


def fast_plan(config: explain.Config) -> unrolled.backends.Plan:
    """What ``backend='fast'`` would run for this configuration (float32, this machine)."""
    twin = unrolled.from_torch(explain.torch_module(config), backend="fast")
    x = torch.zeros(config.batch, config.steps, config.input_size)  # (B, T, I): batch_first
    return unrolled.plan(twin, x)
