"""Recurrent dropout and zoneout in the fast backend: the native and the Python loops against
the reference loop with the same draws (outputs, final states, every gradient), gradcheck and
gradgradcheck of the hand-written backward, and the plan saying which loop runs.

The module draws a call's masks once, up front (:func:`unrolled.regularizers.draw_masks`), so
with the same seed every backend reads the same masks: equality is exact up to rounding.
"""

from __future__ import annotations

import contextlib
import itertools

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import unrolled
from unrolled import backends
from unrolled.fast import native

F64, F32 = torch.float64, torch.float32
REGULARIZED = [m for m in ("LSTM", "GRU") if m in backends.REGULARIZED_LOOPS]
OPTIONS = [
    dict(recurrent_dropout=0.4),
    dict(zoneout=0.3),
    dict(zoneout=(0.15, 0.5)),
    dict(recurrent_dropout=0.25, zoneout=0.2),
    dict(recurrent_dropout=1.0, zoneout=(0.0, 0.4)),
]
RUNNERS = ["native", "python"]
# (T, B, I, H, layers, bidirectional, lengths, batch_first): odd sizes, T = 1, B = 1, uneven
SHAPES = [
    (5, 4, 3, 7, 2, True, None, False),
    (7, 6, 2, 5, 1, True, [7, 3, 5, 1, 7, 2], False),
    (1, 1, 1, 1, 1, False, None, False),
    (6, 3, 4, 3, 2, False, [2, 6, 4], True),
]


def runner_context(runner: str):
    if runner == "native" and native.ops() is None:
        pytest.skip(f"native loops unavailable: {native.status()}")
    return native.disabled() if runner == "python" else contextlib.nullcontext()


def applies(mode: str, options: dict) -> bool:
    return mode == "LSTM" or not isinstance(options.get("zoneout"), tuple)


def make(mode, backend, shape, options, dtype=F64):
    _, _, size, hidden, layers, bidirectional, _, batch_first = shape
    torch.manual_seed(0)
    cls = unrolled.LSTM if mode == "LSTM" else unrolled.GRU
    return cls(size, hidden, layers, bidirectional=bidirectional, batch_first=batch_first,
               dtype=dtype, backend=backend, **options)  # fmt: skip


def run(module, x, hx, lengths, seed=7):
    """Forward with the draws of ``seed``, backward of a random projection of every result:
    ``[output, h_n, (c_n), d_x, d_h0, (d_c0), *d_weights]``."""
    for p in module.parameters():
        p.grad = None
    x = x.detach().requires_grad_()
    hx = tuple(h.detach().requires_grad_() for h in hx)
    torch.manual_seed(seed)
    output, h_n = module(x, hx if len(hx) == 2 else hx[0], lengths=lengths)
    results = [output, *(h_n if isinstance(h_n, tuple) else (h_n,))]
    gen = torch.Generator().manual_seed(1)
    loss = sum((r * torch.randn(r.shape, generator=gen, dtype=r.dtype)).sum() for r in results)
    loss.backward()
    return [*results, x.grad, *(h.grad for h in hx), *(p.grad for p in module.parameters())]


def inputs(mode, shape, dtype=F64, unbatched=False):
    steps, batch, size, hidden, layers, bidirectional, lengths, batch_first = shape
    gen = torch.Generator().manual_seed(3)
    rows = layers * (2 if bidirectional else 1)
    state = (rows, hidden) if unbatched else (rows, batch, hidden)
    x_shape = (
        (steps, size)
        if unbatched
        else ((batch, steps, size) if batch_first else (steps, batch, size))
    )
    x = torch.randn(*x_shape, generator=gen, dtype=dtype)
    hx = [torch.randn(*state, generator=gen, dtype=dtype)]
    if mode == "LSTM":
        hx.append(torch.randn(*state, generator=gen, dtype=dtype))
    return x, hx, None if lengths is None else torch.tensor(lengths)


def assert_same(got, want, dtype):
    atol, rtol = (1e-9, 1e-9) if dtype == F64 else (3e-5, 1e-4)
    assert len(got) == len(want)
    for k, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(
            a, b, atol=atol, rtol=rtol, msg=lambda m, k=k: f"result {k}: {m}"
        )


CASES = [
    (mode, options, runner, shape, training)
    for mode, options, runner, shape, training in itertools.product(
        REGULARIZED, OPTIONS, RUNNERS, range(len(SHAPES)), (True, False)
    )
    if applies(mode, options)
]


@pytest.mark.parametrize("mode,options,runner,shape,training", CASES)
def test_fast_loops_equal_the_reference(mode, options, runner, shape, training):
    shape = SHAPES[shape]
    x, hx, lengths = inputs(mode, shape)
    reference = make(mode, "reference", shape, options).train(training)
    fast = make(mode, "fast", shape, options).train(training)
    want = run(reference, x, hx, lengths)
    with runner_context(runner):
        plan = unrolled.plan(fast, x)
        assert plan.runner == f"{runner} loops", plan
        assert "zoneout" in plan.reason or "recurrent_dropout" in plan.reason or not training
        got = run(fast, x, hx, lengths)
    assert_same(got, want, F64)


@pytest.mark.parametrize("mode,runner", list(itertools.product(REGULARIZED, RUNNERS)))
def test_float32_and_unbatched(mode, runner):
    options = dict(recurrent_dropout=0.3, zoneout=0.25)
    shape = SHAPES[0]
    for dtype, unbatched in ((F32, False), (F64, True)):
        x, hx, _ = inputs(mode, shape, dtype, unbatched)
        want = run(make(mode, "reference", shape, options, dtype).train(), x, hx, None)
        with runner_context(runner):
            got = run(make(mode, "fast", shape, options, dtype).train(), x, hx, None)
        assert_same(got, want, dtype)


@pytest.mark.parametrize("mode,runner", list(itertools.product(REGULARIZED, RUNNERS)))
def test_packed_input(mode, runner):
    options = dict(recurrent_dropout=0.3, zoneout=0.25)
    shape = SHAPES[1]
    x, hx, lengths = inputs(mode, shape)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    results = []
    for backend in ("reference", "fast"):
        module = make(mode, backend, shape, options).train()
        with runner_context(runner) if backend == "fast" else contextlib.nullcontext():
            torch.manual_seed(5)
            output, h_n = module(packed, tuple(hx) if mode == "LSTM" else hx[0])
        results.append([output.data, *(h_n if mode == "LSTM" else (h_n,))])
    assert_same(results[1], results[0], F64)


def as_function(module, shape, seed=11):
    """``f(x, h0, [c0,] *parameters)``: the module with its draws fixed (the same masks at every
    evaluation), for gradcheck."""
    names = [name for name, _ in module.named_parameters()]
    lengths = shape[6]

    def f(x, *rest):
        states, params = rest[: len(rest) - len(names)], rest[len(rest) - len(names) :]
        torch.manual_seed(seed)
        hx = tuple(states) if len(states) == 2 else states[0]
        output, h_n = torch.func.functional_call(
            module, dict(zip(names, params)), (x, hx),
            {"lengths": None if lengths is None else torch.tensor(lengths)},
        )  # fmt: skip
        return output, *(h_n if isinstance(h_n, tuple) else (h_n,))

    return f


@pytest.mark.parametrize("mode,runner", list(itertools.product(REGULARIZED, RUNNERS)))
def test_gradcheck(mode, runner):
    shape = (5, 6, 2, 3, 1, True, [5, 2, 4, 1, 5, 3], False)
    module = make(mode, "fast", shape, dict(recurrent_dropout=0.3, zoneout=0.35)).train()
    x, hx, _ = inputs(mode, shape)
    leaves = [t.requires_grad_() for t in (x, *hx, *(p.detach() for p in module.parameters()))]
    with runner_context(runner):
        assert gradcheck(as_function(module, shape), leaves, fast_mode=True)


@pytest.mark.parametrize("mode", REGULARIZED)
def test_gradgradcheck(mode):
    """A double backward differentiates the reference with the same draws."""
    shape = (3, 2, 2, 2, 1, True, None, False)
    module = make(mode, "fast", shape, dict(recurrent_dropout=0.3, zoneout=0.35)).train()
    x, hx, _ = inputs(mode, shape)
    leaves = [t.requires_grad_() for t in (x, *hx, *(p.detach() for p in module.parameters()))]
    assert gradgradcheck(as_function(module, shape), leaves, fast_mode=True)


def test_projection_runs_the_reference():
    module = unrolled.LSTM(3, 5, proj_size=2, zoneout=0.2)
    plan = unrolled.plan(module, torch.randn(4, 2, 3))
    assert plan.runner == "reference" and "zoneout=0.2" in plan.reason, plan
