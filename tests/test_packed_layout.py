"""The packed step-major layout of the fast backend (``unrolled.fast.layer.Steps``) and the batch
the runners take (``unrolled.packed.Sequences``): each index and conversion checked against a
plain per-sequence definition, and random packed batches through every fast runner against
torch.nn."""

from __future__ import annotations

import contextlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from parity import compare
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence, pad_sequence

import unrolled
from unrolled.fast import native
from unrolled.fast.layer import Steps
from unrolled.fast.loops.rows import previous_states
from unrolled.packed import Sequences

TORCH = {
    "RNN_TANH": lambda *a, **k: torch.nn.RNN(*a, nonlinearity="tanh", **k),
    "RNN_RELU": lambda *a, **k: torch.nn.RNN(*a, nonlinearity="relu", **k),
    "LSTM": torch.nn.LSTM,
    "GRU": torch.nn.GRU,
}
#: Lengths of a batch sorted longest first.
sorted_lengths = st.lists(st.integers(1, 7), min_size=1, max_size=6).map(
    lambda ls: sorted(ls, reverse=True)
)


def batch_sizes_of(lengths):
    return [sum(length > s for length in lengths) for s in range(max(lengths))]


def packed_row(sizes, step, row):
    return sum(sizes[:step]) + row


@settings(max_examples=60, deadline=None)
@given(lengths=sorted_lengths)
def test_steps_indices_follow_their_definitions(lengths):
    sizes = batch_sizes_of(lengths)
    steps = Steps(sizes, torch.device("cpu"))
    batch, total = len(lengths), sum(lengths)
    assert (steps.batch, steps.total, steps.num_steps) == (batch, total, max(lengths))
    assert steps.uniform == (len(set(lengths)) == 1)
    # reverse: row j at step s reads time len_j - 1 - s, and the index is its own inverse
    expected = [packed_row(sizes, lengths[j] - 1 - s, j) for s in range(len(sizes))
                for j in range(sizes[s])]  # fmt: skip
    data = torch.arange(total, dtype=torch.float64)[:, None]  # (N, 1): each row its own number
    assert steps.reverse(data).flatten().long().tolist() == expected
    assert torch.equal(steps.reverse(steps.reverse(data)), data)
    # final rows: the state after each sequence's own last step, in a (B + N) state buffer
    states = torch.arange(batch + total, dtype=torch.float64)[None, :, None]  # (1, B+N, 1)
    finals = [batch + packed_row(sizes, lengths[j] - 1, j) for j in range(batch)]
    assert steps.final(states).flatten().long().tolist() == finals


@settings(max_examples=60, deadline=None)
@given(lengths=sorted_lengths, width=st.integers(1, 4))
def test_sum_with_previous_is_the_sum_over_steps(lengths, width):
    """``sum_s d_s^T h_{s-1}``, one GEMM per run of contiguous previous states, equals the sum
    over every packed row of its gradient times the state its step started from."""
    sizes = batch_sizes_of(lengths)
    steps = Steps(sizes, torch.device("cpu"))
    batch, total = len(lengths), sum(lengths)
    d = torch.randn(total, 3, dtype=torch.float64)
    states = torch.randn(batch + total, width, dtype=torch.float64)
    previous = torch.stack([
        states[j if s == 0 else batch + packed_row(sizes, s - 1, j)]
        for s in range(len(sizes)) for j in range(sizes[s])
    ])  # fmt: skip
    torch.testing.assert_close(previous_states(states, sizes), previous, rtol=0, atol=0)
    torch.testing.assert_close(steps.sum_with_previous(d, states), d.t() @ previous)
    assert len(steps.previous_segments()) <= len(set(lengths)) + 1


def test_a_full_batch_is_one_run_and_needs_no_index():
    steps = Steps([4] * 5, torch.device("cpu"))
    assert steps.uniform and steps.previous_segments() == [(0, 0, 20)]
    assert steps.lengths is None and steps._reverse_index is None


@pytest.mark.parametrize("batch_first", [False, True])
def test_sequences_from_padded_pack_as_torch_does(batch_first):
    """Unsorted lengths are sorted once, stably, and packed by one gather: torch's
    ``pack_padded_sequence(enforce_sorted=False)`` data; the padding, whatever it holds, never
    reaches either form."""
    lengths = torch.tensor([2, 5, 1, 5, 3])
    x = torch.randn(5, 5, 4, dtype=torch.float64)
    x[3:, 0] = float("nan")  # padding of sequence 0
    x[1:, 2] = float("inf")
    order = torch.sort(lengths, descending=True, stable=True).indices
    batch = Sequences.from_padded(x, lengths[order], order)
    torch.testing.assert_close(
        batch.packed(), pack_padded_sequence(x, lengths, enforce_sorted=False).data
    )
    padded = batch.padded()  # (T, B, I) sorted, zero past each length
    assert torch.isfinite(padded).all()
    torch.testing.assert_close(padded, pad_packed_sequence(pack_padded_sequence(
        x[:, order], lengths[order]))[0])  # fmt: skip


def test_a_full_batch_is_a_view_both_ways():
    x = torch.randn(6, 3, 4)
    batch = Sequences.from_padded(x)
    assert batch.uniform and batch.packed().data_ptr() == x.data_ptr()
    packed = Sequences.from_packed(x.view(18, 4), torch.full((6,), 3))
    assert packed.uniform and packed.padded().data_ptr() == x.data_ptr()


RUNNERS = ["native", "python"]


@settings(max_examples=30, deadline=None)
@given(
    mode=st.sampled_from(list(TORCH)),
    runner=st.sampled_from(RUNNERS),
    lengths=st.lists(st.integers(1, 7), min_size=1, max_size=6),
    layers=st.integers(1, 2),
    bidirectional=st.booleans(),
    hidden=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_random_packed_batches_equal_torch(
    mode, runner, lengths, layers, bidirectional, hidden, seed
):
    """Any lengths, in any order, through the fast backend (native or Python loops): outputs,
    final states and every gradient equal torch.nn's packed path."""
    if runner == "native" and native.ops() is None:
        pytest.skip(f"native loops unavailable: {native.status()}")
    torch.manual_seed(seed)
    theirs = TORCH[mode](3, hidden, num_layers=layers, bidirectional=bidirectional).double()
    ours = unrolled.from_torch(theirs)
    padded = pad_sequence([torch.randn(n, 3, dtype=torch.float64) for n in lengths])
    packed = pack_padded_sequence(padded.requires_grad_(), lengths, enforce_sorted=False)
    with native.disabled() if runner == "python" else contextlib.nullcontext():
        compare(ours, theirs, (packed,))


@pytest.mark.parametrize("backend", ["reference", "fast"])
@pytest.mark.parametrize("mode", list(TORCH))
def test_unsorted_lengths_draw_torchs_dropout_masks(backend, mode):
    """``lengths=`` sorts the batch as ``pack_padded_sequence(enforce_sorted=False)`` does, so
    dropout between layers draws torch's masks on the same rows, on either backend."""
    torch.manual_seed(3)
    theirs = TORCH[mode](3, 4, num_layers=3, dropout=0.5, bidirectional=True).double()
    ours = unrolled.from_torch(theirs, backend=backend)
    lengths = [2, 6, 1, 4, 4]
    x = torch.randn(6, 5, 3, dtype=torch.float64)
    torch.manual_seed(7)
    out, h_n = ours(x, lengths=lengths)
    torch.manual_seed(7)
    packed_out, their_h_n = theirs(pack_padded_sequence(x, lengths, enforce_sorted=False))
    their_out, _ = pad_packed_sequence(packed_out, total_length=6)
    torch.testing.assert_close(out, their_out, rtol=0, atol=1e-12)
    torch.testing.assert_close(h_n, their_h_n, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", list(TORCH))
def test_packed_training_keeps_no_padded_rows(mode):
    """A packed batch whose sequences are mostly short (N = 70 rows against T x B = 640
    padded): what the fast layer keeps for its backward is sized by N, so it is a small
    fraction of what the same layer keeps for the full padded batch."""
    if native.ops() is None:
        pytest.skip(f"native loops unavailable: {native.status()}")
    theirs = TORCH[mode](8, 16, bidirectional=True)
    ours = unrolled.from_torch(theirs)
    lengths = [40] + [2] * 15
    padded = pad_sequence([torch.randn(n, 8) for n in lengths]).requires_grad_()  # (40, 16, 8)

    def kept(input):
        sizes = []

        def pack(tensor):
            sizes.append(tensor.numel())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            ours(input)
        return sum(sizes) - sum(p.numel() for p in ours.parameters())

    packed_elements = kept(pack_padded_sequence(padded, lengths))
    full_elements = kept(padded)
    assert packed_elements < 0.2 * full_elements, (packed_elements, full_elements)
