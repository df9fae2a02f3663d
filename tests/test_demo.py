"""``unrolled demo``: what it checks, that it can fail, and that it fits 80 columns."""

from __future__ import annotations

import pytest
import torch

from unrolled import cli
from unrolled.commands import demo


@pytest.mark.parametrize("argv", [[], ["--mode", "notebook"], ["--mode", "lstm", "--layers", "2",
                                  "--bidirectional"], ["--mode", "gru", "--backend", "reference"]])  # fmt: skip
def test_demo_passes_and_says_what_it_checked(argv, capsys):
    assert cli.main(["demo", *argv]) == 0
    out = capsys.readouterr().out
    assert "PASS: unrolled equals torch.nn in outputs, final states and" in out
    assert "gradients" in out and "FAIL" not in out


def test_demo_counts_every_gradient(capsys):
    assert cli.main(["demo", "--mode", "lstm", "--layers", "2", "--bidirectional"]) == 0
    out = capsys.readouterr().out
    # input + 2 layers x 2 directions x 4 weights
    assert "17 gradients" in out and "weight_hh_l1_reverse" in out


def test_module_options_in_the_default_mode_are_refused(capsys):
    with pytest.raises(SystemExit, match="--layers, --backend apply only to --mode rnn"):
        cli.main(["demo", "--layers", "2", "--backend", "reference"])


def test_a_wrong_gradient_fails_the_demo(monkeypatch, capsys):
    real = demo._grads

    def off_by_a_bit(loss, named):
        grads = real(loss, named)
        ours = not isinstance(named.get("weight_hh_l0_reverse"), torch.nn.Parameter)
        if "weight_hh_l0_reverse" in named and ours:  # unrolled's side of the bidirectional check
            grads["weight_hh_l0_reverse"] = grads["weight_hh_l0_reverse"] + 1e-3
        return grads

    monkeypatch.setattr(demo, "_grads", off_by_a_bit)
    assert cli.main(["demo"]) == 1
    out = capsys.readouterr().out
    assert "FAIL: unrolled differs from torch.nn" in out


def test_tables_fit_80_columns(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "80")
    assert cli.main(["demo", "--mode", "rnn", "--bidirectional", "--layers", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert not any("…" in line for line in lines)
