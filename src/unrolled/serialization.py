"""Whole-model checkpoints: ``torch.save(model)``, then a plain ``torch.load(path)``.

Since torch 2.6, ``torch.load`` defaults to ``weights_only=True``: it unpickles only the
classes on torch's allow-list, and refuses a model whose classes are not there, torch.nn's own
included (PyTorch's examples list ``nn.LSTM`` and the rest in
``torch.serialization.safe_globals([...])``). Importing ``unrolled`` adds exactly unrolled's own
module classes to that list (``torch.serialization.add_safe_globals``): each holds parameters,
plain numbers, strings and tuples and unpickles without running code of its own, so allowing
them allows nothing else. Nothing broader is added: torch's classes in the same model
(``nn.Sequential``, ``nn.Linear``, the ``nn.LayerNorm`` inside ``LayerNormLSTM``) and your
own are yours to list, as torch asks. Code that lists classes explicitly adds
``unrolled.SAFE_GLOBALS`` to its list.
"""

from __future__ import annotations

import torch

from .cell_modules import GRUCell, LSTMCell, RNNCell
from .modules import GRU, LSTM, RNN
from .recurrent import CellList, Recurrent
from .variants import IndRNN, LayerNormGRU, LayerNormLSTM, MinGRU, MinGRUCell

#: unrolled's module classes: what a saved model may hold of unrolled's.
SAFE_GLOBALS = [
    RNN, LSTM, GRU, RNNCell, LSTMCell, GRUCell, Recurrent, CellList,
    IndRNN, LayerNormGRU, LayerNormLSTM, MinGRU, MinGRUCell,
]  # fmt: skip


def allow_unrolled_classes() -> None:
    """Add :data:`SAFE_GLOBALS` to torch's allow-list (torch 2.4 and later have one)."""
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None:
        add(SAFE_GLOBALS)
