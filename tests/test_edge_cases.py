"""Odd sizes, T=1, B=1, B=0, non-contiguous input, bfloat16, dropout, and a property-based
sweep: all against torch.nn (long float32 sequences: test_numerics.py)."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from parity import compare

import unrolled
from unrolled.tools.compare import TOLERANCES, assert_close

TORCH = {
    "RNN_TANH": lambda *a, **k: torch.nn.RNN(*a, nonlinearity="tanh", **k),
    "RNN_RELU": lambda *a, **k: torch.nn.RNN(*a, nonlinearity="relu", **k),
    "LSTM": torch.nn.LSTM,
    "GRU": torch.nn.GRU,
}
BACKENDS = ("reference", "fast")


def _pair(mode, input_size, hidden, dtype=torch.float64, backend="fast", **kwargs):
    theirs = TORCH[mode](input_size, hidden, **kwargs).to(dtype)
    return unrolled.from_torch(theirs, backend=backend), theirs


def _hx(mode, rows, batch, hidden, proj, dtype):
    h = torch.randn(rows, batch, proj or hidden, dtype=dtype, requires_grad=True)
    return (
        (h, torch.randn(rows, batch, hidden, dtype=dtype, requires_grad=True))
        if mode == "LSTM"
        else h
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "mode,sizes",
    list(itertools.product(TORCH, [(1, 1, 1, 1), (1, 1, 13, 1), (13, 1, 1, 7), (2, 7, 3, 5), (5, 3, 11, 2)])),
)  # fmt: skip
def test_odd_sizes(backend, mode, sizes):
    steps, batch, input_size, hidden = sizes
    torch.manual_seed(sum(sizes))
    ours, theirs = _pair(
        mode, input_size, hidden, backend=backend, num_layers=2, bidirectional=True
    )
    x = torch.randn(steps, batch, input_size, dtype=torch.float64, requires_grad=True)
    compare(ours, theirs, (x,), _hx(mode, 4, batch, hidden, 0, torch.float64))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", TORCH)
def test_non_contiguous_input_and_state(backend, mode):
    torch.manual_seed(1)
    ours, theirs = _pair(
        mode, 4, 5, backend=backend, num_layers=2, bidirectional=True, batch_first=True
    )
    base = torch.randn(3, 4, 6, 2, dtype=torch.float64)  # (B, I, T, 2)
    x = base[..., 0].transpose(1, 2)  # (B, T, I), strided
    assert not x.is_contiguous()
    x.requires_grad_(True)
    h = torch.randn(4, 5, 3, dtype=torch.float64).permute(0, 2, 1)  # (L*D, B, H) non-contiguous
    h.requires_grad_(True)
    hx = (h, torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)) if mode == "LSTM" else h
    compare(ours, theirs, (x,), hx)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", TORCH)
def test_empty_batch(backend, mode):
    ours, theirs = _pair(mode, 3, 4, dtype=torch.float32, backend=backend, num_layers=2)
    out, state = ours(torch.randn(5, 0, 3))
    e_out, e_state = theirs(torch.randn(5, 0, 3))
    assert out.shape == e_out.shape
    for a, b in zip(state if mode == "LSTM" else [state], e_state if mode == "LSTM" else [e_state]):
        assert a.shape == b.shape


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", TORCH)
def test_bfloat16(backend, mode):
    torch.manual_seed(3)
    ours, theirs = _pair(mode, 6, 8, dtype=torch.bfloat16, backend=backend, num_layers=2)
    x = torch.randn(7, 3, 6, dtype=torch.bfloat16)
    out, _ = ours(x)
    expected, _ = theirs(x)
    assert out.dtype == torch.bfloat16
    # bfloat16 keeps 8 bits of mantissa (eps 2^-7): agreement to a few eps of 1.
    assert_close("output", out.float(), expected.float(), torch.bfloat16)
    # And the float32 computation on the same (rounded) weights is what both approximate.
    exact, _ = theirs.float()(x.float())
    assert (out.float() - exact).abs().max() < TOLERANCES[torch.bfloat16].atol


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", TORCH)
def test_dropout_between_layers_uses_torch_masks(backend, mode):
    """In training mode, with the same seed, unrolled draws the same dropout masks as torch."""
    torch.manual_seed(4)
    ours, theirs = _pair(mode, 4, 6, backend=backend, num_layers=3, dropout=0.4, bidirectional=True)
    ours.train(), theirs.train()
    x = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)

    def seeded(module):
        def call(*args):
            torch.manual_seed(99)
            return module(*args)

        call.parameters = module.parameters
        call.named_parameters = module.named_parameters
        return call

    compare(seeded(ours), seeded(theirs), (x,), None)
    # Dropout is really on: another seed gives another output.
    torch.manual_seed(1)
    a = ours(x)[0]
    torch.manual_seed(2)
    assert not torch.allclose(a, ours(x)[0])
    # And off in eval mode.
    ours.eval(), theirs.eval()
    assert_close("eval output", ours(x)[0], theirs(x)[0], torch.float64)


@settings(max_examples=25, deadline=None)
@given(
    mode=st.sampled_from(list(TORCH)),
    backend=st.sampled_from(BACKENDS),
    steps=st.integers(1, 6),
    batch=st.integers(1, 4),
    input_size=st.integers(1, 6),
    hidden=st.integers(2, 6),
    layers=st.integers(1, 3),
    bidirectional=st.booleans(),
    batch_first=st.booleans(),
    bias=st.booleans(),
    use_proj=st.booleans(),
    given_hx=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_random_configurations(
    mode, backend, steps, batch, input_size, hidden, layers, bidirectional, batch_first, bias,
    use_proj, given_hx, seed,
):  # fmt: skip
    torch.manual_seed(seed)
    kwargs = dict(
        num_layers=layers, bidirectional=bidirectional, batch_first=batch_first, bias=bias
    )
    proj = hidden - 1 if (use_proj and mode == "LSTM") else 0
    if proj:
        kwargs["proj_size"] = proj
    ours, theirs = _pair(mode, input_size, hidden, backend=backend, **kwargs)
    shape = (batch, steps, input_size) if batch_first else (steps, batch, input_size)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    rows = layers * (2 if bidirectional else 1)
    hx = _hx(mode, rows, batch, hidden, proj, torch.float64) if given_hx else None
    compare(ours, theirs, (x,), hx)
