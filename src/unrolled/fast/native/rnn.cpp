// The Elman RNN recurrence (tanh or ReLU) of the fast backend, forward and backward, one layer,
// D directions.
//
// What it must equal: unrolled.cells.rnn_tanh / rnn_relu at every step (the forward; their
// equations are stated there, once) and the derivative lines in `unrolled/fast/rnn.py` (the
// backward).
//
// Buffers: the RNN buffer contract in `unrolled/fast/rnn.py`. `unrolled/fast/loops/rnn.py` is
// the same loop in torch ops, function for function: activate_rows / backward_rows (one step's
// elementwise math) and forward_loop / backward_loop (the time loop of each direction).
// `fused` (the caller's plan decides): the fused engine (engine.h: W_hh packed once per call,
// the project's own kernel, the gate math on each tile, one team of threads per call), else
// one BLAS call per step and one elementwise pass.
#include <torch/library.h>

#include "common.h"
#include "engine.h"

namespace unrolled {
namespace {

// h = act(pre), rows [first, last) of a (B, H) step, in place.
template <typename T>
void activate_rows(T* h, int64_t first, int64_t last, int64_t hidden, bool relu) {
  T* row = h + first * hidden;
  const int64_t count = (last - first) * hidden;
  if (relu) {
    UNROLLED_VECTOR_LOOP
    for (int64_t k = 0; k < count; ++k) row[k] = row[k] < T(0) ? T(0) : row[k];  // NaN stays
  } else {
    UNROLLED_VECTOR_LOOP
    for (int64_t k = 0; k < count; ++k) row[k] = tanh(row[k]);
  }
}

// d_pre = d_h * act'(h): tanh' = 1 - h^2; relu passes d_h where h <= 0 does not hold (as
// torch's threshold_backward: a NaN state passes its gradient on). Rows [first, last). d_pre
// may be d_h itself (element k is read before it is written).
template <typename T>
void backward_rows(const T* h, const T* d_h, T* d_pre, int64_t first, int64_t last,
                   int64_t hidden, bool relu) {
  const int64_t begin = first * hidden, end = last * hidden;
  if (relu) {
    UNROLLED_VECTOR_LOOP
    for (int64_t k = begin; k < end; ++k) d_pre[k] = h[k] <= T(0) ? T(0) : d_h[k];
  } else {
    UNROLLED_VECTOR_LOOP
    for (int64_t k = begin; k < end; ++k) d_pre[k] = d_h[k] * (T(1) - h[k] * h[k]);
  }
}

// Forward: h_s = act(x_s W_ih^T + b (in h_s's rows on entry) + h_{s-1} @ W_hh^T), with w_rec D x
// W_hh^T (H, H).
template <typename T>
void forward_loop(Tensor& hs, at::TensorList w_rec, bool relu, const Steps& steps) {
  const int64_t directions = hs.size(0), batch = steps.batch(), hidden = hs.size(2);
  const auto options = hs.options();
  for_directions(directions, batch * hidden * hidden, [&](int64_t d) {
    const Tensor& w = w_rec[d];  // (H, H)
    T* base = hs.select(0, d).data_ptr<T>();  // (B + N, H)
    for (int64_t s = 0; s < steps.count(); ++s) {
      const int64_t rows = steps.rows(s);
      T* h_prev = base + steps.previous(s) * hidden;
      T* h = base + steps.next(s) * hidden;
      Tensor h_new = matrix(h, rows, hidden, options);
      add_matmul_(h_new, matrix(h_prev, rows, hidden, options), w);  // += (rows,H) @ (H,H)
      for_rows(rows, hidden, [&](int64_t first, int64_t last) {
        activate_rows<T>(h, first, last, hidden, relu);
      });
    }
  });
}

// Backward: d_pre_s = d_h_s * act'(h_s); d_h_{s-1} += d_pre_s @ W_hh, with w_hh D x (H, H)
// (a list: stacking would copy the weights of two directions for the whole loop). grads,
// D x (N, H) (one buffer per direction, so that each can be freed on its own), holds the
// gradient reaching each h_s on entry and d_pre_s on exit: step s turns its own d_h_s into
// d_pre_s in place once the later steps have added to it.
template <typename T>
void backward_loop(const Tensor& hs, at::TensorList grads, at::TensorList w_hh, bool relu,
                   const Steps& steps) {
  const int64_t directions = hs.size(0), batch = steps.batch(), hidden = hs.size(2);
  const auto options = hs.options();
  for_directions(directions, batch * hidden * hidden, [&](int64_t d) {
    const Tensor& w = w_hh[d];  // (H, H)
    const T* h_base = hs.select(0, d).data_ptr<T>() + batch * hidden;  // the h_s: (N, H)
    T* grad_base = grads[d].data_ptr<T>();  // (N, H): d_h_s in, d_pre_s out
    for (int64_t s = steps.count() - 1; s >= 0; --s) {
      const int64_t rows = steps.rows(s);
      T* grad_s = grad_base + steps.at(s) * hidden;
      for_rows(rows, hidden, [&](int64_t first, int64_t last) {
        backward_rows<T>(h_base + steps.at(s) * hidden, grad_s, grad_s, first, last, hidden,
                         relu);
      });
      if (s > 0) {  // d_h_{s-1} += d_pre_s @ W_hh: (rows, H) @ (H, H)
        Tensor d_h_prev = matrix(grad_base + steps.at(s - 1) * hidden, rows, hidden, options);
        add_matmul_(d_h_prev, matrix(grad_s, rows, hidden, options), w);
      }
    }
  });
}

// ---- The fused engine (engine.h): one packed W_hh per call, a team for the whole sequence.

// Forward, every direction: each member computes, at each step, h_{s-1} W_hh^T for its own
// hidden units (its panels) tile by tile of batch rows, adds it to the tile's input part in hs
// and activates it at once; the team meets once per step, when h_s is complete (units split;
// with rows split, engine::Work, never).
template <typename T>
void fused_forward_loop(Tensor& hs, at::TensorList w_rec, bool relu, const Steps& steps) {
  using L = engine::Layout<T, 1>;
  const int64_t directions = hs.size(0), batch = steps.batch();
  const int64_t hidden = hs.size(2), panels = L::panels(hidden);
  T* packed = engine::packing_room<T>(directions, panels, hidden, L::columns);
  engine::for_direction_work(
      directions, panels, 2 * batch * hidden * hidden,
      directions * panels * hidden * L::columns * int64_t(sizeof(T)), batch, L::max_rows,
      [&](int64_t d, const engine::Work& work, engine::Barrier& barrier) {
        const Tensor& w = w_rec[d];  // W_hh^T (H, H): element (j, k) = W_hh[j, k]
        T* panel_base = packed + d * panels * hidden * L::columns;
        engine::pack_panels<T, 1>(w.data_ptr<T>(), w.stride(1), w.stride(0), hidden, hidden,
                                  work.pack_first, work.pack_last, panel_base,
                                  hidden * L::columns);
        work.packed(barrier);
        T* base = hs.select(0, d).data_ptr<T>();  // (B + N, H)
        const int64_t first_unit = work.first_panel * L::units;
        const int64_t last_unit = std::min(work.last_panel * L::units, hidden);
        for (int64_t s = 0; s < steps.count(); ++s) {
          const auto [first_row, last_row] = work.rows_of(steps.rows(s));
          const T* h_prev = base + (steps.previous(s) + first_row) * hidden;
          T* h = base + (steps.next(s) + first_row) * hidden;
          // h_s[its rows, its units] = act(x_s W_ih^T (there already) + h_{s-1} @ W_hh^T[:, its
          // units])
          engine::add_product<T>(h_prev, hidden, hidden, nullptr, 0, 0, panel_base,
                                 hidden * L::columns, work.first_panel, work.last_panel, hidden,
                                 last_row - first_row, h, hidden);
          for (int64_t b = 0; b < last_row - first_row; ++b) {
            activate_rows<T>(h + b * hidden + first_unit, 0, 1, last_unit - first_unit, relu);
          }
          work.step_done(barrier);  // units split: h_s complete, the next step reads all of it
        }
      });
}

// Backward, every direction: each member turns its units' d_h_s into d_pre_s, then, after the
// team has met (with rows split: all units of its own rows, no meeting), adds d_pre_s @ W_hh,
// (rows, H) @ (H, its units), to its columns of d_h_{s-1},
// from its own panels of W_hh: the columns its next step reads.
template <typename T>
void fused_backward_loop(const Tensor& hs, at::TensorList grads, at::TensorList w_hh,
                         bool relu, const Steps& steps) {
  using L = engine::Layout<T, 1>;
  const int64_t directions = hs.size(0), batch = steps.batch();
  const int64_t hidden = hs.size(2), panels = L::panels(hidden);
  T* packed = engine::packing_room<T>(directions, panels, hidden, L::columns);
  engine::for_direction_work(
      directions, panels, 2 * batch * hidden * hidden,
      directions * panels * hidden * L::columns * int64_t(sizeof(T)), batch, L::max_rows,
      [&](int64_t d, const engine::Work& work, engine::Barrier& barrier) {
        const Tensor& w = w_hh[d];  // W_hh (H, H): element (j, k) = W_hh[k, j]
        T* panel_base = packed + d * panels * hidden * L::columns;
        engine::pack_panels<T, 1>(w.data_ptr<T>(), w.stride(1), w.stride(0), hidden, hidden,
                                  work.pack_first, work.pack_last, panel_base,
                                  hidden * L::columns);
        work.packed(barrier);
        const T* h_base = hs.select(0, d).data_ptr<T>() + batch * hidden;  // the h_s: (N, H)
        T* grad_base = grads[d].data_ptr<T>();  // (N, H): d_h_s in, d_pre_s out
        const int64_t first_unit = work.first_panel * L::units;
        const int64_t last_unit = std::min(work.last_panel * L::units, hidden);
        for (int64_t s = steps.count() - 1; s >= 0; --s) {
          const auto [first_row, last_row] = work.rows_of(steps.rows(s));
          T* grad_s = grad_base + steps.at(s) * hidden;
          const T* h_s = h_base + steps.at(s) * hidden;
          for (int64_t b = first_row; b < last_row; ++b) {
            const int64_t at = b * hidden + first_unit;
            backward_rows<T>(h_s + at, grad_s + at, grad_s + at, 0, 1, last_unit - first_unit,
                             relu);
          }
          work.step_done(barrier);  // units split: d_pre_s complete, every product reads it all
          if (s == 0) continue;  // d_h_0 = d_pre_0 @ W_hh is the caller's
          T* d_h_prev = grad_base + steps.at(s - 1) * hidden;
          // d_h_{s-1}[its rows, its units] += d_pre_s[its rows] @ W_hh[:, its units]: (rows, H)
          // @ (H, units)
          engine::add_product<T>(grad_s + first_row * hidden, hidden, hidden, nullptr, 0, 0,
                                 panel_base, hidden * L::columns, work.first_panel,
                                 work.last_panel, hidden, last_row - first_row,
                                 d_h_prev + first_row * hidden, hidden);
        }
      });
}

void rnn_forward(Tensor hs, at::TensorList w_rec, bool relu, at::IntArrayRef batch_sizes,
                 bool fused) {
  TORCH_CHECK(hs.is_contiguous(), "unrolled native RNN: hs must be contiguous");
  const Steps steps(batch_sizes);
  TORCH_CHECK(hs.dim() == 3 && hs.size(1) == steps.batch() + steps.total(),
              "unrolled native RNN: hs must be (D, B + N, H) for batch_sizes summing to N, got ",
              hs.sizes(), " for B=", steps.batch(), ", N=", steps.total());
  AT_DISPATCH_FLOATING_TYPES(hs.scalar_type(), "rnn_forward", [&] {
    if (fused) {
      fused_forward_loop<scalar_t>(hs, w_rec, relu, steps);
    } else {
      forward_loop<scalar_t>(hs, w_rec, relu, steps);
    }
  });
}

void rnn_backward(const Tensor& hs, at::TensorList grads, at::TensorList w_hh, bool relu,
                  at::IntArrayRef batch_sizes, bool fused) {
  TORCH_CHECK(hs.is_contiguous(), "unrolled native RNN: hs must be contiguous");
  for (const Tensor& t : grads) {
    TORCH_CHECK(t.is_contiguous(), "unrolled native RNN: grads must be contiguous");
  }
  const Steps steps(batch_sizes);
  TORCH_CHECK(hs.dim() == 3 && hs.size(1) == steps.batch() + steps.total(),
              "unrolled native RNN: hs must be (D, B + N, H) for batch_sizes summing to N, got ",
              hs.sizes(), " for B=", steps.batch(), ", N=", steps.total());
  AT_DISPATCH_FLOATING_TYPES(hs.scalar_type(), "rnn_backward", [&] {
    if (fused) {
      fused_backward_loop<scalar_t>(hs, grads, w_hh, relu, steps);
    } else {
      backward_loop<scalar_t>(hs, grads, w_hh, relu, steps);
    }
  });
}

}  // namespace
}  // namespace unrolled

TORCH_LIBRARY_FRAGMENT(unrolled, m) {
  m.def("rnn_forward(Tensor(a!) hs, Tensor[] w_rec, bool relu, int[] batch_sizes, bool fused) "
        "-> ()",
        &unrolled::rnn_forward);
  m.def("rnn_backward(Tensor hs, Tensor(a!)[] grads, Tensor[] w_hh, bool relu, "
        "int[] batch_sizes, bool fused) -> ()",
        &unrolled::rnn_backward);
}
