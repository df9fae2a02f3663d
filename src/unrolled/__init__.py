"""unrolled: PyTorch's recurrent layers re-derived from first principles, proven equal to torch.nn.

Public names only; see ``docs/architecture.md`` for the layering.
"""

from . import functional
from .cell import Cell
from .cell_modules import GRUCell, LSTMCell, RNNCell
from .interop import from_torch
from .modules import GRU, LSTM, RNN, plan
from .quantization import quantize_dynamic
from .recurrent import Recurrent
from .serialization import SAFE_GLOBALS, allow_unrolled_classes
from .variants import IndRNN, LayerNormGRU, LayerNormLSTM, MinGRU, MinGRUCell

__all__ = [
    "RNN",
    "LSTM",
    "GRU",
    "RNNCell",
    "LSTMCell",
    "GRUCell",
    "from_torch",
    "plan",
    "Cell",
    "Recurrent",
    "IndRNN",
    "LayerNormGRU",
    "LayerNormLSTM",
    "MinGRU",
    "MinGRUCell",
    "SAFE_GLOBALS",
    "functional",
    "quantize_dynamic",
]
__version__ = "0.1.0"

allow_unrolled_classes()  # torch.load(model) with weights_only=True: see serialization.py
