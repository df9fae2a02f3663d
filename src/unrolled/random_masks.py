"""Zoneout's keep masks: one Bernoulli draw per unit and step, fast.

A layer with zoneout draws ``T * B * H`` Bernoulli values per zoned-out state and call, as many
as its hidden states have elements. Drawn with ``torch.bernoulli`` (a Mersenne Twister, ~4-7 ns a
value on one core), that alone took a third of a small LSTM's training step. So each element's
random bits come from a counter-based hash instead, the way GPU dropout draws Philox bits per
element: the ``k``-th element of a mask gets

    u_k = mix32(mix32(k * 0x9E3779B9 + a) ^ b)        (32-bit arithmetic, wrapping)

with ``mix32`` the ``lowbias32`` integer hash (C. Wellons' search; a bijection of 32-bit
integers), and is 1 (keep the previous value) when ``u_k < round(p * 2^32)``. The two 32-bit
seeds ``a, b`` are drawn from torch's default generator, one ``torch.randint`` per mask, so
``torch.manual_seed`` reproduces every mask, as it would ``torch.bernoulli``'s. The keep
probability is ``p`` to within ``2^-33``; the elements of a mask are pairwise distinct hash
values of distinct counters, and the two masks of an LSTM (``h`` and ``c``) have independent
seeds.

The native op (``native/masks.cpp``) computes these bits in one vectorised pass; this module
computes the very same bits in torch ops (where the native loops are not built, or for another
device), with 64-bit integers that never overflow.
"""

from __future__ import annotations

import torch
from torch import Tensor

GOLDEN = 0x9E3779B9  # the counter's odd multiplier: k -> k * GOLDEN is a bijection mod 2^32
MIX = (0x7FEB352D, 0x846CA68B)  # lowbias32's multipliers
LOW32 = 0xFFFFFFFF


def mul32(x: Tensor, constant: int) -> Tensor:
    """``x * constant mod 2^32`` for int64 ``x`` in ``[0, 2^32)``, without int64 overflow: the
    constant in 16-bit halves, each partial product below ``2^48``."""
    low, high = constant & 0xFFFF, constant >> 16
    return (x * low + (((x * high) & 0xFFFF) << 16)) & LOW32


def mix32(x: Tensor) -> Tensor:
    """lowbias32 on int64 ``x`` in ``[0, 2^32)``."""
    x = x ^ (x >> 16)
    x = mul32(x, MIX[0])
    x = x ^ (x >> 15)
    x = mul32(x, MIX[1])
    return x ^ (x >> 16)


def hash_bits(count: int, seed_a: int, seed_b: int, device: torch.device | str = "cpu") -> Tensor:
    """``(count,)`` int64: the 32 random bits ``u_k`` of elements ``k = 0 .. count - 1``."""
    k = torch.arange(count, dtype=torch.int64, device=device)
    return mix32(mix32((mul32(k, GOLDEN) + seed_a) & LOW32) ^ seed_b)


def threshold(p: float) -> int:
    """``round(p * 2^32)``: ``u_k`` below it means keep (probability ``p``)."""
    return min(max(round(p * 2.0**32), 0), 1 << 32)


def keep_mask(shape: tuple[int, ...], p: float, like: Tensor) -> Tensor:
    """A ``shape`` tensor of ``like``'s dtype and device, 1 with probability ``p`` per element
    (keep the previous value), else 0; its seeds drawn from torch's default generator."""
    seed_a, seed_b = torch.randint(0, 1 << 32, (2,), dtype=torch.int64).tolist()
    kernels = native_ops() if like.device.type == "cpu" else None
    if kernels is not None and like.dtype in (torch.float32, torch.float64):
        return kernels.keep_mask(seed_a, seed_b, list(shape), threshold(p), like.dtype)
    count = 1
    for size in shape:
        count *= size
    bits = hash_bits(count, seed_a, seed_b, like.device)
    return (bits < threshold(p)).to(like.dtype).view(shape)


def native_ops():
    """The native ops if they are built (building them if need be), else None."""
    from .fast import native  # the fast backend's extension, built once per machine

    return None if native.is_disabled() else native.ops()
