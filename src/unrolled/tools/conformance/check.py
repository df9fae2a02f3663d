"""Run one :class:`Case` through torch.nn and unrolled and measure how far apart they are.

Both get the same weights (copied with ``from_torch``), the same input, the same initial state
and, for dropout, the same random seed. Each side then backpropagates the same random projection
of everything it returned, and we compare: every output (``output``, ``h_n``, ``c_n``, the
PackedSequence's data and indices) and every gradient (input, initial states, each weight), each
with :func:`unrolled.tools.compare.difference` and the project's tolerance table.
"""

from __future__ import annotations

import traceback
import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import unrolled

from .. import compare
from .cases import Case

#: The dtypes cases run in, by the name a Case gives.
DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: The table's bounds for those dtypes (what reports print), read from :mod:`..compare`.
TOLERANCES = {name: compare.TOLERANCES[dtype] for name, dtype in DTYPES.items()}


@dataclass
class Result:
    """How one case went. Errors are the largest absolute differences seen."""

    case: Case
    passed: bool = True
    output_error: float = 0.0
    gradient_error: float = 0.0
    compared: int = 0  # how many tensors were compared
    problems: list[str] = field(default_factory=list)

    def fail(self, message: str) -> None:
        self.passed = False
        self.problems.append(message)

    def to_dict(self) -> dict:
        return {
            "case": self.case.to_dict(),
            "description": self.case.describe(),
            "passed": self.passed,
            "output_error": self.output_error,
            "gradient_error": self.gradient_error,
            "tensors_compared": self.compared,
            "problems": self.problems,
        }


def make_torch_module(case: Case, dtype: torch.dtype, device: str) -> nn.Module:
    """The torch.nn module a case describes, with torch's default initialisation."""
    size = (case.input_size, case.hidden_size)
    mode = case.recurrent_mode
    kwargs: dict = {"bias": case.bias}
    if mode.nonlinearity is not None:
        kwargs["nonlinearity"] = mode.nonlinearity
    if case.is_cell:
        return getattr(nn, mode.cell_class)(*size, **kwargs).to(device, dtype)
    kwargs.update(
        num_layers=case.layers,
        batch_first=case.batch_first,
        dropout=case.dropout,
        bidirectional=case.bidirectional,
    )
    if mode.has_cell_state:
        kwargs["proj_size"] = case.proj_size
    module = getattr(nn, mode.torch_class)(*size, **kwargs)
    # Dropout only acts in training mode; other cases compare the deterministic eval forward.
    return module.to(device, dtype).train(case.dropout > 0)


def _make_inputs(case: Case, dtype: torch.dtype, device: str, gen: torch.Generator):
    """``(x, hx)``: leaf tensors requiring grad, shaped for the case's input form."""

    def randn(*shape: int) -> Tensor:
        return torch.randn(shape, generator=gen, dtype=dtype).to(device).requires_grad_()

    unbatched = case.form == "unbatched"
    if case.is_cell:
        x = randn(case.input_size) if unbatched else randn(case.batch, case.input_size)
        lead: tuple[int, ...] = () if unbatched else (case.batch,)
        rows = ()
    else:
        time_batch = (case.batch, case.steps) if case.batch_first else (case.steps, case.batch)
        if unbatched:
            x = randn(case.steps, case.input_size)
        elif case.form == "non-contiguous":
            # Every other feature of a wider tensor: a strided view, not a copy.
            wide = randn(*time_batch, 2 * case.input_size)
            x = wide
        else:
            x = randn(*time_batch, case.input_size)
        rows = (case.layers * (2 if case.bidirectional else 1),)
        lead = () if unbatched else (case.batch,)
    hx = None
    if case.given_hx:
        h = randn(*rows, *lead, case.proj_size or case.hidden_size)
        c = randn(*rows, *lead, case.hidden_size) if case.recurrent_mode.has_cell_state else None
        hx = (h, c) if c is not None else h
    return x, hx


def _present(case: Case, x: Tensor) -> tuple[object, dict]:
    """What each side is called with: ``(torch_input, unrolled_kwargs_or_input)``."""
    if case.form == "non-contiguous":
        view = x[..., ::2]
        assert not view.is_contiguous()
        return view, {}
    if case.form in ("packed", "lengths"):
        packed = pack_padded_sequence(
            x, torch.tensor(case.lengths), batch_first=case.batch_first, enforce_sorted=False
        )
        if case.form == "packed":
            return packed, {}
        return packed, {"lengths": list(case.lengths)}
    return x, {}


def _forward(case: Case, module: nn.Module, x: Tensor, hx, *, ours: bool) -> list[Tensor]:
    """Run one side and return its outputs as a flat list of tensors in a common layout."""
    torch_input, extra = _present(case, x)
    if ours and "lengths" in extra:
        call_input = x  # unrolled takes the padded tensor and the lengths directly
    else:
        call_input, extra = torch_input, {}
    if case.dropout:
        torch.manual_seed(case.seed)  # the same masks on both sides
    out = module(call_input, hx, **extra) if hx is not None else module(call_input, **extra)
    if case.form == "lengths" and not ours:
        output, rest = out
        padded, _ = pad_packed_sequence(
            output, batch_first=case.batch_first, total_length=case.steps
        )
        return [padded] + compare.leaves(rest)
    if isinstance(out, tuple) and isinstance(out[0], PackedSequence):
        packed = out[0]
        indices = [packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices]
        return [packed.data] + compare.leaves(out[1:]) + [i.to(packed.data.device) for i in indices]
    return compare.leaves(out)


def _gradients(module: nn.Module, values: list[Tensor], leaves: list[Tensor], seed: int):
    """Gradients of ``sum(value * random)`` over the floating outputs, w.r.t. leaves + params."""
    gen = torch.Generator().manual_seed(seed + 1)
    floating = [v for v in values if v.is_floating_point()]
    loss = sum(
        (v * torch.randn(v.shape, generator=gen, dtype=v.dtype).to(v.device)).sum()
        for v in floating
    )
    inputs = (
        ["input", "h_0", "c_0"] if len(leaves) <= 3 else [f"input[{k}]" for k in range(len(leaves))]
    )
    names = inputs[: len(leaves)] + [n for n, _ in module.named_parameters()]
    targets = leaves + list(module.parameters())
    return dict(zip(names, torch.autograd.grad(loss, targets, allow_unused=True)))


def _compare(result: Result, name: str, got: Tensor, expected: Tensor) -> float:
    """Compare one tensor within the case's dtype's bound; record a failure; return the error."""
    result.compared += 1
    found = compare.difference(name, got, expected, result.case.dtype)
    if not found.passed:
        result.fail(found.problem)
    return found.error


def _output_names(case: Case) -> list[str]:
    """What the flat list of returned tensors holds, in order."""
    lstm = case.recurrent_mode.has_cell_state
    if case.is_cell:
        return ["h'", "c'"] if lstm else ["h'"]
    names = ["output.data" if case.form == "packed" else "output", "h_n"]
    names += ["c_n"] if lstm else []
    if case.form == "packed":
        names += ["output.batch_sizes", "output.sorted_indices", "output.unsorted_indices"]
    return names


def run_case(case: Case, device: str = "cpu") -> Result:
    """Check one case; never raises for a mismatch or an exception inside unrolled."""
    result = Result(case)
    dtype = DTYPES[case.dtype]
    try:
        torch.manual_seed(case.seed)
        theirs = make_torch_module(case, dtype, device)
        if case.is_cell:
            ours = unrolled.from_torch(theirs)
        else:
            ours = unrolled.from_torch(theirs, backend=case.backend)
        gen = torch.Generator().manual_seed(case.seed)
        x, hx = _make_inputs(case, dtype, device, gen)
        leaves = [x] + compare.leaves(hx if hx is not None else [])

        def side(module, ours_side):
            x_side = x.detach().clone().requires_grad_()
            hx_side = None
            if hx is not None:
                hx_side = tuple(h.detach().clone().requires_grad_() for h in compare.leaves(hx))
                hx_side = hx_side if isinstance(hx, tuple) else hx_side[0]
            values = _forward(case, module, x_side, hx_side, ours=ours_side)
            leaves_side = [x_side] + compare.leaves(hx_side if hx_side is not None else [])
            return values, _gradients(module, values, leaves_side, case.seed)

        with warnings.catch_warnings():
            # torch's notes (no oneDNN for projections, dropout with one layer) are not findings.
            warnings.simplefilter("ignore", UserWarning)
            expected, expected_grads = side(theirs, False)
            got, got_grads = side(ours, True)
        assert len(leaves) + len(list(theirs.parameters())) == len(expected_grads)
    except Exception as error:  # a crash is a failure of the case, reported with its cause
        last = traceback.extract_tb(error.__traceback__)[-1]
        result.fail(f"raised {type(error).__name__}: {error} ({last.filename}:{last.lineno})")
        result.output_error = result.gradient_error = float("inf")
        return result

    if len(got) != len(expected):
        result.fail(f"returned {len(got)} tensors, torch.nn returned {len(expected)}")
    names = _output_names(case)
    for k, (a, b) in enumerate(zip(got, expected)):
        name = names[k] if k < len(names) else f"returned[{k}]"
        result.output_error = max(result.output_error, _compare(result, name, a, b))
    for name, b in expected_grads.items():
        a = got_grads.get(name)
        if b is None or a is None:
            if (a is None) != (b is None) and (a if b is None else b).abs().any():
                owner = "unrolled" if b is None else "torch.nn"
                result.fail(f"grad {name}: only {owner} has a (nonzero) gradient")
            continue
        error = _compare(result, f"grad {name}", a, b)
        result.gradient_error = max(result.gradient_error, error)
    return result
