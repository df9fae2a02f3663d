// The GRU recurrence of the fast backend (torch's formulation), forward and backward, one
// layer, D directions.
//
// What it must equal: unrolled.cells.gru at every step (the forward; its equations are stated
// there, once) and the derivative lines in `unrolled/fast/gru.py` (the backward).
//
// Buffers: the GRU buffer contract in `unrolled/fast/gru.py` (layout, what each buffer holds
// after the forward, what the backward writes where). `unrolled/fast/loops/gru.py` is the same
// loop in torch ops, function for function: forward_rows / backward_rows (one step's
// elementwise math) and forward_loop / backward_loop (the time loop of each direction).
// `fused` (the caller's plan decides): the fused engine (engine.h: W_hh packed once per call,
// the project's own kernel, the gate math on each tile, one team of threads per call), else
// one BLAS call per step and one elementwise pass.
//
// Recurrent dropout and zoneout (unrolled.regularizers): the optional `drop` (D, B, H) and
// `zone_h` (D, N, H) of both loops, in the BLAS loop only (the engine has neither).
#include <torch/library.h>

#include <tuple>

#include "common.h"
#include "engine.h"

namespace unrolled {
namespace {

// One step, rows [first_row, last_row) and hidden units [first_unit, last_unit): the
// elementwise part of unrolled.cells.gru, with x_* the rows of x W_ih^T (xw) and hh_* those of
// h_prev W_hh^T (in hh, or with `has_extra` in `extra`: unit first_unit + j of gate g in row b
// at extra[b * extra_row + g * extra_gate + j], the fused engine's tile), torch's biases b_ih,
// b_hh (3H each, rows r, z, n) added here: b_hn to hh_n before r multiplies it, a = hh_n +
// b_hn. Writes [r, z, a] into hh, n, and h = n + z * (h_prev - n).
template <typename T, bool has_extra>
void forward_rows(const T* xw, T* hh, const T* extra, int64_t extra_row, int64_t extra_gate,
                  const T* b_ih, const T* b_hh, T* n_out, const T* h_prev, T* h,
                  int64_t first_row, int64_t last_row, int64_t first_unit, int64_t last_unit,
                  int64_t hidden) {
  const int64_t units = last_unit - first_unit;
  const T* b_ir = b_ih + first_unit;
  const T* b_iz = b_ir + hidden;
  const T* b_in = b_iz + hidden;
  const T* b_hr = b_hh + first_unit;
  const T* b_hz = b_hr + hidden;
  const T* b_hn = b_hz + hidden;
  for (int64_t b = first_row; b < last_row; ++b) {
    const T* x_r = xw + b * 3 * hidden + first_unit;
    const T* x_z = x_r + hidden;
    const T* x_n = x_z + hidden;
    T* r = hh + b * 3 * hidden + first_unit;
    T* z = r + hidden;
    T* a = z + hidden;
    const T* hh_r = has_extra ? extra + b * extra_row : r;
    const T* hh_z = has_extra ? hh_r + extra_gate : z;
    const T* hh_n = has_extra ? hh_z + extra_gate : a;
    const int64_t at = b * hidden + first_unit;
    T* n_row = n_out + at;
    const T* h_prev_row = h_prev + at;
    T* h_row = h + at;
    UNROLLED_VECTOR_LOOP
    for (int64_t j = 0; j < units; ++j) {
      const T r_j = sigmoid(x_r[j] + b_ir[j] + b_hr[j] + hh_r[j]);
      const T z_j = sigmoid(x_z[j] + b_iz[j] + b_hz[j] + hh_z[j]);
      const T a_j = hh_n[j] + b_hn[j];
      const T n_j = tanh(x_n[j] + b_in[j] + r_j * a_j);
      r[j] = r_j;
      z[j] = z_j;
      a[j] = a_j;
      n_row[j] = n_j;
      h_row[j] = n_j + z_j * (h_prev_row[j] - n_j);
    }
  }
}

// One step backward, rows [first_row, last_row) and hidden units [first_unit, last_unit), from
// d_h (all of the gradient reaching h_s):
//   d_pre_n = d_h (1 - z)(1 - n^2)          (what x_n, W_in saw)
//   d_pre_r = d_pre_n * a * r (1 - r)       d_pre_z = d_h (h_prev - n) z (1 - z)
//   d_a     = d_pre_n * r                   (what W_hn, b_hn saw)
// into the (B, 3H) block [n_x, r, z] and the (B, H) block d_a (n_h); and d_h * z (the lerp's
// own path to h_prev), added to `d_h_prev` (the gradient already reaching h_{s-1}).
// Every input of element j is read before any output is written, so the outputs may overwrite
// the inputs: [n_x, r, z] the [r, z, a] block of hh, d_a the d_h block.
template <typename T>
void backward_rows(const T* hh, const T* n_in, const T* h_prev, const T* d_h, T* factors,
                   T* d_a_out, T* d_h_prev, int64_t first_row, int64_t last_row,
                   int64_t first_unit, int64_t last_unit, int64_t hidden) {
  const int64_t units = last_unit - first_unit;
  for (int64_t b = first_row; b < last_row; ++b) {
    const T* r = hh + b * 3 * hidden + first_unit;
    const T* z = r + hidden;
    const T* a = z + hidden;
    const int64_t at = b * hidden + first_unit;
    const T* n = n_in + at;
    const T* h_prev_row = h_prev + at;
    const T* d_h_row = d_h + at;
    T* d_pre_n_row = factors + b * 3 * hidden + first_unit;  // n_x
    T* d_pre_r_row = d_pre_n_row + hidden;
    T* d_pre_z_row = d_pre_r_row + hidden;
    T* d_a_row = d_a_out + at;
    T* d_h_prev_row = d_h_prev + at;
    UNROLLED_VECTOR_LOOP
    for (int64_t j = 0; j < units; ++j) {
      const T r_j = r[j], z_j = z[j], a_j = a[j], n_j = n[j], d_h_j = d_h_row[j];
      const T d_pre_n = d_h_j * (T(1) - z_j) * (T(1) - n_j * n_j);
      d_pre_n_row[j] = d_pre_n;
      d_pre_r_row[j] = d_pre_n * a_j * r_j * (T(1) - r_j);
      d_pre_z_row[j] = d_h_j * (h_prev_row[j] - n_j) * z_j * (T(1) - z_j);
      d_a_row[j] = d_pre_n * r_j;
      d_h_prev_row[j] += d_h_j * z_j;
    }
  }
}

// Recurrent dropout and zoneout (unrolled.regularizers; the Python loop in loops/gru.py does
// the same in torch ops). `drop` (B, H) is the per-sequence mask, 0 or 1/(1-p), on the state on
// its way into W_hh (the carry z * h_prev reads the undropped state); a zoneout weight d (one
// per row and unit, rows of this step) weighs the previous state:
// h = d * h_prev + (1 - d) * h~.

// Forward: h~ (in h) -> the zoned-out state, in place, rows [0, rows).
template <typename T>
void zone_rows(const T* keep_h, const T* h_prev, T* h, int64_t rows, int64_t hidden) {
  for_rows(rows, hidden, [&](int64_t first, int64_t last) {
    UNROLLED_VECTOR_LOOP
    for (int64_t k = first * hidden; k < last * hidden; ++k) {
      h[k] = keep_h[k] * h_prev[k] + (T(1) - keep_h[k]) * h[k];
    }
  });
}

// Backward, before the step's backward_rows: the gradient of h_s (complete: the later steps
// have added theirs) splits between the previous state, which gets d^h d_h_s directly (into
// d_h_prev: d_h_{s-1}, or d_h0 at the first step), and the update, whose backward_rows reads
// (1 - d^h) d_h_s from d_h, scaled in place.
template <typename T>
void zone_split_rows(const T* keep_h, T* d_h, T* d_h_prev, int64_t rows, int64_t hidden) {
  for_rows(rows, 2 * hidden, [&](int64_t first, int64_t last) {
    UNROLLED_VECTOR_LOOP
    for (int64_t k = first * hidden; k < last * hidden; ++k) {
      d_h_prev[k] += keep_h[k] * d_h[k];
      d_h[k] *= T(1) - keep_h[k];
    }
  });
}

// Direction d's pointers into the forward's buffers (the GRU buffer contract): xw (N, 3H),
// hh (N or B, 3H), ns (N or B, H), hs (B + N, H), b_ih and b_hh (3H,) each (zeros
// without bias).
template <typename T>
std::tuple<const T*, T*, T*, T*, const T*, const T*> forward_views(
    const Tensor& xw, Tensor& hh, Tensor& ns, Tensor& hs, at::TensorList biases,
    const Tensor& zeros, int64_t d) {
  return {xw.select(0, d).data_ptr<T>(), hh.select(0, d).data_ptr<T>(),
          ns.select(0, d).data_ptr<T>(), hs.select(0, d).data_ptr<T>(),
          (biases.empty() ? zeros : biases[2 * d]).data_ptr<T>(),
          (biases.empty() ? zeros : biases[2 * d + 1]).data_ptr<T>()};
}

// Forward, w_rec = D x W_hh^T (H, 3H), row-major or a transposed view; biases: D x (b_ih, b_hh),
// each (3H,), or empty (bias=False). drop (D, B, H) and zone_h (D, N, H): recurrent dropout and
// zoneout, each empty when unused.
template <typename T>
void forward_loop(const Tensor& xw, Tensor& hh, Tensor& ns, Tensor& hs, at::TensorList w_rec,
                  at::TensorList biases, const Steps& steps, const Tensor& drop,
                  const Tensor& zone_h) {
  const int64_t directions = xw.size(0), batch = steps.batch();
  const int64_t hidden = hs.size(2), gate_rows = 3 * hidden;
  // Kept for the backward, or one reused slot.
  const bool every_step = hh.size(1) > batch;
  const auto options = xw.options();
  const Tensor zeros = biases.empty() ? at::zeros({gate_rows}, options) : Tensor();
  for_directions(directions, batch * hidden * gate_rows, [&](int64_t d) {
    const Tensor& w = w_rec[d];  // (H, 3H)
    const auto [x_base, hh_base, n_base, h_base, b_ih, b_hh] =
        forward_views<T>(xw, hh, ns, hs, biases, zeros, d);
    const bool dropping = given(drop), zoned = given(zone_h);
    const T* drop_ptr = dropping ? drop.select(0, d).data_ptr<T>() : nullptr;  // (B, H)
    Tensor dropped = dropping ? at::empty({batch, hidden}, options) : Tensor();  // h * drop
    const T* keep_h = zoned ? zone_h.select(0, d).data_ptr<T>() : nullptr;  // (N, H)
    for (int64_t s = 0; s < steps.count(); ++s) {
      const int64_t rows = steps.rows(s);
      const int64_t slot = every_step ? steps.at(s) : 0;
      T* hh_s = hh_base + slot * gate_rows;
      T* n_s = n_base + slot * hidden;
      T* h_prev = h_base + steps.previous(s) * hidden;
      T* h = h_base + steps.next(s) * hidden;
      if (dropping) drop_rows(h_prev, drop_ptr, dropped.data_ptr<T>(), rows, hidden);
      const Tensor h_rec = matrix(dropping ? dropped.data_ptr<T>() : h_prev, rows, hidden,
                                  options);  // (rows, H): h_{s-1}, or h_{s-1} * drop
      Tensor hh_live = matrix(hh_s, rows, gate_rows, options);
      matmul_into(hh_live, h_rec, w);  // (rows, H) @ (H, 3H)
      for_rows(rows, gate_rows, [&](int64_t first, int64_t last) {  // the carry: undropped
        forward_rows<T, false>(x_base + steps.at(s) * gate_rows, hh_s, nullptr, 0, 0, b_ih,
                               b_hh, n_s, h_prev, h, first, last, 0, hidden, hidden);
      });
      if (zoned) zone_rows(keep_h + steps.at(s) * hidden, h_prev, h, rows, hidden);
    }
  });
}

// Direction d's pointers into the backward's buffers (the GRU buffer contract): hh (N, 3H),
// ns (N, H), hs (B + N, H), grads[d] (N, H: d_h_s in, d_a out), factors[d] (N, 3H: [n_x, r,
// z]), d_h0 (B, H).
template <typename T>
std::tuple<const T*, const T*, const T*, T*, T*, T*> backward_views(
    const Tensor& hh, const Tensor& ns, const Tensor& hs, at::TensorList grads,
    at::TensorList factors, Tensor& d_h0, int64_t d) {
  return {hh.select(0, d).data_ptr<T>(), ns.select(0, d).data_ptr<T>(),
          hs.select(0, d).data_ptr<T>(), grads[d].data_ptr<T>(), factors[d].data_ptr<T>(),
          d_h0.select(0, d).data_ptr<T>()};
}

// Backward. grads, D x (N, H), holds the gradient reaching each h_s (from the output and
// h_n) on entry and d_a (n_h: what W_hn, b_hn saw) on exit: step s turns its own d_h_s into
// d_a in place once the later steps have added to it. factors, D x (N, 3H), gets [n_x, r,
// z] per step; it may be hh's own storage (hh[d]), overwritten step by step once read. One
// buffer per direction and kind, so that each can be freed as soon as it is spent: d_a after
// d_W_hh, the factors after the input side. d_h0 (D, B, H) gets the gradient of h_0. w_hh:
// D x (3H, H), torch's rows (r, z, n) (a list: stacking would copy the weights of two
// directions for the whole loop). drop (D, B, H) and zone_h (D, N, H): the forward's, each
// empty when unused; their terms reach d_h0 here too.
template <typename T>
void backward_loop(const Tensor& hh, const Tensor& ns, const Tensor& hs, at::TensorList grads,
                   at::TensorList w_hh, at::TensorList factors, Tensor& d_h0,
                   const Steps& steps, const Tensor& drop, const Tensor& zone_h) {
  const int64_t directions = hh.size(0), batch = steps.batch();
  const int64_t hidden = hs.size(2), gate_rows = 3 * hidden;
  const auto options = hh.options();
  for_directions(directions, batch * hidden * gate_rows, [&](int64_t d) {
    const Tensor w_rz = w_hh[d].narrow(0, 0, 2 * hidden);  // (2H, H)
    const Tensor w_n = w_hh[d].narrow(0, 2 * hidden, hidden);  // (H, H)
    const auto [hh_base, n_base, h_base, grad_base, f_base, d_h0_base] =
        backward_views<T>(hh, ns, hs, grads, factors, d_h0, d);
    std::memset(d_h0_base, 0, batch * hidden * sizeof(T));
    const bool dropping = given(drop), zoned = given(zone_h);
    const T* drop_ptr = dropping ? drop.select(0, d).data_ptr<T>() : nullptr;  // (B, H)
    // [d_pre_r, d_pre_z, d_a] @ W_hh, before the mask
    Tensor product = dropping ? at::empty({batch, hidden}, options) : Tensor();
    const T* keep_h = zoned ? zone_h.select(0, d).data_ptr<T>() : nullptr;  // (N, H)
    for (int64_t s = steps.count() - 1; s >= 0; --s) {
      const int64_t rows = steps.rows(s);
      T* f_s = f_base + steps.at(s) * gate_rows;
      T* grad_s = grad_base + steps.at(s) * hidden;
      T* d_h_prev = s > 0 ? grad_base + steps.at(s - 1) * hidden : d_h0_base;
      if (zoned) zone_split_rows(keep_h + steps.at(s) * hidden, grad_s, d_h_prev, rows, hidden);
      for_rows(rows, 4 * hidden, [&](int64_t first, int64_t last) {
        backward_rows<T>(hh_base + steps.at(s) * gate_rows, n_base + steps.at(s) * hidden,
                         h_base + steps.previous(s) * hidden, grad_s, f_s, grad_s, d_h_prev,
                         first, last, 0, hidden, hidden);
      });
      // [d_pre_r, d_pre_z] @ W_hr,hz + d_a @ W_hn: (rows, 2H) (row stride 3H) @ (2H, H) and
      // (rows, H) @ (H, H)
      Tensor grad_rz = at::from_blob(f_s + hidden, {rows, 2 * hidden}, {gate_rows, 1}, options);
      const Tensor d_a = matrix(grad_s, rows, hidden, options);
      if (dropping) {  // d_h_{s-1} += that * drop
        Tensor into = product.narrow(0, 0, rows);
        matmul_into(into, grad_rz, w_rz);
        add_matmul_(into, d_a, w_n);
        add_dropped_rows(into.data_ptr<T>(), drop_ptr, d_h_prev, rows, hidden);
      } else {  // d_h_{s-1} += that
        Tensor target = matrix(d_h_prev, rows, hidden, options);
        add_matmul_(target, grad_rz, w_rz);
        add_matmul_(target, d_a, w_n);
      }
    }
  });
}

// ---- The fused engine (engine.h): one packed W_hh per call, a team for the whole sequence.

// Forward, every direction: each member computes, at each step, h_{s-1} W_hh^T for its own
// hidden units (its panels, [r, z, n] columns of those units) tile by tile of batch rows and
// applies the cell to each tile at once; the team meets once per step, when h_s is complete
// (units split; with rows split, engine::Work, never).
template <typename T>
void fused_forward_loop(const Tensor& xw, Tensor& hh, Tensor& ns, Tensor& hs,
                        at::TensorList w_rec, const Tensor& zeros, at::TensorList biases,
                        const Steps& steps) {
  using L = engine::Layout<T, 3>;
  using C = engine::Chunks<T, 3>;
  const int64_t directions = xw.size(0), batch = steps.batch();
  const int64_t hidden = hs.size(2), gate_rows = 3 * hidden, panels = L::panels(hidden);
  const bool every_step = hh.size(1) > batch;
  T* packed = engine::packing_room<T>(directions, panels, hidden, L::columns);
  engine::for_direction_work(
      directions, panels, 2 * batch * hidden * gate_rows,
      directions * panels * hidden * L::columns * int64_t(sizeof(T)), batch, L::max_rows,
      [&](int64_t d, const engine::Work& work, engine::Barrier& barrier) {
        const Tensor& w = w_rec[d];  // W_hh^T (H, 3H): element (g*H + j, k) below
        T* panel_base = packed + d * panels * hidden * L::columns;
        engine::pack_panels<T, 3>(w.data_ptr<T>(), w.stride(1), w.stride(0), hidden, hidden,
                                  work.pack_first, work.pack_last, panel_base,
                                  hidden * L::columns);
        work.packed(barrier);
        const auto [x_base, hh_base, n_base, h_base, b_ih, b_hh] =
            forward_views<T>(xw, hh, ns, hs, biases, zeros, d);
        alignas(64) T tile[C::scratch];
        for (int64_t s = 0; s < steps.count(); ++s) {
          const auto [first_row, last_row] = work.rows_of(steps.rows(s));
          const int64_t slot = every_step ? steps.at(s) : 0;
          const T* x_s = x_base + steps.at(s) * gate_rows;
          T* hh_s = hh_base + slot * gate_rows;
          T* n_s = n_base + slot * hidden;
          const T* h_prev = h_base + steps.previous(s) * hidden;
          T* h = h_base + steps.next(s) * hidden;
          engine::for_chunks<T, 3>(work.first_panel, work.last_panel, hidden,
                                   [&](int64_t c0, int64_t c1, int64_t unit, int64_t unit_end) {
            const int64_t units = unit_end - unit;
            engine::for_tiles(first_row, last_row, L::max_rows, [&](int64_t r0, int64_t tile_rows) {
              // tile = h_prev[r0 : r0 + tile_rows] @ the chunk's panels: (rows, H) @ (H, 3 * units)
              engine::multiply_chunk<T, 3>(h_prev + r0 * hidden, hidden, hidden, nullptr, 0, 0,
                                           panel_base, hidden * L::columns, c0, c1, tile,
                                           tile_rows);
              forward_rows<T, true>(x_s + r0 * gate_rows, hh_s + r0 * gate_rows, tile,
                                    3 * C::units, C::units, b_ih, b_hh, n_s + r0 * hidden,
                                    h_prev + r0 * hidden, h + r0 * hidden, 0, tile_rows, unit,
                                    unit + units, hidden);
            });
          });
          work.step_done(barrier);  // units split: h_s complete, the next step reads all of it
        }
      });
}

// Backward, every direction: each member owns the same hidden units in both halves of a step:
// the elementwise backward of its units, then, after the team has met, its columns of
// d_h_{s-1} += [d_pre_r, d_pre_z, d_a]_s @ W_hh, (rows, 3H) @ (3H, its units), from its own
// panels of W_hh: the columns its next step reads, so one meeting per step suffices. With rows
// split (engine::Work) a member does both halves for all units of its own rows, and the team
// does not meet.
template <typename T>
void fused_backward_loop(const Tensor& hh, const Tensor& ns, const Tensor& hs,
                         at::TensorList grads, at::TensorList w_hh, at::TensorList factors,
                         Tensor& d_h0, const Steps& steps) {
  using L = engine::Layout<T, 1>;
  const int64_t directions = hh.size(0), batch = steps.batch();
  const int64_t hidden = hs.size(2), gate_rows = 3 * hidden;
  const int64_t panels = L::panels(hidden);
  T* packed = engine::packing_room<T>(directions, panels, gate_rows, L::columns);
  engine::for_direction_work(
      directions, panels, 2 * batch * gate_rows * hidden,
      directions * panels * gate_rows * L::columns * int64_t(sizeof(T)), batch, L::max_rows,
      [&](int64_t d, const engine::Work& work, engine::Barrier& barrier) {
        const Tensor& w = w_hh[d];  // W_hh (3H, H): element (j, k) = W_hh[k, j]
        T* panel_base = packed + d * panels * gate_rows * L::columns;
        engine::pack_panels<T, 1>(w.data_ptr<T>(), w.stride(1), w.stride(0), hidden, gate_rows,
                                  work.pack_first, work.pack_last, panel_base,
                                  gate_rows * L::columns);
        work.packed(barrier);
        const auto [hh_base, n_base, h_base, grad_base, f_base, d_h0_base] =
            backward_views<T>(hh, ns, hs, grads, factors, d_h0, d);
        const int64_t first_unit = work.first_panel * L::units;
        const int64_t last_unit = std::min(work.last_panel * L::units, hidden);
        const auto [first_b, last_b] = work.rows_of(batch);
        for (int64_t b = first_b; b < last_b; ++b) {
          std::fill(d_h0_base + b * hidden + first_unit, d_h0_base + b * hidden + last_unit, T(0));
        }
        for (int64_t s = steps.count() - 1; s >= 0; --s) {
          const auto [first_row, last_row] = work.rows_of(steps.rows(s));
          T* f_s = f_base + steps.at(s) * gate_rows;
          T* grad_s = grad_base + steps.at(s) * hidden;
          T* d_h_prev = s > 0 ? grad_base + steps.at(s - 1) * hidden : d_h0_base;
          backward_rows<T>(hh_base + steps.at(s) * gate_rows, n_base + steps.at(s) * hidden,
                           h_base + steps.previous(s) * hidden, grad_s, f_s, grad_s, d_h_prev,
                           first_row, last_row, first_unit, last_unit, hidden);
          work.step_done(barrier);  // units split: [d_pre_r, d_pre_z] and d_a of step s complete
          // d_h_{s-1}[its rows, its units] += [d_pre_r, d_pre_z, d_a]_s[its rows] @ W_hh[:, its
          // units]: (rows, 3H) @ (3H, units), the first two from the factors, d_a from the grads
          engine::add_product<T>(f_s + first_row * gate_rows + hidden, gate_rows, 2 * hidden,
                                 grad_s + first_row * hidden, hidden, hidden, panel_base,
                                 gate_rows * L::columns, work.first_panel, work.last_panel,
                                 hidden, last_row - first_row, d_h_prev + first_row * hidden,
                                 hidden);
        }
      });
}

// Recurrent dropout and zoneout, checked: the BLAS loop only (not the fused engine), each
// buffer (D, B, H) or (D, N, H), of the states' dtype, and contiguous.
void check_regularizers(const Tensor& drop, const Tensor& zone_h, const Tensor& hs,
                        const Steps& steps, bool fused) {
  if (!given(drop) && !given(zone_h)) return;
  TORCH_CHECK(!fused, "unrolled native GRU: recurrent dropout and zoneout run in the BLAS loop, "
              "not the fused engine (fused=False)");
  const int64_t directions = hs.size(0), hidden = hs.size(2);
  TORCH_CHECK(!given(drop) || (drop.is_contiguous() && drop.scalar_type() == hs.scalar_type() &&
                               drop.sizes() == at::IntArrayRef{directions, steps.batch(), hidden}),
              "unrolled native GRU: drop must be contiguous (D, B, H) of the states' dtype, got ",
              drop.sizes());
  TORCH_CHECK(!given(zone_h) ||
                  (zone_h.is_contiguous() && zone_h.scalar_type() == hs.scalar_type() &&
                   zone_h.sizes() == at::IntArrayRef{directions, steps.total(), hidden}),
              "unrolled native GRU: zone_h must be contiguous (D, N, H) of the states' dtype, "
              "got ", zone_h.sizes());
}

Tensor or_empty(const std::optional<Tensor>& t) { return t.has_value() ? *t : Tensor(); }

void gru_forward(const Tensor& xw, Tensor hh, Tensor ns, Tensor hs, at::TensorList w_rec,
                 at::TensorList biases, at::IntArrayRef batch_sizes, bool fused,
                 const std::optional<Tensor>& drop_opt,
                 const std::optional<Tensor>& zone_h_opt) {
  const Tensor drop = or_empty(drop_opt), zone_h = or_empty(zone_h_opt);
  TORCH_CHECK(xw.is_contiguous() && hh.is_contiguous() && ns.is_contiguous() &&
                  hs.is_contiguous(),
              "unrolled native GRU: buffers must be contiguous");
  TORCH_CHECK(biases.empty() || static_cast<int64_t>(biases.size()) == 2 * xw.size(0),
              "unrolled native GRU: biases must be empty or (b_ih, b_hh) per direction, got ",
              biases.size(), " tensors for ", xw.size(0), " directions");
  for (const Tensor& b : biases) {
    TORCH_CHECK(b.is_contiguous() && b.numel() == 3 * hs.size(2),
                "unrolled native GRU: each bias must be contiguous (3H,)");
  }
  const Steps steps(batch_sizes);
  TORCH_CHECK(hs.dim() == 3 && hs.size(1) == steps.batch() + steps.total() &&
                  xw.size(1) == steps.total(),
              "unrolled native GRU: xw must be (D, N, 3H) and hs (D, B + N, H) for batch_sizes "
              "summing to N, got ", xw.sizes(), " and ", hs.sizes(), " for B=", steps.batch(),
              ", N=", steps.total());
  check_regularizers(drop, zone_h, hs, steps, fused);
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "gru_forward", [&] {
    if (fused) {
      const Tensor zeros = at::zeros({3 * hs.size(2)}, xw.options());
      fused_forward_loop<scalar_t>(xw, hh, ns, hs, w_rec, zeros, biases, steps);
    } else {
      forward_loop<scalar_t>(xw, hh, ns, hs, w_rec, biases, steps, drop, zone_h);
    }
  });
}

void gru_backward(const Tensor& hh, const Tensor& ns, const Tensor& hs, at::TensorList grads,
                  at::TensorList w_hh, at::TensorList factors, Tensor d_h0,
                  at::IntArrayRef batch_sizes, bool fused, const std::optional<Tensor>& drop_opt,
                  const std::optional<Tensor>& zone_h_opt) {
  const Tensor drop = or_empty(drop_opt), zone_h = or_empty(zone_h_opt);
  TORCH_CHECK(hh.is_contiguous() && ns.is_contiguous() && hs.is_contiguous() &&
                  d_h0.is_contiguous(),
              "unrolled native GRU: buffers must be contiguous");
  for (const Tensor& t : grads) {
    TORCH_CHECK(t.is_contiguous(), "unrolled native GRU: grads must be contiguous");
  }
  for (const Tensor& f : factors) {
    TORCH_CHECK(f.is_contiguous(), "unrolled native GRU: factors must be contiguous");
  }
  const Steps steps(batch_sizes);
  TORCH_CHECK(hs.dim() == 3 && hs.size(1) == steps.batch() + steps.total() &&
                  hh.size(1) == steps.total(),
              "unrolled native GRU: hh must be (D, N, 3H) and hs (D, B + N, H) for the backward, "
              "got ", hh.sizes(), " and ", hs.sizes(), " for B=", steps.batch(), ", N=",
              steps.total());
  check_regularizers(drop, zone_h, hs, steps, fused);
  AT_DISPATCH_FLOATING_TYPES(hh.scalar_type(), "gru_backward", [&] {
    if (fused) {
      fused_backward_loop<scalar_t>(hh, ns, hs, grads, w_hh, factors, d_h0, steps);
    } else {
      backward_loop<scalar_t>(hh, ns, hs, grads, w_hh, factors, d_h0, steps, drop, zone_h);
    }
  });
}

}  // namespace
}  // namespace unrolled

TORCH_LIBRARY_FRAGMENT(unrolled, m) {
  m.def("gru_forward(Tensor xw, Tensor(a!) hh, Tensor(b!) ns, Tensor(c!) hs, Tensor[] w_rec, "
        "Tensor[] biases, int[] batch_sizes, bool fused, Tensor? drop=None, "
        "Tensor? zone_h=None) -> ()",
        &unrolled::gru_forward);
  m.def("gru_backward(Tensor hh, Tensor ns, Tensor hs, Tensor(a!)[] grads, Tensor[] w_hh, "
        "Tensor(b!)[] factors, Tensor(c!) d_h0, int[] batch_sizes, bool fused, Tensor? drop=None, "
        "Tensor? zone_h=None) -> ()",
        &unrolled::gru_backward);
}
