"""How far back a gradient reaches: ``||dL/dh_t||`` for every step ``t`` of a recurrence.

The loss ``L = <v, h_{T-1}>`` reads only the last state (``v`` a fixed random unit vector), so
``dL/dh_t`` is exactly what back-propagation through time carries from the end of the sequence
back to step ``t``: the product of the step Jacobians ``dh_{s+1}/dh_s`` for ``s = t .. T-2``,
applied to ``v``. For a tanh RNN each factor is ``diag(1 - h_{s+1}^2) W_hh``, so the norm shrinks
or grows roughly like ``scale^(T-1-t)`` where ``scale`` is the size of ``W_hh``'s largest
singular values; the LSTM's cell state has an additive path (``c' = f c + i g``) that the
gates can hold open, the GRU's ``h' = (1 - z) n + z h`` another.

``W_hh`` is drawn as ``scale`` times a random orthogonal matrix per gate block (all its singular
values are ``scale``), ``W_ih`` and the biases as torch initialises them; the inputs are
standard normal. Everything is float64, so the numbers measure the recurrence, not rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unrolled import modes
from unrolled.cell_modules import GRUCell, LSTMCell, RNNCell

MODES = ("rnn_tanh", "lstm", "gru")
SCALES = (0.5, 1.0, 1.5, 3.0)


@dataclass(frozen=True)
class Flow:
    mode: str  # rnn_tanh | rnn_relu | lstm | gru
    scale: float  # the singular values of each gate block of W_hh
    norms: list[float]  # ||dL/dh_t|| for t = 0 .. T-1 (the last one is ||v|| = 1)
    forget_bias: float = 0.0  # added to the LSTM's forget-gate bias

    @property
    def label(self) -> str:
        extra = f", forget bias +{self.forget_bias:g}" if self.forget_bias else ""
        return f"{self.mode}{extra}"

    def steps_back(self, k: int) -> float:
        """``||dL/dh_{T-1-k}||``: the gradient ``k`` steps before the loss."""
        return self.norms[len(self.norms) - 1 - k]


def _cell(mode: str, input_size: int, hidden: int):
    if mode == "lstm":
        return LSTMCell(input_size, hidden)
    if mode == "gru":
        return GRUCell(input_size, hidden)
    return RNNCell(input_size, hidden, nonlinearity=modes.of(modes.CLI_NAMES[mode]).nonlinearity)


def measure(
    mode: str,
    scale: float,
    *,
    steps: int = 60,
    hidden: int = 32,
    input_size: int = 8,
    batch: int = 16,
    seed: int = 0,
    forget_bias: float = 0.0,
) -> Flow:
    """``||dL/dh_t||`` (mean over the batch) for ``L = <v, h_{T-1}>``, ``t = 0 .. T-1``.
    ``forget_bias`` is added to the LSTM's forget-gate bias (``b_if``)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the cell's own W_ih and biases
    cell = _cell(mode, input_size, hidden).double()
    gates = cell.weight_hh.shape[0] // hidden
    with torch.no_grad():
        for block in range(gates):  # each gate's (H, H) block: scale x orthogonal
            q, _ = torch.linalg.qr(
                torch.randn(hidden, hidden, generator=generator, dtype=torch.float64)
            )
            cell.weight_hh[block * hidden : (block + 1) * hidden] = scale * q
        if mode == "lstm":  # gate order i, f, g, o: the forget gate's rows are [H, 2H)
            cell.bias_ih[hidden : 2 * hidden] += forget_bias
    x = torch.randn(steps, batch, input_size, generator=generator, dtype=torch.float64)  # (T, B, I)
    v = torch.randn(hidden, generator=generator, dtype=torch.float64)
    v = v / v.norm()
    h = torch.zeros(batch, hidden, dtype=torch.float64)
    state = (h, torch.zeros_like(h)) if mode == "lstm" else h
    hs = []
    for t in range(steps):
        state = cell(x[t], state)
        h = state[0] if mode == "lstm" else state
        hs.append(h)  # (B, H), kept in the graph
    loss = (hs[-1] @ v).sum()  # <v, h_{T-1}> summed over the batch
    grads = torch.autograd.grad(loss, hs)  # dL/dh_t, each (B, H)
    norms = [float(g.norm(dim=1).mean()) for g in grads]
    return Flow(mode, scale, norms, forget_bias if mode == "lstm" else 0.0)


def sweep(
    modes_: tuple[str, ...] = MODES, scales: tuple[float, ...] = SCALES, **options
) -> list[Flow]:
    """:func:`measure` for every mode and scale."""
    return [measure(mode, scale, **options) for mode in modes_ for scale in scales]


def table(flows: list[Flow], back: tuple[int, ...] = (0, 5, 10, 20, 40)) -> str:
    """A text table: one row per mode and scale, ``||dL/dh||`` at ``k`` steps before the loss."""
    back = tuple(k for k in back if k < len(flows[0].norms))
    width = max(len(f.label) for f in flows)
    header = f"{'mode':{width}} {'scale':>5}  " + "".join(f"{f'k={k}':>10}" for k in back)
    lines = [header, "-" * len(header)]
    for flow in flows:
        cells = "".join(f"{flow.steps_back(k):10.2e}" for k in back)
        lines.append(f"{flow.label:{width}} {flow.scale:5.2g}  {cells}")
    return "\n".join(lines)


def plot(flows: list[Flow], path: str) -> None:
    """One panel per mode: ``||dL/dh_{T-1-k}||`` against ``k``, log scale, a line per scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_mode = list(dict.fromkeys(f.mode for f in flows))
    figure, axes = plt.subplots(1, len(by_mode), figsize=(4.2 * len(by_mode), 3.8), sharey=True)
    axes = [axes] if len(by_mode) == 1 else list(axes)
    for ax, mode in zip(axes, by_mode):
        for flow in (f for f in flows if f.mode == mode):
            back = range(len(flow.norms))
            values = [max(flow.steps_back(k), 1e-300) for k in back]
            ax.semilogy(list(back), values, label=f"scale {flow.scale:g}", linewidth=1.8)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_title({"rnn_tanh": "tanh RNN", "rnn_relu": "ReLU RNN"}.get(mode, mode.upper()))
        ax.set_xlabel("k: steps before the loss")
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel(r"$\|dL / dh_{T-1-k}\|$")
    axes[-1].legend(fontsize=8, title="W_hh singular values", title_fontsize=8)
    figure.suptitle("How far back the gradient reaches (L reads only the last state)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
