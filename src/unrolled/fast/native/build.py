"""Building the native loops: where, when, what it says, and how it recovers from a killed build.

The extension is compiled for the machine it runs on (``-march=native``) with torch's
``cpp_extension`` into a folder of its own under the cache (``$UNROLLED_CACHE_DIR``, else
``$XDG_CACHE_HOME/unrolled``, else ``~/.cache/unrolled``), named after a hash of the sources,
the flags, torch's and Python's versions: a new version of either never loads a stale build.

Two processes must not build into one folder at once, and a build killed half-way (Ctrl-C, a
job timeout, ``docker stop``) must not block the next one. torch's own guard is a ``lock`` file
that a killed build leaves behind, and every later process waits on it forever. So the build
holds an OS file lock (``flock``) of its own while it runs: the operating system releases it
when its holder dies, however it dies. Whoever holds it knows that no build is running, so a
``lock`` file still there is stale and is removed. A process that finds the lock held waits for
the other build (a bounded wait, ``$UNROLLED_BUILD_WAIT`` seconds, 600 by default) and then
loads its result.

A build prints one line to stderr when it starts and one when it ends, with the time it took;
``UNROLLED_QUIET=1`` silences both. Everything that keeps the loops from being built raises
:class:`BuildError`, whose message names the cause and what to do about it.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

try:
    import fcntl
except ImportError:  # not POSIX: torch's own lock file only
    fcntl = None

NAME = "unrolled_native"
SOURCES = [
    Path(__file__).with_name(name)
    for name in (
        "lstm.cpp",
        "gru.cpp",
        "rnn.cpp",
        "activations.cpp",
        "graph.cpp",
        "engine.cpp",
        "masks.cpp",
        "layernorm.cpp",
        "captured.cpp",
    )
]
HEADERS = [Path(__file__).with_name(name) for name in ("common.h", "engine.h")]
DEFAULT_WAIT_SECONDS = 600.0


class BuildError(RuntimeError):
    """The native loops cannot be built or loaded here. ``cause`` is one of ``"switched off"``,
    ``"no compiler"``, ``"cache"``, ``"busy"``, ``"failed"``; the message says what to do."""

    def __init__(self, cause: str, message: str) -> None:
        super().__init__(message)
        self.cause = cause


def compile_flags() -> list[str]:
    """Optimise for this machine: the extension is built where it runs."""
    # No errno and no floating-point traps: the elementwise loops' clamps and roundings stay
    # branch-free, so the compiler vectorises them for every target, not only where AVX-512's
    # masks hide the difference (built for AVX2 without them, the cell math ran scalar: 5-10x
    # slower). Neither changes a result: IEEE arithmetic, NaN and signed zeros are untouched.
    flags = ["-O3", "-fno-math-errno", "-fno-trapping-math"]
    if platform.machine().lower() in ("x86_64", "amd64"):
        flags.append(f"-march={os.environ.get('UNROLLED_NATIVE_MARCH', 'native')}")
    flags += openmp_flags()
    return flags


def openmp_flags() -> list[str]:
    """ATen's ``parallel_for`` is an OpenMP region compiled into the caller: without
    ``-fopenmp`` it runs on the calling thread alone. Linux only (torch's wheels there use GNU
    OpenMP, whose ``libgomp.so.1`` torch has loaded already, so the loops join torch's one
    thread pool); elsewhere, or with ``UNROLLED_NATIVE_OPENMP=0`` (a compiler without OpenMP),
    the loops run their teams on one thread."""
    if platform.system() != "Linux" or os.environ.get("UNROLLED_NATIVE_OPENMP", "1") == "0":
        return []
    return ["-fopenmp"]


def cache_root() -> Path:
    """Where builds live: ``$UNROLLED_CACHE_DIR``, ``$XDG_CACHE_HOME/unrolled`` or
    ``~/.cache/unrolled``."""
    if os.environ.get("UNROLLED_CACHE_DIR"):
        return Path(os.environ["UNROLLED_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "unrolled"


def build_directory() -> Path:
    """This build's folder: its name changes with the sources, flags, torch and Python."""
    digest = hashlib.sha256()
    for path in SOURCES + HEADERS:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    for part in (*compile_flags(), torch.__version__, sys.version, platform.machine()):
        digest.update(part.encode() + b"\0")
    return cache_root() / f"native-{digest.hexdigest()[:16]}"


def compiler() -> str | None:
    """The C++ compiler torch will call (``$CXX`` or ``c++``), if it is on PATH."""
    return shutil.which(os.environ.get("CXX", "c++"))


def wait_seconds() -> float:
    try:
        return float(os.environ.get("UNROLLED_BUILD_WAIT", DEFAULT_WAIT_SECONDS))
    except ValueError:
        return DEFAULT_WAIT_SECONDS


def say(message: str) -> None:
    """One line to stderr, unless ``UNROLLED_QUIET=1``."""
    if os.environ.get("UNROLLED_QUIET", "0") != "1":
        print(f"unrolled: {message}", file=sys.stderr, flush=True)


def is_built(directory: Path) -> bool:
    """Whether a finished build is in ``directory`` (written last, after a successful load)."""
    return (directory / "built").exists()


@contextmanager
def exclusive(directory: Path, wait: float) -> Iterator[None]:
    """Hold the build lock of ``directory`` (an OS lock: released when its holder dies). Waits
    up to ``wait`` seconds for another process's build, then raises ``BuildError("busy")``."""
    if fcntl is None:
        yield
        return
    path = directory / "build.lock"
    with open(path, "a+") as handle:
        start, announced = time.monotonic(), False
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = path.read_text().strip() or "another process"
                if time.monotonic() - start > wait:
                    raise BuildError(
                        "busy",
                        f"{holder} has been building the native loops in {directory} for more "
                        f"than {wait:.0f} s (UNROLLED_BUILD_WAIT); if no such build is running, "
                        f"delete {directory} and run `unrolled build`",
                    ) from None
                if not announced:
                    say(f"waiting for {holder}, which is building the native loops in {directory}")
                    announced = True
                time.sleep(0.2)
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def remove_stale_torch_lock(directory: Path) -> bool:
    """torch's ``lock`` file, left by a build that was killed: remove it. Only called while
    holding :func:`exclusive`, when no build can be running. Returns whether there was one."""
    stale = directory / "lock"
    if not stale.exists():
        return False
    stale.unlink(missing_ok=True)
    return True


def watch(directory: Path, progress: Callable[[int, int], None], done: threading.Event) -> None:
    """Call ``progress(finished, total)`` as object files and the library appear."""
    total = len(SOURCES) + 1  # each source, then the link
    start = time.time()
    while not done.wait(0.5):
        outputs = list(directory.glob("*.o")) + list(directory.glob(f"{NAME}*.so"))
        progress(sum(path.stat().st_mtime >= start for path in outputs), total)


def load(progress: Callable[[int, int], None] | None = None) -> Path:
    """Build (or find built) and load the native loops into this process; returns their
    folder. ``progress(finished, total)`` is called while a build runs. Raises
    :class:`BuildError` when they cannot be built or loaded here."""
    if os.environ.get("UNROLLED_NATIVE", "1") == "0":
        raise BuildError("switched off", "switched off by UNROLLED_NATIVE=0")
    if compiler() is None:
        raise BuildError(
            "no compiler",
            f"no C++ compiler found ({os.environ.get('CXX', 'c++')} is not on PATH; install "
            "g++ or clang++, or point $CXX at one)",
        )
    directory = build_directory()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".writable-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise BuildError(
            "cache",
            f"the build folder {directory} is not writable ({error.strerror or error}); set "
            "UNROLLED_CACHE_DIR to a writable folder",
        ) from error
    _add_ninja_to_path()
    from torch.utils import cpp_extension

    with exclusive(directory, wait_seconds()):
        if remove_stale_torch_lock(directory):
            say(f"removed the lock file of an interrupted build in {directory}")
        fresh = not is_built(directory)
        if fresh:
            say(
                f"building the native loops for this machine in {directory} (once per torch "
                "version; about a minute on 2 cores)"
            )
        done = threading.Event()
        watcher = None
        if progress is not None and fresh:
            watcher = threading.Thread(target=watch, args=(directory, progress, done), daemon=True)
            watcher.start()
        start = time.monotonic()
        try:
            cpp_extension.load(
                name=NAME,
                sources=[str(path) for path in SOURCES],
                extra_cflags=compile_flags(),
                extra_ldflags=openmp_flags(),
                build_directory=str(directory),
                is_python_module=False,
                verbose=os.environ.get("UNROLLED_NATIVE_VERBOSE") == "1",
            )
        except Exception as error:  # a compiler or linker problem
            text = " ".join(str(error).split())  # one line: the compiler's last words
            tail = text if len(text) <= 300 else "..." + text[-300:]
            detail = f"{type(error).__name__}: {tail}"
            hint = (
                "; a compiler without OpenMP builds with UNROLLED_NATIVE_OPENMP=0"
                if openmp_flags() and "openmp" in text.lower()
                else ""
            )
            raise BuildError(
                "failed",
                f"the build failed ({detail}); UNROLLED_NATIVE_VERBOSE=1 shows the compiler's "
                f"output{hint}",
            ) from error
        finally:
            done.set()
            if watcher is not None:
                watcher.join()
        (directory / "built").touch()
        if fresh:
            say(f"native loops built in {time.monotonic() - start:.0f} s")
    return directory


def _add_ninja_to_path() -> None:
    """torch runs ``ninja`` from PATH; the PyPI build of ninja (a dependency) has it."""
    try:
        import ninja
    except ImportError:
        return
    if ninja.BIN_DIR not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
