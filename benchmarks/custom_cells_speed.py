"""Speed of the custom-cell machinery, measured side by side in one process (ratios, not times).

1. MinGRU: the log-space parallel scan vs the sequential steps, forward and training step.
2. ``step()`` latency for online inference at batch 1 vs ``torch.nn.GRU / LSTM / RNN`` called
   with ``T = 1``.

Run: ``PYTHONPATH=src python benchmarks/custom_cells_speed.py [--quick]``. Medians of
interleaved repeats; below 1 = unrolled is faster.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch
from torch import nn

import unrolled


def interleaved(functions, repeats: int, number: int) -> list[float]:
    """Median seconds per call of each function, timed in alternation so drift hits all."""
    for f in functions:
        for _ in range(max(1, number // 10)):
            f()
    samples = [[] for _ in functions]
    for _ in range(repeats):
        for k, f in enumerate(functions):
            start = time.perf_counter()
            for _ in range(number):
                f()
            samples[k].append((time.perf_counter() - start) / number)
    return [statistics.median(s) for s in samples]


def mingru(quick: bool, scan: str, batch: int, hidden: int) -> None:
    print(f"MinGRU parallel ({scan}) / sequential (B={batch}, I=H={hidden}, 1 layer, float32)")
    torch.manual_seed(0)
    model = unrolled.MinGRU(hidden, hidden, scan=scan)
    for steps in (256, 1024):
        x = torch.randn(steps, batch, hidden)

        def forward(parallel, x=x):
            with torch.no_grad():
                model(x, parallel=parallel)

        def train_step(parallel, x=x):
            model.zero_grad()
            out, _ = model(x, parallel=parallel)
            out.sum().backward()

        repeats, number = (3, 1) if quick else (5, 2)
        par, seq = interleaved([lambda: forward(True), lambda: forward(False)], repeats, number)
        print(
            f"  T={steps:5d} forward   parallel {par * 1e3:8.2f} ms  sequential "
            f"{seq * 1e3:8.2f} ms  ratio {par / seq:.3f}"
        )
        par, seq = interleaved(
            [lambda: train_step(True), lambda: train_step(False)], repeats, number
        )
        print(
            f"  T={steps:5d} fwd+bwd   parallel {par * 1e3:8.2f} ms  sequential "
            f"{seq * 1e3:8.2f} ms  ratio {par / seq:.3f}"
        )


def step_latency(quick: bool) -> None:
    hidden = 128
    print(f"step() at B=1, I=H={hidden}, 1 layer, float32, no_grad, vs torch.nn with T=1")
    for name, cls in (("GRU", nn.GRU), ("LSTM", nn.LSTM), ("RNN", nn.RNN)):
        torch.manual_seed(0)
        theirs = cls(hidden, hidden).eval()
        ours = unrolled.from_torch(theirs).eval()
        x = torch.randn(1, 1, hidden)
        h = torch.zeros(1, 1, hidden)
        state = (h, h) if name == "LSTM" else h
        x_t = x[0]
        repeats, number = (5, 300) if quick else (9, 1000)
        with torch.no_grad():
            mine, torch_time = interleaved(
                [partial(ours.step, x_t, state), partial(theirs, x, state)], repeats, number
            )
        print(
            f"  {name:4s} unrolled.step {mine * 1e6:7.1f} us  torch.nn T=1 "
            f"{torch_time * 1e6:7.1f} us  ratio {mine / torch_time:.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--wide", action="store_true", help="also B=32, H=256 (minutes)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for scan in ("doubling", "logcumsumexp"):
        mingru(args.quick, scan, 8, 64)
    if args.wide:
        mingru(True, "doubling", 32, 256)
    step_latency(args.quick)


if __name__ == "__main__":
    main()
