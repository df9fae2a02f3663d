"""Compiled graphs: torch.compile'd unrolled vs eager unrolled vs torch.nn, and exports.

    python benchmarks/compiled.py [--repeats 15] [--json FILE]

Part 1, speed: for a few shapes and each of LSTM / GRU / RNN, a training step (forward +
``output.sum().backward()``) and an inference forward (``no_grad``), timed side by side in
one process, interleaved, medians: torch.nn eager, unrolled eager (fast backend) and
``torch.compile(unrolled)`` (inductor, CPU, each layer one ``unrolled::layer`` operator).
Ratios are against torch.nn.

Part 2, graphs: PyTorch's word_language_model shape (2-layer LSTM, 200 units, T = 35, batch
20) exported with ``torch.export`` and both ONNX exporters, unrolled vs torch.nn: time and size
of the graph (ONNX files without their weights: ``external_data`` would hold them), and the
number of compiles of ``torch.compile(dynamic=True)`` over T in {1, 7, 33, 100}.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import time
import warnings

import torch

import unrolled

SHAPES = [  # (B, T, I, H, layers, bidirectional)
    (1, 128, 32, 32, 1, False),
    (16, 64, 64, 128, 1, False),
    (32, 64, 256, 256, 2, True),
]


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def train_step(module, x: torch.Tensor) -> None:
    for p in module.parameters():
        p.grad = None
    module(x)[0].sum().backward()


def forward_step(module, x: torch.Tensor) -> None:
    with torch.no_grad():
        module(x)


def seconds(step, module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    step(module, x)
    return time.perf_counter() - start


def speed(repeats: int) -> list[dict]:
    rows = []
    for mode in ("LSTM", "GRU", "RNN"):
        for batch, steps, inputs, hidden, layers, bi in SHAPES:
            torch._dynamo.reset()  # each model compiles afresh (dynamo's recompile limit)
            torch.manual_seed(0)
            ours = getattr(unrolled, mode)(inputs, hidden, layers, bidirectional=bi)
            runners = {"torch": ours.to_torch(), "eager": ours, "compiled": torch.compile(ours)}
            x = torch.randn(steps, batch, inputs)
            for kind, step in (("train", train_step), ("forward", forward_step)):
                for module in runners.values():  # warm up (and compile)
                    step(module, x)
                    step(module, x)
                samples = {name: [] for name in runners}
                for r in range(repeats):  # interleaved, alternating which goes first
                    order = list(runners.items())
                    for name, module in order if r % 2 == 0 else order[::-1]:
                        samples[name].append(seconds(step, module, x))
                med = {name: statistics.median(s) * 1e3 for name, s in samples.items()}
                row = dict(mode=mode, kind=kind, B=batch, T=steps, I=inputs, H=hidden,
                           layers=layers, bidirectional=bi, torch_ms=med["torch"],
                           eager_ms=med["eager"], compiled_ms=med["compiled"])  # fmt: skip
                rows.append(row)
                print(
                    f"{mode:4} {kind:7} B={batch:2} T={steps:3} I={inputs:3} H={hidden:3} "
                    f"{layers}{'bi' if bi else 'uni'}  torch {med['torch']:8.2f} ms  "
                    f"eager {med['eager'] / med['torch']:.2f}x  "
                    f"compiled {med['compiled'] / med['torch']:.2f}x  "
                    f"(compiled/eager {med['compiled'] / med['eager']:.2f})",
                    flush=True,
                )
    return rows


def graphs() -> dict:
    import unrolled.onnx

    torch.manual_seed(0)
    ours = unrolled.LSTM(200, 200, 2).eval()
    twin = ours.to_torch().eval()
    x = torch.randn(35, 20, 200)
    result = {}
    for name, model in (("torch.nn", twin), ("unrolled", ours)):
        start = time.perf_counter()
        exported = torch.export.export(model, (x,))
        nodes = sum(1 for n in exported.graph.nodes if n.op == "call_function")
        result[f"{name} torch.export"] = dict(seconds=time.perf_counter() - start, nodes=nodes)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            buffer = io.BytesIO()
            start = time.perf_counter()
            torch.onnx.export(model, (x,), buffer, dynamo=False, input_names=["x"],
                              dynamic_axes={"x": {0: "T", 1: "B"}})  # fmt: skip
            result[f"{name} ONNX (TorchScript)"] = dict(
                seconds=time.perf_counter() - start, graph_bytes=graph_bytes(buffer.getvalue())
            )
            start = time.perf_counter()
            try:
                table = unrolled.onnx.translation_table() if model is ours else None
                program = torch.onnx.export(
                    model, (x,), dynamo=True, verbose=False, custom_translation_table=table,
                    dynamic_shapes={"input": {0: torch.export.Dim("T"), 1: torch.export.Dim("B")}},
                )  # fmt: skip
                buffer = io.BytesIO()
                program.save(buffer)
                entry = dict(seconds=time.perf_counter() - start,
                             graph_bytes=graph_bytes(buffer.getvalue()))  # fmt: skip
            except Exception as error:  # torch.nn's LSTM with a dynamic T, in some torch versions
                entry = dict(error=f"{type(error).__name__}: {str(error).splitlines()[0][:160]}")
            result[f"{name} ONNX (dynamo)"] = entry
    from torch._dynamo.utils import counters

    for name, model in (("torch.nn", twin), ("unrolled", ours)):
        torch._dynamo.reset()
        counters.clear()
        compiled = torch.compile(model, backend="aot_eager", dynamic=True)
        with torch.no_grad():
            for steps in (1, 7, 33, 100):
                compiled(torch.randn(steps, 20, 200))
        result[f"{name} compiles over T in 1,7,33,100"] = counters["stats"]["unique_graphs"]
    for key, value in result.items():
        print(f"{key:45} {value}")
    return result


def graph_bytes(model_bytes: bytes) -> int:
    """Size of an ONNX model without its weights (the initializers' raw data)."""
    import onnx

    model = onnx.load_from_string(model_bytes)
    for tensor in model.graph.initializer:
        tensor.ClearField("raw_data")
        tensor.ClearField("float_data")
    return len(model.SerializeToString())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", default="")
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args()
    print(f"CPU: {cpu_name()}; torch {torch.__version__}; {torch.get_num_threads()} threads")
    report = {"cpu": cpu_name(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    report["graphs"] = graphs()
    if not args.skip_speed:
        report["speed"] = speed(args.repeats)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
