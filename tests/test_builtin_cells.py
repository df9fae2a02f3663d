"""One definition per cell: the built-in cells' updates, their equation tables, and the cell
modules as :class:`unrolled.Cell` s stacked by ``Recurrent`` into torch.nn's layers."""

from __future__ import annotations

import itertools

import pytest
import torch

import unrolled
from unrolled import cells, equations, modes
from unrolled.builtin import BuiltinCell
from unrolled.weights import LayerWeights, parameter_names

TORCH_LAYERS = {
    "RNN_TANH": lambda i, h, **k: torch.nn.RNN(i, h, nonlinearity="tanh", **k),
    "RNN_RELU": lambda i, h, **k: torch.nn.RNN(i, h, nonlinearity="relu", **k),
    "LSTM": torch.nn.LSTM,
    "GRU": torch.nn.GRU,
}


def cell_module(mode: str, input_size: int, hidden_size: int, bias: bool):
    if mode.startswith("RNN"):
        return unrolled.RNNCell(input_size, hidden_size, bias, modes.of(mode).nonlinearity)
    return getattr(unrolled, modes.of(mode).cell_class)(input_size, hidden_size, bias)


@pytest.mark.parametrize(
    "mode,bidirectional,bias,with_lengths",
    list(itertools.product(modes.NAMES, (False, True), (True, False), (False, True))),
)
def test_recurrent_of_cell_modules_is_torchs_layer(mode, bidirectional, bias, with_lengths):
    """``Recurrent(lambda i: unrolled.GRUCell(i, H), ...)``: the same numbers and gradients as
    ``torch.nn.GRU`` with the same weights, through the cells' hoisted input part."""
    torch.manual_seed(0)
    I, H, T, B, L = 3, 5, 6, 4, 2  # noqa: N806
    theirs = TORCH_LAYERS[mode](I, H, num_layers=L, bidirectional=bidirectional, bias=bias)
    theirs = theirs.double()
    ours = unrolled.Recurrent(
        lambda size: cell_module(mode, size, H, bias), I, num_layers=L, bidirectional=bidirectional
    ).double()
    D = 2 if bidirectional else 1  # noqa: N806
    with torch.no_grad():
        for layer, direction in itertools.product(range(L), range(D)):
            cell = ours.cells[layer * D + direction]
            for kind, name in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"),
                                  parameter_names(layer, direction)):  # fmt: skip
                if getattr(cell, kind) is not None:
                    getattr(cell, kind).copy_(getattr(theirs, name))
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([6, 2, 5, 1]) if with_lengths else None
    if with_lengths:
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        out_t, state_t = theirs(packed)
        out_t = torch.nn.utils.rnn.pad_packed_sequence(out_t, total_length=T)[0]
    else:
        out_t, state_t = theirs(x)
    out_o, state_o = ours(x, lengths=lengths)
    torch.testing.assert_close(out_o, out_t, atol=1e-9, rtol=0)
    states_t = state_t if isinstance(state_t, tuple) else (state_t,)
    states_o = state_o if isinstance(state_o, tuple) else (state_o,)
    for a, b in zip(states_o, states_t):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=0)
    loss_o = out_o.square().sum() + sum(s.sum() for s in states_o)
    loss_t = out_t.square().sum() + sum(s.sum() for s in states_t)
    (grad_o,) = torch.autograd.grad(loss_o, x)
    (grad_t,) = torch.autograd.grad(loss_t, x)
    torch.testing.assert_close(grad_o, grad_t, atol=1e-9, rtol=0)


@pytest.mark.parametrize("mode", modes.NAMES)
def test_the_update_returns_what_the_equations_name(mode):
    """Each left-hand side of a cell's table is a field of its update's named tuple (primed
    names are the new state), in the table's order."""
    torch.manual_seed(0)
    H, B = 3, 2  # noqa: N806
    G = modes.of(mode).num_gates  # noqa: N806
    w = LayerWeights(torch.randn(G * H, 4), torch.randn(G * H, H))
    state = (torch.randn(B, H), torch.randn(B, H)) if mode == "LSTM" else torch.randn(B, H)
    values = BuiltinCell(mode, w).values(torch.randn(B, G * H), torch.randn(B, G * H), state)
    fields = [name.rstrip("'") for name, _ in equations.select(cells.EQUATIONS[mode])]
    assert list(values._fields) == fields


#: torch's own one-step ops (ATen's fused cells): the truth a bound cell's step must equal.
TORCH_CELL_OPS = {
    "RNN_TANH": torch.rnn_tanh_cell,
    "RNN_RELU": torch.rnn_relu_cell,
    "LSTM": torch.lstm_cell,
    "GRU": torch.gru_cell,
}


@pytest.mark.parametrize("mode,hoist_input", list(itertools.product(modes.NAMES, (False, True))))
def test_a_bound_cell_steps_as_torchs_cell_op(mode, hoist_input):
    """``BuiltinCell.step`` (input part per step, or hoisted by ``project``) equals torch's
    ``torch.lstm_cell`` / ``gru_cell`` / ``rnn_*_cell`` on the same weights."""
    torch.manual_seed(1)
    H, B, I = 4, 3, 5  # noqa: N806
    G = modes.of(mode).num_gates  # noqa: N806
    w = LayerWeights(*(torch.randn(*s, dtype=torch.float64) for s in
                       [(G * H, I), (G * H, H), (G * H,), (G * H,)]))  # fmt: skip
    x = torch.randn(B, I, dtype=torch.float64)
    h = torch.randn(B, H, dtype=torch.float64)
    state = (h, torch.randn(B, H, dtype=torch.float64)) if mode == "LSTM" else h
    cell = BuiltinCell(mode, w, hoist_input=hoist_input)
    output, new_state = cell.step(cell.project(x[None])[0], state)  # (1, B, I) -> (B, *)
    expected = TORCH_CELL_OPS[mode](x, state, *w[:4])
    torch.testing.assert_close(new_state, expected, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(output, expected[0] if mode == "LSTM" else expected, atol=1e-9,
                               rtol=1e-9)  # fmt: skip


def test_equations_render_to_latex_in_the_docstrings():
    assert (
        equations.latex("σ(W_ii x + b_ii) ⊙ tanh(c')")
        == r"\sigma(W_{ii} x + b_{ii}) \odot \tanh(c')"
    )
    assert r"i &= \sigma(W_{ii} x + b_{ii} + W_{hi} h + b_{hi})" in cells.lstm.__doc__
    assert r"\quad\text{or, with a projection,}\quad W_{hr}" in cells.lstm.__doc__
    assert r"n &= \tanh(W_{in} x + b_{in} + r \odot (W_{hn} h + b_{hn}))" in cells.gru.__doc__
    assert r"h' &= \max(0, W_{ih} x" in cells.rnn_relu.__doc__
    assert cells.gru.__doc__.splitlines()[0].startswith("GRU step")


def test_modes_are_defined_once():
    assert modes.NAMES == ("RNN_TANH", "RNN_RELU", "LSTM", "GRU")
    assert [modes.of(m).num_gates for m in modes.NAMES] == [1, 1, 4, 3]
    assert modes.CLI_NAMES["rnn_relu"] == "RNN_RELU"
    assert modes.of("GRU").cell_class == "GRUCell" and str(modes.LSTM) == "LSTM"
    with pytest.raises(ValueError, match="Unrecognized RNN mode: 'LSTMX'"):
        modes.of("LSTMX")
    with pytest.raises(ValueError, match="Unknown nonlinearity 'gelu'"):
        modes.from_nonlinearity("gelu")
    assert unrolled.GRU(2, 3).mode == torch.nn.GRU(2, 3).mode == "GRU"  # a str, as torch's


def test_layer_weights_are_named():
    lstm = unrolled.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2, bias=False)
    weights = lstm.layer_weights()
    assert len(weights) == 4 and all(isinstance(w, LayerWeights) for w in weights)
    assert (
        weights[3].w_ih is lstm.weight_ih_l1_reverse
        and weights[3].w_hr is lstm.weight_hr_l1_reverse
    )
    assert weights[0].b_ih is None and weights[0].b_hh is None
    assert unrolled.GRU(3, 5).layer_weights()[0].w_hr is None
