"""A tanh RNN as two plain functions, plus a functional entry point to the backends.

``rnn_forward`` and ``bidirectional_rnn_forward`` take the weights one by one (the way an RNN is
first written by hand: input, ``W_ih``, ``W_hh``, the biases, the initial state) and return
exactly what ``torch.nn.RNN(batch_first=True[, bidirectional=True])`` returns.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import backends, cells, checks, modes
from .inputs import to_time_major
from .scan import scan


def _check_rnn_weights(
    input: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias_ih, bias_hh, h_prev: Tensor, tag=""
) -> None:
    if input.dim() != 3:
        raise ValueError(f"input must be 3-D (B, T, I), got shape {tuple(input.shape)}")
    batch, _, input_size = input.shape
    hidden = weight_ih.size(0)
    expected = {
        f"weight_ih{tag}": (weight_ih, (hidden, input_size)),
        f"weight_hh{tag}": (weight_hh, (hidden, hidden)),
        f"bias_ih{tag}": (bias_ih, (hidden,)),
        f"bias_hh{tag}": (bias_hh, (hidden,)),
        f"h_prev{tag}": (h_prev, (batch, hidden)),
    }
    for name, (tensor, shape) in expected.items():
        if tensor is not None and tuple(tensor.shape) != shape:
            raise RuntimeError(f"{name} must have shape {shape}, got {tuple(tensor.shape)}")


def rnn_forward(
    input: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
    h_prev: Tensor,
) -> tuple[Tensor, Tensor]:
    r"""A one-layer tanh RNN over a batch-first sequence.

    ``h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``, from ``h_{-1} = h_prev``.

    Args:
        input: ``(B, T, I)``.
        weight_ih: ``(H, I)``. weight_hh: ``(H, H)``.
        bias_ih: ``(H,)`` or None (one bias per hidden unit, not per input feature).
        bias_hh: ``(H,)`` or None.
        h_prev: ``(B, H)``, the state before ``t = 0``.

    Returns:
        ``(output (B, T, H), h_n (1, B, H))``, as ``nn.RNN(batch_first=True)``.
    """
    _check_rnn_weights(input, weight_ih, weight_hh, bias_ih, bias_hh, h_prev)

    def step(x_t: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        h = cells.rnn_tanh(x_t, h, weight_ih, weight_hh, bias_ih, bias_hh)  # (B, H)
        return h, h

    output, h_n = scan(step, input.transpose(0, 1), h_prev)  # (T, B, H), (B, H)
    return output.transpose(0, 1), h_n.unsqueeze(0)  # (B, T, H), (1, B, H)


def bidirectional_rnn_forward(
    input: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
    h_prev: Tensor,
    weight_ih_reverse: Tensor,
    weight_hh_reverse: Tensor,
    bias_ih_reverse: Tensor | None,
    bias_hh_reverse: Tensor | None,
    h_prev_reverse: Tensor,
) -> tuple[Tensor, Tensor]:
    """A one-layer bidirectional tanh RNN, as ``nn.RNN(batch_first=True, bidirectional=True)``.

    The reverse direction reads the sequence from ``t = T-1`` down to ``0``. Its output at step
    ``t`` is its state *after reading* ``x_t``, stored at position ``t`` (not ``T-1-t``), and its
    row of ``h_n`` is its state after reading ``t = 0``.

    Args: as :func:`rnn_forward`, once per direction.

    Returns:
        ``(output (B, T, 2H), h_n (2, B, H))``; ``output[..., :H]`` is the forward direction.
    """
    _check_rnn_weights(input, weight_ih_reverse, weight_hh_reverse, bias_ih_reverse,
                       bias_hh_reverse, h_prev_reverse, tag="_reverse")  # fmt: skip
    forward_output, forward_h_n = rnn_forward(input, weight_ih, weight_hh, bias_ih, bias_hh, h_prev)
    reversed_input = input.flip(1)  # (B, T, I), time reversed
    backward_output, backward_h_n = rnn_forward(
        reversed_input, weight_ih_reverse, weight_hh_reverse, bias_ih_reverse, bias_hh_reverse,
        h_prev_reverse,
    )  # fmt: skip
    output = torch.cat([forward_output, backward_output.flip(1)], dim=-1)  # (B, T, 2H)
    return output, torch.cat([forward_h_n, backward_h_n], dim=0)  # (2, B, H)


def rnn(
    mode: str,
    input: Tensor,
    hx,
    weights,
    *,
    num_layers: int = 1,
    bidirectional: bool = False,
    dropout: float = 0.0,
    training: bool = False,
    lengths=None,
    backend: str = "fast",
):
    """Functional form of the layers.

    Args:
        mode: ``"RNN_TANH" | "RNN_RELU" | "LSTM" | "GRU"``.
        input: time-major ``(T, B, I)``.
        hx: ``(L*D, B, P)`` (LSTM: ``(h (L*D, B, P), c (L*D, B, H))``), or None for zeros.
        weights: ``L*D`` tuples ``(w_ih, w_hh, b_ih, b_hh, w_hr)``, None where absent, row
            ``l*D + d``, torch's shapes.
        lengths: valid steps per sequence, ``(B,)`` (a list or an integer tensor), or None.
        backend: ``"fast"`` or ``"reference"``.

    Returns:
        ``(output (T, B, D*P), h_n (L*D, B, P))``; for LSTM ``h_n`` is ``(h_n, c_n)``.
    """
    if mode not in modes.MODES:
        raise ValueError(f"mode must be one of {sorted(modes.NAMES)}, got mode={mode!r}")
    if not isinstance(input, Tensor) or input.dim() != 3:
        got = f"shape {tuple(input.shape)}" if isinstance(input, Tensor) else type(input).__name__
        raise ValueError(f"input must be a time-major (T, B, I) tensor, got {got}")
    num_directions = 2 if bidirectional else 1
    weights = [tuple(w) for w in weights]
    if len(weights) != num_layers * num_directions or any(len(w) != 5 for w in weights):
        raise ValueError(
            f"weights must be num_layers * num_directions = {num_layers * num_directions} "
            "tuples (w_ih, w_hh, b_ih, b_hh, w_hr), got "
            f"{len(weights)} of lengths {[len(w) for w in weights]}"
        )
    num_steps, batch, _ = input.shape
    w_ih, w_hh = weights[0][0], weights[0][1]
    hidden, out_size = w_ih.shape[0] // modes.of(mode).num_gates, w_hh.shape[1]
    rows = num_layers * num_directions
    if hx is None:
        h0 = input.new_zeros(rows, batch, out_size)
        hx = (h0, input.new_zeros(rows, batch, hidden)) if mode == "LSTM" else h0
    else:
        checks.check_hx_structure(mode, hx, 3)
        states = (
            [("hx[0]", hx[0], out_size), ("hx[1]", hx[1], hidden)]
            if mode == "LSTM"
            else [("hx", hx, out_size)]
        )
        for name, state, size in states:
            checks.check_state_tensor(name, state, (rows, batch, size), input)
    # Sorted longest first (if it is not), as a module sorts it; results in the caller's order.
    sequences, layout = to_time_major(input, batch_first=False, lengths=lengths, module_name="rnn")
    plan = backends.plan(
        mode, sequences, weights, backend=backend, lengths=sequences.lengths,
        num_directions=num_directions,
    )  # fmt: skip
    output, h_n = backends.run(
        plan,
        sequences,
        layout.state_in(hx),
        weights,
        num_layers=num_layers,
        num_directions=num_directions,
        dropout=dropout,
        training=training,
    )
    return layout.results_out(output, h_n)
