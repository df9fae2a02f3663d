"""Which path each feature runs, and what it costs against the fast built-in layer.

    python benchmarks/paths.py [--batch 16 --steps 128 --input 64 --hidden 128] [--repeats 9]

For every feature the same size (one layer, unidirectional, float32 on the CPU unless the row
says otherwise), a training step (forward + ``output.sum().backward()``), timed interleaved
with the fast built-in layer of the same family in one process: the ratio is feature / fast
built-in (1.0 = as fast). Each row also prints ``unrolled.plan``'s runner for it, so the table
says both which code runs and what that costs. The numbers in docs/performance.md ("Which path
runs") come from this script.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import unrolled
from unrolled.tools import benchmark


class MyGRU(unrolled.Cell):
    """docs/custom_cells.md's GRU, written as a cell: the protocol's generic path."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.ih = nn.Linear(input_size, 3 * hidden_size)
        self.hh = nn.Linear(hidden_size, 3 * hidden_size)

    def project(self, x):
        return self.ih(x)  # (T, B, I) -> (T, B, 3H)

    def step(self, xp_t, h):
        x_r, x_z, x_n = xp_t.chunk(3, dim=-1)  # 3 x (B, H)
        h_r, h_z, h_n = self.hh(h).chunk(3, dim=-1)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        h = (1 - z) * torch.tanh(x_n + r * h_n) + z * h
        return h, h


def rows(I: int, H: int) -> list[tuple[str, str, nn.Module, torch.dtype]]:
    """(feature, baseline family, module, input dtype)."""
    return [
        ("LSTM, fast (baseline)", "LSTM", unrolled.LSTM(I, H), torch.float32),
        ("LSTM, backend='reference'", "LSTM", unrolled.LSTM(I, H, backend="reference"),
         torch.float32),
        ("LSTM, recurrent_dropout=0.1", "LSTM", unrolled.LSTM(I, H, recurrent_dropout=0.1),
         torch.float32),
        ("LSTM, zoneout=0.1", "LSTM", unrolled.LSTM(I, H, zoneout=0.1), torch.float32),
        ("LSTM, float64", "LSTM", unrolled.LSTM(I, H).double(), torch.float64),
        ("LSTM, bfloat16", "LSTM", unrolled.LSTM(I, H).bfloat16(), torch.bfloat16),
        ("LayerNormLSTM (Recurrent)", "LSTM", unrolled.Recurrent(
            lambda size: unrolled.LayerNormLSTM(size, H), I), torch.float32),
        ("GRU, fast (baseline)", "GRU", unrolled.GRU(I, H), torch.float32),
        ("GRU, backend='reference'", "GRU", unrolled.GRU(I, H, backend="reference"),
         torch.float32),
        ("GRU, recurrent_dropout=0.1", "GRU", unrolled.GRU(I, H, recurrent_dropout=0.1),
         torch.float32),
        ("GRU, zoneout=0.1", "GRU", unrolled.GRU(I, H, zoneout=0.1), torch.float32),
        ("LayerNormGRU (Recurrent)", "GRU", unrolled.Recurrent(
            lambda size: unrolled.LayerNormGRU(size, H), I), torch.float32),
        ("custom GRU cell (Recurrent)", "GRU", unrolled.Recurrent(lambda size: MyGRU(size, H), I),
         torch.float32),
        ("custom GRU cell, capture=False", "GRU", not_captured(
            unrolled.Recurrent(lambda size: MyGRU(size, H), I)), torch.float32),
        ("MinGRU (parallel scan)", "GRU", unrolled.MinGRU(I, H), torch.float32),
        ("IndRNN (Recurrent)", "GRU", unrolled.Recurrent(
            lambda size: unrolled.IndRNN(size, H), I), torch.float32),
        ("torch.nn.LSTM", "LSTM", nn.LSTM(I, H), torch.float32),
        ("torch.nn.GRU", "GRU", nn.GRU(I, H), torch.float32),
    ]  # fmt: skip


def not_captured(model: unrolled.Recurrent) -> unrolled.Recurrent:
    """The model with its cells' step never captured: the plain loop, one step() per step."""
    for cell in model.cells:
        cell.capture = False
    return model


def train_step(module: nn.Module, x: torch.Tensor):
    parameters = list(module.parameters())

    def step() -> None:
        for p in parameters:
            p.grad = None
        module(x)[0].float().sum().backward()

    return step


def seconds(calls: dict, repeats: int, min_sample_s: float = 0.05) -> dict[str, float]:
    """Median seconds per call, interleaved, each sample at least ``min_sample_s`` long."""
    counts = {}
    for name, call in calls.items():
        call()  # warm up
        start = time.perf_counter()
        call()
        counts[name] = max(1, int(min_sample_s / max(time.perf_counter() - start, 1e-9)))
    samples = {name: [] for name in calls}
    for r in range(repeats):
        for name in list(calls) if r % 2 == 0 else list(reversed(calls)):
            start = time.perf_counter()
            for _ in range(counts[name]):
                calls[name]()
            samples[name].append((time.perf_counter() - start) / counts[name])
    return {name: statistics.median(s) for name, s in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--input", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--min-sample-ms", type=float, default=200.0)
    args = parser.parse_args()
    torch.manual_seed(0)
    B, T, I, H = args.batch, args.steps, args.input, args.hidden
    print(f"CPU {benchmark.cpu_model()}; torch {torch.__version__}; "
          f"{torch.get_num_threads()} threads; B={B} T={T} I={I} H={H}, 1 layer, training "
          "step")  # fmt: skip
    table = rows(I, H)
    for family in ("LSTM", "GRU"):
        members = [r for r in table if r[1] == family]
        calls, plans = {}, {}
        for name, _, module, dtype in members:
            module.train()
            x = torch.randn(T, B, I, dtype=dtype)
            calls[name] = train_step(module, x)
            plans[name] = unrolled.plan(module, x).runner if name[:6] != "torch." else "torch.nn"
        times = seconds(calls, args.repeats, args.min_sample_ms / 1e3)
        base = times[members[0][0]]
        for name, *_ in members:
            print(f"{name:32} {plans[name]:28} {times[name] * 1e3:9.2f} ms  "
                  f"{times[name] / base:6.2f}x the fast {family}")  # fmt: skip


if __name__ == "__main__":
    main()
