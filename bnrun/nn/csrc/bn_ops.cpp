// bnrun's fused CPU batch norm as PyTorch operators, torch.ops.bnrun.* (the loops: bn_cpu.cpp):
// their schemas (what each mutates), input checks and CPU kernels, and the eager binding's autograd
// nodes. The operators' fake implementations, autograd formulas and vmap rules are registered from
// Python (bnrun/nn/operators.py), where torch.func's transforms accept them.
//
// The training step is two operators: batch_norm_train (functional, differentiable: y and the
// batch's statistics) and update_running_stats (mutates the running statistics and the batch
// counter, not differentiable), so that torch.compile and torch.export see one opaque op each and
// functionalize the mutation. Their autograd formulas call the backward operators through the
// dispatcher: traced, they meet the fake implementations, never data.
//
// Each build registers its own namespace (BNRUN_OPS_NAMESPACE, "bnrun" for this machine's own
// build, "bnrun_<isa>" for the builds the tests load beside it).
#include "bn_cpu.h"

#include <ATen/OpMathType.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>
#include <torch/python.h>

#include <array>
#include <atomic>
#include <initializer_list>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#ifndef BNRUN_OPS_NAMESPACE
#define BNRUN_OPS_NAMESPACE bnrun
#endif
#ifndef BNRUN_KERNEL_VERSION
#define BNRUN_KERNEL_VERSION 0  // kernel_build.py passes KERNEL_VERSION; 0: built some other way
#endif
#define BNRUN_STRING_(x) #x
#define BNRUN_STRING(x) BNRUN_STRING_(x)
// Indirections, so that the namespace macro is expanded before TORCH_LIBRARY pastes it.
#define BNRUN_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)
#define BNRUN_LIBRARY_IMPL(ns, key, m) TORCH_LIBRARY_IMPL(ns, key, m)

namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptionalTensor = std::optional<Tensor>;

// ---------------------------------------------------------------------------------------------
// Input checks: what the kernels serve. bnrun/nn/operators.py's `unsupported` asks the same before
// calling, and takes the eager path instead; here a violation is an error.

bool supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

// A dtype as Python prints it ("torch.bfloat16"), so that the C++ and Python checks say the same.
std::string dtype_name(at::ScalarType t) { return "torch." + std::string(c10::getDtypeNames(t).first); }

// Why the kernels cannot serve `x` with these per-channel tensors, or "" when they can.
std::string why_unsupported(const Tensor& x, std::initializer_list<const OptionalTensor*> per_channel) {
  if (!x.device().is_cpu()) return "input not on the CPU";
  if (!supported_dtype(x.scalar_type())) return "input dtype " + dtype_name(x.scalar_type());
  if (x.dim() < 2 || x.numel() == 0) return "empty input";
  const auto wanted = at::toOpMathType(x.scalar_type());
  for (const auto* t : per_channel) {
    if (!t->has_value() || !(*t)->defined()) continue;
    if ((*t)->scalar_type() != wanted)
      return dtype_name((*t)->scalar_type()) + " parameters or buffers with " + dtype_name(x.scalar_type()) + " input";
    if (!(*t)->is_contiguous() || !(*t)->device().is_cpu() || (*t)->numel() != x.size(1))
      return "non-contiguous or non-CPU parameters or buffers, or not one value per channel";
  }
  return "";
}

void check_input(const Tensor& x, std::initializer_list<const OptionalTensor*> per_channel) {
  const auto why = why_unsupported(x, per_channel);
  TORCH_CHECK(why.empty(), "bnrun's fused batch norm: ", why);
}

Tensor or_undefined(const OptionalTensor& t) { return t.has_value() ? *t : Tensor(); }
OptionalTensor optional(const Tensor& t) { return t.defined() ? OptionalTensor(t) : std::nullopt; }

// ---------------------------------------------------------------------------------------------
// CPU kernels.

std::tuple<Tensor, Tensor> train_cpu(const Tensor& x, const OptionalTensor& weight, const OptionalTensor& bias,
                                     double eps, bool relu) {
  check_input(x, {&weight, &bias});
  return bnrun::train_forward(x, or_undefined(weight), or_undefined(bias), eps, relu);
}

// The backward operator's kernel; with `reuse_grad_y` (the eager node's), dx may take grad_y's memory.
std::tuple<Tensor, Tensor, Tensor> train_backward_into(const Tensor& grad_y, const Tensor& x, const Tensor& stats,
                                                       const OptionalTensor& weight, bool relu, bool reuse_grad_y) {
  check_input(x, {&weight});
  return bnrun::train_backward(grad_y, x, stats, or_undefined(weight), relu, reuse_grad_y);
}

std::tuple<Tensor, Tensor, Tensor> train_backward_cpu(const Tensor& grad_y, const Tensor& x, const Tensor& stats,
                                                      const OptionalTensor& weight, bool relu) {
  return train_backward_into(grad_y, x, stats, weight, relu, false);
}

// Whether the eager node writes dx over a dy it alone holds (set_reuse_grad: benchmarks compare both),
// and how many backward calls of this process did (grads_reused: tests and benchmarks see where it applies).
std::atomic<bool> reuse_grad{true};
std::atomic<int64_t> reused_grads{0};

bool set_reuse_grad(bool reuse) { return reuse_grad.exchange(reuse); }
int64_t grads_reused() { return reused_grads.load(); }

// Whether `t` and its memory are held by this reference alone: no other tensor, view, hook, retained
// .grad or caller of backward can see them, so a kernel may write its result over them.
bool sole_reference(const Tensor& t) {
  return reuse_grad && t.use_count() == 1 && t.storage().use_count() == 1 && !t.requires_grad();
}

void update_running_stats_cpu(const Tensor& stats, const Tensor& running_mean, const Tensor& running_var,
                              const OptionalTensor& counter, int64_t count, double factor) {
  TORCH_CHECK(stats.dim() == 2 && stats.size(0) == 5, "update_running_stats takes batch_norm_train's statistics");
  TORCH_CHECK(running_mean.scalar_type() == stats.scalar_type() && running_var.scalar_type() == stats.scalar_type() &&
                  running_mean.is_contiguous() && running_var.is_contiguous() &&
                  running_mean.numel() == stats.size(1) && running_var.numel() == stats.size(1),
              "bnrun's fused batch norm: the running statistics must be contiguous, of the statistics' dtype and size");
  TORCH_CHECK(count > 1, "bnrun's fused batch norm: the running variance needs more than one value per channel");
  bnrun::update_running_stats(stats, running_mean, running_var, count, factor);
  running_mean.unsafeGetTensorImpl()->bump_version();  // as an in-place tensor op would
  running_var.unsafeGetTensorImpl()->bump_version();
  if (counter.has_value()) {
    TORCH_CHECK(counter->scalar_type() == at::kLong && counter->numel() == 1, "the batch counter is a long scalar");
    ++*counter->mutable_data_ptr<int64_t>();
    counter->unsafeGetTensorImpl()->bump_version();
  }
}

std::tuple<Tensor, Tensor> eval_cpu(const Tensor& x, const Tensor& mean, const Tensor& var,
                                    const OptionalTensor& weight, const OptionalTensor& bias, double eps, bool relu) {
  const OptionalTensor m(mean), v(var);
  check_input(x, {&m, &v, &weight, &bias});
  return bnrun::eval_forward(x, mean, var, or_undefined(weight), or_undefined(bias), eps, relu);
}

Tensor eval_backward_cpu(const Tensor& grad_y, const Tensor& x, const Tensor& coefficients, bool relu) {
  check_input(x, {});
  return bnrun::eval_backward_input(grad_y, x, coefficients, relu);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> eval_backward_statistics_cpu(const Tensor& grad_y, const Tensor& x,
                                                                        const Tensor& mean,
                                                                        const OptionalTensor& weight,
                                                                        const Tensor& coefficients, bool relu) {
  const OptionalTensor m(mean);
  check_input(x, {&m, &weight});
  return bnrun::eval_backward_statistics(grad_y, x, mean, or_undefined(weight), coefficients, relu);
}

std::tuple<Tensor, Tensor> moments_cpu(const Tensor& x) {
  check_input(x, {});
  return bnrun::moments(x);
}

// ---------------------------------------------------------------------------------------------
// The eager binding's autograd nodes (plain tensors, no transform or tracer active).

const char* kNoDoubleBackward =
    "bnrun's fused batch norm does not support double backward (create_graph=True); use fused=False";

// What each node's backward needs of its forward: the tensors, and whether the ReLU was fused. An
// output gradient that never arrives stays undefined rather than a tensor of zeros.
void keep_for_backward(AutogradContext* ctx, const variable_list& tensors, bool relu) {
  ctx->save_for_backward(tensors);
  ctx->saved_data["relu"] = relu;
  ctx->set_materialize_grads(false);
}

// Which of the forward's tensor inputs were given: x and the statistics always, γ and β when
// present. An absent one has no edge in the graph, so needs_input_grad counts only those given.
void keep_presence(AutogradContext* ctx, const OptionalTensor& weight, const OptionalTensor& bias) {
  ctx->saved_data["weight"] = weight.has_value();
  ctx->saved_data["bias"] = bias.has_value();
}

// What every forward keeps: `tensors` and the non-differentiable `extra` output for the backward,
// relu, which of γ and β were given; returns the forward's outputs {y, extra}.
variable_list kept_outputs(AutogradContext* ctx, const Tensor& y, const Tensor& extra, variable_list tensors,
                           bool relu, const OptionalTensor& weight, const OptionalTensor& bias) {
  tensors.push_back(extra);
  keep_for_backward(ctx, tensors, relu);
  keep_presence(ctx, weight, bias);
  ctx->mark_non_differentiable({extra});
  return {y, extra};
}

// Which of the forward's `kInputs` tensor inputs (the last two γ and β) want a gradient, in order.
template <int kInputs>
std::array<bool, kInputs> wanted_grads(AutogradContext* ctx) {
  std::array<bool, kInputs> given;
  given.fill(true);
  given[kInputs - 2] = ctx->saved_data["weight"].toBool();
  given[kInputs - 1] = ctx->saved_data["bias"].toBool();
  std::array<bool, kInputs> wanted{};
  for (int position = 0, edge = 0; position < kInputs; ++position)
    if (given[position]) wanted[position] = ctx->needs_input_grad(edge++);
  return wanted;
}

// The forward's saved tensors, or none when no gradient flows in. The kernel's gradient is not
// itself differentiable: create_graph=True is refused rather than answered with terms missing.
variable_list saved_for_backward(AutogradContext* ctx, const variable_list& grads) {
  TORCH_CHECK(!at::GradMode::is_enabled(), kNoDoubleBackward);
  return grads[0].defined() ? ctx->get_saved_variables() : variable_list();
}

// Inputs: x, weight, bias (none: γ = 1, β = 0), eps, relu. Outputs: y, stats (not differentiable).
class TrainFunction : public torch::autograd::Function<TrainFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const OptionalTensor& weight,
                               const OptionalTensor& bias, double eps, bool relu) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [y, stats] = train_cpu(x, weight, bias, eps, relu);
    return kept_outputs(ctx, y, stats, {x, or_undefined(weight)}, relu, weight, bias);
  }

  // `grads` by reference: the node's own list, which the engine hands over. A dy that nothing else
  // holds (the output gradient of the layer that follows, as a rule) takes dx: one tensor less
  // allocated and in cache per step.
  static variable_list backward(AutogradContext* ctx, variable_list& grads) {
    variable_list result(5);
    auto saved = saved_for_backward(ctx, grads);
    if (saved.empty()) return result;
    const Tensor dy = std::move(grads[0]);
    auto [dx, dw, db] = train_backward_into(dy, saved[0], saved[2], optional(saved[1]), ctx->saved_data["relu"].toBool(),
                                            sole_reference(dy));
    if (dx.is_same(dy)) ++reused_grads;
    const Tensor gradients[] = {dx, dw, db};  // none for an absent γ or β
    const auto wanted = wanted_grads<3>(ctx);
    for (int i = 0; i < 3; ++i)
      if (wanted[i]) result[i] = gradients[i];
    return result;
  }
};

// Inputs: x, mean, var, weight, bias (none: γ = 1, β = 0), eps, relu. Outputs: y, the
// coefficients ι, a, k (not differentiable).
class EvalFunction : public torch::autograd::Function<EvalFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& mean, const Tensor& var,
                               const OptionalTensor& weight, const OptionalTensor& bias, double eps, bool relu) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [y, coefficients] = eval_cpu(x, mean, var, weight, bias, eps, relu);
    return kept_outputs(ctx, y, coefficients, {x, mean, or_undefined(weight)}, relu, weight, bias);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list result(7);
    auto saved = saved_for_backward(ctx, grads);
    if (saved.empty()) return result;
    const Tensor &x = saved[0], &mean = saved[1], &weight = saved[2], &coefficients = saved[3];
    const bool relu = ctx->saved_data["relu"].toBool();
    const auto wanted = wanted_grads<5>(ctx);
    if (wanted[0]) {
      result[0] = eval_backward_cpu(grads[0], x, coefficients, relu);
    }
    if (!(wanted[1] || wanted[2] || wanted[3] || wanted[4]))
      return result;
    auto [d_mean, d_var, d_weight, d_bias] =
        eval_backward_statistics_cpu(grads[0], x, mean, optional(weight), coefficients, relu);
    const Tensor grads_of_statistics[] = {d_mean, d_var, d_weight, d_bias};
    for (int i = 1; i <= 4; ++i)
      if (wanted[i]) result[i] = grads_of_statistics[i - 1];
    return result;
  }
};

// The eager binding: what the operators batch_norm_train + update_running_stats and batch_norm_eval
// compute, as one call each, with the same checks, kernels and autograd nodes: (y, "") or, for input
// the kernels do not serve, (None, why).
std::tuple<OptionalTensor, std::string> train_step(const Tensor& x, const OptionalTensor& weight,
                                                   const OptionalTensor& bias, const OptionalTensor& running_mean,
                                                   const OptionalTensor& running_var, const OptionalTensor& counter,
                                                   double factor, double eps, bool relu) {
  auto why = why_unsupported(x, {&weight, &bias, &running_mean, &running_var});
  if (why.empty() && running_mean.has_value() != running_var.has_value())
    why = "a running mean without a running variance, or the reverse";
  if (why.empty() && counter.has_value() && (counter->scalar_type() != at::kLong || counter->numel() != 1))
    why = "a batch counter that is not a long scalar";
  if (!why.empty()) return {std::nullopt, why};
  auto out = TrainFunction::apply(x, weight, bias, eps, relu);
  if (running_mean.has_value())
    update_running_stats_cpu(out[1], *running_mean, *running_var, counter, x.numel() / x.size(1), factor);
  return {out[0], ""};
}

std::tuple<OptionalTensor, std::string> eval_step(const Tensor& x, const Tensor& mean, const Tensor& var,
                                                  const OptionalTensor& weight, const OptionalTensor& bias, double eps,
                                                  bool relu) {
  const OptionalTensor m(mean), v(var);
  auto why = why_unsupported(x, {&m, &v, &weight, &bias});
  if (!why.empty()) return {std::nullopt, why};
  return {EvalFunction::apply(x, mean, var, weight, bias, eps, relu)[0], ""};
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Registration.

BNRUN_LIBRARY(BNRUN_OPS_NAMESPACE, m) {
  m.def("batch_norm_train(Tensor input, Tensor? weight, Tensor? bias, float eps, bool relu) -> (Tensor, Tensor)");
  m.def("batch_norm_train_backward(Tensor grad_output, Tensor input, Tensor stats, Tensor? weight, bool relu) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("update_running_stats(Tensor stats, Tensor(a!) running_mean, Tensor(b!) running_var, "
        "Tensor(c!)? num_batches_tracked, SymInt count, float factor) -> ()");
  m.def("batch_norm_eval(Tensor input, Tensor mean, Tensor var, Tensor? weight, Tensor? bias, float eps, bool relu) "
        "-> (Tensor, Tensor)");
  m.def("batch_norm_eval_backward(Tensor grad_output, Tensor input, Tensor coefficients, bool relu) -> Tensor");
  m.def("batch_norm_eval_backward_statistics(Tensor grad_output, Tensor input, Tensor mean, Tensor? weight, "
        "Tensor coefficients, bool relu) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("moments(Tensor input) -> (Tensor, Tensor)");
}

BNRUN_LIBRARY_IMPL(BNRUN_OPS_NAMESPACE, CPU, m) {
  m.impl("batch_norm_train", &train_cpu);
  m.impl("batch_norm_train_backward", &train_backward_cpu);
  m.impl("update_running_stats", &update_running_stats_cpu);
  m.impl("batch_norm_eval", &eval_cpu);
  m.impl("batch_norm_eval_backward", &eval_backward_cpu);
  m.impl("batch_norm_eval_backward_statistics", &eval_backward_statistics_cpu);
  m.impl("moments", &moments_cpu);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("isa", [] { return std::string(bnrun::isa()); }, "the vector instruction set this build was compiled for");
  m.attr("version") = BNRUN_KERNEL_VERSION;
  m.attr("namespace") = BNRUN_STRING(BNRUN_OPS_NAMESPACE);
  // The kernels run without the GIL, as torch's operators do (the trial's heartbeat thread keeps beating).
  m.def("train_step", &train_step, "eager: batch_norm_train then update_running_stats in one call: (y, why-not)",
        py::call_guard<py::gil_scoped_release>());
  m.def("eval_step", &eval_step, "eager: batch_norm_eval's output in one call: (y, why-not)",
        py::call_guard<py::gil_scoped_release>());
  m.def("set_reuse_grad", &set_reuse_grad,
        "whether the training node writes dx over a dy that it alone holds (default true); returns the previous value");
  m.def("grads_reused", &grads_reused, "how many training backward calls of this process wrote dx over dy");
  m.def("stream_bytes", &bnrun::stream_bytes, "bytes a pass's tensors take from which it streams its output");
  m.def("set_stream_bytes", &bnrun::set_stream_bytes, "sets stream_bytes; returns the value it replaces");
  m.def("to_bf16", &bnrun::to_bf16, "float32 to bfloat16 through the kernels' output loop (tests)");
}
