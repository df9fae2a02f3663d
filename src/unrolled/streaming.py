"""``RNN / LSTM / GRU .step(x_t, state)``: one time step for online inference.

A unidirectional model's state after ``t`` steps is all it needs to continue, so feeding chunks
(or single steps) with the returned state equals one call on the whole sequence. ``step`` is the
low-overhead way to advance by one step: cheap shape checks only, the weights read once, the cell
functions called directly through :func:`unrolled.stack.step_layers` (no time loop, no input-form
conversion, no backend dispatch).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import regularizers
from .reference import BuiltinLayer
from .stack import step_layers


def builtin_step(module, x_t: Tensor, hx=None):
    """``module.step``: see :meth:`unrolled.modules.RNNBase.step`."""
    if module.bidirectional:
        raise RuntimeError(
            "step() runs one time step forward; a bidirectional model needs the whole sequence "
            "(the reverse direction starts at its end): use forward()"
        )
    if not isinstance(x_t, Tensor) or x_t.dim() not in (1, 2):
        got = f"{x_t.dim()}D tensor" if isinstance(x_t, Tensor) else type(x_t).__name__
        raise ValueError(f"{type(module).__name__}.step: Expected x_t to be 1D or 2D, got {got}")
    batched = x_t.dim() == 2
    x = x_t if batched else x_t.unsqueeze(0)  # (B, I)
    if x.size(1) != module.input_size:
        raise RuntimeError(
            f"x_t.size(-1) must be equal to input_size. Expected {module.input_size}, "
            f"got {x.size(1)}"
        )
    weights = module.layer_weights()
    if x.dtype != weights[0][0].dtype:
        raise ValueError(
            f"x_t dtype ({x.dtype}) does not match weight dtype ({weights[0][0].dtype})"
        )
    lstm = module.mode == "LSTM"
    num_layers, batch = module.num_layers, x.size(0)
    if hx is None:
        hx = module._zero_state(batch, x)
    else:
        hx = _batched_state(module, hx, batched)
        _check_step_state(module, hx, batch, x)
    initial = [(hx[0][k], hx[1][k]) for k in range(num_layers)] if lstm else hx.unbind(0)

    if module._regularized():
        if module.training and module.recurrent_dropout > 0:
            raise RuntimeError(
                "step() in training mode with recurrent_dropout > 0 would draw a new mask at "
                "every step, but the mask belongs to the whole sequence: use forward() to train"
            )
        layers = regularizers.make_layers(
            module.mode, weights, batch, x,
            recurrent_dropout=0.0, zoneout=module._zoneout_rates, training=module.training,
        )  # fmt: skip
    else:
        layers = [BuiltinLayer(module.mode, w) for w in weights]
    output, finals = step_layers(
        layers, x, initial, dropout=module.dropout, training=module.training
    )  # (B, P)
    if lstm:
        new_state = (torch.stack([h for h, _ in finals]), torch.stack([c for _, c in finals]))
    else:
        new_state = torch.stack(finals)  # (L, B, H)
    if not batched:
        output = output.squeeze(0)
        new_state = tuple(s.squeeze(1) for s in new_state) if lstm else new_state.squeeze(1)
    return output, new_state


def _batched_state(module, hx, batched: bool):
    lstm = module.mode == "LSTM"
    if lstm and not (isinstance(hx, (tuple, list)) and len(hx) == 2):
        raise TypeError(f"LSTM.step expects state to be a tuple (h, c), got {type(hx).__name__}")
    if not lstm and not isinstance(hx, Tensor):
        raise TypeError(f"{type(module).__name__}.step expects state to be a Tensor")
    if batched:
        return tuple(hx) if lstm else hx
    return tuple(s.unsqueeze(1) for s in hx) if lstm else hx.unsqueeze(1)  # (L, 1, *)


def _check_step_state(module, hx, batch: int, x: Tensor) -> None:
    expected_h = (module.num_layers, batch, module.proj_size or module.hidden_size)
    states = [("state[0]", hx[0], expected_h), ("state[1]", hx[1], expected_h[:2] + (
        module.hidden_size,))] if module.mode == "LSTM" else [("state", hx, expected_h)]  # fmt: skip
    for name, state, expected in states:
        if tuple(state.shape) != expected:
            raise RuntimeError(f"Expected {name} size {expected}, got {list(state.shape)}")
        if state.dtype != x.dtype:
            raise RuntimeError(f"Expected {name} dtype {x.dtype}, got {state.dtype}")
