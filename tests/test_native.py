"""The fast backend's native (C++) loops: that they are built where a compiler exists, that their
activations keep their stated accuracy, and that they compute what torch.nn and the Python loops
(their specification and fallback) compute, for every cell and every path through them: one and
two directions (the latter on two threads), LSTM projection, bias=False, the batch shrinking on
sorted lengths and the full batch on unsorted ones, the elementwise pass split across threads,
one thread, NaN input."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import threading

import pytest
import torch
from parity import compare
from parity import leaves as parity_leaves
from torch.nn.utils.rnn import pack_padded_sequence

import unrolled
from unrolled.fast import native
from unrolled.tools.compare import assert_close

needs_native = pytest.mark.skipif(
    native.ops() is None, reason=f"native loops unavailable: {native.status()}"
)


def test_native_is_built_wherever_a_compiler_is():
    """A silent fallback would hide a build break: with a compiler and nothing switched off,
    the native loops must be what the fast backend runs."""
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        pytest.skip("no C++ compiler here")
    if os.environ.get("UNROLLED_NATIVE") == "0":
        pytest.skip("switched off by UNROLLED_NATIVE=0")
    assert native.ops() is not None, native.status()
    assert native.status() == "native C++ loops"


def test_switched_off_by_the_environment():
    code = "from unrolled.fast import native; print(native.status())"
    env = {**os.environ, "UNROLLED_NATIVE": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "switched off by UNROLLED_NATIVE=0" in out.stdout
    assert "Warning" not in out.stderr  # asked for: no warning


def test_disabled_context_plans_the_python_loops_in_this_thread_only():
    before = native.status()
    layer = unrolled.LSTM(3, 4)
    x = torch.randn(5, 2, 3)
    with native.disabled():
        assert native.is_disabled()
        assert native.status().startswith("Python loops (unrolled.fast.native.disabled()")
        assert unrolled.plan(layer, x).runner == "python loops"
        seen = []
        thread = threading.Thread(target=lambda: seen.append(native.is_disabled()))
        thread.start()
        thread.join()
        assert seen == [False]  # another thread is not affected
    assert native.status() == before  # restored on leaving the block
    assert not native.is_disabled()


# --- activations -------------------------------------------------------------------------------

GRID = torch.linspace(-100, 100, 400_001, dtype=torch.float64)
SPECIALS = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 88.5, -87.5, 1e4, -1e4], dtype=torch.float64)
#: |x| from the subnormals up, both signs: where tanh(x) ~ x keeps shrinking with x.
TINY_TO_LARGE = {
    torch.float32: torch.logspace(-44, 3, 100_001, dtype=torch.float64),
    torch.float64: torch.logspace(-300, 3, 100_001, dtype=torch.float64),
}


def relative_error(got, exact):
    return ((got.double() - exact).abs() / exact.abs()).max().item()


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sigmoid_is_within_a_few_ulp(dtype):
    """Relative accuracy wherever sigmoid is a normal number; below that (x < -87 in float32)
    absolutely below the smallest normal number, as torch's (which gives 0 there)."""
    x = torch.cat([GRID, GRID * 8, SPECIALS]).to(dtype)
    got = native.ops().sigmoid(x).double()
    exact = torch.sigmoid(x.double())
    normal = exact >= torch.finfo(dtype).tiny
    relative = relative_error(got[normal], exact[normal])
    assert relative <= 4 * torch.finfo(dtype).eps, relative / torch.finfo(dtype).eps
    assert (got - exact)[~normal].abs().max().item() <= torch.finfo(dtype).tiny


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tanh_keeps_relative_accuracy_down_to_the_subnormals(dtype):
    """tanh(x) ~ x near 0: the error must shrink with x, as libm's and torch's do (a formula
    through 1 - 2/(e^2x + 1) would leave an absolute error of half an ulp of 1 there)."""
    magnitudes = TINY_TO_LARGE[dtype]
    x = torch.cat([magnitudes, -magnitudes, GRID / 10]).to(dtype)
    x = x[x != 0]
    relative = relative_error(native.ops().tanh(x), torch.tanh(x.double()))
    assert relative <= 4 * torch.finfo(dtype).eps, relative / torch.finfo(dtype).eps


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exp_is_within_two_ulp_and_overflows_where_libm_does(dtype):
    limit = 87 if dtype == torch.float32 else 708
    x = torch.linspace(-limit - 20, limit + 20, 400_001, dtype=torch.float64).to(dtype)
    got = native.ops().exp(x).double()
    exact = torch.exp(x.double())
    info = torch.finfo(dtype)
    normal = (exact >= info.tiny) & (exact <= info.max)
    assert relative_error(got[normal], exact[normal]) <= 2 * info.eps
    assert torch.equal(got[exact > info.max], torch.full_like(got[exact > info.max], float("inf")))
    below = exact < info.tiny  # gradual underflow: within an ulp of the smallest subnormal
    assert (got[below] - exact[below]).abs().max().item() <= info.tiny * info.eps


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_activations_propagate_nan_and_saturate_at_infinity(dtype):
    ops = native.ops()
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0], dtype=dtype)
    sig, tanh = ops.sigmoid(x), ops.tanh(x)
    assert sig[0].isnan() and tanh[0].isnan()
    assert sig[1].item() == 1.0 and tanh[1].item() == 1.0 and tanh[2].item() == -1.0
    assert sig[2].item() == 0.0  # as torch.sigmoid(-inf)
    assert tanh[3].item() == 0.0 and torch.signbit(tanh[3])  # odd: tanh(-0) = -0


# --- the loops against torch.nn and against the Python loops ------------------------------------

SORTED, UNSORTED = [9, 7, 7, 3, 2, 1], [3, 9, 1, 7, 2, 7]
TORCH_MODES = {
    "LSTM": torch.nn.LSTM,
    "GRU": torch.nn.GRU,
    "RNN_TANH": lambda *a, **k: torch.nn.RNN(*a, nonlinearity="tanh", **k),
    "RNN_RELU": lambda *a, **k: torch.nn.RNN(*a, nonlinearity="relu", **k),
}
CASES = [
    (mode, *case)
    for mode in TORCH_MODES
    for case in itertools.product(
        [False, True],  # bidirectional
        [0, 3] if mode == "LSTM" else [0],  # proj_size
        [None, "sorted", "unsorted"],  # lengths (packed input)
        [True, False],  # bias
    )
]


def make_pair(mode, bidirectional, proj, bias, input_size=5, hidden=6, layers=2):
    extra = {"proj_size": proj} if proj else {}
    theirs = TORCH_MODES[mode](
        input_size, hidden, num_layers=layers, bidirectional=bidirectional, bias=bias, **extra
    ).double()
    return unrolled.from_torch(theirs, backend="fast"), theirs


def make_input(lengths, batch=6, steps=9, input_size=5):
    x = torch.randn(steps, batch, input_size, dtype=torch.float64, requires_grad=True)
    if lengths is None:
        return (x,)
    order = SORTED if lengths == "sorted" else UNSORTED
    return (pack_padded_sequence(x, torch.tensor(order), enforce_sorted=False),)


@needs_native
@pytest.mark.parametrize("mode,bidirectional,proj,lengths,bias", CASES)
def test_native_and_python_loops_both_equal_torch(mode, bidirectional, proj, lengths, bias):
    torch.manual_seed(3)
    ours, theirs = make_pair(mode, bidirectional, proj, bias)
    inputs = make_input(lengths)
    compare(ours, theirs, inputs)
    with native.disabled():
        compare(ours, theirs, inputs)


@needs_native
@pytest.mark.parametrize("mode", list(TORCH_MODES))
@pytest.mark.parametrize("bidirectional", [False, True])
def test_big_steps_split_rows_across_threads(mode, bidirectional):
    """B * 4H past the elementwise pass's grain (rows split across threads), and a step big
    enough to run two directions on two threads; uneven packed lengths on top."""
    torch.manual_seed(4)
    ours, theirs = make_pair(mode, bidirectional, 0, True, input_size=3, hidden=64, layers=1)
    x = torch.randn(3, 130, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.randint(1, 4, (130,))
    compare(ours, theirs, (x,))
    compare(ours, theirs, (pack_padded_sequence(x, lengths, enforce_sorted=False),))


@needs_native
@pytest.mark.parametrize("threads", [1, 2])
def test_one_thread_and_two_threads_equal_torch(threads):
    """One thread: directions one after the other; two: each direction on its own thread."""
    torch.manual_seed(5)
    ours, theirs = make_pair("LSTM", True, 0, True, input_size=4, hidden=64, layers=2)
    x = torch.randn(7, 40, 4, dtype=torch.float64, requires_grad=True)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        compare(ours, theirs, (x,))
    finally:
        torch.set_num_threads(before)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", list(TORCH_MODES))
def test_nan_in_the_input_reaches_the_same_outputs_as_torch(dtype, mode):
    torch.manual_seed(6)
    theirs = TORCH_MODES[mode](3, 5).to(dtype)
    ours = unrolled.from_torch(theirs, backend="fast")
    x = torch.randn(4, 2, 3, dtype=dtype)
    x[1, 0, 2] = float("nan")
    with torch.no_grad():
        got, state = ours(x)
        expected, state_t = theirs(x)
    assert torch.equal(got.isnan(), expected.isnan())
    for a, b in zip(parity_leaves(state), parity_leaves(state_t)):
        assert torch.equal(a.isnan(), b.isnan())


@needs_native
@pytest.mark.parametrize("bidirectional", [False, True])
def test_large_lstm_weights_take_mkls_packed_gemm(bidirectional):
    """With a projection (no fused engine), W_hh of 2^20 elements or more (here 2080 x 510),
    float32, full batch: the forward's recurrent product runs through MKL's packed GEMM where
    torch has it."""
    torch.manual_seed(7)
    theirs = torch.nn.LSTM(3, 520, bidirectional=bidirectional, proj_size=510)
    ours = unrolled.from_torch(theirs, backend="fast")
    x = torch.randn(4, 2, 3, requires_grad=True)
    compare(ours, theirs, (x,), dtype=torch.float32)


def test_graph_released_says_whether_the_backward_frees_the_graph():
    """The layers write gradients over their saved buffers only when this is True."""
    seen = []

    class Probe(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, grad):
            seen.append(native.graph_released())
            return grad * 2

    x = torch.randn(3, requires_grad=True)
    Probe.apply(x).sum().backward()
    Probe.apply(x).sum().backward(retain_graph=True)
    torch.autograd.grad(Probe.apply(x).sum(), x)
    torch.autograd.grad(Probe.apply(x).sum(), x, retain_graph=True)
    torch.autograd.grad(Probe.apply(x).sum(), x, create_graph=True)  # retains by default
    released = native.ops() is not None  # without the native ops: always the safe False
    assert seen == [released, False, released, False, False]
    assert native.graph_released() is False  # outside any backward


@needs_native
@pytest.mark.parametrize("mode,bidirectional,proj,lengths,bias", CASES)
def test_kept_and_released_graphs_both_equal_torch(mode, bidirectional, proj, lengths, bias):
    """A backward that keeps the graph leaves the saved buffers as they were (the second
    backward reads them); the one that releases it writes its gradients over them."""
    torch.manual_seed(6)
    ours, theirs = make_pair(mode, bidirectional, proj, bias)
    compare(ours, theirs, make_input(lengths), retain_graph=True)


@needs_native
@pytest.mark.parametrize("mode", list(TORCH_MODES))
def test_released_backward_reuses_the_saved_buffers(mode):
    """The released path is the one taken by default: the gradients land in the saved gate
    buffers (LSTM, GRU) or the saved states take the reverse direction's gradient (RNN, two
    directions), so those buffers differ after a plain backward and not after a kept one."""
    torch.manual_seed(7)
    ours, _ = make_pair(mode, True, 0, True, layers=1)
    x = torch.randn(9, 6, 5, dtype=torch.float64, requires_grad=True)
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    for retain, changes in ((True, False), (False, True)):
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            out = ours(x)[0]
        internal = saved[-3 if mode in ("LSTM", "GRU") else -1 :]  # the layer's own buffers
        before = [t.clone() for t in internal]
        out.sum().backward(retain_graph=retain)
        changed = [not torch.equal(a, b) for a, b in zip(before, internal)]
        assert any(changed) == changes, (retain, changed)


@needs_native
@pytest.mark.parametrize("mode", list(TORCH_MODES))
@pytest.mark.parametrize("how", ["checkpoint", "reentrant checkpoint", "save_on_cpu"])
def test_released_backward_under_saved_tensor_machinery(mode, how):
    """Activation checkpointing (both kinds: recomputed saved tensors, a nested backward) and
    save_on_cpu hand the backward other copies of its saved buffers; writing over those must
    still give torch's gradients."""
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(8)
    ours, theirs = make_pair(mode, True, 0, True)
    x = torch.randn(7, 3, 5, dtype=torch.float64)

    def gradients(module, wrapped):
        module.zero_grad()
        leaf = x.clone().requires_grad_()
        if not wrapped:
            out = module(leaf)[0]
        elif how == "save_on_cpu":
            with torch.autograd.graph.save_on_cpu():
                out = module(leaf)[0]
        else:
            reentrant = how == "reentrant checkpoint"
            out = checkpoint(lambda t: module(t)[0], leaf, use_reentrant=reentrant)
        weights = torch.arange(out.numel(), dtype=out.dtype).view_as(out).sin()
        (out * weights).sum().backward()
        return [leaf.grad] + [p.grad.clone() for p in module.parameters()]

    for k, (got, want) in enumerate(zip(gradients(ours, True), gradients(theirs, False))):
        assert_close(f"grad {k}", got, want, torch.float64)


@needs_native
def test_directions_in_turn_beyond_the_cache_equal_torch(tmp_path):
    """Weights beyond a core's own cache: each direction in turn on the whole team (the
    schedule of large bidirectional layers), in a process told that the cache is 1 byte."""
    script = tmp_path / "in_turn.py"
    script.write_text(
        "import torch, unrolled\n"
        "from parity import compare\n"
        "torch.set_num_threads(2)\n"
        "for mode in ('LSTM', 'GRU', 'RNN'):\n"
        "    torch.manual_seed(0)\n"
        "    theirs = getattr(torch.nn, mode)(5, 40, 2, bidirectional=True).double()\n"
        "    ours = unrolled.from_torch(theirs)\n"
        "    x = torch.randn(7, 13, 5, dtype=torch.float64, requires_grad=True)\n"
        "    compare(ours, theirs, (x,))\n"
        "print('ok')\n"
    )
    env = dict(os.environ, UNROLLED_ENGINE_CACHE_BYTES="1", UNROLLED_QUIET="1",
               PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]))  # fmt: skip
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr


ROWS_SPLIT_SCRIPT = """
import sys, torch, unrolled
from torch.nn.utils.rnn import pack_padded_sequence
from parity import compare
torch.set_num_threads(2)
outputs = []
for mode in ('LSTM', 'GRU', 'RNN'):
    for batch in (16, 41):  # 8 and 20 rows a member: at least a tile of rows each
        torch.manual_seed(0)
        layer = getattr(unrolled, mode)(24, 40)
        x = torch.randn(9, batch, 24)
        lengths = torch.randint(1, 10, (batch,))
        lengths[0] = 9
        with torch.no_grad():
            outputs.append(layer(x)[0])
            outputs.append(layer(pack_padded_sequence(x, lengths, enforce_sorted=False))[0].data)
        x.requires_grad_(True)
        for given in (x, pack_padded_sequence(x, lengths, enforce_sorted=False)):  # backward
            output = layer(given)[0]
            (output.data if hasattr(output, 'batch_sizes') else output).sum().backward()
            outputs += [x.grad.clone()] + [p.grad.clone() for p in layer.parameters()]
            x.grad = None
            layer.zero_grad()
    theirs = getattr(torch.nn, mode)(24, 40, 2).double()
    x = torch.randn(9, 16, 24, dtype=torch.float64, requires_grad=True)
    compare(unrolled.from_torch(theirs), theirs, (x,))
torch.save(outputs, sys.argv[1])
print('ok')
"""


@needs_native
def test_rows_split_and_units_split_give_the_same_bits(tmp_path):
    """A loop whose direction's panels fit a core's own cache splits the batch rows between the
    team (no meeting per step); told that the cache is 1 byte, it splits the hidden units (a
    meeting per step). Each output element is summed in the same order either way: the same
    bits, forward and backward, padded and packed, and equal to torch (float64, every
    gradient)."""
    script = tmp_path / "rows_split.py"
    script.write_text(ROWS_SPLIT_SCRIPT)
    found = {}
    for schedule, cache in (("rows", None), ("units", "1")):
        env = dict(os.environ, UNROLLED_QUIET="1", UNROLLED_TUNING="off",
                   PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]))  # fmt: skip
        env.pop("UNROLLED_ENGINE_CACHE_BYTES", None)
        if cache is not None:
            env["UNROLLED_ENGINE_CACHE_BYTES"] = cache
        done = subprocess.run([sys.executable, str(script), str(tmp_path / f"{schedule}.pt")],
                              env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
        assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr
        found[schedule] = torch.load(tmp_path / f"{schedule}.pt")
    for rows, units in zip(found["rows"], found["units"]):
        assert torch.equal(rows, units)


@needs_native
def test_the_engine_asks_for_the_inputs_exactly_when_fused():
    """The fused LSTM computes the input part itself; the BLAS loop reads it from the gates."""
    sizes = [3, 3]  # T = 2 steps of B = 3 rows: N = 6
    gates, cs, hs = torch.zeros(1, 6, 16), torch.zeros(1, 9, 4), torch.zeros(1, 9, 4)
    none = torch.empty(0)
    w_rec = [torch.zeros(4, 16)]
    with pytest.raises(RuntimeError, match="inputs and w_in must be one per direction"):
        native.ops().lstm_forward(gates, none, w_rec, [], cs, hs, sizes, True, False, True, [], [])
    x, w_ih = [torch.zeros(6, 5)], [torch.zeros(16, 5)]
    with pytest.raises(RuntimeError, match="and empty without"):
        native.ops().lstm_forward(
            gates, none, w_rec, [], cs, hs, sizes, True, False, False, x, w_ih
        )


@needs_native
@pytest.mark.parametrize("op", ["lstm", "gru", "rnn"])
def test_the_loops_check_the_buffers_against_batch_sizes(op):
    """A state buffer that is not (D, B + N, X) for the given batch_sizes is an error, never a
    read past its end."""
    sizes = [3, 2]  # B = 3, N = 5: states must have 8 rows
    hs = torch.zeros(1, 9, 4)  # one row too many
    none = torch.empty(0)
    with pytest.raises(RuntimeError, match=r"\(D, B \+ N, [HP]\).*B=3, N=5"):
        if op == "lstm":
            gates, cs = torch.zeros(1, 5, 16), torch.zeros(1, 9, 4)
            native.ops().lstm_forward(
                gates, none, [torch.zeros(4, 16)], [], cs, hs, sizes, True, False, False, [], []
            )
        elif op == "gru":
            xw, hh, ns = torch.zeros(1, 5, 12), torch.zeros(1, 5, 12), torch.zeros(1, 5, 4)
            native.ops().gru_forward(xw, hh, ns, hs, [torch.zeros(4, 12)], [], sizes, False)
        else:
            native.ops().rnn_forward(hs, [torch.zeros(4, 4)], False, sizes, False)
