"""The fast backend against torch.nn (and the reference) where the core sweep does not reach:
odd sizes, T=1, B=1, non-contiguous input, packed and padded variable-length input, dropout,
larger shapes, double backward, inference without a graph, and the dtype fallback."""

from __future__ import annotations

import itertools

import pytest
import torch
from parity import assert_close, compare
from torch.nn.utils.rnn import pack_sequence

import unrolled

TORCH_MODES = {
    "RNN_TANH": lambda *a, **k: torch.nn.RNN(*a, nonlinearity="tanh", **k),
    "RNN_RELU": lambda *a, **k: torch.nn.RNN(*a, nonlinearity="relu", **k),
    "LSTM": torch.nn.LSTM,
    "GRU": torch.nn.GRU,
}
UNEVEN = [7, 5, 5, 2, 1, 1]


def make_pair(mode, input_size, hidden, dtype=torch.float64, **kwargs):
    theirs = TORCH_MODES[mode](input_size, hidden, **kwargs).to(dtype)
    return unrolled.from_torch(theirs, backend="fast"), theirs


def random_hx(mode, rows, batch, hidden, proj, dtype):
    h = torch.randn(rows, batch, proj or hidden, dtype=dtype, requires_grad=True)
    if mode == "LSTM":
        return h, torch.randn(rows, batch, hidden, dtype=dtype, requires_grad=True)
    return h


ODD = [  # (T, B, I, H, P)
    (1, 1, 1, 1, 0),
    (1, 3, 2, 1, 0),
    (5, 1, 7, 13, 0),
    (3, 2, 5, 3, 2),
    (11, 5, 13, 7, 5),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("mode,steps,batch,inputs,hidden,proj", [
    (mode, *sizes) for mode, sizes in itertools.product(TORCH_MODES, ODD)
    if not (sizes[-1] and mode != "LSTM")
])  # fmt: skip
def test_odd_sizes(mode, steps, batch, inputs, hidden, proj, dtype):
    torch.manual_seed(steps * 100 + hidden)
    kwargs = dict(num_layers=2, bidirectional=True)
    if proj:
        kwargs["proj_size"] = proj
    ours, theirs = make_pair(mode, inputs, hidden, dtype, **kwargs)
    x = torch.randn(steps, batch, inputs, dtype=dtype, requires_grad=True)
    hx = random_hx(mode, 4, batch, hidden, proj, dtype)
    compare(ours, theirs, (x,), hx, dtype)


@pytest.mark.parametrize("mode", list(TORCH_MODES))
@pytest.mark.parametrize("batch_first", [False, True], ids=["tf", "bf"])
def test_non_contiguous_input(mode, batch_first):
    torch.manual_seed(1)
    ours, theirs = make_pair(mode, 4, 6, num_layers=2, bidirectional=True, batch_first=batch_first)
    base = torch.randn(6, 9, 8, dtype=torch.float64)
    x = base.transpose(0, 1)[..., ::2]  # (9, 6, 4), neither contiguous nor unit-strided
    assert not x.is_contiguous()
    compare(ours, theirs, (x.detach().requires_grad_(),), None)


@pytest.mark.parametrize("mode,bidir,proj", [
    (m, b, p) for m, b, p in itertools.product(TORCH_MODES, (False, True), (0, 3))
    if not (p and m != "LSTM")
])  # fmt: skip
def test_packed_input_matches_torch(mode, bidir, proj):
    """Same PackedSequence (unsorted lengths) into both: packed output, h_n/c_n, every grad."""
    torch.manual_seed(2)
    kwargs = dict(num_layers=2, bidirectional=bidir)
    if proj:
        kwargs["proj_size"] = proj
    ours, theirs = make_pair(mode, 4, 5, **kwargs)
    order = [2, 0, 5, 3, 1, 4]
    seqs = [torch.randn(UNEVEN[k], 4, dtype=torch.float64) for k in order]
    packed = pack_sequence(seqs, enforce_sorted=False)
    packed.data.requires_grad_()
    hx = random_hx(mode, 2 * (2 if bidir else 1), 6, 5, proj, torch.float64)
    compare(ours, theirs, (packed,), hx)


@pytest.mark.parametrize("mode", list(TORCH_MODES))
def test_padded_lengths_match_reference_and_packed_torch(mode):
    """``lengths=`` on padded, unsorted input: fast == reference, and == torch on the packed
    form; padded outputs are zero and padding receives no gradient."""
    torch.manual_seed(3)
    lengths = torch.tensor([5, 7, 1, 2, 5, 1])
    ours, theirs = make_pair(mode, 3, 4, num_layers=2, bidirectional=True)
    reference = unrolled.from_torch(theirs, backend="reference")
    x = torch.randn(7, 6, 3, dtype=torch.float64)
    results = []
    for module in (ours, reference):
        xin = x.clone().requires_grad_()
        out, h_n = module(xin, lengths=lengths)
        states = h_n if mode == "LSTM" else (h_n,)
        loss = (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum()
        loss = loss + sum((s * s).sum() for s in states)
        grads = torch.autograd.grad(loss, [xin, *module.parameters()])
        results.append((out, states, grads))
    (out, states, grads), (ref_out, ref_states, ref_grads) = results
    assert_close("output", out, ref_out, torch.float64)
    for k, (a, b) in enumerate(zip(states, ref_states)):
        assert_close(f"state[{k}]", a, b, torch.float64)
    for k, (a, b) in enumerate(zip(grads, ref_grads)):
        assert_close(f"grad[{k}]", a, b, torch.float64)
    padding = torch.arange(7)[:, None] >= lengths[None, :]  # (T, B)
    assert not out[padding].abs().any()
    assert not grads[0][padding].abs().any()
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    their_out, their_h = theirs(packed)
    their_out, _ = torch.nn.utils.rnn.pad_packed_sequence(their_out, total_length=7)
    assert_close("output vs torch", out, their_out, torch.float64)
    their_states = their_h if mode == "LSTM" else (their_h,)
    for k, (a, b) in enumerate(zip(states, their_states)):
        assert_close(f"state[{k}] vs torch", a, b, torch.float64)


@pytest.mark.parametrize("mode", list(TORCH_MODES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_dropout_between_layers_matches_torch(mode, dtype):
    """Training mode, same seed before each call -> same masks -> same numbers as torch."""
    torch.manual_seed(4)
    ours, theirs = make_pair(mode, 5, 6, dtype, num_layers=3, bidirectional=True, dropout=0.4)
    ours.train(), theirs.train()
    x = torch.randn(6, 4, 5, dtype=dtype)
    for module in (ours, theirs):  # compare() seeds nothing itself: wrap both calls
        module.forward = _seeded(module.forward)
    compare(ours, theirs, (x.requires_grad_(),), None, dtype)


def _seeded(forward):
    def seeded(*args, **kwargs):
        torch.manual_seed(1234)
        return forward(*args, **kwargs)

    return seeded


@pytest.mark.parametrize("mode", list(TORCH_MODES))
def test_larger_shape_matches_reference(mode):
    torch.manual_seed(5)
    kwargs = dict(num_layers=2, bidirectional=True)
    if mode == "LSTM":
        kwargs["proj_size"] = 9
    theirs = TORCH_MODES[mode](16, 24, **kwargs)
    ours = unrolled.from_torch(theirs, backend="fast")
    reference = unrolled.from_torch(theirs, backend="reference")
    x = torch.randn(30, 8, 16, requires_grad=True)
    compare(ours, reference, (x,), None, torch.float32)


@pytest.mark.parametrize("mode", list(TORCH_MODES))
def test_gradient_penalty_matches_torch(mode):
    """Double backward (create_graph=True) through the fast layer equals torch.nn's."""
    torch.manual_seed(6)
    ours, theirs = make_pair(mode, 3, 4, num_layers=2, bidirectional=True)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    grads = []
    for module in (ours, theirs):
        xin = x.clone().requires_grad_()
        out, _ = module(xin)
        (g_x,) = torch.autograd.grad(out.square().sum(), xin, create_graph=True)
        penalty = g_x.square().sum()
        grads.append(torch.autograd.grad(penalty, list(module.parameters())))
    for k, (a, b) in enumerate(zip(*grads)):
        assert_close(f"penalty grad[{k}]", a, b, torch.float64)


@pytest.mark.parametrize("mode", list(TORCH_MODES))
def test_inference_builds_no_graph(mode):
    """Under no_grad, or when nothing requires grad, the fast path saves nothing."""
    torch.manual_seed(7)
    ours, _ = make_pair(mode, 3, 4, num_layers=2, bidirectional=True)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.no_grad():
            out, h_n = ours(x)
        ours.requires_grad_(False)
        out2, h_n2 = ours(x)
        ours.requires_grad_(True)
        out3, _ = ours(x.requires_grad_())
    states = (h_n if mode == "LSTM" else (h_n,)) + (h_n2 if mode == "LSTM" else (h_n2,))
    for t in (out, out2, *states):
        assert t.grad_fn is None and not t.requires_grad
    torch.testing.assert_close(out, out2, rtol=0, atol=0)
    torch.testing.assert_close(out, out3.detach(), rtol=0, atol=0)
    assert out3.grad_fn is not None
    assert len(saved) > 0  # the hooks do see the training call, so the two zeros above count


def test_bfloat16_falls_back_to_reference():
    torch.manual_seed(8)
    theirs = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True).to(torch.bfloat16)
    ours = unrolled.from_torch(theirs, backend="fast")
    reference = unrolled.from_torch(theirs, backend="reference")
    x = torch.randn(5, 2, 3, dtype=torch.bfloat16)
    out, (h, c) = ours(x)
    ref_out, (ref_h, ref_c) = reference(x)
    assert out.dtype == torch.bfloat16
    for a, b in ((out, ref_out), (h, ref_h), (c, ref_c)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_retained_graph_backward_twice():
    """The backward must not consume what it saved: a retained graph runs twice, same result."""
    torch.manual_seed(9)
    for mode in TORCH_MODES:
        ours, _ = make_pair(mode, 3, 4, num_layers=2, bidirectional=True)
        x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
        out = ours(x)[0].sum()
        first = torch.autograd.grad(out, [x, *ours.parameters()], retain_graph=True)
        second = torch.autograd.grad(out, [x, *ours.parameters()])
        for a, b in zip(first, second):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("mode", list(TORCH_MODES))
@pytest.mark.parametrize("wanted", ["input", "initial state", "weights"])
@pytest.mark.parametrize("packed", [False, True])
def test_only_some_inputs_require_grad(mode, wanted, packed):
    """Frozen weights (fine-tuning the layers below), a frozen input, a learnt initial state:
    the backward computes only what is asked for, and that equals torch's."""
    torch.manual_seed(10)
    ours, theirs = make_pair(mode, 5, 6, num_layers=2, bidirectional=True)
    x = torch.randn(7, 3, 5, dtype=torch.float64)
    h0 = torch.randn(4, 3, 6, dtype=torch.float64)

    def gradients(module):
        leaf_x = x.clone().requires_grad_(wanted == "input")
        leaf_h = h0.clone().requires_grad_(wanted == "initial state")
        for p in module.parameters():
            p.requires_grad_(wanted == "weights")
            p.grad = None
        hx = (leaf_h, torch.zeros_like(leaf_h)) if mode == "LSTM" else leaf_h
        inp = leaf_x
        if packed:
            lengths = torch.tensor([7, 3, 5])
            inp = torch.nn.utils.rnn.pack_padded_sequence(leaf_x, lengths, enforce_sorted=False)
        out = module(inp, hx)[0]
        out = out.data if packed else out
        (out * out.detach().sin()).sum().backward()
        if wanted == "input":
            return {"input": leaf_x.grad}
        if wanted == "initial state":
            return {"h0": leaf_h.grad}
        return {name: p.grad for name, p in module.named_parameters()}

    got, want = gradients(ours), gradients(theirs)
    assert got.keys() == want.keys()
    for name in want:
        assert_close(f"grad {name}", got[name], want[name], torch.float64)
