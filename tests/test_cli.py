"""The ``unrolled`` command's entry point: help without torch, one command imported per run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import unrolled_cli

SRC = os.path.join(os.path.dirname(__file__), "..", "src")


def run(*code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run([sys.executable, "-c", "\n".join(code)], capture_output=True,
                          text=True, env=env, timeout=120)  # fmt: skip


def test_help_does_not_import_torch_and_describes_the_project():
    done = run(
        "import sys, unrolled_cli",
        "try:",
        "    unrolled_cli.main(['--help'])",
        "except SystemExit as e:",
        "    assert e.code == 0",
        "assert 'torch' not in sys.modules and 'unrolled' not in sys.modules",
    )
    assert done.returncode == 0, done.stderr
    assert "re-derived from first principles" in " ".join(done.stdout.split())
    for name in unrolled_cli.COMMANDS:
        assert name in done.stdout
    assert "commands/<name>.py" not in done.stdout  # no internal docstring


def test_a_command_imports_only_its_module():
    done = run(
        "import sys, unrolled_cli",
        "unrolled_cli.main(['build', '--help'])",
    )
    assert "usage: unrolled build" in done.stdout
    done = run(
        "import sys, unrolled.cli",
        "try:",
        "    unrolled.cli.main(['build', '--help'])",
        "except SystemExit:",
        "    pass",
        "loaded = [m for m in sys.modules if m.startswith('unrolled.commands.')]",
        "print(loaded)",
    )
    assert "['unrolled.commands.build']" in done.stdout, done.stdout + done.stderr


@pytest.mark.parametrize("argv", [[], ["nope"]])
def test_no_or_unknown_command_is_an_error_without_torch(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        unrolled_cli.main(argv)
    assert exited.value.code == 2
    assert "COMMAND" in capsys.readouterr().err
