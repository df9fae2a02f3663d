"""``unrolled explain``: the equations come from the cells, the step-by-step trace rebuilds
torch.nn's output and h_n exactly, the text says where every slice comes from, and the picture
is written."""

from __future__ import annotations

import itertools

import pytest
import torch

from unrolled import cells, cli
from unrolled.tools import explain

MODES = ["RNN_TANH", "RNN_RELU", "LSTM", "GRU"]


def test_equations_are_read_from_the_cell_docstrings():
    assert explain.equations("RNN_TANH") == [("h'", "tanh(W_ih x + b_ih + W_hh h + b_hh)")]
    assert explain.equations("RNN_RELU") == [("h'", "max(0, W_ih x + b_ih + W_hh h + b_hh)")]
    lstm = explain.equations("LSTM")
    assert [lhs for lhs, _ in lstm] == ["i", "f", "g", "o", "c'", "h'"]
    assert lstm[0] == ("i", "σ(W_ii x + b_ii + W_hi h + b_hi)")
    assert lstm[-1] == ("h'", "o ⊙ tanh(c')")
    assert explain.equations("LSTM", projection=True)[-1] == ("h'", "W_hr (o ⊙ tanh(c'))")
    gru = explain.equations("GRU")
    assert gru[2] == ("n", "tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))")
    assert gru[3] == ("h'", "(1 - z) ⊙ n + z ⊙ h")
    assert explain.symbols(gru[2][1]) == ["W_in", "x", "b_in", "r", "W_hn", "h", "b_hn"]


@pytest.mark.parametrize(
    "mode,layers,bidirectional", list(itertools.product(MODES, (1, 2), (False, True)))
)
def test_trace_rebuilds_torch_output_and_h_n(mode, layers, bidirectional):
    config = explain.Config(mode, layers, bidirectional, steps=4, batch=2, seed=layers)
    result = explain.trace(config)
    D, T, H = config.directions, config.steps, config.hidden_size
    assert len(result.steps) == layers * D * T
    assert result.passed and result.max_difference < 1e-6 and result.cell_difference < 1e-6
    torch.testing.assert_close(result.output, result.torch_output)
    torch.testing.assert_close(result.h_n, result.torch_h_n)
    if mode == "LSTM":
        torch.testing.assert_close(result.c_n, result.torch_c_n)
    last = layers - 1
    # The forward row of h_n is its state at t=T-1, the reverse row its state at t=0.
    assert torch.equal(result.h_n[last * D], result.output[:, T - 1, :H])
    if bidirectional:
        assert torch.equal(result.h_n[last * D + 1], result.output[:, 0, H:])
        assert result.of(last, 1)[0].t == T - 1 and result.of(last, 1)[-1].t == 0


def test_projection_trace():
    config = explain.Config("LSTM", 2, True, steps=3, hidden_size=4, proj_size=2)
    result = explain.trace(config)
    assert result.passed
    assert result.output.shape == (1, 3, 4) and result.h_n.shape == (4, 1, 2)
    assert result.c_n.shape == (4, 1, 4)


def test_text_names_equations_shapes_and_where_h_n_comes_from(capsys):
    status = cli.main(["explain", "--mode", "rnn", "--layers", "2", "--bidirectional", "--T", "3"])
    out = capsys.readouterr().out
    assert status == 0
    assert "h' = tanh(W_ih x + b_ih + W_hh h + b_hh)" in out
    assert (
        "W_ih (3, 2)  x (1, 2)  b_ih (3,)  W_hh (3, 3)  h (1, 3)  b_hh (3,)  ->  h' (1, 3)" in out
    )
    assert "W_ih (3, 6)  x (1, 6)" in out  # layer 1 reads both directions of layer 0
    assert "W_ih = weight_ih_l1_reverse (3, 6)" in out
    assert "step 1/3: t=2, x = input[:, 2], h = h_0[1] (zeros)" in out
    assert "h_n[1] = layer 0 reverse, state after reading t=0" in out
    assert "h_n[3] = layer 1 reverse, state after reading t=0  = output[:, 0, 3:6] (equal)" in out
    assert "h_n[2] = layer 1 forward, state after reading t=2  = output[:, 2, 0:3] (equal)" in out
    assert "output[:, t, 3:6] = layer 1 reverse's h' after reading t" in out
    assert "the reverse direction ENDS at t=0" in out
    assert out.rstrip().endswith("PASS")
    assert "(the fast backend runs this layer as RNN_TANH: " in out  # its plan, with a reason


def test_values_are_the_numbers_of_the_trace(capsys):
    assert cli.main(["explain", "--mode", "gru", "--values", "--T", "2", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    result = explain.trace(explain.Config("GRU", steps=2, seed=3))
    last = result.of(0, 0)[-1]
    row = " ".join(f"{v:+.4f}" for v in last.values["h'"][0].tolist())
    assert f"h'  = [{row}]" in out
    assert "r   = [" in out and "z   = [" in out and "n   = [" in out


def test_lstm_text_lists_gate_slices_and_c_n(capsys):
    assert cli.main(["explain", "--mode", "lstm", "--proj-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "W_if = weight_ih_l0[3:6] (3, 2)" in out
    assert "W_hr = weight_hr_l0 (2, 3)" in out
    assert "h' = W_hr (o ⊙ tanh(c'))" in out
    assert "c_n (1, 1, 3)" in out and "PASS" in out


def test_explain_fails_when_the_cell_is_wrong(capsys, monkeypatch):
    right = cells.rnn_tanh_update
    monkeypatch.setattr(
        cells, "rnn_tanh_update", lambda xw, hw: cells.RNNValues(right(xw, hw).h + 1e-3)
    )
    assert cli.main(["explain", "--mode", "rnn"]) == 1
    assert capsys.readouterr().out.rstrip().endswith("FAIL")


def test_plot_writes_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "explain.png"
    argv = ["explain", "--mode", "lstm", "--layers", "2", "--bidirectional", "--plot", str(path)]
    assert cli.main(argv) == 0
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert 10_000 < len(data) < 400_000
    assert f"wrote {path}" in capsys.readouterr().out


def test_plot_without_matplotlib_is_a_clear_error(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "unrolled.tools.diagram", None)  # as if no matplotlib
    assert cli.main(["explain", "--plot", str(tmp_path / "x.png")]) == 2
    assert "pip install 'unrolled[plot]'" in capsys.readouterr().out
    assert not (tmp_path / "x.png").exists()


def test_plot_labels_steps_of_two_digits_as_one_subscript(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.axes import Axes

    texts = []
    original = Axes.text

    def remember(self, x, y, s, *args, **kwargs):
        texts.append(s)
        return original(self, x, y, s, *args, **kwargs)

    monkeypatch.setattr(Axes, "text", remember)
    assert (
        cli.main(["explain", "--mode", "rnn", "--T", "12", "--plot", str(tmp_path / "e.png")]) == 0
    )
    labels = "\n".join(texts)
    assert "x$_{10}$" in labels and "x$_{11}$" in labels and "h'$_{10}$" in labels
    assert "x$_10$" not in labels and "x$_11$" not in labels  # mathtext: only "1" subscripted


def test_at_80_columns_lines_wrap_between_words(monkeypatch, capsys):
    from unrolled.commands import explain as command

    argv = ["explain", "--mode", "lstm", "--layers", "2", "--bidirectional", "--values"]
    monkeypatch.setenv("COLUMNS", "80")  # not a terminal: one fact per line all the same
    assert cli.main(argv) == 0
    whole = capsys.readouterr().out
    assert max(len(line) for line in whole.splitlines()) > 120
    monkeypatch.setattr(command, "output_width", lambda: 80)  # as on an 80-column terminal
    assert cli.main(argv) == 0
    wrapped = capsys.readouterr().out
    assert max(len(line) for line in wrapped.splitlines()) <= 80
    assert wrapped.split() == whole.split()  # only whitespace moved: no word cut in two
    assert "W_hi = weight_hh_l0[0:3] (3, 3)" in wrapped  # an assignment stays on one line


def test_grad_flow_measures_vanishing_exploding_and_the_forget_gate():
    from unrolled.tools import grad_flow

    small, large = (grad_flow.measure("rnn_tanh", scale, steps=30) for scale in (0.5, 3.0))
    assert len(small.norms) == 30 and small.steps_back(0) == pytest.approx(1.0)
    assert small.steps_back(29) < 1e-6 < 1e2 < large.steps_back(29)
    plain = grad_flow.measure("lstm", 1.0, steps=30)
    held = grad_flow.measure("lstm", 1.0, steps=30, forget_bias=3.0)
    assert held.steps_back(29) > 100 * plain.steps_back(29)
    assert "lstm, forget bias +3" in grad_flow.table([plain, held])


def test_explain_grad_flow_prints_the_table_and_plots(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "flow.png"
    argv = ["explain", "--grad-flow", "--mode", "gru", "--T", "12", "--plot", str(path)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "T=12" in out and out.count("\ngru ") == len((0.5, 1.0, 1.5, 3.0))
    assert "k=10" in out and "k=20" not in out  # only the steps a 12-step sequence has
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit, match="--T must be >= 2"):
        cli.main(["explain", "--grad-flow", "--T", "1"])


def test_a_custom_cell_is_explained_with_its_captured_graphs(capsys):
    assert cli.main(["explain", "--cell", "example_cells:MyGRU", "--bidirectional"]) == 0
    out = capsys.readouterr().out
    assert "plan: Recurrent: captured step" in out
    assert "MyGRU.step() captured: the forward graph has" in out
    assert "sigmoid.default(" in out and "tanh_backward.default(" in out  # forward, backward
    assert out.rstrip().endswith("PASS") and "equal bit for bit: yes" in out


def test_explain_cell_marks_parameter_only_ops_and_says_what_is_not_captured(capsys):
    assert cli.main(["explain", "--cell", "test_captured:PeepholeLSTM"]) == 0
    out = capsys.readouterr().out
    assert "# once per call: reads parameters only" in out  # the weight norm
    assert cli.main(["explain", "--cell", "test_captured:RandomStep"]) == 0
    assert "is not captured: the captured step does not reproduce" in capsys.readouterr().out
    assert cli.main(["explain", "--cell", "LayerNormLSTM"]) == 0
    assert "runs its own whole-sequence loop" in capsys.readouterr().out


def test_explain_cell_runs_the_sizes_it_is_given(capsys):
    """Its own sizes when none are given; the ones given as they are (--batch 1 and
    --hidden-size 3 are not the cell's defaults, and are not replaced by them)."""
    assert cli.main(["explain", "--cell", "IndRNN"]) == 0
    out = capsys.readouterr().out
    assert "hidden_size=4," in out and "(T, B, I) = (5, 2, 3)" in out
    given = ["--T", "4", "--batch", "1", "--input-size", "2", "--hidden-size", "3"]
    assert cli.main(["explain", "--cell", "IndRNN", *given]) == 0
    out = capsys.readouterr().out
    assert "hidden_size=3," in out and "(T, B, I) = (4, 1, 2)" in out
    with pytest.raises(SystemExit, match="--batch must be >= 1"):
        cli.main(["explain", "--cell", "IndRNN", "--batch", "0"])


def test_explain_cell_rejects_what_is_not_a_cell():
    with pytest.raises(SystemExit, match="cannot load 'nowhere:Nothing'"):
        cli.main(["explain", "--cell", "nowhere:Nothing"])
    with pytest.raises(SystemExit, match="torch.nn:GRU is not an unrolled.Cell subclass"):
        cli.main(["explain", "--cell", "torch.nn:GRU"])


def test_explain_cell_finds_a_module_of_the_current_folder(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_cells.py").write_text(
        "import torch, unrolled\n"
        "class Elman(unrolled.Cell):\n"
        "    def __init__(self, i, h):\n"
        "        super().__init__()\n"
        "        self.hidden_size = h\n"
        "        self.w = torch.nn.Linear(i + h, h)\n"
        "    def project(self, x):\n"
        "        return x\n"
        "    def step(self, x_t, h):\n"
        "        h = torch.tanh(self.w(torch.cat([x_t, h], -1)))\n"
        "        return h, h\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", ".")])
    assert cli.main(["explain", "--cell", "my_cells:Elman"]) == 0
    assert "Elman.step() captured" in capsys.readouterr().out
