"""The ``unrolled`` command's entry point.

It lives outside the ``unrolled`` package so that ``unrolled --help`` answers at once:
``import unrolled`` loads torch (about 1.5 s). The commands themselves run in
:mod:`unrolled.cli`, which imports only the command asked for.
"""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = (
    "unrolled: PyTorch's recurrent layers (RNN, LSTM, GRU) re-derived from first principles "
    "and checked against torch.nn."
)
EPILOG = "Run 'unrolled COMMAND --help' for a command's options."

#: command name -> (module, one-line help)
COMMANDS = {
    "demo": (
        "unrolled.commands.demo",
        "a hand-written RNN beside torch.nn's: outputs and gradients",
    ),
    "verify": ("unrolled.commands.verify", "check unrolled against this machine's torch.nn"),
    "explain": ("unrolled.commands.explain", "step through a small RNN, equation by equation"),
    "bench": ("unrolled.commands.bench", "time unrolled against torch.nn, side by side"),
    "build": ("unrolled.commands.build", "build the fast backend's native loops ahead of use"),
}


def parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and one sub-parser per command, not yet configured (configuring one
    imports its module)."""
    top = argparse.ArgumentParser(prog="unrolled", description=DESCRIPTION, epilog=EPILOG)
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    subparsers = {
        name: sub.add_parser(name, help=help_text, description=help_text)
        for name, (_, help_text) in COMMANDS.items()
    }
    return top, subparsers


def command_of(argv: list[str]) -> str | None:
    """The command named in ``argv`` (its first word that is not an option), if any."""
    return next((word for word in argv if not word.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if command_of(argv) not in COMMANDS:  # help, or a mistake: argparse answers, no torch
        top, _ = parser()
        top.parse_args(argv)  # exits: the help, or what is wrong
    from unrolled.cli import main as run

    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
