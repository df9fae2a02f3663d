"""Draw a :class:`unrolled.tools.explain.Trace`: the unrolled network and its hidden states over
time.

Top: one box per cell application (time step x layer x direction), the state arrows between
them (forward rightwards, reverse leftwards), the inputs feeding in from below, the two
directions' states concatenated into ``output[:, t]``, and where each row of ``h_n`` leaves the
network. Bottom: a heatmap of every layer-direction's hidden state ``h'`` over time.

Needs matplotlib (``pip install 'unrolled[plot]'``); uses the Agg backend, so no display.
"""

from __future__ import annotations

import io

import matplotlib
from PIL import Image  # installed with matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

from .. import modes  # noqa: E402
from .explain import DIRECTION_NAMES, Trace  # noqa: E402

COLORS = ("#3b75af", "#e07b39")  # forward blue, reverse orange
FILLS = ("#d6e6f5", "#fbe3d2")
INK = "#333333"
FEED = "#9a9a9a"  # lines that carry an input upwards (drawn behind the state arrows)
COLUMN = 2.4  # horizontal distance between time steps
CELL_W, CELL_H = 1.35, 0.62
#: How the Elman RNN's nonlinearities are written in the picture.
NONLINEARITY_NAMES = {"tanh": "tanh", "relu": "ReLU"}


def _cell_label(mode_name: str) -> str:
    """The name in each cell's box: ``tanh RNN``, ``ReLU RNN``, ``LSTM``, ``GRU``."""
    mode = modes.of(mode_name)
    if mode.nonlinearity is None:
        return mode.name
    return f"{NONLINEARITY_NAMES[mode.nonlinearity]} {mode.torch_class}"


def _title_label(mode_name: str) -> str:
    """The name in the title: ``RNN (tanh)``, ``RNN (ReLU)``, ``LSTM``, ``GRU``."""
    mode = modes.of(mode_name)
    if mode.nonlinearity is None:
        return mode.name
    return f"{mode.torch_class} ({NONLINEARITY_NAMES[mode.nonlinearity]})"


def _box(ax, x, y, text, *, face, edge, width=CELL_W, height=CELL_H, size=9, weight="normal"):
    ax.add_patch(
        FancyBboxPatch(
            (x - width / 2, y - height / 2), width, height,
            boxstyle="round,pad=0.02,rounding_size=0.12", facecolor=face, edgecolor=edge,
            linewidth=1.4, zorder=3,
        )
    )  # fmt: skip
    ax.text(x, y, text, ha="center", va="center", fontsize=size, color=INK, zorder=4,
            weight=weight)  # fmt: skip


def _arrow(ax, start, end, *, color=INK, width=1.4, zorder=2, style="-|>", rad=0.0):
    ax.add_patch(
        FancyArrowPatch(
            start, end, arrowstyle=style, mutation_scale=11, color=color, linewidth=width,
            zorder=zorder, shrinkA=0, shrinkB=0, connectionstyle=f"arc3,rad={rad}",
        )
    )  # fmt: skip


def _layout(result: Trace) -> dict:
    """y coordinate of every row of the picture, bottom to top."""
    config = result.config
    rows = {"input": 0.0}
    y = 1.45
    for layer in range(config.layers):
        for direction in range(config.directions):
            rows[(layer, direction)] = y
            y += 1.2
        if config.directions == 2 or layer == config.layers - 1:
            rows[("concat", layer)] = y
            y += 1.3
        else:
            y += 0.1
    rows["top"] = y
    return rows


def _draw_network(ax, result: Trace) -> None:
    config = result.config
    T, D, L, P = config.steps, config.directions, config.layers, config.out_size
    rows = _layout(result)
    mode = _cell_label(config.mode)
    lstm = modes.of(config.mode).has_cell_state
    state = "h, c" if lstm else "h"
    left, right = -COLUMN * 0.78, (T - 1) * COLUMN + COLUMN * 0.78

    for t in range(T):
        x = t * COLUMN
        _box(ax, x, rows["input"], f"x$_{{{t}}}$\ninput[:, {t}]", face="#eeeeee", edge="#888888")
    for layer in range(L):
        for direction in range(D):
            y = rows[(layer, direction)]
            row = layer * D + direction
            sign = -1 if direction else 1  # which way the state flows
            suffix = (
                (f"\n← layer {layer}" if direction else f"\nlayer {layer} →")
                if D == 2
                else f"\nlayer {layer}"
            )
            for step in result.of(layer, direction):
                x = step.t * COLUMN
                label = f"{mode}{suffix}\nstep {step.order + 1}"
                _box(ax, x, y, label, face=FILLS[direction], edge=COLORS[direction], size=8)
                if step.order < T - 1:  # the state moves on to the next step read
                    start = (x + sign * CELL_W / 2, y)
                    end = (x + sign * (COLUMN - CELL_W / 2), y)
                    _arrow(ax, start, end, color=COLORS[direction], width=2.0)
                    ax.text((start[0] + end[0]) / 2, y + 0.1, state, ha="center", va="bottom",
                            fontsize=8, color=COLORS[direction])  # fmt: skip
            # The initial state enters at the first step read, h_n leaves after the last.
            first_x, last_x = (right, left) if direction else (left, right)
            edge_of_first = (T - 1) * COLUMN + CELL_W / 2 if direction else -CELL_W / 2
            edge_of_last = -CELL_W / 2 if direction else (T - 1) * COLUMN + CELL_W / 2
            start_text = f"h$_0$[{row}]=0" + (f"\nc$_0$[{row}]=0" if lstm else "\n(zeros)")
            _box(ax, first_x, y, start_text, face="white", edge="#aaaaaa", width=1.0, size=8)
            _arrow(ax, (first_x - sign * 0.5, y), (edge_of_first, y), color="#aaaaaa")
            end_text = f"h_n[{row}]" + (f"\nc_n[{row}]" if lstm else "")
            _box(ax, last_x, y, end_text, face="white", edge=COLORS[direction], width=1.0,
                 size=9, weight="bold")  # fmt: skip
            _arrow(ax, (edge_of_last, y), (last_x + sign * 0.5, y), color=COLORS[direction],
                   width=2.0)  # fmt: skip

        # What each cell of this layer reads: the input, or the layer below's concatenation.
        # Lines to the reverse row go round the forward cell on the right (crossing its state
        # arrow), lines from the forward row to the concatenation go round on the left.
        if layer == 0:
            below = rows["input"] + 0.42
        elif ("concat", layer - 1) in rows:
            below = rows[("concat", layer - 1)] + 0.25
        else:  # one direction: the layer below's h' goes straight up
            below = rows[(layer - 1, 0)] + CELL_H / 2
        for t in range(T):
            x = t * COLUMN
            forward_bottom = rows[(layer, 0)] - CELL_H / 2
            _arrow(ax, (x, below), (x, forward_bottom), color=FEED, width=1.1, zorder=1)
            if D == 2:
                reverse_bottom = rows[(layer, 1)] - CELL_H / 2
                route = [
                    (x + 0.3, below),
                    (x + 0.95, below + 0.3),
                    (x + 0.95, reverse_bottom - 0.2),
                ]
                _route(ax, route, (x + 0.35, reverse_bottom), FEED, 1.1)

        if ("concat", layer) in rows:
            y = rows[("concat", layer)]
            last_layer = layer == L - 1
            name = "output" if last_layer else f"layer {layer}\noutput =\nlayer {layer + 1}\ninput"
            ax.text(left, y, name + "\n[:, t]" * last_layer, ha="center", va="center",
                    fontsize=8.5, color=INK, weight="bold" if last_layer else "normal")  # fmt: skip
            for t in range(T):
                x = t * COLUMN
                if D == 2:
                    _concat(ax, x, y, P)
                    top = rows[(layer, 1)] + CELL_H / 2
                    _arrow(ax, (x + 0.34, top), (x + 0.34, y - 0.25), color=COLORS[1], width=1.1)
                    forward_top = rows[(layer, 0)] + CELL_H / 2
                    route = [(x - 0.3, forward_top), (x - 0.95, forward_top + 0.3), (x - 0.95, y)]
                    _route(ax, route, (x - CELL_W / 2, y), COLORS[0], 1.1)
                else:
                    _box(ax, x, y, f"h'$_{{{t}}}$", face=FILLS[0], edge=COLORS[0], width=CELL_W,
                         height=0.5, size=8)  # fmt: skip
                    top = rows[(layer, 0)] + CELL_H / 2
                    _arrow(ax, (x, top), (x, y - 0.25), color=COLORS[0], width=1.1)

    ax.set_xlim(left - 0.75, right + 0.75)
    ax.set_ylim(-0.55, rows["top"] - 0.45)
    ax.set_aspect("equal")
    ax.axis("off")


def _concat(ax, x, y, P):
    """``output[:, t]`` as two halves: forward ``[0:P]``, reverse ``[P:2P]``."""
    half = CELL_W / 2
    for direction in range(2):
        cx = x + (direction - 0.5) * half
        columns = f"{direction * P}:{(direction + 1) * P}"
        _box(ax, cx, y, columns, face=FILLS[direction], edge=COLORS[direction], width=half,
             height=0.5, size=8)  # fmt: skip


def _route(ax, points, end, color, width):
    """A line through ``points`` that ends in an arrow head at ``end``."""
    xs, ys = zip(*points)
    ax.plot(xs, ys, color=color, linewidth=width, zorder=1, solid_capstyle="round")
    _arrow(ax, points[-1], end, color=color, width=width, zorder=1)


def _draw_heatmaps(fig, grid, result: Trace) -> None:
    config = result.config
    T, D = config.steps, config.directions
    panels = [(layer, d) for layer in range(config.layers) for d in range(D)]
    sub = grid.subgridspec(1, len(panels), wspace=0.35)
    limit = max(float(s.state_out[0][0].abs().max()) for s in result.steps) or 1.0
    image = None
    for k, (layer, direction) in enumerate(panels):
        ax = fig.add_subplot(sub[0, k])
        states = [result.at(layer, direction, t).state_out[0][0] for t in range(T)]
        matrix = [[float(s[unit]) for s in states] for unit in range(states[0].numel())]
        image = ax.imshow(matrix, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
        if len(matrix) * T <= 48:
            for unit, row in enumerate(matrix):
                for t, value in enumerate(row):
                    ax.text(t, unit, f"{value:+.2f}", ha="center", va="center", fontsize=7,
                            color="white" if abs(value) > 0.6 * limit else INK)  # fmt: skip
        reading = "reads t →" if not direction else "reads ← t"
        title = f"layer {layer}" + (f" {DIRECTION_NAMES[direction]}" if D == 2 else "")
        ax.set_title(f"{title}\n({reading})", fontsize=9, color=COLORS[direction])
        ax.set_xticks(range(T))
        ax.set_xlabel("t", fontsize=8)
        ax.set_yticks(range(len(matrix)))
        ax.set_ylabel("hidden unit" if k == 0 else "", fontsize=8)
        ax.tick_params(labelsize=7)
    if image is not None:
        fig.colorbar(image, ax=fig.axes[-len(panels) :], shrink=0.8, pad=0.02)


def draw(result: Trace, path: str, dpi: int = 100) -> None:
    """Write the picture of ``result`` to ``path`` (PNG)."""
    config = result.config
    rows = _layout(result)
    width = max(7.0, 1.9 * config.steps + 3.4)
    x_units = (config.steps - 1) * COLUMN + 2 * (COLUMN * 0.78 + 0.75)
    y_units = rows["top"] + 0.1
    net_height = 0.9 * width * y_units / x_units  # the network is drawn with equal axes
    fig = plt.figure(figsize=(width, net_height + 4.2))
    grid = fig.add_gridspec(3, 1, height_ratios=[net_height, 1.25, 2.1], hspace=0.12)
    ax = fig.add_subplot(grid[0])
    _draw_network(ax, result)
    kind = _title_label(config.mode)
    shape = f"{config.layers} layer{'s' if config.layers > 1 else ''}"
    shape += ", bidirectional" if config.bidirectional else ""
    ax.set_title(
        f"{kind}, {shape}, unrolled over T={config.steps} time steps\n"
        "every box in a row is the SAME cell (same weights), applied once per time step",
        fontsize=10,
    )
    note = fig.add_subplot(grid[1])
    note.axis("off")
    note.text(0.5, 0.62, _caption(result), ha="center", va="center", fontsize=8.5, color=INK,
              linespacing=1.5, transform=note.transAxes)  # fmt: skip
    _draw_heatmaps(fig, grid[2], result)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    # A flat drawing needs few colours: a 256-colour palette makes the file ~3x smaller.
    buffer.seek(0)
    Image.open(buffer).convert("RGB").quantize(256).save(path, optimize=True)


def _caption(result: Trace) -> str:
    config = result.config
    T, P = config.steps, config.out_size
    lines = [f"Blue: the forward direction reads x$_0$ → x$_{{{T - 1}}}$."]
    if not config.bidirectional:
        lines = [f"The layer reads x$_0$ → x$_{{{T - 1}}}$, left to right."]
    if config.bidirectional:
        lines[0] += f"  Orange: the reverse direction reads x$_{{{T - 1}}}$ → x$_0$."
        lines.append(
            f"output[:, t] = [forward h' after reading t | reverse h' after reading t]"
            f"  (columns 0:{P} | {P}:{2 * P})."
        )
        lines.append(
            "h_n holds each direction's state after its LAST step: for the reverse "
            "direction that is at t = 0 (left), not at t = T-1."
        )
    else:
        lines.append("output[:, t] = h' after reading t;  h_n = the state after the last step.")
    lines.append("Below: the numbers in h' (sequence 0 of the batch) at every t, one map per row.")
    return "\n".join(lines)
