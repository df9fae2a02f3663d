"""What PyTorch users do with their recurrent layers works on unrolled's twins as on torch.nn: each
test runs the same user code on both and compares."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.nn.utils import prune
from torch.nn.utils.rnn import pack_padded_sequence

import unrolled
from unrolled.fast import native
from unrolled.tools.compare import AUTOCAST_BFLOAT16, assert_close

TORCH_LAYERS = {"RNN": torch.nn.RNN, "LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU}
#: unrolled's implementations: the reference backend and the fast one on each of its runners
RUNNERS = ["reference", "fast/native", "fast/python"]


def twin(theirs, runner):
    """unrolled's copy of ``theirs`` on ``runner``, and a context its calls run in."""
    backend, _, loops = runner.partition("/")
    if loops == "native" and native.ops() is None:
        pytest.skip(f"native loops unavailable: {native.status()}")
    return unrolled.from_torch(theirs, backend=backend), loops == "python"


def call(module, python_loops, *args, **kwargs):
    if python_loops:
        with native.disabled():
            return module(*args, **kwargs)
    return module(*args, **kwargs)


# --- in-place changes to the output before the backward ----------------------------------------

IN_PLACE = {
    "+= residual": lambda out, residual: out.add_(residual),
    "ReLU(inplace=True)": lambda out, residual: torch.nn.ReLU(inplace=True)(out),
    "mul_(mask)": lambda out, residual: out.mul_((residual > 0).to(out.dtype)),
}


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("change", list(IN_PLACE))
@pytest.mark.parametrize(
    "layer,bidirectional,form",
    list(itertools.product(TORCH_LAYERS, [False, True], ["time", "batch", "packed"])),
)
def test_the_output_can_be_changed_in_place_before_backward(
    layer, bidirectional, form, change, runner
):
    torch.manual_seed(0)
    theirs = TORCH_LAYERS[layer](
        3, 4, bidirectional=bidirectional, batch_first=form == "batch"
    ).double()
    ours, python_loops = twin(theirs, runner)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    residual = torch.randn(5, 2, 4 * (1 + bidirectional), dtype=torch.float64)

    def run(module, loops):
        leaf = x.clone().requires_grad_()
        module.zero_grad()
        if form == "packed":
            out = call(module, loops, pack_padded_sequence(leaf, [5, 3], enforce_sorted=False))[0]
            data = out.data
            IN_PLACE[change](
                data,
                torch.randn(
                    data.shape, dtype=data.dtype, generator=torch.Generator().manual_seed(1)
                ),
            )
        else:
            out = call(module, loops, leaf)[0]
            IN_PLACE[change](out, residual)
            data = out
        (
            data * torch.linspace(-1, 1, data.numel(), dtype=data.dtype).view_as(data)
        ).sum().backward()
        return [data.detach(), leaf.grad] + [p.grad for p in module.parameters()]

    for k, (a, b) in enumerate(zip(run(ours, python_loops), run(theirs, False))):
        assert_close(f"tensor {k}", a, b, torch.float64)


# --- torch.func, gradcheck's batched gradients, per-sample gradients ----------------------------


def loss_of(module, x):
    def loss(params, inputs):
        return torch.func.functional_call(module, params, (inputs,))[0].pow(2).sum()

    return loss


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("layer", list(TORCH_LAYERS))
def test_torch_func_grad_and_jacrev(layer, runner):
    torch.manual_seed(1)
    theirs = TORCH_LAYERS[layer](3, 4, num_layers=2, bidirectional=True).double()
    ours, python_loops = twin(theirs, runner)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    for transform in ("grad", "jacrev"):
        results = []
        for module, loops in ((ours, python_loops), (theirs, False)):
            params = dict(module.named_parameters())
            if transform == "grad":
                result = call(
                    lambda p, i, m=module: torch.func.grad(loss_of(m, i))(p, i), loops, params, x
                )
                results.append([result[name] for name in params])
            else:
                jacobian = torch.func.jacrev(lambda t, m=module: m(t)[0])
                result = call(jacobian, loops, x)
                results.append([result])
        for k, (a, b) in enumerate(zip(*results)):
            assert_close(f"{transform} {k}", a, b, torch.float64)
    seen = []

    def planned_loss(t):
        seen.append(unrolled.plan(ours, t))
        return ours(t)[0].sum()

    torch.func.grad(planned_loss)(x)
    if runner != "reference":  # inside a transform the plan says why the reference runs
        assert seen[0].runner == "reference" and "torch.func" in seen[0].reason


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("layer", list(TORCH_LAYERS))
def test_gradcheck_with_batched_gradients(layer, runner):
    """torch's module tests run gradcheck(check_batched_grad=True): the backward under vmap."""
    torch.manual_seed(2)
    theirs = TORCH_LAYERS[layer](2, 3, bidirectional=True).double()
    ours, python_loops = twin(theirs, runner)
    x = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 2, 3, dtype=torch.float64, requires_grad=True)
    hx = (
        (h0, torch.randn(2, 2, 3, dtype=torch.float64, requires_grad=True))
        if layer == "LSTM"
        else h0
    )

    def run(x, *state):
        out, final = call(ours, python_loops, x, state if layer == "LSTM" else state[0])
        return (out, *final) if layer == "LSTM" else (out, final)

    states = hx if layer == "LSTM" else (hx,)
    assert torch.autograd.gradcheck(run, (x, *states), check_batched_grad=True)
    assert torch.autograd.gradgradcheck(run, (x, *states), check_batched_grad=True)


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize(
    "layer,batch_first,stacked", list(itertools.product(TORCH_LAYERS, [True, False], [False, True]))
)
def test_per_sample_gradients_through_expanded_weights(layer, batch_first, stacked, runner):
    """What differential-privacy training uses: one gradient per sample in ``grad_sample``."""
    from torch.nn.utils._per_sample_grad import call_for_per_sample_grads

    torch.manual_seed(3)
    options = {"num_layers": 2, "bidirectional": True} if stacked else {}
    theirs = TORCH_LAYERS[layer](3, 4, batch_first=batch_first, **options).double()
    ours, python_loops = twin(theirs, runner)
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    x = x if batch_first else x.transpose(0, 1).contiguous()
    samples = []
    for module, loops in ((ours, python_loops), (theirs, False)):
        for p in module.parameters():
            p.grad_sample = None
        out = call(
            call_for_per_sample_grads(module, batch_size=2, batch_first=batch_first), loops, x
        )
        out[0].pow(2).sum().backward()
        samples.append([p.grad_sample for p in module.parameters()])
    for k, (a, b) in enumerate(zip(*samples)):
        assert a.shape[0] == 2
        assert_close(f"grad_sample {k}", a, b, torch.float64)


# --- autocast ----------------------------------------------------------------------------------

TORCH_CELLS = {
    "RNNCell": torch.nn.RNNCell,
    "LSTMCell": torch.nn.LSTMCell,
    "GRUCell": torch.nn.GRUCell,
}


@pytest.mark.parametrize("backend", ["fast", "reference"])
@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16], ids=["f32-in", "bf16-in"])
@pytest.mark.parametrize("name", list(TORCH_LAYERS) + list(TORCH_CELLS))
def test_cpu_autocast_runs_in_torchs_dtype(name, input_dtype, backend):
    """The usual bf16 pipeline: the layer's input comes from an autocast op (bfloat16) or not
    (float32); each output has torch's dtype and its values within bfloat16's rounding, and the
    float32 parameters get float32 gradients close to torch's."""
    torch.manual_seed(4)
    cell = name in TORCH_CELLS
    theirs = (TORCH_CELLS if cell else TORCH_LAYERS)[name](3, 4)
    ours = unrolled.from_torch(theirs, backend=backend)
    x = torch.randn(2, 3) if cell else torch.randn(5, 2, 3)
    results = []
    for module in (ours, theirs):
        module.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = module(x.to(input_dtype))
        leaves = list(out) if isinstance(out, tuple) else [out]
        leaves = [t for leaf in leaves for t in (leaf if isinstance(leaf, tuple) else (leaf,))]
        sum(t.float().sum() for t in leaves).backward()
        results.append((leaves, [p.grad for p in module.parameters()]))
    (our_out, our_grads), (their_out, their_grads) = results
    for a, b in zip(our_out, their_out):
        assert a.dtype == b.dtype, (a.dtype, b.dtype)
        assert_close("output", a.float(), b.float(), AUTOCAST_BFLOAT16)
    for a, b in zip(our_grads, their_grads):
        assert a.dtype == b.dtype == torch.float32
        torch.testing.assert_close(a, b, atol=5e-2 * b.abs().max().item() + 1e-3, rtol=5e-2)
    if not cell and backend == "fast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert "autocast" in unrolled.plan(ours, x).reason


# --- parametrized, pruned and replaced weights -------------------------------------------------

REWEIGHT = {
    "weight_norm": lambda m, name: torch.nn.utils.parametrizations.weight_norm(m, name),
    "spectral_norm": lambda m, name: torch.nn.utils.parametrizations.spectral_norm(m, name),
    "prune": lambda m, name: prune.l1_unstructured(m, name, 0.5),
    "plain tensor": None,  # replace_weight below
}


def replace_weight(module, name, how):
    if how == "plain tensor":
        value = getattr(module, name).detach().clone() * 0.5
        delattr(module, name)
        setattr(module, name, value)
    else:
        REWEIGHT[how](module, name)


@pytest.mark.parametrize("how", list(REWEIGHT))
@pytest.mark.parametrize("layer", list(TORCH_LAYERS))
def test_step_and_twins_use_the_weights_the_module_computes_with(layer, how):
    torch.manual_seed(5)
    theirs = TORCH_LAYERS[layer](3, 4, num_layers=2).eval()
    replace_weight(theirs, "weight_hh_l0", how)
    x = torch.randn(6, 2, 3)
    with torch.no_grad():
        expected = theirs(x)[0]
        ours = unrolled.from_torch(theirs)  # the weights the torch module computes with
        torch.testing.assert_close(ours(x)[0], expected)
        replace_weight(ours, "weight_hh_l1", how)  # and ours parametrized in turn
        reference = ours(x)[0]
        state = None
        for t in range(6):
            out, state = ours.step(x[t], state)
        torch.testing.assert_close(out, reference[-1])
        torch.testing.assert_close(ours.to_torch()(x)[0], reference)


@pytest.mark.parametrize("how", ["weight_norm", "prune"])
@pytest.mark.parametrize("name", list(TORCH_CELLS))
def test_cells_from_and_to_torch_with_reweighted_weights(name, how):
    torch.manual_seed(6)
    theirs = TORCH_CELLS[name](3, 4)
    replace_weight(theirs, "weight_hh", how)
    x = torch.randn(2, 3)
    with torch.no_grad():
        ours = unrolled.from_torch(theirs)
        torch.testing.assert_close(ours(x), theirs(x))
        replace_weight(ours, "weight_ih", how)
        torch.testing.assert_close(ours.to_torch()(x), ours(x))


# --- whole-model checkpoints -------------------------------------------------------------------


def public_modules():
    return {
        "RNN": unrolled.RNN(3, 4, nonlinearity="relu", num_layers=2),
        "LSTM": unrolled.LSTM(3, 4, proj_size=2, bidirectional=True, zoneout=(0.1, 0.2)),
        "GRU": unrolled.GRU(3, 4, batch_first=True, backend="reference"),
        "RNNCell": unrolled.RNNCell(3, 4),
        "LSTMCell": unrolled.LSTMCell(3, 4),
        "GRUCell": unrolled.GRUCell(3, 4, bias=False),
        "Recurrent": unrolled.Recurrent(lambda size: unrolled.IndRNN(size, 4), input_size=3),
        "MinGRU": unrolled.MinGRU(3, 4),
        "LayerNormLSTM": unrolled.Recurrent(
            lambda size: unrolled.LayerNormLSTM(size, 4), input_size=3
        ),
    }


@pytest.mark.parametrize("name", list(public_modules()))
def test_torch_save_and_a_plain_torch_load_round_trip(name, tmp_path):
    """torch.load's default weights_only=True refuses unlisted classes: unrolled's are listed
    when it is imported; torch's own (here only LayerNorm) are the user's to list, as always."""
    torch.manual_seed(7)
    module = public_modules()[name].eval()
    x = torch.randn(2, 3) if name.endswith("Cell") else torch.randn(5, 2, 3)
    path = tmp_path / "model.pt"
    torch.save(module, path)
    if name == "LayerNormLSTM":
        with pytest.raises(Exception, match="LayerNorm"):
            torch.load(path)
        with torch.serialization.safe_globals([torch.nn.LayerNorm]):
            loaded = torch.load(path)
    else:
        loaded = torch.load(path)  # weights_only=True, nothing listed
    assert type(loaded) is type(module)
    with torch.no_grad():
        for a, b in zip(
            torch.utils._pytree.tree_leaves(loaded(x)), torch.utils._pytree.tree_leaves(module(x))
        ):
            torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_a_model_with_torch_classes_lists_only_those(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), unrolled.GRU(3, 4))
    path = tmp_path / "model.pt"
    torch.save(model, path)
    with torch.serialization.safe_globals([torch.nn.Sequential, torch.nn.Linear]):
        loaded = torch.load(path)
    assert isinstance(loaded[1], unrolled.GRU)
    assert set(unrolled.SAFE_GLOBALS) >= {
        unrolled.LSTM,
        unrolled.GRU,
        unrolled.RNN,
        unrolled.LSTMCell,
    }


def test_unrolled_functional_comes_with_import_unrolled():
    import subprocess
    import sys

    code = "import unrolled; print(unrolled.functional.rnn_forward.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "rnn_forward", out.stderr


# --- tensor subclasses and __torch_function__ tensor-likes ---------------------------------------


class TensorLike:
    """Not a Tensor: holds one and implements __torch_function__, unwrapping the arguments of
    every call and wrapping its tensor results (the protocol PyTorch's own overrides tests use)."""

    def __init__(self, data):
        self.data = data

    def __getattr__(self, name):
        return getattr(self.data, name)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        def unwrap(v):
            if isinstance(v, (tuple, list)):
                return type(v)(unwrap(x) for x in v)
            return v.data if isinstance(v, TensorLike) else v

        def wrap(v):
            if isinstance(v, (tuple, list)):
                return type(v)(wrap(x) for x in v)
            return TensorLike(v) if isinstance(v, torch.Tensor) else v

        return wrap(func(*unwrap(args), **{k: unwrap(v) for k, v in (kwargs or {}).items()}))


class SubTensor(torch.Tensor):
    pass


@pytest.mark.parametrize("kind", ["tensor-like", "subclass"])
@pytest.mark.parametrize("name", list(TORCH_LAYERS) + list(TORCH_CELLS))
def test_tensor_likes_and_subclasses_as_input(name, kind):
    torch.manual_seed(8)
    cell = name in TORCH_CELLS
    theirs = (
        (TORCH_CELLS if cell else TORCH_LAYERS)[name](3, 4, 2)
        if not cell
        else TORCH_CELLS[name](3, 4)
    )
    ours = unrolled.from_torch(theirs)
    x = torch.randn(2, 3) if cell else torch.randn(5, 2, 3)
    wrapped = TensorLike(x) if kind == "tensor-like" else x.as_subclass(SubTensor)
    got, expected = ours(wrapped), theirs(wrapped)
    got_leaves = torch.utils._pytree.tree_leaves(got, is_leaf=lambda v: isinstance(v, TensorLike))
    expected_leaves = torch.utils._pytree.tree_leaves(
        expected, is_leaf=lambda v: isinstance(v, TensorLike)
    )
    for a, b in zip(got_leaves, expected_leaves):
        assert type(a) is type(b)
        unwrap = (
            (lambda v: v.data) if kind == "tensor-like" else (lambda v: v.as_subclass(torch.Tensor))
        )
        torch.testing.assert_close(unwrap(a), unwrap(b))


# --- dynamic int8 quantization, TorchScript, unrolled.functional --------------------------------


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
@pytest.mark.parametrize("spec", ["unrolled classes", "torch classes", "default"])
def test_quantize_dynamic_gives_torchs_quantized_model(spec):
    """torch's quantize_dynamic picks modules by exact class; unrolled.quantize_dynamic (its call
    shape) turns unrolled's layers into their twins first: the same int8 model as torch's."""
    torch.manual_seed(9)
    theirs = torch.nn.Sequential(
        torch.nn.Linear(3, 3),
        torch.nn.LSTM(3, 4, num_layers=2),
    )
    ours = torch.nn.Sequential(torch.nn.Linear(3, 3), unrolled.from_torch(theirs[1]))
    ours[0].load_state_dict(theirs[0].state_dict())
    gru_theirs = torch.nn.GRUCell(3, 4)
    gru_ours = unrolled.from_torch(gru_theirs)
    specs = {
        "unrolled classes": ({unrolled.LSTM, unrolled.GRUCell, torch.nn.Linear},),
        "torch classes": ({torch.nn.LSTM, torch.nn.GRUCell, torch.nn.Linear},),
        "default": (None,),
    }[spec]
    torch_spec = {torch.nn.LSTM, torch.nn.GRUCell, torch.nn.Linear} if spec != "default" else None
    x = torch.randn(5, 2, 3)
    q_theirs = torch.ao.quantization.quantize_dynamic(theirs, torch_spec, dtype=torch.qint8)
    q_ours = unrolled.quantize_dynamic(ours, *specs, dtype=torch.qint8)
    assert type(q_ours[1]) is type(q_theirs[1])  # torch's DynamicQuantizedLSTM
    torch.testing.assert_close(q_ours(x)[0], q_theirs(x)[0], atol=0, rtol=0)
    q_cell = unrolled.quantize_dynamic(gru_ours, *specs)
    torch.testing.assert_close(
        q_cell(x[0]), torch.ao.quantization.quantize_dynamic(gru_theirs, torch_spec)(x[0])
    )
    assert isinstance(ours[1], unrolled.LSTM)  # not in place: the float model is untouched


@pytest.mark.parametrize(
    "module", [unrolled.LSTM(3, 4), unrolled.GRU(3, 4), unrolled.RNNCell(3, 4)], ids=str
)
def test_torchscript_fails_with_a_message_that_says_what_to_use(module):
    with pytest.raises(RuntimeError, match="TorchScript.*torch.compile.*torch.export.*to_torch"):
        torch.jit.script(module)


@pytest.mark.parametrize(
    "change,error,message",
    [
        ({"mode": "gru"}, ValueError, "mode must be one of"),
        (
            {"input": torch.randn(5, 3)},
            ValueError,
            r"input must be a time-major \(T, B, I\) tensor, got shape \(5, 3\)",
        ),
        ({"lengths": [5, 9]}, ValueError, "lengths must be <= the sequence length T=5"),
        (
            {"hx": torch.zeros(1, 3, 4)},
            RuntimeError,
            r"Expected hx size \(1, 2, 4\), got \[1, 3, 4\]",
        ),
        ({"weights": []}, ValueError, "weights must be num_layers \\* num_directions = 1 tuples"),
    ],
)
def test_functional_rnn_checks_its_arguments(change, error, message):
    torch.manual_seed(10)
    theirs = torch.nn.GRU(3, 4)
    weights = [
        (theirs.weight_ih_l0, theirs.weight_hh_l0, theirs.bias_ih_l0, theirs.bias_hh_l0, None)
    ]
    x = torch.randn(5, 2, 3)
    out, h_n = unrolled.functional.rnn("GRU", x, None, weights, lengths=[5, 3])  # the good call
    torch.testing.assert_close(out[:, 0], theirs(x[:, :1])[0][:, 0])
    arguments = {"mode": "GRU", "input": x, "hx": None, "weights": weights, **change}
    positional = [arguments.pop(k) for k in ("mode", "input", "hx", "weights")]
    with pytest.raises(error, match=message):
        unrolled.functional.rnn(*positional, **arguments)
