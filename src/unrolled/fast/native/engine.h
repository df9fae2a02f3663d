// The fused recurrence engine: the recurrent product of a step computed by the project's own
// vector kernel on a weight packed once per layer call, the cell's elementwise math applied to
// each tile while it is in L1, and threads that live through the whole sequence, each owning a
// slice of hidden units (and the slice of W_hh they need, which then stays in that core's
// cache), meeting once per step at a spin barrier.
//
// Why not one BLAS call per step (the loops' other kernel, `common.h`): a step's product is a
// GEMM with few rows (the batch) and a fixed right operand. A BLAS call repacks that operand at
// every step, forks and joins its threads around every call (the caller's elementwise pass
// runs between the joins), and how fast it runs with few rows depends on the vendor's code path
// for the CPU at hand (measured on AMD Zen: MKL's per-step sgemm at 103-128 GFLOP/s against
// 160-184 for the same library's large GEMMs). Here W_hh is packed once, each thread multiplies
// only by its own columns, and the two threads of a 2-core machine never meet except at the
// step's barrier.
//
// Vector code: AVX-512, AVX2+FMA and NEON through their intrinsics (chosen at build time by the
// compiler's target, `-march=native`), and a scalar fallback that compiles anywhere. No BLAS.
#pragma once

#include "common.h"

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#elif defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>
#endif

namespace unrolled {
namespace engine {

// One vector register of T for the build's target: load, store, broadcast, fused multiply-add.
// `registers` is how many the ISA has (sizes the kernel's tile so the accumulators stay in them).
template <typename T>
struct Simd;

#if defined(__AVX512F__)
constexpr const char* kInstructionSet = "AVX-512";
template <>
struct Simd<float> {
  using V = __m512;
  static constexpr int width = 16, registers = 32;
  static UNROLLED_INLINE V zero() { return _mm512_setzero_ps(); }
  static UNROLLED_INLINE V load(const float* p) { return _mm512_loadu_ps(p); }
  static UNROLLED_INLINE void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static UNROLLED_INLINE V broadcast(float x) { return _mm512_set1_ps(x); }
  static UNROLLED_INLINE V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
};
template <>
struct Simd<double> {
  using V = __m512d;
  static constexpr int width = 8, registers = 32;
  static UNROLLED_INLINE V zero() { return _mm512_setzero_pd(); }
  static UNROLLED_INLINE V load(const double* p) { return _mm512_loadu_pd(p); }
  static UNROLLED_INLINE void store(double* p, V v) { _mm512_storeu_pd(p, v); }
  static UNROLLED_INLINE V broadcast(double x) { return _mm512_set1_pd(x); }
  static UNROLLED_INLINE V fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
};
#elif defined(__AVX2__) && defined(__FMA__)
constexpr const char* kInstructionSet = "AVX2";
template <>
struct Simd<float> {
  using V = __m256;
  static constexpr int width = 8, registers = 16;
  static UNROLLED_INLINE V zero() { return _mm256_setzero_ps(); }
  static UNROLLED_INLINE V load(const float* p) { return _mm256_loadu_ps(p); }
  static UNROLLED_INLINE void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static UNROLLED_INLINE V broadcast(float x) { return _mm256_set1_ps(x); }
  static UNROLLED_INLINE V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
};
template <>
struct Simd<double> {
  using V = __m256d;
  static constexpr int width = 4, registers = 16;
  static UNROLLED_INLINE V zero() { return _mm256_setzero_pd(); }
  static UNROLLED_INLINE V load(const double* p) { return _mm256_loadu_pd(p); }
  static UNROLLED_INLINE void store(double* p, V v) { _mm256_storeu_pd(p, v); }
  static UNROLLED_INLINE V broadcast(double x) { return _mm256_set1_pd(x); }
  static UNROLLED_INLINE V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
};
#elif defined(__aarch64__) && defined(__ARM_NEON)
constexpr const char* kInstructionSet = "NEON";
template <>
struct Simd<float> {
  using V = float32x4_t;
  static constexpr int width = 4, registers = 32;
  static UNROLLED_INLINE V zero() { return vdupq_n_f32(0.0f); }
  static UNROLLED_INLINE V load(const float* p) { return vld1q_f32(p); }
  static UNROLLED_INLINE void store(float* p, V v) { vst1q_f32(p, v); }
  static UNROLLED_INLINE V broadcast(float x) { return vdupq_n_f32(x); }
  static UNROLLED_INLINE V fma(V a, V b, V c) { return vfmaq_f32(c, a, b); }
};
template <>
struct Simd<double> {
  using V = float64x2_t;
  static constexpr int width = 2, registers = 32;
  static UNROLLED_INLINE V zero() { return vdupq_n_f64(0.0); }
  static UNROLLED_INLINE V load(const double* p) { return vld1q_f64(p); }
  static UNROLLED_INLINE void store(double* p, V v) { vst1q_f64(p, v); }
  static UNROLLED_INLINE V broadcast(double x) { return vdupq_n_f64(x); }
  static UNROLLED_INLINE V fma(V a, V b, V c) { return vfmaq_f64(c, a, b); }
};
#else
constexpr const char* kInstructionSet = "scalar";
template <typename T>
struct ScalarSimd {
  using V = T;
  static constexpr int width = 1, registers = 16;
  static UNROLLED_INLINE V zero() { return T(0); }
  static UNROLLED_INLINE V load(const T* p) { return *p; }
  static UNROLLED_INLINE void store(T* p, V v) { *p = v; }
  static UNROLLED_INLINE V broadcast(T x) { return x; }
  static UNROLLED_INLINE V fma(V a, V b, V c) { return std::fma(a, b, c); }
};
template <>
struct Simd<float> : ScalarSimd<float> {};
template <>
struct Simd<double> : ScalarSimd<double> {};
#endif

// Keeps v in a register from here on: without it GCC folds the load of a panel vector into
// each of the rows' multiply-adds, one load per multiply-add instead of one per vector (the
// AVX2 kernel, LSTM forward on 2 Zen 4 cores: 102-153 GFLOP/s without, 167-186 with).
template <typename V>
UNROLLED_INLINE void in_register(V& v) {
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#if defined(__AVX512F__)
  asm("" : "+v"(v));
#else
  asm("" : "+x"(v));
#endif
#elif (defined(__GNUC__) || defined(__clang__)) && defined(__aarch64__)
  asm("" : "+w"(v));
#else
  (void)v;
#endif
}

// The shape of a packed weight and of the kernel's tile, for `gates` gates of T.
//
// A packed weight is a sequence of panels. Panel p covers `units` consecutive output units
// (hidden units of the layer, or columns of the backward's product) of every gate, and holds
// for each k of the depth (the product's inner dimension) the row
//     [gate 0: units values][gate 1: units values]...      (`columns` = gates * units values)
// so that the kernel reads one contiguous row of `vectors` vectors per k. A tile is `max_rows`
// batch rows of such a row of outputs. One gate (RNN, the backward's product) takes two
// vectors of units per panel, so the kernel still has several independent accumulators.
template <typename T, int gates>
struct Layout {
  static constexpr int width = Simd<T>::width;
  static constexpr int vectors_per_gate = gates == 1 ? 2 : 1;
  static constexpr int vectors = gates * vectors_per_gate;
  static constexpr int units = vectors_per_gate * width;
  static constexpr int columns = gates * units;
  // Accumulators: rows x vectors, with registers left for one broadcast per row and one
  // vector of the panel (the kernel loads the panel's row one vector at a time).
  static constexpr int max_rows = std::clamp((Simd<T>::registers - 1) / (vectors + 1), 1, 8);
  static int64_t panels(int64_t outputs) { return (outputs + units - 1) / units; }
};

// acc[r] += sum_k a[r * lda + k] * panel[k * columns ...] over k < depth, r < rows.
template <typename T, int gates, int rows>
UNROLLED_INLINE void accumulate(typename Simd<T>::V (&acc)[rows][Layout<T, gates>::vectors],
                                const T* a, int64_t lda, int64_t depth, const T* panel) {
  using S = Simd<T>;
  using L = Layout<T, gates>;
  for (int64_t k = 0; k < depth; ++k) {
    const T* row = panel + k * L::columns;
    typename S::V a_k[rows];
#pragma GCC unroll 8
    for (int r = 0; r < rows; ++r) a_k[r] = S::broadcast(a[r * lda + k]);
#pragma GCC unroll 8
    for (int v = 0; v < L::vectors; ++v) {
      typename S::V b = S::load(row + v * S::width);
      in_register(b);
#pragma GCC unroll 8
      for (int r = 0; r < rows; ++r) acc[r][v] = S::fma(a_k[r], b, acc[r][v]);
    }
  }
}

// out[r * out_row + g * out_gate + u] = sum_k a[r * lda + k] * panel[k * columns + g * units
// + u] + sum_k a2[r * lda2 + k] * panel[(depth + k) * columns + g * units + u], for the rows
// r < rows (a compile-time count, so that the accumulators are registers), gates g and the
// panel's units u. The second operand (depth2 may be 0) is how a step multiplies
// [x_s, h_{s-1}] by [W_ih; W_hh] in one pass.
template <typename T, int gates, int rows>
UNROLLED_INLINE void multiply_tile(const T* a, int64_t lda, int64_t depth, const T* a2,
                                   int64_t lda2, int64_t depth2, const T* panel, T* out,
                                   int64_t out_row, int64_t out_gate) {
  using S = Simd<T>;
  using L = Layout<T, gates>;
  typename S::V acc[rows][L::vectors];
#pragma GCC unroll 8
  for (int r = 0; r < rows; ++r) {
#pragma GCC unroll 8
    for (int v = 0; v < L::vectors; ++v) acc[r][v] = S::zero();
  }
  accumulate<T, gates, rows>(acc, a, lda, depth, panel);
  if (depth2 > 0) accumulate<T, gates, rows>(acc, a2, lda2, depth2, panel + depth * L::columns);
#pragma GCC unroll 8
  for (int r = 0; r < rows; ++r) {
#pragma GCC unroll 8
    for (int v = 0; v < L::vectors; ++v) {
      const int gate = v / L::vectors_per_gate, part = v % L::vectors_per_gate;
      S::store(out + r * out_row + gate * out_gate + part * S::width, acc[r][v]);
    }
  }
}

// multiply_tile for a run-time row count 1 <= rows <= Layout::max_rows.
template <typename T, int gates, int candidate = Layout<T, gates>::max_rows>
UNROLLED_INLINE void multiply(const T* a, int64_t lda, int64_t depth, const T* a2, int64_t lda2,
                              int64_t depth2, const T* panel, T* out, int64_t out_row,
                              int64_t out_gate, int64_t rows) {
  if (rows == candidate) {
    multiply_tile<T, gates, candidate>(a, lda, depth, a2, lda2, depth2, panel, out, out_row,
                                       out_gate);
  } else if constexpr (candidate > 1) {
    multiply<T, gates, candidate - 1>(a, lda, depth, a2, lda2, depth2, panel, out, out_row,
                                      out_gate, rows);
  }
}

// A member's units are worked through in chunks of a few panels, at least kChunkUnits units:
// each tile of rows is multiplied by the chunk's panels into a scratch block (rows, gates,
// chunk units), and the cell's math then runs over the chunk's units in one loop. Per panel,
// that loop would run over one vector of units, too short for the compiler's vectorised loop
// (with AVX2, 8 units: it ran the scalar remainder loop, 5-10x slower); a whole member's units
// at once would read its panels from the last-level cache once per tile instead of once.
constexpr int64_t kChunkUnits = 16;

template <typename T, int gates>
struct Chunks {
  using L = Layout<T, gates>;
  static constexpr int64_t panels = std::max<int64_t>(1, kChunkUnits / L::units);
  static constexpr int64_t units = panels * L::units;
  // The scratch block of one tile: (max_rows, gates, units).
  static constexpr int64_t scratch = L::max_rows * gates * units;
};

// body(first_panel, last_panel, first_unit, last_unit) for each chunk of panels [p0, p1) of a
// layer with `outputs` units.
template <typename T, int gates, typename F>
UNROLLED_INLINE void for_chunks(int64_t p0, int64_t p1, int64_t outputs, const F& body) {
  using C = Chunks<T, gates>;
  for (int64_t c0 = p0; c0 < p1; c0 += C::panels) {
    const int64_t c1 = std::min(c0 + C::panels, p1);
    body(c0, c1, c0 * C::L::units, std::min(c1 * C::L::units, outputs));
  }
}

// scratch[r][g][u] for the units u of panels [c0, c1) (a chunk): rows [0, rows) of a (and a2)
// times those panels; the scratch block is laid out (rows, gates, Chunks::units).
template <typename T, int gates>
UNROLLED_INLINE void multiply_chunk(const T* a, int64_t lda, int64_t depth, const T* a2,
                                    int64_t lda2, int64_t depth2, const T* panel_base,
                                    int64_t panel_size, int64_t c0, int64_t c1, T* scratch,
                                    int64_t rows) {
  using C = Chunks<T, gates>;
  for (int64_t p = c0; p < c1; ++p) {
    multiply<T, gates>(a, lda, depth, a2, lda2, depth2, panel_base + p * panel_size,
                       scratch + (p - c0) * C::L::units, gates * C::units, C::units, rows);
  }
}

// body(first_row, count) over [0, rows) in tiles of at most max_rows rows, as even as
// possible (32 rows in tiles of 6: 6, 6, 5, 5, 5, 5, not five of 6 and one of 2: a short tile
// keeps too few accumulators busy).
template <typename F>
UNROLLED_INLINE void for_tiles(int64_t rows, int64_t max_rows, const F& body) {
  const int64_t tiles = (rows + max_rows - 1) / max_rows;
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t first = rows * t / tiles;
    body(first, rows * (t + 1) / tiles - first);
  }
}

// for_tiles over the rows [first, last): body(first_row, count).
template <typename F>
UNROLLED_INLINE void for_tiles(int64_t first, int64_t last, int64_t max_rows, const F& body) {
  for_tiles(last - first, max_rows, [&](int64_t r0, int64_t count) { body(first + r0, count); });
}

// Panel p of a weight whose output unit j of gate g, input k, is weight(g * outputs + j, k)
// for a strided 2-D view `weight` (rows: gates * outputs, columns: depth). Units past
// `outputs` (the last panel's padding) are zero. A transposition, done in blocks of 16 inputs x
// the panel's units, each read and written as whole cache lines whichever of the two strides is
// the contiguous one (element by element, a gate's 16 units read 16 rows at once and the
// packing of a large layer took longer than several of its steps).
template <typename T, int gates>
void pack_panel(const T* weight, int64_t row_stride, int64_t col_stride, int64_t outputs,
                int64_t depth, int64_t p, T* panel) {
  using L = Layout<T, gates>;
  constexpr int64_t kBlock = 16;
  const int64_t first = p * L::units, count = std::min<int64_t>(L::units, outputs - first);
  T block[kBlock][L::units];
  for (int g = 0; g < gates; ++g) {
    const T* rows = weight + (g * outputs + first) * row_stride;  // unit j: rows + j * row_stride
    for (int64_t k0 = 0; k0 < depth; k0 += kBlock) {
      const int64_t inputs = std::min(kBlock, depth - k0);
      const T* source = rows + k0 * col_stride;
      if (col_stride <= row_stride) {  // along k is the contiguous direction
        for (int64_t j = 0; j < count; ++j) {
          for (int64_t k = 0; k < inputs; ++k) {
            block[k][j] = source[j * row_stride + k * col_stride];
          }
        }
      } else {  // along j is
        for (int64_t k = 0; k < inputs; ++k) {
          for (int64_t j = 0; j < count; ++j) {
            block[k][j] = source[j * row_stride + k * col_stride];
          }
        }
      }
      for (int64_t k = 0; k < inputs; ++k) {
        T* target = panel + (k0 + k) * L::columns + g * L::units;
        std::copy(block[k], block[k] + count, target);
        std::fill(target + count, target + L::units, T(0));
      }
    }
  }
}

// Panels [p0, p1) of a weight (as pack_panel reads it), panel p at base + p * panel_stride.
template <typename T, int gates>
void pack_panels(const T* weight, int64_t row_stride, int64_t col_stride, int64_t outputs,
                 int64_t depth, int64_t p0, int64_t p1, T* base, int64_t panel_stride) {
  for (int64_t p = p0; p < p1; ++p) {
    pack_panel<T, gates>(weight, row_stride, col_stride, outputs, depth, p,
                         base + p * panel_stride);
  }
}

// target[r * ld + u] += rows [0, rows) of [a, a2] times panels [p0, p1) of a one-gate packed
// weight (panel_size values each), for the units u of those panels below `outputs`: a member's
// columns of a product added where they belong (the backward's d_h_{s-1} += d_pre_s W_hh, the
// RNN's h_s = x_s W_ih^T + h_{s-1} W_hh^T).
template <typename T>
void add_product(const T* a, int64_t lda, int64_t depth, const T* a2, int64_t lda2,
                 int64_t depth2, const T* panel_base, int64_t panel_size, int64_t p0, int64_t p1,
                 int64_t outputs, int64_t rows, T* target, int64_t ld) {
  using L = Layout<T, 1>;
  using C = Chunks<T, 1>;
  alignas(64) T tile[C::scratch];
  for_chunks<T, 1>(p0, p1, outputs, [&](int64_t c0, int64_t c1, int64_t unit, int64_t end) {
    for_tiles(rows, L::max_rows, [&](int64_t r0, int64_t tile_rows) {
      // tile = [a, a2][r0 : r0 + tile_rows] @ the chunk's panels: (rows, depth + depth2) @
      // (depth + depth2, chunk units)
      multiply_chunk<T, 1>(a + r0 * lda, lda, depth, a2 == nullptr ? nullptr : a2 + r0 * lda2,
                           lda2, depth2, panel_base, panel_size, c0, c1, tile, tile_rows);
      for (int64_t r = 0; r < tile_rows; ++r) {
        T* row = target + (r0 + r) * ld + unit;
        const T* product = tile + r * C::units;
        UNROLLED_VECTOR_LOOP
        for (int64_t j = 0; j < end - unit; ++j) row[j] += product[j];
      }
    });
  });
}

// Room for a call's packed weights, (directions, panels, depth, columns) of T: one buffer per
// calling thread, kept between calls and grown when a layer needs more. A new buffer per call
// would be fresh pages from the operating system every time, and touching them for the first
// time (page faults) cost more than packing into them (measured: 25 MB of LSTM weights at
// B = 32, H = 1024, I = 512).
//
// Aligned to a cache line: a panel's rows and gates are whole vectors, so every vector the
// kernel loads then lies within one cache line instead of straddling two. A std::vector's data
// is only 16-byte aligned (glibc puts a large allocation 16 bytes into its pages), which cost
// the kernel 8-15% (RNN, H = 1024, one Xeon Emerald Rapids core: 109-124 GFLOP/s against
// 132-135 aligned).
template <typename T>
T* packing_room(int64_t directions, int64_t panels, int64_t depth, int64_t columns) {
  constexpr size_t kAlign = 64, kSlack = kAlign / sizeof(T);
  thread_local std::vector<T> room;
  const size_t needed = static_cast<size_t>(directions * panels * depth * columns) + kSlack;
  if (room.size() < needed) {
    room = std::vector<T>();  // release the old buffer before taking the new one
    room.resize(needed);
  }
  void* start = room.data();
  size_t space = room.size() * sizeof(T);
  return static_cast<T*>(std::align(kAlign, (needed - kSlack) * sizeof(T), start, space));
}

// Barrier for a team of threads, reusable step after step. Spins (the wait is one step of
// arithmetic, microseconds), and yields the core after a while so that an oversubscribed
// machine (more threads than cores, as under a parallel test runner) still makes progress.
// Sized by `resize` before any member waits (run_team's `prepare`).
class Barrier {
 public:
  void resize(int size) { size_ = size; }

  void wait() {
    if (size_ <= 1) return;
    const int generation = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) == size_ - 1) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
      return;
    }
    for (int spins = 0; generation_.load(std::memory_order_acquire) == generation; ++spins) {
      if (spins < 4096) {
        pause();
      } else {
        std::this_thread::yield();
      }
    }
  }

 private:
  static UNROLLED_INLINE void pause() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
  }

  int size_ = 1;
  alignas(64) std::atomic<int> arrived_{0};
  alignas(64) std::atomic<int> generation_{0};
};

// Run body(member, team_size) on a team of up to `wanted` threads that all run at once (so
// they may wait for each other at a Barrier), drawn from torch's intra-op pool, after
// prepare(team_size) has run once (size the barriers there). The team may be smaller than
// asked (a nested parallel region, fewer threads free): body divides its work by the
// team_size it is given, and a team of one runs everything on the calling thread.
template <typename Prepare, typename Body>
void run_team(int64_t wanted, const Prepare& prepare, const Body& body) {
#if AT_PARALLEL_OPENMP
  if (wanted > 1 && at::get_num_threads() > 1 && !at::in_parallel_region()) {
    // OpenMP runs the members of a parallel region at once. Each invocation of the lambda gets
    // a chunk of [0, wanted) and counts itself in; the one that completes the count (a single
    // invocation may claim every index) knows the team's size, prepares, and lets all start.
    std::atomic<int64_t> claimed{0};
    std::atomic<int> joined{0};
    std::atomic<bool> ready{false};
    at::parallel_for(0, wanted, 1, [&](int64_t first, int64_t last) {
      const int member = joined.fetch_add(1, std::memory_order_acq_rel);
      const int64_t count = last - first;
      if (claimed.fetch_add(count, std::memory_order_acq_rel) + count == wanted) {
        prepare(joined.load(std::memory_order_acquire));
        ready.store(true, std::memory_order_release);
      } else {
        while (!ready.load(std::memory_order_acquire)) std::this_thread::yield();
      }
      body(member, joined.load(std::memory_order_acquire));
    });
    return;
  }
#endif
  prepare(1);
  body(0, 1);
}

// [first, last) of `count` items for member m of a team of n, in contiguous near-equal parts.
inline std::pair<int64_t, int64_t> share(int64_t count, int64_t m, int64_t n) {
  return {count * m / n, count * (m + 1) / n};
}

// How the members of a team are spread over the D directions of a layer: direction d gets the
// members with member % directions == d (with one member only, it runs every direction in
// turn). Each direction's members share one Barrier.
struct Crew {
  int64_t directions, size;
  bool in_turn = false;  // every member on every direction, one direction after the other
  bool split() const { return !in_turn && size >= directions; }
  // Members working on direction d, and member m's index among them.
  int64_t on(int64_t d) const {
    return split() ? (size - d + directions - 1) / directions : (in_turn ? size : 1);
  }
  int64_t index(int64_t m) const { return split() ? m / directions : (in_turn ? m : 0); }
  // The directions member m works on: [m % D] or all of them in turn.
  std::pair<int64_t, int64_t> directions_of(int64_t m) const {
    return split() ? std::pair{m % directions, m % directions + 1}
                   : std::pair{int64_t(0), directions};
  }
};

// How many threads a fused loop asks for: one per direction at least where the machine has
// them, more per direction only while each member keeps a panel and a step's product is big
// enough (in FLOPs per member) to pay for a meeting per step.
inline int64_t team_size(int64_t directions, int64_t panels, int64_t step_flops) {
  constexpr int64_t kFlopsPerMember = int64_t(1) << 14;  // measured: docs/performance.md
  const int64_t per_direction =
      std::clamp<int64_t>(step_flops / kFlopsPerMember, 1, std::max<int64_t>(1, panels));
  return std::min<int64_t>(at::get_num_threads(), directions * per_direction);
}

// One core's own cache (the level-2 cache) as Linux reports it (/sys), 1 MiB where it cannot
// be read; $UNROLLED_ENGINE_CACHE_BYTES, where set, instead (how the tests take the other
// schedule).
inline int64_t private_cache_bytes() {
  static const int64_t bytes = [] {
    if (const char* given = std::getenv("UNROLLED_ENGINE_CACHE_BYTES")) {
      return static_cast<int64_t>(std::atoll(given));
    }
    int64_t size = int64_t(1) << 20;
    for (int index = 0; index < 8; ++index) {
      const std::string base = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index);
      std::ifstream level_file(base + "/level"), size_file(base + "/size");
      int64_t level = 0, amount = 0;
      char unit = 0;
      if (!(level_file >> level) || !(size_file >> amount) || level != 2) continue;
      size_file >> unit;
      const int64_t scale =
          unit == 'K' ? 1 << 10 : unit == 'M' ? 1 << 20 : unit == 'G' ? 1 << 30 : 1;
      size = amount * scale;
    }
    return size;
  }();
  return bytes;
}

// What one member of a team does for direction d of a fused loop, forward or backward
// (for_direction_work): it multiplies by panels [first_panel, last_panel), packs [pack_first,
// pack_last), and computes the batch rows [first_row, last_row) of every step (of those the
// step has).
//
// Two ways to share a direction between members. Units split (the default): each member owns
// a slice of hidden units, packs and reads only its panels, and computes its units for every
// row; the next step reads all of h_s, so the members meet once per step. Rows split: each
// member owns a slice of the batch and computes all units for its rows; a row's next step
// reads only that row's h (the backward's: that row's d_pre_s), so after packing (each member
// packs a share of the panels, all read all of them) the members never meet again. Rows split
// needs a whole direction's panels in each core's own cache with room to spare (at most half
// of it: LSTM at B = 64, I = H = 256, 2 MB of panels in a 2 MB L2, ran 1.07-1.15x torch.nn's
// forward with rows split against 1.01-1.06 with units split), and enough rows per member for
// the kernel's tiles. Where it has
// them it saves the per-step meeting, and every wait at it for a core slowed down a moment.
// Measured on the Intel Xeon Emerald Rapids, one layer's forward, ratio to torch.nn, two runs,
// rows split / units split: RNN B = 16, T = 128, I = 64, H = 128: 0.33, 0.32 / 0.49, 0.47;
// B = 64, I = H = 256: 0.69, 0.72 / 0.85, 0.87; B = 32, I = 192, H = 320: 0.61, 0.62 / 0.75,
// 0.73; GRU B = 64, I = H = 256: 0.73-0.78 / 0.79-0.81; LSTM B = 16, H = 128: 0.80-0.85 /
// 0.79-0.90 (the same within the noise).
struct Work {
  int64_t first_panel, last_panel, pack_first, pack_last, first_row, last_row;
  bool rows_split;
  // This member's rows [first, last) of a step with `rows` rows.
  std::pair<int64_t, int64_t> rows_of(int64_t rows) const {
    return {std::min(first_row, rows), std::min(last_row, rows)};
  }
  // After packing: with rows split every member reads every panel, so all must be packed.
  void packed(Barrier& barrier) const {
    if (rows_split) barrier.wait();
  }
  // After a step: with units split the next step reads every member's units of h_s.
  void step_done(Barrier& barrier) const {
    if (!rows_split) barrier.wait();
  }
};

// The engine's one schedule: a team for the whole call (team_size), spread over the layer's
// directions (Crew); body(d, work, barrier) runs direction d's Work for one member, `barrier`
// being the one that direction's members meet at. A `step_flops` is one direction's product
// per step; `packed_bytes` all directions' packed weights; `batch` rows at the most per step,
// `max_rows` the kernel's tile. The directions run side by side,
// each on its own members (on 2 threads: one each, never waiting for the other), while each
// member's share of them (packed_bytes / team) fits in its core's own cache; beyond it one
// after the other, each on the whole team, so that while a direction runs a member reads only
// its share of that direction's weights, which is half as much (at 2 directions) and then
// stays in its cache from step to step. Measured on
// the Intel Xeon Emerald Rapids (2 MB L2 per core), one bidirectional layer's forward with the
// engine, ratio to torch.nn, mean of 4 runs (2 for the first), in turn / side by side: LSTM
// B = 32, I = 192, H = 320 (2.6 MB per member side by side): 1.04 / 1.06; B = 24, I = 384,
// H = 768: 1.28 / 1.32; B = 32, I = 512, H = 1024: 1.25 / 1.34; GRU at the last two: 0.86 /
// 0.89 and 0.83 / 0.86; RNN: 0.84 / 0.85 and 0.81 / 0.82 (a few percent, near that machine's
// noise, never worse). Where a member's share fits (LSTM B = 8, H = 96: 0.2 MB), side by side
// is faster: 0.58-0.62 against 0.65-0.70 in turn (RNN: 0.20-0.22 against 0.31-0.32), the
// meeting per step that sharing a direction needs costing more than the cache saves. On AMD
// EPYC Zen 4 (1 MB L2), 2-layer LSTM, B = 24, I = 384, H = 768: 1.08 side by side, 1.02 in turn.
// A direction with several members splits its rows instead of its units (Work) where its
// panels fit one core's own cache and each member gets at least `max_rows` rows.
template <typename F>
void for_direction_work(int64_t directions, int64_t panels, int64_t step_flops,
                        int64_t packed_bytes, int64_t batch, int64_t max_rows, const F& body) {
  Barrier barriers[2];
  Crew crew{directions, 1};
  run_team(
      team_size(directions, panels, step_flops),
      [&](int64_t size) {
        crew.size = size;
        crew.in_turn = directions > 1 && packed_bytes / size > private_cache_bytes();
        for (int64_t d = 0; d < directions; ++d) barriers[d].resize(crew.on(d));
      },
      [&](int64_t member, int64_t) {
        const auto [first_direction, last_direction] = crew.directions_of(member);
        for (int64_t d = first_direction; d < last_direction; ++d) {
          const int64_t members = crew.on(d), index = crew.index(member);
          const auto [first, last] = share(panels, index, members);
          const bool rows_split = members > 1 && batch / members >= max_rows &&
                                  packed_bytes / directions <= private_cache_bytes() / 2;
          Work work{first, last, first, last, 0, batch, false};
          if (rows_split) {
            const auto [first_row, last_row] = share(batch, index, members);
            work = Work{0, panels, first, last, first_row, last_row, true};
          }
          body(d, work, barriers[d]);
        }
      });
}

}  // namespace engine
}  // namespace unrolled
