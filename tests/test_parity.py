"""The core parity sweep: every mode and option of the layers, both backends, against torch.nn."""

from __future__ import annotations

import itertools

import pytest
import torch
from parity import compare

import unrolled

MODES = {
    "RNN_TANH": lambda *a, **k: torch.nn.RNN(*a, nonlinearity="tanh", **k),
    "RNN_RELU": lambda *a, **k: torch.nn.RNN(*a, nonlinearity="relu", **k),
    "LSTM": torch.nn.LSTM,
    "GRU": torch.nn.GRU,
}
SEQ, BATCH, INPUT, HIDDEN, PROJ = 5, 3, 4, 5, 2


def _cases():
    for mode, layers, bidir, batch_first, bias, proj, dtype, given_hx, batched in itertools.product(
        MODES, (1, 2, 3), (False, True), (False, True), (True, False), (0, PROJ),
        (torch.float32, torch.float64), (False, True), (True, False),
    ):  # fmt: skip
        if proj and mode != "LSTM":
            continue
        yield pytest.param(
            mode, layers, bidir, batch_first, bias, proj, dtype, given_hx, batched,
            id=f"{mode}-L{layers}-{'bi' if bidir else 'uni'}-{'bf' if batch_first else 'tf'}"
            f"-{'bias' if bias else 'nobias'}-P{proj}-{str(dtype)[6:]}"
            f"-{'hx' if given_hx else 'nohx'}"
            f"-{'batched' if batched else 'unbatched'}",
        )  # fmt: skip


def make_pair(mode, backend, dtype, **kwargs):
    theirs = MODES[mode](INPUT, HIDDEN, **kwargs).to(dtype)
    return unrolled.from_torch(theirs, backend=backend), theirs


def make_hx(mode, layers, bidir, batch, proj, dtype, batched):
    rows = layers * (2 if bidir else 1)
    lead = (rows, batch) if batched else (rows,)
    h = torch.randn(*lead, proj or HIDDEN, dtype=dtype, requires_grad=True)
    if mode == "LSTM":
        return h, torch.randn(*lead, HIDDEN, dtype=dtype, requires_grad=True)
    return h


@pytest.mark.parametrize("backend", ["reference", "fast"])
@pytest.mark.parametrize(
    "mode,layers,bidir,batch_first,bias,proj,dtype,given_hx,batched", list(_cases())
)
def test_layer_parity(
    backend, mode, layers, bidir, batch_first, bias, proj, dtype, given_hx, batched
):
    torch.manual_seed(hash((mode, layers, bidir, batch_first, bias, proj)) % 2**31)
    kwargs = dict(num_layers=layers, bidirectional=bidir, batch_first=batch_first, bias=bias)
    if proj:
        kwargs["proj_size"] = proj
    ours, theirs = make_pair(mode, backend, dtype, **kwargs)
    shape = (BATCH, SEQ, INPUT) if batch_first else (SEQ, BATCH, INPUT)
    if not batched:
        shape = (SEQ, INPUT)
    x = torch.randn(*shape, dtype=dtype, requires_grad=True)
    hx = make_hx(mode, layers, bidir, BATCH, proj, dtype, batched) if given_hx else None
    compare(ours, theirs, (x,), hx, dtype)
