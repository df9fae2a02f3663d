"""Dynamic int8 quantization of models that hold unrolled's layers: :func:`quantize_dynamic`, with
the call shape of ``torch.ao.quantization.quantize_dynamic``.

torch's ``quantize_dynamic`` chooses the modules to quantize by their exact class (``nn.LSTM``,
``nn.GRU``, the three cells, ``nn.Linear``...), so it leaves unrolled's twins in float. This
function first turns each unrolled layer or cell that is asked for (by its own class or by its
torch.nn twin's) and that torch can quantize into its ``torch.nn`` twin (``to_torch()``, weights
copied), then hands the model to torch's ``quantize_dynamic``: the result runs torch's int8
kernels and equals what torch's ``quantize_dynamic`` makes of the same model built from
torch.nn. unrolled has no int8 kernels of its own; ``RNN`` layers, which torch does not quantize
dynamically, stay as they are.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .cell_modules import GRUCell, LSTMCell, RNNCell
from .modules import GRU, LSTM, RNN

#: unrolled's classes and their torch.nn twins
TWINS = {
    RNN: nn.RNN, LSTM: nn.LSTM, GRU: nn.GRU, RNNCell: nn.RNNCell, LSTMCell: nn.LSTMCell,
    GRUCell: nn.GRUCell,
}  # fmt: skip


def quantize_dynamic(model: nn.Module, qconfig_spec=None, dtype=torch.qint8, mapping=None,
                     inplace: bool = False) -> nn.Module:  # fmt: skip
    """``torch.ao.quantization.quantize_dynamic`` for models that hold unrolled's layers.

    Args: as torch's. ``qconfig_spec`` (a set of module classes, or a dict from class or name
    to qconfig) may name unrolled's classes or their torch.nn twins; None means torch's default
    for ``dtype``.
    """
    from torch.ao.quantization import quantize_dynamic as torch_quantize_dynamic
    from torch.ao.quantization.quantization_mappings import (
        get_default_dynamic_quant_module_mappings,
    )

    quantizable = set(mapping or get_default_dynamic_quant_module_mappings())
    spec = qconfig_spec
    if isinstance(spec, dict):
        spec = {TWINS.get(key, key): value for key, value in spec.items()}
    elif spec is not None:
        spec = {TWINS.get(key, key) for key in spec}
    asked = None if spec is None else {key for key in spec if isinstance(key, type)}

    def wanted(module: nn.Module) -> bool:
        twin = TWINS.get(type(module))
        return twin in quantizable and (asked is None or twin in asked)

    if not inplace:
        model = copy.deepcopy(model)
    if wanted(model):
        model = model.to_torch()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if wanted(child):
                setattr(parent, name, child.to_torch())
    return torch_quantize_dynamic(model, spec, dtype=dtype, mapping=mapping, inplace=True)
