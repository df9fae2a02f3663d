"""Weights both ways between ``torch.nn`` and ``unrolled``."""

from __future__ import annotations

import torch
from torch import nn

from . import cell_modules, modules


def from_torch(module: nn.Module, backend: str = "fast") -> nn.Module:
    """The unrolled twin of a ``torch.nn`` RNN/LSTM/GRU or cell, with copied weights.

    The twin has the same configuration, dtype, device and training mode; ``backend`` applies
    to the sequence layers (cells have one step and no backend).
    """
    weight = getattr(module, "weight_ih_l0", None)
    weight = getattr(module, "weight_ih", None) if weight is None else weight
    if not isinstance(weight, torch.Tensor):
        weight = next(module.parameters())
    factory = {"device": weight.device, "dtype": weight.dtype}
    if isinstance(module, nn.RNNBase):
        kwargs = dict(
            num_layers=module.num_layers,
            bias=module.bias,
            batch_first=module.batch_first,
            dropout=module.dropout,
            bidirectional=module.bidirectional,
            backend=backend,
            **factory,
        )
        if isinstance(module, nn.LSTM):
            twin = modules.LSTM(module.input_size, module.hidden_size, proj_size=module.proj_size,
                                **kwargs)  # fmt: skip
        elif isinstance(module, nn.GRU):
            twin = modules.GRU(module.input_size, module.hidden_size, **kwargs)
        elif isinstance(module, nn.RNN):
            twin = modules.RNN(module.input_size, module.hidden_size,
                               nonlinearity=module.nonlinearity, **kwargs)  # fmt: skip
        else:
            raise TypeError(f"from_torch: unsupported RNN module {type(module).__name__}")
    elif isinstance(module, nn.LSTMCell):
        twin = cell_modules.LSTMCell(module.input_size, module.hidden_size, module.bias, **factory)
    elif isinstance(module, nn.GRUCell):
        twin = cell_modules.GRUCell(module.input_size, module.hidden_size, module.bias, **factory)
    elif isinstance(module, nn.RNNCell):
        twin = cell_modules.RNNCell(module.input_size, module.hidden_size, module.bias,
                                    module.nonlinearity, **factory)  # fmt: skip
    else:
        raise TypeError(
            "from_torch expects torch.nn.RNN, LSTM, GRU, RNNCell, LSTMCell or GRUCell, "
            f"got {type(module).__name__}"
        )
    copy_weights(module, twin)
    twin.train(module.training)
    return twin


def copy_weights(source: nn.Module, target: nn.Module) -> None:
    """Set every parameter of ``target`` to the weight ``source`` computes with under the same
    name: its parameter, or what a parametrization (weight_norm, spectral_norm, ...) or pruning
    mask makes of it, or a plain tensor put in its place. The parametrizations themselves are
    not copied: the twin holds their result."""
    with torch.no_grad():
        for name, parameter in target.named_parameters():
            value = getattr(source, name, None)
            if not isinstance(value, torch.Tensor):
                raise KeyError(f"{type(source).__name__} has no weight {name!r} to copy")
            if value.shape != parameter.shape:
                raise RuntimeError(
                    f"{name}: expected shape {tuple(parameter.shape)}, got {tuple(value.shape)}"
                )
            parameter.copy_(value)
