// The native loops' activations as elementwise ops, so that tests can hold them to their
// stated accuracy against torch (and check that NaN and infinities behave) directly.
#include <torch/library.h>

#include "common.h"

namespace unrolled {
namespace {

template <typename F>
Tensor elementwise(const Tensor& x, const F& f) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "unrolled native activations: x must be float32 or float64, got ",
              x.scalar_type());
  Tensor in = x.contiguous();
  Tensor out = at::empty_like(in);
  AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "activation", [&] {
    const scalar_t* src = in.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    const int64_t n = in.numel();
    for (int64_t k = 0; k < n; ++k) dst[k] = f(src[k]);
  });
  return out;
}

Tensor native_exp(const Tensor& x) {
  return elementwise(x, [](auto v) { return exp(v); });
}
Tensor native_sigmoid(const Tensor& x) {
  return elementwise(x, [](auto v) { return sigmoid(v); });
}
Tensor native_tanh(const Tensor& x) {
  return elementwise(x, [](auto v) { return tanh(v); });
}

}  // namespace
}  // namespace unrolled

TORCH_LIBRARY_FRAGMENT(unrolled, m) {
  m.def("exp(Tensor x) -> Tensor", &unrolled::native_exp);
  m.def("sigmoid(Tensor x) -> Tensor", &unrolled::native_sigmoid);
  m.def("tanh(Tensor x) -> Tensor", &unrolled::native_tanh);
}
