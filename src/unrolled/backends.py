"""The one place where the readable path and the fast path are switched.

A backend is a function ``run(mode, inputs, hx, weights, *, num_layers, num_directions, dropout,
training, lengths) -> (output, h_n | (h_n, c_n))``; see :func:`unrolled.reference.run`.
"""

from __future__ import annotations

from . import fast, reference

BACKENDS = {"reference": reference.run, "fast": fast.run}


def get_backend(name: str):
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {sorted(BACKENDS)}, got backend={name!r}")
    return BACKENDS[name]
