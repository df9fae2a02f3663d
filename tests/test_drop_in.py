"""What PyTorch users do with their recurrent layers works on unrolled's twins as on torch.nn: each
test runs the same user code on both and compares."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import unrolled
from unrolled.fast import native

TORCH_LAYERS = {"RNN": torch.nn.RNN, "LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU}
#: unrolled's implementations: the reference backend and the fast one on each of its runners
RUNNERS = ["reference", "fast/native", "fast/python"]


def twin(theirs, runner):
    """unrolled's copy of ``theirs`` on ``runner``, and a context its calls run in."""
    backend, _, loops = runner.partition("/")
    if loops == "native" and native.ops() is None:
        pytest.skip(f"native loops unavailable: {native.status()}")
    return unrolled.from_torch(theirs, backend=backend), loops == "python"


def call(module, python_loops, *args, **kwargs):
    if python_loops:
        with native.disabled():
            return module(*args, **kwargs)
    return module(*args, **kwargs)


# --- in-place changes to the output before the backward ----------------------------------------

IN_PLACE = {
    "+= residual": lambda out, residual: out.add_(residual),
    "ReLU(inplace=True)": lambda out, residual: torch.nn.ReLU(inplace=True)(out),
    "mul_(mask)": lambda out, residual: out.mul_((residual > 0).to(out.dtype)),
}


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("change", list(IN_PLACE))
@pytest.mark.parametrize(
    "layer,bidirectional,form",
    list(itertools.product(TORCH_LAYERS, [False, True], ["time", "batch", "packed"])),
)
def test_the_output_can_be_changed_in_place_before_backward(
    layer, bidirectional, form, change, runner
):
    torch.manual_seed(0)
    theirs = TORCH_LAYERS[layer](
        3, 4, bidirectional=bidirectional, batch_first=form == "batch"
    ).double()
    ours, python_loops = twin(theirs, runner)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    residual = torch.randn(5, 2, 4 * (1 + bidirectional), dtype=torch.float64)

    def run(module, loops):
        leaf = x.clone().requires_grad_()
        module.zero_grad()
        if form == "packed":
            out = call(module, loops, pack_padded_sequence(leaf, [5, 3], enforce_sorted=False))[0]
            data = out.data
            IN_PLACE[change](
                data,
                torch.randn(
                    data.shape, dtype=data.dtype, generator=torch.Generator().manual_seed(1)
                ),
            )
        else:
            out = call(module, loops, leaf)[0]
            IN_PLACE[change](out, residual)
            data = out
        (
            data * torch.linspace(-1, 1, data.numel(), dtype=data.dtype).view_as(data)
        ).sum().backward()
        return [data.detach(), leaf.grad] + [p.grad for p in module.parameters()]

    for a, b in zip(run(ours, python_loops), run(theirs, False)):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)
