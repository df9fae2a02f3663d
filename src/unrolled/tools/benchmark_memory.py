"""Peak memory of one training step, measured in a fresh process per implementation.

Why a subprocess: resident memory is a property of the whole process, and allocators keep what
they once took, so torch and unrolled measured in the same process would see each other's
leftovers. The child (``python -m unrolled.tools.benchmark_memory SPEC``) does:

1. build the layer and the input (``unrolled.tools.benchmark.build`` / ``make_input``, same seed
   as the timing run), then one warm-up training step: lazy initialisation, oneDNN primitive
   caches, autograd worker threads. That step also records ``saved_bytes``: the bytes of the
   distinct storages autograd saves for backward (``torch.autograd.graph.saved_tensors_hooks``),
   leaving out the parameters and the input, which exist anyway. It counts allocated bytes,
   exactly and independently of the allocator, whether or not every page was ever touched.
2. drop the grads, ``gc.collect()``, ``malloc_trim(0)`` so freed memory goes back to the OS,
   reset the kernel's peak-RSS counter (``echo 5 > /proc/self/clear_refs``) and read ``VmRSS``.
3. one training step (grads set to None, forward, ``output.sum().backward()``) and read the peak
   ``VmHWM``. ``peak_bytes = VmHWM - VmRSS before``: everything the step made resident at its
   worst moment: saved activations, temporaries, gradients, allocator overhead.

The parent sets ``MALLOC_MMAP_THRESHOLD_`` so glibc serves large blocks with mmap and returns
them on free (by default the threshold grows after the first large free, and the warm-up step's
memory would stay resident and hide the measured step's peak). Where ``/proc/self/clear_refs``
cannot be written (not Linux) the child falls back to ``ru_maxrss`` without the warm-up step and
says so in ``method``.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import torch

from . import benchmark

MMAP_THRESHOLD_BYTES = 64 * 1024


def measure(point: benchmark.Point, implementation: str, backend: str, threads: int,
            seed: int = 0, timeout_s: float = 600.0) -> dict:  # fmt: skip
    """Run the probe in a fresh interpreter; returns its JSON (``peak_bytes``, ``method``...)."""
    spec = {"point": point.to_dict(), "implementation": implementation, "backend": backend,
            "threads": threads, "seed": seed}  # fmt: skip
    package_root = str(Path(__file__).resolve().parents[2])  # src/: the child imports this copy
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD_BYTES)
    done = subprocess.run(
        [sys.executable, "-m", "unrolled.tools.benchmark_memory", json.dumps(spec)],
        capture_output=True, text=True, env=env, timeout=timeout_s,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(
            f"memory probe for {implementation} {point.mode} {point.shape.name} {point.config} "
            f"failed with exit status {done.returncode}:\n{done.stderr[-2000:]}"
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _status_bytes(field: str) -> int:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM) in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # 5: reset the peak resident set size (Linux >= 4.0)
        return True
    except OSError:
        return False


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to trim


def _maxrss_bytes() -> int:
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # macOS bytes, Linux kB


def _saved_bytes(step, existing: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages autograd saves during ``step()``, other than ``existing``."""
    existing_storages = {t.untyped_storage().data_ptr() for t in existing}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in existing_storages:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        step()
    return sum(saved.values())


def probe(spec: dict) -> dict:
    torch.set_num_threads(spec["threads"])
    point = benchmark.Point.from_dict(spec["point"])
    layer = benchmark.build(point, spec["implementation"], spec["backend"], spec["seed"])
    inputs = benchmark.make_input(point, spec["seed"] + 1)
    layer.train()
    step = benchmark.train_call(layer, inputs)
    parameters = list(layer.parameters())
    existing = [*parameters, getattr(inputs, "data", inputs)]  # resident before any step

    if _reset_peak_rss():
        saved_bytes = _saved_bytes(step, existing)  # the warm-up step
        for parameter in parameters:
            parameter.grad = None
        gc.collect()
        _malloc_trim()
        _reset_peak_rss()
        before = _status_bytes("VmRSS")
        step()
        peak = _status_bytes("VmHWM")
        method = "VmHWM - VmRSS around one step after a warm-up step"
    else:
        gc.collect()
        before = _maxrss_bytes()
        step()
        peak = _maxrss_bytes()
        saved_bytes = _saved_bytes(step, existing)
        method = "ru_maxrss growth over the first step (no warm-up; peak cannot be reset)"
    return {"peak_bytes": max(0, peak - before), "saved_bytes": saved_bytes,
            "baseline_bytes": before, "method": method}  # fmt: skip


if __name__ == "__main__":
    print(json.dumps(probe(json.loads(sys.argv[1]))))
