// The time loops of unrolled.LayerNormLSTM and unrolled.LayerNormGRU, forward and BPTT, one
// direction, every sequence for all T steps (lengths and reverse are the caller's).
//
// What it must equal: the cells' step (`unrolled/variants/layernorm.py`, the equations) at every
// step, and the derivative lines in `unrolled/variants/layernorm_loops.py`. Buffers: the buffer
// contract in that file's docstring; it is the same loop in torch ops, function for function:
// layernorm_lstm_forward / _backward and layernorm_gru_forward / _backward. Per step: the
// recurrent GEMM through ATen, then one pass per batch row: the LN's statistics, the
// normalisation and the gate math (forward); the gate math's and the LNs' derivatives, and the
// LN parameters' gradient terms added to that row's partial sums while the row is hot
// (backward; RowSums).
#include <torch/library.h>

#include "common.h"

namespace unrolled {
namespace {

// sum_{k < n} term(k) in 8 independent partial sums (a fixed order, so the same result on every
// run), which the compiler keeps in one vector register: a plain `total += ...` is one long
// dependency chain that neither vectorises nor pipelines.
template <typename T, typename F>
UNROLLED_INLINE T lane_sum(int64_t n, const F& term) {
  constexpr int lanes = 8;
  T partial[lanes] = {};
  int64_t k = 0;
  for (; k + lanes <= n; k += lanes) {
    for (int lane = 0; lane < lanes; ++lane) partial[lane] += term(k + lane);
  }
  T total = T(0);
  for (int lane = 0; lane < lanes; ++lane) total += partial[lane];
  for (; k < n; ++k) total += term(k);
  return total;
}

// out = (in - mean(in)) * rstd over n elements, rstd = 1 / sqrt(var(in) + eps) (biased variance,
// two passes); returns rstd. `out` may be `in`.
template <typename T>
UNROLLED_INLINE T normalise(const T* in, T* out, int64_t n, T eps) {
  const T mean = lane_sum<T>(n, [&](int64_t k) { return in[k]; }) / T(n);
  const T var = lane_sum<T>(n, [&](int64_t k) {
                  const T centred = in[k] - mean;
                  return centred * centred;
                }) / T(n);
  const T rstd = T(1) / std::sqrt(var + eps);
  UNROLLED_VECTOR_LOOP
  for (int64_t k = 0; k < n; ++k) out[k] = (in[k] - mean) * rstd;
  return rstd;
}

// The LN backward, in place: d holds d_xhat (gamma applied) on entry, dx on exit:
// dx = rstd * (d_xhat - mean(d_xhat) - xhat * mean(d_xhat * xhat)).
template <typename T>
UNROLLED_INLINE void layer_norm_backward(T* d, const T* xhat, T rstd, int64_t n) {
  const T mean_d = lane_sum<T>(n, [&](int64_t k) { return d[k]; }) / T(n);
  const T mean_d_xhat = lane_sum<T>(n, [&](int64_t k) { return d[k] * xhat[k]; }) / T(n);
  UNROLLED_VECTOR_LOOP
  for (int64_t k = 0; k < n; ++k) d[k] = rstd * (d[k] - mean_d - xhat[k] * mean_d_xhat);
}

// The work of one row pass, in for_rows' "elements per row": each unit's transcendentals and
// the LN's passes make a row pass several times an LSTM row's (measured: 16 rows of H = 128
// split over two threads are faster than one thread).
constexpr int64_t row_cost = 8;

// Per-step row pointers into a (steps, B, width) buffer.
template <typename T>
UNROLLED_INLINE T* row(const Tensor& buffer, int64_t step, int64_t b) {
  const int64_t batch = buffer.size(1), width = buffer.size(2);
  return buffer.data_ptr<T>() + (step * batch + b) * width;
}

// ---- the LN parameters' gradients: per-row partial sums -----------------------------------

// The LN parameters' gradients are sums over every step and batch row (d_gamma = sum dy xhat,
// d_beta = sum dy for each LN), taken in the backward row passes while each row is hot. Row b of
// a (B, stride) buffer holds batch row b's partial sums over the steps so far: at any step one
// thread runs row b and it alone writes there (no atomics, no locks), and after the loop
// `total` adds the rows in order 0, 1, ..., B-1. The result is the same on every run, whatever
// the threads and however for_rows splits the rows. Each row starts on a cache line of its own
// (the stride is a whole number of lines): threads never share one.
template <typename T>
class RowSums {
 public:
  RowSums(int64_t rows, int64_t width, const at::TensorOptions& options)
      : sums_(at::zeros({rows, padded(width)}, options)) {}

  T* row(int64_t b) const { return sums_.data_ptr<T>() + b * sums_.size(1); }

  // out[k] = sum over rows b of row(b)[offset + k], k < n, rows in order.
  void total(T* out, int64_t offset, int64_t n) const {
    std::fill(out, out + n, T(0));
    for (int64_t b = 0; b < sums_.size(0); ++b) {
      const T* sum = row(b) + offset;
      UNROLLED_VECTOR_LOOP
      for (int64_t k = 0; k < n; ++k) out[k] += sum[k];
    }
  }

 private:
  static int64_t padded(int64_t width) {
    constexpr int64_t line = 64 / sizeof(T);  // elements per 64-byte cache line
    return (width + line - 1) / line * line;
  }
  Tensor sums_;  // (B, stride), zeroed; ATen's CPU allocator aligns it to 64 bytes
};

// ---- LSTM ---------------------------------------------------------------------------------

// Everything one LSTM row pass reads and writes, at step t (h_{t-1} = hs[t], h_t = hs[t + 1]).
template <typename T>
struct LstmBuffers {
  const Tensor &xp, &gates, &mhat, &rstd, &hs, &cs, &chat, &rstd_c;
  const T *gamma, *beta, *gamma_c, *beta_c;
};

// One row, forward: mhat = LN-normalised m (in place), the gates, c_t, chat_t, h_t.
template <typename T>
void lstm_forward_row(const LstmBuffers<T>& buf, int64_t t, int64_t b, int64_t hidden, T eps,
                      T eps_c) {
  T* m = row<T>(buf.mhat, t, b);  // (4H): m_t on entry, mhat_t on exit
  buf.rstd.template data_ptr<T>()[t * buf.rstd.size(1) + b] = normalise(m, m, 4 * hidden, eps);
  const T* xp = row<T>(buf.xp, t, b);
  T* gates = row<T>(buf.gates, t, b);
  const T* c_prev = row<T>(buf.cs, t, b);
  T* c = row<T>(buf.cs, t + 1, b);
  UNROLLED_VECTOR_LOOP
  for (int64_t j = 0; j < hidden; ++j) {  // pre = xp + gamma mhat + beta, then the cell
    auto pre = [&](int64_t k) { return xp[k] + buf.gamma[k] * m[k] + buf.beta[k]; };
    const T i = sigmoid(pre(j)), f = sigmoid(pre(hidden + j));
    const T g = unrolled::tanh(pre(2 * hidden + j)), o = sigmoid(pre(3 * hidden + j));
    gates[j] = i, gates[hidden + j] = f, gates[2 * hidden + j] = g, gates[3 * hidden + j] = o;
    c[j] = f * c_prev[j] + i * g;
  }
  T* chat = row<T>(buf.chat, t, b);
  buf.rstd_c.template data_ptr<T>()[t * buf.rstd_c.size(1) + b] = normalise(c, chat, hidden, eps_c);
  T* h = row<T>(buf.hs, t + 1, b);
  const T* o = gates + 3 * hidden;
  UNROLLED_VECTOR_LOOP
  for (int64_t j = 0; j < hidden; ++j) {  // h = o tanh(gamma_c chat + beta_c)
    h[j] = o[j] * unrolled::tanh(buf.gamma_c[j] * chat[j] + buf.beta_c[j]);
  }
}

template <typename T>
void lstm_forward_loop(const Tensor& xp, const Tensor& w_hh, const LstmBuffers<T>& buf, T eps,
                       T eps_c) {
  const int64_t steps = xp.size(0), batch = xp.size(1), hidden = buf.hs.size(2);
  const auto options = xp.options();
  const Tensor w_t = w_hh.t().contiguous();  // (H, 4H), row-major: faster small GEMMs
  for (int64_t t = 0; t < steps; ++t) {
    Tensor m = matrix(row<T>(buf.mhat, t, 0), batch, 4 * hidden, options);
    matmul_into(m, matrix(row<T>(buf.hs, t, 0), batch, hidden, options), w_t);  // (B,H) @ (H,4H)
    for_rows(batch, row_cost * 4 * hidden, [&](int64_t first, int64_t last) {
      for (int64_t b = first; b < last; ++b) lstm_forward_row(buf, t, b, hidden, eps, eps_c);
    });
  }
}

// Everything one LSTM backward row pass reads and writes, at step t. Each row of `sums`:
// d_gamma (4H), d_beta (4H), d_gamma_c (H), d_beta_c (H), that batch row's partial sums.
template <typename T>
struct LstmGrads {
  const Tensor &d_hs, &d_cs, &d_xp, &dm;
  const RowSums<T>& sums;
};

// One row, backward: dc (into d_cs[t]), d_xp = d_pre, dm (LN backward of d_pre), and the LN
// parameters' terms d_n chat, d_n (LN(c)) and d_pre mhat, d_pre (LN(m)) into the row's sums.
template <typename T>
void lstm_backward_row(const LstmBuffers<T>& buf, const LstmGrads<T>& grad, int64_t t, int64_t b,
                       int64_t hidden) {
  const T* gates = row<T>(buf.gates, t, b);
  const T *i = gates, *f = gates + hidden, *g = gates + 2 * hidden, *o = gates + 3 * hidden;
  const T* chat = row<T>(buf.chat, t, b);
  const T* c_prev = row<T>(buf.cs, t, b);
  const T* dh = row<T>(grad.d_hs, t + 1, b);
  const T* dc_in = row<T>(grad.d_cs, t + 1, b);
  T* dc_prev = row<T>(grad.d_cs, t, b);
  T* d_pre = row<T>(grad.d_xp, t, b);  // (4H); its i block first holds LN(c)'s dc
  T *d_i = d_pre, *d_f = d_pre + hidden, *d_g = d_pre + 2 * hidden, *d_o = d_pre + 3 * hidden;
  T* sum = grad.sums.row(b);
  T *sum_gamma = sum, *sum_beta = sum + 4 * hidden;
  T *sum_gamma_c = sum + 8 * hidden, *sum_beta_c = sum + 9 * hidden;
  UNROLLED_VECTOR_LOOP
  for (int64_t j = 0; j < hidden; ++j) {  // h = o tanh(n), n = gamma_c chat + beta_c
    const T tanh_n = unrolled::tanh(buf.gamma_c[j] * chat[j] + buf.beta_c[j]);
    const T d_n = dh[j] * o[j] * (T(1) - tanh_n * tanh_n);
    sum_gamma_c[j] += d_n * chat[j];
    sum_beta_c[j] += d_n;
    d_o[j] = dh[j] * tanh_n * o[j] * (T(1) - o[j]);
    d_i[j] = d_n * buf.gamma_c[j];  // d_chat
  }
  const T rstd_c = buf.rstd_c.template data_ptr<T>()[t * buf.rstd_c.size(1) + b];
  layer_norm_backward(d_i, chat, rstd_c, hidden);  // d_i: c_t's gradient through LN(c)
  UNROLLED_VECTOR_LOOP
  for (int64_t j = 0; j < hidden; ++j) {
    const T dc = dc_in[j] + d_i[j];
    d_i[j] = dc * g[j] * i[j] * (T(1) - i[j]);
    d_f[j] = dc * c_prev[j] * f[j] * (T(1) - f[j]);
    d_g[j] = dc * i[j] * (T(1) - g[j] * g[j]);
    dc_prev[j] += dc * f[j];
  }
  T* dm = row<T>(grad.dm, t, b);
  const T* mhat = row<T>(buf.mhat, t, b);
  UNROLLED_VECTOR_LOOP
  for (int64_t k = 0; k < 4 * hidden; ++k) {
    sum_gamma[k] += d_pre[k] * mhat[k];
    sum_beta[k] += d_pre[k];
    dm[k] = d_pre[k] * buf.gamma[k];  // d_mhat
  }
  const T rstd = buf.rstd.template data_ptr<T>()[t * buf.rstd.size(1) + b];
  layer_norm_backward(dm, mhat, rstd, 4 * hidden);
}

// The backward time loop of both cells, t = T-1 .. 0: each row's elementwise backward
// (backward_row(t, b), which writes dm_t), then d_h_{t-1} += dm_t @ W_hh: (B, G*H) @ (G*H, H).
template <typename T, typename Row>
void backward_steps(const Tensor& w_hh, const Tensor& gates, const Tensor& d_hs, const Tensor& dm,
                    int64_t hidden, const Row& backward_row) {
  const int64_t steps = gates.size(0), batch = gates.size(1), width = gates.size(2);  // G*H
  const auto options = gates.options();
  const Tensor w = w_hh.contiguous();  // (G*H, H)
  for (int64_t t = steps - 1; t >= 0; --t) {
    for_rows(batch, row_cost * width, [&](int64_t first, int64_t last) {
      for (int64_t b = first; b < last; ++b) backward_row(t, b);
    });
    Tensor d_h_prev = matrix(row<T>(d_hs, t, 0), batch, hidden, options);
    add_matmul_(d_h_prev, matrix(row<T>(dm, t, 0), batch, width, options), w);
  }
}

template <typename T>
void lstm_backward_loop(const Tensor& w_hh, const LstmBuffers<T>& buf, const LstmGrads<T>& grad) {
  const int64_t hidden = buf.cs.size(2);
  backward_steps<T>(w_hh, buf.gates, grad.d_hs, grad.dm, hidden, [&](int64_t t, int64_t b) {
    lstm_backward_row(buf, grad, t, b, hidden);
  });
}

// ---- GRU ----------------------------------------------------------------------------------

template <typename T>
struct GruBuffers {
  const Tensor &xp, &gates, &mhat, &rstd, &hs;
  const T *gamma, *beta;
};

// One row, forward: mhat (in place), r, z, n and h_t = n + z (h_{t-1} - n).
template <typename T>
void gru_forward_row(const GruBuffers<T>& buf, int64_t t, int64_t b, int64_t hidden, T eps) {
  T* m = row<T>(buf.mhat, t, b);  // (3H): m_t on entry, mhat_t on exit
  buf.rstd.template data_ptr<T>()[t * buf.rstd.size(1) + b] = normalise(m, m, 3 * hidden, eps);
  const T* xp = row<T>(buf.xp, t, b);
  T* gates = row<T>(buf.gates, t, b);
  const T* h_prev = row<T>(buf.hs, t, b);
  T* h = row<T>(buf.hs, t + 1, b);
  UNROLLED_VECTOR_LOOP
  for (int64_t j = 0; j < hidden; ++j) {
    auto ln = [&](int64_t k) { return buf.gamma[k] * m[k] + buf.beta[k]; };  // b = LN(m)
    const T r = sigmoid(xp[j] + ln(j)), z = sigmoid(xp[hidden + j] + ln(hidden + j));
    const T n = unrolled::tanh(xp[2 * hidden + j] + r * ln(2 * hidden + j));
    gates[j] = r, gates[hidden + j] = z, gates[2 * hidden + j] = n;
    h[j] = n + z * (h_prev[j] - n);
  }
}

template <typename T>
void gru_forward_loop(const Tensor& xp, const Tensor& w_hh, const GruBuffers<T>& buf, T eps) {
  const int64_t steps = xp.size(0), batch = xp.size(1), hidden = buf.hs.size(2);
  const auto options = xp.options();
  const Tensor w_t = w_hh.t().contiguous();  // (H, 3H)
  for (int64_t t = 0; t < steps; ++t) {
    Tensor m = matrix(row<T>(buf.mhat, t, 0), batch, 3 * hidden, options);
    matmul_into(m, matrix(row<T>(buf.hs, t, 0), batch, hidden, options), w_t);  // (B,H) @ (H,3H)
    for_rows(batch, row_cost * 3 * hidden, [&](int64_t first, int64_t last) {
      for (int64_t b = first; b < last; ++b) gru_forward_row(buf, t, b, hidden, eps);
    });
  }
}

// Each row of `sums`: d_gamma (3H), d_beta (3H), that batch row's partial sums.
template <typename T>
struct GruGrads {
  const Tensor &d_hs, &d_xp, &dm;
  const RowSums<T>& sums;
};

// One row, backward: d_xp = (d_r, d_z, d_an), d_hs[t] += dh z, dm = LN backward of
// d_b = (d_r, d_z, d_an r), and d_b mhat, d_b into the row's sums.
template <typename T>
void gru_backward_row(const GruBuffers<T>& buf, const GruGrads<T>& grad, int64_t t, int64_t b,
                      int64_t hidden) {
  const T* gates = row<T>(buf.gates, t, b);
  const T *r = gates, *z = gates + hidden, *n = gates + 2 * hidden;
  const T* mhat = row<T>(buf.mhat, t, b);
  const T* h_prev = row<T>(buf.hs, t, b);
  const T* dh = row<T>(grad.d_hs, t + 1, b);
  T* dh_prev = row<T>(grad.d_hs, t, b);
  T* d_xp = row<T>(grad.d_xp, t, b);
  T* dm = row<T>(grad.dm, t, b);  // (3H): d_b * gamma, then the LN backward in place
  T* sum_gamma = grad.sums.row(b);
  T* sum_beta = sum_gamma + 3 * hidden;
  const T *gamma = buf.gamma, *beta = buf.beta;
  UNROLLED_VECTOR_LOOP
  for (int64_t j = 0; j < hidden; ++j) {
    const int64_t jz = hidden + j, jn = 2 * hidden + j;
    const T b_n = gamma[jn] * mhat[jn] + beta[jn];
    const T d_an = dh[j] * (T(1) - z[j]) * (T(1) - n[j] * n[j]);
    const T d_r = d_an * b_n * r[j] * (T(1) - r[j]);
    const T d_z = dh[j] * (h_prev[j] - n[j]) * z[j] * (T(1) - z[j]);
    const T d_bn = d_an * r[j];  // d_b's n block
    d_xp[j] = d_r, d_xp[jz] = d_z, d_xp[jn] = d_an;
    dm[j] = d_r * gamma[j], dm[jz] = d_z * gamma[jz], dm[jn] = d_bn * gamma[jn];
    sum_gamma[j] += d_r * mhat[j], sum_gamma[jz] += d_z * mhat[jz];
    sum_gamma[jn] += d_bn * mhat[jn];
    sum_beta[j] += d_r, sum_beta[jz] += d_z, sum_beta[jn] += d_bn;
    dh_prev[j] += dh[j] * z[j];
  }
  const T rstd = buf.rstd.template data_ptr<T>()[t * buf.rstd.size(1) + b];
  layer_norm_backward(dm, mhat, rstd, 3 * hidden);
}

template <typename T>
void gru_backward_loop(const Tensor& w_hh, const GruBuffers<T>& buf, const GruGrads<T>& grad) {
  const int64_t hidden = buf.hs.size(2);
  backward_steps<T>(w_hh, buf.gates, grad.d_hs, grad.dm, hidden, [&](int64_t t, int64_t b) {
    gru_backward_row(buf, grad, t, b, hidden);
  });
}

// ---- the ops ------------------------------------------------------------------------------

void check_buffers(std::initializer_list<std::pair<const Tensor*, const char*>> buffers,
                   const Tensor& like) {
  for (const auto& [t, name] : buffers) {
    TORCH_CHECK(t->is_contiguous(), "unrolled native LayerNorm loops: ", name,
                " must be contiguous");
    TORCH_CHECK(t->scalar_type() == like.scalar_type() && t->device() == like.device(),
                "unrolled native LayerNorm loops: ", name, " must be ", like.scalar_type(),
                " on ", like.device());
  }
}

void layernorm_lstm_forward(const Tensor& xp, const Tensor& w_hh, const Tensor& gamma,
                            const Tensor& beta, const Tensor& gamma_c, const Tensor& beta_c,
                            double eps, double eps_c, Tensor gates, Tensor mhat, Tensor rstd,
                            Tensor hs, Tensor cs, Tensor chat, Tensor rstd_c) {
  const Tensor params[] = {gamma.contiguous(), beta.contiguous(), gamma_c.contiguous(),
                           beta_c.contiguous()};
  check_buffers({{&xp, "xp"}, {&gates, "gates"}, {&mhat, "mhat"}, {&rstd, "rstd"}, {&hs, "hs"},
                 {&cs, "cs"}, {&chat, "chat"}, {&rstd_c, "rstd_c"}, {&params[0], "gamma"},
                 {&params[2], "gamma_c"}},
                xp);
  AT_DISPATCH_FLOATING_TYPES(xp.scalar_type(), "layernorm_lstm_forward", [&] {
    const LstmBuffers<scalar_t> buf{xp, gates, mhat, rstd, hs, cs, chat, rstd_c,
                                    params[0].data_ptr<scalar_t>(), params[1].data_ptr<scalar_t>(),
                                    params[2].data_ptr<scalar_t>(), params[3].data_ptr<scalar_t>()};
    lstm_forward_loop<scalar_t>(xp, w_hh, buf, scalar_t(eps), scalar_t(eps_c));
  });
}

void layernorm_lstm_backward(const Tensor& gates, const Tensor& mhat, const Tensor& rstd,
                             const Tensor& cs, const Tensor& chat, const Tensor& rstd_c,
                             const Tensor& w_hh, const Tensor& gamma, const Tensor& gamma_c,
                             const Tensor& beta_c, Tensor d_hs, Tensor d_cs, Tensor d_xp,
                             Tensor dm, Tensor d_gamma, Tensor d_beta, Tensor d_gamma_c,
                             Tensor d_beta_c) {
  const Tensor params[] = {gamma.contiguous(), gamma_c.contiguous(), beta_c.contiguous()};
  check_buffers({{&gates, "gates"}, {&mhat, "mhat"}, {&rstd, "rstd"}, {&cs, "cs"},
                 {&chat, "chat"}, {&rstd_c, "rstd_c"}, {&d_hs, "d_hs"}, {&d_cs, "d_cs"},
                 {&d_xp, "d_xp"}, {&dm, "dm"}, {&d_gamma, "d_gamma"}, {&d_beta, "d_beta"},
                 {&d_gamma_c, "d_gamma_c"}, {&d_beta_c, "d_beta_c"}},
                gates);
  const int64_t batch = gates.size(1), hidden = cs.size(2);
  TORCH_CHECK(d_gamma.numel() == 4 * hidden && d_beta.numel() == 4 * hidden &&
                  d_gamma_c.numel() == hidden && d_beta_c.numel() == hidden,
              "unrolled native LayerNorm loops: d_gamma, d_beta must have 4H elements, "
              "d_gamma_c, d_beta_c H");
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "layernorm_lstm_backward", [&] {
    // The backward reads no xp, hs or beta: those fields hold stand-ins, never read.
    const LstmBuffers<scalar_t> buf{gates, gates, mhat, rstd, cs, cs, chat, rstd_c,
                                    params[0].data_ptr<scalar_t>(), nullptr,
                                    params[1].data_ptr<scalar_t>(), params[2].data_ptr<scalar_t>()};
    const RowSums<scalar_t> sums(batch, 10 * hidden, gates.options());
    lstm_backward_loop<scalar_t>(w_hh, buf, LstmGrads<scalar_t>{d_hs, d_cs, d_xp, dm, sums});
    sums.total(d_gamma.data_ptr<scalar_t>(), 0, 4 * hidden);
    sums.total(d_beta.data_ptr<scalar_t>(), 4 * hidden, 4 * hidden);
    sums.total(d_gamma_c.data_ptr<scalar_t>(), 8 * hidden, hidden);
    sums.total(d_beta_c.data_ptr<scalar_t>(), 9 * hidden, hidden);
  });
}

void layernorm_gru_forward(const Tensor& xp, const Tensor& w_hh, const Tensor& gamma,
                           const Tensor& beta, double eps, Tensor gates, Tensor mhat,
                           Tensor rstd, Tensor hs) {
  const Tensor params[] = {gamma.contiguous(), beta.contiguous()};
  check_buffers({{&xp, "xp"}, {&gates, "gates"}, {&mhat, "mhat"}, {&rstd, "rstd"}, {&hs, "hs"},
                 {&params[0], "gamma"}, {&params[1], "beta"}},
                xp);
  AT_DISPATCH_FLOATING_TYPES(xp.scalar_type(), "layernorm_gru_forward", [&] {
    const GruBuffers<scalar_t> buf{xp, gates, mhat, rstd, hs, params[0].data_ptr<scalar_t>(),
                                   params[1].data_ptr<scalar_t>()};
    gru_forward_loop<scalar_t>(xp, w_hh, buf, scalar_t(eps));
  });
}

void layernorm_gru_backward(const Tensor& gates, const Tensor& mhat, const Tensor& rstd,
                            const Tensor& hs, const Tensor& w_hh, const Tensor& gamma,
                            const Tensor& beta, Tensor d_hs, Tensor d_xp, Tensor dm,
                            Tensor d_gamma, Tensor d_beta) {
  const Tensor params[] = {gamma.contiguous(), beta.contiguous()};
  check_buffers({{&gates, "gates"}, {&mhat, "mhat"}, {&rstd, "rstd"}, {&hs, "hs"},
                 {&d_hs, "d_hs"}, {&d_xp, "d_xp"}, {&dm, "dm"}, {&d_gamma, "d_gamma"},
                 {&d_beta, "d_beta"}},
                gates);
  const int64_t batch = gates.size(1), hidden = hs.size(2);
  TORCH_CHECK(d_gamma.numel() == 3 * hidden && d_beta.numel() == 3 * hidden,
              "unrolled native LayerNorm loops: d_gamma, d_beta must have 3H elements");
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "layernorm_gru_backward", [&] {
    const GruBuffers<scalar_t> buf{gates, gates, mhat, rstd, hs, params[0].data_ptr<scalar_t>(),
                                   params[1].data_ptr<scalar_t>()};
    const RowSums<scalar_t> sums(batch, 6 * hidden, gates.options());
    gru_backward_loop<scalar_t>(w_hh, buf, GruGrads<scalar_t>{d_hs, d_xp, dm, sums});
    sums.total(d_gamma.data_ptr<scalar_t>(), 0, 3 * hidden);
    sums.total(d_beta.data_ptr<scalar_t>(), 3 * hidden, 3 * hidden);
  });
}

}  // namespace
}  // namespace unrolled

TORCH_LIBRARY_FRAGMENT(unrolled, m) {
  m.def("layernorm_lstm_forward(Tensor xp, Tensor w_hh, Tensor gamma, Tensor beta, "
        "Tensor gamma_c, Tensor beta_c, float eps, float eps_c, Tensor(a!) gates, "
        "Tensor(b!) mhat, Tensor(c!) rstd, Tensor(d!) hs, Tensor(e!) cs, Tensor(f!) chat, "
        "Tensor(g!) rstd_c) -> ()",
        &unrolled::layernorm_lstm_forward);
  m.def("layernorm_lstm_backward(Tensor gates, Tensor mhat, Tensor rstd, Tensor cs, "
        "Tensor chat, Tensor rstd_c, Tensor w_hh, Tensor gamma, Tensor gamma_c, Tensor beta_c, "
        "Tensor(a!) d_hs, Tensor(b!) d_cs, Tensor(c!) d_xp, Tensor(d!) dm, "
        "Tensor(e!) d_gamma, Tensor(f!) d_beta, Tensor(g!) d_gamma_c, Tensor(h!) d_beta_c) -> ()",
        &unrolled::layernorm_lstm_backward);
  m.def("layernorm_gru_forward(Tensor xp, Tensor w_hh, Tensor gamma, Tensor beta, float eps, "
        "Tensor(a!) gates, Tensor(b!) mhat, Tensor(c!) rstd, Tensor(d!) hs) -> ()",
        &unrolled::layernorm_gru_forward);
  m.def("layernorm_gru_backward(Tensor gates, Tensor mhat, Tensor rstd, Tensor hs, "
        "Tensor w_hh, Tensor gamma, Tensor beta, Tensor(a!) d_hs, Tensor(b!) d_xp, "
        "Tensor(c!) dm, Tensor(d!) d_gamma, Tensor(e!) d_beta) -> ()",
        &unrolled::layernorm_gru_backward);
}
