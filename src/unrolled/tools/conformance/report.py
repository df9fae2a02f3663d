"""Summaries of a campaign: the mode x feature table and the JSON record."""

from __future__ import annotations

import platform
from dataclasses import dataclass

import torch

import unrolled

from .cases import CELL_MODES, LAYER_MODES
from .check import TOLERANCES, Result

#: Row order of the table's features (anything else goes after, alphabetically).
FEATURE_ORDER = [
    "all cases",
    "backend=reference",
    "backend=fast",
    "multi-layer",
    "bidirectional",
    "batch_first",
    "bias=False",
    "proj_size",
    "hx given",
    "unbatched",
    "packed",
    "lengths=",
    "non-contiguous",
    "dropout",
    "float32",
    "float64",
    "a size of 1",
    "random",
]


@dataclass
class Row:
    """One (mode, feature) row of the summary."""

    mode: str
    feature: str
    cases: int = 0
    failed: int = 0
    output_error: float = 0.0
    gradient_error: float = 0.0

    @property
    def passed(self) -> bool:
        return self.failed == 0

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "feature": self.feature,
            "cases": self.cases,
            "failed": self.failed,
            "worst_output_error": self.output_error,
            "worst_gradient_error": self.gradient_error,
            "passed": self.passed,
        }


def summarize(results: list[Result]) -> list[Row]:
    """Group results by mode and by every feature each case exercises."""
    rows: dict[tuple[str, str], Row] = {}
    for result in results:
        for feature in result.case.features():
            key = (result.case.mode, feature)
            row = rows.setdefault(key, Row(*key))
            row.cases += 1
            row.failed += not result.passed
            row.output_error = max(row.output_error, result.output_error)
            row.gradient_error = max(row.gradient_error, result.gradient_error)
    modes = LAYER_MODES + CELL_MODES

    def order(key: tuple[str, str]) -> tuple:
        mode, feature = key
        rank = FEATURE_ORDER.index(feature) if feature in FEATURE_ORDER else len(FEATURE_ORDER)
        return modes.index(mode) if mode in modes else len(modes), rank, feature

    return [rows[key] for key in sorted(rows, key=order)]


def environment(device: str) -> dict:
    """What was tested against what: the facts a bug report needs."""
    info = {
        "unrolled": unrolled.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "threads": torch.get_num_threads(),
        "tolerances": {dtype: {"atol": a, "rtol": r} for dtype, (a, r) in TOLERANCES.items()},
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def to_json(results: list[Result], device: str, seed: int, seconds: float) -> dict:
    """The whole campaign as one JSON-ready dict: environment, summary and every case."""
    return {
        "passed": all(r.passed for r in results),
        "cases": len(results),
        "failed": sum(not r.passed for r in results),
        "seed": seed,
        "seconds": round(seconds, 3),
        "environment": environment(device),
        "summary": [row.to_dict() for row in summarize(results)],
        "results": [r.to_dict() for r in results],
    }
