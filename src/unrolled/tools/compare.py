"""How close to torch.nn is close enough: the one tolerance table and the one comparator.

Every check of unrolled against torch.nn asks the same question of each tensor it returns (an
output, a final state, a gradient): is it torch's value, up to the rounding by which two correct
summation orders may differ? The tests, ``unrolled verify``, ``unrolled bench``'s parity check,
``unrolled explain``'s PASS and ``unrolled demo`` all answer it here, with the same bounds, so a
bound is changed, or argued about, in one place.

The rule is torch's: ``|got - expected| <= atol + rtol * |expected|`` elementwise
(``torch.isclose``), ``expected`` being torch.nn's value. :func:`difference` measures one tensor
(the largest absolute difference, and whether every element is within the bound);
:func:`assert_close` is its raising form for tests; :func:`compare_modules` runs a module and its
torch.nn twin on the same input and compares every output, final state and gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Union

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence


class Tolerance(NamedTuple):
    """The bound ``|got - expected| <= atol + rtol * |expected|``, elementwise."""

    atol: float
    rtol: float

    def __str__(self) -> str:
        return f"atol {self.atol:g} rtol {self.rtol:g}"


#: The project's bounds by the dtype the results are computed in. float64: far above its
#: rounding (about 1e-16 per operation), far below any error in a formula. float32: what the
#: summation order of a float32 GEMM (CPU- and BLAS-dependent) leaves over the tested sizes.
#: bfloat16: 8 bits of mantissa (eps 2^-7), so agreement to a few eps of 1.
TOLERANCES: dict[torch.dtype, Tolerance] = {
    torch.float64: Tolerance(1e-9, 1e-9),
    torch.float32: Tolerance(3e-5, 1e-4),
    torch.bfloat16: Tolerance(5e-2, 5e-2),
}
#: bfloat16 outputs under ``torch.autocast`` with float32 weights: each op rounds its operands
#: to bfloat16 but keeps the weights' float32 values, so closer than a bfloat16 layer.
AUTOCAST_BFLOAT16 = Tolerance(2e-2, 2e-2)

#: What names a bound: a dtype, its name (``"float32"``), or a :class:`Tolerance` itself.
Within = Union[torch.dtype, str, Tolerance]


def tolerance(within: Within) -> Tolerance:
    """The bound for results in ``within`` (a dtype or its name); a Tolerance is returned as is."""
    if isinstance(within, Tolerance):
        return within
    dtype = getattr(torch, within, None) if isinstance(within, str) else within
    if dtype not in TOLERANCES:
        known = ", ".join(str(d).removeprefix("torch.") for d in TOLERANCES)
        raise ValueError(f"no tolerance for {within!r}; the table has {known}")
    return TOLERANCES[dtype]


def largest_difference(got: Tensor, expected: Tensor, equal_nan: bool = True) -> float:
    """``max |got - expected|``, computed in float64 (0.0 for empty tensors). With ``equal_nan``
    a NaN on both sides counts as no difference; otherwise a NaN anywhere makes the result NaN."""
    if got.numel() == 0:
        return 0.0
    got, expected = got.detach(), expected.detach()
    gap = (got.double() - expected.double()).abs()
    if equal_nan:
        gap = gap.masked_fill(got.isnan() & expected.isnan(), 0.0)
    return float(gap.max())


@dataclass(frozen=True)
class Difference:
    """One tensor compared with torch.nn's."""

    name: str
    error: float  # the largest absolute difference; inf when the shapes differ
    problem: str | None = None  # what is wrong, in words; None when within the bound

    @property
    def passed(self) -> bool:
        return self.problem is None


def difference(
    name: str, got: Tensor, expected: Tensor, within: Within | None = None, equal_nan: bool = True
) -> Difference:
    """Compare ``got`` with torch.nn's ``expected``: the same shape; integer tensors (indices,
    batch sizes) exactly equal; floating ones within the bound of ``within`` (default: the
    table's entry for ``expected.dtype``)."""
    if got.shape != expected.shape:
        shapes = f"shape {tuple(got.shape)}, torch.nn has {tuple(expected.shape)}"
        return Difference(name, float("inf"), f"{name}: {shapes}")
    if not expected.is_floating_point():
        if torch.equal(got.to(expected.device), expected):
            return Difference(name, 0.0)
        return Difference(name, 0.0, f"{name}: {got.tolist()} != torch.nn's {expected.tolist()}")
    bound = tolerance(expected.dtype if within is None else within)
    error = largest_difference(got, expected, equal_nan)
    got, expected = got.detach(), expected.detach()
    close = torch.isclose(got, expected, atol=bound.atol, rtol=bound.rtol, equal_nan=equal_nan)
    if bool(close.all()):
        return Difference(name, error)
    where = tuple(int(i) for i in (~close).nonzero()[0])
    problem = f"{name}: max |difference| {error:.3e} (atol {bound.atol:g}, rtol {bound.rtol:g})"
    return Difference(name, error, f"{problem}, first at index {where}")


def assert_close(
    name: str, got: Tensor, expected: Tensor, within: Within | None = None, equal_nan: bool = False
) -> float:
    """:func:`difference` for tests: raise AssertionError unless ``got`` is within the bound and
    has torch's dtype and device (as ``torch.testing.assert_close`` requires); return the error."""
    assert got.dtype == expected.dtype, f"{name}: dtype {got.dtype}, expected {expected.dtype}"
    assert got.device == expected.device, f"{name}: on {got.device}, expected on {expected.device}"
    found = difference(name, got, expected, within, equal_nan)
    assert found.passed, found.problem
    return found.error


# ---- a module against its torch.nn twin: every output, final state and gradient --------------


def leaves(value) -> list[Tensor]:
    """The tensors of an output structure (tensor, PackedSequence's data, nested tuples)."""
    if isinstance(value, PackedSequence):
        return [value.data]
    if isinstance(value, Tensor):
        return [value]
    return [t for item in value for t in leaves(item)]


def clone_leaf(t: Tensor) -> Tensor:
    """A fresh leaf with the same values AND the same strides (non-contiguous stays so)."""
    copy = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device)
    return copy.copy_(t.detach()).requires_grad_(t.requires_grad)


def clone_structure(value):
    """A copy of inputs or states whose tensors are fresh leaves, so each side gets its own."""
    if value is None:
        return None
    if isinstance(value, PackedSequence):
        return PackedSequence(
            clone_leaf(value.data), value.batch_sizes, value.sorted_indices, value.unsorted_indices
        )
    if isinstance(value, Tensor):
        return clone_leaf(value)
    return tuple(clone_structure(v) for v in value)


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
    grad_targets = leaves(inputs) + (leaves(hx) if hx is not None else [])
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


def compare_modules(ours, theirs, inputs, hx=None, dtype=torch.float64, retain_graph=False):
    """Assert unrolled ``ours`` equals torch ``theirs``: outputs, states, all gradients
    (``retain_graph``: of a backward that keeps the graph and of one that then releases it),
    each within the bound of ``dtype``. A gradient torch.nn has must exist on our side; where
    torch.nn has none, ours must be absent or zero.

    Returns the largest absolute difference seen.
    """
    ours_values, ours_grads = run_and_grad(
        ours, clone_structure(inputs), clone_structure(hx), retain_graph=retain_graph
    )
    their_values, their_grads = run_and_grad(theirs, clone_structure(inputs), clone_structure(hx))
    worst = 0.0
    assert len(ours_values) == len(their_values)
    for k, (a, b) in enumerate(zip(ours_values, their_values)):
        worst = max(worst, assert_close(f"output[{k}]", a, b, dtype))
    passes = ours_grads if retain_graph else [ours_grads]
    for label, grads in zip(["kept graph, ", "released graph, "] if retain_graph else [""], passes):
        assert grads.keys() == their_grads.keys()
        for name in their_grads:
            a, b = grads[name], their_grads[name]
            if b is None:
                assert a is None or not a.abs().any(), f"grad {name}: torch has none, unrolled does"
                continue
            assert a is not None, f"{label}grad {name}: unrolled has none"
            worst = max(worst, assert_close(f"{label}grad {name}", a, b, dtype))
    return worst
