"""Graphs: torch.export and both ONNX exporters, unrolled vs torch.nn, and compile counts.

    python benchmarks/compiled.py [--json FILE]

(The speed of compiled models is measured by ``unrolled bench --compiled``: torch.compile'd
unrolled against eager unrolled and torch.nn, side by side, interleaved.)

PyTorch's word_language_model shape (2-layer LSTM, 200 units, T = 35, batch
20) exported with ``torch.export`` and both ONNX exporters, unrolled vs torch.nn: time and size
of the graph (ONNX files without their weights: ``external_data`` would hold them), and the
number of compiles of ``torch.compile(dynamic=True)`` over T in {1, 7, 33, 100}.
"""

from __future__ import annotations

import argparse
import io
import json
import time
import warnings

import torch

import unrolled.onnx
from unrolled.tools import benchmark


def graphs() -> dict:
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
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    cpu = benchmark.cpu_model()
    print(f"CPU: {cpu}; torch {torch.__version__}; {torch.get_num_threads()} threads")
    report = {"cpu": cpu, "torch": torch.__version__, "threads": torch.get_num_threads()}
    report["graphs"] = graphs()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
