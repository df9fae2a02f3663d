"""Cells beyond torch: each against a plain implementation written here from its equations,
gradcheck in float64, and MinGRU's parallel scan against its sequential steps."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence

import unrolled

T, B, I, H = 5, 3, 4, 3
F64 = torch.float64


# ---- plain implementations, straight from the papers' equations ------------------------------


def layer_norm(a, gamma, beta, eps=1e-5):
    mean = a.mean(-1, keepdim=True)
    var = ((a - mean) ** 2).mean(-1, keepdim=True)
    return gamma * (a - mean) / torch.sqrt(var + eps) + beta


def plain_ln_lstm(p, x, state):
    h, c = state
    outputs = []
    for t in range(x.shape[0]):
        pre = layer_norm(x[t] @ p["weight_ih"].T, p["norm_ih.weight"], p["norm_ih.bias"])
        pre = pre + layer_norm(h @ p["weight_hh"].T, p["norm_hh.weight"], p["norm_hh.bias"])
        i, f, g, o = pre[:, :H], pre[:, H : 2 * H], pre[:, 2 * H : 3 * H], pre[:, 3 * H :]
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(layer_norm(c, p["norm_c.weight"], p["norm_c.bias"]))
        outputs.append(h)
    return torch.stack(outputs), (h, c)


def plain_ln_gru(p, x, h):
    outputs = []
    for t in range(x.shape[0]):
        a = layer_norm(x[t] @ p["weight_ih"].T, p["norm_ih.weight"], p["norm_ih.bias"])
        b = layer_norm(h @ p["weight_hh"].T, p["norm_hh.weight"], p["norm_hh.bias"])
        r = torch.sigmoid(a[:, :H] + b[:, :H])
        z = torch.sigmoid(a[:, H : 2 * H] + b[:, H : 2 * H])
        n = torch.tanh(a[:, 2 * H :] + r * b[:, 2 * H :])
        h = (1 - z) * n + z * h
        outputs.append(h)
    return torch.stack(outputs), h


def plain_indrnn(p, x, h, act=torch.relu):
    outputs = []
    for t in range(x.shape[0]):
        h = act(x[t] @ p["weight_ih"].T + p["bias_ih"] + p["weight_hh"] * h)
        outputs.append(h)
    return torch.stack(outputs), h


def plain_mingru(p, x, h):
    outputs = []
    for t in range(x.shape[0]):
        z = torch.sigmoid(x[t] @ p["weight_ih"][:H].T + p["bias_ih"][:H])
        candidate = x[t] @ p["weight_ih"][H:].T + p["bias_ih"][H:]
        positive = torch.where(candidate >= 0, candidate + 0.5, torch.sigmoid(candidate))
        h = (1 - z) * h + z * positive
        outputs.append(h)
    return torch.stack(outputs), h


CELLS = {
    "LayerNormLSTM": (lambda: unrolled.LayerNormLSTM(I, H), plain_ln_lstm),
    "LayerNormGRU": (lambda: unrolled.LayerNormGRU(I, H), plain_ln_gru),
    "IndRNN": (lambda: unrolled.IndRNN(I, H), plain_indrnn),
    "IndRNN-tanh": (
        lambda: unrolled.IndRNN(I, H, "tanh"),
        lambda p, x, h: plain_indrnn(p, x, h, torch.tanh),
    ),
    "MinGRUCell": (lambda: unrolled.MinGRUCell(I, H), plain_mingru),
}


def random_cell(name):
    torch.manual_seed(sum(map(ord, name)))
    cell = CELLS[name][0]().to(F64)
    with torch.no_grad():  # move the LN gains/biases off 1/0 so that they are really tested
        for param in cell.parameters():
            param.add_(torch.randn_like(param) * 0.3)
    return cell


def random_state(cell, batch=B):
    state = cell.init_state(batch, dtype=F64, device=torch.device("cpu"))
    if isinstance(state, torch.Tensor):
        return torch.randn_like(state).requires_grad_()
    return tuple(torch.randn_like(s).requires_grad_() for s in state)


def leaves(value):
    return [value] if isinstance(value, torch.Tensor) else list(value)


@pytest.mark.parametrize("name", list(CELLS))
def test_cell_equals_plain_implementation(name):
    """Recurrent(cell) == the plain loop: outputs, final state and every gradient, float64."""
    cell = random_cell(name)
    plain = CELLS[name][1]
    rec = unrolled.Recurrent(lambda size: cell, I)
    x = torch.randn(T, B, I, dtype=F64, requires_grad=True)
    state = random_state(cell)
    stacked = tuple(s.unsqueeze(0) for s in leaves(state))  # (1, B, *) each
    out, final = rec(x, stacked[0] if len(stacked) == 1 else stacked)
    params = dict(cell.named_parameters())
    want_out, want_final = plain(params, x, state)
    got, want = [out, *leaves(final)], [want_out, *(s.unsqueeze(0) for s in leaves(want_final))]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    weights = torch.randn_like(out)
    targets = [x, *leaves(state), *params.values()]
    ours = torch.autograd.grad((out * weights).sum(), targets)
    theirs = torch.autograd.grad((want_out * weights).sum(), targets)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("name", list(CELLS))
def test_cell_gradcheck(name):
    """Gradients through a bidirectional Recurrent with uneven lengths, float64."""
    torch.manual_seed(0)
    make = CELLS[name][0]

    def factory(size):
        cell = make()
        cell.__init__(size, 2, *(["tanh"] if name == "IndRNN-tanh" else []))
        return cell.to(F64)

    rec = unrolled.Recurrent(factory, I, bidirectional=True)
    names, params = zip(*rec.named_parameters())
    x = torch.randn(3, 2, I, dtype=F64, requires_grad=True)
    lengths = torch.tensor([3, 2])

    def run(x, *weights):
        out, final = functional_call(rec, dict(zip(names, weights)), (x,), {"lengths": lengths})
        return out, *leaves(final)

    weights = [p.detach().clone().requires_grad_() for p in params]
    assert torch.autograd.gradcheck(run, (x, *weights), eps=1e-6, atol=1e-7, fast_mode=True)


def test_cell_construction_errors():
    with pytest.raises(ValueError, match="nonlinearity"):
        unrolled.IndRNN(I, H, "sigmoid")
    with pytest.raises(ValueError, match="hidden_size must be greater than zero"):
        unrolled.LayerNormLSTM(I, 0)
    with pytest.raises(TypeError, match="input_size should be of type int"):
        unrolled.MinGRUCell(2.0, H)
    with pytest.raises(TypeError, match="parallel must be a bool"):
        unrolled.MinGRU(I, H)(torch.randn(T, B, I), parallel="yes")


# ---- MinGRU: parallel scan == sequential steps ----------------------------------------------


def make_input(kind, batch_first):
    if kind == "unbatched":
        return torch.randn(T + 2, I, dtype=F64, requires_grad=True), None
    shape = (B + 3, T + 2, I) if batch_first else (T + 2, B + 3, I)
    x = torch.randn(*shape, dtype=F64, requires_grad=True)
    lengths = [7, 5, 5, 2, 1, 1]
    if kind == "packed":
        lengths = torch.tensor(lengths)[torch.tensor([1, 0, 5, 2, 4, 3])]
        return pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False), None
    return x, (lengths if kind == "lengths" else None)


MINGRU_CASES = list(itertools.product(
    (1, 2), (False, True), (False, True), ("padded", "lengths", "packed", "unbatched"),
))  # fmt: skip


@pytest.mark.parametrize("layers,bidirectional,batch_first,kind", MINGRU_CASES)
def test_mingru_parallel_equals_sequential(layers, bidirectional, batch_first, kind):
    torch.manual_seed(layers + 2 * bidirectional + 4 * batch_first)
    model = unrolled.MinGRU(I, H, layers, bidirectional, batch_first).to(F64)
    x, lengths = make_input(kind, batch_first)
    rows = layers * (2 if bidirectional else 1)
    lead = (rows,) if kind == "unbatched" else (rows, B + 3)
    hx = torch.randn(*lead, H, dtype=F64, requires_grad=True)  # either sign: no log(h0) needed
    results = []
    for parallel in (True, False):
        out, h_n = model(x, hx, parallel=parallel, lengths=lengths)
        out = out.data if kind == "packed" else out
        grads = torch.autograd.grad(
            (out * torch.linspace(-1, 1, out.numel(), dtype=F64).view_as(out)).sum() + h_n.sum(),
            [x.data if kind == "packed" else x, hx, *model.parameters()],
        )
        results.append([out, h_n, *grads])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-8, rtol=0)


def test_mingru_equals_plain_implementation_both_modes():
    torch.manual_seed(7)
    model = unrolled.MinGRU(I, H).to(F64)
    x = torch.randn(T, B, I, dtype=F64)
    h0 = torch.randn(1, B, H, dtype=F64)
    want, want_h = plain_mingru(dict(model.cells[0].named_parameters()), x, h0[0])
    for parallel in (True, False):
        out, h_n = model(x, h0, parallel=parallel)
        torch.testing.assert_close(out, want, atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(h_n[0], want_h, atol=1e-12, rtol=1e-10)


def test_mingru_parallel_gradcheck():
    torch.manual_seed(8)
    model = unrolled.MinGRU(2, 2, num_layers=2, bidirectional=True).to(F64)
    names, params = zip(*model.named_parameters())
    x = torch.randn(4, 2, 2, dtype=F64, requires_grad=True)
    h0 = torch.randn(4, 2, 2, dtype=F64, requires_grad=True)

    def run(x, h0, *weights):
        kwargs = {"parallel": True, "lengths": torch.tensor([4, 2])}
        return functional_call(model, dict(zip(names, weights)), (x, h0), kwargs)

    weights = [p.detach().clone().requires_grad_() for p in params]
    assert torch.autograd.gradcheck(run, (x, h0, *weights), eps=1e-6, atol=1e-7, fast_mode=True)


@pytest.mark.parametrize("scan", ["doubling", "logcumsumexp"])
def test_mingru_long_saturated_sequence_is_stable(scan):
    """Gates shut for a long time (|A_T| in the thousands) and wide candidates: no overflow."""
    torch.manual_seed(9)
    model = unrolled.MinGRU(I, H, scan=scan).to(F64)
    with torch.no_grad():
        model.cells[0].weight_ih.mul_(8)
    x = torch.randn(2048, 2, I, dtype=F64) * 3
    fast, fast_h = model(x, parallel=True)
    slow, slow_h = model(x, parallel=False)
    assert torch.isfinite(fast).all()
    torch.testing.assert_close(fast, slow, atol=1e-8, rtol=1e-8)
    out32, _ = model.float()(x.float(), parallel=True)
    assert torch.isfinite(out32).all()


def test_mingru_default_mode_and_single_step(monkeypatch):
    torch.manual_seed(10)
    model = unrolled.MinGRU(I, H).to(F64)
    used = []
    scan = unrolled.variants.mingru.parallel_scan
    monkeypatch.setattr(unrolled.variants.mingru, "parallel_scan",
                        lambda *a: used.append(True) or scan(*a))  # fmt: skip
    x = torch.randn(6, B, I, dtype=F64)
    out, _ = model(x)  # training step: parallel
    assert used == [True]
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], out, atol=1e-12, rtol=0)  # inference: sequential
        model(x[:1])  # one step: sequential
    assert used == [True]
    step_out, _ = model.step(x[0])
    torch.testing.assert_close(step_out, out[0], atol=1e-12, rtol=0)


@pytest.mark.parametrize("scan", ["doubling", "logcumsumexp"])
def test_mingru_both_scans_equal_sequential(scan):
    torch.manual_seed(15)
    model = unrolled.MinGRU(I, H, 2, bidirectional=True, scan=scan).to(F64)
    x = torch.randn(37, B, I, dtype=F64)  # T not a power of two
    hx = torch.randn(4, B, H, dtype=F64)
    lengths = [37, 20, 1]
    for a, b in zip(model(x, hx, parallel=True, lengths=lengths),
                    model(x, hx, parallel=False, lengths=lengths)):  # fmt: skip
        torch.testing.assert_close(a, b, atol=1e-8, rtol=0)
    with pytest.raises(ValueError, match="scan must be one of"):
        unrolled.MinGRU(I, H, scan="fft")
