"""Weights both ways: from_torch, to_torch, load_state_dict(strict=True), parameter layout."""

from __future__ import annotations

import itertools

import pytest
import torch

import unrolled
from unrolled.tools.compare import assert_close

CONFIGS = [
    (mode, layers, bidir, bias, proj)
    for mode, layers, bidir, bias, proj in itertools.product(
        ["RNN_TANH", "RNN_RELU", "LSTM", "GRU"], (1, 2), (False, True), (True, False), (0, 2)
    )
    if mode == "LSTM" or proj == 0
]


def _pair(mode, layers, bidir, bias, proj):
    kwargs = dict(num_layers=layers, bidirectional=bidir, bias=bias)
    if mode.startswith("RNN"):
        nl = "tanh" if mode == "RNN_TANH" else "relu"
        return unrolled.RNN(6, 5, nonlinearity=nl, **kwargs), torch.nn.RNN(
            6, 5, nonlinearity=nl, **kwargs
        )
    if mode == "GRU":
        return unrolled.GRU(6, 5, **kwargs), torch.nn.GRU(6, 5, **kwargs)
    return unrolled.LSTM(6, 5, proj_size=proj, **kwargs), torch.nn.LSTM(
        6, 5, proj_size=proj, **kwargs
    )


@pytest.mark.parametrize("mode,layers,bidir,bias,proj", CONFIGS)
def test_state_dict_both_ways(mode, layers, bidir, bias, proj):
    ours, theirs = _pair(mode, layers, bidir, bias, proj)
    # Same names, shapes and order as torch.
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [
        (n, p.shape) for n, p in theirs.named_parameters()
    ]
    assert [[p.shape for p in ws] for ws in ours.all_weights] == [
        [p.shape for p in ws] for ws in theirs.all_weights
    ]
    assert repr(ours) == repr(theirs)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(4, 3, 6)
    assert_close("output", ours(x)[0], theirs(x)[0], torch.float32)
    fresh = type(theirs)(6, 5, **_torch_kwargs(theirs))
    fresh.load_state_dict(ours.state_dict(), strict=True)
    torch.testing.assert_close(fresh(x)[0], theirs(x)[0])


def _torch_kwargs(m):
    kwargs = dict(num_layers=m.num_layers, bidirectional=m.bidirectional, bias=m.bias)
    if isinstance(m, torch.nn.LSTM):
        kwargs["proj_size"] = m.proj_size
    if isinstance(m, torch.nn.RNN):
        kwargs["nonlinearity"] = m.nonlinearity
    return kwargs


@pytest.mark.parametrize("mode,layers,bidir,bias,proj", CONFIGS[::3])
def test_from_torch_to_torch_roundtrip(mode, layers, bidir, bias, proj):
    _, theirs = _pair(mode, layers, bidir, bias, proj)
    theirs = theirs.double().eval()
    for backend in ("reference", "fast"):
        ours = unrolled.from_torch(theirs, backend=backend)
        assert ours.backend == backend and not ours.training
        assert next(ours.parameters()).dtype == torch.float64
        back = ours.to_torch()
        assert type(back) is type(theirs) and not back.training
        for (n1, p1), (n2, p2) in zip(back.named_parameters(), theirs.named_parameters()):
            assert n1 == n2 and torch.equal(p1, p2)
        # Copies, not shared storage.
        assert all(
            p.data_ptr() != q.data_ptr() for p, q in zip(ours.parameters(), theirs.parameters())
        )


def test_default_initialisation_matches_torch_distribution():
    torch.manual_seed(0)
    ours = unrolled.LSTM(7, 9, num_layers=2, bidirectional=True, proj_size=4)
    torch.manual_seed(0)
    theirs = torch.nn.LSTM(7, 9, num_layers=2, bidirectional=True, proj_size=4)
    # Same RNG draws in the same parameter order: bit-identical initial weights.
    for p, q in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(p, q)


def test_drop_in_replacement_inside_a_model():
    class Tagger(torch.nn.Module):
        def __init__(self, lib):
            super().__init__()
            self.embed = torch.nn.Embedding(20, 8)
            self.rnn = lib.LSTM(8, 16, num_layers=2, batch_first=True, bidirectional=True)
            self.head = torch.nn.Linear(32, 5)

        def forward(self, tokens):
            return self.head(self.rnn(self.embed(tokens))[0])

    theirs = Tagger(torch.nn)
    ours = Tagger(unrolled)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    tokens = torch.randint(0, 20, (3, 7))
    assert_close("tagger output", ours(tokens), theirs(tokens), torch.float32)


def test_flatten_parameters_is_harmless():
    m = unrolled.GRU(3, 4)
    m.flatten_parameters()
    assert m(torch.randn(2, 1, 3))[0].shape == (2, 1, 4)


def test_from_torch_rejects_other_modules():
    with pytest.raises(TypeError, match="got Linear"):
        unrolled.from_torch(torch.nn.Linear(2, 3))


def test_module_moves_with_to_and_double():
    m = unrolled.GRU(3, 4).double()
    out, h = m(torch.randn(2, 1, 3, dtype=torch.float64))
    assert out.dtype == h.dtype == torch.float64
