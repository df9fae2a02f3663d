"""The time loop of ONE layer in ONE direction: the reference backend's and ``Recurrent``'s.

``scan`` knows nothing about gates or weights. It calls ``step(x_t, state)`` once per time step,
forward or in reverse, and keeps each sequence's state frozen outside its valid steps when
``lengths`` is given, so that

* forward, a sequence's final state is its state after its own last valid step;
* reverse, a sequence starts at its own last valid step ``lengths[b] - 1`` (padding sits at the
  end of every sequence, so in reverse the padding comes first and is skipped);
* outputs at padded steps are zero and no gradient flows from them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Union

import torch
from torch import Tensor

#: A recurrent state: one tensor (RNN, GRU) or a tuple of tensors (LSTM's ``(h, c)``).
State = Union[Tensor, tuple[Tensor, ...]]
Step = Callable[[Tensor, State], tuple[Tensor, State]]


def map_state(fn: Callable[..., Tensor], *states: State) -> State:
    """Apply ``fn`` leafwise to one or more states of the same structure."""
    if isinstance(states[0], Tensor):
        return fn(*states)
    return tuple(fn(*leaves) for leaves in zip(*states))


def split_states(stacked: State, rows: int) -> list[State]:
    """Leaves ``(L*D, B, *)`` -> ``L*D`` states with leaves ``(B, *)``."""
    return [map_state(lambda s, k=k: s[k], stacked) for k in range(rows)]


def stack_states(states: Sequence[State]) -> State:
    """``L*D`` states with leaves ``(B, *)`` -> one with leaves ``(L*D, B, *)``."""
    return map_state(lambda *leaves: torch.stack(leaves), *states)


def valid_steps(lengths: Tensor, num_steps: int) -> Tensor:
    """``(T, B, 1)`` bool mask: True where step ``t`` is inside sequence ``b``."""
    steps = torch.arange(num_steps, device=lengths.device)  # (T,)
    return (steps[:, None] < lengths[None, :]).unsqueeze(-1)  # (T, B, 1)


def scan(
    step: Step,
    inputs: Tensor,
    state: State,
    *,
    reverse: bool = False,
    lengths: Tensor | None = None,
) -> tuple[Tensor, State]:
    """Run ``step`` over time.

    Args:
        step: ``step(x_t, state) -> (output_t, new_state)`` with ``x_t`` of shape ``(B, *)``
            and ``output_t`` of shape ``(B, O)``.
        inputs: ``(T, B, *)``, time-major.
        state: the state before the first step read (each leaf ``(B, *)``).
        reverse: read ``t = T-1 .. 0`` instead of ``0 .. T-1``; outputs stay at their own ``t``.
        lengths: ``(B,)`` integer tensor on the inputs' device, or None for full length.

    Returns:
        ``(outputs (T, B, O), final_state)``.
    """
    num_steps = inputs.shape[0]
    valid = None if lengths is None else valid_steps(lengths, num_steps)  # (T, B, 1)
    outputs: list[Tensor | None] = [None] * num_steps
    times = range(num_steps - 1, -1, -1) if reverse else range(num_steps)
    for t in times:
        result = step(inputs[t], state)
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            raise step_result_error(step, result)
        output, new_state = result
        if valid is not None:
            # Outside a sequence the state does not move and the output is zero; `where`
            # (not a multiply) keeps gradients of padded steps exactly zero, even for inf/nan.
            running = valid[t]  # (B, 1): True while sequence b has steps left
            new_state = map_state(partial(torch.where, running), new_state, state)
            output = torch.where(running, output, torch.zeros_like(output))
        outputs[t] = output
        state = new_state
    return torch.stack(outputs), state  # (T, B, O)


def step_result_error(step: Callable, result) -> TypeError:
    """The error for a ``step`` that did not return the pair ``(output_t, new_state)``."""
    owner = getattr(step, "__self__", None)  # a cell's bound ``step``
    name = f"{type(owner).__name__}.step()" if owner is not None else f"{_name(step)}()"
    return TypeError(
        f"{name} must return a pair (output, new_state), got {describe(result)}; "
        "a cell whose output is its new state returns (h, h)"
    )


def describe(value) -> str:
    """A value in an error message: its type, and its shape for a tensor."""
    if isinstance(value, Tensor):
        return f"a Tensor of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        count = f"{len(value)} element" + ("" if len(value) == 1 else "s")
        inner = ", ".join(describe(v) for v in value) if len(value) <= 4 else "..."
        return f"a {type(value).__name__} of {count} ({inner})"
    if value is None:
        return "None"
    return f"a {type(value).__name__}"


def _name(fn: Callable) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
