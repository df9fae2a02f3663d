r"""The time loops of :class:`~unrolled.LayerNormLSTM` and :class:`~unrolled.LayerNormGRU`,
forward and hand-written BPTT, in torch ops: ``unrolled/fast/native/layernorm.cpp``'s loops on
the same buffers, function for function (``torch.ops.unrolled.layernorm_*`` have these names
and signatures; :mod:`.layernorm_scan` hands either to the same code).

What they must equal: the cells' ``step`` (:mod:`.layernorm`, where the equations are stated)
at every step. ``LN`` normalises over the last dim: ``LN(m) = gamma * mhat + beta`` with
``mhat = (m - mean(m)) * rstd`` and ``rstd = 1 / sqrt(var(m) + eps)`` (biased variance).

**Forward**, per step ``t`` (``h_{t-1} = hs[t]``, writes ``hs[t + 1]``):

.. math::
    m_t = h_{t-1} W_{hh}^T, \quad \hat m_t = (m_t - \mu_t)\, rstd_t, \quad
    pre_t = xp_t + \gamma \hat m_t + \beta

then the LSTM's ``i, f, g, o = sigma, sigma, tanh, sigma (pre_t)``, ``c_t = f c_{t-1} + i g``,
``\hat c_t = LN-normalised c_t``, ``h_t = o tanh(\gamma_c \hat c_t + \beta_c)``; the GRU's
``b = \gamma \hat m_t + \beta`` only (``pre_t`` is not formed: ``xp_t`` is its ``a``), ``r, z =
sigma(a_{r,z} + b_{r,z})``, ``n = tanh(a_n + r b_n)``, ``h_t = (1 - z) n + z h_{t-1}``.

**Backward**, per step from the last, with ``dh = d_hs[t + 1]`` (all of ``h_t``'s gradient
by then). The LN backward of ``y = gamma * xhat + beta`` from ``dy`` is

.. math::
    d\hat x = dy \, \gamma, \qquad
    dx = rstd \, (d\hat x - \mathrm{mean}(d\hat x) - \hat x \, \mathrm{mean}(d\hat x \, \hat x))

LSTM: ``d_n = dh o (1 - tanh^2 n)`` (``n = LN(c_t)``), ``dc = d_cs[t + 1] + LN-backward(d_n)``,
``d_pre = [dc g i(1-i), dc c_{t-1} f(1-f), dc i(1-g^2), dh tanh(n) o(1-o)]``,
``d_cs[t] += dc f``. GRU: ``d_an = dh (1 - z)(1 - n^2)``, ``d_xp = [d_an b_n r(1-r), dh
(h_{t-1} - n) z(1-z), d_an]``, ``d_b = [d_xp_r, d_xp_z, d_an r]``, ``d_hs[t] += dh z``. Both:
``dm_t = LN-backward(d_pre or d_b)`` and ``d_hs[t] += dm_t W_hh``. The LN parameters' gradients
are sums over all steps and rows, which the backward takes as it goes, while each step's rows
are at hand: ``d_gamma = sum(d_pre mhat)``, ``d_beta = sum(d_pre)`` (the GRU's ``d_b`` for
``d_pre``), ``d_gamma_c = sum(d_n chat)``, ``d_beta_c = sum(d_n)``. Each batch row ``b`` sums
its own terms over the steps (:func:`row_sums`), and the rows are added after the loop: in C++
one thread at a time runs a row, so the sums need no lock and come out the same on every run
and for every thread count. ``d_W_hh = dm^T h_{prev}`` is left to the caller, after the loop
(one ``(G*H, T*B) @ (T*B, H)`` GEMM, :mod:`.layernorm_scan`).

**The buffer contract.** One direction, every sequence run for all ``T`` steps (lengths and
reverse are the caller's: :mod:`.layernorm_scan`), time-major, every buffer contiguous,
``G*H`` = 4H (LSTM, gates ``i, f, g, o``) or 3H (GRU, gates ``r, z, n``):

==========  ============  ===================================================================
buffer      shape         holds
==========  ============  ===================================================================
xp          (T, B, G*H)   the input part ``LN(W_ih x_t)`` (read only)
w_hh        (G*H, H)      ``W_hh`` (any strides)
gamma/beta  (G*H,)        ``norm_hh``'s weight and bias
gamma_c/    (H,)          LSTM: ``norm_c``'s weight and bias
beta_c
gates       (T, B, G*H)   forward out: the activated gates (LSTM ``i, f, g, o``; GRU ``r, z,
                          n``)
mhat        (T, B, G*H)   forward out: ``mhat_t``, the normalised recurrent product
rstd        (T, B)        forward out: ``rstd_t`` of ``m_t``
hs          (T+1, B, H)   ``h_0`` in row 0; forward out: ``h_t`` in row ``t``
cs          (T+1, B, H)   LSTM: ``c_0`` in row 0; forward out: ``c_t`` in row ``t``
chat        (T, B, H)     LSTM forward out: ``chat_t``, the normalised ``c_t`` (step ``t``'s
                          row ``t - 1``, as for every per-step buffer)
rstd_c      (T, B)        LSTM forward out: ``rstd`` of ``c_t``
d_hs        (T+1, B, H)   backward in: the gradient reaching each ``h_t`` from the outputs
                          and ``h_n`` (row 0: what reaches ``h_0`` directly); out: all of
                          ``h_t``'s gradient, row 0 ``d_h0``
d_cs        (T+1, B, H)   LSTM backward, likewise for the cells; row 0 out: ``d_c0``
d_xp        (T, B, G*H)   backward out: the gradient of ``xp`` (LSTM: ``d_pre``; GRU:
                          ``d_r, d_z, d_an``)
dm          (T, B, G*H)   backward out: the gradient of ``m_t = h_{t-1} W_hh^T``
d_gamma/    (G*H,)        backward out: ``norm_hh``'s weight and bias gradients (written, not
d_beta                    added to)
d_gamma_c/  (H,)          LSTM backward out: ``norm_c``'s weight and bias gradients
d_beta_c
==========  ============  ===================================================================
"""

from __future__ import annotations

import torch
from torch import Tensor


def normalise_into(m: Tensor, eps: float, mhat: Tensor, rstd: Tensor) -> None:
    """``mhat = (m - mean(m)) * rstd``, ``rstd = 1 / sqrt(var(m) + eps)`` over the last dim;
    ``m (B, X)`` may be ``mhat`` itself."""
    normalised, _, row_rstd = torch.native_layer_norm(m, m.shape[-1:], None, None, eps)
    mhat.copy_(normalised)
    rstd.copy_(row_rstd.squeeze(-1))  # (B, 1) -> (B,)


def layer_norm_backward(d_normalised: Tensor, normalised: Tensor, rstd: Tensor) -> Tensor:
    """``dx = rstd * (d - mean(d) - xhat * mean(d * xhat))`` over the last dim: the gradient of
    the LN's input from that of its normalised output ``d_normalised (.., X)`` (``gamma``
    already applied), ``rstd (..)``."""
    mean_d = d_normalised.mean(-1, keepdim=True)
    mean_d_xhat = (d_normalised * normalised).mean(-1, keepdim=True)
    centred = d_normalised - mean_d - normalised * mean_d_xhat
    return centred * rstd.unsqueeze(-1)


def row_sums(like: Tensor, *widths: int) -> list[Tensor]:
    """Zeroed per-batch-row partial sums ``(B, width)`` for each width, ``B = like.shape[1]``:
    ``like``'s dtype, at least float32 (a low-precision sum over many steps would lose the
    gradient), on its device. Row ``b`` sums batch row ``b``'s terms over the steps."""
    dtype = torch.promote_types(like.dtype, torch.float32)
    return [like.new_zeros(like.shape[1], width, dtype=dtype) for width in widths]


def total_into(out: Tensor, sums: Tensor) -> None:
    """``out (X,) = sums (B, X)`` summed over the batch rows."""
    out.copy_(sums.sum(0))


def layernorm_lstm_forward(
    xp: Tensor, w_hh: Tensor, gamma: Tensor, beta: Tensor, gamma_c: Tensor, beta_c: Tensor,
    eps: float, eps_c: float, gates: Tensor, mhat: Tensor, rstd: Tensor, hs: Tensor,
    cs: Tensor, chat: Tensor, rstd_c: Tensor,
) -> None:  # fmt: skip
    """Forward of the LN-LSTM (``layernorm_lstm_forward`` in C++), buffers as the contract."""
    hidden = hs.shape[-1]
    torch.add(xp, beta, out=gates)  # xp + beta, every step at once
    w_t = w_hh.t()  # (H, 4H)
    for t in range(xp.shape[0]):
        torch.mm(hs[t], w_t, out=mhat[t])  # m_t = (B, H) @ (H, 4H)
        normalise_into(mhat[t], eps, mhat[t], rstd[t])
        pre = gates[t].addcmul_(gamma, mhat[t])  # (B, 4H): xp + gamma mhat + beta
        pre[:, : 2 * hidden].sigmoid_()  # i, f
        pre[:, 2 * hidden : 3 * hidden].tanh_()  # g
        pre[:, 3 * hidden :].sigmoid_()  # o
        i, f, g, o = pre.split(hidden, dim=-1)  # 4 x (B, H)
        torch.mul(f, cs[t], out=cs[t + 1]).addcmul_(i, g)  # c_t = f c + i g
        normalise_into(cs[t + 1], eps_c, chat[t], rstd_c[t])
        torch.addcmul(beta_c, gamma_c, chat[t], out=hs[t + 1]).tanh_().mul_(o)  # o tanh(LN c)


def layernorm_lstm_backward(
    gates: Tensor, mhat: Tensor, rstd: Tensor, cs: Tensor, chat: Tensor, rstd_c: Tensor,
    w_hh: Tensor, gamma: Tensor, gamma_c: Tensor, beta_c: Tensor, d_hs: Tensor, d_cs: Tensor,
    d_xp: Tensor, dm: Tensor, d_gamma: Tensor, d_beta: Tensor, d_gamma_c: Tensor,
    d_beta_c: Tensor,
) -> None:  # fmt: skip
    """BPTT of the LN-LSTM (``layernorm_lstm_backward`` in C++), buffers as the contract."""
    hidden = cs.shape[-1]
    sum_gamma, sum_beta = row_sums(gates, 4 * hidden, 4 * hidden)  # 2 x (B, 4H)
    sum_gamma_c, sum_beta_c = row_sums(gates, hidden, hidden)  # 2 x (B, H)
    i, f, g, o = gates.split(hidden, dim=-1)  # 4 x (T, B, H)
    # The step-independent factors, every step at once.
    tanh_n = torch.addcmul(beta_c, gamma_c, chat).tanh_()  # (T, B, H)
    slope_n = o * (1 - tanh_n * tanh_n)  # d h / d n
    factor_o = tanh_n * o * (1 - o)
    factor_i = g * i * (1 - i)
    factor_f = cs[:-1] * f * (1 - f)
    factor_g = i * (1 - g * g)
    for t in range(gates.shape[0] - 1, -1, -1):
        dh = d_hs[t + 1]  # (B, H)
        d_n = dh * slope_n[t]  # (B, H): the gradient of LN(c_t)'s output
        sum_gamma_c.addcmul_(d_n, chat[t])
        sum_beta_c.add_(d_n)
        dc = d_cs[t + 1] + layer_norm_backward(d_n * gamma_c, chat[t], rstd_c[t])
        d_i, d_f, d_g, d_o = d_xp[t].split(hidden, dim=-1)  # 4 x (B, H)
        torch.mul(dc, factor_i[t], out=d_i)
        torch.mul(dc, factor_f[t], out=d_f)
        torch.mul(dc, factor_g[t], out=d_g)
        torch.mul(dh, factor_o[t], out=d_o)
        d_cs[t].addcmul_(dc, f[t])
        sum_gamma.addcmul_(d_xp[t], mhat[t])
        sum_beta.add_(d_xp[t])
        dm[t] = layer_norm_backward(d_xp[t] * gamma, mhat[t], rstd[t])  # (B, 4H)
        d_hs[t].addmm_(dm[t], w_hh)  # += (B, 4H) @ (4H, H)
    for out, sums in (
        (d_gamma, sum_gamma), (d_beta, sum_beta), (d_gamma_c, sum_gamma_c),
        (d_beta_c, sum_beta_c),
    ):  # fmt: skip
        total_into(out, sums)


def layernorm_gru_forward(
    xp: Tensor, w_hh: Tensor, gamma: Tensor, beta: Tensor, eps: float, gates: Tensor,
    mhat: Tensor, rstd: Tensor, hs: Tensor,
) -> None:  # fmt: skip
    """Forward of the LN-GRU (``layernorm_gru_forward`` in C++), buffers as the contract."""
    hidden = hs.shape[-1]
    w_t = w_hh.t()  # (H, 3H)
    for t in range(xp.shape[0]):
        torch.mm(hs[t], w_t, out=mhat[t])  # m_t = (B, H) @ (H, 3H)
        normalise_into(mhat[t], eps, mhat[t], rstd[t])
        b = torch.addcmul(beta, gamma, mhat[t])  # (B, 3H): LN(m_t)
        a_rz, a_n = xp[t].split([2 * hidden, hidden], dim=-1)
        r_z = torch.add(a_rz, b[:, : 2 * hidden], out=gates[t, :, : 2 * hidden]).sigmoid_()
        r, z = r_z.split(hidden, dim=-1)  # 2 x (B, H)
        n = torch.addcmul(a_n, r, b[:, 2 * hidden :], out=gates[t, :, 2 * hidden :]).tanh_()
        torch.lerp(n, hs[t], z, out=hs[t + 1])  # (1 - z) n + z h


def layernorm_gru_backward(
    gates: Tensor, mhat: Tensor, rstd: Tensor, hs: Tensor, w_hh: Tensor, gamma: Tensor,
    beta: Tensor, d_hs: Tensor, d_xp: Tensor, dm: Tensor, d_gamma: Tensor, d_beta: Tensor,
) -> None:  # fmt: skip
    """BPTT of the LN-GRU (``layernorm_gru_backward`` in C++), buffers as the contract."""
    hidden = hs.shape[-1]
    sum_gamma, sum_beta = row_sums(gates, 3 * hidden, 3 * hidden)  # 2 x (B, 3H)
    r, z, n = gates.split(hidden, dim=-1)  # 3 x (T, B, H)
    gamma_n, beta_n = gamma[2 * hidden :], beta[2 * hidden :]
    # The step-independent factors, every step at once.
    b_n = torch.addcmul(beta_n, gamma_n, mhat[..., 2 * hidden :])  # (T, B, H)
    factor_an = (1 - z) * (1 - n * n)  # d a_n / d h
    factor_r = b_n * r * (1 - r)
    factor_z = (hs[:-1] - n) * z * (1 - z)
    for t in range(gates.shape[0] - 1, -1, -1):
        dh = d_hs[t + 1]  # (B, H)
        d_r, d_z, d_an = d_xp[t].split(hidden, dim=-1)  # 3 x (B, H)
        torch.mul(dh, factor_an[t], out=d_an)
        torch.mul(d_an, factor_r[t], out=d_r)
        torch.mul(dh, factor_z[t], out=d_z)
        d_b = torch.cat([d_r, d_z, d_an * r[t]], dim=-1)  # (B, 3H): the gradient of LN(m_t)
        sum_gamma.addcmul_(d_b, mhat[t])
        sum_beta.add_(d_b)
        dm[t] = layer_norm_backward(d_b * gamma, mhat[t], rstd[t])  # (B, 3H)
        d_hs[t].addcmul_(dh, z[t]).addmm_(dm[t], w_hh)  # += dh z + (B, 3H) @ (3H, H)
    total_into(d_gamma, sum_gamma)
    total_into(d_beta, sum_beta)
