"""Native (C++) recurrence loops for the fast backend, compiled on first use.

The per-step work of a recurrent layer is one small GEMM plus the cell's elementwise math. In
Python that math is 6-8 separate torch kernels per step, each paying dispatch overhead and each
re-reading the gate buffer; at small sizes that overhead, not arithmetic, is the step's time.
The files here run the whole time loop in C++: the recurrent GEMM through ATen (the same BLAS
torch uses) and the elementwise math as one vectorised pass per batch row. Each ``*.cpp`` file
keeps its family's buffer contract (``unrolled/fast/<family>.py``), and
``unrolled/fast/loops/`` is the same loops in torch ops, function for function: the fallback,
and the readable specification of what these loops do.

The extension is built the first time a layer needs it, or ahead of time by ``unrolled build``
(:mod:`.build`: where, what it prints, how a killed build is recovered). Without a C++
compiler, with a build that fails, or with ``UNROLLED_NATIVE=0``, the fast backend runs its
Python loops: the same numbers, slower at small sizes; each cause is one warning (none for
``UNROLLED_NATIVE=0``, which is asked for). :func:`status` says which is in use.

Which loops a layer runs is never decided here: :func:`unrolled.backends.plan` asks
:func:`ops` and :func:`is_disabled` once per call and records its answer for the backward.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable, Iterator

import torch

from .build import BuildError, load

_lock = threading.Lock()  # held by the one thread that builds
_ops = None  # the torch.ops namespace once loaded
_reason = ""  # why the native loops are not in use ("" while untried or in use)
_state = "untried"  # untried | ready | unavailable
_local = threading.local()  # per thread: how deep inside disabled()


def ops(progress: Callable[[int, int], None] | None = None):
    """The native ops (``torch.ops.unrolled``), building them on the first call; None where
    they are unavailable (see :func:`status`), and None at once, without waiting, while another
    thread is building them. ``progress(finished, total)`` is told how a build advances."""
    global _ops, _reason, _state
    if _state != "untried" or not _lock.acquire(blocking=False):
        return _ops
    try:
        if _state == "untried":
            load(progress)
            _ops, _state = torch.ops.unrolled, "ready"
    except BuildError as error:
        _reason, _state = str(error), "unavailable"
        if error.cause != "switched off":
            warnings.warn(
                f"unrolled: the native loops are unavailable: {error}. The fast backend runs "
                "its Python loops instead: the same numbers as torch.nn, several times slower "
                "at small sizes",
                RuntimeWarning,
                stacklevel=2,
            )
    finally:
        _lock.release()
    return _ops


def unavailable_reason() -> str:
    """Why :func:`ops` gives None now ("" once the native loops are loaded)."""
    if _state == "untried":
        return "the native loops are being built in another thread"
    return _reason


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Layers called inside this block, in this thread, plan the Python loops (for tests and
    comparisons). Other threads are not affected, and neither is any graph: a backward runs
    the loops its forward's plan chose, wherever and whenever it runs."""
    _local.depth = getattr(_local, "depth", 0) + 1
    try:
        yield
    finally:
        _local.depth -= 1


def is_disabled() -> bool:
    """Whether this thread is inside :func:`disabled`."""
    return getattr(_local, "depth", 0) > 0


def graph_released() -> bool:
    """Inside a layer's backward: True when the running backward frees the saved tensors of
    each node right after it (``retain_graph=False``), so that the layer may reuse its own
    saved internal buffers as space for its gradients. False with ``retain_graph=True``,
    outside a backward, without the native ops loaded, or with a torch that does not export
    the query (see ``graph.cpp``): the safe answer. Never builds anything."""
    return _ops is not None and bool(_ops.graph_released())


def packed_gemm_available() -> bool:
    """Whether the loaded native ops can use MKL's packed GEMM (this torch build has it)."""
    return _ops is not None and bool(_ops.packed_gemm_available())


def instruction_set() -> str:
    """The vector instruction set the native loops are compiled for on this CPU, as torch
    names it (``AVX512``, ``AVX2``, ``DEFAULT``...)."""
    return torch.backends.cpu.get_cpu_capability()


def engine_instruction_set() -> str:
    """The vector code of the fused engine's kernel in the loaded build (``AVX-512``, ``AVX2``,
    ``NEON`` or ``scalar``: what the compiler targets here, ``-march=native``); "" while the
    native loops are not loaded. Never builds anything."""
    return str(_ops.engine_instruction_set()) if _ops is not None else ""


def status() -> str:
    """One line: whether this thread's layers run the native loops, and if not, why."""
    if is_disabled():
        return "Python loops (unrolled.fast.native.disabled() in this thread)"
    if ops() is not None:
        return "native C++ loops"
    return f"Python loops ({unavailable_reason()})"


__all__ = [
    "BuildError",
    "disabled",
    "engine_instruction_set",
    "graph_released",
    "instruction_set",
    "is_disabled",
    "ops",
    "packed_gemm_available",
    "status",
    "unavailable_reason",
]
