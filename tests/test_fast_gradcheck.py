"""gradcheck / gradgradcheck of the fast backend's hand-written backward, in float64.

The backend entry point is called directly, so every weight, the input and the initial states
are leaves that gradcheck perturbs. The sweep covers every cell family and option, on both fast
runners (the native loops and the Python loops); ``fast_mode`` keeps it cheap (a random
projection of the Jacobian), and a few cases run the full check.
"""

from __future__ import annotations

import contextlib
import itertools

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from unrolled import backends, modes
from unrolled.fast import native
from unrolled.inputs import to_time_major

INPUT, HIDDEN, PROJ = 3, 3, 2
UNEVEN = [7, 5, 5, 2, 1, 1]  # unsorted on purpose below


RUNNERS = ["native", "python"]


def fast_run(runner, mode, x, hx, weights, lengths=None, **options):
    """The fast backend on ``runner``'s loops, as a module calls it: the batch sorted and
    packed at the boundary (``lengths``: any order), the plan made and recorded, the results
    back in the caller's order."""
    if runner == "native" and native.ops() is None:
        pytest.skip(f"native loops unavailable: {native.status()}")
    sequences, layout = to_time_major(x, batch_first=False, lengths=lengths, module_name="rnn")
    with native.disabled() if runner == "python" else contextlib.nullcontext():
        plan = backends.plan(mode, sequences, weights, lengths=sequences.lengths)
    assert plan.runner == f"{runner} loops", plan
    output, h_n = backends.run(plan, sequences, layout.state_in(hx), weights, **options)
    return layout.results_out(output, h_n)


def make_case(mode, layers, bidir, proj, bias, lengths, seed=0, runner="native"):
    """Leaves ``[x, h0, (c0), *weights]`` and a function of them that runs the fast backend."""
    gen = torch.Generator().manual_seed(seed)
    num_dirs = 2 if bidir else 1
    steps, batch = (7, 6) if lengths else (4, 2)
    out_size = proj or HIDDEN

    def leaf(*shape):
        t = torch.rand(*shape, generator=gen, dtype=torch.float64) * 2 - 1
        return t.requires_grad_()

    x = leaf(steps, batch, INPUT)
    states = [leaf(layers * num_dirs, batch, out_size)]
    if mode == "LSTM":
        states.append(leaf(layers * num_dirs, batch, HIDDEN))
    gates = modes.of(mode).num_gates * HIDDEN
    weights, layout = [], []
    for layer in range(layers):
        for _ in range(num_dirs):
            size = INPUT if layer == 0 else out_size * num_dirs
            shapes = [(gates, size), (gates, out_size)]
            shapes += [(gates,), (gates,)] if bias else [None, None]
            shapes += [(proj, HIDDEN) if proj else None]
            layout.append([s is not None for s in shapes])
            weights += [leaf(*s) for s in shapes if s is not None]
    length_tensor = None
    if lengths:
        order = torch.tensor([3, 0, 5, 1, 4, 2])
        length_tensor = torch.tensor(UNEVEN)[order]

    def fn(x, *rest):
        hx = (rest[0], rest[1]) if mode == "LSTM" else rest[0]
        flat = iter(rest[len(states) :])
        layer_weights = [tuple(next(flat) if there else None for there in row) for row in layout]
        torch.manual_seed(0)  # the same dropout mask at every evaluation
        output, h_n = fast_run(
            runner, mode, x, hx, layer_weights, num_layers=layers, num_directions=num_dirs,
            dropout=0.3 if layers > 1 else 0.0, training=True, lengths=length_tensor,
        )  # fmt: skip
        return (output, *h_n) if mode == "LSTM" else (output, h_n)

    return fn, [x, *states, *weights]


def _cases():
    for mode, layers, bidir, proj, bias, lengths in itertools.product(
        ("RNN_TANH", "RNN_RELU", "LSTM", "GRU"), (1, 2), (False, True), (0, PROJ),
        (True, False), (False, True),
    ):  # fmt: skip
        if proj and mode != "LSTM":
            continue
        yield pytest.param(
            mode, layers, bidir, proj, bias, lengths,
            id=f"{mode}-L{layers}-{'bi' if bidir else 'uni'}-P{proj}"
            f"-{'bias' if bias else 'nobias'}-{'lengths' if lengths else 'full'}",
        )  # fmt: skip


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("mode,layers,bidir,proj,bias,lengths", list(_cases()))
def test_gradcheck_sweep(mode, layers, bidir, proj, bias, lengths, runner):
    fn, inputs = make_case(mode, layers, bidir, proj, bias, lengths, runner=runner)
    assert gradcheck(fn, inputs, fast_mode=True)


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("mode", ["RNN_TANH", "LSTM", "GRU"])
def test_gradcheck_full_jacobian(mode, runner):
    """The slow, element-by-element check on one rich configuration per cell family."""
    fn, inputs = make_case(mode, 1, True, PROJ if mode == "LSTM" else 0, True, True, runner=runner)
    assert gradcheck(fn, inputs)


@pytest.mark.parametrize("mode", ["RNN_TANH", "RNN_RELU", "LSTM", "GRU"])
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
def test_gradgradcheck(mode, lengths):
    """create_graph=True falls back to differentiating the reference path: check it twice."""
    fn, inputs = make_case(mode, 2, True, PROJ if mode == "LSTM" else 0, True, lengths)
    assert gradgradcheck(fn, inputs, fast_mode=True)


@pytest.mark.parametrize("runner", RUNNERS)
def test_relu_kink_gradient_is_torchs(runner):
    """At pre-activation exactly 0 torch's relu passes no gradient; so must the fast backward."""
    x = torch.zeros(3, 2, 4, dtype=torch.float64, requires_grad=True)
    w_ih = torch.zeros(5, 4, dtype=torch.float64, requires_grad=True)
    w_hh = torch.zeros(5, 5, dtype=torch.float64, requires_grad=True)
    h0 = torch.zeros(1, 2, 5, dtype=torch.float64, requires_grad=True)
    out, _ = fast_run(
        runner, "RNN_RELU", x, h0, [(w_ih, w_hh, None, None, None)], num_layers=1,
        num_directions=1,
    )  # fmt: skip
    out.sum().backward()
    assert not w_ih.grad.abs().any() and not h0.grad.abs().any()
