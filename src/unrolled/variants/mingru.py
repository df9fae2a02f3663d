r"""minGRU (Feng, Tung, Ahmed, Bengio & Hajimirsadegh 2024, "Were RNNs All We Needed?").

The gates read only the input, never the state, so the recurrence is *linear* in ``h``::

    h_t = a_t * h_{t-1} + b_t      with  a_t = 1 - z_t,  b_t = z_t * g(\tilde h_t)

and all ``T`` steps can be computed at once: ``h_t = P_t h_0 + S_t`` with the decay
``P_t = prod_{s<=t} a_s`` and the inputs' share ``S_t = sum_{s<=t} (prod_{s<r<=t} a_r) b_s``.
``g(v) = v + 1/2 (v >= 0), sigmoid(v) (v < 0)`` is the paper's positive candidate activation, used
by both paths, so both compute exactly the paper's log-space-compatible minGRU.

Two parallel algorithms (``MinGRU(scan=...)``), both numerically stable:

* ``"logcumsumexp"``: the paper's log-space scan (after Heinsen 2023)::

      log a_t = -softplus(k_t)                       # log(1 - sigmoid(k_t))
      log b_t = log a_t + k_t + log g(\tilde h_t)    # log sigmoid(k) = log(1 - sigmoid(k)) + k
      A_t     = sum_{s<=t} log a_s                   # log P_t <= 0
      S_t     = exp(A_t + logcumsumexp_{s<=t}(log b_s - A_s))

  Nothing overflows; in float32 ``S_t`` loses relative precision ``~ eps |A_t|`` when the gates
  stay shut for long (``A_t`` in the thousands).
* ``"doubling"`` (default): a Hillis-Steele scan over the pairs ``(a_t, b_t)``, ``a_t`` computed
  as ``sigmoid(-k_t)`` (no ``1 - z`` cancellation). Each of the ``log2 T`` rounds composes
  ``(a2, b2) o (a1, b1) = (a2 a1, a2 b1 + b2)``: products of factors in ``(0, 1]`` and sums of
  positive terms, so it neither overflows nor cancels and needs no division by a tiny ``P_t``
  (the instability that the paper's log space exists to avoid). It is the default because
  ``torch.logcumsumexp`` is slow on CPU: measured (``benchmarks/custom_cells_speed.py``), the
  logcumsumexp scan's forward is no faster than stepping, the doubling scan's is.

The ``h_0`` term stays outside any logarithm, so unlike the paper's listing (which takes
``log h_0``) the initial state may have any sign. The sequential path computes
``h_t = (1 - z_t) h_{t-1} + z_t g(\tilde h_t)`` step by step; in float64 all three agree to
~1e-13.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import checks
from ..cell import Cell
from ..init import uniform_by_hidden_size_
from ..recurrent import Recurrent
from . import mingru_choice


def g(x: Tensor) -> Tensor:
    """The paper's positive activation for the candidate: ``x + 1/2`` for ``x >= 0``, else
    ``sigmoid(x)`` (continuous at 0, ``> 0`` everywhere)."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def log_g(x: Tensor) -> Tensor:
    """``log g(x)`` computed stably (``log sigmoid`` for ``x < 0``); ``relu`` keeps the unused
    branch of ``where`` finite, so its gradient is 0, not nan."""
    return torch.where(x >= 0, torch.log(torch.relu(x) + 0.5), F.logsigmoid(x))


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
        uniform_by_hidden_size_(self.parameters(), self.hidden_size)

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


def _logcumsumexp_scan(k: Tensor, candidate: Tensor) -> tuple[Tensor, Tensor]:
    """The paper's log-space scan: ``(log prod a, sum of decayed b)`` via ``logcumsumexp``."""
    log_a = -F.softplus(k)  # log(1 - z)
    log_b = log_a + k + log_g(candidate)  # log(z g(h~)), as log z = log(1 - z) + k
    log_a_prefix = torch.cumsum(log_a, dim=0)  # (T, B, H): log prod_{s<=t} a_s
    log_sum = torch.logcumsumexp(log_b - log_a_prefix, dim=0)  # (T, B, H)
    return torch.exp(log_a_prefix), torch.exp(log_a_prefix + log_sum)


def _doubling_scan(k: Tensor, candidate: Tensor) -> tuple[Tensor, Tensor]:
    """Hillis-Steele scan: after the round with offset ``d``, ``(a_t, b_t)`` summarise steps
    ``(t - 2d, t]`` as one step ``x -> a_t x + b_t``; ``log2 T`` rounds of two whole-tensor ops."""
    a = torch.sigmoid(-k)  # 1 - z, without the cancellation of 1 - sigmoid(k)
    b = torch.sigmoid(k) * g(candidate)  # z g(h~) > 0
    offset, num_steps = 1, k.size(0)
    while offset < num_steps:
        # (a2, b2) after (a1, b1) is (a2 a1, a2 b1 + b2): positive terms, weights in (0, 1].
        b = torch.cat([b[:offset], torch.addcmul(b[offset:], a[offset:], b[:-offset])])  # (T,B,H)
        a = torch.cat([a[:offset], a[offset:] * a[:-offset]])  # (T, B, H)
        offset *= 2
    return a, b


#: The two whole-sequence scans; both compute ``(prod_{s<=t} a_s, sum_{s<=t} (prod_{s<r<=t}
#: a_r) b_s)`` for every ``t``.
SCANS = {"doubling": _doubling_scan, "logcumsumexp": _logcumsumexp_scan}


def parallel_scan(
    projected: Tensor, h0: Tensor, lengths: Tensor | None, method: str = "doubling"
) -> tuple[Tensor, Tensor]:
    """All steps of one forward direction at once (see the module docstring).

    Args:
        projected: ``(T, B, 2H)``, :meth:`MinGRUCell.project` of the input.
        h0: ``(B, H)``. lengths: ``(B,)`` or None. method: a key of :data:`SCANS`.

    Returns:
        ``(h (T, B, H), h_n (B, H))``; ``h`` is zero past each length and ``h_n`` is taken at
        each sequence's last valid step.
    """
    k, candidate = projected.chunk(2, dim=-1)  # 2 x (T, B, H)
    decay, inputs_share = SCANS[method](k, candidate)  # 2 x (T, B, H)
    h = torch.addcmul(inputs_share, decay, h0)  # + h0's decayed share, h0 of any sign
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

    def __init__(self, cell: MinGRUCell, method: str) -> None:
        self.cell = cell
        self.method = method

    def project(self, inputs: Tensor) -> Tensor:
        return self.cell.project(inputs)

    def scan(self, projected: Tensor, state: Tensor, *, reverse: bool, lengths: Tensor | None):
        if not reverse:
            return parallel_scan(projected, state, lengths, self.method)
        # In reverse each sequence starts at its own last valid step: reverse the valid steps,
        # run forward, and put the outputs back in place.
        h, h_n = parallel_scan(_reverse_each(projected, lengths), state, lengths, self.method)
        return _reverse_each(h, lengths), h_n


class MinGRU(Recurrent):
    """Multi-layer, optionally bidirectional minGRU (equations in :class:`MinGRUCell`).

    ``MinGRU(input_size, hidden_size, num_layers=1, bidirectional=False, batch_first=False, *,
    bias=True, dropout=0.0, scan="doubling")``; ``scan`` picks the parallel algorithm
    (``"doubling"`` or the paper's ``"logcumsumexp"``, see the module docstring). Inputs, states
    and outputs as :class:`unrolled.Recurrent` (and so as ``torch.nn.GRU``): ``hx`` is
    ``(L*D, B, H)``; ``PackedSequence`` and ``lengths=`` work in both modes. The cells are
    ``self.cells[l * D + d]``.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bidirectional: bool = False, batch_first: bool = False, *, bias: bool = True,
                 dropout: float = 0.0, scan: str = "doubling", device=None,
                 dtype=None) -> None:  # fmt: skip
        if scan not in SCANS:
            raise ValueError(f"scan must be one of {sorted(SCANS)}, got scan={scan!r}")
        self.scan_method = scan

        def make_cell(layer_input_size: int) -> MinGRUCell:
            return MinGRUCell(layer_input_size, hidden_size, bias, device=device, dtype=dtype)

        super().__init__(make_cell, input_size, num_layers, bidirectional, batch_first, dropout)

    def _records(self, inputs: Tensor) -> bool:
        """Whether autograd records a call on ``inputs`` (a training step)."""
        return torch.is_grad_enabled() and (
            inputs.requires_grad or any(p.requires_grad for p in self.parameters())
        )

    def parallel_for(self, input) -> bool:
        """Whether ``self(input)`` (``parallel=None``) runs the parallel scan: what
        :func:`unrolled.plan` reports. ``input`` as :meth:`forward` takes it."""
        return self.parallel_choice(input)[0]

    def parallel_choice(self, input) -> tuple[bool, str]:
        """``(parallel_for(input), the measurement behind it or "")``."""
        data = input.data if hasattr(input, "batch_sizes") else input
        if hasattr(input, "batch_sizes"):
            steps, batch = len(input.batch_sizes), int(input.batch_sizes[0])
        elif data.dim() == 2:  # unbatched (T, I)
            steps, batch = data.shape[0], 1
        else:
            steps, batch = (data.shape[1], data.shape[0]) if self.batch_first else data.shape[:2]
        return self._parallel(data, steps, batch)

    def _parallel(self, like: Tensor, steps: int, batch: int) -> tuple[bool, str]:
        """A training step over more than one step: the parallel scan or the captured steps,
        whichever :mod:`.mingru_choice` measured faster here; stepping otherwise."""
        if not (self._records(like) and steps > 1):
            return False, ""
        return mingru_choice.parallel_wins(self, like, steps, batch)

    def forward(self, input, hx=None, *, parallel: bool | None = None, lengths=None):
        """Run the layers.

        Args:
            input, hx, lengths: as :meth:`unrolled.Recurrent.forward`.
            parallel: True: the parallel scan over time (``self.scan_method``). False: one step
                at a time, as online inference does. None: in a training step (autograd
                records, more than one step) whichever of the two was measured faster for the
                shape class on this machine (:mod:`.mingru_choice`; the parallel scan without
                measuring), one step at a time otherwise (under ``no_grad`` on CPU stepping is
                the faster one for wide layers: ``benchmarks/custom_cells_speed.py``).

        Returns:
            ``(output, h_n)`` as ``torch.nn.GRU``'s.
        """
        if parallel is not None and not isinstance(parallel, bool):
            raise TypeError(f"parallel must be a bool or None, got {type(parallel).__name__}")

        def choose_cells(inputs: Tensor):
            use_parallel = parallel
            if parallel is None:
                use_parallel = self._parallel(inputs, inputs.size(0), inputs.size(1))[0]
            if not use_parallel:
                return self.cells
            return [ParallelMinGRU(c, self.scan_method) for c in self.cells]

        return self._run(input, hx, lengths, choose_cells)
