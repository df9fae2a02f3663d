"""What each gate does: look inside the character-level LSTM of ``char_lm.py`` after training.

The model is trained as in ``char_lm.py`` (same data, same split: the last tenth of the Sonnets
is never trained on), then reads the held-out text one character at a time while this script
records, for every character and every hidden unit, the LSTM's gates ``i`` (input), ``f``
(forget), ``g`` (candidate), ``o`` (output) and its cell state ``c``. They are computed by
running the cell step by step with the gate equations written out and the trained weights, and
checked against the model's own ``unrolled.LSTM`` output.

Then, in the manner of Karpathy's "The Unreasonable Effectiveness of Recurrent Neural Networks",
it looks for units that track something a reader can name: the unit whose cell state is most
correlated (Pearson) with the position within the line (characters since the last newline),
the unit most correlated with being inside a word (a letter or apostrophe) rather than at a
space or punctuation mark, and, among the five units with the largest mean forget gate (they
keep their cell state longest), the one most correlated with the line's number in its sonnet.
Each search takes the largest |r| over its candidates; r is measured over the whole held-out
text (about 9,500 characters), the picture shows a passage of it.

    python examples/gates.py                            # about 30 s on one core
    python examples/gates.py --plot docs/img/gates.png  # the picture (needs matplotlib)
    python examples/gates.py --steps 3000 --passage-chars 320
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor


def _load_char_lm():
    """``char_lm.py`` from this folder, whether this file runs as a script or is imported."""
    name = "example_char_lm"
    if name not in sys.modules:
        path = Path(__file__).resolve().parent / "char_lm.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[name]


char_lm = _load_char_lm()
CharLM, Vocabulary, train = char_lm.CharLM, char_lm.Vocabulary, char_lm.train

GATES = ("i", "f", "g", "o")  # torch's row order in weight_ih / weight_hh
HEADING = re.compile(r"^[IVXLC]+$")  # a sonnet's number, e.g. CXL


@dataclass
class Record:
    """One LSTM layer over ``text``: every quantity is ``(T, H)``, row ``t`` after reading
    ``text[t]``."""

    text: str
    i: Tensor
    f: Tensor
    g: Tensor
    o: Tensor
    c: Tensor
    h: Tensor

    def __getitem__(self, name: str) -> Tensor:
        return getattr(self, name)

    def slice(self, start: int, stop: int) -> Record:
        cut = {name: self[name][start:stop] for name in (*GATES, "c", "h")}
        return Record(self.text[start:stop], **cut)


@dataclass
class Finding:
    """A unit that tracks a named feature of the text."""

    label: str  # what the feature is, for the report
    unit: int
    signal: str  # "c": the unit's cell state
    r: float  # Pearson correlation of the signal with the feature over the held-out text
    saturated: float  # the share of characters where |tanh(c)| > 0.99: h cannot see c change
    mean_forget: float  # the unit's forget gate, averaged over the held-out text


@torch.no_grad()
def record(model: CharLM, vocab: Vocabulary, text: str) -> Record:
    """Run ``model.lstm`` (one layer) over ``text`` one step at a time, the gates written out::

        i, f, g, o = split(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)   # torch's row order
        i, f, o = sigmoid(i, f, o);  g = tanh(g)
        c_t = f * c_{t-1} + i * g;   h_t = o * tanh(c_t)

    and check the ``h_t`` found against the model's own output."""
    lstm = model.lstm
    if lstm.num_layers != 1:
        raise ValueError("record() reads a one-layer LSTM")
    w_ih, w_hh = lstm.weight_ih_l0, lstm.weight_hh_l0  # (4H, E), (4H, H)
    bias = lstm.bias_ih_l0 + lstm.bias_hh_l0  # (4H,)
    x = model.embed(vocab.encode(text))  # (T, E)
    projected = x @ w_ih.T + bias  # (T, 4H): the input's share of every step's gates
    hidden = w_hh.shape[1]
    h, c = torch.zeros(hidden), torch.zeros(hidden)
    rows: dict[str, list[Tensor]] = {name: [] for name in (*GATES, "c", "h")}
    for t in range(len(text)):
        i, f, g, o = (projected[t] + w_hh @ h).chunk(4)  # (H,) each
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c = f * c + i * g
        h = o * torch.tanh(c)
        for name, value in zip((*GATES, "c", "h"), (i, f, g, o, c, h)):
            rows[name].append(value)
    result = Record(text, **{name: torch.stack(values) for name, values in rows.items()})
    output, _ = lstm(x.unsqueeze(0))  # (1, T, H)
    torch.testing.assert_close(result.h, output[0], atol=1e-5, rtol=0)
    return result


def features(text: str) -> dict[str, Tensor]:
    """Per character of ``text``, as float ``(T,)``: the position within the line (0 at the
    first character after a newline), inside a word (1 for a letter or an apostrophe, else 0),
    and the line's number within its sonnet (1 for the line after the heading ``CXL``)."""
    position, in_word, column = [], [], 0
    for char in text:
        position.append(float(column))
        in_word.append(1.0 if char.isalpha() or char == "'" else 0.0)
        column = 0 if char == "\n" else column + 1
    line_number, line = [], 0  # the non-empty lines since the last heading
    for text_line in text.split("\n"):
        stripped = text_line.strip()
        if HEADING.match(stripped):
            line = 0
        elif stripped:
            line += 1
        line_number.extend([float(line)] * (len(text_line) + 1))  # the line and its newline
    line_number = line_number[: len(text)]
    return {
        "position in the line": torch.tensor(position),
        "being inside a word": torch.tensor(in_word),
        "line number in the sonnet": torch.tensor(line_number),
    }


def correlations(values: Tensor, feature: Tensor) -> Tensor:
    """Pearson correlation of every column of ``values (T, H)`` with ``feature (T,)``:
    ``(H,)``, 0 where a column or the feature is constant."""
    v = values.double() - values.double().mean(0)
    f = feature.double() - feature.double().mean()
    scale = v.norm(dim=0) * f.norm()
    r = (v * f[:, None]).sum(0) / scale
    return torch.where(scale > 0, r, torch.zeros_like(r)).float().clamp(-1.0, 1.0)


def find_units(result: Record, *, long_memory: int = 5) -> list[Finding]:
    """The unit whose cell state is most correlated with the position in the line, the one
    most correlated with being inside a word, and, among the ``long_memory`` units with the
    largest mean forget gate, the one most correlated with the line's number in the sonnet."""
    named = features(result.text)
    mean_f = result.f.mean(0)  # (H,)
    saturated = (torch.tanh(result.c).abs() > 0.99).float().mean(0)  # (H,)
    candidates = {
        "position in the line": torch.arange(result.c.shape[1]),
        "being inside a word": torch.arange(result.c.shape[1]),
        "line number in the sonnet": mean_f.argsort(descending=True)[:long_memory],
    }
    findings = []
    for label, units in candidates.items():
        r = correlations(result.c[:, units], named[label])  # (len(units),)
        best = int(r.abs().argmax())
        unit = int(units[best])
        findings.append(Finding(label, unit, "c", float(r[best]), float(saturated[unit]),
                                float(mean_f[unit])))  # fmt: skip
    return findings


def held_out(text: str) -> str:
    """The last tenth of ``text`` (exactly ``char_lm.train``'s split), from its first full
    line on."""
    split = int(0.9 * len(text))  # one code per character: the same index as in train()
    rest = text[split:]
    return rest[rest.index("\n") + 1 :]


def passage_start(text: str) -> int:
    """Where the first sonnet heading of ``text`` begins (0 if there is none)."""
    match = re.search(r"^[IVXLC]+\n", text, re.MULTILINE)
    return match.start() if match else 0


def analyse(
    model: CharLM, vocab: Vocabulary, text: str, passage_chars: int
) -> tuple[Record, list[Finding], Record]:
    """Record the held-out text of ``text``; find the units; cut the passage to show."""
    model.eval()
    result = record(model, vocab, held_out(text))
    findings = find_units(result)
    start = passage_start(result.text)
    return result, findings, result.slice(start, start + passage_chars)


# --- the picture --------------------------------------------------------------------------------

GATE_MAPS = {"i": "Greens", "f": "Blues", "o": "Purples"}
GATE_NAMES = {"i": "input gate i", "f": "forget gate f", "o": "output gate o", "c": "cell state c"}
NEWLINE = "\u21b5"  # ↵


def _layout(text: str, width: int) -> list[tuple[int, int]]:
    """``(row, column)`` of every character; a newline takes a cell (drawn ↵), then a new row;
    lines longer than ``width`` wrap."""
    places, row, column = [], 0, 0
    for char in text:
        if column >= width:
            row, column = row + 1, 0
        places.append((row, column))
        column += 1
        if char == "\n":
            row, column = row + 1, 0
    return places


def _coloured_text(ax, text: str, values: Tensor, title: str, width: int) -> None:
    from matplotlib import colormaps
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    cmap = colormaps["RdBu_r"]
    limit = float(values.abs().max()) or 1.0
    norm = Normalize(-limit, limit)  # white is 0: the colour's side is the sign of c
    places = _layout(text, width)
    rows = places[-1][0] + 1 if places else 1
    for char, (row, column), value in zip(text, places, values.tolist()):
        colour = cmap(norm(value))
        ax.add_patch(Rectangle((column, -row - 1), 1, 1, facecolor=colour, edgecolor="none"))
        luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
        shown = NEWLINE if char == "\n" else char
        ax.text(column + 0.5, -row - 0.52, shown, ha="center", va="center", family="monospace",
                fontsize=13, color="white" if luminance < 0.5 else "black")  # fmt: skip
    ax.set_xlim(0, width)
    ax.set_ylim(-rows, 0)
    ax.axis("off")
    ax.set_title(title, fontsize=11, loc="left")


def _line_starts(text: str) -> tuple[list[int], list[str]]:
    """Where each non-empty line of ``text`` starts, and its first word (a line that starts
    within 8 characters of the last one is skipped: its word would overlap)."""
    places, words, start = [], [], 0
    for line in text.split("\n"):
        if line.strip() and (not places or start - places[-1] >= 8):
            places.append(start + len(line) - len(line.lstrip()))
            words.append(line.split()[0])
        start += len(line) + 1
    return places, words


def plot(passage: Record, findings: list[Finding], path: str, *, heat_units: int = 16) -> None:
    """The passage coloured by each found unit's cell state, then heatmaps of ``i``, ``f``,
    ``o`` and ``c`` over it for the found units and the others whose ``c`` varies most."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    width = max(48, min(64, max(len(line) for line in passage.text.split("\n")) + 1))
    rows = _layout(passage.text, width)[-1][0] + 1
    text_height = 0.27 * rows + 0.3  # inches per coloured passage
    heat_height = 1.7
    units = list(dict.fromkeys(finding.unit for finding in findings))
    spread = passage.c.std(0)  # (H,)
    spread[units] = -1.0
    shown = units + sorted(
        int(u) for u in spread.argsort(descending=True)[: heat_units - len(units)]
    )
    heights = [text_height] * len(findings) + [heat_height] * 4
    fig = plt.figure(figsize=(8.4, sum(heights) + 0.33 * len(heights)))
    grid = fig.add_gridspec(len(heights), 2, height_ratios=heights, width_ratios=[1, 0.018],
                            hspace=0.5, wspace=0.03, left=0.075, right=0.93, top=0.98,
                            bottom=0.03)  # fmt: skip
    for k, finding in enumerate(findings):
        ax = fig.add_subplot(grid[k, 0])
        title = f"unit {finding.unit}, cell state c: r = {finding.r:+.2f} with {finding.label}"
        if k == 2:
            title = f"unit {finding.unit} (mean forget gate {finding.mean_forget:.3f}), c: "
            title += f"r = {finding.r:+.2f} with {finding.label}"
        _coloured_text(ax, passage.text, passage.c[:, finding.unit], title, width)
    starts, words = _line_starts(passage.text)
    for k, name in enumerate(("i", "f", "o", "c")):
        ax = fig.add_subplot(grid[len(findings) + k, 0])
        values = passage[name][:, shown].T.numpy()  # (units, T)
        if name == "c":  # a few saturated units reach |c| >> 1: clip the colour scale
            limit = float(passage.c[:, shown].abs().quantile(0.9)) or 1.0
            image = ax.imshow(values, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit,
                              interpolation="nearest")  # fmt: skip
        else:
            image = ax.imshow(values, aspect="auto", cmap=GATE_MAPS[name], vmin=0, vmax=1,
                              interpolation="nearest")  # fmt: skip
        ax.set_yticks(range(len(shown)), [str(u) if u in units else "" for u in shown],
                      fontsize=7)  # fmt: skip
        ax.tick_params(axis="y", length=0)
        ax.axhline(len(units) - 0.5, color="black", linewidth=0.8)
        ax.set_xticks(starts, words, fontsize=8)
        ax.set_title(f"{GATE_NAMES[name]}: the {len(units)} units above, then the "
                     f"{len(shown) - len(units)} others whose c varies most", fontsize=10,
                     loc="left")  # fmt: skip
        colorbar = fig.colorbar(image, cax=fig.add_subplot(grid[len(findings) + k, 1]),
                                extend="both" if name == "c" else "neither")  # fmt: skip
        colorbar.ax.tick_params(labelsize=8)
    ax.set_xlabel("the passage, character by character (ticks: the first word of each line)",
                  fontsize=9)  # fmt: skip
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    buffer.seek(0)  # few colours: a 256-colour palette keeps the file small
    Image.open(buffer).convert("RGB").quantize(256).save(path, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1500, help="training steps (default 1500)")
    parser.add_argument("--plot", metavar="FILE.png", help="write the picture (needs matplotlib)")
    parser.add_argument("--passage-chars", type=int, default=240,
                        help="characters of held-out text to show (default 240)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.passage_chars < 1:
        parser.error("--steps and --passage-chars must be positive")
    if args.threads:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    history = train(steps=args.steps, seed=args.seed, sample_length=0,
                    report_every=max(1, args.steps // 4))  # fmt: skip
    text = char_lm.DEFAULT_TEXT.read_text(encoding="utf-8")
    result, findings, passage = analyse(history.model, Vocabulary.of(text), text,
                                        args.passage_chars)  # fmt: skip
    print(
        f"recorded i, f, g, o, c over {len(result.text)} held-out characters; the step-by-step "
        "h equals unrolled.LSTM's output to 1e-5"
    )
    for finding in findings:
        print(
            f"unit {finding.unit:3d}: cell state r = {finding.r:+.3f} with {finding.label:25s}"
            f"  (mean forget gate {finding.mean_forget:.3f}, |tanh c| > 0.99 for "
            f"{100 * finding.saturated:.0f}% of the characters)"
        )
    if args.plot:
        plot(passage, findings, args.plot)
        print(f"picture written to {args.plot}")
    print(f"{args.steps} training steps and the analysis in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
