"""``RNN / LSTM / GRU .step(x_t, state)``: one time step for online inference.

A unidirectional model's state after ``t`` steps is all it needs to continue, so feeding chunks
(or single steps) with the returned state equals one call on the whole sequence. ``step`` is the
low-overhead way to advance by one step: cheap shape checks only, the parameters read once per
call through the module's attributes (so parametrized, pruned or replaced weights are the ones
used), no time loop, no input-form conversion, no backend dispatch, and the cell math below
written with as few tensor ops as possible (``F.linear`` fuses the bias, ``addcmul`` and
``lerp`` fuse the gating), because at batch 1 each op costs more in dispatch than in
arithmetic. These are the equations of :mod:`unrolled.cells`, rearranged; the tests hold them
to the reference within 1e-9 in float64. With recurrent dropout or zoneout the step goes through
:func:`unrolled.stack.step_layers` with the regularised layers instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import checks, regularizers
from .stack import step_layers


def _rnn_tanh_step(x, h, w_ih, w_hh, b_ih, b_hh, w_hr=None):
    return torch.tanh(F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh))  # (B, H)


def _rnn_relu_step(x, h, w_ih, w_hh, b_ih, b_hh, w_hr=None):
    return torch.relu(F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh))  # (B, H)


def _gru_step(x, h, w_ih, w_hh, b_ih, b_hh, w_hr=None):
    gi = F.linear(x, w_ih, b_ih)  # (B, 3H): x_r, x_z, x_n
    gh = F.linear(h, w_hh, b_hh)  # (B, 3H): h_r, h_z, h_n
    # One add and one sigmoid over all three gates (n's third is wasted, but one op beats two).
    r, z, _ = torch.sigmoid(gi + gh).chunk(3, dim=1)  # 3 x (B, H)
    size = h.size(1)
    n = torch.tanh(torch.addcmul(gi[:, 2 * size :], r, gh[:, 2 * size :]))  # (B, H)
    return torch.lerp(n, h, z)  # n + z (h - n) = (1 - z) n + z h


def _lstm_step(x, state, w_ih, w_hh, b_ih, b_hh, w_hr=None):
    h, c = state
    gates = F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)  # (B, 4H): i, f, g, o
    size = c.size(1)
    # One sigmoid over all four gates (g's quarter is wasted, but one op beats three).
    i, f, _, o = torch.sigmoid(gates).chunk(4, dim=1)  # 4 x (B, H)
    g = torch.tanh(gates[:, 2 * size : 3 * size])  # (B, H)
    c_next = torch.addcmul(f * c, i, g)  # f c + i g
    h_next = o * torch.tanh(c_next)  # (B, H)
    if w_hr is not None:
        h_next = F.linear(h_next, w_hr)  # (B, H) -> (B, P)
    return h_next, c_next


_STEPS = {
    "RNN_TANH": _rnn_tanh_step, "RNN_RELU": _rnn_relu_step, "GRU": _gru_step, "LSTM": _lstm_step,
}  # fmt: skip


def builtin_step(module, x_t: Tensor, hx=None):
    """``module.step``: see :meth:`unrolled.modules.RNNBase.step`."""
    x, batched = checks.check_step_input(type(module).__name__, module.bidirectional, x_t)
    if x.size(1) != module.input_size:
        raise RuntimeError(
            f"x_t.size(-1) must be equal to input_size. Expected {module.input_size}, "
            f"got {x.size(1)}"
        )
    # Through the attributes: parametrized, pruned or replaced weights are what the module uses.
    weights = [
        [getattr(module, name, None) for name in names] for names in _step_weight_names(module)
    ]
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

    if not module._custom_step():
        step = _STEPS[module.mode]
        output, finals = x, []
        for layer in range(num_layers):
            state = step(output, initial[layer], *weights[layer])
            output = state[0] if lstm else state  # (B, P)
            finals.append(state)
            if module.dropout > 0 and module.training and layer < num_layers - 1:
                output = F.dropout(output, module.dropout, training=True)
    else:
        if module.training and module.recurrent_dropout > 0:
            raise RuntimeError(
                "step() in training mode with recurrent_dropout > 0 would draw a new mask at "
                "every step, but the mask belongs to the whole sequence: use forward() to train"
            )
        layers = regularizers.make_layers(
            module.mode, weights, batch, x,
            recurrent_dropout=0.0, zoneout=module._zoneout_rates, training=module.training,
        )  # fmt: skip
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


def _step_weight_names(module) -> list[tuple[str, ...]]:
    """Per layer, the forward direction's parameter names (absent ones read as None); cached,
    since the configuration that decides them never changes."""
    names = module.__dict__.get("_step_names")
    if names is None:
        kinds = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
        names = [tuple(f"{kind}_l{layer}" for kind in kinds) for layer in range(module.num_layers)]
        module.__dict__["_step_names"] = names
    return names


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
    if module.mode == "LSTM":
        expected_c = (module.num_layers, batch, module.hidden_size)
        states = [("state[0]", hx[0], expected_h), ("state[1]", hx[1], expected_c)]
    else:
        states = [("state", hx, expected_h)]
    for name, state, expected in states:
        if tuple(state.shape) != expected:
            raise RuntimeError(f"Expected {name} size {expected}, got {list(state.shape)}")
        if state.dtype != x.dtype:
            raise RuntimeError(f"Expected {name} dtype {x.dtype}, got {state.dtype}")
