"""Streaming: consecutive chunks with the returned state == one call on the whole sequence, and
``step`` one time step at a time == ``forward``; for every built-in and custom cell."""

from __future__ import annotations

import pytest
import torch
from test_recurrent import Elman, PlainLSTM

import unrolled
from unrolled.tools.compare import assert_close

T, B, I, H = 9, 3, 4, 5
CHUNKS = (2, 1, 4, 2)  # uneven, including a single step; sums to T
F64 = torch.float64


def built_in(kind, backend):
    def make():
        if kind == "LSTM-proj":
            return unrolled.LSTM(I, H, 2, proj_size=3, backend=backend)
        if kind == "RNN-relu":
            return unrolled.RNN(I, H, 2, nonlinearity="relu", backend=backend)
        return getattr(unrolled, kind)(I, H, 2, backend=backend)

    return make


MODELS = {
    **{
        f"{kind}-{backend}": built_in(kind, backend)
        for kind in ("RNN", "RNN-relu", "LSTM", "LSTM-proj", "GRU")
        for backend in ("reference", "fast")
    },
    "LSTM-zoneout-eval": lambda: unrolled.LSTM(I, H, 2, zoneout=(0.3, 0.6), recurrent_dropout=0.4),
    "GRU-zoneout-eval": lambda: unrolled.GRU(I, H, 2, zoneout=0.3, recurrent_dropout=0.4),
    "Recurrent-Elman": lambda: unrolled.Recurrent(lambda s: Elman(s, H), I, 2),
    "Recurrent-tuple-state": lambda: unrolled.Recurrent(lambda s: PlainLSTM(s, H), I, 2),
    "LayerNormLSTM": lambda: unrolled.Recurrent(lambda s: unrolled.LayerNormLSTM(s, H), I, 2),
    "LayerNormGRU": lambda: unrolled.Recurrent(lambda s: unrolled.LayerNormGRU(s, H), I, 2),
    "IndRNN": lambda: unrolled.Recurrent(lambda s: unrolled.IndRNN(s, H), I, 2),
    "MinGRU": lambda: unrolled.MinGRU(I, H, 2),
}


def model_named(name):
    torch.manual_seed(sum(map(ord, name)))
    return MODELS[name]().to(F64).eval()


def close(a, b):
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    else:
        assert len(a) == len(b)
        for x, y in zip(a, b):
            close(x, y)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("name", list(MODELS))
def test_chunks_equal_whole_sequence(name, batch_first):
    model = model_named(name)
    model.batch_first = batch_first
    x = torch.randn(B, T, I, dtype=F64) if batch_first else torch.randn(T, B, I, dtype=F64)
    whole, whole_state = model(x)
    outputs, state, start = [], None, 0
    for size in CHUNKS:
        chunk = x[:, start : start + size] if batch_first else x[start : start + size]
        out, state = model(chunk, state)
        outputs.append(out)
        start += size
    close(torch.cat(outputs, dim=1 if batch_first else 0), whole)
    close(state, whole_state)


@pytest.mark.parametrize("name", list(MODELS))
def test_steps_equal_whole_sequence(name):
    model = model_named(name)
    x = torch.randn(T, B, I, dtype=F64)
    whole, whole_state = model(x)
    state = None
    for t in range(T):
        out, state = model.step(x[t], state)
        close(out, whole[t])
    close(state, whole_state)


@pytest.mark.parametrize("name", ["GRU-fast", "LSTM-proj-fast", "Recurrent-tuple-state", "MinGRU"])
def test_unbatched_steps(name):
    model = model_named(name)
    x = torch.randn(T, I, dtype=F64)
    whole, whole_state = model(x)
    state = None
    for t in range(T):
        out, state = model.step(x[t], state)
        assert out.shape == whole[t].shape
        close(out, whole[t])
    close(state, whole_state)


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_step_float32_and_gradients(kind):
    """The step path agrees with forward in float32 too, and is differentiable."""
    torch.manual_seed(0)
    model = getattr(unrolled, kind)(I, H, 2)
    x = torch.randn(B, I, requires_grad=True)
    out, _ = model.step(x)
    want, _ = model(x.unsqueeze(0))
    assert_close("step output", out, want[0], torch.float32)
    (grad,) = torch.autograd.grad(out.sum(), x)
    (want_grad,) = torch.autograd.grad(want.sum(), x)
    assert_close("step input grad", grad, want_grad, torch.float32)


def test_step_errors():
    gru = unrolled.GRU(I, H, 2)
    with pytest.raises(RuntimeError, match="bidirectional"):
        unrolled.LSTM(I, H, bidirectional=True).step(torch.randn(B, I))
    with pytest.raises(ValueError, match="1D or 2D"):
        gru.step(torch.randn(1, B, I))
    with pytest.raises(RuntimeError, match=f"Expected {I}, got 7"):
        gru.step(torch.randn(B, 7))
    with pytest.raises(RuntimeError, match=r"Expected state size \(2, 3, 5\), got \[1, 3, 5\]"):
        gru.step(torch.randn(B, I), torch.zeros(1, B, H))
    with pytest.raises(TypeError, match="tuple"):
        unrolled.LSTM(I, H).step(torch.randn(B, I), torch.zeros(1, B, H))
    with pytest.raises(ValueError, match="dtype"):
        gru.step(torch.randn(B, I, dtype=F64))
    with pytest.raises(RuntimeError, match="recurrent_dropout"):
        unrolled.GRU(I, H, recurrent_dropout=0.5).train().step(torch.randn(B, I))
