"""Conformance campaign: unrolled against the torch.nn installed on this machine.

Usage from Python::

    from unrolled.tools import conformance
    cases = conformance.fixed_sweep() + conformance.random_cases(20, seed=0)
    results = conformance.run_campaign(cases)
    assert all(r.passed for r in results)

``unrolled verify`` is the command-line face of the same functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from .cases import (
    BACKENDS,
    CELL_MODES,
    FORMS,
    LAYER_MODES,
    Case,
    fixed_sweep,
    quick_sweep,
    random_cases,
)
from .check import TOLERANCES, Result, run_case
from .report import Row, summarize, to_json

__all__ = [
    "BACKENDS",
    "CELL_MODES",
    "FORMS",
    "LAYER_MODES",
    "TOLERANCES",
    "Case",
    "Result",
    "Row",
    "check_device",
    "default_cases",
    "fixed_sweep",
    "quick_sweep",
    "random_cases",
    "run_campaign",
    "run_case",
    "summarize",
    "to_json",
]


def check_device(device: str) -> str:
    """Return ``device`` if usable here, else raise a ValueError that says why."""
    try:
        kind = torch.device(device).type
    except RuntimeError:  # torch's message lists every device type it knows
        hint = " (for an NVIDIA GPU: cuda)" if device.lower().startswith("gpu") else ""
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}{hint}") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was requested but CUDA is not available here "
            f"(torch {torch.__version__}, built with CUDA {torch.version.cuda or 'no'}); "
            "run on a machine with an NVIDIA GPU and a CUDA build of torch, or use --device cpu"
        )
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
    return device


def default_cases(count: int, seed: int, device: str = "cpu", sweep: str = "full") -> list[Case]:
    """The fixed sweep (``"full"``, ``"quick"`` or ``"none"``) plus ``count`` random cases.

    On CUDA, torch.nn's dropout runs inside cuDNN with its own random stream, so dropout
    cases (which compare masks value for value) are left out there.
    """
    include_dropout = torch.device(device).type == "cpu"
    fixed = {"full": fixed_sweep, "quick": quick_sweep, "none": lambda _: []}[sweep]
    return fixed(include_dropout) + random_cases(count, seed, include_dropout)


def run_campaign(
    cases: Iterable[Case],
    device: str = "cpu",
    on_result: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Run every case; ``on_result`` is called after each (for a progress bar)."""
    check_device(device)
    results = []
    # cuDNN may use TF32 for float32 RNNs on Ampere+ GPUs (about 1e-3 relative error): that
    # would measure the GPU's arithmetic mode, not unrolled, so compare in full float32.
    # cuDNN's flags through its context manager (the global ones may be frozen, as torch's own
    # test utilities freeze them).
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):
            for case in cases:
                results.append(run_case(case, device))
                if on_result is not None:
                    on_result(results[-1])
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    return results
