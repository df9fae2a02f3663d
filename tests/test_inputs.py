"""The shared input normalisation (``unrolled.inputs``) through the built-in modules: packed
input with unsorted lengths and an initial state, and ``lengths=``, against torch.nn."""

from __future__ import annotations

import itertools

import pytest
import torch
from parity import compare
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import unrolled

LENGTHS = torch.tensor([5, 7, 1, 5, 2, 1])  # unsorted: exercises sorted/unsorted indices
F64 = torch.float64


def make(kind, bidirectional, batch_first):
    torch.manual_seed(0)
    proj = {"proj_size": 2} if kind == "LSTM-proj" else {}
    cls = {"RNN": nn.RNN, "GRU": nn.GRU}.get(kind, nn.LSTM)
    theirs = cls(3, 4, 2, bidirectional=bidirectional, batch_first=batch_first, **proj).to(F64)
    return unrolled.from_torch(theirs), theirs


@pytest.mark.parametrize("kind,bidirectional,batch_first", list(itertools.product(
    ("RNN", "GRU", "LSTM", "LSTM-proj"), (False, True), (False, True))))  # fmt: skip
def test_packed_with_state_equals_torch(kind, bidirectional, batch_first):
    ours, theirs = make(kind, bidirectional, batch_first)
    shape = (6, 7, 3) if batch_first else (7, 6, 3)
    x = torch.randn(*shape, dtype=F64, requires_grad=True)
    packed = pack_padded_sequence(x, LENGTHS, batch_first=batch_first, enforce_sorted=False)
    rows = 2 * (2 if bidirectional else 1)
    h = torch.randn(rows, 6, 2 if kind == "LSTM-proj" else 4, dtype=F64, requires_grad=True)
    c = torch.randn(rows, 6, 4, dtype=F64, requires_grad=True)
    compare(ours, theirs, (packed,), (h, c) if kind.startswith("LSTM") else h, F64)


def test_lengths_keyword_equals_packed():
    ours, theirs = make("GRU", True, False)
    x = torch.randn(7, 6, 3, dtype=F64)
    out, h_n = ours(x, lengths=LENGTHS)
    want, want_h_n = theirs(pack_padded_sequence(x, LENGTHS, enforce_sorted=False))
    torch.testing.assert_close(out, pad_packed_sequence(want, total_length=7)[0])
    torch.testing.assert_close(h_n, want_h_n)
    with pytest.raises(ValueError, match="PackedSequence carries its own"):
        ours(pack_padded_sequence(x, LENGTHS, enforce_sorted=False), lengths=LENGTHS)
    with pytest.raises(ValueError, match="needs batched 3-D input"):
        ours(x[:, 0], lengths=[3])
