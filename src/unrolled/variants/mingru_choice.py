"""MinGRU's training step: the parallel scan or the captured steps, whichever is faster here.

The parallel scan does ``O(T log T)`` elementwise work in ``log2 T`` rounds of whole-sequence
ops; the captured step (:mod:`unrolled.captured`) does ``O(T)`` work in ``T`` rounds of small
ops. Which wins depends on the shape and the machine (measured on an Intel Xeon, 2 threads: the
scan 5x faster at B=1, T=256, H=32 and 1.8x at B=4, T=2048, H=64; the steps 1.6-2.5x faster at
B=16, T=128, H=128 and wider). So, as :mod:`unrolled.tuning` does for the built-in layers, the
first training step of a *shape class* (:func:`unrolled.tuning.shape_class`, T up to
:data:`MAX_TRIAL_STEPS`) times both on a one-layer MinGRU shaped like the call's first layer
(weights and inputs of its own), remembers the verdict in ``tuning.json`` and reports it in
:func:`unrolled.plan`. Without measuring (``UNROLLED_TUNING=off``), or where the step cannot be
captured, the parallel scan runs, as before.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import captured, tuning

PARALLEL, STEPS = "parallel scan", "captured steps"

#: Longest trial: the scan's cost per step grows with T (log T rounds), so the trials run far
#: longer sequences than the built-in layers' (tuning.MAX_TRIAL_STEPS).
MAX_TRIAL_STEPS = 2048


def parallel_wins(model, like: Tensor, steps: int, batch: int) -> tuple[bool, str]:
    """Whether ``model``'s training step on ``steps`` x ``batch`` runs the parallel scan, and
    the measurement behind it ("" when nothing was measured)."""
    if not tuning.enabled() or captured.why_not(model.cells[0], like):
        return True, ""
    input_size, hidden = model.input_size, model.hidden_size
    key = tuning.shape_class("MinGRU training", like.dtype, 1, steps, batch, input_size, hidden,
                             max_steps=MAX_TRIAL_STEPS)  # fmt: skip
    trial_steps = tuning.trial_steps(steps, MAX_TRIAL_STEPS)
    verdict = tuning.fastest(
        key, lambda: trials(model, like, trial_steps, batch, input_size, hidden)
    )
    return verdict.fastest == PARALLEL, f"{key}: {verdict}"


def trials(model, like: Tensor, steps: int, batch: int, input_size: int, hidden: int) -> dict:
    """A training step of a one-layer MinGRU shaped like the call's first layer, each way, on
    weights and an input of its own."""
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
