"""A user's cell that breaks the ``Cell`` protocol gets an error that says what the protocol
expects, naming the cell, the expected and the actual value, not a raw Python or matmul error."""

from __future__ import annotations

import pytest
import torch
from example_cells import MyGRU, copy_gru_weights
from torch import nn

import unrolled

SEQ, BATCH, INPUT, HIDDEN = 5, 3, 4, 6


class Elman(unrolled.Cell):
    """A correct cell: ``h' = tanh(W_ih x + b_ih + W_hh h + b_hh)``."""

    def __init__(self, input_size, hidden_size=HIDDEN):
        super().__init__()
        self.hidden_size = hidden_size
        self.ih = nn.Linear(input_size, hidden_size)
        self.hh = nn.Linear(hidden_size, hidden_size)

    def project(self, x):
        return self.ih(x)  # (T, B, I) -> (T, B, H)

    def step(self, xp_t, h):
        h = torch.tanh(xp_t + self.hh(h))  # (B, H)
        return h, h


class BareTensorStep(Elman):
    """Mistake 1: ``step`` returns the new state alone, not ``(output, new_state)``."""

    def step(self, xp_t, h):
        return torch.tanh(xp_t + self.hh(h))


class WideOutput(Elman):
    """Mistake 3: the output is ``2 * hidden_size`` wide."""

    def step(self, xp_t, h):
        h = torch.tanh(xp_t + self.hh(h))
        return torch.cat([h, h], dim=-1), h  # (B, 2H)


class FlatProject(Elman):
    """Mistake 4: ``project`` merges the time and batch dims."""

    def project(self, x):
        return self.ih(x).flatten(0, 1)  # (T * B, H)


class CumsumProject(Elman):
    """Mistake 4, the shape-preserving kind: ``project`` mixes time steps."""

    def project(self, x):
        return self.ih(x).cumsum(0)  # (T, B, H), but row t reads rows 0..t


def x_seq():
    return torch.randn(SEQ, BATCH, INPUT)


def test_step_returning_a_bare_tensor():
    rec = unrolled.Recurrent(lambda size: BareTensorStep(size), INPUT)
    message = (
        r"BareTensorStep\.step\(\) must return a pair \(output, new_state\), "
        rf"got a Tensor of shape \({BATCH}, {HIDDEN}\)"
    )
    with pytest.raises(TypeError, match=message):
        rec(x_seq())
    with pytest.raises(TypeError, match=message):  # streaming: the same check, the same words
        rec.step(x_seq()[0])


def test_step_returning_a_bare_tensor_of_batch_two_is_not_unpacked_as_rows():
    """Unpacking a ``(2, H)`` tensor would silently split it into two rows."""
    rec = unrolled.Recurrent(lambda size: BareTensorStep(size), INPUT)
    with pytest.raises(TypeError, match=rf"got a Tensor of shape \(2, {HIDDEN}\)"):
        rec(torch.randn(SEQ, 2, INPUT))


def test_a_cell_instance_instead_of_a_factory():
    with pytest.raises(TypeError) as raised:
        unrolled.Recurrent(Elman(INPUT, HIDDEN), INPUT)
    message = str(raised.value)
    assert "cell must be a factory" in message  # expected
    assert "got an instance of Elman" in message  # actual
    assert "unrolled.Recurrent(lambda size: Elman(size, ...), input_size, ...)" in message
    assert "not unrolled.Recurrent(Elman(...), ...)" in message


def test_the_class_itself_is_a_factory():
    rec = unrolled.Recurrent(Elman, INPUT, num_layers=2)  # Elman(size) makes a cell
    output, h_n = rec(x_seq())
    assert output.shape == (SEQ, BATCH, HIDDEN) and h_n.shape == (2, BATCH, HIDDEN)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_output_wider_than_hidden_size(num_layers):
    rec = unrolled.Recurrent(lambda size: WideOutput(size), INPUT, num_layers=num_layers)
    with pytest.raises(ValueError) as raised:
        rec(x_seq())
    message = str(raised.value)
    assert "WideOutput.step() in layer 0 (forward, cells[0])" in message
    assert f"output of shape ({BATCH}, {2 * HIDDEN})" in message
    assert f"expected width {HIDDEN} (the cell's hidden_size), got {2 * HIDDEN}" in message
    if num_layers == 2:
        assert f"layer 1 reads 1 * hidden_size = {HIDDEN} features" in message
    with pytest.raises(ValueError, match=rf"expected width {HIDDEN} .* got {2 * HIDDEN}"):
        rec.step(x_seq()[0])


def test_output_wider_than_hidden_size_bidirectional():
    rec = unrolled.Recurrent(lambda size: WideOutput(size), INPUT, 2, bidirectional=True)
    with pytest.raises(ValueError, match=r"layer 1 reads 2 \* hidden_size = 12 features"):
        rec(x_seq())


def test_project_that_changes_the_leading_dims():
    rec = unrolled.Recurrent(lambda size: FlatProject(size), INPUT)
    with pytest.raises(ValueError) as raised:
        rec(x_seq())
    message = str(raised.value)
    assert "FlatProject.project() must map each time step on its own" in message
    assert "keep the leading (T, B) dims" in message
    shapes = f"expected an output of shape ({SEQ}, {BATCH}, ...), got ({SEQ * BATCH}, {HIDDEN})"
    assert shapes in message
    with pytest.raises(ValueError, match=rf"expected an output of shape \(1, {BATCH}, \.\.\.\)"):
        rec.step(x_seq()[0])


def test_project_that_mixes_time_steps_is_caught_by_check_cells():
    rec = unrolled.Recurrent(lambda size: CumsumProject(size), INPUT, 2, bidirectional=True)
    rec(x_seq())  # the shape is right, so a call cannot tell (and costs nothing extra)
    rec.train()
    with pytest.raises(ValueError) as raised:
        rec.check_cells(x_seq())
    message = str(raised.value)
    assert "CumsumProject.project() in layer 0 (forward, cells[0])" in message
    assert "must map each time step on its own" in message
    assert "project(x[1:2])[0] differs from project(x)[1] by up to" in message
    assert rec.training and all(cell.training for cell in rec.cells)  # modes restored


def test_check_cells_finds_the_same_mistakes_as_a_call():
    with pytest.raises(ValueError, match="FlatProject.project()"):
        unrolled.Recurrent(lambda size: FlatProject(size), INPUT).check_cells(x_seq())
    with pytest.raises(ValueError, match="expected width"):
        unrolled.Recurrent(lambda size: WideOutput(size), INPUT, 2).check_cells(x_seq())
    with pytest.raises(TypeError, match=r"must return a pair \(output, new_state\)"):
        unrolled.Recurrent(lambda size: BareTensorStep(size), INPUT).check_cells(x_seq())


def test_a_correct_cell_passes_and_runs():
    torch.manual_seed(0)
    rec = unrolled.Recurrent(lambda size: Elman(size), INPUT, 2, bidirectional=True, dropout=0.5)
    x = x_seq()
    rec.check_cells(x)
    rec.check_cells(x.transpose(0, 1).contiguous()[0])  # unbatched (T, I)
    assert rec.training  # check_cells puts the mode back
    rec.eval()
    output, h_n = rec(x, lengths=[5, 3, 1])
    assert output.shape == (SEQ, BATCH, 2 * HIDDEN) and h_n.shape == (4, BATCH, HIDDEN)

    streaming = unrolled.Recurrent(lambda size: Elman(size), INPUT, num_layers=2)
    whole, _ = streaming(x)
    state = None
    for t in range(SEQ):
        y_t, state = streaming.step(x[t], state)
        torch.testing.assert_close(y_t, whole[t])


def test_the_documented_gru_cell_still_matches_torch():
    """The cell of docs/custom_cells.md, against ``nn.GRU``, through the checked loop."""

    torch.manual_seed(0)
    model = unrolled.Recurrent(lambda size: MyGRU(size, HIDDEN), INPUT, 2, bidirectional=True)
    reference = nn.GRU(INPUT, HIDDEN, num_layers=2, bidirectional=True)
    copy_gru_weights(model, reference)
    x = x_seq()
    model.check_cells(x)
    output, h_n = model(x)
    expected, expected_h_n = reference(x)
    torch.testing.assert_close(output, expected)
    torch.testing.assert_close(h_n, expected_h_n)
