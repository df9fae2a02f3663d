"""A custom cell's step captured as ATen graphs and run by the C++ loop (``unrolled.captured``):
the same numbers as the plain loop (forward bit for bit), torch.nn's for a GRU written as a cell,
every gradient, and the plain loop wherever the capture cannot be trusted, with the reason."""

from __future__ import annotations

import itertools

import pytest
import torch
from example_cells import MyGRU, copy_gru_weights, gru_parameter_pairs
from torch import nn

import unrolled
from unrolled import backends, captured
from unrolled.fast import native


class PeepholeLSTM(unrolled.Cell):
    """A tuple state, a buffer, a scalar constant and a parameter-only op (the weight's
    normalisation, which the loop computes once per call)."""

    def __init__(self, input_size, hidden_size):
        super().__init__()
        self.hidden_size = hidden_size
        self.w_ih = nn.Parameter(torch.randn(4 * hidden_size, input_size) * 0.4)
        self.w_hh = nn.Parameter(torch.randn(4 * hidden_size, hidden_size) * 0.4)
        self.peep = nn.Parameter(torch.randn(3, hidden_size) * 0.3)
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 4 * hidden_size))

    def init_state(self, batch_size, *, dtype, device):
        zeros = torch.zeros(batch_size, self.hidden_size, dtype=dtype, device=device)
        return zeros, zeros

    def project(self, x):
        return x @ self.w_ih.T  # (T, B, 4H)

    def step(self, xp_t, state):
        h, c = state
        w = self.w_hh / self.w_hh.norm(dim=1, keepdim=True)  # weight norm: parameters only
        i, f, g, o = ((xp_t + h @ w.T) * self.scale).chunk(4, dim=-1)  # 4 x (B, H)
        i = torch.sigmoid(i + self.peep[0] * c)
        f = torch.sigmoid(f + self.peep[1] * c + 1.0)
        c = f * c + i * torch.tanh(g)
        h = torch.sigmoid(o + self.peep[2] * c) * torch.tanh(c)
        return h, (h, c)


def make(cell_class, input_size, hidden_size, *, capture=True, seed=0, **options):
    torch.manual_seed(seed)
    model = unrolled.Recurrent(lambda size: cell_class(size, hidden_size), input_size, **options)
    for cell in model.cells:
        cell.capture = capture
    return model


def run(model, x, lengths=None, state=None):
    """Output, final state and every gradient of a loss that reads all of them."""
    model.zero_grad()
    x = x.detach().requires_grad_()
    state = None if state is None else tuple(s.detach().requires_grad_() for s in state)
    given = state if state is None or len(state) > 1 else state[0]
    output, final = model(x, given) if lengths is None else model(x, given, lengths=lengths)
    finals = final if isinstance(final, tuple) else (final,)
    loss = output.square().sum() + sum((f * f.cos()).sum() for f in finals)
    loss.backward()
    grads = [x.grad, *(s.grad for s in state or ()), *(p.grad for p in model.parameters())]
    return [output, *finals], grads


def assert_same(captured_run, plain_run, dtype):
    (outs_a, grads_a), (outs_b, grads_b) = captured_run, plain_run
    for a, b in zip(outs_a, outs_b):
        assert torch.equal(a, b)  # the same kernels in the same order: bit for bit
    tolerance = {"rtol": 1e-12, "atol": 1e-13} if dtype == torch.float64 else {}
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(a, b, **tolerance)  # sums over steps in another order


def count_captured_calls(monkeypatch) -> list:
    calls = []
    original = captured.CapturedScan.apply
    monkeypatch.setattr(captured.CapturedScan, "apply", lambda *a: calls.append(1) or original(*a))
    return calls


CASES = list(
    itertools.product(
        (MyGRU, PeepholeLSTM),
        (1, 2),  # num_layers
        (False, True),  # bidirectional
        (None, [7, 4, 4, 1]),  # lengths
        (torch.float64, torch.float32),
    )
)


@pytest.mark.parametrize("cell_class,num_layers,bidirectional,lengths,dtype", CASES)
def test_captured_equals_the_plain_loop(
    monkeypatch, cell_class, num_layers, bidirectional, lengths, dtype
):
    options = {"num_layers": num_layers, "bidirectional": bidirectional}
    fast = make(cell_class, 3, 5, **options).to(dtype)
    plain = make(cell_class, 3, 5, capture=False, **options).to(dtype)
    x = torch.randn(7, 4, 3, dtype=dtype)  # (T, B, I)
    lengths = None if lengths is None else torch.tensor(lengths)
    calls = count_captured_calls(monkeypatch)
    assert_same(run(fast, x, lengths), run(plain, x, lengths), dtype)
    assert len(calls) == num_layers * (2 if bidirectional else 1)


@pytest.mark.parametrize("batch_first,unbatched,with_state", [
    (True, False, False), (False, True, False), (False, False, True), (True, False, True),
])  # fmt: skip
def test_input_forms(batch_first, unbatched, with_state):
    fast = make(PeepholeLSTM, 2, 3, num_layers=2, batch_first=batch_first).double()
    plain = make(PeepholeLSTM, 2, 3, capture=False, num_layers=2, batch_first=batch_first)
    plain = plain.double()
    x = torch.randn(5, 2, dtype=torch.float64) if unbatched else torch.randn(3, 5, 2).double()
    state = None
    if with_state:
        state = tuple(torch.randn(2, 3 if batch_first else 5, 3).double() for _ in range(2))
    assert_same(run(fast, x, state=state), run(plain, x, state=state), torch.float64)


def test_one_step_one_sequence_non_contiguous():
    fast, plain = make(MyGRU, 3, 1).double(), make(MyGRU, 3, 1, capture=False).double()
    x = torch.randn(3, 1, 1).double().transpose(0, 2).expand(1, 1, 3)  # T=1, B=1, strided
    assert_same(run(fast, x), run(plain, x), torch.float64)


def test_packed_input():
    fast, plain = make(MyGRU, 3, 4).double(), make(MyGRU, 3, 4, capture=False).double()
    x = torch.randn(6, 3, 3).double()
    packed = nn.utils.rnn.pack_padded_sequence(x, [6, 3, 2], enforce_sorted=False)
    out_a, h_a = fast(packed)
    out_b, h_b = plain(packed)
    assert torch.equal(out_a.data, out_b.data) and torch.equal(h_a, h_b)


def test_a_gru_cell_equals_torch_nn_gru():
    """The GRU written as a cell, captured, is torch.nn.GRU: outputs and every gradient."""
    torch.manual_seed(1)
    reference = nn.GRU(4, 6, num_layers=2, bidirectional=True).double()
    model = make(MyGRU, 4, 6, num_layers=2, bidirectional=True).double()
    copy_gru_weights(model, reference)
    x = torch.randn(9, 3, 4).double()
    assert "captured step" in unrolled.plan(model, x).runner
    ours, our_grads = run(model, x)
    theirs, their_grads = run(reference, x)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(our_grads[0], their_grads[0], rtol=1e-9, atol=1e-9)  # d_x
    for mine, torchs in gru_parameter_pairs(model, reference):
        torch.testing.assert_close(mine.grad, torchs.grad, rtol=1e-9, atol=1e-9)


def test_gradcheck_and_double_backward():
    model = make(PeepholeLSTM, 2, 3, bidirectional=True).double()
    x = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([4, 2])

    def f(x, *weights):
        output, (h, c) = model(x, lengths=lengths)
        return output, h, c

    weights = list(model.parameters())
    assert torch.autograd.gradcheck(f, (x, *weights))
    assert torch.autograd.gradgradcheck(f, (x, weights[0]))


def test_python_loop_equals_the_native_loop():
    if native.ops() is None:
        pytest.skip(f"native ops unavailable: {native.status()}")
    model = make(PeepholeLSTM, 3, 4, num_layers=2, bidirectional=True)
    x, lengths = torch.randn(6, 3, 3), torch.tensor([6, 5, 2])
    native_run = run(model, x, lengths)
    with native.disabled():
        assert unrolled.plan(model, x).runner == captured.PYTHON_LOOP
        python_run = run(model, x, lengths)
    assert unrolled.plan(model, x).runner == captured.NATIVE_LOOP
    assert_same(native_run, python_run, torch.float32)


def test_no_grad_inference_mode_and_eval():
    fast, plain = make(MyGRU, 3, 4).eval(), make(MyGRU, 3, 4, capture=False).eval()
    x = torch.randn(5, 2, 3)
    expected = plain(x)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(fast(x), expected))
    with torch.inference_mode():
        assert all(torch.equal(a, b) for a, b in zip(fast(x), expected))


def test_backward_twice_needs_retain_graph_and_gives_the_same():
    model = make(MyGRU, 3, 4)
    output, _ = model(torch.randn(5, 2, 3))
    first = torch.autograd.grad(output.sum(), list(model.parameters()), retain_graph=True)
    second = torch.autograd.grad(output.sum(), list(model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    with pytest.raises(RuntimeError, match="backward|freed"):
        torch.autograd.grad(output.sum(), list(model.parameters()))


def test_a_weight_changed_in_place_before_backward_is_an_error():
    model = make(MyGRU, 3, 4)
    output, _ = model(torch.randn(5, 2, 3))
    with torch.no_grad():
        model.cells[0].hh.weight.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        output.sum().backward()


def test_editing_the_final_state_in_place_does_not_change_gradients():
    model = make(MyGRU, 3, 4)
    x = torch.randn(5, 2, 3)
    expected = torch.autograd.grad(model(x)[0].sum(), list(model.parameters()))
    output, h_n = model(x)
    h_n.zero_()
    got = torch.autograd.grad(output.sum(), list(model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(expected, got))


class RandomStep(MyGRU):
    def step(self, xp_t, h):
        output, h = super().step(xp_t, h)
        h = nn.functional.dropout(h, 0.5, training=True)
        return h, h


class BranchingStep(MyGRU):
    def step(self, xp_t, h):
        if h.sum() > 0:  # data-dependent Python control flow
            h = h * 0.5
        return super().step(xp_t, h)


class UnchangedState(MyGRU):
    def step(self, xp_t, h):
        output, _ = super().step(xp_t, h)
        return output, h  # the state never moves: the graph's output aliases its input


@pytest.mark.parametrize("cell_class,reason", [
    (RandomStep, "does not reproduce step"),
    (BranchingStep, "tracing step() failed"),
    (UnchangedState, "alias or mutate"),
])  # fmt: skip
def test_steps_that_cannot_be_captured_run_the_plain_loop(cell_class, reason):
    model = make(cell_class, 3, 4)
    x = torch.randn(5, 2, 3)
    found = unrolled.plan(model, x)
    assert found.runner == backends.REFERENCE and reason in found.reason, str(found)
    plain = make(cell_class, 3, 4, capture=False)
    torch.manual_seed(5)
    a = run(model, x)
    torch.manual_seed(5)
    b = run(plain, x)
    assert_same(a, b, torch.float32)


def test_torch_func_and_autocast_run_the_plain_loop():
    model = make(MyGRU, 3, 4).double()
    x = torch.randn(4, 2, 3).double()
    reasons = []

    def output(x):
        reasons.append(captured.why_not(model.cells[0], x))
        return model(x)[0]

    jacobian = torch.func.jacrev(output)(x)
    plain = make(MyGRU, 3, 4, capture=False).double()
    torch.testing.assert_close(jacobian, torch.func.jacrev(lambda x: plain(x)[0])(x))
    assert reasons == ["a torch.func transform is running"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert captured.why_not(model.cells[0], x) == "autocast is on"


class NormedElman(unrolled.Cell):
    """Layer norm in the step: its backward passes a bool[] constant (output_mask)."""

    def __init__(self, input_size, hidden_size):
        super().__init__()
        self.hidden_size = hidden_size
        self.ih = nn.Linear(input_size, hidden_size)
        self.hh = nn.Linear(hidden_size, hidden_size, bias=False)
        self.norm = nn.LayerNorm(hidden_size)

    def project(self, x):
        return self.ih(x)

    def step(self, xp_t, h):
        h = torch.tanh(self.norm(xp_t + self.hh(h)) + 0.5)  # a Python number added to a tensor
        return h, h


def test_layer_norm_and_python_numbers_in_the_step(monkeypatch):
    fast = make(NormedElman, 3, 5, bidirectional=True).double()
    plain = make(NormedElman, 3, 5, capture=False, bidirectional=True).double()
    calls = count_captured_calls(monkeypatch)
    x = torch.randn(6, 3, 3).double()
    assert_same(run(fast, x, torch.tensor([6, 2, 5])), run(plain, x, torch.tensor([6, 2, 5])),
                torch.float64)  # fmt: skip
    assert len(calls) == 2


def test_frozen_parameters_and_a_loss_on_the_final_state_only():
    fast, plain = make(PeepholeLSTM, 3, 4).double(), make(PeepholeLSTM, 3, 4, capture=False)
    plain = plain.double()
    for model in (fast, plain):
        model.cells[0].w_hh.requires_grad_(False)
    x = torch.randn(5, 2, 3).double()
    grads = []
    for model in (fast, plain):
        _, (h_n, c_n) = model(x)
        wanted = [p for p in model.parameters() if p.requires_grad]
        grads.append(torch.autograd.grad(c_n.sum(), wanted))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_captured_too(dtype):
    fast = make(PeepholeLSTM, 3, 5, bidirectional=True).to(dtype)
    plain = make(PeepholeLSTM, 3, 5, capture=False, bidirectional=True).to(dtype)
    x = torch.randn(6, 2, 3).to(dtype)
    assert unrolled.plan(fast, x).runner in (captured.NATIVE_LOOP, captured.PYTHON_LOOP)
    (outs_a, grads_a), (outs_b, grads_b) = run(fast, x), run(plain, x)
    assert all(torch.equal(a, b) for a, b in zip(outs_a, outs_b))
    for a, b in zip(grads_a, grads_b, strict=True):  # the steps' sums, rounded in another order
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)
