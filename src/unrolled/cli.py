"""``unrolled <command>``: each command lives in ``unrolled/commands/<name>.py`` and provides
``configure(parser)`` and ``run(args) -> exit status``. Only the command asked for is imported;
the entry point (:mod:`unrolled_cli`) answers ``--help`` without importing this package."""

from __future__ import annotations

import importlib
import sys

from unrolled_cli import COMMANDS, command_of, parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    top, subparsers = parser()
    name = command_of(argv)
    module = None
    if name in COMMANDS:
        module = importlib.import_module(COMMANDS[name][0])
        module.configure(subparsers[name])
    args = top.parse_args(argv)  # without a known command it prints the error and exits
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
