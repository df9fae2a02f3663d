r"""GRU layer in torch's formulation, both directions: the buffers around the time loop, the
hoisted input part, and the weight gradients after BPTT.

What it must equal: :func:`unrolled.cells.gru` at every step (its equations are stated there,
once), as :func:`unrolled.reference.run` loops it. Below, ``a = W_hn h_{s-1} + b_hn`` is what
the reset gate ``r`` multiplies and ``d_pre`` is the gradient of a gate's pre-activation; what
the backward adds, per step ``s`` from the last:

.. math::
    d\_pre_n &= d\_h_s (1 - z)(1 - n^2), \quad d\_pre_r = d\_pre_n \, a \, r (1 - r), \quad
        d\_pre_z = d\_h_s (h_{s-1} - n) \, z (1 - z), \quad d\_a = d\_pre_n \, r \\
    d\_h_{s-1} &\mathrel{+}= d\_h_s \, z + [d\_pre_r, d\_pre_z] W_{h\{r,z\}} + d\_a \, W_{hn}

and then, over all steps at once: :math:`d\_W_{ih} = \sum_s [d\_pre_r, d\_pre_z, d\_pre_n]^T
x_s`, :math:`d\_W_{hh} = \sum_s [d\_pre_r, d\_pre_z, d\_a]^T h_{s-1}`, :math:`d\_b_{ih} = \sum_s
[d\_pre_r, d\_pre_z, d\_pre_n]`, :math:`d\_b_{hh} = \sum_s [d\_pre_r, d\_pre_z, d\_a]` (in the
buffers below, ``d_pre_n`` is ``n_x`` and ``d_a`` is ``n_h``).

Recurrent dropout and zoneout (:mod:`unrolled.regularizers`; the BLAS loop and the Python loops,
not the fused engine): with the dropout mask ``m`` the three gates read ``W_hh (h_{s-1} m) +
b_hh`` while the carry ``z h_{s-1}`` reads the undropped state, and zoneout's weights ``d``
make ``h_s = d h_{s-1} + (1 - d) h~_s`` of the ordinary update ``h~_s``. The backward then
splits each step's complete ``d_h_s`` first, and the recurrent product's share of ``d_h_{s-1}``
passes through the mask:

.. math::
    d\_h_s &\leftarrow (1 - d) \, d\_h_s \ \text{(what the lines above read)}, \quad
        d\_h_{s-1} \mathrel{+}= d \, d\_h_s \\
    d\_h_{s-1} &\mathrel{+}= d\_h_s \, z + ([d\_pre_r, d\_pre_z] W_{h\{r,z\}} + d\_a \,
        W_{hn}) \cdot m, \qquad d\_W_{hh} = \sum_s [d\_pre_r, d\_pre_z, d\_a]^T (h_{s-1} m)

The time loop is ``plan.loops.gru_forward`` / ``gru_backward``: the native C++ loop
(``native/gru.cpp``) or the same loop in torch ops (``loops/gru.py``), whichever the layer's
plan chose in the forward; the backward runs the plan's loop, never another one.

**The GRU buffer contract.** Packed step-major (see :mod:`.layer`: step ``s``'s rows at row
``offset[s]`` of an ``(N, X)`` buffer, states ``(B + N, X)`` with ``h_0`` first), torch's gate
order ``(r, z, n)`` and torch's own weights and biases, every buffer contiguous:

==============  ===================  =======================================================
buffer          shape                holds
==============  ===================  =======================================================
xw              (D, N, 3H)           forward in: ``x_s W_ih^T``, rows r, z, n, without bias
                                     (the loop adds ``b_ih`` and ``b_hh``); out: scratch
hh              (D, N, 3H)           forward: ``h_{s-1} W_hh^T``, then ``[r, z, a]``, ``a =
                                     W_hn h_{s-1} + b_hn`` (``b_hn`` cannot be hoisted: r
                                     multiplies it); ``(D, B, 3H)``, one reused slot, when
                                     no backward reads it
ns              (D, N or B, H)       the new-gate values ``n``
hs              (D, B + N, H)        ``h_0``, then each step's ``h_s``
w_rec           D x (H, 3H)          forward: ``W_hh^T`` (a view or a row-major copy)
w_hh            D x (3H, H)          backward: ``W_hh`` per direction (stacking would copy
                                     both directions' weights for the whole loop)
biases          D x (b_ih, b_hh)     each ``(3H,)``; empty without bias
grads           D x (N, H)           backward in: the gradient reaching each ``h_s``; out:
                                     ``d_a`` (``n_h``: what ``W_hn``, ``b_hn`` saw)
factors         D x (N, 3H)          backward out: ``[n_x, r, z]``, the pre-activation
                                     gradients ``W_ih`` saw, in the order (n, r, z): torch's
                                     rows rolled by one block; may be ``hh[d]`` itself
d_h0            (D, B, H)            backward out: the gradient of ``h_0`` (through the
                                     dropout mask, plus zoneout's ``d d_h_0`` at step 0)
batch_sizes     T ints               rows per step, non-increasing (``[B] * T``: a full batch)
drop            (D, B, H) or empty   recurrent dropout: each sequence's mask ``m`` (0 or
                                     ``1/(1-p)``) on ``h_{s-1}`` before ``W_hh``; ``hh`` then
                                     holds ``(h_{s-1} m) W_hh^T``
zone_h          (D, N, H) or empty   zoneout: each step row's weight ``d`` of the previous
                                     state, ``h_s = d h_{s-1} + (1 - d) h~_s``; ``hs`` holds
                                     the zoned-out states
==============  ===================  =======================================================

``drop`` and ``zone_h`` are optional trailing arguments of both loops (empty or None: none),
the same in a forward and its backward; never with ``fused`` (the engine has neither).

One buffer per direction and kind in the backward, so that each is freed as soon as it is
spent (``d_a`` after ``d_W_hh``, the factors after the input side), and neither is allocated
when it can be helped: ``d_a`` overwrites the step gradients it is computed from, and the
factors overwrite the saved ``[r, z, a]`` when the backward releases the graph (no one reads
them again; see ``native.graph_released``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..weights import LayerWeights
from .layer import (
    Steps,
    Wanted,
    hand_written_backward,
    project,
    remember,
    unbatched_flat_weights,
)
from .masks import StepMasks, per_state_row

if TYPE_CHECKING:
    from ..backends import Plan


def gru_layer_forward(
    plan: Plan,
    num_directions: int,
    steps: Steps,
    x,
    h0,
    c0,
    flat,
    keep: bool = False,
    masks: StepMasks | None = None,
):
    """One layer, ``D`` directions, on the packed layer input ``x (N, I)``; ``masks``: its
    recurrent dropout and zoneout (not ``plan.fused``).

    Returns ``(output (N, D*H), h_n (D, B, H), (ns, hh, hs))``, the buffers as the contract
    above leaves them. Without ``keep`` (nothing will be differentiated) ``hh`` and ``ns`` are
    one reused slot each.
    """
    weights = unbatched_flat_weights(flat, num_directions)
    batch, rows, hidden = steps.batch, steps.total, h0.shape[-1]
    slots = rows if keep else batch
    hh = x.new_empty(num_directions, slots, 3 * hidden)  # (D, N, 3H)
    ns = x.new_empty(num_directions, slots, hidden)  # (D, N, H)
    hs = x.new_empty(num_directions, batch + rows, hidden)  # (D, B + N, H)
    hs[:, :batch] = h0
    inputs = steps.directions(x, num_directions)
    xw = project(inputs, [w.w_ih for w in weights], [None] * num_directions)  # (D, N, 3H)
    biases = [b.contiguous() for w in weights for b in (w.b_ih, w.b_hh) if b is not None]  # (3H,)
    w_rec = [plan.arrange(w.w_hh.t()) for w in weights]  # D x (H, 3H)
    drop, zone_h = loop_masks(masks, x.new_empty(0))  # (D, B, H), (D, N, H) or empty
    plan.loops.gru_forward(xw, hh, ns, hs, w_rec, biases, steps.sizes, plan.fused, drop, zone_h)
    return steps.output(hs), steps.final(hs), (ns, hh, hs)


def loop_masks(masks: StepMasks | None, none: Tensor) -> tuple[Tensor, Tensor]:
    """The loops' ``drop, zone_h`` arguments (an empty tensor for each unused one; the GRU has
    no ``zone_c``)."""
    if masks is None:
        return none, none
    return tuple(none if t is None else t for t in (masks.recurrent, masks.zone_h))


def hidden_side_grads(
    steps: Steps, x_side: Tensor, n_h: Tensor, states: Tensor
) -> tuple[Tensor, Tensor]:
    """One direction's ``d_W_hh (3H, H)`` (torch's rows r, z, n) and the sums ``(4, H)`` of
    ``[n_x, r, z, n_h]`` over all steps and rows (the bias gradients), from its packed
    gradients ``x_side (N, 3H)`` (``[n_x, r, z]``) and ``n_h (N, H)``, and its states ``(B + N,
    H)`` (each step's ``h_{s-1}``: :meth:`.layer.Steps.sum_with_previous`)."""
    hidden = states.shape[-1]
    d_w_hh = states.new_empty(3 * hidden, hidden)
    steps.sum_with_previous(x_side[:, hidden:], states, out=d_w_hh[: 2 * hidden])  # r, z
    steps.sum_with_previous(n_h, states, out=d_w_hh[2 * hidden :])  # n
    sums = torch.cat([x_side.sum(0), n_h.sum(0)]).view(4, hidden)  # [n_x, r, z, n_h]
    return d_w_hh, sums


class GRULayer(torch.autograd.Function):
    """``(plan, D, steps, masks, x (N, I), h0 (D, B, H), None, *D x (w_ih, w_hh, b_ih, b_hh,
    None)) -> (output (N, D*H), h_n (D, B, H))``."""

    @staticmethod
    def forward(ctx, plan, num_directions, steps, masks, x, h0, c0, *flat):
        output, h_n, buffers = gru_layer_forward(
            plan, num_directions, steps, x, h0, c0, flat, keep=True, masks=masks
        )
        remember(ctx, plan, num_directions, steps, (x, h0, c0, *flat), masks)
        ctx.save_for_backward(x, h0, c0, *flat, *buffers)
        return output, h_n

    @staticmethod
    def backward(ctx, d_output, d_h_n):
        return hand_written_backward(ctx, (d_output, d_h_n), gru_layer_backward)


def gru_layer_backward(
    plan: Plan, num_directions: int, steps: Steps, inputs, buffers, grads, wanted: Wanted,
    reuse: bool = False, masks: StepMasks | None = None,
) -> tuple:  # fmt: skip
    """BPTT of one layer: the gradients of ``inputs (x, h0, None, *flat)`` from ``grads
    (d_output, d_h_n)``, with the ``buffers (ns, hh, hs)`` its forward kept and its ``masks``
    (the loop adds their terms to ``d_h0`` itself).

    ``reuse``: nobody reads the buffers after this backward (the graph is released), so the
    factors may overwrite ``hh``. Returns ``(d_x, d_h0, None, weight_grads)``, None where
    ``wanted`` says a gradient is not needed.
    """
    d_output, d_h_n = grads[:2]
    x, h0, _, *flat = inputs
    n, hh, hs = buffers
    weights = unbatched_flat_weights(flat, num_directions)
    hidden = hs.shape[-1]
    # n_h takes the place of the step gradients it is computed from.
    n_h = steps.step_major_grad(d_output, num_directions, d_h_n, separate=True)
    scratch = None  # where the input side may put the reverse direction in time order
    if reuse:
        # No one reads hh after this backward: [n_x, r, z] overwrite its [r, z, a] (same shape),
        # and once direction 0 is spent its rows take the reverse direction.
        x_side = list(hh.unbind(0))  # D x (N, 3H) views
        scratch = x_side[0]
    else:  # a later backward will read hh again
        x_side = [torch.empty_like(hh[0]) for _ in range(num_directions)]
    d_h0 = hh.new_empty(num_directions, steps.batch, hidden)  # (D, B, H)
    w_hh = [w.w_hh for w in weights]  # D x (3H, H)
    drop, zone_h = loop_masks(masks, hh.new_empty(0))  # (D, B, H), (D, N, H) or empty
    plan.loops.gru_backward(
        hh, n, hs, n_h, w_hh, x_side, d_h0, steps.sizes, plan.fused, drop, zone_h
    )

    if wanted.weights:  # W_hh and biases first: the factors are handed over to the input side
        if masks is not None and masks.recurrent is not None:  # W_hh multiplied h * drop
            hs = hs * per_state_row(masks.recurrent, steps)  # (D, B + N, H)
        d_w_hh, d_sums = zip(
            *(hidden_side_grads(steps, x_side[d], n_h[d], hs[d]) for d in range(num_directions))
        )
    del n_h
    # [n_x, r, z] are handed over (the list is emptied), so each direction's own buffer is
    # freed once its input-side gradients are done. Their (n, r, z) is torch's (r, z, n) rolled
    # by one block.
    w_ih = [w.w_ih for w in weights]  # D x (3H, I)
    d_x, d_w_ih = steps.input_side_grads(
        x_side, x, w_ih, wanted.x, wanted.weights, rolled=hidden, scratch=scratch
    )  # (N, I), D x (3H, I) in torch's order
    weight_grads = None
    if wanted.weights:
        weight_grads = [
            LayerWeights(
                w_ih=d_w_ih[d],
                w_hh=d_w_hh[d],
                b_ih=d_sums[d][[1, 2, 0]].flatten(),  # (r, z, n_x)
                b_hh=d_sums[d][1:].flatten(),  # (r, z, n_h)
            )
            for d in range(num_directions)
        ]
    return d_x, d_h0, None, weight_grads
