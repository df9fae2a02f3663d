"""The sample inputs and error inputs that the torch wheel itself ships for its recurrent modules
(``torch.testing._internal.common_modules.module_db``, what PyTorch's ``test_modules.py`` runs),
run against unrolled's classes built with the very same constructor arguments, on both backends:

- every sample input: outputs, final states and the gradients of every input and parameter
  equal torch.nn's (weights copied), and gradcheck with batched gradients passes (as PyTorch's
  ``test_grad``);
- every error input: the same exception type, and a message that matches torch's regex.
"""

from __future__ import annotations

import re

import pytest
import torch

import unrolled
from unrolled.tools.compare import assert_close

common_modules = pytest.importorskip("torch.testing._internal.common_modules")

TWINS = {
    torch.nn.RNN: unrolled.RNN, torch.nn.LSTM: unrolled.LSTM, torch.nn.GRU: unrolled.GRU,
    torch.nn.RNNCell: unrolled.RNNCell, torch.nn.LSTMCell: unrolled.LSTMCell,
    torch.nn.GRUCell: unrolled.GRUCell,
}  # fmt: skip
INFOS = [info for info in common_modules.module_db if info.module_cls in TWINS]
CELLS = (torch.nn.RNNCell, torch.nn.LSTMCell, torch.nn.GRUCell)


def backends_of(info):
    return ["cell"] if info.module_cls in CELLS else ["fast", "reference"]


def build(info, backend, args, kwargs):
    cls = TWINS[info.module_cls]
    return cls(*args, **kwargs) if backend == "cell" else cls(*args, backend=backend, **kwargs)


def leaves(value):
    return [t for t in torch.utils._pytree.tree_leaves(value) if isinstance(t, torch.Tensor)]


def clone(value):
    return torch.utils._pytree.tree_map(
        lambda t: (
            t.detach().clone().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t
        ),
        value,
    )


SAMPLES = [
    pytest.param(info, backend, id=f"{info.name}-{backend}")
    for info in INFOS
    for backend in backends_of(info)
]


@pytest.mark.parametrize("info,backend", SAMPLES)
def test_sample_inputs_equal_torch(info, backend):
    samples = info.module_inputs_func(
        info, device="cpu", dtype=torch.float64, requires_grad=True, training=True
    )
    assert samples, info.name
    for k, sample in enumerate(samples):
        torch.manual_seed(k)
        ctor, call = sample.constructor_input, sample.forward_input
        theirs = info.module_cls(*ctor.args, **ctor.kwargs).double()
        ours = build(info, backend, ctor.args, ctor.kwargs).double()
        ours.load_state_dict(theirs.state_dict())
        results = []
        for module in (ours, theirs):
            args, kwargs = clone(call.args), clone(call.kwargs)
            out = module(*args, **kwargs)
            values = leaves(out)
            loss = sum(
                (v * torch.linspace(-1, 1, v.numel(), dtype=v.dtype).view_as(v)).sum()
                for v in values
            )
            targets = [t for t in leaves((args, kwargs)) if t.requires_grad] + list(
                module.parameters()
            )
            grads = torch.autograd.grad(loss, targets, allow_unused=True)
            results.append(values + [g for g in grads if g is not None])
        assert len(results[0]) == len(results[1]) > len(list(ours.parameters())), f"sample {k}"
        for a, b in zip(*results):
            assert_close(f"sample {k}", a, b, torch.float64)


@pytest.mark.parametrize("info,backend", SAMPLES)
def test_gradcheck_with_batched_gradients_on_the_samples(info, backend):
    """PyTorch's test_grad: gradcheck of every sample, check_batched_grad=True."""
    samples = info.module_inputs_func(
        info, device="cpu", dtype=torch.float64, requires_grad=True, training=True
    )
    for k, sample in enumerate(samples[:: max(1, len(samples) // 6)]):  # a spread of the samples
        torch.manual_seed(k)
        ctor, call = sample.constructor_input, sample.forward_input
        module = build(info, backend, ctor.args, ctor.kwargs).double()
        params = list(module.parameters())
        flat, spec = torch.utils._pytree.tree_flatten((call.args, call.kwargs))
        tensors = [t for t in flat if isinstance(t, torch.Tensor) and t.requires_grad]

        def run(*values, module=module, flat=flat, spec=spec, tensors=tensors):
            it = iter(values[: len(tensors)])
            rebuilt = [
                next(it) if isinstance(t, torch.Tensor) and t.requires_grad else t for t in flat
            ]
            args, kwargs = torch.utils._pytree.tree_unflatten(rebuilt, spec)
            with torch.nn.utils.stateless._reparametrize_module(
                module, dict(zip([n for n, _ in module.named_parameters()], values[len(tensors) :]))
            ):
                return tuple(leaves(module(*args, **kwargs)))

        inputs = tuple(t.detach().clone().requires_grad_() for t in tensors) + tuple(
            p.detach().clone().requires_grad_() for p in params
        )
        assert torch.autograd.gradcheck(run, inputs, check_batched_grad=True, fast_mode=True)


ERRORS = [
    pytest.param(info, backend, id=f"{info.name}-{backend}")
    for info in INFOS
    if info.module_error_inputs_func is not None
    for backend in backends_of(info)
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("info,backend", ERRORS)
def test_error_inputs_raise_torchs_errors(info, backend, dtype):
    """As torch's test_errors: the module built with its float32 default, the inputs in
    ``dtype`` (in float64 a size error must still win over the dtype mismatch, as in torch)."""
    errors = info.module_error_inputs_func(
        info, device="cpu", dtype=dtype, requires_grad=False, training=True
    )
    assert errors, info.name
    for error in errors:
        ctor, call = (
            error.module_error_input.constructor_input,
            error.module_error_input.forward_input,
        )
        with pytest.raises(error.error_type) as raised:
            if error.error_on == common_modules.ModuleErrorEnum.CONSTRUCTION_ERROR:
                build(info, backend, ctor.args, ctor.kwargs)
            else:
                build(info, backend, ctor.args, ctor.kwargs)(*call.args, **call.kwargs)
        assert re.search(error.error_regex, str(raised.value)), (
            error.error_regex,
            str(raised.value),
        )
