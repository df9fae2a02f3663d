"""``torch.compile`` (inductor, CPU) and ``torch.export`` on unrolled's layers.

For a fixed input shape the compiled model must give what eager gives: outputs, final states and
the gradients of the input, the initial state and every parameter (float32 tolerances). An
exported eval-mode model with a fixed ``T`` must give what eager gives.

Compilation dominates the time (inductor writes and builds C++ for the forward and the
backward graph), so the default run compiles ONE model that chains RNN -> LSTM -> GRU per
backend; the per-module sweeps with layers, directions and projections are marked slow.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from parity import assert_close, clone_structure, leaves, run_and_grad
from torch import nn

import unrolled

BACKENDS = ("reference", "fast")
DTYPE = torch.float32


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    # One compile per test in a single process: no compile pool to start, no state carried over.
    # One intra-op thread: tiny tensors, 2 shared cores.
    previous = torch._inductor.config.compile_threads, torch.get_num_threads()
    torch._inductor.config.compile_threads = 1
    torch.set_num_threads(1)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
    torch._inductor.config.compile_threads, threads = previous
    torch.set_num_threads(threads)


class Chain(nn.Module):
    """RNN -> LSTM (with projection) -> GRU: every module in one graph, one compile."""

    def __init__(self, backend: str) -> None:
        super().__init__()
        self.rnn = unrolled.RNN(3, 5, backend=backend)
        self.lstm = unrolled.LSTM(5, 6, proj_size=4, backend=backend)
        self.gru = unrolled.GRU(4, 3, backend=backend)

    def forward(self, x, h0):
        """``x (T, B, 3)``, ``h0 (1, B, 5)``: the RNN's initial state, to check its gradient."""
        a, h_rnn = self.rnn(x, h0)  # (T, B, 5)
        b, (h_lstm, c_lstm) = self.lstm(a)  # (T, B, 4)
        c, h_gru = self.gru(b)  # (T, B, 3)
        return c, h_rnn, h_lstm, c_lstm, h_gru


def assert_same_values_and_grads(compiled, eager, inputs):
    """Compiled vs eager: every output, then the gradient of every input and parameter."""
    got_values, got_grads = run_and_grad(compiled, clone_structure(inputs), None)
    want_values, want_grads = run_and_grad(eager, clone_structure(inputs), None)
    assert len(got_values) == len(want_values)
    for k, (got, want) in enumerate(zip(got_values, want_values)):
        assert_close(f"output[{k}]", got, want, DTYPE)
    # OptimizedModule prefixes its parameter names with "_orig_mod."; the order is the same
    assert [n.removeprefix("_orig_mod.") for n in got_grads] == list(want_grads)
    for (name, got), want in zip(got_grads.items(), want_grads.values()):
        assert got is not None and want is not None, f"grad {name} missing"
        assert_close(f"grad {name}", got, want, DTYPE)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_matches_eager_for_all_three_modules(backend):
    torch.manual_seed(0)
    model = Chain(backend)
    # T=2 keeps the unrolled graphs (and so the C++ inductor builds) small
    inputs = (torch.randn(2, 2, 3, requires_grad=True), torch.randn(1, 2, 5, requires_grad=True))
    compiled = torch.compile(model)  # default: inductor
    assert_same_values_and_grads(compiled, model, inputs)
    # a second call with the same shape reuses the compiled graph and still agrees
    assert_same_values_and_grads(compiled, model, inputs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["RNN", "LSTM", "GRU"])
def test_dynamo_traces_each_module_in_one_graph(mode, backend):
    """No graph break: the whole forward (checks, backend, time loop) is one FX graph.

    A break does not make ``torch.compile`` wrong (dynamo falls back to eager for the part it
    cannot trace), but it means that part is not compiled and ``fullgraph=True`` fails.
    """
    torch.manual_seed(0)
    kwargs = {"proj_size": 2} if mode == "LSTM" else {}
    module = getattr(unrolled, mode)(
        3, 4, num_layers=2, bidirectional=True, backend=backend, **kwargs
    )
    x = torch.randn(3, 2, 3, requires_grad=True)
    explanation = torch._dynamo.explain(module)(x)
    reasons = [str(b.reason).splitlines()[0] for b in explanation.break_reasons]
    assert explanation.graph_break_count == 0, f"{mode}/{backend} graph breaks: {reasons}"
    assert explanation.graph_count == 1


LAYER_CASES = [
    ("RNN", dict(nonlinearity="relu", num_layers=2, bidirectional=True, batch_first=True)),
    ("LSTM", dict(num_layers=2, bidirectional=True, proj_size=3)),
    ("GRU", dict(num_layers=2, bidirectional=True, batch_first=True, bias=False)),
]


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode, kwargs", LAYER_CASES, ids=[c[0] for c in LAYER_CASES])
def test_compile_matches_eager_per_module(mode, kwargs, backend):
    torch.manual_seed(0)
    module = getattr(unrolled, mode)(4, 5, backend=backend, **kwargs)
    batch_first = kwargs.get("batch_first", False)
    shape = (2, 4, 4) if batch_first else (4, 2, 4)  # T=4, B=2, I=4
    x = torch.randn(shape, requires_grad=True)
    compiled = torch.compile(module, fullgraph=True)
    assert_same_values_and_grads(compiled, module, (x,))


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_with_lengths_matches_eager(backend):
    """``lengths=`` breaks the graph where its values are checked, but the numbers still agree."""
    torch.manual_seed(0)
    module = unrolled.GRU(3, 4, bidirectional=True, backend=backend)
    x = torch.randn(4, 3, 3, requires_grad=True)

    class WithLengths(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x, lengths=torch.tensor([4, 2, 1]))

    eager = WithLengths(module)
    assert_same_values_and_grads(torch.compile(eager), eager, (x,))


def export_case(mode: str, backend: str):
    """An eval-mode 2-layer bidirectional batch-first layer, its example inputs, and its export."""
    torch.manual_seed(0)
    kwargs = {"proj_size": 3} if mode == "LSTM" else {}
    module = getattr(unrolled, mode)(
        4, 5, num_layers=2, bidirectional=True, batch_first=True, backend=backend, **kwargs
    ).eval()
    x = torch.randn(2, 6, 4)  # (B, T, I): T=6 is baked into the exported graph
    hx = module._zero_state(2, x)
    hx = tuple(s + 0.1 for s in hx) if mode == "LSTM" else hx + 0.1
    return module, x, hx, torch.export.export(module, (x, hx))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["RNN", "LSTM", "GRU"])
def test_export_of_an_inference_model_matches_eager(mode, backend):
    module, x, hx, exported = export_case(mode, backend)
    fresh_x = torch.randn_like(x)  # other values, same shape: the graph is not a constant
    with torch.no_grad():
        want = module(fresh_x, hx)
        got = exported.module()(fresh_x, hx)
    for k, (g, w) in enumerate(zip(leaves(got), leaves(want), strict=True)):
        assert_close(f"output[{k}]", g, w, DTYPE)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["RNN", "LSTM", "GRU"])
def test_exported_graph_is_functional(mode, backend):
    """No ``out=`` ops in the exported graph, so it also runs with grad enabled, as torch.nn's.

    An ``aten.*.out`` node writes into a buffer; autograd refuses such ops once an argument
    (here the lifted parameters) requires grad, and graph passes expect a functional graph.
    """
    module, x, hx, exported = export_case(mode, backend)
    out_ops = sorted(
        {
            str(node.target)
            for node in exported.graph.nodes
            if node.op == "call_function" and "out" in getattr(node.target, "_overloadname", "")
        }
    )
    assert out_ops == [], f"{mode}/{backend} exported graph writes with out=: {out_ops}"
    got = exported.module()(x, hx)  # grad enabled, parameters require grad
    with torch.no_grad():
        want = module(x, hx)
    for k, (g, w) in enumerate(zip(leaves(got), leaves(want), strict=True)):
        assert_close(f"output[{k}]", g.detach(), w, DTYPE)


@pytest.mark.parametrize("backend", BACKENDS)
def test_exported_model_agrees_with_torch_nn(backend):
    """The exported program computes torch.nn.LSTM's numbers, not just unrolled's."""
    torch.manual_seed(0)
    module = unrolled.LSTM(3, 4, backend=backend).eval()
    twin = module.to_torch().eval()
    x = torch.randn(5, 2, 3)
    exported = torch.export.export(module, (x,)).module()
    with torch.no_grad():
        want_out, (want_h, want_c) = twin(x)
        got_out, (got_h, got_c) = exported(x)
    assert_close("output", got_out, want_out, DTYPE)
    assert_close("h_n", got_h, want_h, DTYPE)
    assert_close("c_n", got_c, want_c, DTYPE)
