"""Bad input raises torch's exception type with a message naming the argument, expected, got."""

from __future__ import annotations

import warnings

import pytest
import torch

import unrolled

# ---- constructor arguments -------------------------------------------------------------------


@pytest.mark.parametrize(
    "factory,exc,fragment",
    [
        (lambda: unrolled.RNN(3, 4, nonlinearity="sigmoid"), ValueError, "Unknown nonlinearity 'sigmoid'"),
        (lambda: unrolled.RNN(3, 4, 1, "gelu"), ValueError, "Select from 'tanh' or 'relu'"),
        (lambda: unrolled.LSTM(3, 4, dropout=1.5), ValueError, "dropout=1.5"),
        (lambda: unrolled.LSTM(3, 4, dropout=-0.1), ValueError, "range [0, 1]"),
        (lambda: unrolled.GRU(3, 4, dropout=True), ValueError, "dropout"),
        (lambda: unrolled.LSTM(3, 4, proj_size=-1), ValueError, "proj_size=-1"),
        (lambda: unrolled.LSTM(3, 4, proj_size=4), ValueError, "proj_size has to be smaller than hidden_size"),
        (lambda: unrolled.LSTM(3, 4, proj_size=7), ValueError, "hidden_size=4"),
        (lambda: unrolled.RNN(3, 4, proj_size=2), ValueError, "only supported for LSTM"),
        (lambda: unrolled.GRU(3, 4, proj_size=2), ValueError, "only supported for LSTM"),
        (lambda: unrolled.GRU(3, 0), ValueError, "hidden_size must be greater than zero"),
        (lambda: unrolled.GRU(3, -2), ValueError, "hidden_size=-2"),
        (lambda: unrolled.GRU(0, 3), ValueError, "input_size must be greater than zero"),
        (lambda: unrolled.LSTM(3, 4, num_layers=0), ValueError, "num_layers must be greater than zero"),
        (lambda: unrolled.LSTM(3, 4.0), TypeError, "hidden_size should be of type int, got: float"),
        (lambda: unrolled.LSTM(3, 4, bias=1), TypeError, "bias should be of type bool, got: int"),
        (lambda: unrolled.LSTM(3, 4, batch_first="yes"), TypeError, "batch_first should be of type bool"),
        (lambda: unrolled.LSTM(3, 4, backend="cuda"), ValueError, "backend must be one of"),
        (lambda: unrolled.RNNCell(3, 4, nonlinearity="x"), ValueError, "Unknown nonlinearity 'x'"),
        (lambda: unrolled.GRUCell(3, -1), RuntimeError, "negative dimension -1: hidden_size=-1"),
        (lambda: unrolled.LSTMCell(3.5, 4), TypeError, "input_size should be of type int, got: float"),
    ],
)  # fmt: skip
def test_bad_constructor_arguments(factory, exc, fragment):
    with pytest.raises(exc, match=_escape(fragment)):
        factory()


def test_bad_constructor_arguments_match_torch_types():
    """The same bad arguments make torch.nn raise the same exception types."""
    for ours, theirs in [
        (lambda: unrolled.LSTM(3, 4, proj_size=4), lambda: torch.nn.LSTM(3, 4, proj_size=4)),
        (lambda: unrolled.GRU(3, 4, dropout=2), lambda: torch.nn.GRU(3, 4, dropout=2)),
        (lambda: unrolled.RNN(3, 4, nonlinearity="x"), lambda: torch.nn.RNN(3, 4, nonlinearity="x")),
        (lambda: unrolled.GRU(3, 0), lambda: torch.nn.GRU(3, 0)),
        (lambda: unrolled.GRU(3, 4, bias=1), lambda: torch.nn.GRU(3, 4, bias=1)),
    ]:  # fmt: skip
        with pytest.raises(Exception) as theirs_info:
            theirs()
        with pytest.raises(Exception) as ours_info:
            ours()
        assert type(ours_info.value) is type(theirs_info.value)


def test_dropout_with_one_layer_warns_like_torch():
    with pytest.warns(UserWarning, match="num_layers greater than 1, but got dropout=0.5"):
        unrolled.GRU(3, 4, dropout=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        unrolled.GRU(3, 4, num_layers=2, dropout=0.5)


# ---- forward inputs --------------------------------------------------------------------------


def _layers():
    return {
        "rnn": unrolled.RNN(5, 4, num_layers=2),
        "lstm": unrolled.LSTM(5, 4, num_layers=2),
        "lstm_proj": unrolled.LSTM(5, 4, num_layers=2, proj_size=3),
        "gru": unrolled.GRU(5, 4, num_layers=2),
    }


def _state(kind, shape_h, shape_c=None):
    h = torch.zeros(shape_h)
    if kind.startswith("lstm"):
        return h, torch.zeros(shape_c or shape_h)
    return h


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("backend", ["reference", "fast"])
def test_bad_forward_inputs(kind, backend):
    m = _layers()[kind]
    m.backend = backend
    name = type(m).__name__
    with pytest.raises(ValueError, match=f"{name}: Expected input to be 2D or 3D, got 4D"):
        m(torch.randn(1, 2, 3, 5))
    with pytest.raises(ValueError, match="got 1D"):
        m(torch.randn(5))
    with pytest.raises(RuntimeError, match="input_size. Expected 5, got 6"):
        m(torch.randn(3, 2, 6))
    with pytest.raises(ValueError, match=_escape("input dtype (torch.float64) does not match")):
        m(torch.randn(3, 2, 5, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="sequence length to be larger than 0"):
        m(torch.randn(0, 2, 5))
    # hx shape: layers, batch, hidden
    for bad in [(3, 2, 4), (2, 3, 4), (2, 2, 5)]:
        with pytest.raises(RuntimeError, match=_escape(f"got {list(bad)}")):
            m(torch.randn(3, 2, 5), _state(kind, bad, (2, 2, 4)))
    with pytest.raises(RuntimeError, match="For unbatched 2-D input, hx"):
        m(torch.randn(3, 5), _state(kind, (2, 2, 4)))
    with pytest.raises(RuntimeError, match="For batched 3-D input, hx"):
        m(torch.randn(3, 2, 5), _state(kind, (2, 4)))
    hx = _state(kind, (2, 2, 4))
    bad_dtype = (hx[0].double(), hx[1]) if isinstance(hx, tuple) else hx.double()
    with pytest.raises(RuntimeError, match="dtype to match input dtype torch.float32"):
        m(torch.randn(3, 2, 5), bad_dtype)


def test_lstm_cell_state_errors():
    m = _layers()["lstm_proj"]
    x = torch.randn(3, 2, 5)
    with pytest.raises(
        RuntimeError, match=_escape("Expected hidden[1] size (2, 2, 4), got [2, 2, 3]")
    ):
        m(x, (torch.zeros(2, 2, 3), torch.zeros(2, 2, 3)))
    with pytest.raises(
        RuntimeError, match=_escape("Expected hidden[0] size (2, 2, 3), got [2, 2, 4]")
    ):
        m(x, (torch.zeros(2, 2, 4), torch.zeros(2, 2, 4)))


def test_hx_structure_errors():
    layers = _layers()
    x = torch.randn(3, 2, 5)
    with pytest.raises(TypeError, match="LSTM expects hx to be a tuple"):
        layers["lstm"](x, torch.zeros(2, 2, 4))
    with pytest.raises(TypeError, match="LSTM expects hx to be a tuple .* got a tuple of 3"):
        layers["lstm"](x, (torch.zeros(2, 2, 4),) * 3)
    with pytest.raises(TypeError, match="GRU expects hx to be a Tensor, got a tuple"):
        layers["gru"](x, (torch.zeros(2, 2, 4), torch.zeros(2, 2, 4)))
    with pytest.raises(TypeError, match="RNN expects hx to be a Tensor, got a list"):
        layers["rnn"](x, [torch.zeros(2, 2, 4)])
    with pytest.raises(TypeError, match="input must be a Tensor or a PackedSequence, got list"):
        layers["rnn"]([[1.0]])


def test_cell_input_errors():
    cell = unrolled.RNNCell(10, 3)
    with pytest.raises(RuntimeError, match="input has inconsistent input_size: got 5 expected 10"):
        cell(torch.randn(2, 5))
    # torch's cells: their C++ checks' wording and types
    with pytest.raises(
        RuntimeError, match="hidden0 has inconsistent hidden_size: got 4, expected 3"
    ):
        cell(torch.randn(2, 10), torch.randn(2, 4))
    with pytest.raises(RuntimeError, match="Input batch size 2 doesn't match hidden0 batch size 3"):
        cell(torch.randn(2, 10), torch.randn(3, 3))
    with pytest.raises(ValueError, match="RNNCell: Expected hidden to be 1D or 2D, got 4D instead"):
        cell(torch.randn(2, 10), torch.randn(2, 1, 1, 3))
    with pytest.raises(ValueError, match="RNNCell: Expected input to be 1D or 2D, got 3D"):
        cell(torch.randn(1, 2, 10))
    with pytest.raises(RuntimeError, match="For unbatched 1-D input, hx should also be 1-D"):
        cell(torch.randn(10), torch.randn(2, 3))
    with pytest.raises(
        RuntimeError, match="mat1 and mat2 must have the same dtype, but got Double and Float"
    ):
        cell(torch.randn(2, 10, dtype=torch.float64))
    lstm = unrolled.LSTMCell(10, 3)
    with pytest.raises(TypeError, match="LSTMCell expects hx to be a tuple"):
        lstm(torch.randn(2, 10), torch.randn(2, 3))
    with pytest.raises(
        RuntimeError, match="hidden1 has inconsistent hidden_size: got 4, expected 3"
    ):
        lstm(torch.randn(2, 10), (torch.randn(2, 3), torch.randn(2, 4)))
    with pytest.raises(
        ValueError, match=_escape("LSTMCell: Expected hx[1] to be 1D or 2D, got 4D")
    ):
        lstm(torch.randn(2, 10), (torch.randn(2, 3), torch.randn(2, 1, 1, 3)))


@pytest.mark.parametrize(
    "lengths,fragment",
    [
        ([3, 0], "lengths must be >= 1"),
        ([3, -1], "lengths must be >= 1"),
        ([3, 9], "lengths must be <= the sequence length T=4, got max 9"),
        ([3], "expected shape (2,), got (1,)"),
        ([3, 2, 1], "expected shape (2,), got (3,)"),
        ([3.0, 2.0], "lengths must hold integers"),
        (torch.tensor([3.0, 2.0]), "lengths must hold integers, got a tensor of dtype torch.float32"),
        (torch.tensor([[3, 2]]), "expected shape (2,), got (1, 2)"),
        (5, "lengths must be a sequence of integers, got int"),
    ],
)  # fmt: skip
def test_bad_lengths(lengths, fragment):
    m = unrolled.GRU(5, 4)
    with pytest.raises(ValueError, match=_escape(fragment)):
        m(torch.randn(4, 2, 5), lengths=lengths)


def test_lengths_rejected_where_meaningless():
    m = unrolled.GRU(5, 4)
    with pytest.raises(ValueError, match="needs batched 3-D input"):
        m(torch.randn(4, 5), lengths=[4])
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.randn(4, 2, 5), [4, 2])
    with pytest.raises(ValueError, match="PackedSequence carries its own"):
        m(packed, lengths=[4, 2])


def _escape(text):
    import re

    return re.escape(text)


def test_step_input_errors():
    with pytest.raises(
        RuntimeError, match=r"GRU.step\(\) runs one time step forward; a bidirectional"
    ):
        unrolled.GRU(3, 4, bidirectional=True).step(torch.randn(2, 3))
    with pytest.raises(ValueError, match="LSTM.step: Expected x_t to be 1D or 2D, got 3D tensor"):
        unrolled.LSTM(3, 4).step(torch.randn(1, 2, 3))
    with pytest.raises(ValueError, match="RNN.step: Expected x_t to be 1D or 2D, got list"):
        unrolled.RNN(3, 4).step([1.0, 2.0, 3.0])
    with pytest.raises(RuntimeError, match="Expected 3, got 5"):
        unrolled.RNN(3, 4).step(torch.randn(2, 5))
    rec = unrolled.Recurrent(lambda i: unrolled.IndRNN(i, 4), 3, bidirectional=True)
    with pytest.raises(RuntimeError, match=r"Recurrent.step\(\) runs one time step forward"):
        rec.step(torch.randn(2, 3))
