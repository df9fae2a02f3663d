r"""minGRU (Feng, Tung, Ahmed, Bengio & Hajimirsadegh 2024, "Were RNNs All We Needed?").

The gates read only the input, never the state, so the recurrence is *linear* in ``h``::

    h_t = a_t * h_{t-1} + b_t      with  a_t = 1 - z_t,  b_t = z_t * g(\tilde h_t)

and all ``T`` steps can be computed at once. We implement the paper's log-space version: ``g``
keeps the candidate positive so that ``log b_t`` exists, and the prefix sums run in log space
with ``logcumsumexp`` (Heinsen 2023), which never overflows::

    log a_t = -softplus(k_t)                         # log(1 - sigmoid(k_t))
    log b_t = -softplus(-k_t) + log g(\tilde h_t)    # log(sigmoid(k_t)) + log g
    A_t     = sum_{s<=t} log a_s                     # log of prod_{s<=t} a_s, <= 0
    h_t     = exp(A_t) * h_0 + exp(A_t + logcumsumexp_{s<=t}(log b_s - A_s))

The ``h_0`` term is kept outside the logarithm, so unlike the paper's listing (which takes
``log h_0``) the initial state may have any sign. The sequential path computes the same
``h_t = (1 - z_t) h_{t-1} + z_t g(\tilde h_t)`` step by step; in float64 the two agree to ~1e-12.
In float32 the parallel path loses relative precision ``~ eps * |A_T|`` on long sequences whose
gates stay shut (``A_T`` large and negative); the sequential path does not.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import checks
from ..cell import Cell
from ..recurrent import Recurrent


def g(x: Tensor) -> Tensor:
    """The paper's positive activation for the candidate: ``x + 1/2`` for ``x >= 0``, else
    ``sigmoid(x)`` (continuous at 0, ``> 0`` everywhere)."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def log_g(x: Tensor) -> Tensor:
    """``log g(x)`` computed stably; ``relu`` keeps the unused branch of ``where`` finite."""
    return torch.where(x >= 0, torch.log(torch.relu(x) + 0.5), -F.softplus(-x))


class MinGRUCell(Cell):
    r"""One minGRU step, gates from the input alone:

    .. math::
        z &= \sigma(W_{iz} x + b_{iz}) \qquad \tilde h = W_{ih} x + b_{ih} \\
        h' &= (1 - z) \odot h + z \odot g(\tilde h)

    with ``g(v) = v + 1/2`` for ``v >= 0`` and ``sigmoid(v)`` otherwise. ``project`` does all
    the input work for the whole sequence in one matmul, so a step is elementwise.

    Parameters: ``weight_ih (2H, I)`` (rows ``z`` then ``h~``) and ``bias_ih (2H,)``, both
    ~ U(-1/sqrt(H), 1/sqrt(H)).
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *,
                 device=None, dtype=None) -> None:  # fmt: skip
        super().__init__()
        checks.check_cell_arguments(input_size, hidden_size, bias)
        factory = {"device": device, "dtype": dtype}
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(2 * hidden_size, input_size, **factory))
        self.bias_ih = nn.Parameter(torch.empty(2 * hidden_size, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}"

    def project(self, x: Tensor) -> Tensor:
        xw = x @ self.weight_ih.T  # (T, B, I) @ (I, 2H) -> (T, B, 2H)
        return xw if self.bias_ih is None else xw + self.bias_ih

    def step(self, xp_t: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        k, candidate = xp_t.chunk(2, dim=-1)  # 2 x (B, H)
        z = torch.sigmoid(k)
        h_next = (1 - z) * h + z * g(candidate)
        return h_next, h_next


def parallel_scan(projected: Tensor, h0: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
    """All steps of one forward direction at once, in log space (see the module docstring).

    Args:
        projected: ``(T, B, 2H)``, :meth:`MinGRUCell.project` of the input.
        h0: ``(B, H)``. lengths: ``(B,)`` or None.

    Returns:
        ``(h (T, B, H), h_n (B, H))``; ``h`` is zero past each length and ``h_n`` is taken at
        each sequence's last valid step.
    """
    k, candidate = projected.chunk(2, dim=-1)  # 2 x (T, B, H)
    log_a = -F.softplus(k)  # log(1 - z)
    log_b = -F.softplus(-k) + log_g(candidate)  # log(z * g(h~))
    log_a_prefix = torch.cumsum(log_a, dim=0)  # (T, B, H): log prod_{s<=t} a_s
    log_sum = torch.logcumsumexp(log_b - log_a_prefix, dim=0)  # (T, B, H)
    h = torch.exp(log_a_prefix) * h0 + torch.exp(log_a_prefix + log_sum)  # (T, B, H)
    if lengths is None:
        return h, h[-1]
    last = (lengths - 1).view(1, -1, 1).expand(1, *h.shape[1:])  # (1, B, H)
    h_n = h.gather(0, last)[0]  # (B, H)
    steps = torch.arange(h.size(0), device=h.device)  # (T,)
    valid = (steps[:, None] < lengths[None, :]).unsqueeze(-1)  # (T, B, 1)
    return torch.where(valid, h, torch.zeros_like(h)), h_n


def _reverse_each(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse the valid steps of every sequence of ``x (T, B, *)`` in place in time, padding
    staying at the end; its own inverse."""
    if lengths is None:
        return x.flip(0)
    steps = torch.arange(x.size(0), device=x.device)[:, None]  # (T, 1)
    source = torch.where(steps < lengths[None, :], lengths[None, :] - 1 - steps, steps)  # (T, B)
    return x.gather(0, source.view(*source.shape, 1).expand_as(x))  # (T, B, *)


class ParallelMinGRU:
    """A :class:`MinGRUCell` run by the log-space parallel scan: a ``stack`` layer with its own
    whole-sequence ``scan`` (same contract as :func:`unrolled.scan.scan`)."""

    def __init__(self, cell: MinGRUCell) -> None:
        self.cell = cell

    def project(self, inputs: Tensor) -> Tensor:
        return self.cell.project(inputs)

    def scan(self, projected: Tensor, state: Tensor, *, reverse: bool, lengths: Tensor | None):
        if not reverse:
            return parallel_scan(projected, state, lengths)
        # In reverse each sequence starts at its own last valid step: reverse the valid steps,
        # run forward, and put the outputs back in place.
        h, h_n = parallel_scan(_reverse_each(projected, lengths), state, lengths)
        return _reverse_each(h, lengths), h_n


class MinGRU(Recurrent):
    """Multi-layer, optionally bidirectional minGRU (equations in :class:`MinGRUCell`).

    ``MinGRU(input_size, hidden_size, num_layers=1, bidirectional=False, batch_first=False, *,
    bias=True, dropout=0.0)``. Inputs, states and outputs as :class:`unrolled.Recurrent` (and so
    as ``torch.nn.GRU``): ``hx`` is ``(L*D, B, H)``; ``PackedSequence`` and ``lengths=`` work in
    both modes. The cells are ``self.cells[l * D + d]``.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bidirectional: bool = False, batch_first: bool = False, *, bias: bool = True,
                 dropout: float = 0.0, device=None, dtype=None) -> None:  # fmt: skip
        def make_cell(layer_input_size: int) -> MinGRUCell:
            return MinGRUCell(layer_input_size, hidden_size, bias, device=device, dtype=dtype)

        super().__init__(make_cell, input_size, num_layers, bidirectional, batch_first, dropout)

    def forward(self, input, hx=None, *, parallel: bool | None = None, lengths=None):
        """Run the layers.

        Args:
            input, hx, lengths: as :meth:`unrolled.Recurrent.forward`.
            parallel: True: the log-space parallel scan over time (training; long sequences).
                False: one step at a time (what online inference does). None: parallel
                whenever the sequence has more than one step.

        Returns:
            ``(output, h_n)`` as ``torch.nn.GRU``'s.
        """
        if parallel is not None and not isinstance(parallel, bool):
            raise TypeError(f"parallel must be a bool or None, got {type(parallel).__name__}")

        def choose_layers(inputs: Tensor):
            use_parallel = inputs.size(0) > 1 if parallel is None else parallel
            return [ParallelMinGRU(c) for c in self.cells] if use_parallel else self.cells

        return self._run(input, hx, lengths, choose_layers)
