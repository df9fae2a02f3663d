"""The fast backend's time loops in torch ops: the fallback of the native (C++) loops and their
specification.

Each family's file mirrors its C++ file in ``unrolled/fast/native/`` function for function, on
the same buffers (each family's buffer contract is in ``unrolled/fast/<family>.py``), so that a
reader can put them side by side and a test can run both on the same buffers and compare every
one. This namespace has the native ops' names and signatures (``torch.ops.unrolled.*``): a plan
(:func:`unrolled.backends.plan`) hands a layer one or the other as ``plan.loops``, and the layer
code around the loops is the same for both.

Both must equal the reference cells step for step (:mod:`unrolled.cells`: ``lstm``, ``gru``,
``rnn_tanh``, ``rnn_relu``); each family's backward derivatives are in its layer module. What
differs between the two is only how one step's elementwise math runs: element by element in one
vectorised C++ pass there, a few torch ops over a block of rows here. The C++ loops run the two
directions of a layer on two threads; these run them one after the other.
"""

from __future__ import annotations

from .gru import gru_backward, gru_forward
from .lstm import lstm_backward, lstm_forward
from .rnn import rnn_backward, rnn_forward

__all__ = [
    "gru_backward",
    "gru_forward",
    "lstm_backward",
    "lstm_forward",
    "rnn_backward",
    "rnn_forward",
]
