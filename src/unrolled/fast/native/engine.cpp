// What the fused engine (engine.h) was compiled for on this machine, for plans and benchmarks.
#include <torch/library.h>

#include <string>

#include "engine.h"

namespace unrolled {
namespace {

// "AVX-512", "AVX2", "NEON" or "scalar": the vector code of the engine's kernel in this build.
std::string engine_instruction_set() { return engine::kInstructionSet; }

}  // namespace
}  // namespace unrolled

TORCH_LIBRARY_FRAGMENT(unrolled, m) {
  m.def("engine_instruction_set() -> str", &unrolled::engine_instruction_set);
}
