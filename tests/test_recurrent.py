"""``unrolled.Recurrent`` around cells written against the ``Cell`` protocol, against torch.nn."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from parity import compare
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import unrolled

LENGTHS = [7, 5, 5, 2, 1, 1]
SEQ, BATCH, INPUT, HIDDEN = 7, 6, 3, 5


class Elman(unrolled.Cell):
    """``h' = tanh(W_ih x + b_ih + W_hh h + b_hh)``, torch's parameter names per cell."""

    def __init__(self, input_size, hidden_size):
        super().__init__()
        self.hidden_size = hidden_size
        bound = 1 / math.sqrt(hidden_size)
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size).uniform_(-bound, bound))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size, hidden_size).uniform_(-bound, bound))
        self.bias_ih = nn.Parameter(torch.empty(hidden_size).uniform_(-bound, bound))
        self.bias_hh = nn.Parameter(torch.empty(hidden_size).uniform_(-bound, bound))

    def project(self, x):
        return x @ self.weight_ih.T + self.bias_ih  # (T, B, I) @ (I, H) -> (T, B, H)

    def step(self, xp_t, h):
        h = torch.tanh(xp_t + h @ self.weight_hh.T + self.bias_hh)  # (B, H)
        return h, h


class PlainLSTM(unrolled.Cell):
    """An LSTM with a tuple state, written against the protocol from the equations."""

    def __init__(self, input_size, hidden_size):
        super().__init__()
        self.hidden_size = hidden_size
        self.weight_ih = nn.Parameter(torch.randn(4 * hidden_size, input_size) * 0.4)
        self.weight_hh = nn.Parameter(torch.randn(4 * hidden_size, hidden_size) * 0.4)
        self.bias_ih = nn.Parameter(torch.randn(4 * hidden_size) * 0.4)
        self.bias_hh = nn.Parameter(torch.randn(4 * hidden_size) * 0.4)

    def init_state(self, batch_size, *, dtype, device):
        zeros = torch.zeros(batch_size, self.hidden_size, dtype=dtype, device=device)
        return zeros, zeros

    def project(self, x):
        return x @ self.weight_ih.T + self.bias_ih  # (T, B, 4H)

    def step(self, xp_t, state):
        h, c = state
        i, f, g, o = (xp_t + h @ self.weight_hh.T + self.bias_hh).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, (h, c)


class TorchNamed(nn.Module):
    """Registers a Recurrent's cell parameters under torch's names (``weight_ih_l0_reverse``...)
    so the parity harness can match every gradient by name."""

    def __init__(self, rec):
        super().__init__()
        for layer, direction in itertools.product(range(rec.num_layers), range(rec.num_directions)):
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            cell = rec.cells[layer * rec.num_directions + direction]
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                self.register_parameter(name + suffix, getattr(cell, name))
        self.rec = rec

    def forward(self, *args, **kwargs):
        return self.rec(*args, **kwargs)


def twin(theirs, cell_class):
    """A Recurrent of ``cell_class`` with ``theirs``' configuration and weights."""
    rec = unrolled.Recurrent(
        lambda size: cell_class(size, theirs.hidden_size),
        theirs.input_size,
        num_layers=theirs.num_layers,
        bidirectional=theirs.bidirectional,
        batch_first=theirs.batch_first,
    )
    ours = TorchNamed(rec).to(next(theirs.parameters()).dtype)
    with torch.no_grad():
        for name, weight in theirs.named_parameters():
            getattr(ours, name).copy_(weight)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    return ours


def make_input(kind, batch_first, dtype):
    if kind == "unbatched":
        return torch.randn(SEQ, INPUT, dtype=dtype, requires_grad=True)
    shape = (BATCH, SEQ, INPUT) if batch_first else (SEQ, BATCH, INPUT)
    x = torch.randn(*shape, dtype=dtype, requires_grad=True)
    if kind == "packed":
        # Unsorted lengths, so the sorted/unsorted index bookkeeping is exercised too.
        lengths = torch.tensor(LENGTHS)[torch.tensor([2, 0, 5, 1, 4, 3])]
        return pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
    return x


def make_state(rows, kind, dtype, lstm):
    lead = (rows,) if kind == "unbatched" else (rows, BATCH)
    h = torch.randn(*lead, HIDDEN, dtype=dtype, requires_grad=True)
    return (h, torch.randn(*lead, HIDDEN, dtype=dtype, requires_grad=True)) if lstm else h


CASES = list(itertools.product(
    (2, 3), (False, True), (False, True), ("padded", "packed", "unbatched"), (False, True),
))  # fmt: skip


@pytest.mark.parametrize("layers,bidirectional,batch_first,kind,given_state", CASES)
def test_elman_cell_equals_nn_rnn(layers, bidirectional, batch_first, kind, given_state):
    torch.manual_seed(layers * 100 + bidirectional * 10 + batch_first)
    dtype = torch.float64
    theirs = nn.RNN(INPUT, HIDDEN, layers, bidirectional=bidirectional,
                    batch_first=batch_first).to(dtype)  # fmt: skip
    ours = twin(theirs, Elman)
    x = make_input(kind, batch_first, dtype)
    rows = layers * (2 if bidirectional else 1)
    state = make_state(rows, kind, dtype, lstm=False) if given_state else None
    compare(ours, theirs, (x,), state, dtype)


@pytest.mark.parametrize("kind", ["padded", "packed"])
def test_elman_cell_float32(kind):
    torch.manual_seed(1)
    theirs = nn.RNN(INPUT, HIDDEN, 2, bidirectional=True)
    compare(twin(theirs, Elman), theirs, (make_input(kind, False, torch.float32),), None,
            torch.float32)  # fmt: skip


@pytest.mark.parametrize(
    "bidirectional,kind", list(itertools.product((False, True), ("padded", "packed")))
)
def test_tuple_state_cell_equals_nn_lstm(bidirectional, kind):
    """Tuple states are stacked leafwise: ``(h_n, c_n)`` exactly as nn.LSTM returns them."""
    torch.manual_seed(3)
    dtype = torch.float64
    theirs = nn.LSTM(INPUT, HIDDEN, 2, bidirectional=bidirectional).to(dtype)
    ours = twin(theirs, PlainLSTM)
    rows = 2 * (2 if bidirectional else 1)
    compare(ours, theirs, (make_input(kind, False, dtype),), make_state(rows, kind, dtype, True),
            dtype)  # fmt: skip


def test_lengths_equal_packed():
    """Padded input with ``lengths=`` gives the packed result (zeros past each length)."""
    torch.manual_seed(4)
    rec = unrolled.Recurrent(lambda size: Elman(size, HIDDEN), INPUT, 2, bidirectional=True)
    x = torch.randn(SEQ, BATCH, INPUT)
    out, h_n = rec(x, lengths=LENGTHS)
    packed_out, packed_h_n = rec(pack_padded_sequence(x, LENGTHS))
    padded, _ = torch.nn.utils.rnn.pad_packed_sequence(packed_out)
    torch.testing.assert_close(out, padded, atol=0, rtol=0)
    torch.testing.assert_close(h_n, packed_h_n, atol=0, rtol=0)


def test_factory_order_and_sizes():
    calls = []

    def factory(size):
        calls.append(size)
        return Elman(size, HIDDEN)

    rec = unrolled.Recurrent(factory, INPUT, num_layers=3, bidirectional=True)
    assert calls == [INPUT, INPUT, 2 * HIDDEN, 2 * HIDDEN, 2 * HIDDEN, 2 * HIDDEN]
    assert len(rec.cells) == 6 and rec.hidden_size == HIDDEN
    assert rec.cells[3].weight_ih.shape == (HIDDEN, 2 * HIDDEN)


def test_dropout_between_layers_training_only():
    torch.manual_seed(5)
    rec = unrolled.Recurrent(lambda size: Elman(size, HIDDEN), INPUT, 2, dropout=0.5)
    x = torch.randn(SEQ, BATCH, INPUT)
    rec.eval()
    a, b = rec(x)[0], rec(x)[0]
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    rec.train()
    assert not torch.equal(rec(x)[0], a)


def test_default_init_state_and_cell_forward():
    cell = Elman(INPUT, HIDDEN)
    state = cell.init_state(4, dtype=torch.float32, device=torch.device("cpu"))
    assert state.shape == (4, HIDDEN) and not state.any()
    x = torch.randn(4, INPUT)
    out, new = cell(x, state)  # calling the cell = step(project(x))
    torch.testing.assert_close(out, torch.tanh(x @ cell.weight_ih.T + cell.bias_ih + cell.bias_hh))


class NoStep(unrolled.Cell):
    def __init__(self, input_size, hidden_size=HIDDEN):
        super().__init__()
        self.hidden_size = hidden_size


@pytest.mark.parametrize(
    "make,error,match",
    [
        (lambda: unrolled.Recurrent(3, INPUT), TypeError, "factory"),
        (lambda: unrolled.Recurrent(lambda s: nn.Linear(s, 2), INPUT), TypeError, "unrolled.Cell"),
        (lambda: unrolled.Recurrent(lambda s: NoStep(s, 0), INPUT), ValueError, "hidden_size"),
        (lambda: unrolled.Recurrent(lambda s: NoStep(s, 2.0), INPUT), TypeError, "hidden_size"),
        (lambda: unrolled.Recurrent(lambda s: NoStep(s), 0), ValueError, "input_size"),
        (lambda: unrolled.Recurrent(lambda s: NoStep(s), INPUT, 0), ValueError, "num_layers"),
        (lambda: unrolled.Recurrent(lambda s: NoStep(s), INPUT, dropout=2), ValueError, "dropout"),
        (lambda: unrolled.Recurrent(lambda s: NoStep(s), INPUT, bidirectional=1), TypeError,
         "bidirectional"),
    ],
)  # fmt: skip
def test_bad_constructor_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_mismatched_hidden_sizes():
    sizes = iter([4, 5])
    with pytest.raises(ValueError, match="share one hidden_size: expected 4, got 5"):
        unrolled.Recurrent(lambda s: NoStep(s, next(sizes)), INPUT, bidirectional=True)


def test_step_not_implemented():
    rec = unrolled.Recurrent(lambda s: NoStep(s), INPUT)
    with pytest.raises(NotImplementedError, match="step"):
        rec(torch.randn(2, 1, INPUT))


def test_bad_inputs_and_states():
    rec = unrolled.Recurrent(lambda size: Elman(size, HIDDEN), INPUT, 2)
    x = torch.randn(SEQ, BATCH, INPUT)
    with pytest.raises(RuntimeError, match=f"Expected {INPUT}, got 4"):
        rec(torch.randn(SEQ, BATCH, 4))
    with pytest.raises(ValueError, match="2D or 3D"):
        rec(torch.randn(SEQ))
    with pytest.raises(ValueError, match="dtype"):
        rec(x.double())
    with pytest.raises(RuntimeError, match=r"Expected state size \(2, 6, 5\), got \[1, 6, 5\]"):
        rec(x, torch.zeros(1, BATCH, HIDDEN))
    with pytest.raises(TypeError, match="state must be a Tensor"):
        rec(x, (torch.zeros(2, BATCH, HIDDEN),))
    with pytest.raises(ValueError, match="lengths must be <= the sequence length"):
        rec(x, lengths=[8] * BATCH)
    with pytest.raises(RuntimeError, match="bidirectional"):
        unrolled.Recurrent(lambda s: Elman(s, HIDDEN), INPUT, bidirectional=True).step(x[0])
    lstm = unrolled.Recurrent(lambda s: PlainLSTM(s, HIDDEN), INPUT)
    with pytest.raises(TypeError, match="tuple of 2 tensors"):
        lstm(x, torch.zeros(1, BATCH, HIDDEN))
