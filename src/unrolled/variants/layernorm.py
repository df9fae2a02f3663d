"""Layer-normalised LSTM and GRU cells (Ba, Kiros & Hinton 2016, "Layer Normalization", sec. 3.1
and the LSTM equations of its appendix), written as :class:`unrolled.Cell` s.

``LN(a; gamma, beta) = gamma * (a - mean(a)) / sqrt(var(a) + eps) + beta``, mean and biased
variance over the last dim, as ``torch.nn.LayerNorm``. Each LN normalises *all* gates' pre-
activations of one source together (``4H`` for the LSTM, ``3H`` for the GRU), as in the paper,
not each gate on its own. The paper's extra bias ``b`` next to the two LNs' ``beta`` s is not a
separate parameter: ``beta_ih + beta_hh`` already is a free bias of every gate.

The input half of every gate does not depend on the state, so ``project`` computes
``LN(W_ih x)`` for the whole sequence before the loop.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import checks
from ..cell import Cell
from ..init import uniform_by_hidden_size_
from . import layernorm_scan


class _LayerNormCell(Cell):
    """Weights ``weight_ih (G*H, I)``, ``weight_hh (G*H, H)`` and LNs over the ``G*H`` gates."""

    num_gates: int

    def __init__(self, input_size: int, hidden_size: int, eps: float, device, dtype) -> None:
        super().__init__()
        checks.check_cell_arguments(input_size, hidden_size, True)
        factory = {"device": device, "dtype": dtype}
        self.input_size = input_size
        self.hidden_size = hidden_size
        gate_size = self.num_gates * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(gate_size, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(gate_size, hidden_size, **factory))
        self.norm_ih = nn.LayerNorm(gate_size, eps=eps, **factory)  # gamma_ih, beta_ih
        self.norm_hh = nn.LayerNorm(gate_size, eps=eps, **factory)  # gamma_hh, beta_hh
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weights ~ U(-1/sqrt(H), 1/sqrt(H)) as torch's RNNs; LN gains 1, LN biases 0."""
        uniform_by_hidden_size_((self.weight_ih, self.weight_hh), self.hidden_size)
        for norm in self.modules():
            if isinstance(norm, nn.LayerNorm):
                norm.reset_parameters()

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}"

    def project(self, x: Tensor) -> Tensor:
        return self.norm_ih(x @ self.weight_ih.T)  # (T, B, I) @ (I, G*H) -> (T, B, G*H)

    def scan_runner(self, inputs: Tensor) -> str:
        """Which loops :meth:`scan` runs on ``inputs``' dtype and device ("native loops" or
        "python loops"): what :func:`unrolled.plan` reports."""
        return layernorm_scan.runner_name(layernorm_scan.loops_for(inputs))


class LayerNormLSTM(_LayerNormCell):
    r"""LSTM cell with layer normalisation on the input and recurrent pre-activations and on the
    cell state (Ba et al. 2016), gates in torch's order ``i, f, g, o``:

    .. math::
        (i, f, g, o) &= \mathrm{LN}(W_{ih} x;\ \gamma_{ih}, \beta_{ih})
                        + \mathrm{LN}(W_{hh} h;\ \gamma_{hh}, \beta_{hh}) \\
        c' &= \sigma(f) \odot c + \sigma(i) \odot \tanh(g) \\
        h' &= \sigma(o) \odot \tanh(\mathrm{LN}(c';\ \gamma_c, \beta_c))

    The state is ``(h, c)``, both ``(B, H)``; ``c'`` is carried un-normalised (the LN only feeds
    ``h'``), as in the paper.

    Args:
        input_size: ``I``. hidden_size: ``H``. eps: the LNs' epsilon.

    Parameters: ``weight_ih (4H, I)``, ``weight_hh (4H, H)``, ``norm_ih``, ``norm_hh`` (LNs over
    ``4H``), ``norm_c`` (LN over ``H``).
    """

    num_gates = 4

    def __init__(self, input_size: int, hidden_size: int, *, eps: float = 1e-5,
                 device=None, dtype=None) -> None:  # fmt: skip
        super().__init__(input_size, hidden_size, eps, device, dtype)
        self.norm_c = nn.LayerNorm(hidden_size, eps=eps, device=device, dtype=dtype)

    def init_state(self, batch_size: int, *, dtype, device) -> tuple[Tensor, Tensor]:
        zeros = torch.zeros(batch_size, self.hidden_size, dtype=dtype, device=device)
        return zeros, zeros

    def step(self, xp_t: Tensor, state: tuple[Tensor, Tensor]):
        h, c = state
        gates = xp_t + self.norm_hh(h @ self.weight_hh.T)  # (B, H) @ (H, 4H) -> (B, 4H)
        i, f, g, o = gates.chunk(4, dim=-1)  # 4 x (B, H)
        c_next = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_next = torch.sigmoid(o) * torch.tanh(self.norm_c(c_next))  # (B, H)
        return h_next, (h_next, c_next)

    def scan(self, input_part: Tensor, state: tuple[Tensor, Tensor], *, reverse: bool,
             lengths: Tensor | None):  # fmt: skip
        """All steps of one direction (the contract of :func:`unrolled.scan.scan` minus
        ``step``): the hand-written loop and BPTT of :mod:`.layernorm_scan`."""
        return layernorm_scan.run_lstm(self, input_part, state, reverse=reverse, lengths=lengths)


class LayerNormGRU(_LayerNormCell):
    r"""GRU cell in torch's formulation with layer normalisation on the input and recurrent
    pre-activations (a GRU has no cell state to normalise), gates in torch's order ``r, z, n``:

    .. math::
        (a_r, a_z, a_n) &= \mathrm{LN}(W_{ih} x;\ \gamma_{ih}, \beta_{ih}) \\
        (b_r, b_z, b_n) &= \mathrm{LN}(W_{hh} h;\ \gamma_{hh}, \beta_{hh}) \\
        r  &= \sigma(a_r + b_r) \qquad z = \sigma(a_z + b_z) \\
        n  &= \tanh(a_n + r \odot b_n) \\
        h' &= (1 - z) \odot n + z \odot h

    ``beta_ih`` and ``beta_hh`` play torch's ``b_ih`` and ``b_hh`` (the reset gate multiplies
    ``b_n``, including its bias, as torch's ``b_hn``).

    Args:
        input_size: ``I``. hidden_size: ``H``. eps: the LNs' epsilon.

    Parameters: ``weight_ih (3H, I)``, ``weight_hh (3H, H)``, ``norm_ih``, ``norm_hh`` (over 3H).
    """

    num_gates = 3

    def __init__(self, input_size: int, hidden_size: int, *, eps: float = 1e-5,
                 device=None, dtype=None) -> None:  # fmt: skip
        super().__init__(input_size, hidden_size, eps, device, dtype)

    def step(self, xp_t: Tensor, h: Tensor):
        a_r, a_z, a_n = xp_t.chunk(3, dim=-1)  # 3 x (B, H)
        b_r, b_z, b_n = self.norm_hh(h @ self.weight_hh.T).chunk(3, dim=-1)  # 3 x (B, H)
        r = torch.sigmoid(a_r + b_r)
        z = torch.sigmoid(a_z + b_z)
        n = torch.tanh(a_n + r * b_n)
        h_next = (1 - z) * n + z * h
        return h_next, h_next

    def scan(self, input_part: Tensor, state: Tensor, *, reverse: bool,
             lengths: Tensor | None):  # fmt: skip
        """All steps of one direction, as :meth:`LayerNormLSTM.scan`."""
        return layernorm_scan.run_gru(self, input_part, state, reverse=reverse, lengths=lengths)
