"""Recurrent cells beyond torch.nn, each an :class:`unrolled.Cell` with its equations."""

from .indrnn import IndRNN
from .layernorm import LayerNormGRU, LayerNormLSTM
from .mingru import MinGRU, MinGRUCell

__all__ = ["IndRNN", "LayerNormGRU", "LayerNormLSTM", "MinGRU", "MinGRUCell"]
