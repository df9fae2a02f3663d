"""Time ``unrolled`` against ``torch.nn`` side by side: the grid, the timer, the summary.

Method (benchmarks/README.md, "Method"): for each grid point build a ``torch.nn`` layer and its twin
``unrolled.from_torch(layer, backend=...)`` (same weights, same input), warm both up, then
interleave: every repeat times torch and unrolled once each, alternating which goes first, with
``time.perf_counter``. A sample is several calls long when one call is too short to time well.
The reported number is the median seconds per call; ``ratio = median_unrolled / median_torch``
(below 1 = unrolled is faster). Absolute times drift on shared machines; ratios of interleaved
medians hold.

- forward: ``module.eval()`` under ``torch.no_grad()`` (inference).
- train: ``module.train()``, grads set to None, forward, ``output.sum().backward()``. The input
  does not require grad, as in a real first layer.

The peak memory of a training step is measured in a fresh subprocess per implementation, see
:mod:`unrolled.tools.benchmark_memory`.
"""

from __future__ import annotations

import gc
import math
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import unrolled
from unrolled import modes
from unrolled.fast import native

from . import compare

IMPLEMENTATIONS = ("torch", "unrolled")
MODES = tuple(modes.CLI_NAMES)  # the command line's names: rnn_tanh, rnn_relu, lstm, gru
DEFAULT_MODES = ("rnn_tanh", "lstm", "gru")
DEFAULT_CONFIGS = ("1uni", "2bi")


@dataclass(frozen=True)
class Shape:
    name: str
    batch: int  # B
    steps: int  # T
    input_size: int  # I
    hidden_size: int  # H


SHAPES = {
    "S": Shape("S", 1, 256, 32, 32),
    "M": Shape("M", 16, 128, 64, 128),
    "L": Shape("L", 64, 64, 256, 256),
    "XL": Shape("XL", 32, 32, 512, 1024),
}
DEFAULT_SHAPES = tuple(SHAPES)


@dataclass(frozen=True)
class Point:
    """One grid point: what is built and timed, for torch and unrolled alike."""

    mode: str
    shape: Shape
    layers: int
    bidirectional: bool
    packed: bool = False
    dtype: str = "float32"

    @property
    def config(self) -> str:
        return f"{self.layers}{'bi' if self.bidirectional else 'uni'}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Point:
        return cls(**{**data, "shape": Shape(**data["shape"])})


@dataclass(frozen=True)
class Settings:
    backend: str = "fast"
    repeats: int = 7
    warmup: int = 2
    min_sample_s: float = 0.05  # a sample repeats the call until it is at least this long
    seed: int = 0
    compiled: bool = False  # also time torch.compile(unrolled layer): "compiled"


# ---------------------------------------------------------------------------------------------
# parsing the grid from the command line


def parse_shape(text: str) -> Shape:
    """``S``/``M``/``L``/``XL``, or a literal ``BxTxIxH`` such as ``2x8x4x6``."""
    if text.upper() in SHAPES:
        return SHAPES[text.upper()]
    match = re.fullmatch(r"(\d+)x(\d+)x(\d+)x(\d+)", text)
    if not match:
        raise ValueError(
            f"shape must be one of {list(SHAPES)} or BxTxIxH like 2x8x4x6, got {text!r}"
        )
    batch, steps, input_size, hidden_size = (int(g) for g in match.groups())
    if min(batch, steps, input_size, hidden_size) < 1:
        raise ValueError(f"shape sizes must be >= 1, got {text!r}")
    return Shape(text, batch, steps, input_size, hidden_size)


def parse_config(text: str) -> tuple[int, bool]:
    """``1uni``, ``2bi``, ... -> (layers, bidirectional)."""
    match = re.fullmatch(r"(\d+)(uni|bi)", text)
    if not match or int(match.group(1)) < 1:
        raise ValueError(f"config must look like 1uni or 2bi (layers >= 1), got {text!r}")
    return int(match.group(1)), match.group(2) == "bi"


def parse_mode(text: str) -> str:
    if text not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {text!r}")
    return text


def grid(modes, shapes, configs, *, packed: bool = False, dtype: str = "float32") -> list[Point]:
    """Every (mode, shape, config) combination, in that nesting order."""
    return [
        Point(mode, shape, layers, bidirectional, packed, dtype)
        for mode in modes
        for shape in shapes
        for layers, bidirectional in configs
    ]


def quick_shape(shape: Shape) -> Shape:
    """``--quick``: the same widths with a quarter of the time steps (at least 8)."""
    return Shape(shape.name, shape.batch, max(8, shape.steps // 4), shape.input_size,
                 shape.hidden_size)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# building a point


def torch_layer(point: Point) -> nn.RNNBase:
    """The torch.nn layer of a point (torch's initialisation, from the current seed)."""
    shape, mode = point.shape, modes.of(modes.CLI_NAMES[point.mode])
    kwargs = dict(num_layers=point.layers, bidirectional=point.bidirectional,
                  dtype=getattr(torch, point.dtype))  # fmt: skip
    if mode.nonlinearity is not None:
        kwargs["nonlinearity"] = mode.nonlinearity
    return getattr(nn, mode.torch_class)(shape.input_size, shape.hidden_size, **kwargs)


def make_lengths(point: Point, generator: torch.Generator) -> torch.Tensor:
    """Uneven lengths from T/4 to T; the first is T so the padded length stays T."""
    steps = point.shape.steps
    lengths = torch.randint(max(1, steps // 4), steps + 1, (point.shape.batch,),
                            generator=generator)  # fmt: skip
    lengths[0] = steps
    return lengths


def make_input(point: Point, seed: int):
    """Time-major ``(T, B, I)`` input, or a PackedSequence of it when ``point.packed``."""
    generator = torch.Generator().manual_seed(seed)
    shape = point.shape
    x = torch.randn(shape.steps, shape.batch, shape.input_size, generator=generator,
                    dtype=getattr(torch, point.dtype))  # fmt: skip  # (T, B, I)
    if not point.packed:
        return x
    return pack_padded_sequence(x, make_lengths(point, generator), enforce_sorted=False)


def build(point: Point, implementation: str, backend: str, seed: int):
    """The layer for ``implementation`` ("torch" or "unrolled"), built from the same seed."""
    torch.manual_seed(seed)
    layer = torch_layer(point)
    if implementation == "unrolled":
        layer = unrolled.from_torch(layer, backend=backend)
    elif implementation != "torch":
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    return layer


def output_tensor(result) -> torch.Tensor:
    """The output of ``layer(x)``: a tensor, or the ``.data`` of a PackedSequence."""
    output = result[0]
    return output.data if hasattr(output, "batch_sizes") else output


def forward_call(layer: nn.Module, inputs) -> Callable[[], None]:
    def forward() -> None:
        with torch.no_grad():
            layer(inputs)

    return forward


def train_call(layer: nn.Module, inputs) -> Callable[[], None]:
    parameters = list(layer.parameters())

    def train_step() -> None:
        for parameter in parameters:
            parameter.grad = None
        output_tensor(layer(inputs)).sum().backward()

    return train_step


# ---------------------------------------------------------------------------------------------
# timing


def time_interleaved(calls: dict[str, Callable[[], None]], settings: Settings) -> dict[str, dict]:
    """Median seconds per call of each entry of ``calls``, sampled alternately.

    Each callable is warmed up; its fastest warm-up call chooses how many calls make one sample
    at least ``settings.min_sample_s`` long. Then ``settings.repeats`` rounds each take one sample
    of every callable, the order reversed every other round so neither always runs first.
    """
    calls_per_sample = {}
    for name, call in calls.items():
        # the fastest of the warm-up calls and one more: a single call can be caught by a stall
        fastest = min(_sample(call, 1) for _ in range(settings.warmup + 1))
        calls_per_sample[name] = max(1, math.ceil(settings.min_sample_s / max(fastest, 1e-9)))

    samples: dict[str, list[float]] = {name: [] for name in calls}
    order = list(calls)
    gc.collect()  # once: a full collection per sample costs more than many small calls
    for repeat in range(settings.repeats):
        for name in order if repeat % 2 == 0 else reversed(order):
            samples[name].append(_sample(calls[name], calls_per_sample[name]))
    return {
        name: {
            "median_s": statistics.median(samples[name]),
            "min_s": min(samples[name]),
            "noise": relative_deviation(samples[name]),
            "samples_s": samples[name],
            "calls_per_sample": calls_per_sample[name],
        }
        for name in calls
    }


def relative_deviation(samples: list[float]) -> float:
    """Median absolute deviation over the median: 0.05 means samples typically 5% off."""
    median = statistics.median(samples)
    return statistics.median(abs(s - median) for s in samples) / median


def _sample(call: Callable[[], None], count: int) -> float:
    """Seconds per call over ``count`` back-to-back calls, without the cyclic GC firing inside."""
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(count):
            call()
        return (time.perf_counter() - start) / count
    finally:
        gc.enable()


def check_parity(layers: dict[str, nn.Module], inputs, dtype: torch.dtype) -> dict:
    """Largest |difference| of the forward outputs, and whether it is within the tolerance of
    ``dtype`` (checked before timing: a wrong fast path must not look fast)."""
    with torch.no_grad():
        theirs = output_tensor(layers["torch"](inputs))
        ours = output_tensor(layers["unrolled"](inputs))
    found = compare.difference("output", ours, theirs, dtype, equal_nan=False)
    return {"max_abs_diff": found.error, "ok": found.passed}


def run_point(point: Point, settings: Settings, peak: bool = False) -> dict:
    """Time forward and training step of torch and unrolled for one point; with ``peak``, also
    the machine's matrix-multiply rate (:func:`peak_probe`) in the same interleaved rounds as the
    forwards, and each forward's fraction of it."""
    layers = {name: build(point, name, settings.backend, settings.seed) for name in IMPLEMENTATIONS}
    inputs = make_input(point, settings.seed + 1)
    for layer in layers.values():
        layer.eval()
    parity = check_parity(layers, inputs, getattr(torch, point.dtype))
    if settings.compiled:  # the same module (same parameters) compiled: its own graphs
        torch._dynamo.reset()  # each point compiles afresh (dynamo's recompile limit)
        layers["compiled"] = torch.compile(layers["unrolled"])
        twins = {"torch": layers["torch"], "unrolled": layers["compiled"]}
        parity["compiled"] = check_parity(twins, inputs, getattr(torch, point.dtype))
        parity["ok"] = parity["ok"] and parity["compiled"]["ok"]
    calls = {n: forward_call(m, inputs) for n, m in layers.items()}
    if peak:
        probe, probe_flops = peak_probe(getattr(torch, point.dtype))
        calls[PEAK_PROBE] = probe
    forward = time_interleaved(calls, settings)
    probe_timing = forward.pop(PEAK_PROBE, None)
    for layer in layers.values():
        layer.train()
    train = time_interleaved({n: train_call(m, inputs) for n, m in layers.items()}, settings)
    record = point.to_dict()
    record.update(
        config=point.config, parity=parity, plan=str(unrolled.plan(layers["unrolled"], inputs))
    )
    for phase, timing in (("forward", forward), ("train", train)):
        record[phase] = {**timing, "ratio": ratio(timing)}
        if settings.compiled:  # compiled / torch and compiled / eager unrolled
            record[phase]["compiled_ratio"] = ratio(timing, "compiled")
            record[phase]["compiled_vs_eager"] = ratio(timing, "compiled", "unrolled")
    record["forward_flops"] = forward_flops(point)
    if probe_timing is not None:
        peak_flops = probe_flops / probe_timing["median_s"]
        record["peak_gflops"] = peak_flops / 1e9
        for name in IMPLEMENTATIONS:
            rate = record["forward_flops"] / forward[name]["median_s"]
            record["forward"][name]["peak_fraction"] = rate / peak_flops
    record["noise"] = max(t[name]["noise"] for t in (forward, train) for name in layers)
    return record


def ratio(timing: dict, ours: str = "unrolled", theirs: str = "torch") -> float:
    """``ours / theirs`` of the medians (unrolled / torch unless said): below 1 means ``ours``
    is faster."""
    return timing[ours]["median_s"] / timing[theirs]["median_s"]


def geometric_mean(values) -> float:
    values = list(values)
    if not values:
        return math.nan
    return math.exp(sum(math.log(v) for v in values) / len(values))


def summarize(records: list[dict]) -> dict[str, dict[str, float]]:
    """Geometric mean of the ratios per mode: forward, train, and memory when measured."""
    summary = {}
    for mode in dict.fromkeys(r["mode"] for r in records):
        rows = [r for r in records if r["mode"] == mode]
        summary[mode] = {
            "forward": geometric_mean(r["forward"]["ratio"] for r in rows),
            "train": geometric_mean(r["train"]["ratio"] for r in rows),
        }
        if all("compiled_ratio" in r["forward"] for r in rows):
            for phase in ("forward", "train"):
                for key in ("compiled_ratio", "compiled_vs_eager"):
                    values = (r[phase][key] for r in rows)
                    summary[mode][f"{phase} {key}"] = geometric_mean(values)
        memory = [r["memory"]["ratio"] for r in rows if r.get("memory", {}).get("ratio")]
        if memory:
            summary[mode]["memory"] = geometric_mean(memory)
    return summary


# ---------------------------------------------------------------------------------------------
# where it ran


def cpuinfo_field(name: str) -> str | None:
    """The first ``name`` line of /proc/cpuinfo (Linux), or None."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.split(":", 1)[0].strip() == name:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or what the platform module knows."""
    return cpuinfo_field("model name") or platform.processor() or platform.machine() or "unknown"


def cpu_vendor() -> str:
    """``AuthenticAMD``, ``GenuineIntel``, ... (/proc/cpuinfo), else the machine's kind."""
    return cpuinfo_field("vendor_id") or platform.machine() or "unknown"


PEAK_PROBE = "peak probe"
PEAK_PROBE_SIZE = 2048


def peak_probe(dtype: torch.dtype = torch.float32, size: int = PEAK_PROBE_SIZE):
    """A square ``torch.mm`` of ``size`` and its FLOPs: the machine's matrix-multiply rate with
    the threads in use, what "fraction of peak" is taken of. :func:`run_point` times it in the
    same interleaved rounds as the forwards, so that a machine whose speed drifts (a shared
    virtual machine: measured here, the same mm from 186 to 297 GFLOP/s within minutes) moves
    both alike and the fraction stays the forward's own."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator, dtype=dtype)
    b = torch.randn(size, size, generator=generator, dtype=dtype)
    return (lambda: torch.mm(a, b)), 2 * size**3


def forward_flops(point: Point) -> int:
    """Multiply-add FLOPs of one forward of a point: ``2 T B (I_l + H) G H`` per layer and
    direction (``I_l`` the layer's input, ``G`` the gates); the elementwise math is not counted."""
    shape, gates = point.shape, modes.of(modes.CLI_NAMES[point.mode]).num_gates
    directions = 2 if point.bidirectional else 1
    total = 0
    for layer in range(point.layers):
        layer_input = shape.input_size if layer == 0 else directions * shape.hidden_size
        total += directions * 2 * shape.steps * shape.batch * (layer_input + shape.hidden_size)
    return total * gates * shape.hidden_size


def load_average() -> float | None:
    """The 1-minute load average: above the core count, other processes compete for the CPUs."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def environment(threads: int) -> dict:
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "unrolled": unrolled.__version__,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "vendor": cpu_vendor(),
        "isa": native.instruction_set(),
        "engine_isa": native.engine_instruction_set(),
        "threads": threads,
        "cpu_count": os.cpu_count(),
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "fast_loops": native.status(),
    }
