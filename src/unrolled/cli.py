"""``unrolled <command>``: each command lives in ``unrolled/commands/<name>.py`` and provides
``configure(parser)`` and ``run(args) -> exit status``. Imported lazily so ``--help`` is quick."""

from __future__ import annotations

import argparse
import importlib
import sys

#: command name -> (module, one-line help)
COMMANDS = {
    "demo": ("unrolled.commands.demo", "the notebook's experiment: hand-written RNN vs torch.nn"),
    "verify": ("unrolled.commands.verify", "check unrolled against this machine's torch.nn"),
    "explain": ("unrolled.commands.explain", "step through a small RNN, equation by equation"),
    "bench": ("unrolled.commands.bench", "time unrolled against torch.nn, side by side"),
    "build": ("unrolled.commands.build", "build the fast backend's native loops ahead of use"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="unrolled", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = {}
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        module.configure(sub.add_parser(name, help=help_text, description=help_text))
        modules[name] = module
    args = parser.parse_args(argv)
    return int(modules[args.command].run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
