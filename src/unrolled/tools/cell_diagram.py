"""Draw one LSTM or GRU cell, gate by gate, in torch's exact formulation.

The pictures follow the style of Christopher Olah's "Understanding LSTM Networks": a box for
every layer (a linear map followed by ``σ`` or ``tanh``), a circle for every elementwise
operation (``×`` is the product written ``⊙`` in the equations, ``+`` the sum, ``1−`` one minus),
arrows for the data flow. They differ from that post where torch differs from it:

- LSTM: four gates in torch's row order ``i, f, g, o`` (``weight_ih`` is ``[W_ii | W_if | W_ig |
  W_io]`` stacked), each with two biases; ``c' = f ⊙ c + i ⊙ g``, ``h' = o ⊙ tanh(c')``.
- GRU: ``x`` and ``h`` are multiplied separately, and the reset gate multiplies the *product*
  ``W_hn h + b_hn``, not ``h`` itself: ``n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))``;
  ``h' = (1 − z) ⊙ n + z ⊙ h``, so ``z`` is the share of the OLD state that is kept.

``draw("lstm", "lstm_cell.png")`` writes the picture, with the equations underneath. Needs
matplotlib (``pip install 'unrolled[plot]'``); uses the Agg backend, so no display. The core
library never imports this module.
"""

from __future__ import annotations

import io

import matplotlib
from PIL import Image  # installed with matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch  # noqa: E402

MODES = ("lstm", "gru")
INK = "#333333"
CELL_FACE, CELL_EDGE = "#f4f4f4", "#9a9a9a"
LAYER_FACE, LAYER_EDGE = "#fde9a9", "#c9a227"  # a learned layer: linear map + nonlinearity
LINEAR_FACE = "#e8e8e8"  # a linear map alone (the GRU's separate products)
OP_FACE, OP_EDGE = "#f6c9d8", "#c0577a"  # an elementwise operation
#: One colour per gate (``examples/gates.py``'s heatmaps use the same hues for i, f and o).
GATE_COLORS = {
    "i": "#2a9d3f",
    "f": "#2f6fb0",
    "g": "#d07a1a",
    "o": "#8e44ad",
    "r": "#c0392b",
    "z": "#2f6fb0",
    "n": "#d07a1a",
}
STATE_COLOR = "#222222"
BOX_W, BOX_H = 0.9, 0.62
RADIUS = 0.24


def _layer(ax, x, y, text, *, width=BOX_W, face=LAYER_FACE, edge=LAYER_EDGE, size=14):
    ax.add_patch(
        FancyBboxPatch(
            (x - width / 2, y - BOX_H / 2), width, BOX_H,
            boxstyle="round,pad=0.0,rounding_size=0.1", facecolor=face, edgecolor=edge,
            linewidth=1.5, zorder=4,
        )
    )  # fmt: skip
    ax.text(x, y, text, ha="center", va="center", fontsize=size, color=INK, zorder=5)


def _op(ax, x, y, text, *, size=15):
    ax.add_patch(
        Circle((x, y), RADIUS, facecolor=OP_FACE, edgecolor=OP_EDGE, linewidth=1.5, zorder=4)
    )
    ax.text(x, y, text, ha="center", va="center_baseline", fontsize=size, color=INK, zorder=5,
            weight="bold")  # fmt: skip


def _dot(ax, x, y, color=STATE_COLOR):
    ax.add_patch(Circle((x, y), 0.065, facecolor=color, edgecolor=color, zorder=6))


def _flow(ax, points, *, color=STATE_COLOR, width=1.8, arrow=True, zorder=3):
    """A polyline through ``points``, with an arrowhead on its last segment."""
    body = points if not arrow else points[:-1]
    if len(body) > 1:
        bx, by = zip(*body)
        ax.plot(bx, by, color=color, linewidth=width, solid_capstyle="butt", zorder=zorder)
    if arrow:
        ax.add_patch(
            FancyArrowPatch(
                points[-2], points[-1], arrowstyle="-|>", mutation_scale=16, color=color,
                linewidth=width, shrinkA=0, shrinkB=0, zorder=zorder,
            )
        )  # fmt: skip


def _label(ax, x, y, text, *, color=INK, size=15, ha="center", va="center"):
    ax.text(x, y, text, ha=ha, va=va, fontsize=size, color=color, zorder=6)


def _frame(ax, left, bottom, right, top, title):
    ax.add_patch(
        FancyBboxPatch(
            (left, bottom), right - left, top - bottom, boxstyle="round,pad=0.0,rounding_size=0.35",
            facecolor=CELL_FACE, edgecolor=CELL_EDGE, linewidth=1.5, zorder=0,
        )
    )  # fmt: skip
    ax.text(left + 0.1, top + 0.08, title, ha="left", va="bottom", fontsize=11,
            color="#777777", zorder=1)  # fmt: skip


def _inputs(ax, h_y, x_y, h_from, x_at, x_end, h_end, taps_both, taps_h=(), taps_x=()):
    """The ``h_{t-1}`` line (``h_y``) and the ``x_t`` line (``x_y``); a vertical from each tap
    up to its box, with a dot where it reads a line."""
    _flow(ax, [(h_from, h_y), (h_end, h_y)], arrow=False)
    _flow(ax, [(x_at, -0.55), (x_at, x_y), (x_end, x_y)], arrow=False)
    _label(ax, x_at, -0.85, "$x_t$", size=17)
    for x in taps_both:
        _flow(ax, [(x, x_y), (x, BOX_Y - BOX_H / 2)], arrow=False)
        _dot(ax, x, x_y)
        _dot(ax, x, h_y)
    for x in taps_h:
        _flow(ax, [(x, h_y), (x, BOX_Y - BOX_H / 2)], arrow=False)
        _dot(ax, x, h_y)
    for x in taps_x:
        _flow(ax, [(x, x_y), (x, BOX_Y - BOX_H / 2)], arrow=False)
        _dot(ax, x, x_y)


BOX_Y = 2.2  # the row of gate boxes
H_Y, X_Y = 1.25, 0.55  # the h_{t-1} line and the x_t line
TOP = 5.1  # the state carried along the top: c for the LSTM, h for the GRU
RIGHT = 11.0  # where the outputs leave


def _draw_lstm(ax) -> None:
    _frame(ax, 0.55, 0.05, 10.35, 5.7, "unrolled.LSTMCell  /  torch.nn.LSTMCell")
    fx, ix, gx, ox, tx = 2.2, 3.6, 5.0, 6.4, 8.2
    mid = 3.75  # the row of i ⊙ g
    # The cell state along the top: c_{t-1} -> x f -> + i g -> c_t.
    _flow(ax, [(-0.2, TOP), (fx - RADIUS, TOP)])
    _label(ax, -0.5, TOP, "$c_{t-1}$", ha="right", size=17)
    _op(ax, fx, TOP, "×")
    _flow(ax, [(fx + RADIUS, TOP), (gx - RADIUS, TOP)])
    _op(ax, gx, TOP, "+")
    up = 9.45  # where h_t leaves upwards, crossing the cell state (a gap shows it is no junction)
    _flow(ax, [(gx + RADIUS, TOP), (up - 0.13, TOP)], arrow=False)
    _flow(ax, [(up + 0.13, TOP), (RIGHT, TOP)])
    _label(ax, RIGHT + 0.3, TOP, "$c_t$", ha="left", size=17)
    # Inputs and the four gate layers, each reading both x_t and h_{t-1}.
    _flow(ax, [(-0.2, H_Y), (0.9, H_Y)], arrow=False)
    _label(ax, -0.5, H_Y, "$h_{t-1}$", ha="right", size=17)
    _inputs(ax, H_Y, X_Y, 0.9, 1.2, ox, ox, taps_both=(fx, ix, gx, ox))
    for x, name, fn in ((fx, "f", "σ"), (ix, "i", "σ"), (gx, "g", "tanh"), (ox, "o", "σ")):
        _layer(ax, x, BOX_Y, fn, edge=GATE_COLORS[name])
    top = BOX_Y + BOX_H / 2
    _flow(ax, [(fx, top), (fx, TOP - RADIUS)], color=GATE_COLORS["f"])
    _label(ax, fx + 0.12, 3.3, "$f_t$", color=GATE_COLORS["f"], ha="left")
    _flow(ax, [(ix, top), (ix, mid), (gx - RADIUS, mid)], color=GATE_COLORS["i"])
    _label(ax, ix + 0.12, 3.05, "$i_t$", color=GATE_COLORS["i"], ha="left")
    _flow(ax, [(gx, top), (gx, mid - RADIUS)], color=GATE_COLORS["g"])
    _label(ax, gx + 0.12, 3.05, "$g_t$", color=GATE_COLORS["g"], ha="left")
    _op(ax, gx, mid, "×")
    _flow(ax, [(gx, mid + RADIUS), (gx, TOP - RADIUS)])
    _label(ax, gx + 0.12, 4.38, r"$i_t \odot g_t$", ha="left", size=13)
    # The output: h_t = o_t * tanh(c_t).
    _flow(ax, [(ox + BOX_W / 2, BOX_Y), (tx - RADIUS, BOX_Y)], color=GATE_COLORS["o"])
    _label(ax, 7.25, BOX_Y + 0.27, "$o_t$", color=GATE_COLORS["o"])
    _dot(ax, tx, TOP)
    _flow(ax, [(tx, TOP), (tx, 3.6 + BOX_H / 2)])
    _layer(ax, tx, 3.6, "tanh", face=OP_FACE, edge=OP_EDGE, width=0.85, size=13)
    _flow(ax, [(tx, 3.6 - BOX_H / 2), (tx, BOX_Y + RADIUS)])
    _op(ax, tx, BOX_Y, "×")
    _flow(ax, [(tx, BOX_Y - RADIUS), (tx, H_Y), (RIGHT, H_Y)])
    _label(ax, RIGHT + 0.3, H_Y, "$h_t$", ha="left", size=17)
    _flow(ax, [(up, H_Y), (up, 6.35)])
    _dot(ax, up, H_Y)
    _label(ax, up, 6.65, "$h_t$  (output[t])", size=15)


def _draw_gru(ax) -> None:
    _frame(ax, 0.55, 0.05, 10.35, 5.7, "unrolled.GRUCell  /  torch.nn.GRUCell")
    zx, rx, hnx, inx, px, tx, ox = 2.0, 3.2, 4.75, 6.75, 6.75, 8.25, 9.45
    mid = 3.3  # the row where the candidate n is assembled
    zrow = 4.15  # the row that carries z to the right
    # The hidden state along the top: h_{t-1} -> x z -> + (1 - z) n -> h_t.
    _flow(ax, [(-0.2, TOP), (zx - RADIUS, TOP)])
    _label(ax, -0.5, TOP, "$h_{t-1}$", ha="right", size=17)
    _op(ax, zx, TOP, "×")
    _flow(ax, [(zx + RADIUS, TOP), (ox - RADIUS, TOP)])
    _label(ax, 5.6, TOP + 0.28, r"$z_t \odot h_{t-1}$", size=13)
    _op(ax, ox, TOP, "+")
    _flow(ax, [(ox + RADIUS, TOP), (RIGHT, TOP)])
    _label(ax, RIGHT + 0.3, TOP, "$h_t$", ha="left", size=17)
    up = 10.0
    _flow(ax, [(up, TOP + 0.1), (up, 6.35)])
    _dot(ax, up, TOP)
    _label(ax, up, 6.65, "$h_t$  (output[t])", size=15)
    # h_{t-1} also goes down to the gates.
    _dot(ax, 0.9, TOP)
    _flow(ax, [(0.9, TOP), (0.9, H_Y)], arrow=False)
    _inputs(ax, H_Y, X_Y, 0.9, 1.4, inx, hnx, taps_both=(zx, rx), taps_h=(hnx,), taps_x=(inx,))
    _layer(ax, zx, BOX_Y, "σ", edge=GATE_COLORS["z"])
    _layer(ax, rx, BOX_Y, "σ", edge=GATE_COLORS["r"])
    linear = dict(face=LINEAR_FACE, edge="#888888", width=1.8, size=12)
    _layer(ax, hnx, BOX_Y, r"$W_{hn}h_{t-1}{+}b_{hn}$", **linear)
    _layer(ax, inx, BOX_Y, r"$W_{in}x_t{+}b_{in}$", **linear)
    top = BOX_Y + BOX_H / 2
    # z: up to the top row (z * h), and along zrow to 1 - z, then times n.
    _flow(ax, [(zx, top), (zx, TOP - RADIUS)], color=GATE_COLORS["z"])
    _label(ax, zx - 0.12, 3.1, "$z_t$", color=GATE_COLORS["z"], ha="right")
    _dot(ax, zx, zrow, color=GATE_COLORS["z"])
    _flow(ax, [(zx, zrow), (tx - RADIUS, zrow)], color=GATE_COLORS["z"])
    _op(ax, tx, zrow, "1−", size=12)
    _flow(ax, [(tx + RADIUS, zrow), (ox - RADIUS, zrow)], color=GATE_COLORS["z"])
    _op(ax, ox, zrow, "×")
    _flow(ax, [(ox, zrow + RADIUS), (ox, TOP - RADIUS)])
    # r: multiplies W_hn h + b_hn (torch's placement), then + W_in x + b_in, then tanh.
    _flow(ax, [(rx, top), (rx, mid), (hnx - RADIUS, mid)], color=GATE_COLORS["r"])
    _label(ax, rx + 0.12, 3.05, "$r_t$", color=GATE_COLORS["r"], ha="left")
    _flow(ax, [(hnx, top), (hnx, mid - RADIUS)], color="#666666")
    _op(ax, hnx, mid, "×")
    _flow(ax, [(hnx + RADIUS, mid), (px - RADIUS, mid)])
    _flow(ax, [(inx, top), (inx, mid - RADIUS)], color="#666666")
    _op(ax, px, mid, "+")
    _flow(ax, [(px + RADIUS, mid), (tx - BOX_W / 2, mid)])
    _layer(ax, tx, mid, "tanh", edge=GATE_COLORS["n"])
    _flow(ax, [(tx + BOX_W / 2, mid), (ox, mid), (ox, zrow - RADIUS)], color=GATE_COLORS["n"])
    _label(ax, ox + 0.12, mid - 0.3, "$n_t$", color=GATE_COLORS["n"], ha="left")


EQUATIONS = {
    "lstm": [
        r"$i_t = \sigma(W_{ii}x_t + b_{ii} + W_{hi}h_{t-1} + b_{hi})$     input gate",
        r"$f_t = \sigma(W_{if}x_t + b_{if} + W_{hf}h_{t-1} + b_{hf})$     forget gate",
        r"$g_t = \tanh(W_{ig}x_t + b_{ig} + W_{hg}h_{t-1} + b_{hg})$     candidate",
        r"$o_t = \sigma(W_{io}x_t + b_{io} + W_{ho}h_{t-1} + b_{ho})$     output gate",
        r"$c_t = f_t \odot c_{t-1} + i_t \odot g_t \qquad h_t = o_t \odot \tanh(c_t)$",
    ],
    "gru": [
        r"$r_t = \sigma(W_{ir}x_t + b_{ir} + W_{hr}h_{t-1} + b_{hr})$     reset gate",
        r"$z_t = \sigma(W_{iz}x_t + b_{iz} + W_{hz}h_{t-1} + b_{hz})$     update gate",
        r"$n_t = \tanh(W_{in}x_t + b_{in} + r_t \odot (W_{hn}h_{t-1} + b_{hn}))$     candidate",
        r"$h_t = (1 - z_t) \odot n_t + z_t \odot h_{t-1}$",
    ],
}
NOTES = {
    "lstm": "weight_ih = [W_ii | W_if | W_ig | W_io] stacked by rows (gate order i, f, g, o);"
    " × in a circle: elementwise product ⊙",
    "gru": "weight_ih = [W_ir | W_iz | W_in] stacked by rows (gate order r, z, n);"
    " × in a circle: elementwise product ⊙",
}


def draw(mode: str, path: str, *, dpi: int = 100) -> None:
    """Write the diagram of one ``mode`` (``"lstm"`` or ``"gru"``) cell to ``path`` (PNG)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    equations = EQUATIONS[mode]
    x_range, y_range = (-1.55, 12.05), (-1.2, 7.0)
    width = 8.6  # inches
    diagram = width * (y_range[1] - y_range[0]) / (x_range[1] - x_range[0])  # inches
    below = 0.4 * (len(equations) + 1)  # inches of equations and the note
    fig = plt.figure(figsize=(width, diagram + below))
    share = diagram / (diagram + below)
    ax = fig.add_axes((0.0, 1.0 - share, 1.0, share))
    ax.set_xlim(*x_range)
    ax.set_ylim(*y_range)
    ax.set_aspect("equal")
    ax.axis("off")
    (_draw_lstm if mode == "lstm" else _draw_gru)(ax)
    text = fig.add_axes((0.0, 0.0, 1.0, 1.0 - share))
    text.axis("off")
    lines = len(equations) + 1
    for k, line in enumerate(equations):
        text.text(0.06, 1 - (k + 0.6) / lines, line, fontsize=14, color=INK, va="center",
                  transform=text.transAxes)  # fmt: skip
    text.text(0.06, 1 - (lines - 0.45) / lines, NOTES[mode], fontsize=9.5, color="#666666",
              va="center", transform=text.transAxes)  # fmt: skip
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.1)
    plt.close(fig)
    # A flat drawing needs few colours: a 256-colour palette makes the file ~3x smaller.
    buffer.seek(0)
    Image.open(buffer).convert("RGB").quantize(256).save(path, optimize=True)
