"""``unrolled demo``: a hand-written RNN beside torch.nn's, number for number.

Default (``--mode functions``): batch 2, T=3, input 2, hidden 3. Runs the hand-written
``unrolled.functional.rnn_forward`` and ``bidirectional_rnn_forward`` beside ``torch.nn.RNN``
(same weights, same input) and prints both outputs, the final states and the largest absolute
difference of each, then the gradients of ``output.sum() + h_n.sum()`` with respect to the input
and every weight. ``--mode rnn|lstm|gru`` (with ``--layers``, ``--bidirectional``,
``--backend``) compares the library's module with torch.nn's the same way. Exit status 1 on any
mismatch beyond float32's tolerance.
"""

from __future__ import annotations

import argparse

import torch
from rich.console import Console
from rich.table import Table

import unrolled
from unrolled.functional import bidirectional_rnn_forward, rnn_forward
from unrolled.tools import compare

SIZES = dict(batch=2, steps=3, input_size=2, hidden_size=3)
#: values per table row: three columns of "+0.1234" keep both tables within 80 columns
PER_ROW = 3
MODULE_OPTIONS = ("layers", "bidirectional", "backend")


def _mode(text: str) -> str:
    return "functions" if text == "notebook" else text  # the old name of the default mode


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", type=_mode, choices=["functions", "rnn", "lstm", "gru"],
                        default="functions",
                        help="functions (default): unrolled.functional's rnn_forward and "
                             "bidirectional_rnn_forward vs torch.nn.RNN; rnn|lstm|gru: the "
                             "library's module vs torch.nn's")  # fmt: skip
    parser.add_argument("--layers", type=int, default=None, help="with --mode rnn|lstm|gru")
    parser.add_argument("--bidirectional", action="store_true", default=None,
                        help="with --mode rnn|lstm|gru")  # fmt: skip
    parser.add_argument("--backend", choices=["fast", "reference"], default=None,
                        help="with --mode rnn|lstm|gru (default fast)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)


def _fmt(values: list[float]) -> str:
    return " ".join(f"{v:+.4f}" for v in values)


def _show(console: Console, title: str, ours: torch.Tensor, theirs: torch.Tensor) -> bool:
    """Both tensors side by side, ``PER_ROW`` values a line; the largest difference; PASS/FAIL."""
    diff = compare.largest_difference(ours, theirs, equal_nan=False)
    ok = diff <= compare.tolerance(ours.dtype).atol  # the absolute bound alone, as printed
    table = Table(title=f"{title}  shape {tuple(ours.shape)}", title_justify="left")
    table.add_column("index", style="dim")
    table.add_column("torch.nn", justify="right", no_wrap=True)
    table.add_column("unrolled", justify="right", no_wrap=True)
    width = theirs.shape[-1]
    rows_theirs = theirs.detach().reshape(-1, width).tolist()  # (rows, width)
    rows_ours = ours.detach().reshape(-1, width).tolist()
    leading = list(theirs.shape[:-1])
    for row, (a, b) in enumerate(zip(rows_theirs, rows_ours)):
        index = _index(row, leading)
        for start in range(0, width, PER_ROW):
            columns = f"{start}:{min(start + PER_ROW, width)}" if width > PER_ROW else ":"
            label = f"[{index}{', ' if index else ''}{columns}]"
            table.add_row(label, _fmt(a[start : start + PER_ROW]), _fmt(b[start : start + PER_ROW]))
    console.print(table)
    verdict = "[bold green]PASS[/]" if ok else "[bold red]FAIL[/]"
    console.print(f"  max |difference| = {diff:.3e}  {verdict}\n")
    return ok


def _index(row: int, leading: list[int]) -> str:
    """Flat row number -> ``"b, t"``-style index over the leading dimensions."""
    index = []
    for size in reversed(leading):
        index.append(row % size)
        row //= size
    return ", ".join(str(i) for i in reversed(index))


def _gradients(console: Console, ours: dict, theirs: dict) -> tuple[bool, int]:
    """One line per gradient: name, shape, largest difference, PASS/FAIL."""
    table = Table(title="gradients of output.sum() + h_n.sum()", title_justify="left")
    table.add_column("with respect to")
    table.add_column("shape", no_wrap=True)
    table.add_column("max |difference|", justify="right")
    table.add_column("")
    ok = True
    for name, expected in theirs.items():
        got = ours[name]
        diff = compare.largest_difference(got, expected, equal_nan=False)
        passed = diff <= compare.tolerance(expected.dtype).atol
        ok &= passed
        verdict = "[green]PASS[/]" if passed else "[bold red]FAIL[/]"
        table.add_row(name, str(tuple(expected.shape)), f"{diff:.3e}", verdict)
    console.print(table)
    return ok, len(theirs)


def _grads(loss: torch.Tensor, named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    found = torch.autograd.grad(loss, list(named.values()))
    return dict(zip(named, found))


def _functions(console: Console) -> tuple[bool, int]:
    batch, steps, input_size, hidden = SIZES.values()
    x = torch.randn(batch, steps, input_size)
    ok, count = True, 0
    for bidirectional in (False, True):
        rnn = torch.nn.RNN(input_size, hidden, batch_first=True, bidirectional=bidirectional)
        directions = 2 if bidirectional else 1
        h0 = torch.zeros(directions, batch, hidden)
        their_x, our_x = x.clone().requires_grad_(), x.clone().requires_grad_()
        expected, expected_h = rnn(their_x, h0)
        weights = {name: w.detach().clone().requires_grad_() for name, w in rnn.named_parameters()}
        forward = [
            weights[f"{kind}_l0"] for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        ]
        if bidirectional:
            reverse = [weights[f"{kind}_l0_reverse"]
                       for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]  # fmt: skip
            got, got_h = bidirectional_rnn_forward(our_x, *forward, h0[0], *reverse, h0[1])
            console.rule("bidirectional: bidirectional_rnn_forward vs nn.RNN(bidirectional=True)")
        else:
            got, got_h = rnn_forward(our_x, *forward, h0[0])
            got_h = got_h.reshape(expected_h.shape)  # (1, B, H) as torch.nn gives it
            console.rule("unidirectional: rnn_forward vs nn.RNN(batch_first=True)")
        ok &= _show(console, "output", got, expected)
        ok &= _show(console, "h_n", got_h, expected_h)
        theirs = _grads(
            expected.sum() + expected_h.sum(), {"input": their_x, **dict(rnn.named_parameters())}
        )
        ours = _grads(got.sum() + got_h.sum(), {"input": our_x, **weights})
        passed, n = _gradients(console, ours, theirs)
        ok, count = ok and passed, count + n
    return ok, count


def _module(console: Console, args: argparse.Namespace) -> tuple[bool, int]:
    torch_cls = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[args.mode]
    batch, steps, input_size, hidden = SIZES.values()
    layers, backend = args.layers or 1, args.backend or "fast"
    reference = torch_cls(input_size, hidden, num_layers=layers,
                          bidirectional=bool(args.bidirectional), batch_first=True)  # fmt: skip
    ours = unrolled.from_torch(reference, backend=backend)
    x = torch.randn(batch, steps, input_size)
    their_x, our_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected_out, expected_state = reference(their_x)
    got_out, got_state = ours(our_x)
    console.rule(f"unrolled.{torch_cls.__name__} ({backend}) vs torch.nn.{torch_cls.__name__}")
    console.print(f"  {ours!r}\n")
    ok = _show(console, "output", got_out, expected_out)
    if isinstance(expected_state, tuple):
        ok &= _show(console, "h_n", got_state[0], expected_state[0])
        ok &= _show(console, "c_n", got_state[1], expected_state[1])
        their_loss = expected_out.sum() + expected_state[0].sum()
        our_loss = got_out.sum() + got_state[0].sum()
    else:
        ok &= _show(console, "h_n", got_state, expected_state)
        their_loss, our_loss = (
            expected_out.sum() + expected_state.sum(),
            got_out.sum() + got_state.sum(),
        )
    theirs = _grads(their_loss, {"input": their_x, **dict(reference.named_parameters())})
    mine = _grads(our_loss, {"input": our_x, **dict(ours.named_parameters())})
    passed, count = _gradients(console, mine, theirs)
    return ok and passed, count


def run(args: argparse.Namespace) -> int:
    console = Console()
    if args.mode == "functions":
        given = [f"--{name}" for name in MODULE_OPTIONS if getattr(args, name) is not None]
        if given:
            raise SystemExit(
                f"unrolled demo: {', '.join(given)} {'apply' if len(given) > 1 else 'applies'} "
                "only to --mode rnn, lstm or gru; the default "
                "mode (functions) compares the two one-layer functions, rnn_forward and "
                "bidirectional_rnn_forward"
            )
    if args.layers is not None and args.layers < 1:
        raise SystemExit(f"unrolled demo: --layers must be >= 1, got {args.layers}")
    torch.manual_seed(args.seed)
    ok, count = _functions(console) if args.mode == "functions" else _module(console, args)
    atol = compare.tolerance(torch.float32).atol
    checked = f"outputs, final states and {count} gradients (float32, |difference| <= {atol:g})"
    if ok:
        console.print(f"[bold green]PASS[/]: unrolled equals torch.nn in {checked}")
    else:
        console.print(f"[bold red]FAIL[/]: unrolled differs from torch.nn; checked {checked}")
    return 0 if ok else 1
