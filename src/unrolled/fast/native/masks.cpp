// Zoneout's keep masks, drawn fast: unrolled/random_masks.py says what they are (a counter-based
// hash of each element's index under two 32-bit seeds) and computes the same bits in torch ops;
// this file is that function as one vectorised pass.
#include <torch/library.h>

#include <cstdint>

#include "common.h"

namespace unrolled {
namespace {

// lowbias32 (C. Wellons' integer hash search): a 32-bit bijection with low bias.
inline uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

// Element k's 32 random bits: mix32(mix32(k * golden + seed_a) ^ seed_b).
inline uint32_t bits(uint32_t k, uint32_t seed_a, uint32_t seed_b) {
  return mix32(mix32(k * 0x9e3779b9U + seed_a) ^ seed_b);
}

// (numel of shape) values of `dtype`, 1 where the element's bits fall below `threshold` (an
// integer in [0, 2^32]: the keep probability times 2^32), else 0.
Tensor keep_mask(int64_t seed_a, int64_t seed_b, at::IntArrayRef shape, int64_t threshold,
                 at::ScalarType dtype) {
  TORCH_CHECK(0 <= seed_a && seed_a < (int64_t(1) << 32) && 0 <= seed_b &&
                  seed_b < (int64_t(1) << 32),
              "unrolled keep_mask: seeds must be 32-bit unsigned, got ", seed_a, ", ", seed_b);
  TORCH_CHECK(0 <= threshold && threshold <= (int64_t(1) << 32),
              "unrolled keep_mask: threshold must be in [0, 2^32], got ", threshold);
  Tensor out = at::empty(shape, at::TensorOptions().dtype(dtype));
  TORCH_CHECK(out.numel() <= (int64_t(1) << 32), "unrolled keep_mask: at most 2^32 elements");
  const auto a = static_cast<uint32_t>(seed_a), b = static_cast<uint32_t>(seed_b);
  const uint64_t below = static_cast<uint64_t>(threshold);
  AT_DISPATCH_FLOATING_TYPES(dtype, "keep_mask", [&] {
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, out.numel(), 1 << 14, [&](int64_t first, int64_t last) {
      UNROLLED_VECTOR_LOOP
      for (int64_t k = first; k < last; ++k) {
        const uint64_t u = bits(static_cast<uint32_t>(k), a, b);
        dst[k] = u < below ? scalar_t(1) : scalar_t(0);
      }
    });
  });
  return out;
}

}  // namespace
}  // namespace unrolled

TORCH_LIBRARY_FRAGMENT(unrolled, m) {
  m.def("keep_mask(int seed_a, int seed_b, int[] shape, int threshold, ScalarType dtype) -> Tensor",
        &unrolled::keep_mask);
}
