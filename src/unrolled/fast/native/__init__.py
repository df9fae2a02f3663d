"""Native (C++) recurrence loops for the fast backend, compiled on first use.

The per-step work of a recurrent layer is one small GEMM plus the cell's elementwise math. In
Python that math is 6-8 separate torch kernels per step, each paying dispatch overhead and each
re-reading the gate buffer; at small sizes that overhead, not arithmetic, is the step's time.
The files here run the whole time loop in C++: the recurrent GEMM through ATen (the same BLAS
torch uses) and the elementwise math as one vectorised pass per batch row. The equations are
the Python loops' (``unrolled/fast/lstm.py``, ``gru.py``, ``rnn.py``), which stay the fallback
and the readable specification of what the loops do; each ``*.cpp`` file's header says which
buffers it shares with them and where it lays them out differently (the LSTM loop keeps torch's
gate order).

The extension is built with :func:`torch.utils.cpp_extension.load` the first time a layer
needs it (about 20 s; cached afterwards under torch's extension directory) and requires a C++
compiler. Without one, or with ``UNROLLED_NATIVE=0`` in the environment, the fast backend uses
its Python loops: same numbers, slower at small sizes. :func:`status` says which is in use.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

SOURCES = [
    Path(__file__).with_name(name)
    for name in ("lstm.cpp", "gru.cpp", "rnn.cpp", "activations.cpp", "graph.cpp")
]

_ops = None  # the torch.ops namespace once loaded
_reason = ""  # why the native loops are not in use ("" while untried or in use)
_tried = False
_enabled = True


def _compile_flags() -> list[str]:
    """Optimise for this machine: the extension is built where it runs."""
    flags = ["-O3", "-fno-math-errno"]  # no errno: lets the compiler vectorise nearbyint
    if platform.machine().lower() in ("x86_64", "amd64"):
        flags.append("-march=native")
    return flags


def _build() -> None:
    global _ops, _reason
    if os.environ.get("UNROLLED_NATIVE", "1") == "0":
        _reason = "disabled by UNROLLED_NATIVE=0"
        return
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        _reason = "no C++ compiler found (c++ or $CXX)"
        return
    try:
        import ninja  # the PyPI build of ninja, a dependency; torch calls `ninja` on PATH

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    except ImportError:
        pass
    from torch.utils.cpp_extension import load

    try:
        load(
            name="unrolled_native",
            sources=[str(path) for path in SOURCES],
            extra_cflags=_compile_flags(),
            is_python_module=False,
            verbose=os.environ.get("UNROLLED_NATIVE_VERBOSE") == "1",
        )
        _ops = torch.ops.unrolled
    except Exception as error:  # a compiler or linker problem: fall back, say why once
        _reason = f"build failed: {type(error).__name__}: {str(error).strip()[-300:]}"
        warnings.warn(
            f"unrolled: native recurrence loops unavailable ({_reason}); the fast backend "
            "uses its Python loops (same results, slower at small sizes)",
            RuntimeWarning,
            stacklevel=3,
        )


def ops():
    """The native ops (``torch.ops.unrolled``), building them on first call; None when they
    are unavailable or switched off (see :func:`status`)."""
    global _tried
    if not _enabled:
        return None
    if not _tried:
        _tried = True
        _build()
    return _ops


def usable(*tensors: torch.Tensor) -> object:
    """The native ops if they can run on these tensors (CPU, float32/float64), else None."""
    if not all(t.device.type == "cpu" for t in tensors):
        return None
    return ops()


def graph_released() -> bool:
    """Inside a layer's backward: True when the running backward frees the saved tensors of
    each node right after it (``retain_graph=False``), so that the layer may reuse its own
    saved internal buffers as space for its gradients. False with ``retain_graph=True``,
    outside a backward, without the native ops, or with a torch that does not export the
    query (see ``graph.cpp``): the safe answer."""
    kernels = ops()
    return kernels is not None and bool(kernels.graph_released())


def status() -> str:
    """One line: whether the native loops are in use, and if not, why."""
    if not _enabled:
        return "off (unrolled.fast.native.disabled())"
    if ops() is not None:
        return "native C++ loops"
    return f"Python loops ({_reason})"


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Run the fast backend's Python loops inside this block (for tests and comparisons)."""
    global _enabled
    previous, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = previous
