"""MinGRU's training step: the parallel scan or the captured steps, whichever is faster here.

The parallel scan does ``O(T log T)`` elementwise work in ``log2 T`` rounds of whole-sequence
ops; the captured step (:mod:`unrolled.captured`) does ``O(T)`` work in ``T`` rounds of small
ops. Which wins depends on the shape and the machine (measured on an Intel Xeon, 2 threads: the
scan 5x faster at B=1, T=256, H=32 and 1.8x at B=4, T=2048, H=64; the steps 1.6-2.5x faster at
B=16, T=128, H=128 and wider). So, as :mod:`unrolled.tuning` does for the built-in layers, the
first training step of a *shape class* (dtype, threads, and T, B, I, H rounded up to powers of
two, T up to :data:`MAX_TRIAL_STEPS`) times both on a one-layer MinGRU of that class (weights
and inputs of its own), remembers the verdict in ``tuning.json`` and reports it in
:func:`unrolled.plan`. Without measuring (``UNROLLED_TUNING=off``), or where the step cannot be
captured, the parallel scan runs, as before.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import captured, tuning

PARALLEL, STEPS = "parallel scan", "captured steps"

#: Longest trial: a class of longer sequences is measured on this many steps.
MAX_TRIAL_STEPS = 2048


def class_sizes(steps: int, batch: int, input_size: int, hidden: int) -> tuple[int, ...]:
    """The class's ``(T, B, I, H)``: each rounded up to a power of two, T at most
    :data:`MAX_TRIAL_STEPS`."""
    rounded = tuning._ceil_pow2
    return (
        rounded(min(steps, MAX_TRIAL_STEPS)),
        rounded(batch),
        rounded(input_size),
        rounded(hidden),
    )


def parallel_wins(model, like: Tensor, steps: int, batch: int) -> tuple[bool, str]:
    """Whether ``model``'s training step on ``steps`` x ``batch`` runs the parallel scan, and
    the measurement behind it ("" when nothing was measured)."""
    if not tuning.enabled() or captured.why_not(model.cells[0], like):
        return True, ""
    sizes = class_sizes(steps, batch, model.input_size, model.hidden_size)
    dtype = str(like.dtype).removeprefix("torch.")
    key = (f"MinGRU training {dtype} threads{torch.get_num_threads()} "
           + " ".join(f"{name}{size}" for name, size in zip("TBIH", sizes)))  # fmt: skip
    verdict = tuning.fastest(key, lambda: trials(model, like, *sizes))
    return verdict.fastest == PARALLEL, f"{key}: {verdict}"


def trials(model, like: Tensor, steps: int, batch: int, input_size: int, hidden: int) -> dict:
    """A training step of a one-layer MinGRU of the class, each way."""
    from .mingru import MinGRU

    with torch.random.fork_rng(devices=[]):  # never the caller's random stream
        torch.manual_seed(0)
        layer = MinGRU(input_size, hidden, scan=model.scan_method, dtype=like.dtype,
                       device=like.device)  # fmt: skip
        x = torch.randn(steps, batch, input_size, dtype=like.dtype, device=like.device)

    def step(parallel: bool):
        def run():
            layer(x, parallel=parallel)[0].sum().backward()

        return run

    return {PARALLEL: step(True), STEPS: step(False)}
