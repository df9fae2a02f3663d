"""The reference backend: the built-in cells (:mod:`unrolled.builtin`), looped literally by
``stack`` and ``scan``.

Autograd does the backward. Nothing here is optimised: this is what the fast backend must equal.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from .builtin import bind
from .scan import split_states, stack_states
from .stack import stack
from .weights import LayerWeights


def run(
    mode: str,
    inputs: Tensor,
    hx: Tensor | tuple[Tensor, Tensor],
    weights: Sequence[LayerWeights],
    *,
    num_layers: int,
    num_directions: int,
    dropout: float = 0.0,
    training: bool = False,
    lengths: Tensor | None = None,
    cells: Sequence | None = None,
) -> tuple[Tensor, Tensor | tuple[Tensor, Tensor]]:
    """Backend entry point shared by every backend.

    Args:
        mode: ``"RNN_TANH" | "RNN_RELU" | "LSTM" | "GRU"``.
        inputs: ``(T, B, I)``.
        hx: ``(L*D, B, H)``, or for LSTM ``(h0 (L*D, B, P), c0 (L*D, B, H))``.
        weights: ``L*D`` tuples ``(w_ih, w_hh, b_ih, b_hh, w_hr)``, row ``l*D + d``.
        lengths: ``(B,)`` int64 on the inputs' device, or None.
        cells: cells to run instead of the plain built-in ones (e.g. with zoneout), one per
            layer-direction.

    Returns:
        ``(output (T, B, D*P), h_n (L*D, B, P))``; for LSTM ``h_n`` is ``(h_n, c_n)``.
    """
    if cells is None:
        cells = bind(mode, weights)
    output, finals = stack(
        cells,
        inputs,
        split_states(tuple(hx) if mode == "LSTM" else hx, len(cells)),
        num_layers=num_layers,
        num_directions=num_directions,
        dropout=dropout,
        training=training,
        lengths=lengths,
    )
    return output, stack_states(finals)  # h_n (L*D, B, P); LSTM (h_n, c_n (L*D, B, H))
