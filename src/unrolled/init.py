"""torch's default initialisation of recurrent weights, written once."""

from __future__ import annotations

import math
from collections.abc import Iterable

from torch import Tensor, nn


def uniform_by_hidden_size_(tensors: Iterable[Tensor | None], hidden_size: int) -> None:
    """Fill each tensor from U(-1/sqrt(H), 1/sqrt(H)) in order (None skipped), as torch's
    RNNs do: the same order of draws gives torch's exact initial weights for the same seed."""
    bound = 1.0 / math.sqrt(hidden_size) if hidden_size > 0 else 0.0  # torch's, for H = 0
    for tensor in tensors:
        if tensor is not None:
            nn.init.uniform_(tensor, -bound, bound)
