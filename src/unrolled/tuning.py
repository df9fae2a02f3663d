"""Which time loop is fastest for a shape class on this machine: measured once, then remembered.

The fast backend can run a layer's time loop three ways on a CPU: the fused engine (native,
the project's own vector kernel, ``fast/native/engine.h``), the native loop with one BLAS call
per step, and the same loop in torch ops (the Python loops). Which is fastest depends on the
CPU (vector width, cache sizes, how its BLAS handles a GEMM of few rows) and on the shape. As
FFTW's plans and ``torch.backends.cudnn.benchmark`` do, the first call of a *shape class* times
the candidates on a sequence of that class (a forward of one layer, without autograd, on
weights and inputs of its own, never the caller's random stream), keeps the fastest and writes
the verdict to ``tuning.json`` beside the native build, so that later processes on the machine
do not measure again. :func:`unrolled.plan` reports the verdict and its times.

A shape class is the mode, dtype, number of directions and of threads, and the number of steps
(up to 64), batch, input and hidden sizes, each rounded up to a power of two.
``UNROLLED_TUNING=off`` skips measuring: the fused engine runs wherever it applies (the test
suite runs so, for plans that do not depend on the machine's mood).
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

#: Steps of a trial: the call's own T up to this many. A trial must be as long as the calls it
#: stands for: the fused engine packs its weights once per call, which a trial of 2 steps
#: charges to 2 steps instead of T (measured: on 2-step trials the engine lost shape classes it
#: wins 2:1 at T = 32).
MAX_TRIAL_STEPS = 64
#: Rounds of trials, each candidate once per round, the order reversed every other round. Five,
#: not three: on a shared machine whose speed comes and goes (a virtual machine's neighbours),
#: two slowed samples of the fastest candidate out of three made its median lose (seen on the
#: Intel Xeon of 2026-12-06: a bidirectional RNN shape class given to the per-step BLAS loop,
#: which then ran 1.4x torch.nn's time where the engine runs 0.8x); out of five it takes three.
ROUNDS = 5
FILE_NAME = "tuning.json"

_lock = threading.Lock()
_verdicts: dict[str, Verdict] | None = None  # loaded from the file on first use


@dataclass(frozen=True)
class Verdict:
    """The fastest candidate for a shape class, and every candidate's median time."""

    fastest: str
    seconds: dict[str, float]

    def __str__(self) -> str:
        """e.g. ``measured here: fused engine 0.41 ms, native BLAS loop 0.63 ms``."""
        times = ", ".join(f"{name} {sec * 1e3:.3g} ms" for name, sec in self.seconds.items())
        return f"measured here: {times}"


def enabled() -> bool:
    """Whether shape classes are measured (``UNROLLED_TUNING`` is not ``off``)."""
    return os.environ.get("UNROLLED_TUNING", "on").lower() not in ("off", "0", "no")


def shape_class(mode: str, dtype: torch.dtype, directions: int, num_steps: int, batch: int,
                input_size: int, hidden: int, max_steps: int = MAX_TRIAL_STEPS) -> str:  # fmt: skip
    """The key of a shape class, e.g. ``LSTM float32 D1 threads2 T64 B32 I256 H512``
    (``max_steps``: the longest trial, see :func:`trial_steps`)."""
    dtype_name = str(dtype).removeprefix("torch.")
    threads = torch.get_num_threads()
    sizes = (f"T{_ceil_pow2(trial_steps(num_steps, max_steps))} B{_ceil_pow2(batch)} "
             f"I{_ceil_pow2(input_size)} H{_ceil_pow2(hidden)}")  # fmt: skip
    return f"{mode} {dtype_name} D{directions} threads{threads} {sizes}"


def trial_steps(num_steps: int, max_steps: int = MAX_TRIAL_STEPS) -> int:
    """How many steps a trial of a call with ``num_steps`` steps runs: all of them, up to
    ``max_steps`` (:data:`MAX_TRIAL_STEPS` for the built-in layers' loops, whose cost per step
    does not depend on T; longer where it does, as for MinGRU's parallel scan)."""
    return max(1, min(max_steps, num_steps))


def fastest(key: str, make_trials: Callable[[], dict[str, Callable[[], None]]]) -> Verdict:
    """The verdict for shape class ``key``: remembered, or measured now by running each of
    ``make_trials()``'s candidates (name -> a call that runs one trial) ``ROUNDS`` times,
    interleaved (the order reversed every other round, so that none always follows the same
    one), and kept by median time."""
    with _lock:
        verdicts = _load()
        verdict = verdicts.get(key)
        if verdict is None:
            verdict = verdicts[key] = _measure(make_trials())
            _save(verdicts)
        return verdict


def _measure(trials: dict[str, Callable[[], None]]) -> Verdict:
    for trial in trials.values():  # warm up: first-touch allocations, caches, thread wake-up
        trial()  # (and the trial that could not be measured fairly without one)
    samples: dict[str, list[float]] = {name: [] for name in trials}
    order = list(trials)
    for round_ in range(ROUNDS):
        for name in order if round_ % 2 == 0 else reversed(order):
            trial = trials[name]
            start = time.perf_counter()
            trial()
            samples[name].append(time.perf_counter() - start)
    seconds = {name: statistics.median(times) for name, times in samples.items()}
    return Verdict(min(seconds, key=seconds.__getitem__), seconds)


def cache_file() -> Path:
    """``tuning.json`` in the native build's folder (it holds verdicts for that build)."""
    from .fast.native.build import build_directory

    return build_directory() / FILE_NAME


def forget() -> None:
    """Drop the remembered verdicts of this process (the file stays); for tests."""
    global _verdicts
    with _lock:
        _verdicts = None


def _load() -> dict[str, Verdict]:
    global _verdicts
    if _verdicts is None:
        _verdicts = {}
        try:
            stored = json.loads(cache_file().read_text())
            for key, entry in stored.items():
                _verdicts[key] = Verdict(entry["fastest"], dict(entry["seconds"]))
        except (OSError, ValueError, KeyError, TypeError):
            pass  # no file yet, or one this version cannot read: measure again
    return _verdicts


def _save(verdicts: dict[str, Verdict]) -> None:
    """Write all verdicts (another process may have written its own since: keep theirs too)."""
    path = cache_file()
    try:
        merged = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        merged = {}
    merged.update({k: {"fastest": v.fastest, "seconds": v.seconds} for k, v in verdicts.items()})
    try:
        temporary = path.with_name(f".{FILE_NAME}.{os.getpid()}")
        temporary.write_text(json.dumps(merged, indent=1, sort_keys=True))
        os.replace(temporary, path)
    except OSError:
        pass  # a read-only cache: the verdicts stay in this process


def _ceil_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()
