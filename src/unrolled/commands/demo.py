"""``unrolled demo``: the notebook's experiment, done properly.

Default: batch 2, T=3, input 2, hidden 3. Runs the hand-written ``rnn_forward`` and
``bidirectional_rnn_forward`` beside ``torch.nn.RNN`` and prints both with the largest absolute
difference and PASS / FAIL. ``--mode rnn|lstm|gru`` (with ``--layers``, ``--bidirectional``)
compares the library's module with torch.nn's instead. Exit status 1 on any mismatch.
"""

from __future__ import annotations

import argparse

import torch
from rich.console import Console
from rich.table import Table

import unrolled
from unrolled.functional import bidirectional_rnn_forward, rnn_forward
from unrolled.tools import compare


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=["notebook", "rnn", "lstm", "gru"], default="notebook")
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--bidirectional", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", choices=["fast", "reference"], default="fast")


def _show(console: Console, title: str, ours: torch.Tensor, theirs: torch.Tensor) -> bool:
    diff = compare.largest_difference(ours, theirs, equal_nan=False)
    ok = diff <= compare.tolerance(ours.dtype).atol  # the absolute bound alone, as printed
    table = Table(title=f"{title}  shape {tuple(ours.shape)}", show_lines=False)
    table.add_column("torch.nn", justify="right")
    table.add_column("unrolled", justify="right")
    for a, b in zip(theirs.reshape(-1, theirs.shape[-1]), ours.reshape(-1, ours.shape[-1])):
        table.add_row(_fmt(a), _fmt(b))
    console.print(table)
    verdict = "[bold green]PASS[/]" if ok else "[bold red]FAIL[/]"
    console.print(f"  max |difference| = {diff:.3e}  {verdict}\n")
    return ok


def _fmt(row: torch.Tensor) -> str:
    return " ".join(f"{v:+.4f}" for v in row.tolist())


def _notebook(console: Console) -> bool:
    batch, steps, input_size, hidden_size = 2, 3, 2, 3
    x = torch.randn(batch, steps, input_size)
    ok = True

    rnn = torch.nn.RNN(input_size, hidden_size, batch_first=True)
    h_prev = torch.zeros(batch, hidden_size)
    with torch.no_grad():
        expected, expected_h = rnn(x, h_prev.unsqueeze(0))
        p = {name: w for name, w in rnn.named_parameters()}
        got, got_h = rnn_forward(x, p["weight_ih_l0"], p["weight_hh_l0"], p["bias_ih_l0"],
                                 p["bias_hh_l0"], h_prev)  # fmt: skip
    console.rule("unidirectional: rnn_forward vs nn.RNN(batch_first=True)")
    ok &= _show(console, "output", got, expected)
    ok &= _show(console, "h_n", got_h, expected_h)

    birnn = torch.nn.RNN(input_size, hidden_size, batch_first=True, bidirectional=True)
    h0 = torch.zeros(2, batch, hidden_size)
    with torch.no_grad():
        expected, expected_h = birnn(x, h0)
        p = {name: w for name, w in birnn.named_parameters()}
        got, got_h = bidirectional_rnn_forward(
            x, p["weight_ih_l0"], p["weight_hh_l0"], p["bias_ih_l0"], p["bias_hh_l0"], h0[0],
            p["weight_ih_l0_reverse"], p["weight_hh_l0_reverse"], p["bias_ih_l0_reverse"],
            p["bias_hh_l0_reverse"], h0[1],
        )  # fmt: skip
    console.rule("bidirectional: bidirectional_rnn_forward vs nn.RNN(bidirectional=True)")
    ok &= _show(console, "output", got, expected)
    ok &= _show(console, "h_n", got_h, expected_h)
    return ok


def _module(console: Console, args: argparse.Namespace) -> bool:
    torch_cls = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[args.mode]
    reference = torch_cls(2, 3, num_layers=args.layers, bidirectional=args.bidirectional,
                          batch_first=True)  # fmt: skip
    ours = unrolled.from_torch(reference, backend=args.backend)
    x = torch.randn(2, 3, 2)
    with torch.no_grad():
        expected_out, expected_state = reference(x)
        got_out, got_state = ours(x)
    console.rule(f"unrolled.{torch_cls.__name__} ({args.backend}) vs torch.nn.{torch_cls.__name__}")
    console.print(f"  {ours!r}\n")
    ok = _show(console, "output", got_out, expected_out)
    if isinstance(expected_state, tuple):
        ok &= _show(console, "h_n", got_state[0], expected_state[0])
        ok &= _show(console, "c_n", got_state[1], expected_state[1])
    else:
        ok &= _show(console, "h_n", got_state, expected_state)
    return ok


def run(args: argparse.Namespace) -> int:
    console = Console()
    torch.manual_seed(args.seed)
    ok = _notebook(console) if args.mode == "notebook" else _module(console, args)
    verdict = "[bold green]PASS[/]: unrolled equals torch.nn" if ok else "[bold red]FAIL[/]"
    console.print(verdict)
    return 0 if ok else 1
