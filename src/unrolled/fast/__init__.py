"""The fast backend: same contract and same numbers as :func:`unrolled.reference.run`, faster.

Each layer runs both directions over the same packed step-major buffers (see :mod:`.layer`: a
PackedSequence's data as it is, a full batch as its special case), with the input part ``x @
W_ih^T + b`` hoisted out of the loop (one GEMM per direction, :func:`.layer.project`; the
native LSTM's fused engine computes it tile by tile in the loop's own pass instead), the time
loop of the plan's runner (the native C++ loops of :mod:`.native` or the same loops in torch
ops, :mod:`.loops`; chosen by :func:`unrolled.backends.plan`) and a hand-written backward per
cell family (:mod:`.rnn`, :mod:`.lstm`, :mod:`.gru`). This module is only the layer loop: it
feeds layer ``l``'s output to layer ``l+1``, applies dropout between layers on the packed rows
(the random draws torch makes on the same rows, so the masks match torch's and the
reference's), and stacks the final states in torch's row order ``l * D + d``.

Shapes in comments, throughout the fast backend: ``T`` time, ``B`` batch, ``I`` input, ``H``
hidden, ``P`` per-direction output size (``proj_size``, or ``H``), ``G`` number of gates (a
weight has ``G*H`` gate rows), ``D`` directions, ``L`` layers, ``N`` packed rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from ..regularizers import LayerMasks
from ..weights import LayerWeights
from .gru import GRULayer, gru_layer_forward
from .layer import Steps
from .lstm import LSTMLayer, lstm_layer_forward
from .masks import step_masks
from .rnn import RNNLayer, rnn_layer_forward

if TYPE_CHECKING:
    from ..backends import Plan

#: Per mode: the autograd Function (training) and the plain forward (nothing to differentiate).
LAYERS = {
    "RNN_TANH": (RNNLayer, rnn_layer_forward),
    "RNN_RELU": (RNNLayer, rnn_layer_forward),
    "LSTM": (LSTMLayer, lstm_layer_forward),
    "GRU": (GRULayer, gru_layer_forward),
}


def run(
    plan: Plan,
    inputs: Tensor,
    steps: Steps,
    hx: Tensor | tuple[Tensor, Tensor],
    weights: Sequence[LayerWeights],
    *,
    num_layers: int,
    num_directions: int,
    dropout: float = 0.0,
    training: bool = False,
    masks: Sequence[LayerMasks] | None = None,
) -> tuple[Tensor, Tensor | tuple[Tensor, Tensor]]:
    """Run a layer call with ``plan``'s loops (the plan of :func:`unrolled.backends.plan`) on
    packed step-major ``inputs (N, I)`` laid out as ``steps`` says (see :mod:`.layer`); the
    contract is otherwise :func:`unrolled.reference.run`'s, and the output is packed ``(N,
    D*P)``. Every layer's autograd Function records the plan, and its backward runs the same
    loops.

    ``weights`` come named from :func:`unrolled.backends.run`; each layer's Function takes them
    flat (autograd's inputs are positional) and names them again
    (:func:`.layer.unbatched_flat_weights`). ``masks``: the call's recurrent dropout and zoneout
    draws, one per layer-direction (:func:`unrolled.regularizers.draw_masks`), or None.
    """
    function, plain_forward = LAYERS[plan.mode]
    layers = iter(range(num_layers))
    first_plan = plan

    def one_layer(layer_input: Tensor, h0: Tensor, c0: Tensor | None, flat: list) -> list:
        layer = next(layers)
        plan = first_plan.for_layer(layer)  # the layers above the first: their own shape class
        layer_masks, extra = None, {}
        if masks is not None:
            drawn = masks[layer * num_directions : (layer + 1) * num_directions]
            hidden = h0.shape[-1] if c0 is None else c0.shape[-1]
            layer_masks = step_masks(plan.mode, drawn, steps, h0.shape[-1], hidden, layer_input)
            extra = {"masks": layer_masks}
        tensors = (layer_input, h0, c0, *flat)
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
            return function.apply(plan, num_directions, steps, layer_masks, *tensors)
        # the same outputs, without the buffers a backward would read
        *result, _ = plain_forward(plan, num_directions, steps, layer_input, h0, c0, flat, **extra)
        return result

    return stack_layers(
        plan.mode, one_layer, inputs, hx, weights, num_layers=num_layers,
        num_directions=num_directions, dropout=dropout, training=training,
    )  # fmt: skip


def stack_layers(
    mode: str,
    one_layer: Callable[[Tensor, Tensor, Tensor | None, list], Sequence[Tensor]],
    inputs: Tensor,
    hx: Tensor | tuple[Tensor, Tensor],
    weights: Sequence[LayerWeights],
    *,
    num_layers: int,
    num_directions: int,
    dropout: float = 0.0,
    training: bool = False,
) -> tuple[Tensor, Tensor | tuple[Tensor, Tensor]]:
    """Layer after layer: ``one_layer(layer input, h0 (D, B, P), c0 (D, B, H) or None, flat
    weights)`` gives ``(output, h_n[, c_n])`` of one layer (all its directions); between layers,
    dropout on the layer's output as it is laid out (packed rows, or a full batch's ``(T, B,
    X)``: the same draws); the final states stacked in torch's row order ``l * D + d``."""
    h0_all, c0_all = hx if mode == "LSTM" else (hx, None)
    layer_input = inputs
    finals_h, finals_c = [], []
    for layer in range(num_layers):
        rows = slice(layer * num_directions, (layer + 1) * num_directions)
        flat = [t for w in weights[rows] for t in w]
        h0 = h0_all[rows]  # (D, B, P)
        c0 = None if c0_all is None else c0_all[rows]  # (D, B, H)
        # (N, D*P), (D, B, P) and, for the LSTM only, (D, B, H)
        layer_input, layer_h_n, *layer_c_n = one_layer(layer_input, h0, c0, flat)
        finals_h.append(layer_h_n)
        finals_c.extend(layer_c_n)
        if dropout > 0 and training and layer < num_layers - 1:
            # On the packed rows, as torch drops out a PackedSequence's data (a full batch: the
            # same draws as on its padded (T, B, X) output).
            layer_input = F.dropout(layer_input, dropout, training=True)
    h_n = finals_h[0] if num_layers == 1 else torch.cat(finals_h)  # (L*D, B, P)
    if mode == "LSTM":
        c_n = finals_c[0] if num_layers == 1 else torch.cat(finals_c)  # (L*D, B, H)
        return layer_input, (h_n, c_n)
    return layer_input, h_n
