"""unrolled.functional's two functions, equal to nn.RNN(batch_first=True[, bidirectional=True])."""

from __future__ import annotations

import itertools

import pytest
import torch

from unrolled.functional import bidirectional_rnn_forward, rnn, rnn_forward
from unrolled.tools.compare import assert_close


def _weights(module, suffix=""):
    p = dict(module.named_parameters())
    return [p.get(f"{n}_l0{suffix}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]


@pytest.mark.parametrize(
    "batch,steps,input_size,hidden,bias,dtype",
    list(itertools.product((1, 2), (1, 3, 11), (1, 2), (1, 3, 7), (True, False), (torch.float32, torch.float64))),
)  # fmt: skip
def test_functions_equal_nn_rnn(batch, steps, input_size, hidden, bias, dtype):
    torch.manual_seed(steps * 31 + hidden)
    x = torch.randn(batch, steps, input_size, dtype=dtype)
    h0 = torch.randn(2, batch, hidden, dtype=dtype)
    uni = torch.nn.RNN(input_size, hidden, batch_first=True, bias=bias).to(dtype)
    out, h_n = rnn_forward(x, *_weights(uni), h0[0])
    expected, expected_h = uni(x, h0[:1])
    assert_close("output", out, expected, dtype)
    assert_close("h_n", h_n, expected_h, dtype)

    bi = torch.nn.RNN(input_size, hidden, batch_first=True, bidirectional=True, bias=bias).to(dtype)
    out, h_n = bidirectional_rnn_forward(x, *_weights(bi), h0[0], *_weights(bi, "_reverse"), h0[1])
    expected, expected_h = bi(x, h0)
    assert_close("bidirectional output", out, expected, dtype)
    assert_close("bidirectional h_n", h_n, expected_h, dtype)


def test_functions_gradients():
    torch.manual_seed(0)
    bi = torch.nn.RNN(3, 4, batch_first=True, bidirectional=True).double()
    x = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 2, 4, dtype=torch.float64, requires_grad=True)
    out, h_n = bidirectional_rnn_forward(x, *_weights(bi), h0[0], *_weights(bi, "_reverse"), h0[1])
    ours = torch.autograd.grad((out.sum() + (h_n**2).sum()), [x, h0, *bi.parameters()])
    out, h_n = bi(x, h0)
    theirs = torch.autograd.grad((out.sum() + (h_n**2).sum()), [x, h0, *bi.parameters()])
    for k, (a, b) in enumerate(zip(ours, theirs)):
        assert_close(f"grad {k}", a, b, torch.float64)


def test_bias_shape_is_hidden_not_input():
    x = torch.randn(2, 3, 2)
    w_ih, w_hh = torch.randn(3, 2), torch.randn(3, 3)
    with pytest.raises(RuntimeError, match=r"bias_ih must have shape \(3,\), got \(2,\)"):
        rnn_forward(x, w_ih, w_hh, torch.randn(2), torch.randn(3), torch.zeros(2, 3))
    with pytest.raises(RuntimeError, match=r"h_prev must have shape \(2, 3\), got \(1, 3\)"):
        rnn_forward(x, w_ih, w_hh, None, None, torch.zeros(1, 3))
    with pytest.raises(RuntimeError, match=r"weight_hh_reverse must have shape \(3, 3\)"):
        bidirectional_rnn_forward(x, w_ih, w_hh, None, None, torch.zeros(2, 3),
                                  w_ih, torch.randn(3, 2), None, None, torch.zeros(2, 3))  # fmt: skip
    with pytest.raises(ValueError, match="input must be 3-D"):
        rnn_forward(x[0], w_ih, w_hh, None, None, torch.zeros(2, 3))


@pytest.mark.parametrize("backend", ["reference", "fast"])
def test_functional_rnn_entry_point(backend):
    torch.manual_seed(0)
    m = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2)
    x = torch.randn(5, 2, 3)
    weights = [tuple(list(ws) + [None] * 0) for ws in m.all_weights]
    weights = [(w[0], w[1], w[2], w[3], w[4]) for w in weights]
    hx = (torch.zeros(4, 2, 2), torch.zeros(4, 2, 4))
    out, (h, c) = rnn("LSTM", x, hx, weights, num_layers=2, bidirectional=True, backend=backend)
    e_out, (e_h, e_c) = m(x)
    assert_close("output", out, e_out, torch.float32)
    assert_close("h_n", h, e_h, torch.float32)
    assert_close("c_n", c, e_c, torch.float32)
