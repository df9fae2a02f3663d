"""Argument and input validation, raising what torch raises, with messages that say what was
expected and what was got. Modules call these before any arithmetic, so a bad input never turns
into a silently broadcast or truncated result.
"""

from __future__ import annotations

import numbers
import warnings

import torch
from torch import Tensor

from . import modes, precision


def check_layer_arguments(
    mode: str,
    input_size: int,
    hidden_size: int,
    num_layers: int,
    bias: bool,
    batch_first: bool,
    dropout: float,
    bidirectional: bool,
    proj_size: int,
) -> None:
    """The constructor checks of ``torch.nn.RNNBase``, same types and wording."""
    modes.of(mode)  # ValueError for an unknown mode
    if (
        not isinstance(dropout, numbers.Number)
        or isinstance(dropout, bool)
        or not 0 <= dropout <= 1
    ):
        raise ValueError(
            "dropout should be a number in range [0, 1] representing the probability of an "
            f"element being zeroed, got dropout={dropout!r}"
        )
    if dropout > 0 and num_layers == 1:
        warnings.warn(
            "dropout option adds dropout after all but last recurrent layer, so non-zero dropout "
            f"expects num_layers greater than 1, but got dropout={dropout} and "
            f"num_layers={num_layers}",
            stacklevel=4,
        )
    for name, value in (("bias", bias), ("batch_first", batch_first)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} should be of type bool, got: {type(value).__name__}")
    # bidirectional: torch checks nothing and takes its truth (bidirectional=1 is two directions)
    for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
        if not isinstance(value, int):  # torch's test: bools pass, numpy integers do not
            raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
        if value <= 0:
            raise ValueError(f"{name} must be greater than zero, got {name}={value}")
    # torch does not check these types, but range() and its shapes need integers: numpy
    # integers pass, anything else is the TypeError torch would raise later
    for name, value in (("num_layers", num_layers), ("proj_size", proj_size)):
        if not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
    if num_layers <= 0:
        raise ValueError(f"num_layers must be greater than zero, got num_layers={num_layers}")
    if proj_size < 0:
        raise ValueError(
            "proj_size should be a positive integer or zero to disable projections, "
            f"got proj_size={proj_size}"
        )
    if proj_size >= hidden_size:
        raise ValueError(
            f"proj_size has to be smaller than hidden_size, got proj_size={proj_size} and "
            f"hidden_size={hidden_size}"
        )
    if proj_size > 0 and mode != "LSTM":
        raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")


def check_cell_arguments(input_size: int, hidden_size: int, bias: bool) -> None:
    """The checks of unrolled's own cells (variants): positive integer sizes, a bool bias."""
    for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
        if value <= 0:
            raise ValueError(f"{name} must be greater than zero, got {name}={value}")
    if not isinstance(bias, bool):
        raise TypeError(f"bias should be of type bool, got: {type(bias).__name__}")


def check_torch_cell_sizes(input_size: int, hidden_size: int) -> None:
    """What ``torch.nn.RNNCell`` and friends accept: torch checks nothing itself, its weight
    shapes do, so any integer (numpy's too, and 0: an empty weight) and a truthy ``bias``;
    a negative size is the RuntimeError torch's ``torch.empty`` raises."""
    for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
        if not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
        if value < 0:
            raise RuntimeError(
                f"Trying to create tensor with negative dimension {value}: {name}={value}"
            )


def check_nonlinearity(nonlinearity: str) -> str:
    """Map ``"tanh" | "relu"`` to torch's mode name."""
    return modes.from_nonlinearity(nonlinearity)


def check_dtype(name: str, tensor: Tensor, weight: Tensor) -> None:
    if tensor.dtype != weight.dtype and not precision.autocast_enabled(tensor.device.type):
        raise ValueError(
            f"RNN {name} dtype ({tensor.dtype}) does not match weight dtype ({weight.dtype}). "
            f"Convert input: {name}.to({weight.dtype}), or convert model: model.to({tensor.dtype})"
        )


def check_sequence_input(input: Tensor, input_size: int, weight: Tensor) -> None:
    """``input`` is time-major ``(T, B, I)`` by now."""
    check_dtype("input", input, weight)
    if input.size(-1) != input_size:
        raise RuntimeError(
            "input.size(-1) must be equal to input_size. "
            f"Expected {input_size}, got {input.size(-1)}"
        )
    if input.size(0) == 0:
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN")


def check_state_tensor(name: str, state: Tensor, expected: tuple[int, ...], input: Tensor) -> None:
    if not isinstance(state, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(state).__name__}")
    if tuple(state.shape) != tuple(expected):
        raise RuntimeError(f"Expected {name} size {tuple(expected)}, got {list(state.shape)}")
    if state.dtype != input.dtype:
        raise RuntimeError(
            f"Expected {name} dtype to match input dtype {input.dtype}, got {state.dtype}"
        )
    if state.device != input.device:
        raise RuntimeError(
            f"Expected {name} on the input's device {input.device}, got {state.device}"
        )


def check_hx_structure(mode: str, hx: object, input_dim: int) -> None:
    """A layer's ``hx``: LSTM takes ``(h, c)``, the others one tensor; the state's rank must
    match the input's (batched or unbatched)."""
    batched = input_dim == 3
    kind = f"{'batched' if batched else 'unbatched'} {input_dim}-D"
    if mode == "LSTM":
        if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
            raise TypeError(
                f"LSTM expects hx to be a tuple (h_0, c_0) of two tensors, got {_describe(hx)}"
            )
        ranks = (hx[0].dim(), hx[1].dim())
        if ranks != (input_dim, input_dim):
            raise RuntimeError(
                f"For {kind} input, hx and cx should also be {input_dim}-D but got "
                f"({ranks[0]}-D, {ranks[1]}-D) tensors"
            )
    else:
        if not isinstance(hx, Tensor):
            raise TypeError(f"{_mode_name(mode)} expects hx to be a Tensor, got {_describe(hx)}")
        if hx.dim() != input_dim:
            raise RuntimeError(
                f"For {kind} input, hx should also be {input_dim}-D but got {hx.dim()}-D tensor"
            )


#: torch's C++ names of the dtypes, as its matmul errors print them
_SCALAR_NAMES = {
    torch.float64: "Double", torch.float32: "Float", torch.float16: "Half",
    torch.bfloat16: "BFloat16",
}  # fmt: skip


def check_cell_hx(name: str, mode: str, hx: object) -> None:
    """A cell's ``hx``: one tensor (an LSTMCell's: a pair), each 1-D or 2-D (torch's ValueError)."""
    if mode == "LSTM":
        if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
            raise TypeError(
                f"LSTMCell expects hx to be a tuple (h_0, c_0) of two tensors, got {_describe(hx)}"
            )
        for k, state in enumerate(hx):
            if not isinstance(state, Tensor):
                raise TypeError(f"hx[{k}] must be a Tensor, got {type(state).__name__}")
            if state.dim() not in (1, 2):
                raise ValueError(
                    f"{name}: Expected hx[{k}] to be 1D or 2D, got {state.dim()}D instead"
                )
    else:
        if not isinstance(hx, Tensor):
            raise TypeError(f"{name} expects hx to be a Tensor, got {_describe(hx)}")
        if hx.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected hidden to be 1D or 2D, got {hx.dim()}D instead")


def check_cell_input(input: Tensor, input_size: int) -> None:
    """A cell's batched input ``(B, I)``: its size, checked first, as torch's C++ does."""
    if input.size(1) != input_size:
        raise RuntimeError(
            f"input has inconsistent input_size: got {input.size(1)} expected {input_size}"
        )


def check_cell_dtype(name: str, input: Tensor, weight: Tensor, states: tuple) -> None:
    """A cell's input against its weights' dtype, and its states against the input's dtype and
    device: checked after every size, where torch's matmul raises its RuntimeError."""
    if input.dtype != weight.dtype and not precision.autocast_enabled(input.device.type):
        got, want = (_SCALAR_NAMES.get(d, str(d)) for d in (input.dtype, weight.dtype))
        raise RuntimeError(
            f"mat1 and mat2 must have the same dtype, but got {got} and {want}: the {name}'s "
            f"input is {input.dtype}, its weights {weight.dtype}"
        )
    for k, state in enumerate(states):
        if state.dtype != input.dtype:
            got, want = (_SCALAR_NAMES.get(d, str(d)) for d in (state.dtype, input.dtype))
            raise RuntimeError(
                f"mat1 and mat2 must have the same dtype, but got {got} and {want}: hidden{k} "
                f"is {state.dtype}, the input {input.dtype}"
            )
        if state.device != input.device:
            raise RuntimeError(
                f"Expected hidden{k} on the input's device {input.device}, got {state.device}"
            )


def check_cell_state(k: int, state: Tensor, input: Tensor, hidden_size: int, batched: bool) -> None:
    """State ``k`` of a cell, ``(B, H)`` after the batch dim is added: torch's checks and
    wording (``hidden0``, ``hidden1`` for an LSTMCell's h and c)."""
    if state.dim() != 2:
        kind = "batched 2-D" if batched else "unbatched 1-D"
        raise RuntimeError(
            f"For {kind} input, hx should also be {1 + batched}-D but got "
            f"{state.dim() - (not batched)}-D tensor"
        )
    if state.size(0) != input.size(0):
        raise RuntimeError(
            f"Input batch size {input.size(0)} doesn't match hidden{k} batch size {state.size(0)}"
        )
    if state.size(1) != hidden_size:
        raise RuntimeError(
            f"hidden{k} has inconsistent hidden_size: got {state.size(1)}, expected {hidden_size}"
        )


def check_step_input(owner: str, bidirectional: bool, x_t: object) -> tuple[Tensor, bool]:
    """``step``'s input: one time step ``(B, I)`` or ``(I,)`` of a unidirectional model.

    Returns ``(x (B, I), batched)``.
    """
    if bidirectional:
        raise RuntimeError(
            f"{owner}.step() runs one time step forward; a bidirectional model needs the whole "
            "sequence (the reverse direction starts at its end): use forward()"
        )
    if not isinstance(x_t, Tensor) or x_t.dim() not in (1, 2):
        got = f"{x_t.dim()}D tensor" if isinstance(x_t, Tensor) else type(x_t).__name__
        raise ValueError(f"{owner}.step: Expected x_t to be 1D or 2D, got {got} instead")
    batched = x_t.dim() == 2
    return (x_t if batched else x_t.unsqueeze(0)), batched  # (B, I)


def check_lengths(lengths: object, batch_size: int, num_steps: int, device: torch.device) -> Tensor:
    """Validate ``lengths=`` for padded input and return it as int64 on ``device``."""
    if isinstance(lengths, Tensor):
        if (
            lengths.dtype.is_floating_point
            or lengths.dtype.is_complex
            or lengths.dtype == torch.bool
        ):
            raise ValueError(f"lengths must hold integers, got a tensor of dtype {lengths.dtype}")
        values = lengths.detach().to("cpu", torch.int64)
    else:
        try:
            items = list(lengths)  # type: ignore[call-overload]
        except TypeError:
            raise ValueError(
                f"lengths must be a sequence of integers, got {type(lengths).__name__}"
            ) from None
        if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in items):
            raise ValueError(f"lengths must hold integers, got {items!r}")
        values = torch.tensor(items, dtype=torch.int64)
    if values.dim() != 1 or values.numel() != batch_size:
        raise ValueError(
            f"lengths must have one entry per sequence: expected shape ({batch_size},), "
            f"got {tuple(values.shape)}"
        )
    if batch_size and int(values.min()) < 1:
        raise ValueError(f"lengths must be >= 1, got min {int(values.min())}: {values.tolist()}")
    if batch_size and int(values.max()) > num_steps:
        raise ValueError(
            f"lengths must be <= the sequence length T={num_steps}, got max "
            f"{int(values.max())}: {values.tolist()}"
        )
    return values.to(device)


def _mode_name(mode: str) -> str:
    return modes.of(mode).torch_class


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a Tensor of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} elements"
    return type(value).__name__
