"""The fast backend's layer as PyTorch operators, for graphs: ``torch.compile``, ``torch.export``
and ONNX export see one operator per layer, whatever the sequence length.

An eager call runs a layer's autograd Function (:mod:`.lstm`, :mod:`.gru`, :mod:`.rnn`) with
Python in between its loops. A graph capture cannot keep that as it is: dynamo would trace
into the time loop and unroll it (T copies of the cell, a recompile for every new T). Under a
capture (:func:`unrolled.backends.plan` decides: dynamo, ``torch.export``, ``torch.jit.trace``
and so the TorchScript ONNX exporter) each layer is instead one call of an operator
registered with ``torch.library``:

``unrolled::layer(str mode, Tensor x, Tensor h0, Tensor? c0, Tensor[] weights,
int num_directions, bool has_bias, Tensor? batch_sizes) -> (Tensor output, Tensor h_n,
Tensor c_n)``
    One layer, all its directions. ``x`` is a full batch ``(T, B, I)`` (``batch_sizes`` None;
    output ``(T, B, D*P)``) or packed step-major ``(N, I)`` with its ``batch_sizes (T,)``
    (output ``(N, D*P)``). ``weights``: each direction's weights in torch's order, without the
    absent ones (``w_ih, w_hh[, b_ih, b_hh][, w_hr]``). ``c_n`` is empty but for the LSTM.
    What export and ONNX see (:mod:`unrolled.onnx` maps it to ONNX's ``RNN``/``LSTM``/``GRU``).
    Differentiable: its backward runs :data:`layer_train` again, then the BPTT.
``unrolled::layer_train(...same...) -> (output, h_n, c_n, Tensor[] saved, Tensor plan)``
    The forward of a graph that will be differentiated (``torch.compile`` with gradients): it
    also returns the buffers its backward reads and the plan it ran, as a number.
``unrolled::layer_backward(...same..., Tensor[] saved, Tensor plan, Tensor d_output, Tensor
d_h_n, Tensor d_c_n, bool[] wanted) -> (Tensor d_x, Tensor d_h0, Tensor d_c0, Tensor[]
d_weights)``
    The hand-written BPTT; an unwanted gradient is an empty tensor (``wanted``: ``x, h0, c0,
    weights``).

Inside the kernels everything is eager: the plan is made there, on the real tensors, exactly
as an eager call makes it (native or Python loops, the measured variant for the shape), and
the backward runs the loops of the plan its forward ran (the ``plan`` output carries it, as
``ctx.plan`` does in eager mode). The fake kernels give every shape from the input shapes, so
``T`` and ``B`` stay symbolic. A backward asked for a graph of its own (``create_graph=True``)
differentiates the reference instead, as the eager layers do.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..weights import LayerWeights
from .gru import gru_layer_backward, gru_layer_forward
from .layer import (
    Steps,
    Wanted,
    differentiate_the_reference,
    differentiate_the_reference_layer,
    unbatched_flat_weights,
)
from .lstm import lstm_layer_backward, lstm_layer_forward
from .rnn import rnn_layer_backward, rnn_layer_forward

CALL = (
    "str mode, Tensor x, Tensor h0, Tensor? c0, Tensor[] weights, int num_directions, "
    "bool has_bias, Tensor? batch_sizes"
)
BACKWARD_IN = (
    "Tensor[] saved, Tensor plan, Tensor d_output, Tensor d_h_n, Tensor d_c_n, bool[] wanted"
)

_PLANS: list = []  # plans by number, as the ``plan`` output names them
_NUMBERS: dict = {}


def available() -> bool:
    """Whether this torch has ``torch.library.register_fake`` and ``register_autograd`` (2.4
    and later)."""
    return hasattr(torch.library, "register_fake") and hasattr(torch.library, "register_autograd")


# ---- the kernels: plain eager code ---------------------------------------------------------


def flat_weights(weights: Sequence[Tensor], num_directions: int, has_bias: bool) -> list:
    """The operator's weights (absent ones left out) -> ``D`` times the five fields of
    :class:`LayerWeights`, None where absent (what the layer functions take)."""
    per_direction = len(weights) // num_directions
    flat = []
    for d in range(num_directions):
        own = list(weights[d * per_direction : (d + 1) * per_direction])
        w_ih, w_hh = own[:2]
        b_ih, b_hh = own[2:4] if has_bias else (None, None)
        w_hr = own[-1] if per_direction == (4 if has_bias else 2) + 1 else None
        flat.extend((w_ih, w_hh, b_ih, b_hh, w_hr))
    return flat


def present(weights: Sequence[LayerWeights]) -> list[Tensor]:
    """Layer weights -> the operator's ``weights`` argument: each direction's present ones."""
    return [t for w in weights for t in w if t is not None]


def layout(x: Tensor, batch_sizes: Tensor | None) -> tuple[Tensor, Steps]:
    """The operator's ``x`` -> packed step-major ``(N, I)`` and its :class:`Steps`."""
    if batch_sizes is None:  # a full batch (T, B, I)
        num_steps, batch = x.shape[:2]
        return x.reshape(num_steps * batch, x.shape[-1]), Steps.full(num_steps, batch, x.device)
    return x, Steps(batch_sizes, x.device)


def make_plan(mode: str, x: Tensor, weights: list[LayerWeights], num_directions: int):
    """The plan an eager call of this layer makes (never the reference: the operator is the
    fast backend)."""
    from .. import backends  # backends imports this package

    plan = backends.plan(mode, x, weights, num_directions=num_directions, operator=False)
    if plan.runner == backends.REFERENCE:
        plan = backends.python_loops_plan(mode, plan.reason)
    return plan


def number(plan) -> Tensor:
    """The plan as the ``plan`` output carries it: ``(1,)`` int64."""
    if plan not in _NUMBERS:
        _NUMBERS[plan] = len(_PLANS)
        _PLANS.append(plan)
    return torch.tensor([_NUMBERS[plan]])


def _forward(mode, x, h0, c0, weights, num_directions, has_bias, batch_sizes, keep):
    """Both forward kernels: ``(output, h_n, c_n, buffers, plan)``."""
    # Autocast reaches the ops inside an operator's kernel: the fast loops run in the
    # tensors' own dtype (a graph under autocast never holds this operator: see backends.plan).
    with torch.autocast(x.device.type, enabled=False):
        packed, steps = layout(x, batch_sizes)
        flat = flat_weights(weights, num_directions, has_bias)
        shape_of = x if batch_sizes is None else _SequencesShape(x, steps)
        plan = make_plan(
            mode, shape_of, unbatched_flat_weights(flat, num_directions), num_directions
        )
        if mode == "LSTM":
            output, h_n, c_n, buffers = lstm_layer_forward(
                plan, num_directions, steps, packed, h0, c0, flat, keep=keep
            )
        elif mode == "GRU":
            output, h_n, buffers = gru_layer_forward(
                plan, num_directions, steps, packed, h0, None, flat, keep=keep
            )
            c_n = x.new_empty(0)
        else:
            output, h_n, hs = rnn_layer_forward(plan, num_directions, steps, packed, h0, None, flat)
            c_n, buffers = x.new_empty(0), (hs,)
    if batch_sizes is None:
        output = output.view(*x.shape[:2], -1)  # (T, B, D*P)
    return output, h_n, c_n, list(buffers), plan


class _SequencesShape:
    """What :func:`unrolled.backends.plan` reads of a packed input: ``shape (T, B, I)``,
    ``dtype``, ``device``."""

    def __init__(self, x: Tensor, steps: Steps) -> None:
        self.shape = (steps.num_steps, steps.batch, x.shape[-1])
        self.dtype, self.device = x.dtype, x.device


def _layer(mode, x, h0, c0, weights, num_directions, has_bias, batch_sizes):
    output, h_n, c_n, _, _ = _forward(
        mode, x, h0, c0, weights, num_directions, has_bias, batch_sizes, keep=False
    )
    return output, h_n, c_n


def _layer_train(mode, x, h0, c0, weights, num_directions, has_bias, batch_sizes):
    output, h_n, c_n, buffers, plan = _forward(
        mode, x, h0, c0, weights, num_directions, has_bias, batch_sizes, keep=True
    )
    return output, h_n, c_n, buffers, number(plan)


BACKWARDS = {"LSTM": lstm_layer_backward, "GRU": gru_layer_backward}


def _layer_backward(
    mode, x, h0, c0, weights, num_directions, has_bias, batch_sizes,
    saved, plan, d_output, d_h_n, d_c_n, wanted,
):  # fmt: skip
    with torch.autocast(x.device.type, enabled=False):
        packed, steps = layout(x, batch_sizes)
        flat = flat_weights(weights, num_directions, has_bias)
        grads = (d_output.reshape(steps.total, -1), d_h_n, d_c_n)  # (N, D*P), (D, B, P), ...
        backward = BACKWARDS.get(mode, rnn_layer_backward)
        want = Wanted(x=wanted[0], h0=wanted[1], weights=wanted[3])
        d_x, d_h0, d_c0, weight_grads = backward(
            _PLANS[int(plan)], num_directions, steps, (packed, h0, c0, *flat), saved, grads, want
        )  # reuse=False: the saved buffers are the graph's, not ours to overwrite
    d_x = d_x.view(x.shape) if wanted[0] else x.new_empty(0)  # (one empty each: no aliasing)
    d_h0 = d_h0 if wanted[1] else x.new_empty(0)
    d_c0 = d_c0 if wanted[2] and d_c0 is not None else x.new_empty(0)
    d_weights = []
    if wanted[3]:  # the gradients of the weights present (a layer without bias computes none)
        d_flat = [g for w in weight_grads for g in w]
        d_weights = [g for t, g in zip(flat, d_flat) if t is not None]
    # An operator's outputs must not share storage with each other (d_b_ih is a view of the
    # stacked bias gradient): views get storage of their own.
    return d_x, d_h0, d_c0, [g.clone() if g._base is not None else g for g in d_weights]


# ---- the fake kernels: shapes from shapes -------------------------------------------------


def _fake_outputs(mode, x, h0, c0, weights, num_directions):
    """``output, h_n, c_n`` of a call, empty, with the kernels' shapes."""
    out_size = h0.shape[-1]
    output = x.new_empty(*x.shape[:-1], num_directions * out_size)  # (T, B, D*P) or (N, D*P)
    h_n = h0.new_empty(h0.shape)  # (D, B, P)
    c_n = c0.new_empty(c0.shape) if mode == "LSTM" else x.new_empty(0)  # (D, B, H)
    return output, h_n, c_n


def _fake_buffers(mode, x, h0, c0, batch_sizes, num_directions):
    """The buffers the backward reads, by the contract tables (:mod:`.lstm`, :mod:`.gru`,
    :mod:`.rnn`)."""
    rows = x.shape[0] * x.shape[1] if batch_sizes is None else x.shape[0]  # N
    batch = h0.shape[1]
    states = batch + rows
    d = num_directions
    if mode == "LSTM":
        hidden = c0.shape[-1]
        return [x.new_empty(d, rows, 4 * hidden), x.new_empty(d, states, hidden),
                x.new_empty(d, states, h0.shape[-1])]  # fmt: skip  # gates, cs, hs
    hidden = h0.shape[-1]
    if mode == "GRU":
        return [x.new_empty(d, rows, hidden), x.new_empty(d, rows, 3 * hidden),
                x.new_empty(d, states, hidden)]  # fmt: skip  # ns, hh, hs
    return [x.new_empty(d, states, hidden)]  # hs


def _fake_layer(mode, x, h0, c0, weights, num_directions, has_bias, batch_sizes):
    return _fake_outputs(mode, x, h0, c0, weights, num_directions)


def _fake_layer_train(mode, x, h0, c0, weights, num_directions, has_bias, batch_sizes):
    buffers = _fake_buffers(mode, x, h0, c0, batch_sizes, num_directions)
    plan = x.new_empty(1, dtype=torch.int64, device="cpu")
    return *_fake_outputs(mode, x, h0, c0, weights, num_directions), buffers, plan


def _fake_layer_backward(
    mode, x, h0, c0, weights, num_directions, has_bias, batch_sizes,
    saved, plan, d_output, d_h_n, d_c_n, wanted,
):  # fmt: skip
    return (
        x.new_empty(x.shape) if wanted[0] else x.new_empty(0),
        h0.new_empty(h0.shape) if wanted[1] else x.new_empty(0),
        c0.new_empty(c0.shape) if wanted[2] and c0 is not None else x.new_empty(0),
        [w.new_empty(w.shape) for w in weights] if wanted[3] else [],
    )


# ---- autograd --------------------------------------------------------------------------------


def _remember(ctx, inputs, buffers, plan) -> None:
    mode, x, h0, c0, weights, num_directions, has_bias, batch_sizes = inputs
    ctx.mode, ctx.num_directions, ctx.has_bias = mode, num_directions, has_bias
    ctx.num_weights, ctx.has_c0, ctx.has_batch_sizes = (
        len(weights),
        c0 is not None,
        (batch_sizes is not None),
    )
    ctx.trained = plan is not None  # the forward kept its buffers
    ctx.wanted = [
        x.requires_grad,
        h0.requires_grad,
        c0 is not None and c0.requires_grad,
        any(w.requires_grad for w in weights),
    ]
    kept = [*buffers, plan] if plan is not None else []
    ctx.save_for_backward(x, h0, c0, batch_sizes, *weights, *kept)


def _setup_layer(ctx, inputs, output) -> None:
    _remember(ctx, inputs, [], None)


def _setup_layer_train(ctx, inputs, output) -> None:
    _remember(ctx, inputs, output[3], output[4])


def _backward(ctx, d_output, d_h_n, d_c_n, *unused):
    x, h0, c0, batch_sizes, *rest = ctx.saved_tensors
    weights, kept = rest[: ctx.num_weights], rest[ctx.num_weights :]
    call = (ctx.mode, x, h0, c0, weights, ctx.num_directions, ctx.has_bias, batch_sizes)
    if differentiate_the_reference((d_output, d_h_n, d_c_n)):  # a graph of the gradient
        return _reference_grads(call, (d_output, d_h_n, d_c_n), ctx.wanted)
    if ctx.trained:
        saved, plan = kept[:-1], kept[-1]
    else:  # the inference operator kept nothing: run the forward again, keeping its buffers
        *_, saved, plan = torch.ops.unrolled.layer_train(*call)
    if d_c_n.numel() == 0 and ctx.mode == "LSTM":
        d_c_n = torch.zeros_like(c0)
    d_x, d_h0, d_c0, d_weights = torch.ops.unrolled.layer_backward(
        *call, saved, plan, d_output, d_h_n, d_c_n, ctx.wanted
    )
    x_, h0_, c0_, w_ = ctx.wanted
    return (
        None, d_x if x_ else None, d_h0 if h0_ else None, d_c0 if c0_ else None,
        list(d_weights) if w_ else None, None, None, None,
    )  # fmt: skip


def _reference_grads(call, grads, wanted) -> tuple:
    """``create_graph=True``: the gradients by autograd through the reference (as the eager
    layers do), one per operator input."""
    mode, x, h0, c0, weights, num_directions, has_bias, batch_sizes = call
    with torch.enable_grad():
        packed, steps = layout(x, batch_sizes)
        flat = flat_weights(weights, num_directions, has_bias)
        d_output = grads[0].reshape(steps.total, -1)  # (N, D*P)
        found = differentiate_the_reference_layer(
            mode, num_directions, steps, (packed, h0, c0, *flat), (d_output, *grads[1:])
        )
    d_x, d_h0, d_c0, *d_flat = found
    by_identity = {id(t): g for t, g in zip(flat, d_flat) if t is not None}
    d_weights = [by_identity[id(w)] for w in weights]
    if d_x is not None:
        d_x = d_x.view(x.shape)
    return (None, d_x, d_h0, d_c0 if wanted[2] else None,
            d_weights if wanted[3] else None, None, None, None)  # fmt: skip


# ---- registration ----------------------------------------------------------------------------

layer = layer_train = layer_backward = None
_library = None
if available():
    # Registered as plainly as torch allows: the schema, one Python kernel for every device
    # (CompositeExplicitAutograd: below autograd, the kernels call only eager ops), the fake
    # kernels and the autograd formula. (``torch.library.custom_op`` wraps each call in two
    # more Python layers, ~10 us a call: a fifth of a small layer's time under compile.)
    _library = torch.library.Library("unrolled", "FRAGMENT")
    for _name, _outputs, _kernel, _fake in (
        ("layer", "(Tensor, Tensor, Tensor)", _layer, _fake_layer),
        ("layer_train", "(Tensor, Tensor, Tensor, Tensor[], Tensor)", _layer_train,
         _fake_layer_train),
        ("layer_backward", "(Tensor, Tensor, Tensor, Tensor[])", _layer_backward,
         _fake_layer_backward),
    ):  # fmt: skip
        _inputs = f"{CALL}, {BACKWARD_IN}" if _name == "layer_backward" else CALL
        _library.define(f"{_name}({_inputs}) -> {_outputs}")
        _library.impl(_name, _kernel, "CompositeExplicitAutograd")
        torch.library.register_fake(f"unrolled::{_name}", _fake, lib=_library)
    torch.library.register_autograd(
        "unrolled::layer", _backward, setup_context=_setup_layer, lib=_library
    )
    torch.library.register_autograd(
        "unrolled::layer_train", _backward, setup_context=_setup_layer_train, lib=_library
    )
    layer = torch.ops.unrolled.layer.default
    layer_train = torch.ops.unrolled.layer_train.default
    layer_backward = torch.ops.unrolled.layer_backward.default


def run(
    mode: str,
    sequences,
    hx,
    weights: Sequence[LayerWeights],
    *,
    num_layers: int,
    num_directions: int,
    dropout: float = 0.0,
    training: bool = False,
    differentiable: bool = True,
):
    """A layer call as one operator per layer (see the module docstring): the sorted batch
    of ``sequences`` (a full batch as its ``(T, B, I)`` tensor, else packed with its
    ``batch_sizes``) -> ``(output (T, B, D*P) or (N, D*P), h_n[, c_n])``. ``differentiable``:
    the graph may be differentiated (``layer_train``, which keeps the buffers); else
    ``layer``."""
    from . import stack_layers  # this package's __init__ imports nothing of this module

    has_bias = weights[0].b_ih is not None
    if sequences.uniform:
        inputs, batch_sizes = sequences.padded(), None  # (T, B, I)
    else:
        inputs, batch_sizes = sequences.packed(), sequences.batch_sizes  # (N, I), (T,)

    def one_layer(layer_input: Tensor, h0: Tensor, c0: Tensor | None, flat: list) -> list:
        args = (mode, layer_input, h0, c0, [t for t in flat if t is not None], num_directions,
                has_bias, batch_sizes)  # fmt: skip
        tensors = (layer_input, h0, c0, *flat)
        needs_grad = any(t is not None and t.requires_grad for t in tensors)
        if differentiable and torch.is_grad_enabled() and needs_grad:
            output, h_n, c_n, _, _ = torch.ops.unrolled.layer_train(*args)
        else:
            output, h_n, c_n = torch.ops.unrolled.layer(*args)
        return [output, h_n, c_n] if mode == "LSTM" else [output, h_n]

    return stack_layers(
        mode, one_layer, inputs, hx, weights, num_layers=num_layers,
        num_directions=num_directions, dropout=dropout, training=training,
    )  # fmt: skip


__all__ = ["available", "run", "layer", "layer_train", "layer_backward"]
