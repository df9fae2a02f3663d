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
// Two ways to run the loops, chosen by the caller's plan (`unrolled.backends.plan`), never here:
// `fused` runs the fused engine (engine.h: packed panels, the project's own kernel, the gate
// math on each tile, one team of threads per call; no projection), else one BLAS call per step
// and one elementwise pass, where `packed` multiplies by W_hh through MKL's packed GEMM (see
// PackedGemm). The engine computes the input part in the same pass as the recurrent one, from
// `inputs`/`w_in` (given exactly when `fused`); the BLAS loop reads it from `gates`.
#include <torch/library.h>

#include <type_traits>

#include "common.h"
#include "engine.h"

namespace unrolled {
namespace {

// One step, rows [first_row, last_row) and hidden units [first_unit, last_unit): the
// elementwise part of unrolled.cells.lstm, from the pre-activations a = gates + bias (+ extra)
// to c and out = o * tanh(c). `out` is h (no projection) or r, the input of W_hr. c_prev may
// alias c (one reused slot). The activated gates are stored back only when a backward will
// read them (`keep`). `extra` is the recurrent product computed elsewhere, added here: unit
// first_unit + j of gate g in row b at extra[b * extra_row + g * extra_gate + j] (the fused
// engine's tile, or MKL's packed GEMM's (B, 4H) result). Without `reads_gates` the gates
// block holds nothing yet (extra has the input part too: the fused engine's tile of
// [x_s, h_{s-1}] @ [W_ih; W_hh]^T) and is only written, and only with `keep`.
template <typename T, bool keep, bool has_extra, bool reads_gates = true>
void forward_rows(T* gates, const T* extra, int64_t extra_row, int64_t extra_gate,
                  const T* bias, const T* c_prev, T* c, T* out, int64_t first_row,
                  int64_t last_row, int64_t first_unit, int64_t last_unit, int64_t hidden) {
  const int64_t units = last_unit - first_unit;
  const T* b_i = bias + first_unit;
  const T* b_f = b_i + hidden;
  const T* b_g = b_f + hidden;
  const T* b_o = b_g + hidden;
  for (int64_t b = first_row; b < last_row; ++b) {
    T* i = gates + b * 4 * hidden + first_unit;
    T* f = i + hidden;
    T* g = f + hidden;
    T* o = g + hidden;
    const T* e_i = has_extra ? extra + b * extra_row : bias;  // read only when has_extra
    const T* e_f = e_i + (has_extra ? extra_gate : 0);
    const T* e_g = e_f + (has_extra ? extra_gate : 0);
    const T* e_o = e_g + (has_extra ? extra_gate : 0);
    const T* c_prev_row = c_prev + b * hidden + first_unit;
    T* c_row = c + b * hidden + first_unit;
    T* out_row = out + b * hidden + first_unit;
    UNROLLED_VECTOR_LOOP
    for (int64_t j = 0; j < units; ++j) {
      T a_i = b_i[j], a_f = b_f[j], a_g = b_g[j], a_o = b_o[j];
      if constexpr (reads_gates) {
        a_i += i[j];
        a_f += f[j];
        a_g += g[j];
        a_o += o[j];
      }
      if constexpr (has_extra) {
        a_i += e_i[j];
        a_f += e_f[j];
        a_g += e_g[j];
        a_o += e_o[j];
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

// One step backward, rows [first_row, last_row) and hidden units [first_unit, last_unit).
// `d_r` is the gradient reaching r = o * tanh(c) (d_h, or d_h @ W_hr); `dc` holds c_s's
// gradient on entry and c_{s-1}'s on exit (a row enters its last step holding its c_n
// gradient: no earlier step touched it):
//   dc      += d_r * o * (1 - tanh(c)^2)
//   d_pre_o  = d_r * tanh(c) * o (1 - o)     d_pre_i = dc * g * i (1 - i)
//   d_pre_f  = dc * c_prev * f (1 - f)       d_pre_g = dc * i * (1 - g^2)
//   dc_prev  = dc * f
// into d_pre in torch's gate order; `r` (nullable) gets o * tanh(c). Every input of element j
// is read before any output is written, so d_pre may be the gates' own block.
//
// With zoneout (`zoned`) the stored c is zoned out; what h~ = o tanh(c~) read is the update
// c~ = f c_prev + i g, recomputed here from the gates.
template <typename T, bool zoned = false>
void backward_rows(const T* gates, const T* c_prev, const T* c, const T* d_r, T* dc, T* d_pre,
                   T* r, int64_t first_row, int64_t last_row,
                   int64_t first_unit, int64_t last_unit, int64_t hidden) {
  const int64_t units = last_unit - first_unit;
  for (int64_t b = first_row; b < last_row; ++b) {
    const T* i = gates + b * 4 * hidden + first_unit;
    const T* f = i + hidden;
    const T* g = f + hidden;
    const T* o = g + hidden;
    T* d_pre_i = d_pre + b * 4 * hidden + first_unit;
    T* d_pre_f = d_pre_i + hidden;
    T* d_pre_g = d_pre_f + hidden;
    T* d_pre_o = d_pre_g + hidden;
    const int64_t at = b * hidden + first_unit;
    const T* c_prev_row = c_prev + at;
    const T* c_row = c + at;
    const T* d_r_row = d_r + at;
    T* dc_row = dc + at;
    T* r_row = r == nullptr ? nullptr : r + at;
    UNROLLED_VECTOR_LOOP
    for (int64_t j = 0; j < units; ++j) {
      const T i_j = i[j], f_j = f[j], g_j = g[j], o_j = o[j];
      const T tanh_c = tanh(zoned ? f_j * c_prev_row[j] + i_j * g_j : c_row[j]);
      const T d_r_j = d_r_row[j];
      T dc_j = dc_row[j];
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

// Recurrent dropout and zoneout (unrolled.regularizers; the Python loop in loops/lstm.py does
// the same in torch ops). `drop` (B, P) is the per-sequence mask, 0 or 1/(1-p); a zoneout
// weight d (one per row and unit, rows of this step) weighs the previous state:
// state = d * previous + (1 - d) * update.

// Forward: c~ and h~ (in c and out) -> the zoned-out states, in place.
template <typename T>
void zone_rows(const T* keep_h, const T* keep_c, const T* h_prev, const T* c_prev, T* h, T* c,
               int64_t rows, int64_t hidden) {
  for_rows(rows, 2 * hidden, [&](int64_t first, int64_t last) {
    UNROLLED_VECTOR_LOOP
    for (int64_t k = first * hidden; k < last * hidden; ++k) {
      c[k] = keep_c[k] * c_prev[k] + (T(1) - keep_c[k]) * c[k];
      h[k] = keep_h[k] * h_prev[k] + (T(1) - keep_h[k]) * h[k];
    }
  });
}

// Backward, before the step's backward_rows: the gradients of h_s and c_s split between the
// update (what backward_rows reads: d_new = (1 - d^h) d_h_s into `d_new`, dc scaled by
// (1 - d^c)) and the previous state (dc_keep = d^c dc, added back after it).
template <typename T>
void zone_split_rows(const T* keep_h, const T* keep_c, const T* d_h, T* d_new, T* dc,
                     T* dc_keep, int64_t rows, int64_t hidden) {
  for_rows(rows, 2 * hidden, [&](int64_t first, int64_t last) {
    UNROLLED_VECTOR_LOOP
    for (int64_t k = first * hidden; k < last * hidden; ++k) {
      d_new[k] = (T(1) - keep_h[k]) * d_h[k];
      dc_keep[k] = keep_c[k] * dc[k];
      dc[k] *= T(1) - keep_c[k];
    }
  });
}

// Backward, after the step's backward_rows (dc = f dc~): dc_prev = f dc~ + d^c dc, and h_{s-1}
// (when there is a step before: d_h_prev) gets d^h d_h_s directly.
template <typename T>
void zone_join_rows(const T* keep_h, const T* d_h, T* d_h_prev, T* dc, const T* dc_keep,
                    int64_t rows, int64_t hidden) {
  for_rows(rows, 2 * hidden, [&](int64_t first, int64_t last) {
    UNROLLED_VECTOR_LOOP
    for (int64_t k = first * hidden; k < last * hidden; ++k) {
      dc[k] += dc_keep[k];
      if (d_h_prev != nullptr) d_h_prev[k] += keep_h[k] * d_h[k];
    }
  });
}

// The forward time loop of direction d.
template <typename T>
void forward_direction(int64_t d, Tensor& gates, const Tensor& bias, at::TensorList w_rec,
                       at::TensorList w_proj, Tensor& cs, Tensor& hs, Tensor& r,
                       const Steps& steps, bool keep, bool packed_product, const Tensor& drop,
                       const Tensor& zone_h, const Tensor& zone_c) {
  const int64_t batch = steps.batch(), hidden = cs.size(2), out_size = hs.size(2);
  const bool has_projection = !w_proj.empty(), every_cell = cs.size(1) > batch;
  const auto options = gates.options();
  const Tensor& w = w_rec[d];  // (P, 4H)
  const Tensor w_out = has_projection ? w_proj[d] : Tensor();  // (H, P)
  T* gate_base = gates.select(0, d).data_ptr<T>();  // (N, 4H)
  T* c_base = cs.select(0, d).data_ptr<T>();  // (B + N or B, H)
  T* h_base = hs.select(0, d).data_ptr<T>();  // (B + N, P)
  T* r_ptr = has_projection ? r.select(0, d).data_ptr<T>() : nullptr;  // (B, H)
  const T* bias_ptr = bias.select(0, d).data_ptr<T>();  // (4H,)
  // The plan's packed variant: MKL's packed GEMM (packed once here) computes each step's
  // product into a new (B, 4H) tensor that the elementwise pass adds; otherwise one addmm into
  // the gates.
  const PackedGemm* packed = packed_product ? packed_gemm() : nullptr;
  const Tensor w_rows = packed ? w.t().contiguous() : Tensor();  // W_hh (4H, P)
  const Tensor w_packed = packed ? packed->reorder.call(w_rows, batch) : Tensor();
  const bool dropping = given(drop), zoned = given(zone_h);
  const T* drop_ptr = dropping ? drop.select(0, d).data_ptr<T>() : nullptr;  // (B, P)
  Tensor dropped = dropping ? at::empty({batch, out_size}, options) : Tensor();  // h * drop
  const T* keep_h = zoned ? zone_h.select(0, d).data_ptr<T>() : nullptr;  // (N, H)
  const T* keep_c = zoned ? zone_c.select(0, d).data_ptr<T>() : nullptr;  // (N, H)
  for (int64_t s = 0; s < steps.count(); ++s) {
    const int64_t rows = steps.rows(s);
    T* gate_ptr = gate_base + steps.at(s) * 4 * hidden;
    T* h_prev = h_base + steps.previous(s) * out_size;
    T* h_next = h_base + steps.next(s) * out_size;
    T* c_prev = every_cell ? c_base + steps.previous(s) * hidden : c_base;
    T* c = every_cell ? c_base + steps.next(s) * hidden : c_base;  // or the same slot
    T* out = has_projection ? r_ptr : h_next;
    if (dropping) drop_rows(h_prev, drop_ptr, dropped.data_ptr<T>(), rows, out_size);
    const Tensor h = matrix(dropping ? dropped.data_ptr<T>() : h_prev, rows, out_size,
                            options);  // (rows, P): h_{s-1}, or h_{s-1} * drop
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
            gate_ptr, extra, 4 * hidden, hidden, bias_ptr, c_prev, c, out, first, last, 0,
            hidden, hidden);
      };
      using yes = std::true_type;
      using no = std::false_type;
      if (keep) {
        packed ? run(yes{}, yes{}) : run(yes{}, no{});
      } else {
        packed ? run(no{}, yes{}) : run(no{}, no{});
      }
    });
    if (zoned) {  // every cell is kept: c_prev is not c
      zone_rows(keep_h + steps.at(s) * hidden, keep_c + steps.at(s) * hidden, h_prev, c_prev,
                out, c, rows, hidden);
    }
    if (has_projection) {
      Tensor h_new = matrix(h_next, rows, out_size, options);
      matmul_into(h_new, matrix(r_ptr, rows, hidden, options), w_out);  // (rows, H) @ (H, P)
    }
  }
}

template <typename T>
void forward_loop(Tensor& gates, const Tensor& bias, at::TensorList w_rec, at::TensorList w_proj,
                  Tensor& cs, Tensor& hs, const Steps& steps, bool keep, bool packed,
                  const Tensor& drop, const Tensor& zone_h, const Tensor& zone_c) {
  const int64_t directions = hs.size(0), batch = steps.batch(), hidden = cs.size(2);
  Tensor r = w_proj.empty() ? Tensor() : at::empty({directions, batch, hidden}, hs.options());
  // No bias (bias=False): zeros, so the loop has one shape.
  const Tensor b =
      given(bias) ? bias.contiguous() : at::zeros({directions, 4 * hidden}, hs.options());
  for_directions(directions, batch * hs.size(2) * 4 * hidden, [&](int64_t d) {
    forward_direction<T>(d, gates, b, w_rec, w_proj, cs, hs, r, steps, keep, packed, drop,
                         zone_h, zone_c);
  });
}

// The backward time loop of direction d.
template <typename T>
void backward_direction(int64_t d, const Tensor& gates, const Tensor& cs, Tensor& d_h,
                        Tensor& dc, at::TensorList w_rec, at::TensorList w_proj, Tensor& d_pre,
                        Tensor& r, Tensor& d_r, const Steps& steps, const Tensor& drop,
                        const Tensor& zone_h, const Tensor& zone_c) {
  const int64_t hidden = cs.size(2), out_size = d_h.size(2);
  const bool has_projection = !w_proj.empty(), keep_r = given(r);
  const auto options = gates.options();
  const Tensor& w = w_rec[d];  // (4H, P)
  const Tensor w_out = has_projection ? w_proj[d] : Tensor();  // (P, H)
  const T* gate_base = gates.select(0, d).data_ptr<T>();  // (N, 4H)
  const T* c_base = cs.select(0, d).data_ptr<T>();  // (B + N, H)
  T* d_h_base = d_h.select(0, d).data_ptr<T>();  // (N, P)
  T* dc_ptr = dc.select(0, d).data_ptr<T>();  // (B, H)
  T* d_pre_base = d_pre.select(0, d).data_ptr<T>();  // (N, 4H)
  T* r_base = keep_r ? r.select(0, d).data_ptr<T>() : nullptr;  // (N, H)
  T* d_r_buffer = has_projection ? d_r.select(0, d).data_ptr<T>() : nullptr;  // (B, H)
  const int64_t batch = steps.batch();
  const bool dropping = given(drop), zoned = given(zone_h);
  const T* drop_ptr = dropping ? drop.select(0, d).data_ptr<T>() : nullptr;  // (B, P)
  Tensor product = dropping ? at::empty({batch, out_size}, options) : Tensor();  // d_pre W_hh
  const T* keep_h = zoned ? zone_h.select(0, d).data_ptr<T>() : nullptr;  // (N, H)
  const T* keep_c = zoned ? zone_c.select(0, d).data_ptr<T>() : nullptr;  // (N, H)
  // zoneout: d_new = (1 - d^h) d_h_s and dc_keep = d^c dc (no projection, out_size = H)
  Tensor d_new = zoned ? at::empty({2, batch, hidden}, options) : Tensor();
  T* d_new_ptr = zoned ? d_new.data_ptr<T>() : nullptr;
  T* dc_keep = zoned ? d_new_ptr + batch * hidden : nullptr;
  for (int64_t s = steps.count() - 1; s >= 0; --s) {
    const int64_t rows = steps.rows(s);
    T* d_h_s = d_h_base + steps.at(s) * out_size;
    T* d_h_prev = s > 0 ? d_h_base + steps.at(s - 1) * out_size : nullptr;
    if (has_projection) {
      Tensor d_r_live = matrix(d_r_buffer, rows, hidden, options);
      matmul_into(d_r_live, matrix(d_h_s, rows, out_size, options), w_out);  // (rows,P) @ (P,H)
    }
    const T* d_r_ptr = has_projection ? d_r_buffer : d_h_s;
    const T* gate_ptr = gate_base + steps.at(s) * 4 * hidden;
    const T* c_prev = c_base + steps.previous(s) * hidden;
    const T* c = c_base + steps.next(s) * hidden;
    T* d_pre_ptr = d_pre_base + steps.at(s) * 4 * hidden;
    T* r_ptr = keep_r ? r_base + steps.at(s) * hidden : nullptr;
    if (zoned) {
      const int64_t at = steps.at(s) * hidden;
      zone_split_rows(keep_h + at, keep_c + at, d_h_s, d_new_ptr, dc_ptr, dc_keep, rows, hidden);
      for_rows(rows, 4 * hidden, [&](int64_t first, int64_t last) {
        backward_rows<T, true>(gate_ptr, c_prev, c, d_new_ptr, dc_ptr, d_pre_ptr, r_ptr, first,
                               last, 0, hidden, hidden);
      });
      zone_join_rows(keep_h + at, d_h_s, d_h_prev, dc_ptr, dc_keep, rows, hidden);
    } else {
      for_rows(rows, 4 * hidden, [&](int64_t first, int64_t last) {
        backward_rows<T>(gate_ptr, c_prev, c, d_r_ptr, dc_ptr, d_pre_ptr, r_ptr, first, last, 0,
                         hidden, hidden);
      });
    }
    if (s == 0) continue;
    const Tensor d_pre_s = matrix(d_pre_ptr, rows, 4 * hidden, options);
    if (dropping) {  // d_h_{s-1} += (d_pre_s @ W_hh) * drop: (rows, 4H) @ (4H, P)
      Tensor into = product.narrow(0, 0, rows);
      matmul_into(into, d_pre_s, w);
      add_dropped_rows(into.data_ptr<T>(), drop_ptr, d_h_prev, rows, out_size);
    } else {  // d_h_{s-1} += d_pre_s @ W_hh: (rows, 4H) @ (4H, P)
      Tensor d_h_prev_rows = matrix(d_h_prev, rows, out_size, options);
      add_matmul_(d_h_prev_rows, d_pre_s, w);
    }
  }
}

template <typename T>
void backward_loop(const Tensor& gates, const Tensor& cs, Tensor& d_h, Tensor& dc,
                   at::TensorList w_rec, at::TensorList w_proj, Tensor& d_pre, Tensor& r,
                   const Steps& steps, const Tensor& drop, const Tensor& zone_h,
                   const Tensor& zone_c) {
  const int64_t directions = d_h.size(0), batch = steps.batch(), hidden = cs.size(2);
  Tensor d_r = w_proj.empty() ? Tensor() : at::empty({directions, batch, hidden}, d_h.options());
  for_directions(directions, batch * d_h.size(2) * 4 * hidden, [&](int64_t d) {
    backward_direction<T>(d, gates, cs, d_h, dc, w_rec, w_proj, d_pre, r, d_r, steps, drop,
                          zone_h, zone_c);
  });
}

// ---- The fused engine (engine.h): no projection, one packed W_hh per call, persistent team.

// Forward, every direction: member `m` of the team computes, at each step, the gates of its
// own hidden units from its panels of [W_ih; W_hh]^T (packed by itself), tile by tile of
// batch rows, [x_s, h_{s-1}] @ panel, and applies the cell to each tile at once; the team
// meets once per step, when h_s is complete (units split; with rows split, engine::Work, each
// member computes all units of its own rows from all panels, and the team never meets).
template <typename T, bool keep>
void fused_forward_loop(Tensor& gates, const Tensor& bias, at::TensorList w_rec, Tensor& cs,
                        Tensor& hs, const Steps& steps, at::TensorList inputs,
                        at::TensorList w_in) {
  using L = engine::Layout<T, 4>;
  using C = engine::Chunks<T, 4>;
  const int64_t directions = hs.size(0), batch = steps.batch();
  const int64_t hidden = hs.size(2), panels = L::panels(hidden);
  const int64_t input_size = inputs[0].size(1);
  const int64_t depth = input_size + hidden;
  const bool every_cell = cs.size(1) > batch;
  // [W_ih; W_hh]^T panels, (D, panels, I + H, 4 * units); w_rec is D x W_hh^T (H, 4H), w_in
  // D x W_ih (4H, I), any strides.
  T* packed = engine::packing_room<T>(directions, panels, depth, L::columns);
  engine::for_direction_work(
      directions, panels, 2 * batch * depth * 4 * hidden,
      directions * panels * depth * L::columns * int64_t(sizeof(T)), batch, L::max_rows,
      [&](int64_t d, const engine::Work& work, engine::Barrier& barrier) {
        const Tensor& w = w_rec[d];  // W_hh^T (H, 4H): element (g*H + j, k) below
        T* panel_base = packed + d * panels * depth * L::columns;
        const Tensor& wi = w_in[d];  // W_ih (4H, I): element (g*H + j, k) below
        // Each panel: rows [0, I) from W_ih, rows [I, I + H) from W_hh.
        engine::pack_panels<T, 4>(wi.data_ptr<T>(), wi.stride(0), wi.stride(1), hidden,
                                  input_size, work.pack_first, work.pack_last, panel_base,
                                  depth * L::columns);
        engine::pack_panels<T, 4>(w.data_ptr<T>(), w.stride(1), w.stride(0), hidden, hidden,
                                  work.pack_first, work.pack_last,
                                  panel_base + input_size * L::columns, depth * L::columns);
        work.packed(barrier);
        T* gate_base = keep ? gates.select(0, d).data_ptr<T>() : nullptr;  // (N, 4H)
        const T* x_base = inputs[d].data_ptr<T>();  // (N, I)
        T* c_base = cs.select(0, d).data_ptr<T>();  // (B + N or B, H)
        T* h_base = hs.select(0, d).data_ptr<T>();  // (B + N, H)
        const T* bias_ptr = bias.select(0, d).data_ptr<T>();  // (4H,)
        alignas(64) T tile[C::scratch];
        for (int64_t s = 0; s < steps.count(); ++s) {
          const auto [first_row, last_row] = work.rows_of(steps.rows(s));
          T* gate_s = keep ? gate_base + steps.at(s) * 4 * hidden : nullptr;
          const T* x_s = x_base + steps.at(s) * input_size;
          const T* h_prev = h_base + steps.previous(s) * hidden;
          T* h = h_base + steps.next(s) * hidden;
          T* c_prev = every_cell ? c_base + steps.previous(s) * hidden : c_base;
          T* c = every_cell ? c_base + steps.next(s) * hidden : c_base;
          engine::for_chunks<T, 4>(work.first_panel, work.last_panel, hidden,
                                   [&](int64_t c0, int64_t c1, int64_t unit, int64_t unit_end) {
            const int64_t units = unit_end - unit;
            engine::for_tiles(first_row, last_row, L::max_rows, [&](int64_t r0, int64_t tile_rows) {
              // tile = [x_s, h_prev][r0 : r0 + tile_rows] @ the chunk's panels: (rows, I + H)
              // @ (I + H, 4 * units)
              engine::multiply_chunk<T, 4>(x_s + r0 * input_size, input_size, input_size,
                                           h_prev + r0 * hidden, hidden, hidden, panel_base,
                                           depth * L::columns, c0, c1, tile, tile_rows);
              // The gates hold nothing on entry (the tile has the input part): written only for
              // the backward (keep).
              forward_rows<T, keep, true, false>(
                  keep ? gate_s + r0 * 4 * hidden : nullptr, tile, 4 * C::units, C::units,
                  bias_ptr, c_prev + r0 * hidden, c + r0 * hidden, h + r0 * hidden, 0, tile_rows,
                  unit, unit + units, hidden);
            });
          });
          work.step_done(barrier);  // units split: h_s complete, the next step reads all of it
        }
      });
}

// Backward, every direction: member `m` owns the same hidden units in both halves of a step:
// the elementwise backward of its units (d_pre's columns of its units in all four gates), then,
// after the team has met (d_pre_s complete), its columns of d_h_{s-1} += d_pre_s @ W_hh,
// (rows, 4H) @ (4H, its units), from its own panels of W_hh. Those are the columns its next
// step reads, so one meeting per step suffices. With rows split (engine::Work) a member does
// both halves for all units of its own rows, and the team does not meet.
template <typename T>
void fused_backward_loop(const Tensor& gates, const Tensor& cs, Tensor& d_h, Tensor& dc,
                         at::TensorList w_rec, Tensor& d_pre, const Steps& steps) {
  using L = engine::Layout<T, 1>;
  const int64_t directions = d_h.size(0), batch = steps.batch();
  const int64_t hidden = cs.size(2), panels = L::panels(hidden);
  // W_hh panels, (D, panels, 4H, units); w_rec is D x W_hh (4H, H), any strides.
  T* packed = engine::packing_room<T>(directions, panels, 4 * hidden, L::columns);
  engine::for_direction_work(
      directions, panels, 2 * batch * hidden * 4 * hidden,
      directions * panels * (4 * hidden) * L::columns * int64_t(sizeof(T)), batch, L::max_rows,
      [&](int64_t d, const engine::Work& work, engine::Barrier& barrier) {
        const Tensor& w = w_rec[d];  // W_hh (4H, H): element (j, k) = W_hh[k, j]
        T* panel_base = packed + d * panels * (4 * hidden) * L::columns;
        engine::pack_panels<T, 1>(w.data_ptr<T>(), w.stride(1), w.stride(0), hidden, 4 * hidden,
                                  work.pack_first, work.pack_last, panel_base,
                                  4 * hidden * L::columns);
        work.packed(barrier);
        const T* gate_base = gates.select(0, d).data_ptr<T>();  // (N, 4H)
        const T* c_base = cs.select(0, d).data_ptr<T>();  // (B + N, H)
        T* d_h_base = d_h.select(0, d).data_ptr<T>();  // (N, H)
        T* dc_ptr = dc.select(0, d).data_ptr<T>();  // (B, H)
        T* d_pre_base = d_pre.select(0, d).data_ptr<T>();  // (N, 4H)
        const int64_t first_unit = work.first_panel * L::units;
        const int64_t last_unit = std::min(work.last_panel * L::units, hidden);
        for (int64_t s = steps.count() - 1; s >= 0; --s) {
          const auto [first_row, last_row] = work.rows_of(steps.rows(s));
          T* d_h_s = d_h_base + steps.at(s) * hidden;
          T* d_pre_s = d_pre_base + steps.at(s) * 4 * hidden;
          backward_rows<T>(gate_base + steps.at(s) * 4 * hidden,
                           c_base + steps.previous(s) * hidden, c_base + steps.next(s) * hidden,
                           d_h_s, dc_ptr, d_pre_s, nullptr, first_row, last_row, first_unit,
                           last_unit, hidden);
          work.step_done(barrier);  // units split: d_pre_s complete, every product reads it all
          if (s == 0) continue;  // d_h_0 = d_pre_0 @ W_hh is the caller's
          T* d_h_prev = d_h_base + steps.at(s - 1) * hidden;
          // d_h_{s-1}[its rows, its units] += d_pre_s[its rows] @ W_hh[:, its units]: (rows, 4H)
          // @ (4H, units)
          engine::add_product<T>(d_pre_s + first_row * 4 * hidden, 4 * hidden, 4 * hidden,
                                 nullptr, 0, 0, panel_base, 4 * hidden * L::columns,
                                 work.first_panel, work.last_panel, hidden, last_row - first_row,
                                 d_h_prev + first_row * hidden, hidden);
        }
      });
}

void check_contiguous(const Tensor& t, const char* name) {
  TORCH_CHECK(!given(t) || t.is_contiguous(), "unrolled native LSTM: ", name,
              " must be contiguous");
}

// Recurrent dropout and zoneout, checked: the BLAS loop only, no projection, every cell kept
// under zoneout, each buffer (D, B, H) or (D, N, H) and contiguous.
void check_regularizers(const Tensor& drop, const Tensor& zone_h, const Tensor& zone_c,
                        const Tensor& hs, const Tensor& cs, const Steps& steps, bool fused,
                        bool packed, bool projected) {
  if (!given(drop) && !given(zone_h) && !given(zone_c)) return;
  TORCH_CHECK(!fused && !packed && !projected, "unrolled native LSTM: recurrent dropout and "
              "zoneout run in the BLAS loop without MKL's packed GEMM and without projection");
  const int64_t directions = hs.size(0), hidden = cs.size(2);
  TORCH_CHECK(!given(drop) || (drop.is_contiguous() && drop.sizes() == at::IntArrayRef{
                  directions, steps.batch(), hidden}),
              "unrolled native LSTM: drop must be contiguous (D, B, H), got ", drop.sizes());
  TORCH_CHECK(given(zone_h) == given(zone_c), "unrolled native LSTM: zone_h and zone_c go "
              "together");
  for (const Tensor& zone : {zone_h, zone_c}) {
    TORCH_CHECK(!given(zone) || (zone.is_contiguous() && zone.sizes() == at::IntArrayRef{
                    directions, steps.total(), hidden}),
                "unrolled native LSTM: zone_h and zone_c must be contiguous (D, N, H), got ",
                zone.sizes());
  }
  TORCH_CHECK(!given(zone_h) || cs.size(1) == steps.batch() + steps.total(),
              "unrolled native LSTM: zoneout needs every cell, cs (D, B + N, H)");
}

Tensor or_empty(const std::optional<Tensor>& t) { return t.has_value() ? *t : Tensor(); }

void lstm_forward(Tensor gates, const Tensor& bias, at::TensorList w_rec, at::TensorList w_proj,
                  Tensor cs, Tensor hs, at::IntArrayRef batch_sizes, bool keep, bool packed,
                  bool fused, at::TensorList inputs, at::TensorList w_in,
                  const std::optional<Tensor>& drop_opt, const std::optional<Tensor>& zone_h_opt,
                  const std::optional<Tensor>& zone_c_opt) {
  const Tensor drop = or_empty(drop_opt), zone_h = or_empty(zone_h_opt);
  const Tensor zone_c = or_empty(zone_c_opt);
  check_contiguous(gates, "gates");
  check_contiguous(cs, "cs");
  check_contiguous(hs, "hs");
  for (const Tensor& x : inputs) check_contiguous(x, "inputs");
  const Steps steps(batch_sizes);
  TORCH_CHECK(hs.dim() == 3 && hs.size(1) == steps.batch() + steps.total(),
              "unrolled native LSTM: hs must be (D, B + N, P) for batch_sizes summing to N, got ",
              hs.sizes(), " for B=", steps.batch(), ", N=", steps.total());
  // The engine computes the input part in its own pass, from the inputs; the per-step BLAS
  // loop reads it from the gates (hoisted by the caller).
  const auto expected = static_cast<size_t>(fused ? hs.size(0) : 0);
  TORCH_CHECK(inputs.size() == expected && w_in.size() == expected,
              "unrolled native LSTM: inputs and w_in must be one per direction with fused=True "
              "and empty without, got ", inputs.size(), " and ", w_in.size(), " for ",
              hs.size(0), " directions, fused=", fused);
  // The plan asks for the packed variant only where it exists and applies; a request that does
  // not fit is a bug in the caller, never silently ignored.
  TORCH_CHECK(!packed || (packed_gemm() != nullptr && hs.scalar_type() == at::kFloat &&
                          steps.uniform()),
              "unrolled native LSTM: packed=True needs MKL's packed GEMM (this torch has it: ",
              packed_gemm() != nullptr, "), float32 (got ", hs.scalar_type(),
              ") and the full batch at every step");
  TORCH_CHECK(!fused || w_proj.empty(), "unrolled native LSTM: fused=True is for layers without "
              "projection (proj_size=0)");
  TORCH_CHECK(gates.dim() == 3 || (fused && !keep),  // (D, N, 4H); N may be 0
              "unrolled native LSTM: gates must be given unless fused=True and keep=False");
  check_regularizers(drop, zone_h, zone_c, hs, cs, steps, fused, packed, !w_proj.empty());
  AT_DISPATCH_FLOATING_TYPES(hs.scalar_type(), "lstm_forward", [&] {
    if (!fused) {
      forward_loop<scalar_t>(gates, bias, w_rec, w_proj, cs, hs, steps, keep, packed, drop,
                             zone_h, zone_c);
      return;
    }
    const Tensor b = given(bias) ? bias.contiguous()
                                 : at::zeros({hs.size(0), 4 * cs.size(2)}, hs.options());
    if (keep) {
      fused_forward_loop<scalar_t, true>(gates, b, w_rec, cs, hs, steps, inputs, w_in);
    } else {
      fused_forward_loop<scalar_t, false>(gates, b, w_rec, cs, hs, steps, inputs, w_in);
    }
  });
}

bool packed_gemm_available() { return packed_gemm() != nullptr; }

void lstm_backward(const Tensor& gates, const Tensor& cs, Tensor d_h, Tensor dc,
                   at::TensorList w_rec, at::TensorList w_proj, Tensor d_pre, Tensor r,
                   at::IntArrayRef batch_sizes, bool fused, const std::optional<Tensor>& drop_opt,
                   const std::optional<Tensor>& zone_h_opt,
                   const std::optional<Tensor>& zone_c_opt) {
  const Tensor drop = or_empty(drop_opt), zone_h = or_empty(zone_h_opt);
  const Tensor zone_c = or_empty(zone_c_opt);
  for (const auto& [t, name] : {std::pair{gates, "gates"}, {cs, "cs"}, {d_h, "d_h"},
                                {dc, "dc"}, {d_pre, "d_pre"}, {r, "r"}}) {
    check_contiguous(t, name);
  }
  const Steps steps(batch_sizes);
  TORCH_CHECK(cs.dim() == 3 && cs.size(1) == steps.batch() + steps.total(),
              "unrolled native LSTM: cs must be (D, B + N, H) for the backward, got ", cs.sizes(),
              " for B=", steps.batch(), ", N=", steps.total());
  TORCH_CHECK(!fused || w_proj.empty(), "unrolled native LSTM: fused=True is for layers without "
              "projection (proj_size=0)");
  check_regularizers(drop, zone_h, zone_c, d_h, cs, steps, fused, false, !w_proj.empty());
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstm_backward", [&] {
    if (fused) {
      fused_backward_loop<scalar_t>(gates, cs, d_h, dc, w_rec, d_pre, steps);
    } else {
      backward_loop<scalar_t>(gates, cs, d_h, dc, w_rec, w_proj, d_pre, r, steps, drop, zone_h,
                              zone_c);
    }
  });
}

}  // namespace
}  // namespace unrolled

TORCH_LIBRARY_FRAGMENT(unrolled, m) {
  m.def("lstm_forward(Tensor(a!) gates, Tensor bias, Tensor[] w_rec, Tensor[] w_proj, "
        "Tensor(b!) cs, Tensor(c!) hs, int[] batch_sizes, bool keep, bool packed, bool fused, Tensor[] inputs, "
        "Tensor[] w_in, Tensor? drop=None, Tensor? zone_h=None, Tensor? zone_c=None) -> ()",
        &unrolled::lstm_forward);
  m.def("lstm_backward(Tensor gates, Tensor cs, Tensor(a!) d_h, Tensor(b!) dc, "
        "Tensor[] w_rec, Tensor[] w_proj, Tensor(c!) d_pre, Tensor(d!) r, int[] batch_sizes, "
        "bool fused, Tensor? drop=None, Tensor? zone_h=None, Tensor? zone_c=None) -> ()",
        &unrolled::lstm_backward);
  m.def("packed_gemm_available() -> bool", &unrolled::packed_gemm_available);
}
