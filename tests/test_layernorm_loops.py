"""LayerNormLSTM / LayerNormGRU's hand-written loops and BPTT (native and Python) against the
step loop they replace: outputs, final states and every gradient, on the same weights."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

import unrolled
from unrolled import backends
from unrolled.fast import native
from unrolled.variants import layernorm_loops, layernorm_scan

CELLS = {"LSTM": unrolled.LayerNormLSTM, "GRU": unrolled.LayerNormGRU}
LOOPS = ["native", "python"]
TOLERANCE = {
    torch.float64: {"atol": 1e-9, "rtol": 0.0},
    torch.float32: {"atol": 3e-5, "rtol": 1e-4},
}
#: (T, B, H, uneven lengths): odd sizes, one step, one sequence
SHAPES = [(7, 4, 5, [7, 3, 5, 1]), (1, 1, 1, [1]), (4, 3, 7, [2, 4, 1])]


def assert_close(got, expected, dtype, where: str) -> None:
    """Within :data:`TOLERANCE`, the absolute part relative to the largest entry when that is
    above 1: a float32 gradient summed over steps carries rounding of its own size."""
    tolerance = dict(TOLERANCE[dtype])
    tolerance["atol"] *= max(1.0, expected.abs().max().item())
    torch.testing.assert_close(got, expected, **tolerance, msg=lambda m: f"{where}: {m}")


def loops_context(loops: str):
    """The loops a ``scan`` call runs: native (skipped where not built) or Python."""
    if loops == "native":
        if native.ops() is None:
            pytest.skip(f"native loops unavailable: {native.unavailable_reason()}")
        return torch.enable_grad()  # a context that changes nothing
    return native.disabled()


def randomise_norms(module: torch.nn.Module) -> None:
    """Non-trivial LN gains and biases (not the 1 / 0 init)."""
    with torch.no_grad():
        for norm in module.modules():
            if isinstance(norm, torch.nn.LayerNorm):
                norm.weight.uniform_(0.5, 1.5)
                norm.bias.uniform_(-0.5, 0.5)


def stepping_copy(model: unrolled.Recurrent) -> unrolled.Recurrent:
    """The same model with the cells' ``scan`` hidden: ``stack`` runs the step loop."""
    twin = copy.deepcopy(model)
    for cell in twin.cells:
        cell.scan = None  # an instance attribute shadows the method: run_direction steps
    return twin


def results(model, x, state, lengths, weights_out, weights_final):
    """Outputs, final states and the gradients of every input and parameter."""
    output, final = model(x, state, lengths=lengths)
    finals = list(final) if isinstance(final, tuple) else [final]
    loss = (output * weights_out).sum() + sum((f * w).sum() for f, w in zip(finals, weights_final))
    states = list(state) if isinstance(state, tuple) else [state]
    inputs = [x, *states, *model.parameters()]
    return [output, *finals, *torch.autograd.grad(loss, inputs)]


def case(kind, dtype, layers, bidirectional, shape, uneven, seed=0):
    """A model, its input, initial state, lengths and loss weights."""
    torch.manual_seed(seed)
    steps, batch, hidden, lengths = shape
    directions = 2 if bidirectional else 1
    model = unrolled.Recurrent(
        lambda size: CELLS[kind](size, hidden, dtype=dtype), 3, layers, bidirectional
    )
    randomise_norms(model)
    x = torch.randn(steps, batch, 3, dtype=dtype, requires_grad=True)

    def state_leaf():
        return torch.randn(layers * directions, batch, hidden, dtype=dtype, requires_grad=True)

    state = (state_leaf(), state_leaf()) if kind == "LSTM" else state_leaf()
    weights_out = torch.randn(steps, batch, directions * hidden, dtype=dtype)
    weights_final = [torch.randn(layers * directions, batch, hidden, dtype=dtype) for _ in "hc"]
    return model, x, state, (torch.tensor(lengths) if uneven else None), weights_out, weights_final


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("loops", LOOPS)
@pytest.mark.parametrize("kind", list(CELLS))
def test_loops_equal_the_step_loop(kind, loops, dtype):
    for layers, bidirectional, shape, uneven in itertools.product(
        [1, 2], [False, True], SHAPES, [False, True]
    ):
        model, x, state, lengths, w_out, w_final = case(
            kind, dtype, layers, bidirectional, shape, uneven
        )
        expected = results(stepping_copy(model), x, state, lengths, w_out, w_final)
        with loops_context(loops):
            got = results(model, x, state, lengths, w_out, w_final)
        where = f"{kind} {loops} L={layers} bidirectional={bidirectional} {shape} {uneven=}"
        for index, (a, b) in enumerate(zip(got, expected)):
            assert_close(a, b, dtype, f"{where}: result {index}")
        if lengths is not None:  # padded outputs are exactly zero
            padded = torch.arange(shape[0])[:, None] >= lengths[None, :]  # (T, B)
            assert (got[0][padded] == 0).all()


def test_the_loops_that_run_are_the_ones_asked_for():
    """Inside ``disabled()`` the Python loops, else the native ones where built; both stand
    behind the plan's runner."""
    model = unrolled.Recurrent(lambda size: unrolled.LayerNormGRU(size, 4), 3)
    x = torch.randn(5, 2, 3)
    with native.disabled():
        assert layernorm_scan.loops_for(x) is layernorm_loops
        assert unrolled.plan(model, x).runner == backends.PYTHON_LOOPS
    assert layernorm_scan.loops_for(x.half()) is layernorm_loops  # native: float32/64 only
    if native.ops() is not None:
        assert layernorm_scan.loops_for(x) is torch.ops.unrolled
        found = unrolled.plan(model, x)
        assert found.runner == backends.NATIVE_LOOPS
        assert "LayerNormGRU cells run their own time loop (hand-written BPTT)" in found.reason


def function_and_inputs(kind: str, loops):
    """The autograd Function of ``kind`` on ``loops`` and float64 inputs (state, weights and LN
    parameters random), lengths uneven: ``(fn(*inputs), inputs)`` for gradcheck."""
    torch.manual_seed(1)
    steps, batch, hidden = 4, 3, 3
    lengths = torch.tensor([4, 1, 3])
    gates = (4 if kind == "LSTM" else 3) * hidden

    def leaf(*shape):
        return torch.randn(*shape, dtype=torch.float64, requires_grad=True)

    xp, h0, w_hh = leaf(steps, batch, gates), leaf(batch, hidden), leaf(gates, hidden)
    gamma, beta = (1 + 0.3 * leaf(gates)).detach().requires_grad_(), leaf(gates)
    if kind == "LSTM":
        c0, gamma_c, beta_c = leaf(batch, hidden), leaf(hidden), leaf(hidden)

        def lstm(*tensors):
            return layernorm_scan.LayerNormLSTMScan.apply(loops, lengths, *tensors, 1e-5, 1e-5)

        return lstm, (xp, h0, c0, w_hh, gamma, beta, gamma_c, beta_c)

    def gru(*tensors):
        return layernorm_scan.LayerNormGRUScan.apply(loops, lengths, *tensors, 1e-5)

    return gru, (xp, h0, w_hh, gamma, beta)


@pytest.mark.parametrize("loops", LOOPS)
@pytest.mark.parametrize("kind", list(CELLS))
def test_hand_written_backward_gradcheck(kind, loops):
    with loops_context(loops):
        chosen = layernorm_scan.loops_for(torch.zeros((), dtype=torch.float64))
    fn, inputs = function_and_inputs(kind, chosen)
    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)


@pytest.mark.parametrize("kind", list(CELLS))
def test_double_backward_differentiates_the_step_loop(kind):
    fn, inputs = function_and_inputs(kind, layernorm_scan.loops_for(torch.zeros(())))
    assert torch.autograd.gradgradcheck(fn, inputs, fast_mode=True)


def test_torch_func_runs_the_step_loop():
    """Under a torch.func transform ``scan`` steps (the hand-written backward has no batching
    rule): torch.func.grad gives autograd's gradient."""
    model, x, state, lengths, w_out, _ = case("LSTM", torch.float64, 1, True, SHAPES[0], True)
    params = dict(model.named_parameters())

    def loss(p):
        output, _ = torch.func.functional_call(model, p, (x, state), {"lengths": lengths})
        return (output * w_out).sum()

    expected = torch.autograd.grad(loss(params), list(params.values()))
    got = torch.func.grad(loss)({k: v.detach() for k, v in params.items()})
    for a, b in zip(got.values(), expected):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def run_loops(kind: str, loops, dtype, steps: int, batch: int, hidden: int, seed: int = 2):
    """The forward and the backward of ``loops`` on one set of random inputs, buffers as
    :mod:`unrolled.variants.layernorm_loops`'s contract: ``{name: buffer}`` after both."""
    generator = torch.Generator().manual_seed(seed)
    width = (4 if kind == "LSTM" else 3) * hidden

    def rand(*shape, scale=1.0, shift=0.0):
        return torch.randn(*shape, generator=generator, dtype=dtype) * scale + shift

    xp, w_hh = rand(steps, batch, width), rand(width, hidden, scale=0.5)
    gamma, beta = rand(width, scale=0.3, shift=1.0), rand(width, scale=0.3)
    gates, mhat = torch.empty_like(xp), torch.empty_like(xp)
    rstd = xp.new_empty(steps, batch)
    hs = xp.new_empty(steps + 1, batch, hidden)
    hs[0] = rand(batch, hidden)
    d_hs = rand(steps + 1, batch, hidden)  # what reaches each h_t from outside
    d_xp, dm = torch.empty_like(xp), torch.empty_like(xp)
    d_gamma, d_beta = xp.new_full((width,), float("nan")), xp.new_full((width,), float("nan"))
    if kind == "GRU":
        loops.layernorm_gru_forward(xp, w_hh, gamma, beta, 1e-5, gates, mhat, rstd, hs)
        loops.layernorm_gru_backward(
            gates, mhat, rstd, hs, w_hh, gamma, beta, d_hs, d_xp, dm, d_gamma, d_beta
        )
        return dict(gates=gates, mhat=mhat, rstd=rstd, hs=hs, d_hs=d_hs, d_xp=d_xp, dm=dm,
                    d_gamma=d_gamma, d_beta=d_beta)  # fmt: skip
    gamma_c, beta_c = rand(hidden, scale=0.3, shift=1.0), rand(hidden, scale=0.3)
    cs, chat = xp.new_empty(steps + 1, batch, hidden), xp.new_empty(steps, batch, hidden)
    cs[0] = rand(batch, hidden)
    rstd_c = xp.new_empty(steps, batch)
    d_cs = rand(steps + 1, batch, hidden)
    d_gamma_c, d_beta_c = xp.new_full((hidden,), float("nan")), xp.new_full((hidden,), float("nan"))
    loops.layernorm_lstm_forward(
        xp, w_hh, gamma, beta, gamma_c, beta_c, 1e-5, 1e-5, gates, mhat, rstd, hs, cs, chat,
        rstd_c,
    )  # fmt: skip
    loops.layernorm_lstm_backward(
        gates, mhat, rstd, cs, chat, rstd_c, w_hh, gamma, gamma_c, beta_c, d_hs, d_cs, d_xp, dm,
        d_gamma, d_beta, d_gamma_c, d_beta_c,
    )  # fmt: skip
    return dict(gates=gates, mhat=mhat, rstd=rstd, hs=hs, cs=cs, chat=chat, rstd_c=rstd_c,
                d_hs=d_hs, d_cs=d_cs, d_xp=d_xp, dm=dm, d_gamma=d_gamma, d_beta=d_beta,
                d_gamma_c=d_gamma_c, d_beta_c=d_beta_c)  # fmt: skip


def native_ops():
    if native.ops() is None:
        pytest.skip(f"native loops unavailable: {native.unavailable_reason()}")
    return torch.ops.unrolled


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("kind", list(CELLS))
def test_native_and_python_loops_agree(kind, dtype):
    """The two twins on the same buffers: every buffer of the contract, the LN parameters'
    gradients (summed inside the backward) included. B = 64 rows of H = 24: the native row
    passes split over threads where there are several."""
    ops = native_ops()
    for steps, batch, hidden in [(9, 64, 24), (1, 1, 1), (0, 3, 2)]:
        got = run_loops(kind, ops, dtype, steps, batch, hidden)
        expected = run_loops(kind, layernorm_loops, dtype, steps, batch, hidden)
        for name, buffer in expected.items():
            where = f"{kind} T={steps} B={batch} H={hidden} {name}"
            if buffer.numel() == 0:  # T = 0: no steps, yet the LN sums are written (zeros)
                assert got[name].shape == buffer.shape, where
                continue
            assert_close(got[name], buffer, dtype, where)
        if steps == 0:
            assert (got["d_gamma"] == 0).all() and (got["d_beta"] == 0).all()


@pytest.mark.parametrize("kind", list(CELLS))
def test_native_sums_are_deterministic(kind):
    """The native backward's per-row sums add up in one fixed order, whichever thread ran a
    row: the same bits on every run (B = 64 rows, split over threads where there are several)."""
    ops = native_ops()
    first, second = (run_loops(kind, ops, torch.float32, 5, 64, 32) for _ in range(2))
    for name in ["d_gamma", "d_beta"] + (["d_gamma_c", "d_beta_c"] if kind == "LSTM" else []):
        assert torch.equal(first[name], second[name]), name
