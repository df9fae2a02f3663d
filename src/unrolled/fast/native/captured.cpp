// A user cell's step, captured once as two ATen graphs (unrolled/captured.py: the step's forward
// and the backward of one step), run over all time steps here, in C++, instead of once per step
// from Python with autograd recording every op.
//
// A graph is a list of instructions over numbered slots. Slot k < num_inputs holds input k; every
// instruction calls one ATen operator through the dispatcher (boxed: the same kernels eager mode
// runs, so the numbers are those of the uncaptured step) with arguments that are slots or
// constants, and writes its returns to slots. Instructions whose arguments depend only on the
// parameters (a weight's transpose, a weight norm) form the prologue and run once per call.
//
// CapturedStep::forward runs the forward graph for t = 0..T-1 (or T-1..0): its inputs are the
// parameters, x_t, the state's leaves and, with lengths, the step's (B, 1) mask of running
// sequences; its outputs the step's output, the new state's leaves and the tensors the backward
// graph needs (kept per step on a Tape when the call will be differentiated). CapturedStep::
// backward walks the Tape in the opposite order, feeding each step's saved tensors and the
// gradients reaching its outputs to the backward graph, and sums the parameters' gradients.
#include <torch/custom_class.h>
#include <torch/library.h>

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>

#include <string>
#include <vector>

namespace unrolled {
namespace {

using c10::IValue;

// One argument of an instruction: a slot, a list of slots (Tensor[] / Tensor?[]; -1 is None) or
// a constant.
struct Argument {
  enum Kind { kSlot, kSlots, kOptionalSlots, kConstant } kind;
  int64_t slot = -1;
  std::vector<int64_t> slots;
  IValue constant;
};

struct Instruction {
  std::optional<c10::OperatorHandle> op;  // set when the instruction is described
  std::vector<Argument> arguments;
  // Where each return goes: counts[i] == -1 for one value written to outs[position], or the
  // number of elements of a returned Tensor[] written to the next counts[i] entries of outs.
  std::vector<int64_t> outs;
  std::vector<int64_t> counts;
};

struct Graph {
  int64_t num_inputs = 0;
  int64_t num_slots = 0;
  std::vector<Instruction> prologue, body;
  std::vector<int64_t> outputs;  // -1: None
  // Building: the instruction being described.
  Instruction pending;
  bool pending_in_prologue = false;

  void run(std::vector<IValue>& slots, const std::vector<Instruction>& part) const {
    torch::jit::Stack stack;
    for (const Instruction& instruction : part) {
      stack.clear();
      for (const Argument& argument : instruction.arguments) {
        switch (argument.kind) {
          case Argument::kSlot:
            stack.push_back(slots[argument.slot]);
            break;
          case Argument::kSlots: {
            c10::List<at::Tensor> list;
            list.reserve(argument.slots.size());
            for (int64_t slot : argument.slots) list.push_back(slots[slot].toTensor());
            stack.emplace_back(std::move(list));
            break;
          }
          case Argument::kOptionalSlots: {
            c10::List<std::optional<at::Tensor>> list;
            for (int64_t slot : argument.slots) {
              list.push_back(slot < 0 ? std::optional<at::Tensor>()
                                      : std::optional<at::Tensor>(slots[slot].toTensor()));
            }
            stack.emplace_back(std::move(list));
            break;
          }
          case Argument::kConstant:
            stack.push_back(argument.constant);
            break;
        }
      }
      instruction.op->callBoxed(stack);
      size_t position = 0;
      for (size_t r = 0; r < instruction.counts.size(); ++r) {
        const int64_t count = instruction.counts[r];
        if (count < 0) {
          slots[instruction.outs[position++]] = std::move(stack[r]);
          continue;
        }
        auto list = stack[r].toTensorVector();
        TORCH_CHECK(static_cast<int64_t>(list.size()) == count, "unrolled captured step: ",
                    instruction.op->schema().name(), " returned ", list.size(),
                    " tensors where the capture saw ", count);
        for (auto& tensor : list) slots[instruction.outs[position++]] = std::move(tensor);
      }
    }
  }
};

// What a forward keeps for its backward: each step's saved tensors, in the order the steps ran.
struct Tape : torch::CustomClassHolder {
  std::vector<std::vector<IValue>> saved;
  bool reverse = false;
  int64_t num_steps = 0;
};

struct CapturedStep : torch::CustomClassHolder {
  Graph graphs[2];  // 0: forward, 1: backward
  int64_t num_params, num_state, num_saved;
  bool masked;  // the forward graph reads a (B, 1) mask of running sequences after the state

  CapturedStep(int64_t num_params, int64_t num_state, int64_t num_saved, bool masked)
      : num_params(num_params), num_state(num_state), num_saved(num_saved), masked(masked) {}

  // ---- building (unrolled/captured.py describes each graph once) -----------------------------

  void graph(int64_t which, int64_t num_inputs, int64_t num_slots) {
    graphs[which].num_inputs = num_inputs;
    graphs[which].num_slots = num_slots;
  }
  void begin(int64_t which, const std::string& name, const std::string& overload, bool prologue) {
    Graph& g = graphs[which];
    g.pending = Instruction{c10::Dispatcher::singleton().findSchemaOrThrow(name.c_str(),
                                                                           overload.c_str()),
                            {}, {}, {}};
    g.pending_in_prologue = prologue;
  }
  void slot(int64_t which, int64_t slot) {
    graphs[which].pending.arguments.push_back({Argument::kSlot, slot, {}, IValue()});
  }
  void slots(int64_t which, std::vector<int64_t> slots, bool optional) {
    graphs[which].pending.arguments.push_back(
        {optional ? Argument::kOptionalSlots : Argument::kSlots, -1, std::move(slots), IValue()});
  }
  void constant(int64_t which, IValue value) {
    graphs[which].pending.arguments.push_back({Argument::kConstant, -1, {}, std::move(value)});
  }
  void constant_int(int64_t which, int64_t v) { constant(which, IValue(v)); }
  void constant_float(int64_t which, double v) { constant(which, IValue(v)); }
  void constant_bool(int64_t which, bool v) { constant(which, IValue(v)); }
  void constant_none(int64_t which) { constant(which, IValue()); }
  // A Python number where the schema wants a Tensor (`x + 0.5` traces as add.Tensor(x, 0.5)): the
  // 0-dim "wrapped number" tensor eager mode makes of it, which type promotion treats as a scalar.
  void constant_number(int64_t which, double value, bool integral) {
    at::Tensor number = integral ? at::scalar_to_tensor(at::Scalar(static_cast<int64_t>(value)))
                                 : at::scalar_to_tensor(at::Scalar(value));
    number.unsafeGetTensorImpl()->set_wrapped_number(true);
    constant(which, IValue(number));
  }
  void constant_ints(int64_t which, std::vector<int64_t> v) { constant(which, IValue(v)); }
  void constant_bools(int64_t which, std::vector<int64_t> v) {  // bool[] (e.g. output_mask)
    c10::List<bool> bools;
    for (int64_t b : v) bools.push_back(b != 0);
    constant(which, IValue(bools));
  }
  void constant_dtype(int64_t which, at::ScalarType v) { constant(which, IValue(v)); }
  void constant_layout(int64_t which, at::Layout v) { constant(which, IValue(v)); }
  void constant_device(int64_t which, at::Device v) { constant(which, IValue(v)); }
  void constant_memory_format(int64_t which, at::MemoryFormat v) { constant(which, IValue(v)); }
  void end(int64_t which, std::vector<int64_t> outs, std::vector<int64_t> counts) {
    Graph& g = graphs[which];
    g.pending.outs = std::move(outs);
    g.pending.counts = std::move(counts);
    (g.pending_in_prologue ? g.prologue : g.body).push_back(std::move(g.pending));
  }
  void returns(int64_t which, std::vector<int64_t> outputs) {
    graphs[which].outputs = std::move(outputs);
  }

  // ---- running --------------------------------------------------------------------------------

  // xp (T, B, *), state leaves (B, *), params, valid (T, B, 1) or None -> [output (T, B, O),
  // final state leaves...]; with keep, the tape is filled for backward().
  std::vector<at::Tensor> forward(const c10::intrusive_ptr<Tape>& tape, const at::Tensor& xp,
                                  std::vector<at::Tensor> state, std::vector<at::Tensor> params,
                                  std::optional<at::Tensor> valid, bool reverse, bool keep) {
    const Graph& g = graphs[0];
    TORCH_CHECK(static_cast<int64_t>(state.size()) == num_state &&
                    static_cast<int64_t>(params.size()) == num_params,
                "unrolled captured step: expected ", num_state, " state tensors and ", num_params,
                " parameters, got ", state.size(), " and ", params.size());
    TORCH_CHECK(valid.has_value() == masked, "unrolled captured step: the mask of running "
                "sequences must be given exactly when the step was captured with one");
    const int64_t num_steps = xp.size(0);
    std::vector<IValue> slots(g.num_slots);
    for (int64_t p = 0; p < num_params; ++p) slots[p] = params[p];
    g.run(slots, g.prologue);
    std::vector<at::Tensor> outputs(num_steps);
    tape->saved.assign(keep ? num_steps : 0, {});
    tape->reverse = reverse;
    tape->num_steps = num_steps;
    const int64_t first_state = num_params + 1;
    for (int64_t s = 0; s < num_steps; ++s) {
      const int64_t t = reverse ? num_steps - 1 - s : s;
      slots[num_params] = xp.select(0, t);  // (B, *)
      for (int64_t k = 0; k < num_state; ++k) slots[first_state + k] = state[k];
      if (masked) slots[first_state + num_state] = valid->select(0, t);  // (B, 1)
      g.run(slots, g.body);
      outputs[t] = slots[g.outputs[0]].toTensor();  // (B, O)
      for (int64_t k = 0; k < num_state; ++k) state[k] = slots[g.outputs[1 + k]].toTensor();
      if (keep) {
        auto& saved = tape->saved[s];
        saved.reserve(num_saved);
        for (int64_t k = 0; k < num_saved; ++k) saved.push_back(slots[g.outputs[1 + num_state + k]]);
      }
    }
    std::vector<at::Tensor> result{at::stack(outputs)};  // (T, B, O)
    for (auto& leaf : state) result.push_back(leaf);
    return result;
  }

  // d_output (T, B, O), d_state leaves (B, *) (the final state's gradients) -> [d_xp (T, B, *),
  // d_state_0 leaves..., d_params...]; an undefined tensor where the graph gave no gradient.
  std::vector<at::Tensor> backward(const c10::intrusive_ptr<Tape>& tape,
                                   const at::Tensor& d_output, std::vector<at::Tensor> d_state,
                                   const at::Tensor& xp, bool release) {
    const Graph& g = graphs[1];
    const int64_t num_steps = tape->num_steps;
    TORCH_CHECK(static_cast<int64_t>(tape->saved.size()) == num_steps,
                "unrolled captured step: this call kept nothing for a backward (or its backward "
                "already ran and freed it; use retain_graph=True to differentiate twice)");
    // Every input of the backward graph changes from step to step: it has no prologue.
    TORCH_CHECK(g.prologue.empty(), "unrolled captured step: the backward graph has a prologue");
    std::vector<IValue> slots(g.num_slots);
    std::vector<at::Tensor> d_xp(num_steps), d_params(num_params);
    for (int64_t s = num_steps - 1; s >= 0; --s) {
      const int64_t t = tape->reverse ? num_steps - 1 - s : s;
      const auto& saved = tape->saved[s];
      for (int64_t k = 0; k < num_saved; ++k) slots[k] = saved[k];
      slots[num_saved] = d_output.select(0, t);  // (B, O)
      for (int64_t k = 0; k < num_state; ++k) slots[num_saved + 1 + k] = d_state[k];
      g.run(slots, g.body);
      auto grad = [&](int64_t input) -> at::Tensor {
        const int64_t slot = g.outputs[input];
        return slot < 0 || slots[slot].isNone() ? at::Tensor() : slots[slot].toTensor();
      };
      for (int64_t p = 0; p < num_params; ++p) {
        at::Tensor d = grad(p);
        if (!d.defined()) continue;
        if (d_params[p].defined()) {
          d_params[p].add_(d);
        } else {
          d_params[p] = d.clone();  // owned: the graph may return a view of its inputs
        }
      }
      d_xp[t] = grad(num_params);
      if (!d_xp[t].defined()) d_xp[t] = at::zeros_like(xp.select(0, t));
      for (int64_t k = 0; k < num_state; ++k) {
        at::Tensor d = grad(num_params + 1 + k);
        d_state[k] = d.defined() ? d : at::zeros_like(d_state[k]);
      }
      if (release) tape->saved[s].clear();
    }
    if (release) tape->saved.clear();
    std::vector<at::Tensor> result{at::stack(d_xp)};  // (T, B, *)
    for (auto& d : d_state) result.push_back(d);
    for (auto& d : d_params) result.push_back(d);
    return result;
  }
};

}  // namespace
}  // namespace unrolled

TORCH_LIBRARY_FRAGMENT(unrolled, m) {
  using unrolled::CapturedStep;
  using unrolled::Tape;
  m.class_<Tape>("Tape").def(torch::init<>());
  m.class_<CapturedStep>("CapturedStep")
      .def(torch::init<int64_t, int64_t, int64_t, bool>())
      .def("graph", &CapturedStep::graph)
      .def("begin", &CapturedStep::begin)
      .def("slot", &CapturedStep::slot)
      .def("slots", &CapturedStep::slots)
      .def("constant_int", &CapturedStep::constant_int)
      .def("constant_float", &CapturedStep::constant_float)
      .def("constant_bool", &CapturedStep::constant_bool)
      .def("constant_none", &CapturedStep::constant_none)
      .def("constant_number", &CapturedStep::constant_number)
      .def("constant_ints", &CapturedStep::constant_ints)
      .def("constant_bools", &CapturedStep::constant_bools)
      .def("constant_dtype", &CapturedStep::constant_dtype)
      .def("constant_layout", &CapturedStep::constant_layout)
      .def("constant_device", &CapturedStep::constant_device)
      .def("constant_memory_format", &CapturedStep::constant_memory_format)
      .def("end", &CapturedStep::end)
      .def("returns", &CapturedStep::returns)
      .def("forward", &CapturedStep::forward)
      .def("backward", &CapturedStep::backward);
}
