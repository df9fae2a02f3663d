r"""The LN cells' whole-sequence ``scan``: the hand-written loops (:mod:`.layernorm_loops` or
their native twins) wrapped in ``torch.autograd.Function`` s, with lengths, reverse and the
gradients that are sums over all steps.

Around the loops (which run every sequence for all ``T`` steps, forward in time):

* reverse: each sequence is reversed inside its own length before the loop and its outputs put
  back after it (as :class:`~unrolled.variants.mingru.ParallelMinGRU`), in autograd ops;
* lengths: the loop runs past a sequence's end, which cannot change its valid steps (they come
  first); the Function returns the outputs zeroed there and the final state read at row
  ``lengths[b]`` of the state buffers (``(T+1, B, H)``, ``h_0`` first). Its backward puts the
  output gradient, zeroed there, and the final states' gradients at those rows of ``d_hs`` /
  ``d_cs``: past its end a sequence gets no gradient, so its steps there add exactly zero;
* after the loop, one GEMM over all ``T*B`` rows: ``d_W_hh``. The LN parameters' gradients,
  also sums over every step, the loops take as they go (their buffer contract:
  :mod:`.layernorm_loops`).

Under ``create_graph=True`` or a torch.func transform the backward differentiates the step
loop (:func:`reference_steps`) instead, which autograd can differentiate again.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import scan as scanning
from ..fast import native
from ..fast.layer import differentiate_the_reference, transforms_active
from . import layernorm_loops
from .mingru import _reverse_each

NATIVE_LOOPS, PYTHON_LOOPS = "native loops", "python loops"


def loops_for(reference: Tensor):
    """The loops a call on ``reference``'s dtype and device runs: the native ops on CPU
    float32/float64 where they are built and not :func:`unrolled.fast.native.disabled`, else
    :mod:`.layernorm_loops` (torch ops: any dtype, any device)."""
    native_fits = reference.device.type == "cpu" and reference.dtype in (
        torch.float32,
        torch.float64,
    )
    if native_fits and not native.is_disabled() and native.ops() is not None:
        return torch.ops.unrolled
    return layernorm_loops


def runner_name(loops) -> str:
    return PYTHON_LOOPS if loops is layernorm_loops else NATIVE_LOOPS


# ---- lengths: where the final states are, what the backward receives --------------------------


def final_rows(states: Tensor, lengths: Tensor | None) -> Tensor:
    """``states (T+1, B, H)`` -> each sequence's final state ``(B, H)``: row ``lengths[b]``
    (row ``T`` without lengths), a tensor of its own."""
    if lengths is None:
        return states[-1].clone()
    index = lengths.view(1, -1, 1).expand(1, *states.shape[1:])  # (1, B, H)
    return states.gather(0, index)[0]


def zero_padding(steps: Tensor, valid: Tensor | None) -> Tensor:
    """``steps (T, B, H)`` as a tensor of its own, zero where ``valid (T, B, 1)`` is False."""
    if valid is None:
        return steps.clone()
    return torch.where(valid, steps, torch.zeros_like(steps))


def arriving_grads(
    d_steps: Tensor | None, d_final: Tensor | None, like: Tensor, lengths: Tensor | None,
    valid: Tensor | None,
) -> Tensor:  # fmt: skip
    """``(T+1, B, H)``: the gradient reaching each state row directly, ``d_steps (T, B, H)``
    (zeroed past each length) at rows ``1..T`` and ``d_final (B, H)`` added at row
    ``lengths[b]``. Either may be None (no gradient)."""
    grads = like.new_zeros(like.shape)  # (T+1, B, H)
    if d_steps is not None:
        grads[1:] = d_steps if valid is None else torch.where(valid, d_steps, 0)
    if d_final is not None:
        if lengths is None:
            grads[-1] += d_final
        else:
            batch = torch.arange(like.shape[1], device=like.device)  # (B,)
            grads.index_put_((lengths, batch), d_final, accumulate=True)
    return grads


def recurrent_weight_grad(dm: Tensor, hs: Tensor) -> Tensor:
    """``d_W_hh = sum_t dm_t^T h_{t-1}``: one ``(G*H, T*B) @ (T*B, H)`` GEMM."""
    rows = dm.shape[0] * dm.shape[1]
    dm_rows = dm.reshape(rows, dm.shape[-1])  # (T*B, G*H)
    previous = hs[:-1].reshape(rows, hs.shape[-1])  # (T*B, H)
    return dm_rows.t() @ previous  # (G*H, T*B) @ (T*B, H) -> (G*H, H)


# ---- the step loop: what the hand-written loops must equal, and the double backward ----------


def lstm_step(xp_t, state, w_hh, gamma, beta, gamma_c, beta_c, eps, eps_c):
    """:meth:`LayerNormLSTM.step` on explicit tensors."""
    h, c = state
    gates = xp_t + F.layer_norm(h @ w_hh.T, gamma.shape, gamma, beta, eps)  # (B, 4H)
    i, f, g, o = gates.chunk(4, dim=-1)  # 4 x (B, H)
    c_next = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h_next = torch.sigmoid(o) * torch.tanh(
        F.layer_norm(c_next, c.shape[-1:], gamma_c, beta_c, eps_c)
    )
    return h_next, (h_next, c_next)


def gru_step(xp_t, h, w_hh, gamma, beta, eps):
    """:meth:`LayerNormGRU.step` on explicit tensors."""
    a_r, a_z, a_n = xp_t.chunk(3, dim=-1)  # 3 x (B, H)
    b_r, b_z, b_n = F.layer_norm(h @ w_hh.T, gamma.shape, gamma, beta, eps).chunk(3, dim=-1)
    r = torch.sigmoid(a_r + b_r)
    z = torch.sigmoid(a_z + b_z)
    n = torch.tanh(a_n + r * b_n)
    h_next = (1 - z) * n + z * h
    return h_next, h_next


def reference_steps(ctx, grads: tuple, step, num_states: int) -> tuple:
    """The backward under ``create_graph`` or torch.func: autograd through the step loop from
    the saved inputs ``(xp, *initial states, *parameters)``, with a graph. One gradient per
    input of the Function's forward (``None`` for the settings)."""
    inputs = ctx.saved_tensors[: ctx.num_inputs]
    xp, states, params = inputs[0], inputs[1 : 1 + num_states], inputs[1 + num_states :]
    with torch.enable_grad():
        state = states[0] if num_states == 1 else tuple(states)
        outputs, final = scanning.scan(
            partial(step, **dict(zip(ctx.param_names, params)), **ctx.eps),
            xp, state, lengths=ctx.lengths,
        )  # fmt: skip
        finals = [final] if num_states == 1 else list(final)
        wanted = [t for t in inputs if t.requires_grad]
        found = iter(
            torch.autograd.grad(
                [outputs, *finals], wanted, grads, create_graph=True, allow_unused=True
            )
        )
    return (None, None) + tuple(next(found) if t.requires_grad else None for t in inputs)


def remember(ctx, loops, lengths, eps: dict, param_names: tuple, inputs, buffers) -> None:
    """What the backward needs: the loops its forward ran, lengths, the inputs and buffers."""
    ctx.loops, ctx.lengths, ctx.eps, ctx.param_names = loops, lengths, eps, param_names
    ctx.num_inputs = len(inputs)
    ctx.save_for_backward(*inputs, *buffers)


# ---- the Functions -----------------------------------------------------------------------------


class LayerNormLSTMScan(torch.autograd.Function):
    """``(loops, lengths, xp (T, B, 4H), h0, c0 (B, H), w_hh (4H, H), gamma, beta (4H,),
    gamma_c, beta_c (H,), eps, eps_c) -> (output (T, B, H), h_n, c_n (B, H))``."""

    @staticmethod
    def forward(ctx, loops, lengths, xp, h0, c0, w_hh, gamma, beta, gamma_c, beta_c, eps, eps_c):
        steps, batch, four_hidden = xp.shape
        hidden = four_hidden // 4
        given = xp  # saved as given: the double backward differentiates from it
        xp = xp.contiguous()
        gates, mhat = torch.empty_like(xp), torch.empty_like(xp)  # (T, B, 4H)
        rstd, rstd_c = xp.new_empty(steps, batch), xp.new_empty(steps, batch)  # (T, B)
        hs, cs = xp.new_empty(steps + 1, batch, hidden), xp.new_empty(steps + 1, batch, hidden)
        chat = xp.new_empty(steps, batch, hidden)  # (T, B, H)
        hs[0], cs[0] = h0, c0
        loops.layernorm_lstm_forward(
            xp, w_hh, gamma, beta, gamma_c, beta_c, eps, eps_c, gates, mhat, rstd, hs, cs, chat,
            rstd_c,
        )  # fmt: skip
        valid = None if lengths is None else scanning.valid_steps(lengths, steps)  # (T, B, 1)
        names = ("w_hh", "gamma", "beta", "gamma_c", "beta_c")
        remember(ctx, loops, lengths, {"eps": eps, "eps_c": eps_c}, names,
                 (given, h0, c0, w_hh, gamma, beta, gamma_c, beta_c),
                 (gates, mhat, rstd, hs, cs, chat, rstd_c))  # fmt: skip
        ctx.valid = valid
        return zero_padding(hs[1:], valid), final_rows(hs, lengths), final_rows(cs, lengths)

    @staticmethod
    def backward(ctx, d_output, d_h_n, d_c_n):
        if differentiate_the_reference((d_output, d_h_n, d_c_n)):
            return reference_steps(ctx, (d_output, d_h_n, d_c_n), lstm_step, 2) + (None, None)
        xp, h0, c0, w_hh, gamma, beta, gamma_c, beta_c, *buffers = ctx.saved_tensors
        gates, mhat, rstd, hs, cs, chat, rstd_c = buffers
        d_hs = arriving_grads(d_output, d_h_n, hs, ctx.lengths, ctx.valid)  # (T+1, B, H)
        d_cs = arriving_grads(None, d_c_n, cs, ctx.lengths, ctx.valid)  # (T+1, B, H)
        d_xp, dm = torch.empty_like(gates), torch.empty_like(gates)  # (T, B, 4H)
        four_hidden, hidden = gates.shape[-1], cs.shape[-1]
        d_gamma, d_beta = gates.new_empty(four_hidden), gates.new_empty(four_hidden)  # (4H,)
        d_gamma_c, d_beta_c = gates.new_empty(hidden), gates.new_empty(hidden)  # (H,)
        ctx.loops.layernorm_lstm_backward(
            gates, mhat, rstd, cs, chat, rstd_c, w_hh, gamma, gamma_c, beta_c, d_hs, d_cs, d_xp,
            dm, d_gamma, d_beta, d_gamma_c, d_beta_c,
        )  # fmt: skip
        d_w_hh = recurrent_weight_grad(dm, hs)
        return (
            None, None, d_xp, d_hs[0], d_cs[0], d_w_hh, d_gamma, d_beta, d_gamma_c, d_beta_c,
            None, None,
        )  # fmt: skip


class LayerNormGRUScan(torch.autograd.Function):
    """``(loops, lengths, xp (T, B, 3H), h0 (B, H), w_hh (3H, H), gamma, beta (3H,), eps) ->
    (output (T, B, H), h_n (B, H))``."""

    @staticmethod
    def forward(ctx, loops, lengths, xp, h0, w_hh, gamma, beta, eps):
        steps, batch, three_hidden = xp.shape
        given = xp  # saved as given: the double backward differentiates from it
        xp = xp.contiguous()
        gates, mhat = torch.empty_like(xp), torch.empty_like(xp)  # (T, B, 3H)
        rstd = xp.new_empty(steps, batch)  # (T, B)
        hs = xp.new_empty(steps + 1, batch, three_hidden // 3)  # (T+1, B, H)
        hs[0] = h0
        loops.layernorm_gru_forward(xp, w_hh, gamma, beta, eps, gates, mhat, rstd, hs)
        valid = None if lengths is None else scanning.valid_steps(lengths, steps)  # (T, B, 1)
        remember(ctx, loops, lengths, {"eps": eps}, ("w_hh", "gamma", "beta"),
                 (given, h0, w_hh, gamma, beta), (gates, mhat, rstd, hs))  # fmt: skip
        ctx.valid = valid
        return zero_padding(hs[1:], valid), final_rows(hs, lengths)

    @staticmethod
    def backward(ctx, d_output, d_h_n):
        if differentiate_the_reference((d_output, d_h_n)):
            return reference_steps(ctx, (d_output, d_h_n), gru_step, 1) + (None,)
        xp, h0, w_hh, gamma, beta, gates, mhat, rstd, hs = ctx.saved_tensors
        d_hs = arriving_grads(d_output, d_h_n, hs, ctx.lengths, ctx.valid)  # (T+1, B, H)
        d_xp, dm = torch.empty_like(gates), torch.empty_like(gates)  # (T, B, 3H)
        three_hidden = gates.shape[-1]
        d_gamma, d_beta = gates.new_empty(three_hidden), gates.new_empty(three_hidden)  # (3H,)
        ctx.loops.layernorm_gru_backward(
            gates, mhat, rstd, hs, w_hh, gamma, beta, d_hs, d_xp, dm, d_gamma, d_beta
        )  # fmt: skip
        d_w_hh = recurrent_weight_grad(dm, hs)
        return None, None, d_xp, d_hs[0], d_w_hh, d_gamma, d_beta, None


# ---- the cells' scan -------------------------------------------------------------------------


def run_lstm(cell, input_part, state, *, reverse: bool, lengths: Tensor | None):
    """:meth:`LayerNormLSTM.scan`: the step loop under a torch.func transform, else the
    hand-written one."""
    if transforms_active():
        return scanning.scan(cell.step, input_part, state, reverse=reverse, lengths=lengths)
    lengths = None if lengths is None else lengths.long()
    xp = _reverse_each(input_part, lengths) if reverse else input_part
    h0, c0 = state
    output, h_n, c_n = LayerNormLSTMScan.apply(
        loops_for(xp), lengths, xp, h0, c0, cell.weight_hh, cell.norm_hh.weight,
        cell.norm_hh.bias, cell.norm_c.weight, cell.norm_c.bias, cell.norm_hh.eps,
        cell.norm_c.eps,
    )  # fmt: skip
    return (_reverse_each(output, lengths) if reverse else output), (h_n, c_n)


def run_gru(cell, input_part, state, *, reverse: bool, lengths: Tensor | None):
    """:meth:`LayerNormGRU.scan`: as :func:`run_lstm`."""
    if transforms_active():
        return scanning.scan(cell.step, input_part, state, reverse=reverse, lengths=lengths)
    lengths = None if lengths is None else lengths.long()
    xp = _reverse_each(input_part, lengths) if reverse else input_part
    output, h_n = LayerNormGRUScan.apply(
        loops_for(xp), lengths, xp, state, cell.weight_hh, cell.norm_hh.weight,
        cell.norm_hh.bias, cell.norm_hh.eps,
    )  # fmt: skip
    return (_reverse_each(output, lengths) if reverse else output), h_n
