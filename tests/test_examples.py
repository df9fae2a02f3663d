"""The examples run, learn, and (digits) trace torch.nn's curve.

Short budgets here (an epoch or two, a few dozen steps); the full runs whose numbers the README
quotes are marked slow.
"""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
BACKENDS = ("reference", "fast")

pytest.importorskip("sklearn", reason="the digits example needs the `examples` extra")


@pytest.fixture(autouse=True)
def _one_thread():
    # Small recurrent workloads: one intra-op thread is fastest, and on 2 shared cores (and under
    # pytest-xdist) more threads only fight each other.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def digits():
    return load_example("digits")


@pytest.fixture(scope="module")
def char_lm():
    return load_example("char_lm")


@pytest.mark.parametrize("backend", BACKENDS)
def test_digits_learns_in_two_epochs(digits, backend):
    history = digits.train(epochs=2, progress=False, backend=backend)
    assert len(history.test_accuracy) == 2
    assert history.test_accuracy[-1] > 0.75, history.test_accuracy  # chance is 0.10
    assert history.epoch_loss[1] < history.epoch_loss[0] < math.log(10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_digits_torch_flag_traces_the_same_curve(digits, backend):
    """Same seed, same batches: unrolled.GRU and torch.nn.GRU give the same loss at every step."""
    ours = digits.train(epochs=1, progress=False, backend=backend, max_steps=20)
    theirs = digits.train(epochs=1, progress=False, use_torch=True, max_steps=20)
    assert len(ours.step_loss) == len(theirs.step_loss) == 20
    assert ours.step_loss[0] == pytest.approx(theirs.step_loss[0], rel=1e-6)  # identical init
    torch.testing.assert_close(
        torch.tensor(ours.step_loss), torch.tensor(theirs.step_loss), rtol=1e-4, atol=1e-5
    )
    assert ours.step_loss[-1] < ours.step_loss[0]


def test_digits_same_initial_weights_as_torch(digits):
    torch.manual_seed(3)
    ours = digits.DigitClassifier(16, use_torch=False, backend="reference")
    torch.manual_seed(3)
    theirs = digits.DigitClassifier(16, use_torch=True, backend="reference")
    ours_state, their_state = ours.state_dict(), theirs.state_dict()
    assert list(ours_state) == list(their_state)
    for name in their_state:
        assert torch.equal(ours_state[name], their_state[name]), name


def test_digits_command_line_prints_accuracy_last_and_plots(digits, tmp_path, capsys):
    png = tmp_path / "curves.png"
    assert digits.main(["--epochs", "1", "--no-progress", "--plot", str(png)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"test accuracy: 0\.\d{4}", lines[-1]), lines[-1]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_digits_default_run_reaches_95_percent(digits, backend, capsys):
    assert digits.main(["--no-progress", "--backend", backend]) == 0
    accuracy = float(capsys.readouterr().out.strip().splitlines()[-1].split(":")[1])
    assert accuracy >= 0.95


@pytest.mark.parametrize("backend", BACKENDS)
def test_char_lm_bits_per_character_fall(char_lm, backend):
    history = char_lm.train(
        steps=40,
        report_every=20,
        hidden_size=64,
        backend=backend,
        sample_length=40,
        log=lambda *_: None,
    )
    assert history.steps == [0, 20, 40]
    start, middle, end = history.val_bpc
    assert 5.0 < start < 6.5  # untrained: about log2(62) = 5.95 bits
    assert end < middle < start and end < start - 1.5, history.val_bpc
    assert history.train_bpc[2] < history.train_bpc[1]
    text = char_lm.DEFAULT_TEXT.read_text(encoding="utf-8")
    assert history.sample.startswith("Shall I ") and len(history.sample) == len("Shall I ") + 40
    assert set(history.sample) <= set(text)


def test_char_lm_sampling_carries_state(char_lm):
    """Sampling one character at a time with (h, c) carried equals one pass over the string."""
    torch.manual_seed(0)
    vocab = char_lm.Vocabulary.of("abcdefgh ")
    model = char_lm.CharLM(
        len(vocab.chars),
        embed_size=4,
        hidden_size=8,
        num_layers=2,
        use_torch=False,
        backend="reference",
    ).eval()
    codes = vocab.encode("bad cafe").unsqueeze(0)  # (1, T)
    with torch.no_grad():
        whole, _ = model(codes)  # (1, T, V)
        state, pieces = None, []
        for t in range(codes.shape[1]):
            logits, state = model(codes[:, t : t + 1], state)  # (1, 1, V)
            pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole, atol=1e-6, rtol=1e-5)


def test_shipped_text_is_the_documented_file(char_lm):
    import hashlib

    data = char_lm.DEFAULT_TEXT.read_bytes()
    readme = (char_lm.DEFAULT_TEXT.parent / "README.md").read_text(encoding="utf-8")
    assert hashlib.sha256(data).hexdigest() in readme
    assert len(data) < 300_000


def test_char_lm_truncated_bptt_keeps_the_forward_and_cuts_the_gradient(char_lm):
    torch.manual_seed(0)
    model = char_lm.CharLM(9, embed_size=4, hidden_size=8, num_layers=1, use_torch=False,
                           backend="fast")  # fmt: skip
    codes = torch.randint(9, (3, 12))  # (B, T)

    def run(tbptt):
        model.zero_grad()
        logits = char_lm.forward_truncated(model, codes, tbptt)
        logits.square().sum().backward()
        return logits.detach(), model.lstm.weight_hh_l0.grad.clone()

    full_logits, full_grad = run(0)
    same_logits, same_grad = run(12)  # a window no longer than tbptt: nothing is cut
    cut_logits, cut_grad = run(4)
    torch.testing.assert_close(same_grad, full_grad)
    torch.testing.assert_close(cut_logits, full_logits, atol=1e-6, rtol=1e-5)  # same forward
    assert (cut_grad - full_grad).abs().max() > 1e-4  # fewer paths back in time


def test_char_lm_reports_the_gradient_norm_before_clipping(char_lm):
    runs = {clip: char_lm.train(steps=6, report_every=3, hidden_size=16, sample_length=0,
                                clip=clip, tbptt=2, log=lambda *_: None)
            for clip in (0.0, 1e-3)}  # fmt: skip
    for history in runs.values():
        assert len(history.grad_norm) == 2
        assert all(0 < median <= largest for median, largest in history.grad_norm)
    assert runs[1e-3].grad_norm[0][1] > 1e-3  # measured before clipping to 1e-3
    assert runs[1e-3].val_bpc[-1] > runs[0.0].val_bpc[-1]  # tiny steps learn less


@pytest.fixture(scope="module")
def gates():
    return load_example("gates")


def test_gates_records_the_lstm_step_by_step(gates):
    """The recorded gates are the model's: c_t = f c_{t-1} + i g, h_t = o tanh(c_t), and h_t is
    unrolled.LSTM's output; the correlations found are finite and in [-1, 1]."""
    history = gates.train(steps=5, hidden_size=16, sample_length=0, log=lambda *_: None)
    model = history.model.eval()
    text = gates.char_lm.DEFAULT_TEXT.read_text(encoding="utf-8")
    vocab = gates.Vocabulary.of(text)
    result, findings, passage = gates.analyse(model, vocab, text, passage_chars=50)
    assert text.endswith(result.text) and len(result.text) > 0.09 * len(text)  # held out
    assert passage.text in result.text and len(passage.text) == 50
    c_before = torch.cat([torch.zeros(1, 16), result.c[:-1]])  # (T, H)
    torch.testing.assert_close(result.c, result.f * c_before + result.i * result.g)
    torch.testing.assert_close(result.h, result.o * torch.tanh(result.c))
    for name in ("i", "f", "o"):
        assert 0 <= result[name].min() and result[name].max() <= 1
    with torch.no_grad():
        output, _ = model.lstm(model.embed(vocab.encode(result.text)).unsqueeze(0))
    torch.testing.assert_close(result.h, output[0], atol=1e-5, rtol=0)
    assert [f.label for f in findings] == ["position in the line", "being inside a word",
                                           "line number in the sonnet"]  # fmt: skip
    for finding in findings:
        assert math.isfinite(finding.r) and -1 <= finding.r <= 1, finding
        assert 0 <= finding.unit < 16


def test_gates_features_and_correlations(gates):
    named = gates.features("IV\n\nAb c\nd'e\n")
    assert named["position in the line"].tolist() == [0, 1, 2, 0, 0, 1, 2, 3, 4, 0, 1, 2, 3]
    assert named["being inside a word"].tolist() == [1, 1, 0, 0, 1, 1, 0, 1, 0, 1, 1, 1, 0]
    assert named["line number in the sonnet"].tolist() == [0] * 4 + [1] * 5 + [2] * 4
    values = torch.tensor([[0.0, 1.0, 5.0], [1.0, 1.0, 3.0], [2.0, 1.0, 1.0]])  # (T, H)
    r = gates.correlations(values, torch.tensor([0.0, 1.0, 2.0]))
    torch.testing.assert_close(r, torch.tensor([1.0, 0.0, -1.0]))  # a constant column: 0


def test_gates_command_line_prints_correlations_and_plots(gates, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "gates.png"
    argv = ["--steps", "5", "--passage-chars", "60", "--plot", str(png)]
    assert gates.main(argv) == 0
    out = capsys.readouterr().out
    found = re.findall(r"cell state r = ([+-]\d\.\d{3}) with", out)
    assert len(found) == 3 and all(-1 <= float(r) <= 1 for r in found), out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_cell_diagram_draws_both_cells(mode, tmp_path):
    pytest.importorskip("matplotlib")
    from unrolled.tools import cell_diagram

    path = tmp_path / f"{mode}_cell.png"
    cell_diagram.draw(mode, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="mode must be one of"):
        cell_diagram.draw("rnn", str(tmp_path / "rnn.png"))
