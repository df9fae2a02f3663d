"""The native build as users meet it: one line when a build starts and one when it ends, a build
killed half-way that does not block the next run, a build held by a live process waited for (a
bounded wait), and exactly one warning, naming the cause, for each way the build can be
impossible (no compiler, an unwritable cache, a failing compiler). Each runs in a fresh Python
process with its own cache folder."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from unrolled.fast import native
from unrolled.fast.native import build

#: A fresh process runs a forward and a backward twice on the fast backend and prints the plan.
TRAIN_TWICE = """
import torch, unrolled
layer = unrolled.LSTM(3, 4)
for _ in range(2):
    layer(torch.randn(5, 2, 3))[0].sum().backward()
print("PLAN", unrolled.plan(layer, torch.randn(5, 2, 3)))
from unrolled.fast import native
print("STATUS", native.status())
"""


def run_python(code: str, cache: Path, timeout: float = 120, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "UNROLLED_CACHE_DIR": str(cache), "PYTHONWARNINGS": "default"}
    environment.pop("UNROLLED_QUIET", None)
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-c", code], env=environment, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def runtime_warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "RuntimeWarning" in line]


needs_built = pytest.mark.skipif(
    native.ops() is None, reason=f"native loops unavailable: {native.status()}"
)


def copy_of_this_build(tmp_path: Path) -> Path:
    """The finished build of this process, copied into a cache folder of its own."""
    source = build.build_directory()
    target = tmp_path / "cache" / source.name
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("build.lock", "lock"))
    return target


# --- a killed build does not block the next run ------------------------------------------------


@needs_built
def test_a_stale_torch_lock_is_removed_not_waited_on(tmp_path):
    """What a build killed half-way leaves: torch's `lock` file. The next process holds the OS
    lock (nobody else can be building), removes it, says so, and runs the native loops."""
    directory = copy_of_this_build(tmp_path)
    (directory / "lock").touch()
    out = run_python(TRAIN_TWICE, directory.parent, timeout=90)
    assert out.returncode == 0, out.stderr
    assert "removed the lock file of an interrupted build" in out.stderr
    assert not (directory / "lock").exists()
    assert "STATUS native C++ loops" in out.stdout
    assert not runtime_warnings(out.stderr)


def hold_build_lock(directory: Path) -> subprocess.Popen:
    """Another process holding this build folder's OS lock, as a running build does."""
    code = (
        "import fcntl, sys, time\n"
        f"handle = open({str(directory / 'build.lock')!r}, 'a+')\n"
        "fcntl.flock(handle.fileno(), fcntl.LOCK_EX)\n"
        "handle.write('process holder'); handle.flush()\n"
        "print('held', flush=True)\n"
        "time.sleep(600)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


@needs_built
@pytest.mark.skipif(build.fcntl is None, reason="no OS file locks here")
def test_a_live_build_is_waited_for_then_given_up_on_with_a_warning(tmp_path):
    directory = copy_of_this_build(tmp_path)
    holder = hold_build_lock(directory)
    try:
        out = run_python(TRAIN_TWICE, directory.parent, UNROLLED_BUILD_WAIT="1")
    finally:
        holder.kill()
        holder.wait()
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("waiting for process holder") == 1
    warnings = runtime_warnings(out.stderr)
    assert len(warnings) == 1, out.stderr
    assert "has been building the native loops" in out.stderr and "delete" in out.stderr
    assert "STATUS Python loops" in out.stdout and "PLAN LSTM: python loops" in out.stdout


@needs_built
@pytest.mark.skipif(build.fcntl is None, reason="no OS file locks here")
def test_the_lock_of_a_killed_builder_is_free_at_once(tmp_path):
    directory = copy_of_this_build(tmp_path)
    holder = hold_build_lock(directory)
    holder.send_signal(signal.SIGKILL)  # a build killed half-way: the OS drops its lock
    holder.wait()
    (directory / "lock").touch()  # and torch's lock file stays behind
    start = time.monotonic()
    out = run_python(TRAIN_TWICE, directory.parent, UNROLLED_BUILD_WAIT="60")
    assert out.returncode == 0, out.stderr
    assert "STATUS native C++ loops" in out.stdout
    assert "waiting for" not in out.stderr
    assert time.monotonic() - start < 60


@pytest.mark.slow
@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None, reason="no compiler")
def test_a_first_build_killed_half_way_does_not_hang_the_next_run(tmp_path):
    """The real thing, two builds from scratch: start one, kill it while it compiles, then a new
    process builds and runs the native loops, with a start line and an end line."""
    cache = tmp_path / "cache"
    environment = {**os.environ, "UNROLLED_CACHE_DIR": str(cache)}
    environment.pop("UNROLLED_QUIET", None)
    first = subprocess.Popen(
        [sys.executable, "-c", "from unrolled.fast import native; native.ops()"],
        env=environment, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    assert "building the native loops" in first.stderr.readline()
    time.sleep(5)  # compiling now
    os.killpg(first.pid, signal.SIGKILL)  # the whole job, as a timeout or docker stop does
    first.wait()
    out = run_python(TRAIN_TWICE, cache, timeout=600, UNROLLED_BUILD_WAIT="30")
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("unrolled: ")]
    assert any("building the native loops" in line for line in lines), out.stderr
    assert any(line.startswith("unrolled: native loops built in ") for line in lines), out.stderr
    assert "STATUS native C++ loops" in out.stdout


# --- no build possible: exactly one warning each ------------------------------------------------


def test_no_compiler_gives_exactly_one_warning(tmp_path):
    out = run_python(TRAIN_TWICE, tmp_path / "cache", CXX=str(tmp_path / "no-such-compiler"))
    assert out.returncode == 0, out.stderr
    warnings = runtime_warnings(out.stderr)
    assert len(warnings) == 1, out.stderr
    assert "no C++ compiler found" in warnings[0]
    assert "Python loops" in warnings[0] and "same numbers as torch.nn" in warnings[0]
    assert "slower" in warnings[0]
    assert "PLAN LSTM: python loops" in out.stdout and "no C++ compiler" in out.stdout


def test_an_unwritable_cache_gives_exactly_one_warning(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = run_python(TRAIN_TWICE, blocker / "cache")
    assert out.returncode == 0, out.stderr
    warnings = runtime_warnings(out.stderr)
    assert len(warnings) == 1, out.stderr
    assert "not writable" in warnings[0] and "UNROLLED_CACHE_DIR" in warnings[0]
    assert "STATUS Python loops" in out.stdout


@pytest.mark.skipif(shutil.which("c++") is None, reason="no compiler to wrap")
def test_a_failing_build_gives_exactly_one_warning(tmp_path):
    """A compiler that answers --version but fails to compile anything."""
    fake = tmp_path / "broken-c++"
    fake.write_text(
        "#!/bin/sh\n"
        'case "$*" in *--version*|*-dumpversion*|"-v") exec c++ "$@";; esac\n'
        "echo 'broken-c++: internal error' >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    out = run_python(TRAIN_TWICE, tmp_path / "cache", CXX=str(fake), timeout=300)
    assert out.returncode == 0, out.stderr
    warnings = runtime_warnings(out.stderr)
    assert len(warnings) == 1, out.stderr
    assert "the build failed" in warnings[0] and "UNROLLED_NATIVE_VERBOSE=1" in warnings[0]
    assert "STATUS Python loops" in out.stdout


def test_switched_off_is_silent(tmp_path):
    out = run_python(TRAIN_TWICE, tmp_path / "cache", UNROLLED_NATIVE="0")
    assert out.returncode == 0, out.stderr
    assert not runtime_warnings(out.stderr) and "unrolled:" not in out.stderr
    assert "switched off by UNROLLED_NATIVE=0" in out.stdout


# --- the build folder --------------------------------------------------------------------------


def test_the_build_folder_follows_the_cache_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("UNROLLED_CACHE_DIR", str(tmp_path))
    assert build.build_directory().parent == tmp_path
    assert build.build_directory().name.startswith("native-")
    monkeypatch.delenv("UNROLLED_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert build.build_directory().parent == tmp_path / "xdg" / "unrolled"


def test_quiet_silences_the_build_lines(capsys, monkeypatch):
    monkeypatch.delenv("UNROLLED_QUIET", raising=False)
    build.say("hello")
    assert capsys.readouterr().err == "unrolled: hello\n"
    monkeypatch.setenv("UNROLLED_QUIET", "1")
    build.say("hello")
    assert capsys.readouterr().err == ""


def test_the_build_command(tmp_path):
    code = "import sys; from unrolled import cli; sys.exit(cli.main(['build', '--no-progress']))"
    environment = {**os.environ, "UNROLLED_NATIVE": "0"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=environment, capture_output=True, text=True
    )
    assert out.returncode == 1
    assert "switched off by UNROLLED_NATIVE=0" in out.stdout
    if native.ops() is not None:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert "native loops ready for this CPU" in out.stdout
        assert "LSTM: native loops (C++" in out.stdout
