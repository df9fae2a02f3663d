// The LSTM recurrence of the fast backend, forward and backward, one layer, D directions.
//
// What it must equal: unrolled.cells.lstm at every step (the forward; its equations are stated
// there, once) and the derivative lines in `unrolled/fast/lstm.py` (the backward).
//
// Buffers: the LSTM buffer contract in `unrolled/fast/lstm.py` (layout, gate order, what each
// buffer holds after the forward, what the backward writes where). `unrolled/fast/loops/lstm.py`
// is the same loop in torch ops, function for function: forward_rows / backward_rows (one step's
// elementwise math), forward_direction / backward_direction (one direction's time loop),
// forward_loop / backward_loop (the directions).
//
// One speed variant, chosen by the caller's plan (`unrolled.backends.plan`), never here:
// `packed` runs the forward's recurrent product through MKL's packed GEMM (see PackedGemm).
#include <torch/library.h>

#include <type_traits>

#include "common.h"

namespace unrolled {
namespace {

// One step, rows [first_row, last_row): the elementwise part of unrolled.cells.lstm, from the
// pre-activations a = gates + bias to c and out = o * tanh(c).
// `out` is h (no projection) or r, the input of W_hr. c_prev may alias c (one reused slot).
// The activated gates are stored back only when a backward will read them (`keep`). With
// `extra` (B, 4H), the recurrent product computed elsewhere (packed GEMM), a = gates + extra +
// bias.
template <typename T, bool keep, bool has_extra>
void forward_rows(T* gates, const T* extra, const T* bias, const T* c_prev, T* c, T* out,
                  int64_t first_row, int64_t last_row, int64_t hidden) {
  for (int64_t b = first_row; b < last_row; ++b) {
    T* i = gates + b * 4 * hidden;
    T* f = i + hidden;
    T* g = f + hidden;
    T* o = g + hidden;
    const T* e = has_extra ? extra + b * 4 * hidden : bias;  // read only when has_extra
    const T* c_prev_row = c_prev + b * hidden;
    T* c_row = c + b * hidden;
    T* out_row = out + b * hidden;
    UNROLLED_VECTOR_LOOP
    for (int64_t j = 0; j < hidden; ++j) {
      T a_i = i[j] + bias[j], a_f = f[j] + bias[hidden + j];
      T a_g = g[j] + bias[2 * hidden + j], a_o = o[j] + bias[3 * hidden + j];
      if constexpr (has_extra) {
        a_i += e[j];
        a_f += e[hidden + j];
        a_g += e[2 * hidden + j];
        a_o += e[3 * hidden + j];
      }
      const T i_j = sigmoid(a_i), f_j = sigmoid(a_f), g_j = tanh(a_g), o_j = sigmoid(a_o);
      const T c_j = f_j * c_prev_row[j] + i_j * g_j;
      if constexpr (keep) {
        i[j] = i_j;
        f[j] = f_j;
        g[j] = g_j;
        o[j] = o_j;
      }
      c_row[j] = c_j;
      out_row[j] = o_j * tanh(c_j);
    }
  }
}

// One step backward, rows [first_row, last_row). `d_r` is the gradient reaching
// r = o * tanh(c) (d_h, or d_h @ W_hr); `dc` holds c_s's gradient on entry (plus `dc_arrival`,
// the c_n gradient entering at this step) and c_{s-1}'s on exit:
//   dc      += d_r * o * (1 - tanh(c)^2)
//   d_pre_o  = d_r * tanh(c) * o (1 - o)     d_pre_i = dc * g * i (1 - i)
//   d_pre_f  = dc * c_prev * f (1 - f)       d_pre_g = dc * i * (1 - g^2)
//   dc_prev  = dc * f
// into d_pre in torch's gate order; `r` (nullable) gets o * tanh(c). Every input of element j
// is read before any output is written, so d_pre may be the gates' own block.
template <typename T>
void backward_rows(const T* gates, const T* c_prev, const T* c, const T* d_r, T* dc,
                   const T* dc_arrival, T* d_pre, T* r, int64_t first_row, int64_t last_row,
                   int64_t hidden) {
  for (int64_t b = first_row; b < last_row; ++b) {
    const T* i = gates + b * 4 * hidden;
    const T* f = i + hidden;
    const T* g = f + hidden;
    const T* o = g + hidden;
    T* d_pre_i = d_pre + b * 4 * hidden;
    T* d_pre_f = d_pre_i + hidden;
    T* d_pre_g = d_pre_f + hidden;
    T* d_pre_o = d_pre_g + hidden;
    const int64_t at = b * hidden;
    const T* c_prev_row = c_prev + at;
    const T* c_row = c + at;
    const T* d_r_row = d_r + at;
    const T* arrival_row = dc_arrival == nullptr ? nullptr : dc_arrival + at;
    T* dc_row = dc + at;
    T* r_row = r == nullptr ? nullptr : r + at;
    UNROLLED_VECTOR_LOOP
    for (int64_t j = 0; j < hidden; ++j) {
      const T i_j = i[j], f_j = f[j], g_j = g[j], o_j = o[j];
      const T tanh_c = tanh(c_row[j]);
      const T d_r_j = d_r_row[j];
      T dc_j = dc_row[j] + (arrival_row == nullptr ? T(0) : arrival_row[j]);
      dc_j += d_r_j * o_j * (T(1) - tanh_c * tanh_c);
      if (r_row != nullptr) r_row[j] = o_j * tanh_c;
      d_pre_o[j] = d_r_j * tanh_c * o_j * (T(1) - o_j);
      d_pre_i[j] = dc_j * g_j * i_j * (T(1) - i_j);
      d_pre_f[j] = dc_j * c_prev_row[j] * f_j * (T(1) - f_j);
      d_pre_g[j] = dc_j * i_j * (T(1) - g_j * g_j);
      dc_row[j] = dc_j * f_j;
    }
  }
}

// The forward time loop of direction d.
template <typename T>
void forward_direction(int64_t d, Tensor& gates, const Tensor& bias, const Tensor& w_rec,
                       const Tensor& w_proj, Tensor& cs, Tensor& hs, Tensor& r,
                       at::IntArrayRef live, bool keep, bool packed_product) {
  const int64_t steps = gates.size(1), batch = gates.size(2), hidden = gates.size(3) / 4;
  const int64_t out_size = hs.size(3);
  const bool has_projection = given(w_proj), every_cell = cs.size(1) > 1;
  const auto options = gates.options();
  const Tensor w = w_rec.select(0, d);  // (P, 4H)
  const Tensor w_out = has_projection ? w_proj.select(0, d) : Tensor();  // (H, P)
  T* gate_base = gates.select(0, d).data_ptr<T>();  // (T, B, 4H)
  T* c_base = cs.select(0, d).data_ptr<T>();  // (T+1 or 1, B, H)
  T* h_base = hs.select(0, d).data_ptr<T>();  // (T+1, B, P)
  T* r_ptr = has_projection ? r.select(0, d).data_ptr<T>() : nullptr;  // (B, H)
  const T* bias_ptr = bias.select(0, d).data_ptr<T>();  // (4H,)
  // The plan's packed variant: MKL's packed GEMM (packed once here) computes each step's
  // product into a new (B, 4H) tensor that the elementwise pass adds; otherwise one addmm into
  // the gates.
  const PackedGemm* packed = packed_product ? packed_gemm() : nullptr;
  const Tensor w_rows = packed ? w.t().contiguous() : Tensor();  // W_hh (4H, P)
  const Tensor w_packed = packed ? packed->reorder.call(w_rows, batch) : Tensor();
  for (int64_t s = 0; s < steps; ++s) {
    const int64_t rows = live_rows(live, s, batch);
    T* gate_ptr = gate_base + s * batch * 4 * hidden;
    T* h_prev = h_base + s * batch * out_size;
    T* h_next = h_prev + batch * out_size;
    T* c_prev = c_base + (every_cell ? s : 0) * batch * hidden;
    T* c = every_cell ? c_prev + batch * hidden : c_prev;  // slot s+1, or the same slot
    T* out = has_projection ? r_ptr : h_next;
    const Tensor h = matrix(h_prev, rows, out_size, options);  // (rows, P)
    Tensor product;  // (B, 4H), packed GEMM only
    if (packed) {
      product = packed->linear.call(h, w_packed, w_rows, std::nullopt, batch);  // h @ W_hh^T
    } else {
      Tensor g = matrix(gate_ptr, rows, 4 * hidden, options);
      add_matmul_(g, h, w);  // += (rows, P) @ (P, 4H)
    }
    const T* extra = packed ? product.data_ptr<T>() : nullptr;
    for_rows(rows, 4 * hidden, [&](int64_t first, int64_t last) {
      auto run = [&](auto keep_tag, auto extra_tag) {
        forward_rows<T, decltype(keep_tag)::value, decltype(extra_tag)::value>(
            gate_ptr, extra, bias_ptr, c_prev, c, out, first, last, hidden);
      };
      using yes = std::true_type;
      using no = std::false_type;
      if (keep) {
        packed ? run(yes{}, yes{}) : run(yes{}, no{});
      } else {
        packed ? run(no{}, yes{}) : run(no{}, no{});
      }
    });
    if (has_projection) {
      Tensor h_new = matrix(h_next, rows, out_size, options);
      matmul_into(h_new, matrix(r_ptr, rows, hidden, options), w_out);  // (rows, H) @ (H, P)
    }
    zero_rows(h_next, rows, batch, out_size);
    if (every_cell) zero_rows(c, rows, batch, hidden);
  }
}

template <typename T>
void forward_loop(Tensor& gates, const Tensor& bias, const Tensor& w_rec, const Tensor& w_proj,
                  Tensor& cs, Tensor& hs, at::IntArrayRef live, bool keep, bool packed) {
  const int64_t directions = gates.size(0), batch = gates.size(2), hidden = gates.size(3) / 4;
  Tensor r = given(w_proj) ? at::empty({directions, batch, hidden}, gates.options()) : Tensor();
  // No bias (bias=False): zeros, so the loop has one shape.
  const Tensor b = given(bias) ? bias.contiguous() : at::zeros({directions, 4 * hidden}, gates.options());
  for_directions(directions, gates.size(2) * hs.size(3) * 4 * hidden, [&](int64_t d) {
    forward_direction<T>(d, gates, b, w_rec, w_proj, cs, hs, r, live, keep, packed);
  });
}

// The backward time loop of direction d.
template <typename T>
void backward_direction(int64_t d, const Tensor& gates, const Tensor& cs, Tensor& d_h,
                        Tensor& dc, const Tensor& dc_arrivals, const Tensor& w_rec,
                        const Tensor& w_proj, Tensor& d_pre, Tensor& r, Tensor& d_r,
                        at::IntArrayRef live) {
  const int64_t steps = gates.size(1), batch = gates.size(2), hidden = gates.size(3) / 4;
  const int64_t out_size = d_h.size(3);
  const bool has_projection = given(w_proj), arrivals = given(dc_arrivals), keep_r = given(r);
  const auto options = gates.options();
  const int64_t gate_step = batch * 4 * hidden, cell_step = batch * hidden;
  const Tensor w = w_rec.select(0, d);  // (4H, P)
  const Tensor w_out = has_projection ? w_proj.select(0, d) : Tensor();  // (P, H)
  const T* gate_base = gates.select(0, d).data_ptr<T>();  // (T, B, 4H)
  const T* c_base = cs.select(0, d).data_ptr<T>();  // (T+1, B, H)
  T* d_h_base = d_h.select(0, d).data_ptr<T>();  // (T, B, P)
  T* dc_ptr = dc.select(0, d).data_ptr<T>();  // (B, H)
  const T* arrival_base = arrivals ? dc_arrivals.select(0, d).data_ptr<T>() : nullptr;
  T* d_pre_base = d_pre.select(0, d).data_ptr<T>();  // (T, B, 4H)
  T* r_base = keep_r ? r.select(0, d).data_ptr<T>() : nullptr;  // (T, B, H)
  T* d_r_buffer = has_projection ? d_r.select(0, d).data_ptr<T>() : nullptr;  // (B, H)
  for (int64_t s = steps - 1; s >= 0; --s) {
    const int64_t rows = live_rows(live, s, batch);
    T* d_h_s = d_h_base + s * batch * out_size;
    if (has_projection) {
      Tensor d_r_live = matrix(d_r_buffer, rows, hidden, options);
      matmul_into(d_r_live, matrix(d_h_s, rows, out_size, options), w_out);  // (rows,P) @ (P,H)
    }
    const T* d_r_ptr = has_projection ? d_r_buffer : d_h_s;
    const T* gate_ptr = gate_base + s * gate_step;
    const T* c_prev = c_base + s * cell_step;
    const T* arrival = arrivals ? arrival_base + s * cell_step : nullptr;
    T* d_pre_ptr = d_pre_base + s * gate_step;
    T* r_ptr = keep_r ? r_base + s * cell_step : nullptr;
    for_rows(rows, 4 * hidden, [&](int64_t first, int64_t last) {
      backward_rows<T>(gate_ptr, c_prev, c_prev + cell_step, d_r_ptr, dc_ptr, arrival,
                       d_pre_ptr, r_ptr, first, last, hidden);
    });
    zero_rows(d_pre_ptr, rows, batch, 4 * hidden);
    if (keep_r) zero_rows(r_ptr, rows, batch, hidden);
    if (s > 0) {  // d_h_{s-1} += d_pre_s @ W_hh: (rows, 4H) @ (4H, P)
      Tensor d_h_prev = matrix(d_h_s - batch * out_size, rows, out_size, options);
      add_matmul_(d_h_prev, matrix(d_pre_ptr, rows, 4 * hidden, options), w);
    }
  }
}

template <typename T>
void backward_loop(const Tensor& gates, const Tensor& cs, Tensor& d_h, Tensor& dc,
                   const Tensor& dc_arrivals, const Tensor& w_rec, const Tensor& w_proj,
                   Tensor& d_pre, Tensor& r, at::IntArrayRef live) {
  const int64_t directions = gates.size(0), batch = gates.size(2), hidden = gates.size(3) / 4;
  Tensor d_r = given(w_proj) ? at::empty({directions, batch, hidden}, gates.options()) : Tensor();
  for_directions(directions, gates.size(2) * d_h.size(3) * 4 * hidden, [&](int64_t d) {
    backward_direction<T>(d, gates, cs, d_h, dc, dc_arrivals, w_rec, w_proj, d_pre, r, d_r, live);
  });
}

void check_contiguous(const Tensor& t, const char* name) {
  TORCH_CHECK(!given(t) || t.is_contiguous(), "unrolled native LSTM: ", name,
              " must be contiguous");
}

void lstm_forward(Tensor gates, const Tensor& bias, const Tensor& w_rec, const Tensor& w_proj,
                  Tensor cs, Tensor hs, at::IntArrayRef live, bool keep, bool packed) {
  check_contiguous(gates, "gates");
  check_contiguous(cs, "cs");
  check_contiguous(hs, "hs");
  // The plan asks for the packed variant only where it exists and applies; a request that does
  // not fit is a bug in the caller, never silently ignored.
  TORCH_CHECK(!packed || (packed_gemm() != nullptr && gates.scalar_type() == at::kFloat &&
                          live.empty()),
              "unrolled native LSTM: packed=True needs MKL's packed GEMM (this torch has it: ",
              packed_gemm() != nullptr, "), float32 (got ", gates.scalar_type(),
              ") and the full batch at every step");
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstm_forward", [&] {
    forward_loop<scalar_t>(gates, bias, w_rec, w_proj, cs, hs, live, keep, packed);
  });
}

bool packed_gemm_available() { return packed_gemm() != nullptr; }

void lstm_backward(const Tensor& gates, const Tensor& cs, Tensor d_h, Tensor dc,
                   const Tensor& dc_arrivals, const Tensor& w_rec, const Tensor& w_proj,
                   Tensor d_pre, Tensor r, at::IntArrayRef live) {
  for (const auto& [t, name] : {std::pair{gates, "gates"}, {cs, "cs"}, {d_h, "d_h"},
                                {dc, "dc"}, {dc_arrivals, "dc_arrivals"}, {d_pre, "d_pre"},
                                {r, "r"}}) {
    check_contiguous(t, name);
  }
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstm_backward", [&] {
    backward_loop<scalar_t>(gates, cs, d_h, dc, dc_arrivals, w_rec, w_proj, d_pre, r, live);
  });
}

}  // namespace
}  // namespace unrolled

TORCH_LIBRARY_FRAGMENT(unrolled, m) {
  m.def("lstm_forward(Tensor(a!) gates, Tensor bias, Tensor w_rec, Tensor w_proj, Tensor(b!) cs, "
        "Tensor(c!) hs, int[] live, bool keep, bool packed) -> ()",
        &unrolled::lstm_forward);
  m.def("lstm_backward(Tensor gates, Tensor cs, Tensor(a!) d_h, Tensor(b!) dc, "
        "Tensor dc_arrivals, Tensor w_rec, Tensor w_proj, Tensor(c!) d_pre, Tensor(d!) r, "
        "int[] live) -> ()",
        &unrolled::lstm_backward);
  m.def("packed_gemm_available() -> bool", &unrolled::packed_gemm_available);
}
