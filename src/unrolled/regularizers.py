r"""Recurrent dropout and zoneout for the built-in ``LSTM`` and ``GRU``, beyond torch.nn.

Both change the step. The module draws a call's masks once, up front (:func:`draw_masks`), and
hands them to whichever loop runs: the fast backend's loops (native and Python; the BLAS loop,
not the fused engine, and not with ``proj_size``), or the reference path (``stack`` and ``scan``
with :class:`RegularizedCell` below) with ``backend="reference"``, with ``proj_size``, in other
dtypes or under a graph capture. The same seed gives the same numbers on every path. With both
at 0 nothing here runs and the modules stay exactly torch's.

**Recurrent dropout** (variational, Gal & Ghahramani 2016, "A Theoretically Grounded Application
of Dropout in Recurrent Neural Networks"): in training mode one Bernoulli mask ``m`` per sequence
and per layer-direction, drawn once per ``forward`` call and shared by all time steps and all
gates, drops units of the state *on its way into* ``W_hh``, scaled by ``1/(1-p)`` as
``F.dropout`` does so that evaluation needs no rescaling::

    LSTM:  gates = W_ih x + b_ih + W_hh (h * m / (1-p)) + b_hh        (c is not dropped)
    GRU:   r, z, n read W_hh (h * m / (1-p)) + b_hh; the carry z * h uses the undropped h

For an LSTM with ``proj_size`` the mask has ``P`` units. Evaluation mode: no dropout at all.
Only the recurrent connection is dropped; dropout on the inputs and between layers stays
``dropout=``'s job.

**Zoneout** (Krueger et al. 2016, "Zoneout: Regularizing RNNs by Randomly Preserving Hidden
Activations"): in training mode each unit keeps its previous value with probability ``p``, a
fresh mask ``d_t`` at every step::

    h_t = d_t * h_{t-1} + (1 - d_t) * h~_t       (h~_t: the ordinary cell update)

For the LSTM it applies to ``h`` and ``c`` with separate masks and rates ``(p_h, p_c)`` as in the
paper (which reports its best character-level results with ``p_c = 0.5, p_h = 0.05``);
``zoneout=p`` means ``p_h = p_c = p``. As in the paper's equations, the candidate ``h~_t =
o_t * tanh(c~_t)`` is computed from the cell update ``c~_t = f_t c_{t-1} + i_t g_t`` before
zoneout, and the next step's gates read the zoned-out ``h_t``, ``c_t``::

    c_t = d^c_t * c_{t-1} + (1 - d^c_t) * c~_t
    h_t = d^h_t * h_{t-1} + (1 - d^h_t) * o_t * tanh(c~_t)

With ``proj_size`` the zoned-out ``h`` is the projected one. The output at step ``t`` is the
zoned-out ``h_t`` (the state the next step reads, so that ``output[-1] == h_n`` as in torch; the
authors' TensorFlow wrapper returns the un-zoned ``h~_t`` as output instead). Evaluation mode is
deterministic and uses the expectation over the mask, ``h_t = p h_{t-1} + (1 - p) h~_t``
(likewise for ``c``), as the authors' reference implementation does at test time; so a module
with zoneout > 0 differs from torch.nn in eval mode too, by design.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from . import cells, random_masks
from .builtin import BuiltinCell
from .scan import State
from .weights import LayerWeights


def check_rate(name: str, value: object) -> float:
    """A probability in [0, 1], checked like torch checks ``dropout``."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0 <= value <= 1:
        raise ValueError(
            f"{name} should be a number in range [0, 1] representing a probability, "
            f"got {name}={value!r}"
        )
    return float(value)


def check_zoneout(mode: str, zoneout: object) -> tuple[float, float]:
    """``zoneout`` -> ``(p_h, p_c)``; the LSTM also takes a pair, the GRU one number."""
    if mode == "LSTM" and isinstance(zoneout, (tuple, list)):
        if len(zoneout) != 2:
            raise ValueError(
                f"zoneout should be a number or a pair (p_h, p_c), got {len(zoneout)} values"
            )
        return check_rate("zoneout[0]", zoneout[0]), check_rate("zoneout[1]", zoneout[1])
    rate = check_rate("zoneout", zoneout)
    return rate, rate


def sample_recurrent_mask(batch: int, size: int, p: float, like: Tensor) -> Tensor:
    """``(B, size)`` mask, ``0`` with probability ``p`` else ``1/(1-p)``."""
    if p >= 1:
        return like.new_zeros(batch, size)
    kept = torch.bernoulli(like.new_full((batch, size), 1 - p))  # (B, size): 1 = unit kept
    return kept / (1 - p)


def sample_zoneout_mask(shape: tuple[int, ...], p: float, like: Tensor) -> Tensor:
    """``shape`` of ``like``'s dtype: ``1`` (keep the previous value) with probability ``p``,
    else ``0`` (:func:`unrolled.random_masks.keep_mask`: a counter-based hash, seeded from
    torch's generator)."""
    return random_masks.keep_mask(shape, p, like)


class LayerMasks(NamedTuple):
    """One call's random draws for one layer-direction, in time order (row ``b`` of the batch
    the layer runs, step ``t`` of the sequence, whichever direction reads it).

    A zoneout entry is the weight ``d`` of the previous value, ``h_t = d h_{t-1} + (1 - d)
    h~_t``: a ``(T, B, X)`` tensor of 0 and 1 in training, the rate ``p`` itself (a float) in
    evaluation, ``0.0`` where that state has no zoneout.
    """

    recurrent: Tensor | None  # (B, P), 0 or 1/(1-p); None: no recurrent dropout
    zone_h: Tensor | float  # (T, B, P) or p
    zone_c: Tensor | float  # (T, B, H) or p; 0.0 for the GRU

    def zone_at(self, which: str, t: int) -> Tensor | float:
        """The zoneout weight of ``h`` or ``c`` at time ``t``: ``(B, X)`` or a float."""
        zone = self.zone_h if which == "h" else self.zone_c
        return zone[t] if isinstance(zone, Tensor) else zone


def draw_masks(
    mode: str,
    weights: Sequence[LayerWeights],
    num_steps: int,
    batch: int,
    like: Tensor,
    *,
    recurrent_dropout: float,
    zoneout: tuple[float, float],
    training: bool,
) -> list[LayerMasks]:
    """Every random draw of one call, up front, one :class:`LayerMasks` per layer-direction
    (row ``l * D + d``), in this order: its recurrent mask, then ``h``'s zoneout masks for all
    steps, then ``c``'s. The reference loop and the fast loops read the same draws, so the two
    backends give the same numbers for the same seed."""
    p_h, p_c = zoneout if mode == "LSTM" else (zoneout[0], 0.0)
    made = []
    for w in weights:
        state_size = w.w_hh.shape[1]  # weight_hh (G*H, P)
        hidden = state_size if w.w_hr is None else w.w_hr.shape[1]  # weight_hr (P, H)
        recurrent = None
        if training and recurrent_dropout > 0:
            recurrent = sample_recurrent_mask(batch, state_size, recurrent_dropout, like)
        zones = []
        for p, size in ((p_h, state_size), (p_c, hidden)):
            if training and p > 0:
                zones.append(sample_zoneout_mask((num_steps, batch, size), p, like))
            else:
                zones.append(float(p))  # evaluation: the expectation; 0.0: none
        made.append(LayerMasks(recurrent, *zones))
    return made


def zoneout(previous: Tensor, update: Tensor, keep: Tensor | float) -> Tensor:
    """``keep * previous + (1 - keep) * update``: ``keep`` is 0 or 1 per unit in training
    (exactly one of the two values), the rate ``p`` in evaluation (the expectation)."""
    if isinstance(keep, float) and keep == 0:
        return update
    return keep * previous + (1 - keep) * update


@dataclass
class RegularizedCell(BuiltinCell):
    """A built-in LSTM/GRU layer-direction with recurrent dropout and zoneout: the same update
    (:meth:`BuiltinCell.update`), with the recurrent part read from the dropped-out state and
    zoneout applied to the new state.

    ``masks`` are the call's draws (:func:`draw_masks`): the cell reads step ``t``'s zoneout
    weights at its ``t``-th call, ``T - 1 - t``-th in ``reverse``. Without ``masks`` (streaming,
    one step at a time) it draws a fresh zoneout mask at every step in training, as the call's
    masks would have been.
    """

    masks: LayerMasks | None = None
    zoneout: tuple[float, float] = (0.0, 0.0)  # (p_h, p_c), when there are no masks
    training: bool = False
    reverse: bool = False
    calls: int = 0

    def weights_at_step(self, like: Tensor) -> LayerMasks:
        """This step's :class:`LayerMasks`, zoneout entries ``(B, X)`` or floats."""
        if self.masks is not None:
            zones = self.masks.zone_h, self.masks.zone_c
            num_steps = next((z.shape[0] for z in zones if isinstance(z, Tensor)), 0)
            t = num_steps - 1 - self.calls if self.reverse else self.calls
            self.calls += 1
            return LayerMasks(
                self.masks.recurrent, self.masks.zone_at("h", t), self.masks.zone_at("c", t)
            )
        drawn = draw_masks(
            self.mode, [self.weights], 1, like.shape[0], like, recurrent_dropout=0.0,
            zoneout=self.zoneout, training=self.training,
        )[0]  # fmt: skip
        return LayerMasks(None, drawn.zone_at("h", 0), drawn.zone_at("c", 0))

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        w = self.weights
        lstm = self.mode == "LSTM"
        h = state[0] if lstm else state
        masks = self.weights_at_step(h)
        h_recurrent = h if masks.recurrent is None else h * masks.recurrent  # (B, P)
        xw = cells.input_part(x_t, w.w_ih, w.b_ih)  # (B, G*H)
        hw = cells.recurrent_part(h_recurrent, w.w_hh, w.b_hh)  # (B, G*H): from the dropped h
        h_new, new_state = self.update(xw, hw, state)  # the GRU carries the undropped h
        h_new = zoneout(h, h_new, masks.zone_h)
        if lstm:
            c_new = zoneout(state[1], new_state[1], masks.zone_c)
            return h_new, (h_new, c_new)
        return h_new, h_new


def make_cells(
    mode: str,
    weights: Sequence[LayerWeights],
    num_directions: int,
    masks: Sequence[LayerMasks] | None = None,
    *,
    zoneout: tuple[float, float] = (0.0, 0.0),
    training: bool = False,
) -> list[RegularizedCell]:
    """One cell per layer-direction (row ``l * D + d``) reading the call's ``masks``, or, for
    streaming (``masks`` None), drawing zoneout masks step by step."""
    made = []
    for index, w in enumerate(weights):
        reverse = index % num_directions == 1
        cell_masks = None if masks is None else masks[index]
        made.append(
            RegularizedCell(
                mode, w, masks=cell_masks, zoneout=zoneout, training=training, reverse=reverse
            )
        )
    return made
