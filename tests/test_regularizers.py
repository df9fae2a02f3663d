"""Recurrent dropout and zoneout on the built-in LSTM and GRU: exactly torch at 0, training-only
randomness, deterministic evaluation, one recurrent mask per sequence, and a plain
implementation (written here) fed the very masks the module drew."""

from __future__ import annotations

import contextlib
import itertools

import pytest
import torch
from parity import compare
from torch import nn

import unrolled
from unrolled import regularizers

T, B, I, H, P = 6, 4, 3, 5, 2
F64 = torch.float64


def pair(kind, **options):
    torch.manual_seed(0)
    proj = {"proj_size": P} if kind == "LSTM-proj" else {}
    theirs = (nn.GRU if kind == "GRU" else nn.LSTM)(I, H, 2, **proj).to(F64)
    cls = unrolled.GRU if kind == "GRU" else unrolled.LSTM
    ours = cls(I, H, 2, dtype=F64, **proj, **options)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs


KINDS = ["LSTM", "LSTM-proj", "GRU"]


@pytest.mark.parametrize("kind,training,backend", list(itertools.product(
    KINDS, (False, True), ("reference", "fast"))))  # fmt: skip
def test_zero_rates_are_exactly_torch(kind, training, backend):
    ours, theirs = pair(kind, recurrent_dropout=0.0, zoneout=0.0, backend=backend)
    ours.train(training), theirs.train(training)
    x = torch.randn(T, B, I, dtype=F64, requires_grad=True)
    compare(ours, theirs, (x,), None, F64)


@pytest.mark.parametrize("kind", KINDS)
def test_recurrent_dropout_is_training_only(kind):
    ours, theirs = pair(kind, recurrent_dropout=0.5)
    x = torch.randn(T, B, I, dtype=F64, requires_grad=True)
    ours.eval(), theirs.eval()
    compare(ours, theirs, (x,), None, F64)  # evaluation: no dropout at all, exactly torch
    ours.train()
    torch.manual_seed(1)
    first = ours(x)[0]
    torch.manual_seed(2)
    assert not torch.allclose(first, ours(x)[0])  # a new mask per call
    assert not torch.allclose(first, theirs(x)[0])


@pytest.mark.parametrize("kind", KINDS)
def test_zoneout_training_random_eval_deterministic(kind):
    ours, theirs = pair(kind, zoneout=0.4)
    x = torch.randn(T, B, I, dtype=F64)
    ours.train()
    torch.manual_seed(1)
    a = ours(x)[0]
    torch.manual_seed(2)
    assert not torch.allclose(a, ours(x)[0])
    ours.eval()
    torch.manual_seed(3)
    e1 = ours(x)[0]
    torch.manual_seed(4)
    torch.testing.assert_close(e1, ours(x)[0], atol=0, rtol=0)
    assert not torch.allclose(e1, theirs.eval()(x)[0])  # the expectation, not torch's step


def test_both_backends_read_the_same_draws():
    """The call's masks are drawn up front, once, for whichever backend runs: the same seed
    gives the same numbers (tests/test_regularized_fast.py compares every gradient too)."""
    outputs = []
    for backend in ("reference", "fast"):
        ours, _ = pair("LSTM", recurrent_dropout=0.3, zoneout=(0.2, 0.5), backend=backend)
        torch.manual_seed(5)
        x = torch.randn(T, B, I, dtype=F64)
        torch.manual_seed(6)
        outputs.append(ours.train()(x)[0])
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-12, rtol=1e-12)


# ---- a plain implementation fed the module's own masks ---------------------------------------


def plain_regularized(kind, module, x, recurrent_masks, zoneout_masks, rates, training):
    """Layer by layer, step by step, from the equations in unrolled.regularizers' docstring.

    ``recurrent_masks``: one ``(B, P)`` mask per layer (already scaled by 1/(1-p)), or None.
    ``zoneout_masks``: the ``(T, B, X)`` keep masks in the order drawn (per layer: h's, then,
    for the LSTM, c's).
    """
    p_h, p_c = rates
    zoneout_masks = list(zoneout_masks)

    def zone(previous, new, p, masks, t):
        if not p:
            return new
        if training:
            keep = masks[t].to(new.dtype)
            return keep * previous + (1 - keep) * new
        return p * previous + (1 - p) * new

    layer_input = x
    for layer in range(module.num_layers):
        take = training and p_h > 0
        masks_h = zoneout_masks.pop(0) if take else None  # (T, B, P)
        take = training and kind != "GRU" and p_c > 0
        masks_c = zoneout_masks.pop(0) if take else None  # (T, B, H)
        w_ih, w_hh = getattr(module, f"weight_ih_l{layer}"), getattr(module, f"weight_hh_l{layer}")
        b_ih, b_hh = getattr(module, f"bias_ih_l{layer}"), getattr(module, f"bias_hh_l{layer}")
        w_hr = getattr(module, f"weight_hr_l{layer}", None)
        mask = recurrent_masks[layer] if recurrent_masks else 1.0  # (B, P): one per sequence
        h = torch.zeros(x.shape[1], w_hh.shape[1], dtype=x.dtype)
        c = torch.zeros(x.shape[1], H, dtype=x.dtype)
        outputs = []
        for t in range(x.shape[0]):
            gates_x = layer_input[t] @ w_ih.T + b_ih
            gates_h = (h * mask) @ w_hh.T + b_hh
            if kind == "GRU":
                r = torch.sigmoid(gates_x[:, :H] + gates_h[:, :H])
                z = torch.sigmoid(gates_x[:, H : 2 * H] + gates_h[:, H : 2 * H])
                n = torch.tanh(gates_x[:, 2 * H :] + r * gates_h[:, 2 * H :])
                h = zone(h, (1 - z) * n + z * h, p_h, masks_h, t)
            else:
                g = gates_x + gates_h
                i, f = torch.sigmoid(g[:, :H]), torch.sigmoid(g[:, H : 2 * H])
                cand, o = torch.tanh(g[:, 2 * H : 3 * H]), torch.sigmoid(g[:, 3 * H :])
                new_c = f * c + i * cand
                new_h = o * torch.tanh(new_c)
                if w_hr is not None:
                    new_h = new_h @ w_hr.T
                h = zone(h, new_h, p_h, masks_h, t)
                c = zone(c, new_c, p_c, masks_c, t)
            outputs.append(h)
        layer_input = torch.stack(outputs)
    assert not zoneout_masks, "the module drew more masks than the equations use"
    return layer_input


@pytest.fixture
def recorded(monkeypatch):
    """Record every mask the module draws."""
    drawn = {"recurrent": [], "zoneout": []}
    sample_recurrent, sample_zoneout = (
        regularizers.sample_recurrent_mask, regularizers.sample_zoneout_mask
    )  # fmt: skip

    def record_recurrent(*args):
        drawn["recurrent"].append(sample_recurrent(*args))
        return drawn["recurrent"][-1]

    def record_zoneout(*args):
        drawn["zoneout"].append(sample_zoneout(*args))
        return drawn["zoneout"][-1]

    monkeypatch.setattr(regularizers, "sample_recurrent_mask", record_recurrent)
    monkeypatch.setattr(regularizers, "sample_zoneout_mask", record_zoneout)
    return drawn


OPTIONS = [
    dict(recurrent_dropout=0.5),
    dict(zoneout=0.3),
    dict(zoneout=(0.1, 0.6)),
    dict(recurrent_dropout=0.3, zoneout=(0.4, 0.2)),
    dict(recurrent_dropout=1.0),
    dict(zoneout=(0.0, 0.5)),
]


@pytest.mark.parametrize("kind,options,training", [
    (kind, options, training)
    for kind, options, training in itertools.product(KINDS, OPTIONS, (True, False))
    if kind != "GRU" or not isinstance(options.get("zoneout"), tuple)
])  # fmt: skip
def test_equals_plain_implementation_with_the_drawn_masks(recorded, kind, options, training):
    ours, _ = pair(kind, **options)
    ours.train(training)
    x = torch.randn(T, B, I, dtype=F64)
    torch.manual_seed(11)
    out, _ = ours(x)
    rates = ours._zoneout_rates
    masks = recorded["recurrent"]
    if training and options.get("recurrent_dropout"):
        # One mask per sequence and layer-direction, drawn once per call: (B, P), no time dim.
        state_size = P if kind == "LSTM-proj" else H
        assert len(masks) == 2 and all(m.shape == (B, state_size) for m in masks)
    else:
        assert masks == []
    drawn = recorded["zoneout"]  # one (T, B, X) mask per layer and zoned-out state
    expected_draws = 2 * ((rates[0] > 0) + (kind != "GRU" and rates[1] > 0))
    assert len(drawn) == (expected_draws if training else 0)
    assert all(m.shape[:2] == (T, B) for m in drawn)
    want = plain_regularized(kind, ours, x, masks, recorded["zoneout"], rates, training)
    torch.testing.assert_close(out, want, atol=1e-12, rtol=1e-10)


def test_recurrent_mask_statistics():
    """Masks differ between sequences, hold 0 or 1/(1-p), and keep about 1-p of the units."""
    torch.manual_seed(12)
    like = torch.zeros((), dtype=F64)
    mask = regularizers.sample_recurrent_mask(400, 50, 0.25, like)
    assert set(mask.unique().tolist()) <= {0.0, 1 / 0.75}
    assert abs((mask > 0).double().mean().item() - 0.75) < 0.02
    assert not torch.equal(mask[0], mask[1])


@pytest.mark.parametrize("kind", KINDS)
def test_recurrent_mask_constant_across_time(recorded, kind):
    """With one sequence, a unit dropped from the recurrent input at any step leaves its
    ``weight_hh`` column without gradient; the columns without gradient are exactly the units
    the one drawn mask drops (a mask redrawn per step would drop a unit at all T steps with
    probability p^T only)."""
    torch.manual_seed(13)
    cls = unrolled.GRU if kind == "GRU" else unrolled.LSTM
    proj = {"proj_size": P + 2} if kind == "LSTM-proj" else {}
    model = cls(I, 8, recurrent_dropout=0.5, dtype=F64, **proj).train()
    x = torch.randn(T, 1, I, dtype=F64)
    state_size = 4 if proj else 8
    h0 = torch.randn(1, 1, state_size, dtype=F64)
    hx = (h0, torch.randn(1, 1, 8, dtype=F64)) if kind != "GRU" else h0
    out, _ = model(x, hx)
    (grad,) = torch.autograd.grad(out.sum(), model.weight_hh_l0)  # (G*H, P)
    (mask,) = recorded["recurrent"]  # (1, P)
    no_gradient = (grad == 0).all(dim=0)  # (P,)
    assert torch.equal(no_gradient, mask[0] == 0)
    assert no_gradient.any() and not no_gradient.all()


def test_bad_arguments():
    for value in (-0.1, 1.5, "0.5", True, None):
        with pytest.raises(ValueError, match="recurrent_dropout should be a number in range"):
            unrolled.LSTM(I, H, recurrent_dropout=value)
        with pytest.raises(ValueError, match="zoneout should be a number in range"):
            unrolled.GRU(I, H, zoneout=value)
    with pytest.raises(ValueError, match="zoneout should be a number"):
        unrolled.GRU(I, H, zoneout=(0.1, 0.2))
    with pytest.raises(ValueError, match=r"pair \(p_h, p_c\), got 3 values"):
        unrolled.LSTM(I, H, zoneout=(0.1, 0.2, 0.3))
    with pytest.raises(ValueError, match=r"zoneout\[1\] should be a number in range"):
        unrolled.LSTM(I, H, zoneout=(0.1, 2.0))
    with pytest.raises(TypeError):
        unrolled.RNN(I, H, zoneout=0.1)


def test_repr_mentions_options():
    text = repr(unrolled.LSTM(I, H, recurrent_dropout=0.25, zoneout=(0.1, 0.5)))
    assert "recurrent_dropout=0.25" in text and "zoneout=(0.1, 0.5)" in text
    assert "zoneout" not in repr(unrolled.GRU(I, H))


def test_to_torch_warns_that_the_options_are_dropped():
    with pytest.warns(UserWarning, match="no recurrent_dropout or zoneout"):
        twin = unrolled.GRU(I, H, zoneout=0.2).to_torch()
    assert isinstance(twin, nn.GRU)


# ---- zoneout's keep masks (unrolled.random_masks) -------------------------------------------


def test_keep_masks_native_and_torch_ops_give_the_same_bits():
    from unrolled import random_masks
    from unrolled.fast import native

    kernels = native.ops()
    if kernels is None:
        pytest.skip(f"native loops unavailable: {native.status()}")
    for p, seeds, dtype in [(0.1, (1, 2), F64), (0.5, (2**32 - 1, 0), torch.float32),
                            (0.0, (7, 7), F64), (1.0, (3, 9), F64)]:  # fmt: skip
        got = kernels.keep_mask(*seeds, [5, 3, 701], random_masks.threshold(p), dtype)
        bits = random_masks.hash_bits(got.numel(), *seeds)
        want = (bits < random_masks.threshold(p)).to(dtype).view(got.shape)
        assert torch.equal(got, want), (p, seeds)


@pytest.mark.parametrize("use_native", [True, False])
def test_keep_mask_statistics(use_native):
    """Each element is 1 with probability p, independently of its neighbours and of the other
    masks; torch.manual_seed reproduces a mask."""
    from unrolled import random_masks
    from unrolled.fast import native

    like = torch.zeros((), dtype=F64)
    with contextlib.nullcontext() if use_native else native.disabled():
        torch.manual_seed(21)
        first = random_masks.keep_mask((400, 500), 0.3, like)
        second = random_masks.keep_mask((400, 500), 0.3, like)
        torch.manual_seed(21)
        again = random_masks.keep_mask((400, 500), 0.3, like)
    assert torch.equal(first, again) and not torch.equal(first, second)
    assert set(first.unique().tolist()) == {0.0, 1.0}
    n = first.numel()  # 200k draws: the mean is within 5 standard deviations of p
    assert abs(first.mean().item() - 0.3) < 5 * (0.3 * 0.7 / n) ** 0.5
    flat = first.flatten()
    for a, b in [(flat[1:], flat[:-1]), (flat[500:], flat[:-500]), (flat, second.flatten())]:
        assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1].item()) < 5 / n**0.5
