"""Autocast: the dtype a recurrent layer or cell runs in under ``torch.autocast``, as torch's own.

Autocast casts the inputs of the ops it lists (per device) to the lower precision and leaves
the other ops alone; which recurrent ops are listed, and so whether ``torch.nn.LSTM`` returns
bfloat16 or float32 under ``torch.autocast("cpu", dtype=torch.bfloat16)``, differs by device,
by op and by torch version (CPU, torch 2.13: the RNN and LSTM layers and ``RNNCell`` run in
bfloat16 from float32 input, the GRU layer and the LSTM and GRU cells stay in float32). Rather
than copy that table, unrolled asks torch: the first time a combination is seen, the matching
torch op runs once on a one-element input under the autocast state of the moment, and the dtype
it returns is the answer (cached). The layer casts its input and state to that dtype and runs
the reference loop with autocast still on: its torch ops (``F.linear`` for every gate block,
then the elementwise math) are cast by autocast as the ops inside torch's own layers are, and
gradients reach the float32 parameters through autocast's casts.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import modes

#: torch's layer options after (input, hx, params): no bias, 1 layer, no dropout, eval, one
#: direction, time-major
_ONE_LAYER = (False, 1, 0.0, False, False, False)
#: (mode, cell) -> torch's op on one-element tensors: x, h (input dtype) and w (gates rows)
_PROBES = {
    ("RNN_TANH", False): lambda x, h, w: torch.rnn_tanh(x, h, [w, w], *_ONE_LAYER)[0],
    ("RNN_RELU", False): lambda x, h, w: torch.rnn_relu(x, h, [w, w], *_ONE_LAYER)[0],
    ("LSTM", False): lambda x, h, w: torch.lstm(x, (h, h), [w, w], *_ONE_LAYER)[0],
    ("GRU", False): lambda x, h, w: torch.gru(x, h, [w, w], *_ONE_LAYER)[0],
    ("RNN_TANH", True): lambda x, h, w: torch.rnn_tanh_cell(x[0], h[0], w, w),
    ("RNN_RELU", True): lambda x, h, w: torch.rnn_relu_cell(x[0], h[0], w, w),
    ("LSTM", True): lambda x, h, w: torch.lstm_cell(x[0], (h[0], h[0]), w, w)[0],
    ("GRU", True): lambda x, h, w: torch.gru_cell(x[0], h[0], w, w),
}
_answers: dict[tuple, torch.dtype] = {}


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for this device type (the device-generic query where torch has
    it; torch before 2.4 has one per device)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        if device_type == "cpu":
            return torch.is_autocast_cpu_enabled()
        return device_type == "cuda" and torch.is_autocast_enabled()


def _autocast_dtype(device_type: str) -> torch.dtype:
    try:
        return torch.get_autocast_dtype(device_type)
    except AttributeError:  # torch < 2.4
        cpu = device_type == "cpu"
        return torch.get_autocast_cpu_dtype() if cpu else torch.get_autocast_gpu_dtype()


def run_dtype(mode: str, cell: bool, input: Tensor, weight: Tensor) -> torch.dtype | None:
    """The dtype torch's own layer (``cell=False``) or cell of ``mode`` would run in on this
    input and weight under the autocast now active; None when autocast is off there."""
    device_type = input.device.type
    if not autocast_enabled(device_type):
        return None
    key = (mode, cell, device_type, _autocast_dtype(device_type), input.dtype, weight.dtype)
    if key not in _answers:
        x = torch.zeros(1, 1, 1, dtype=input.dtype, device=input.device)
        w = torch.zeros(modes.of(mode).num_gates, 1, dtype=weight.dtype, device=weight.device)
        with torch.no_grad():
            _answers[key] = _PROBES[mode, cell](x, x, w).dtype
    return _answers[key]


def cast(value, dtype: torch.dtype):
    """Every floating tensor in ``value`` (a tensor, or a tuple or list of them, nested) cast to
    ``dtype``, differentiably; anything else as it is (the checks after will name it)."""
    if isinstance(value, Tensor):
        return value.to(dtype) if value.is_floating_point() and value.dtype != dtype else value
    if isinstance(value, (tuple, list)):
        return type(value)(cast(item, dtype) for item in value)
    return value
