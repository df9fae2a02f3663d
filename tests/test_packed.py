"""Variable-length input: PackedSequence parity with torch.nn, and `lengths=` on padded input."""

from __future__ import annotations

import itertools

import pytest
import torch
from parity import compare
from torch.nn.utils.rnn import pack_padded_sequence, pad_sequence

import unrolled
from unrolled.packed import packed_to_padded, padded_to_packed
from unrolled.tools.compare import assert_close

TORCH = {
    "RNN_TANH": lambda *a, **k: torch.nn.RNN(*a, nonlinearity="tanh", **k),
    "RNN_RELU": lambda *a, **k: torch.nn.RNN(*a, nonlinearity="relu", **k),
    "LSTM": torch.nn.LSTM,
    "GRU": torch.nn.GRU,
}
LENGTHS = {
    "uneven": [7, 5, 5, 2, 1, 1],
    "unsorted": [2, 7, 1, 5, 1, 5],
    "equal": [4, 4, 4],
    "single": [6],
    "ones": [1, 1],
}
INPUT, HIDDEN = 3, 5


def _packed(lengths, dtype, enforce_sorted):
    seqs = [torch.randn(n, INPUT, dtype=dtype) for n in lengths]
    padded = pad_sequence(seqs)  # (T, B, I)
    padded.requires_grad_(True)
    return pack_padded_sequence(padded, lengths, enforce_sorted=enforce_sorted)


def _cases():
    for mode, lengths, layers, bidir, proj, dtype, given_hx in itertools.product(
        TORCH, LENGTHS, (1, 2), (False, True), (0, 2), (torch.float64, torch.float32), (False, True)
    ):
        if proj and mode != "LSTM":
            continue
        if dtype == torch.float32 and (layers == 1 or given_hx):
            continue  # float32: a representative slice
        yield mode, lengths, layers, bidir, proj, dtype, given_hx


@pytest.mark.parametrize("backend", ["reference", "fast"])
@pytest.mark.parametrize("mode,lengths,layers,bidir,proj,dtype,given_hx", list(_cases()))
def test_packed_parity(backend, mode, lengths, layers, bidir, proj, dtype, given_hx):
    torch.manual_seed(len(lengths) * 7 + layers)
    kwargs = dict(num_layers=layers, bidirectional=bidir)
    if proj:
        kwargs["proj_size"] = proj
    theirs = TORCH[mode](INPUT, HIDDEN, **kwargs).to(dtype)
    ours = unrolled.from_torch(theirs, backend=backend)
    sizes = LENGTHS[lengths]
    packed = _packed(sizes, dtype, enforce_sorted=lengths not in ("unsorted",))
    hx = None
    if given_hx:
        rows = layers * (2 if bidir else 1)
        h = torch.randn(rows, len(sizes), proj or HIDDEN, dtype=dtype, requires_grad=True)
        hx = (
            (h, torch.randn(rows, len(sizes), HIDDEN, dtype=dtype, requires_grad=True))
            if mode == "LSTM"
            else h
        )
    compare(ours, theirs, (packed,), hx, dtype)


@pytest.mark.parametrize("backend", ["reference", "fast"])
def test_packed_output_metadata(backend):
    theirs = torch.nn.GRU(INPUT, HIDDEN, bidirectional=True)
    ours = unrolled.from_torch(theirs, backend=backend)
    packed = _packed(LENGTHS["unsorted"], torch.float32, enforce_sorted=False)
    out, _ = ours(packed)
    expected, _ = theirs(packed)
    assert torch.equal(out.batch_sizes, expected.batch_sizes)
    assert torch.equal(out.sorted_indices, expected.sorted_indices)
    assert torch.equal(out.unsorted_indices, expected.unsorted_indices)


@pytest.mark.parametrize("backend", ["reference", "fast"])
@pytest.mark.parametrize("mode", list(TORCH))
@pytest.mark.parametrize("batch_first", [False, True])
def test_lengths_equal_each_sequence_alone(backend, mode, batch_first):
    """Padded input with lengths= gives, per sequence, what that sequence gives alone."""
    torch.manual_seed(5)
    kwargs = dict(num_layers=2, bidirectional=True, batch_first=batch_first)
    if mode == "LSTM":
        kwargs["proj_size"] = 2
    theirs = TORCH[mode](INPUT, HIDDEN, **kwargs).double()
    ours = unrolled.from_torch(theirs, backend=backend)
    lengths = [2, 7, 1, 5, 5]
    seqs = [torch.randn(n, INPUT, dtype=torch.float64) for n in lengths]
    padded = pad_sequence(seqs, batch_first=batch_first)
    # Garbage (even NaN) in the padding must not leak anywhere.
    mask = torch.ones_like(padded, dtype=torch.bool)
    for b, n in enumerate(lengths):
        (mask[b, :n] if batch_first else mask[:n, b]).fill_(False)
    padded = padded.masked_fill(mask, float("nan")).requires_grad_(True)
    out, state = ours(padded, lengths=torch.tensor(lengths))
    loss = out.nan_to_num().sum() + sum(s.sum() for s in (state if mode == "LSTM" else [state]))
    (grad,) = torch.autograd.grad(loss, padded)
    assert not grad.isnan().any() and not grad.masked_select(mask).any()
    for b, n in enumerate(lengths):
        alone_out, alone_state = theirs(seqs[b].unsqueeze(0 if batch_first else 1))
        got = out[b, :n] if batch_first else out[:n, b]
        assert_close(f"output[{b}]", got, alone_out.squeeze(0 if batch_first else 1), torch.float64)
        pad = out[b, n:] if batch_first else out[n:, b]
        assert torch.equal(pad, torch.zeros_like(pad))
        states = zip(state, alone_state) if mode == "LSTM" else [(state, alone_state)]
        for s, e in states:
            assert_close(f"state[:, {b}]", s[:, b], e[:, 0], torch.float64)


@pytest.mark.parametrize("backend", ["reference", "fast"])
def test_lengths_full_is_plain_forward(backend):
    m = unrolled.LSTM(INPUT, HIDDEN, num_layers=2, bidirectional=True, backend=backend).double()
    x = torch.randn(6, 3, INPUT, dtype=torch.float64)
    a, (h, c) = m(x)
    b, (h2, c2) = m(x, lengths=[6, 6, 6])
    for p, q in [(a, b), (h, h2), (c, c2)]:
        torch.testing.assert_close(p, q, atol=1e-12, rtol=0)


def test_pack_unpack_roundtrip_and_gradient():
    lengths = [7, 5, 5, 2, 1, 1]
    packed = _packed(lengths, torch.float64, enforce_sorted=True)
    padded, got_lengths = packed_to_padded(packed.data, packed.batch_sizes)
    assert got_lengths.tolist() == lengths
    expected, _ = torch.nn.utils.rnn.pad_packed_sequence(packed)
    assert torch.equal(padded, expected)
    assert torch.equal(padded_to_packed(padded, packed.batch_sizes), packed.data)
    assert torch.autograd.gradcheck(
        lambda d: packed_to_padded(d, packed.batch_sizes)[0], packed.data.detach().requires_grad_()
    )


@pytest.mark.parametrize("backend", ["reference", "fast"])
@pytest.mark.parametrize("mode", list(TORCH))
@pytest.mark.parametrize("lengths", ["uneven", "unsorted"])
def test_packed_dropout_uses_torch_masks(backend, mode, lengths):
    """Dropout between layers on packed input draws torch's masks (torch drops packed rows)."""
    torch.manual_seed(11)
    theirs = TORCH[mode](INPUT, HIDDEN, num_layers=3, dropout=0.5, bidirectional=True).double()
    ours = unrolled.from_torch(theirs, backend=backend)
    packed = _packed(LENGTHS[lengths], torch.float64, enforce_sorted=lengths == "uneven")

    def seeded(module):
        def call(*args):
            torch.manual_seed(7)
            return module(*args)

        call.parameters, call.named_parameters = module.parameters, module.named_parameters
        return call

    compare(seeded(ours), seeded(theirs), (packed,), None)
