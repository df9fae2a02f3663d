"""RNNCell, LSTMCell, GRUCell against torch.nn's, batched and unbatched, every option."""

from __future__ import annotations

import itertools

import pytest
import torch
from parity import compare

import unrolled

CELLS = {
    "rnn_tanh": (lambda i, h, b: torch.nn.RNNCell(i, h, b, "tanh"), False),
    "rnn_relu": (lambda i, h, b: torch.nn.RNNCell(i, h, b, "relu"), False),
    "lstm": (torch.nn.LSTMCell, True),
    "gru": (torch.nn.GRUCell, False),
}


@pytest.mark.parametrize(
    "kind,bias,dtype,batched,given_hx,sizes",
    list(
        itertools.product(
            CELLS, (True, False), (torch.float32, torch.float64), (True, False), (True, False),
            [(4, 5, 3), (1, 1, 1), (7, 13, 2)],
        )
    ),
)  # fmt: skip
def test_cell_parity(kind, bias, dtype, batched, given_hx, sizes):
    input_size, hidden_size, batch = sizes
    torch.manual_seed(0)
    factory, is_lstm = CELLS[kind]
    theirs = factory(input_size, hidden_size, bias).to(dtype)
    ours = unrolled.from_torch(theirs)
    assert type(ours).__name__ == type(theirs).__name__
    lead = (batch,) if batched else ()
    x = torch.randn(*lead, input_size, dtype=dtype, requires_grad=True)
    hx = None
    if given_hx:
        hx = torch.randn(*lead, hidden_size, dtype=dtype, requires_grad=True)
        if is_lstm:
            hx = (hx, torch.randn(*lead, hidden_size, dtype=dtype, requires_grad=True))
    compare(ours, theirs, (x,), hx, dtype)


@pytest.mark.parametrize("kind", CELLS)
def test_cell_signature_defaults_and_repr(kind):
    factory, _ = CELLS[kind]
    theirs = factory(3, 4, False)
    ours = unrolled.from_torch(theirs)
    assert repr(ours) == repr(theirs)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert ours.bias_ih is None and ours.bias_hh is None


def test_cell_default_init_range():
    torch.manual_seed(0)
    cell = unrolled.GRUCell(10, 16)
    for p in cell.parameters():
        assert p.abs().max() <= 1 / 16**0.5
        assert p.abs().max() > 0.2  # actually spread over the range, not zeros


def test_cell_to_torch_roundtrip():
    ours = unrolled.LSTMCell(3, 5)
    theirs = ours.to_torch()
    assert isinstance(theirs, torch.nn.LSTMCell)
    x = torch.randn(2, 3)
    for a, b in zip(ours(x), theirs(x)):
        torch.testing.assert_close(a, b)
