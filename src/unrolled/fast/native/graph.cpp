// Whether the backward pass now running frees the graph's saved tensors as it goes
// (`retain_graph=False`, the default for `.backward()` and `torch.autograd.grad`).
//
// When it does, the engine releases a node's saved tensors right after that node's backward
// returns, so no one reads them again: the layers' backward may then reuse their own saved
// internal buffers (gates, activations) as the space for their gradients instead of
// allocating more. With `retain_graph=True` (a second backward will read the same buffers)
// they must not, and the answer here is false.
//
// torch exports the query from libtorch as torch::autograd::get_current_graph_task_keep_graph
// (graph_task.h). Not every release has it, so it is declared weak here: where libtorch lacks
// it the address is null and the answer is the safe one, "kept". The same where weak symbols
// are not available (not ELF).
#include <torch/library.h>

#if defined(__ELF__) && (defined(__GNUC__) || defined(__clang__))
namespace torch::autograd {
bool get_current_graph_task_keep_graph() __attribute__((weak));
}  // namespace torch::autograd
#define UNROLLED_HAS_WEAK_SYMBOLS 1
#endif

namespace unrolled {
namespace {

bool graph_released() {
#ifdef UNROLLED_HAS_WEAK_SYMBOLS
  if (&torch::autograd::get_current_graph_task_keep_graph != nullptr) {
    // Outside any backward there is no graph task and torch answers "kept" (true).
    return !torch::autograd::get_current_graph_task_keep_graph();
  }
#endif
  return false;
}

}  // namespace
}  // namespace unrolled

TORCH_LIBRARY_FRAGMENT(unrolled, m) {
  m.def("graph_released() -> bool", &unrolled::graph_released);
}
