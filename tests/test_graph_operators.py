"""One ``unrolled::layer`` operator per layer under torch.compile, torch.export and ONNX export.

- the operators' registrations (fake kernels, autograd) pass ``torch.library.opcheck``;
- ``torch.compile(dynamic=True)`` over T in {1, 7, 33, 100} and two batch sizes compiles at
  most twice and equals torch.nn in outputs and every gradient;
- ``torch.export`` with a dynamic T and B: the graph holds one operator per layer (its size
  does not grow with T) and runs at several lengths equal to torch.nn;
- ONNX, both exporters, into onnxruntime at three lengths and two batch sizes (skipped with a
  reason where onnxruntime is not installed; ``make test`` installs it);
- what ONNX cannot express gives a clear error.
"""

from __future__ import annotations

import io
import itertools
import warnings

import pytest
import torch
import torch._dynamo
from parity import assert_close
from torch._dynamo.utils import counters
from torch.nn.utils.rnn import pack_padded_sequence

import unrolled
from unrolled.fast import operators

pytestmark = pytest.mark.skipif(not operators.available(), reason="torch < 2.4: no register_fake")
DTYPE = torch.float32
CASES = [
    ("RNN", {}),
    ("RNN", {"nonlinearity": "relu", "bias": False}),
    ("LSTM", {}),
    ("LSTM", {"proj_size": 3}),
    ("GRU", {}),
    ("GRU", {"bias": False}),
]
IDS = [f"{m}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for m, kw in CASES]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
    torch.set_num_threads(previous)


def make(mode: str, kwargs: dict, **extra):
    torch.manual_seed(0)
    module = getattr(unrolled, mode)(4, 5, num_layers=2, bidirectional=True, **kwargs, **extra)
    return module, module.to_torch()


def outputs_and_grads(module, x):
    """Every output leaf, then the gradients of the input and every parameter."""
    x = x.detach().requires_grad_()
    output, state = module(x)
    leaves = [output, *(state if isinstance(state, tuple) else (state,))]
    loss = sum(
        (leaf * torch.linspace(-1, 1, leaf.numel()).view(leaf.shape)).sum() for leaf in leaves
    )
    grads = torch.autograd.grad(loss, [x, *module.parameters()])
    return [leaf.detach() for leaf in leaves], list(grads)


@pytest.mark.parametrize("mode, kwargs", CASES, ids=IDS)
def test_opcheck_of_the_operators(mode, kwargs):
    """Fake kernels give the kernels' shapes, autograd is registered, no aliasing."""
    module, _ = make(mode, kwargs)
    weights = module.layer_weights()[:2]  # layer 0, both directions
    flat = operators.present(weights)
    x = torch.randn(3, 2, 4, requires_grad=True)
    h0 = torch.randn(2, 2, 3 if kwargs.get("proj_size") else 5, requires_grad=True)
    c0 = torch.randn(2, 2, 5, requires_grad=True) if mode == "LSTM" else None
    name = module.mode
    args = (name, x, h0, c0, flat, 2, weights[0].b_ih is not None, None)
    torch.library.opcheck(torch.ops.unrolled.layer.default, args)
    torch.library.opcheck(torch.ops.unrolled.layer_train.default, args)
    # packed: x (N, I) with its batch_sizes
    packed = torch.randn(6, 4, requires_grad=True)  # batch_sizes 2, 2, 1, 1
    packed_args = (name, packed, h0, c0, flat, 2, args[6], torch.tensor([2, 2, 1, 1]))
    torch.library.opcheck(torch.ops.unrolled.layer_train.default, packed_args)


@pytest.mark.parametrize("mode, kwargs", CASES[::2], ids=IDS[::2])
def test_compile_with_dynamic_shapes_compiles_at_most_twice(mode, kwargs):
    """T in {1, 7, 33, 100} and B in {2, 3}: at most two compiles (size 1 is specialised by
    dynamo), every call equal to torch.nn in outputs and gradients."""
    module, twin = make(mode, kwargs)
    counters.clear()
    # aot_eager: AOT autograd traces the fake kernels and the backward, without C++ builds
    compiled = torch.compile(module, backend="aot_eager", dynamic=True)
    for num_steps, batch in itertools.product((1, 7, 33, 100), (2, 3)):
        x = torch.randn(num_steps, batch, 4)
        got_values, got_grads = outputs_and_grads(compiled, x)
        want_values, want_grads = outputs_and_grads(twin, x)
        for k, (g, w) in enumerate(zip(got_values + got_grads, want_values + want_grads)):
            assert_close(f"T={num_steps} B={batch} [{k}]", g, w, DTYPE)
    assert counters["stats"]["unique_graphs"] <= 2, dict(counters["stats"])


def test_compile_with_inductor_runs_the_operators():
    """The default backend (inductor): one graph, the fast kernels inside, torch.nn's numbers."""
    module, twin = make("LSTM", {})
    compiled = torch.compile(module)
    for num_steps in (5, 9):
        x = torch.randn(num_steps, 3, 4)
        got_values, got_grads = outputs_and_grads(compiled, x)
        want_values, want_grads = outputs_and_grads(twin, x)
        for k, (g, w) in enumerate(zip(got_values + got_grads, want_values + want_grads)):
            assert_close(f"T={num_steps} [{k}]", g, w, DTYPE)


@pytest.mark.parametrize("form", ["lengths", "packed"])
def test_compile_with_uneven_lengths_equals_torch(form):
    module, twin = make("GRU", {})
    compiled = torch.compile(module, backend="aot_eager")
    x = torch.randn(6, 3, 4, requires_grad=True)
    lengths = torch.tensor([6, 2, 4])
    if form == "lengths":
        got_out, got_h = compiled(x, lengths=lengths)
    else:
        got_out, got_h = compiled(pack_padded_sequence(x, lengths, enforce_sorted=False))
        got_out = got_out.data
    want_out, want_h = twin(pack_padded_sequence(x, lengths, enforce_sorted=False))
    if form == "lengths":  # padded output: compare the valid steps
        got_out = pack_padded_sequence(got_out, lengths, enforce_sorted=False).data
    assert_close("output", got_out, want_out.data, DTYPE)
    assert_close("h_n", got_h, want_h, DTYPE)
    (got_x,) = torch.autograd.grad(got_out.sum() + got_h.sum(), x)
    (want_x,) = torch.autograd.grad(want_out.data.sum() + want_h.sum(), x)
    assert_close("grad x", got_x, want_x, DTYPE)


@pytest.mark.parametrize("mode, kwargs", CASES, ids=IDS)
def test_export_with_dynamic_length_is_one_operator_per_layer(mode, kwargs):
    module, twin = make(mode, kwargs, batch_first=True)
    module.eval(), twin.eval()
    steps, batch = torch.export.Dim("T", min=2), torch.export.Dim("B", min=2)
    exported = torch.export.export(
        module, (torch.randn(3, 6, 4),), dynamic_shapes={"input": {0: batch, 1: steps}}
    )
    layers = [n for n in exported.graph.nodes if "unrolled.layer" in str(n.target)]
    assert len(layers) == 2, [str(n.target) for n in exported.graph.nodes]
    run = exported.module()
    for batch_size, num_steps in ((2, 2), (3, 17), (5, 60)):
        x = torch.randn(batch_size, num_steps, 4)
        with torch.no_grad():
            got, want = run(x), twin(x)
        assert_close("output", got[0], want[0], DTYPE)
        for k, (g, w) in enumerate(zip(unrolled_leaves(got[1]), unrolled_leaves(want[1]))):
            assert_close(f"state[{k}]", g, w, DTYPE)


def test_exported_program_differentiates_like_torch():
    """An exported program holds the inference operator; it is still differentiable (its
    backward runs the forward again, keeping the buffers), twice too (create_graph)."""
    module, twin = make("LSTM", {})
    exported = torch.export.export(module, (torch.randn(4, 2, 4),)).module()
    x = torch.randn(4, 2, 4, requires_grad=True)
    (got,) = torch.autograd.grad(exported(x)[0].pow(2).sum(), x, create_graph=True)
    (want,) = torch.autograd.grad(twin(x)[0].pow(2).sum(), x, create_graph=True)
    assert_close("grad x", got, want, DTYPE)
    (got2,) = torch.autograd.grad(got.sum(), x)
    (want2,) = torch.autograd.grad(want.sum(), x)
    assert_close("grad of grad x", got2, want2, DTYPE)


def unrolled_leaves(state):
    return list(state) if isinstance(state, tuple) else [state]


# ---- ONNX ------------------------------------------------------------------------------------

ONNX_CASES = [c for c in CASES if not c[1].get("proj_size")]
ONNX_IDS = [i for c, i in zip(CASES, IDS) if not c[1].get("proj_size")]


def run_onnx(model_bytes: bytes, twin, name: str):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (make test has it)")
    session = ort.InferenceSession(model_bytes)
    for num_steps, batch in ((1, 2), (9, 3), (40, 2)):
        x = torch.randn(num_steps, batch, 4)
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        with torch.no_grad():
            output, state = twin(x)
        want = [output, *unrolled_leaves(state)]
        for k, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_close(f"{name} T={num_steps} [{k}]", torch.from_numpy(g), w, DTYPE)


@pytest.mark.parametrize("mode, kwargs", ONNX_CASES, ids=ONNX_IDS)
def test_onnx_torchscript_exporter_with_dynamic_axes(mode, kwargs):
    pytest.importorskip("onnx", reason="onnx not installed (make test has it)")
    module, twin = make(mode, kwargs)
    module.eval(), twin.eval()
    names = ["y", "h"] + (["c"] if mode == "LSTM" else [])
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notes
        torch.onnx.export(
            module, (torch.randn(6, 3, 4),), buffer, dynamo=False, input_names=["x"],
            output_names=names, dynamic_axes={"x": {0: "T", 1: "B"}, "y": {0: "T", 1: "B"}},
        )  # fmt: skip
    import onnx

    graph = onnx.load_from_string(buffer.getvalue()).graph
    recurrent = [n.op_type for n in graph.node if n.op_type in ("RNN", "LSTM", "GRU")]
    assert recurrent == [{"RNN": "RNN", "LSTM": "LSTM", "GRU": "GRU"}[mode]] * 2
    run_onnx(buffer.getvalue(), twin, "torchscript")


@pytest.mark.parametrize("mode, kwargs", ONNX_CASES[::2], ids=ONNX_IDS[::2])
def test_onnx_dynamo_exporter_with_dynamic_shapes(mode, kwargs, tmp_path):
    pytest.importorskip("onnxscript", reason="onnxscript not installed (make test has it)")
    import unrolled.onnx

    module, twin = make(mode, kwargs)
    module.eval(), twin.eval()
    steps, batch = torch.export.Dim("T"), torch.export.Dim("B")
    program = torch.onnx.export(
        module, (torch.randn(6, 3, 4),), dynamo=True, verbose=False,
        dynamic_shapes={"input": {0: steps, 1: batch}},
        custom_translation_table=unrolled.onnx.translation_table(),
    )  # fmt: skip
    path = tmp_path / "model.onnx"
    program.save(str(path))
    run_onnx(path.read_bytes(), twin, "dynamo")


def test_onnx_says_what_it_cannot_express():
    import unrolled.onnx

    module, _ = make("LSTM", {"proj_size": 3})
    with pytest.raises(Exception, match="ONNX's LSTM has no projection"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module.eval(), (torch.randn(6, 3, 4),), io.BytesIO(), dynamo=False)
    with pytest.raises(unrolled.onnx.NotExpressible, match="padded full-length input"):
        unrolled.onnx.check_expressible("GRU", 8, 2, True, packed=True)
