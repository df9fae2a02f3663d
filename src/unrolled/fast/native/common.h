// What every native recurrence loop shares: activations, per-row loops, GEMMs.
//
// The loops in this directory replace only the per-time-step part of the fast backend (the
// recurrent GEMM and the cell's elementwise math); the hoisted input part and the
// weight gradients stay in Python, one large GEMM each. A step's elementwise math is one pass
// over each batch row, written as plain loops that the compiler vectorises (-O3
// -march=native), instead of the 6-8 separate torch kernels, each re-reading the gate buffer,
// that per-step Python needs.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ops/addmm_cpu_dispatch.h>
#include <ATen/ops/mm_cpu_dispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <type_traits>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

// Tells the compiler that the iterations of the next loop are independent (they are: every
// loop below reads and writes element j only), so it vectorises despite the many pointers.
#if defined(__clang__)
#define UNROLLED_VECTOR_LOOP _Pragma("clang loop vectorize(enable)")
#elif defined(__GNUC__)
#define UNROLLED_VECTOR_LOOP _Pragma("GCC ivdep")
#else
#define UNROLLED_VECTOR_LOOP
#endif

// The activations below must inline into the loops for those loops to vectorise; a call
// the compiler leaves out of line makes the loop scalar (5x slower).
#if defined(__GNUC__) || defined(__clang__)
#define UNROLLED_INLINE inline __attribute__((always_inline))
#else
#define UNROLLED_INLINE inline
#endif

namespace unrolled {

using at::Tensor;

// e^x, written so that a loop over it vectorises (libm's exp does not). x = n ln2 + r with
// |r| <= ln2/2 (ln2 split in two, Cody-Waite, so r is exact to the last bits), e^r by its
// Taylor polynomial (degree 7 for float, 13 for double: truncation below half an ulp), and 2^n
// built in the exponent bits as 2^(n/2) 2^(n - n/2), two factors that are always normal
// numbers, so that the result overflows to inf and underflows through the subnormals exactly
// where libm's does. x is clamped to where that is already decided (e^-104 rounds to 0 in
// float, e^89 to inf); NaN propagates.
template <typename T>
struct ExpConstants;

template <>
struct ExpConstants<float> {
  using Bits = int32_t;
  static constexpr float low = -104.0f, high = 89.0f;
  static constexpr float log2e = 1.44269504088896341f;
  static constexpr float ln2_high = 0.693359375f, ln2_low = -2.12194440e-4f;
  static constexpr int degree = 7;
  static constexpr int mantissa_bits = 23, bias = 127;
};

template <>
struct ExpConstants<double> {
  using Bits = int64_t;
  static constexpr double low = -746.0, high = 710.0;
  static constexpr double log2e = 1.4426950408889634074;
  static constexpr double ln2_high = 0.693145751953125, ln2_low = 1.42860682030941723212e-6;
  static constexpr int degree = 13;
  static constexpr int mantissa_bits = 52, bias = 1023;
};

template <typename T>
constexpr T inverse_factorial(int k) {
  T value = T(1);
  for (int m = 2; m <= k; ++m) value /= T(m);
  return value;
}

// 1/k! + r/(k+1)! + ... + r^(degree-k)/degree!, by Horner, unrolled at compile time (a loop
// here would keep the caller's loop from vectorising).
template <typename T, int k, int degree>
UNROLLED_INLINE T taylor(T r) {
  if constexpr (k == degree) {
    return inverse_factorial<T>(k);
  } else {
    return std::fma(taylor<T, k + 1, degree>(r), r, inverse_factorial<T>(k));
  }
}

// x rounded to the nearest integer (ties to even), for |x| < 2^22 (float) or 2^51 (double):
// adding and subtracting 1.5 * 2^mantissa_bits leaves no fraction bits. The same as
// std::nearbyint in the default rounding mode, in two additions that vectorise on any target
// (nearbyint is a library call wherever the target lacks a rounding instruction).
template <typename T>
UNROLLED_INLINE T round_to_integer(T x) {
  constexpr T shifter = T(1.5) * T(int64_t(1) << ExpConstants<T>::mantissa_bits);
  return (x + shifter) - shifter;
}

// x = n ln2 + r: the reduced argument r and 2^n as two normal factors (see exp).
template <typename T>
struct Reduced {
  T r, scale_a, scale_b;  // 2^n = scale_a * scale_b
};

template <typename T>
UNROLLED_INLINE Reduced<T> reduce(T x) {
  using C = ExpConstants<T>;
  using Bits = typename C::Bits;
  x = x < C::low ? C::low : x;
  x = x > C::high ? C::high : x;
  const T n = round_to_integer(x * C::log2e);
  const T r = std::fma(n, -C::ln2_low, std::fma(n, -C::ln2_high, x));
  const Bits whole = static_cast<Bits>(n), half = whole >> 1;
  const T scale_a = std::bit_cast<T>((half + C::bias) << C::mantissa_bits);
  const T scale_b = std::bit_cast<T>((whole - half + C::bias) << C::mantissa_bits);
  return {r, scale_a, scale_b};
}

// e^x, within 2 ulp wherever it is a normal number (measured: docs/numerics.md).
template <typename T>
UNROLLED_INLINE T exp(T x) {
  const Reduced<T> q = reduce(x);
  return taylor<T, 0, ExpConstants<T>::degree>(q.r) * q.scale_a * q.scale_b;
}

// e^x - 1 for x <= 0, accurate relative to its own size near 0, where exp(x) - 1 would cancel:
// e^x - 1 = 2^n (e^r - 1) + (2^n - 1), and e^r - 1 = r (1 + r/2! + r^2/3! + ...) keeps r's
// relative accuracy (for |x| <= ln2/2, n = 0 and the result is that product alone). Below
// x = -87 (float; -708 double) the result is -1 to the last bit, so x is clamped there and 2^n
// is one normal factor (cheaper than exp's two).
template <typename T>
UNROLLED_INLINE T expm1_negative(T x) {
  using C = ExpConstants<T>;
  using Bits = typename C::Bits;
  constexpr T low = std::is_same_v<T, float> ? T(-87) : T(-708);
  x = x < low ? low : x;
  const T n = round_to_integer(x * C::log2e);
  const T r = std::fma(n, -C::ln2_low, std::fma(n, -C::ln2_high, x));
  const T scale = std::bit_cast<T>((static_cast<Bits>(n) + C::bias) << C::mantissa_bits);
  const T e_r_minus_1 = r * taylor<T, 1, C::degree>(r);
  return std::fma(scale, e_r_minus_1, scale - T(1));
}

// sigmoid(x) = 1 / (1 + e^-x): relative accuracy wherever the result is a normal number; below
// x ~ -88.7 (float) e^-x overflows and the result is 0, as torch's sigmoid gives there.
template <typename T>
UNROLLED_INLINE T sigmoid(T x) {
  return T(1) / (T(1) + exp(-x));
}

// tanh(x) = -m / (2 + m) with m = e^(-2|x|) - 1, and the sign of x. Through expm1 the result
// keeps its relative accuracy near 0 (tanh(x) ~ x), where 2 sigmoid(2x) - 1 or
// (1 - e^-2x) / (1 + e^-2x) would lose it to cancellation (a hidden state of 1e-5 then
// carries a relative error of 1e-3 in float). Odd, so tanh(-0) = -0; NaN propagates.
template <typename T>
UNROLLED_INLINE T tanh(T x) {
  const T m = expm1_negative(T(-2) * std::abs(x));  // in [-1, 0]
  return std::copysign(-m / (T(2) + m), x);
}

// The per-step BLAS loops below (the runner of LSTMs with a projection, and the fused engine's
// measured alternative): two directions of a layer run on two threads at once, each its own
// whole sequence (they never wait for each other; BLAS and parallel_for inside run on the
// calling thread). Tiny steps (batch * in * out below 2^16) run one direction after the other
// on one thread: there waking a thread costs more than the step. One direction uses all threads
// in each step's GEMM (BLAS) and elementwise pass (for_rows). (These parallel_for calls only
// run in parallel since the loops are built with -fopenmp: build.py.)
template <typename F>
inline void for_directions(int64_t directions, int64_t step_flops, const F& body) {
  if (directions > 1 && at::get_num_threads() > 1 && step_flops >= (1 << 16)) {
    at::parallel_for(0, directions, 1, [&](int64_t first, int64_t last) {
      for (int64_t d = first; d < last; ++d) body(d);
    });
  } else {
    for (int64_t d = 0; d < directions; ++d) body(d);
  }
}

// body(begin, end) over batch rows [0, rows), split across threads only when a step is big
// enough to pay for waking them (tens of thousands of elements per task).
template <typename F>
inline void for_rows(int64_t rows, int64_t elements_per_row, const F& body) {
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, elements_per_row));
  if (rows <= grain) {
    body(0, rows);
  } else {
    at::parallel_for(0, rows, grain, body);
  }
}

// Recurrent dropout in the BLAS loops (LSTM and GRU): the mask's two passes of a step.
// dropped[b, j] = h[b, j] * drop[b, j], rows [0, rows): what W_hh multiplies.
template <typename T>
void drop_rows(const T* h, const T* drop, T* dropped, int64_t rows, int64_t size) {
  for_rows(rows, size, [&](int64_t first, int64_t last) {
    UNROLLED_VECTOR_LOOP
    for (int64_t k = first * size; k < last * size; ++k) dropped[k] = h[k] * drop[k];
  });
}

// d_h_prev += product * drop, rows [0, rows): the recurrent product's gradient through the mask.
template <typename T>
void add_dropped_rows(const T* product, const T* drop, T* d_h_prev, int64_t rows, int64_t size) {
  for_rows(rows, size, [&](int64_t first, int64_t last) {
    UNROLLED_VECTOR_LOOP
    for (int64_t k = first * size; k < last * size; ++k) d_h_prev[k] += product[k] * drop[k];
  });
}

// Where each step's rows lie in a layer's packed step-major buffers (the layout of
// `unrolled/fast/layer.py`): step s advances the first batch_sizes[s] rows of the batch (sorted
// longest first), found at row at(s) = batch_sizes[0] + ... + batch_sizes[s-1] of an (N, X)
// buffer; in an (B + N, X) state buffer its previous state starts at row previous(s) (h_0 at
// row 0, else the block step s-1 wrote) and its new state at row next(s) = B + at(s). A full
// batch is batch_sizes = [B] * T: at(s) = s * B, one layout for both.
class Steps {
 public:
  explicit Steps(at::IntArrayRef batch_sizes)
      : sizes_(batch_sizes), offsets_(batch_sizes.size() + 1, 0) {
    for (size_t s = 0; s < sizes_.size(); ++s) offsets_[s + 1] = offsets_[s] + sizes_[s];
  }
  int64_t count() const { return static_cast<int64_t>(sizes_.size()); }  // T
  int64_t batch() const { return sizes_.empty() ? 0 : sizes_[0]; }  // B
  int64_t total() const { return offsets_.back(); }  // N
  int64_t rows(int64_t s) const { return sizes_[s]; }
  int64_t at(int64_t s) const { return offsets_[s]; }
  int64_t previous(int64_t s) const { return s == 0 ? 0 : batch() + offsets_[s - 1]; }
  int64_t next(int64_t s) const { return batch() + offsets_[s]; }
  // Every step advances the whole batch (no sequence ends early).
  bool uniform() const {
    return std::all_of(sizes_.begin(), sizes_.end(), [&](int64_t n) { return n == batch(); });
  }

 private:
  at::IntArrayRef sizes_;
  std::vector<int64_t> offsets_;
};

// A (rows, cols) row-major matrix at `data` as a tensor, for the GEMMs. Built straight from the
// pointer: slicing the buffers with select/narrow per step would go through the dispatcher and
// autograd's view tracking, several times the cost of a small step's arithmetic.
template <typename T>
inline Tensor matrix(T* data, int64_t rows, int64_t cols, const at::TensorOptions& options) {
  return at::from_blob(data, {rows, cols}, options);
}

// out += a @ b (out is also addmm's `self`, so nothing is copied first).
inline void add_matmul_(Tensor& out, const Tensor& a, const Tensor& b) {
  at::cpu::addmm_out(out, out, a, b);
}

// out = a @ b
inline void matmul_into(Tensor& out, const Tensor& a, const Tensor& b) {
  at::cpu::mm_out(out, a, b);
}

// MKL's packed GEMM, where this torch build has it (x86 builds with MKL register the ops
// mkl::_mkl_reorder_linear_weight and mkl::_mkl_linear). A recurrent layer multiplies by the
// same W_hh at every step; a plain GEMM repacks that operand each time, the packed one packs it
// once per layer call. Measured on the bench's XL LSTM (B=32, H=1024, W_hh 4096 x 1024): forward
// 1.2-1.3x -> 0.7-1.0x torch's; at L (W_hh 1024 x 256) no different from a plain GEMM on a
// row-major copy, at M slower, so the plan (`unrolled.backends.plan`) asks for it for weights of
// 2^20 elements and more (float32, full batch: the packing is for a fixed number of rows).
struct PackedGemm {
  c10::TypedOperatorHandle<Tensor(const Tensor&, int64_t)> reorder;
  c10::TypedOperatorHandle<Tensor(const Tensor&, const Tensor&, const Tensor&,
                                  const std::optional<Tensor>&, int64_t)>
      linear;
};

inline const PackedGemm* packed_gemm() {
  static const std::optional<PackedGemm> ops = []() -> std::optional<PackedGemm> {
    auto& dispatcher = c10::Dispatcher::singleton();
    auto reorder = dispatcher.findOp({"mkl::_mkl_reorder_linear_weight", ""});
    auto linear = dispatcher.findOp({"mkl::_mkl_linear", ""});
    if (!reorder || !linear) return std::nullopt;
    return PackedGemm{
        reorder->typed<Tensor(const Tensor&, int64_t)>(),
        linear->typed<Tensor(const Tensor&, const Tensor&, const Tensor&,
                             const std::optional<Tensor>&, int64_t)>()};
  }();
  return ops ? &*ops : nullptr;
}

// A "no tensor" argument (the schemas take an empty tensor rather than `Tensor?`, which
// spells differently across torch versions).
inline bool given(const Tensor& t) { return t.defined() && t.numel() > 0; }

}  // namespace unrolled
