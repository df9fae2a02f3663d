"""One buffer contract per cell family: the native (C++) loops and the Python loops read and write
the same buffers the same way.

Two kinds of evidence:
- each family's native op and its Python twin run on identical copies of the same buffers, and
  every buffer they touch must come out the same (forward and backward, with and without
  projection, bias, kept gates, packed steps whose batch shrinks, two directions, and the
  backward writing its gradients over the forward's own buffers);
- every (forward loop, backward loop) combination, run through a layer, equals torch.nn: a
  forward on one loop back-propagated by the other gives torch's gradients, which it could not
  if the two laid out their buffers differently.
"""

from __future__ import annotations

import itertools
import types

import pytest
import torch
from parity import compare
from torch.nn.utils.rnn import pack_padded_sequence

import unrolled
from unrolled import backends
from unrolled.fast import loops as python_loops
from unrolled.fast import native

pytestmark = pytest.mark.skipif(
    native.ops() is None, reason=f"native loops unavailable: {native.status()}"
)

SORTED_LENGTHS = [6, 5, 5, 3, 1]


def batch_sizes(lengths, steps, batch):
    """Per step, how many of the (sorted) sequences are still running: ``[batch] * steps``
    without lengths. Their sum is ``N``, the packed buffers' rows."""
    if lengths is None:
        return [batch] * steps
    return [sum(length > s for length in lengths) for s in range(steps)]


def rand(*shape, dtype=torch.float64, low=-1.0, high=1.0):
    return torch.rand(*shape, dtype=dtype) * (high - low) + low


def none(dtype=torch.float64):
    return torch.empty(0, dtype=dtype)


def run_both(name, make_args, mutated, alias=None):
    """Run ``native.ops().<name>`` and ``python_loops.<name>`` on identical copies of the
    arguments ``make_args()`` builds; return both sets of the ``mutated`` argument positions.
    ``alias(args)`` may rewire arguments to share storage (the backward over saved buffers)."""
    results = []
    for loops in (native.ops(), python_loops):
        torch.manual_seed(0)
        args = make_args()
        if alias is not None:
            args = alias(args)
        getattr(loops, name)(*args)
        results.append([args[k] for k in mutated])
    return results


def assert_same_buffers(results, names, atol=1e-12):
    ours_native, ours_python = results
    for name, a, b in zip(names, ours_native, ours_python):
        items = zip(a, b) if isinstance(a, (list, tuple)) else [(a, b)]
        for k, (x, y) in enumerate(items):
            torch.testing.assert_close(
                x, y, atol=atol, rtol=1e-10, msg=lambda m, label=f"{name}[{k}]": f"{label}: {m}"
            )


STEPS, BATCH, INPUT = 6, 5, 3

#: A bigger case for the fused engine: H = 37 (panels of units on any vector width, the last
#: one partial), 13 rows (several tiles), sorted lengths (the batch shrinks), 1 or 2 threads.
BIG = dict(hidden=37, batch=13, steps=13)
BIG_LENGTHS = [13, 13, 12, 9, 9, 9, 7, 6, 6, 4, 2, 1, 1]


def with_threads(threads, run):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        run()
    finally:
        torch.set_num_threads(before)


# --- LSTM ----------------------------------------------------------------------------------------


#: How the native LSTM forward may run: the per-step BLAS loop (the input part hoisted by the
#: caller, in ``gates``) or the fused engine (the input part computed by the loop, ``inputs``).
LSTM_ENGINES = ["blas", "fused"]


@pytest.mark.parametrize(
    "directions,proj,bias,lengths,keep,engine",
    [
        case
        for case in itertools.product(
            [1, 2], [0, 3], [True, False], [None, SORTED_LENGTHS], [True, False], LSTM_ENGINES
        )
        if not (case[1] and case[5] == "fused")  # the engine has no projection
    ],
)
def test_lstm_forward_buffers(directions, proj, bias, lengths, keep, engine):
    lstm_forward_buffers(directions, proj, bias, lengths, keep, engine)


@pytest.mark.parametrize(
    "directions,lengths,keep,threads",
    list(itertools.product([1, 2], [None, BIG_LENGTHS], [True, False], [1, 2])),
)
def test_lstm_fused_engine_buffers_with_several_panels_tiles_and_threads(
    directions, lengths, keep, threads
):
    """H = 37: three panels of units on AVX-512 (16, 16, 5), more on AVX2, shared by the team;
    13 rows: several tiles of rows; one thread, or a team of two per direction or one each."""
    with_threads(
        threads,
        lambda: lstm_forward_buffers(directions, 0, True, lengths, keep, "fused", **BIG,
                                     input_size=11),
    )  # fmt: skip


def lstm_forward_buffers(
    directions,
    proj,
    bias,
    lengths,
    keep,
    engine,
    hidden=4,
    batch=BATCH,
    steps=STEPS,
    input_size=INPUT,
):
    out_size = proj or hidden
    sizes = batch_sizes(lengths, steps, batch)
    rows = sum(sizes)
    fused = engine == "fused"

    def make():
        gates = rand(directions, rows, 4 * hidden)
        b = rand(directions, 4 * hidden) if bias else none()
        w_rec = list(rand(directions, out_size, 4 * hidden) / 2)  # D x (P, 4H)
        w_proj = list(rand(directions, hidden, proj)) if proj else []
        cs = rand(directions, batch + rows if keep else batch, hidden)  # or one reused slot
        hs = rand(directions, batch + rows, out_size)
        inputs = [rand(rows, input_size) for _ in range(directions)] if fused else []
        w_in = [rand(4 * hidden, input_size) for _ in inputs]
        return [gates, b, w_rec, w_proj, cs, hs, sizes, keep, False, fused, inputs, w_in]

    results = run_both("lstm_forward", make, [0, 4, 5])
    names = ["gates", "cs", "hs"]
    if not keep:  # the gates are scratch without keep: the contract says nothing of them
        results = [r[1:] for r in results]
        names = names[1:]
    assert_same_buffers(results, names)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_lstm_forward_packed_gemm_computes_the_same(bidirectional):
    """The packed variant (float32, W_hh of 2^20+ elements) is a speed choice only."""
    if not native.packed_gemm_available():
        pytest.skip("this torch build has no MKL packed GEMM")
    directions, hidden, batch = 1 + bidirectional, 512, 3

    def make():
        gates = rand(directions, 2 * batch, 4 * hidden, dtype=torch.float32)
        b = rand(directions, 4 * hidden, dtype=torch.float32)
        w_rec = list(rand(directions, hidden, 4 * hidden, dtype=torch.float32) / 20)
        cs = rand(directions, 3 * batch, hidden, dtype=torch.float32)
        hs = rand(directions, 3 * batch, hidden, dtype=torch.float32)
        return [gates, b, w_rec, [], cs, hs, [batch] * 2, True, True, False,
                [], []]  # fmt: skip

    native_out, python_out = run_both("lstm_forward", make, [0, 4, 5])
    assert_same_buffers([native_out, python_out], ["gates", "cs", "hs"], atol=1e-5)


@pytest.mark.parametrize(
    "directions,proj,lengths,keep_r,over_gates,fused",
    [
        case
        for case in itertools.product(
            [1, 2], [0, 3], [None, SORTED_LENGTHS], [True, False], [False, True], [False, True]
        )
        if (case[1] or not case[3]) and not (case[1] and case[5])
    ],  # r is only asked for with a projection; the fused engine has none
)
def test_lstm_backward_buffers(directions, proj, lengths, keep_r, over_gates, fused):
    lstm_backward_buffers(directions, proj, lengths, keep_r, over_gates, fused)


@pytest.mark.parametrize(
    "directions,lengths,over_gates,threads",
    list(itertools.product([1, 2], [None, BIG_LENGTHS], [False, True], [1, 2])),
)
def test_lstm_fused_backward_buffers_with_several_panels_tiles_and_threads(
    directions, lengths, over_gates, threads
):
    with_threads(
        threads,
        lambda: lstm_backward_buffers(directions, 0, lengths, False, over_gates, True, **BIG),
    )


def lstm_backward_buffers(
    directions, proj, lengths, keep_r, over_gates, fused, hidden=4, batch=BATCH, steps=STEPS
):
    out_size = proj or hidden
    sizes = batch_sizes(lengths, steps, batch)
    rows = sum(sizes)

    def make():
        gates = rand(directions, rows, 4 * hidden, low=0.0)  # activated: in (0, 1)
        cs = rand(directions, batch + rows, hidden)
        d_h = rand(directions, rows, out_size)
        dc = rand(directions, batch, hidden)  # d_c_n: each row's enters at its last step
        w_rec = list(rand(directions, 4 * hidden, out_size) / 2)  # D x (4H, P)
        w_proj = list(rand(directions, out_size, hidden)) if proj else []
        d_pre = torch.empty(directions, rows, 4 * hidden, dtype=torch.float64)
        r = torch.empty(directions, rows, hidden, dtype=torch.float64) if keep_r else none()
        return [gates, cs, d_h, dc, w_rec, w_proj, d_pre, r, sizes, fused]

    def write_over_gates(args):  # a released graph: d_pre is the saved gates' own buffer
        args[6] = args[0]
        return args

    alias = write_over_gates if over_gates else None
    mutated = [2, 3, 6] + ([7] if keep_r else [])
    results = run_both("lstm_backward", make, mutated, alias)
    assert_same_buffers(results, ["d_h", "dc", "d_pre", "r"])


# --- GRU -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "directions,bias,lengths,keep,fused",
    list(
        itertools.product(
            [1, 2], [True, False], [None, SORTED_LENGTHS], [True, False], [False, True]
        )
    ),
)
def test_gru_forward_buffers(directions, bias, lengths, keep, fused):
    gru_forward_buffers(directions, bias, lengths, keep, fused)


@pytest.mark.parametrize(
    "directions,lengths,keep,threads",
    list(itertools.product([1, 2], [None, BIG_LENGTHS], [True, False], [1, 2])),
)
def test_gru_fused_forward_buffers_with_several_panels_tiles_and_threads(
    directions, lengths, keep, threads
):
    with_threads(threads, lambda: gru_forward_buffers(directions, True, lengths, keep, True, **BIG))


def gru_forward_buffers(directions, bias, lengths, keep, fused, hidden=4, batch=BATCH, steps=STEPS):
    sizes = batch_sizes(lengths, steps, batch)
    rows = sum(sizes)
    slots = rows if keep else batch

    def make():
        xw = rand(directions, rows, 3 * hidden)
        hh = rand(directions, slots, 3 * hidden)
        ns = rand(directions, slots, hidden)
        hs = rand(directions, batch + rows, hidden)
        w_rec = list(rand(directions, hidden, 3 * hidden) / 2)  # D x (H, 3H)
        biases = [rand(3 * hidden) for _ in range(2 * directions)] if bias else []
        return [xw, hh, ns, hs, w_rec, biases, sizes, fused]

    results = run_both("gru_forward", make, [1, 2, 3])
    names = ["hh", "ns", "hs"]
    if not keep:  # one reused slot: only the states are the forward's result
        results = [r[2:] for r in results]
        names = names[2:]
    assert_same_buffers(results, names)


@pytest.mark.parametrize(
    "directions,lengths,over_saved,fused",
    list(itertools.product([1, 2], [None, SORTED_LENGTHS], [False, True], [False, True])),
)
def test_gru_backward_buffers(directions, lengths, over_saved, fused):
    gru_backward_buffers(directions, lengths, over_saved, fused)


@pytest.mark.parametrize(
    "directions,lengths,over_saved,threads",
    list(itertools.product([1, 2], [None, BIG_LENGTHS], [False, True], [1, 2])),
)
def test_gru_fused_backward_buffers_with_several_panels_tiles_and_threads(
    directions, lengths, over_saved, threads
):
    with_threads(
        threads, lambda: gru_backward_buffers(directions, lengths, over_saved, True, **BIG)
    )


def gru_backward_buffers(
    directions, lengths, over_saved, fused, hidden=4, batch=BATCH, steps=STEPS
):
    sizes = batch_sizes(lengths, steps, batch)
    rows = sum(sizes)

    def make():
        hh = rand(directions, rows, 3 * hidden)
        hh[..., : 2 * hidden].uniform_(0, 1)  # r, z are gates
        ns = rand(directions, rows, hidden)
        hs = rand(directions, batch + rows, hidden)
        grads = [rand(rows, hidden) for _ in range(directions)]
        w_hh = [rand(3 * hidden, hidden) / 2 for _ in range(directions)]
        factors = [torch.empty(rows, 3 * hidden, dtype=torch.float64) for _ in range(directions)]
        d_h0 = torch.empty(directions, batch, hidden, dtype=torch.float64)
        return [hh, ns, hs, grads, w_hh, factors, d_h0, sizes, fused]

    def write_over_saved(args):  # a released graph: [n_x, r, z] overwrite hh's [r, z, a]
        args[5] = list(args[0].unbind(0))
        return args

    alias = write_over_saved if over_saved else None
    results = run_both("gru_backward", make, [3, 5, 6], alias)
    assert_same_buffers(results, ["grads", "factors", "d_h0"])


# --- RNN -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "directions,relu,lengths,fused",
    list(itertools.product([1, 2], [False, True], [None, SORTED_LENGTHS], [False, True])),
)
def test_rnn_buffers(directions, relu, lengths, fused):
    rnn_buffers(directions, relu, lengths, fused)


@pytest.mark.parametrize(
    "directions,relu,lengths,threads",
    list(itertools.product([1, 2], [False, True], [None, BIG_LENGTHS], [1, 2])),
)
def test_rnn_fused_buffers_with_several_panels_tiles_and_threads(
    directions, relu, lengths, threads
):
    with_threads(threads, lambda: rnn_buffers(directions, relu, lengths, True, **BIG))


def rnn_buffers(directions, relu, lengths, fused, hidden=4, batch=BATCH, steps=STEPS):
    sizes = batch_sizes(lengths, steps, batch)
    rows = sum(sizes)

    def make_forward():
        return [rand(directions, batch + rows, hidden), list(rand(directions, hidden, hidden) / 2), relu,
                sizes, fused]  # fmt: skip

    assert_same_buffers(run_both("rnn_forward", make_forward, [0]), ["hs"])

    def make_backward():
        hs = rand(directions, batch + rows, hidden)
        if relu:
            hs.clamp_(min=0)  # relu states; a few exact zeros test the kink
            hs[:, ::batch, 0] = 0
        grads = [rand(rows, hidden) for _ in range(directions)]
        w_hh = [rand(hidden, hidden) / 2 for _ in range(directions)]
        return [hs, grads, w_hh, relu, sizes, fused]

    assert_same_buffers(run_both("rnn_backward", make_backward, [1]), ["grads"])


# --- the fused engine's schedule never changes a number ------------------------------------------


def native_twice(name, make_args, mutated, threads):
    """``native.ops().<name>`` on identical copies of ``make_args()``, once per thread count."""
    results = []
    for count in threads:
        torch.manual_seed(0)
        args = make_args()
        with_threads(count, lambda args=args: getattr(native.ops(), name)(*args))
        results.append([args[k] for k in mutated])
    return results


@pytest.mark.parametrize("directions", [1, 2])
def test_the_engine_gives_the_same_bits_on_one_thread_and_two(directions):
    """Which member computes a unit, in which tile and chunk, never changes the order of its
    sums: one thread and a team of two write identical buffers, forward and backward."""
    hidden, batch, steps, inputs = BIG["hidden"], BIG["batch"], BIG["steps"], 11
    sizes = batch_sizes(BIG_LENGTHS, steps, batch)
    rows = sum(sizes)

    def lstm_forward():
        return [rand(directions, rows, 4 * hidden), rand(directions, 4 * hidden),
                list(rand(directions, hidden, 4 * hidden) / 2), [],
                rand(directions, batch + rows, hidden), rand(directions, batch + rows, hidden),
                sizes, True, False, True, [rand(rows, inputs) for _ in range(directions)],
                [rand(4 * hidden, inputs) for _ in range(directions)]]  # fmt: skip

    def lstm_backward():
        return [rand(directions, rows, 4 * hidden, low=0.0),
                rand(directions, batch + rows, hidden), rand(directions, rows, hidden),
                rand(directions, batch, hidden), list(rand(directions, 4 * hidden, hidden) / 2), [],
                torch.empty(directions, rows, 4 * hidden, dtype=torch.float64), none(),
                sizes, True]  # fmt: skip

    def gru_forward():
        return [rand(directions, rows, 3 * hidden), rand(directions, rows, 3 * hidden),
                rand(directions, rows, hidden), rand(directions, batch + rows, hidden),
                list(rand(directions, hidden, 3 * hidden) / 2),
                [rand(3 * hidden) for _ in range(2 * directions)], sizes, True]  # fmt: skip

    def rnn_backward():
        return [rand(directions, batch + rows, hidden),
                [rand(rows, hidden) for _ in range(directions)],
                [rand(hidden, hidden) / 2 for _ in range(directions)], False, sizes, True]  # fmt: skip

    for name, make, mutated in [
        ("lstm_forward", lstm_forward, [0, 4, 5]),
        ("lstm_backward", lstm_backward, [2, 3, 6]),
        ("gru_forward", gru_forward, [1, 2, 3]),
        ("rnn_backward", rnn_backward, [1]),
    ]:
        one, two = native_twice(name, make, mutated, threads=(1, 2))
        for a, b in zip(one, two):
            for x, y in zip(a, b) if isinstance(a, list) else [(a, b)]:
                assert torch.equal(x, y), name


# --- every (forward loop, backward loop) combination equals torch.nn ------------------------------

TORCH_MODES = {
    "RNN_TANH": lambda *a, **k: torch.nn.RNN(*a, nonlinearity="tanh", **k),
    "RNN_RELU": lambda *a, **k: torch.nn.RNN(*a, nonlinearity="relu", **k),
    "LSTM": torch.nn.LSTM,
    "GRU": torch.nn.GRU,
}
LOOPS = {"native": lambda: native.ops(), "python": lambda: python_loops}


class MixedPlanModule(torch.nn.Module):
    """Runs ``ours`` with a plan whose forward functions are one runner's and whose backward
    functions are the other's (as a layer would if it switched loops in between)."""

    def __init__(self, ours, forward_loops, backward_loops, fused=False):
        super().__init__()
        self.ours, self.fused = ours, fused
        family = {"RNN_TANH": "rnn", "RNN_RELU": "rnn"}.get(ours.mode, ours.mode.lower())
        self.loops = types.SimpleNamespace(
            **{f"{family}_forward": getattr(LOOPS[forward_loops](), f"{family}_forward"),
               f"{family}_backward": getattr(LOOPS[backward_loops](), f"{family}_backward")}
        )  # fmt: skip

    def forward(self, x, hx=None):
        ours = self.ours
        real_plan = ours._plan

        def mixed_plan(sequences, weights):
            plan = real_plan(sequences, weights)
            assert plan.runner != backends.REFERENCE
            return backends.Plan(plan.mode, "mixed", "test", loops=self.loops, fused=self.fused)

        ours._plan = mixed_plan
        try:
            return ours(x, hx)
        finally:
            del ours._plan


@pytest.mark.parametrize("forward_loops,backward_loops", list(itertools.product(LOOPS, LOOPS)))
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize(
    "mode,bidirectional,proj,lengths",
    [
        (mode, bidirectional, proj, lengths)
        for mode in TORCH_MODES
        for bidirectional, proj, lengths in itertools.product(
            [False, True], [0, 2] if mode == "LSTM" else [0], [False, True]
        )
    ],
)
def test_every_loop_combination_equals_torch(
    mode, bidirectional, proj, lengths, forward_loops, backward_loops, fused
):
    """``fused``: the native loops run the fused engine (as the plan asks without a
    projection; the Python loops are the same either way)."""
    torch.manual_seed(11)
    extra = {"proj_size": proj} if proj else {}
    theirs = TORCH_MODES[mode](3, 4, num_layers=2, bidirectional=bidirectional, **extra).double()
    ours = unrolled.from_torch(theirs)
    mixed = MixedPlanModule(ours, forward_loops, backward_loops, fused=fused and not proj)
    mixed.named_parameters, mixed.parameters = ours.named_parameters, ours.parameters
    x = torch.randn(6, 5, 3, dtype=torch.float64, requires_grad=True)
    inputs = (pack_padded_sequence(x, torch.tensor([3, 6, 1, 5, 2]), enforce_sorted=False),)
    compare(mixed, theirs, inputs if lengths else (x,))
