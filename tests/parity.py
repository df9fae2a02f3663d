"""The test harness every parity test uses: run torch.nn and unrolled on the same input with the
same weights, then compare outputs, final states and every gradient."""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import PackedSequence

#: design.md's tolerances: (atol, rtol) per dtype.
TOLERANCES = {torch.float64: (1e-9, 1e-9), torch.float32: (3e-5, 1e-4)}


def leaves(value):
    """Flatten an output structure (tensor, PackedSequence, nested tuples) into tensors."""
    if isinstance(value, PackedSequence):
        return [value.data]
    if isinstance(value, torch.Tensor):
        return [value]
    return [t for item in value for t in leaves(item)]


def assert_close(name, got, expected, dtype):
    atol, rtol = TOLERANCES[dtype]
    assert got.shape == expected.shape, (
        f"{name}: shape {tuple(got.shape)} != {tuple(expected.shape)}"
    )
    torch.testing.assert_close(got, expected, atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


def run_and_grad(module, inputs, hx, grad_seed=1234, retain_graph=False):
    """Forward, then backward of a random projection of every output; return values and grads.

    With ``retain_graph``, the backward runs twice on the same graph, first keeping it (the
    layers must leave their saved buffers intact), then releasing it (they may write over
    them), and ``grads`` is the list of both passes' gradient dicts, kept first."""
    out = module(*inputs) if hx is None else module(*inputs, hx)
    values = leaves(out)
    gen = torch.Generator().manual_seed(grad_seed)
    loss = sum(
        (v * torch.randn(v.shape, generator=gen, dtype=v.dtype).to(v.device)).sum() for v in values
    )
    grad_targets = [t for t in leaves(inputs) + (leaves(hx) if hx is not None else [])]
    params = list(module.parameters())
    names = [f"input[{i}]" for i in range(len(grad_targets))] + [
        n for n, _ in module.named_parameters()
    ]
    targets = grad_targets + params
    passes = []
    for keep in (True, False) if retain_graph else (False,):
        grads = torch.autograd.grad(loss, targets, allow_unused=True, retain_graph=keep)
        passes.append(dict(zip(names, grads)))
    return values, passes if retain_graph else passes[0]


def clone_leaf(t):
    """A fresh leaf with the same values AND the same strides (non-contiguous stays so)."""
    copy = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device)
    return copy.copy_(t.detach()).requires_grad_(t.requires_grad)


def clone_structure(value):
    if value is None:
        return None
    if isinstance(value, PackedSequence):
        return PackedSequence(
            clone_leaf(value.data), value.batch_sizes, value.sorted_indices, value.unsorted_indices
        )
    if isinstance(value, torch.Tensor):
        return clone_leaf(value)
    return tuple(clone_structure(v) for v in value)


def compare(ours, theirs, inputs, hx=None, dtype=torch.float64, retain_graph=False):
    """Assert unrolled ``ours`` equals torch ``theirs``: outputs, states, all gradients
    (``retain_graph``: of a backward that keeps the graph and of one that then releases it).

    Returns the largest absolute error seen (for the closing note's statistics).
    """
    ours_values, ours_grads = run_and_grad(
        ours, clone_structure(inputs), clone_structure(hx), retain_graph=retain_graph
    )
    their_values, their_grads = run_and_grad(theirs, clone_structure(inputs), clone_structure(hx))
    worst = 0.0
    assert len(ours_values) == len(their_values)
    for k, (a, b) in enumerate(zip(ours_values, their_values)):
        assert_close(f"output[{k}]", a, b, dtype)
        worst = max(worst, (a - b).abs().max().item() if a.numel() else 0.0)
    passes = ours_grads if retain_graph else [ours_grads]
    for label, grads in zip(["kept graph, ", "released graph, "] if retain_graph else [""], passes):
        assert grads.keys() == their_grads.keys()
        for name in their_grads:
            a, b = grads[name], their_grads[name]
            if b is None:
                assert a is None or not a.abs().any(), f"grad {name}: torch has none, unrolled does"
                continue
            assert a is not None, f"{label}grad {name}: unrolled has none"
            assert_close(f"{label}grad {name}", a, b, dtype)
            worst = max(worst, (a - b).abs().max().item() if a.numel() else 0.0)
    return worst
