"""ONNX export: each ``unrolled::layer`` operator becomes ONNX's own ``RNN``, ``LSTM`` or ``GRU``.

Under a graph capture each layer of the fast backend is one operator
(:mod:`unrolled.fast.operators`); here it is written as the ONNX operator of its family, so the
file runs in any ONNX runtime at any sequence length:

- the TorchScript exporter (``torch.onnx.export(..., dynamo=False, dynamic_axes=...)``) finds
  the symbolic registered by :func:`register` (done for you when an export traces a layer);
- the dynamo exporter (``torch.onnx.export(..., dynamo=True, dynamic_shapes=...)``) takes
  :func:`translation_table` as its ``custom_translation_table``.

The mapping, from torch's formulation to ONNX's (the equations are the same; only the layout
differs): the gate blocks are reordered, LSTM ``(i, f, g, o)`` -> ONNX ``(i, o, f, c)``, GRU
``(r, z, n)`` -> ONNX ``(z, r, h)``; the GRU runs with ``linear_before_reset=1`` (torch applies
the reset gate to ``W_hn h + b_hn``); directions are stacked on a leading axis; the biases
``[b_ih, b_hh]`` are ONNX's ``[Wb, Rb]``; ONNX's ``Y (T, D, B, H)`` becomes torch's ``(T, B,
D*H)``. What ONNX cannot express: the LSTM's projection (``proj_size``: ONNX's LSTM has none,
as torch's own exporter also says), and the packed batch of ``lengths=`` / a
``PackedSequence`` (export padded full-length batches).
"""

from __future__ import annotations

import torch

#: Gate blocks in ONNX's order, as indices of torch's blocks.
ONNX_GATE_ORDER = {"LSTM": (0, 3, 1, 2), "GRU": (1, 0, 2), "RNN_TANH": (0,), "RNN_RELU": (0,)}
ONNX_OPERATOR = {"LSTM": "LSTM", "GRU": "GRU", "RNN_TANH": "RNN", "RNN_RELU": "RNN"}
ACTIVATION = {"RNN_TANH": "Tanh", "RNN_RELU": "Relu"}
OPSET = 14
_registered = False


class NotExpressible(RuntimeError):
    """A layer ONNX's recurrent operators cannot express."""


def check_expressible(mode: str, num_weights: int, num_directions: int, has_bias: bool,
                      packed: bool) -> None:  # fmt: skip
    """Raise :class:`NotExpressible` for what ONNX's operators have no field for."""
    if packed:
        raise NotExpressible(
            "ONNX export of unrolled layers takes padded full-length input: a PackedSequence "
            "or lengths= packs the batch, which ONNX's RNN/LSTM/GRU cannot take"
        )
    if num_weights // num_directions > (4 if has_bias else 2):
        raise NotExpressible(
            f"ONNX's LSTM has no projection: an {mode} with proj_size > 0 cannot be exported "
            "to ONNX's LSTM operator (nor can torch.nn.LSTM's)"
        )


def register(opset: int = OPSET) -> None:
    """Register the TorchScript exporter's symbolic for ``unrolled::layer`` (once)."""
    global _registered
    if not _registered:
        torch.onnx.register_custom_op_symbolic("unrolled::layer", _symbolic, opset)
        _registered = True


def _symbolic(g, mode, x, h0, c0, weights, num_directions, has_bias, batch_sizes):
    """TorchScript exporter: one ``unrolled::layer`` node -> one ONNX recurrent node."""
    from torch.onnx import symbolic_helper as helper

    mode = helper._parse_arg(mode, "s")
    num_directions = helper._parse_arg(num_directions, "i")
    has_bias = helper._parse_arg(has_bias, "b")
    weights = helper._unpack_list(weights)
    check_expressible(
        mode, len(weights), num_directions, has_bias, not helper._is_none(batch_sizes)
    )
    per_direction = len(weights) // num_directions
    hidden = helper._get_tensor_sizes(weights[1])[1]  # W_hh (G*H, H)
    order = ONNX_GATE_ORDER[mode]

    def reordered(w):  # torch's gate blocks -> ONNX's, with a leading direction axis
        blocks = [
            helper._slice_helper(g, w, axes=[0], starts=[k * hidden], ends=[(k + 1) * hidden])
            for k in order
        ]
        joined = blocks[0] if len(blocks) == 1 else g.op("Concat", *blocks, axis_i=0)
        return g.op("Unsqueeze", joined, g.op("Constant", value_t=torch.tensor([0])))

    def stacked(k):  # the k-th weight of every direction, (D, G*H, X)
        parts = [reordered(weights[d * per_direction + k]) for d in range(num_directions)]
        return parts[0] if num_directions == 1 else g.op("Concat", *parts, axis_i=0)

    inputs = [x, stacked(0), stacked(1)]
    if has_bias:  # ONNX's B is [Wb, Rb] per direction: (D, 2*G*H)
        inputs.append(g.op("Concat", stacked(2), stacked(3), axis_i=1))
    else:
        inputs.append(_missing(g))
    inputs += [_missing(g), h0]  # sequence_lens: every sequence runs all T steps
    attributes = {
        "hidden_size_i": hidden,
        "direction_s": "bidirectional" if num_directions == 2 else "forward",
    }
    if mode == "LSTM":
        inputs.append(c0)
    elif mode == "GRU":
        attributes["linear_before_reset_i"] = 1
    else:
        attributes["activations_s"] = [ACTIVATION[mode]] * num_directions
    outputs = 3 if mode == "LSTM" else 2
    results = g.op(ONNX_OPERATOR[mode], *inputs, outputs=outputs, **attributes)
    y, h_n = results[0], results[1]
    # Y (T, D, B, H) -> (T, B, D, H) -> (T, B, D*H)
    y = g.op("Transpose", y, perm_i=[0, 2, 1, 3])
    y = g.op("Reshape", y, g.op("Constant", value_t=torch.tensor([0, 0, -1])))
    c_n = results[2] if mode == "LSTM" else g.op("Constant", value_t=torch.zeros(0))
    return y, h_n, c_n


def _missing(g):
    """An omitted optional input of an ONNX node."""
    node = g.op("prim::Constant")
    node.setType(torch._C.OptionalType.ofTensor())
    return node


def translation_table() -> dict:
    """The dynamo exporter's ``custom_translation_table`` for unrolled's layers:
    ``torch.onnx.export(model, args, dynamo=True, dynamic_shapes=...,
    custom_translation_table=unrolled.onnx.translation_table())``. Needs ``onnxscript``."""
    return {torch.ops.unrolled.layer.default: _translate}


def _translate(mode, x, h0, c0, weights, num_directions, has_bias, batch_sizes):
    """Dynamo exporter: the ``unrolled::layer`` node -> one ONNX recurrent node (onnxscript,
    traced: the Python below runs once, at export)."""
    from onnxscript import opset18 as op

    check_expressible(mode, len(weights), num_directions, has_bias, batch_sizes is not None)
    per_direction = len(weights) // num_directions
    hidden = h0.shape[-1]
    order = ONNX_GATE_ORDER[mode]

    def stacked(k):  # the k-th weight of every direction in ONNX's gate order, (D, G*H, X)
        parts = []
        for d in range(num_directions):
            w = weights[d * per_direction + k]
            if len(order) > 1:  # slices of a constant weight fold into one initializer
                blocks = [op.Slice(w, [b * hidden], [(b + 1) * hidden], [0]) for b in order]
                w = op.Concat(*blocks, axis=0)
            parts.append(op.Unsqueeze(w, [0]))
        return parts[0] if num_directions == 1 else op.Concat(*parts, axis=0)

    bias = op.Concat(stacked(2), stacked(3), axis=1) if has_bias else None  # (D, 2*G*H)
    attributes = {
        "hidden_size": hidden,
        "direction": "bidirectional" if num_directions == 2 else "forward",
    }
    if mode == "LSTM":
        y, h_n, c_n = op.LSTM(x, stacked(0), stacked(1), bias, None, h0, c0, **attributes)
    elif mode == "GRU":
        y, h_n = op.GRU(x, stacked(0), stacked(1), bias, None, h0, linear_before_reset=1,
                        **attributes)  # fmt: skip
    else:
        activations = [ACTIVATION[mode]] * num_directions
        y, h_n = op.RNN(x, stacked(0), stacked(1), bias, None, h0, activations=activations,
                        **attributes)  # fmt: skip
    if mode != "LSTM":
        c_n = op.ConstantOfShape(op.Constant(value_ints=[0]))  # (0,) float: no cell state
    # Y (T, D, B, H) -> (T, B, D, H) -> (T, B, D*H)
    y = op.Reshape(op.Transpose(y, perm=[0, 2, 1, 3]), op.Constant(value_ints=[0, 0, -1]))
    return y, h_n, c_n
