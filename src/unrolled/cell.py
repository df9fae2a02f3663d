"""``Cell``: the protocol a user's recurrent cell follows to get the whole machinery.

Write ``step`` (and, if part of the step does not depend on the state, ``project``) and
:class:`unrolled.Recurrent` supplies the time loop, reverse direction, layers, dropout between
layers, variable lengths (padded with ``lengths=`` or a ``PackedSequence``), batch-first and
unbatched input, streaming and single-step inference.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .scan import State


class Cell(nn.Module):
    """Base class of a recurrent cell used by :class:`unrolled.Recurrent`.

    The protocol:

    * ``hidden_size`` (int): the size ``H`` of the per-step output ``output_t (B, H)``.
    * ``init_state(batch_size, *, dtype, device)``: the state at ``t = 0``; a tensor or a tuple
      of tensors, each with the batch on dim 0. Default: zeros ``(B, H)``.
    * ``project(x)``: the part of a step that does not depend on the state, applied to the whole
      sequence ``x (T, B, I)`` at once before the loop (one big matmul instead of ``T`` small
      ones). Returns ``(T, B, *)``. Default: identity.
    * ``step(xp_t, state) -> (output_t, new_state)``: one time step; ``xp_t (B, *)`` is row ``t``
      of ``project(x)``, ``state`` and ``new_state`` have ``init_state``'s structure.

    ``step`` must treat batch rows independently (the time loop freezes finished sequences by
    selecting rows), and ``project`` must treat time steps independently (single-step inference
    calls it on ``(1, B, I)``).
    """

    hidden_size: int

    def init_state(self, batch_size: int, *, dtype: torch.dtype, device: torch.device) -> State:
        return torch.zeros(batch_size, self.hidden_size, dtype=dtype, device=device)

    def project(self, x: Tensor) -> Tensor:
        return x

    def step(self, xp_t: Tensor, state: State) -> tuple[Tensor, State]:
        raise NotImplementedError(f"{type(self).__name__} must implement step(xp_t, state)")

    def forward(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        """One step on a raw input ``x_t (B, I)``: ``step(project(x_t), state)``."""
        xp_t = self.project(x_t.unsqueeze(0))[0]  # (1, B, I) -> (B, *)
        return self.step(xp_t, state)
