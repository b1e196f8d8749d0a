// The fused CPU batch norm's kernels (bn_cpu.cpp), as bn_ops.cpp registers them as operators.
//
// Every kernel takes x (float32, float64, bfloat16 or float16; contiguous or channels_last, any
// other layout is copied to contiguous first) and per-channel tensors of x's op-math type
// (float32 for the 16-bit types), on the CPU; bn_ops.cpp checks both before calling. An undefined
// weight or bias means γ = 1 or β = 0. Outputs come in x's layout and dtype, per-channel ones in
// the op-math type.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <tuple>

namespace bnrun {

// Training mode: (y, stats); y = g(BN(x)) with the batch's statistics, g = ReLU when `relu`;
// stats the (5, C) rows mean, biased variance, ι = 1/√(σ²+ε), a = γι and k = β − μa.
std::tuple<at::Tensor, at::Tensor> train_forward(const at::Tensor& x, const at::Tensor& weight,
                                                 const at::Tensor& bias, double eps, bool relu);

// (dx, dγ, dβ) of the training step, from train_forward's x and stats. With `reuse_grad_y` (the caller
// holds the only reference to grad_y and to its memory), dx is written over grad_y where their layouts
// match: dx reads each value of dy before writing the same position.
std::tuple<at::Tensor, at::Tensor, at::Tensor> train_backward(const at::Tensor& grad_y, const at::Tensor& x,
                                                              const at::Tensor& stats, const at::Tensor& weight,
                                                              bool relu, bool reuse_grad_y = false);

// Moves the running statistics towards the batch's (stats of a batch of `count` values per
// channel): running += factor · (batch − running), the variance unbiased.
void update_running_stats(const at::Tensor& stats, const at::Tensor& running_mean, const at::Tensor& running_var,
                          int64_t count, double factor);

// Prediction mode: (y, coefficients); y = g(a·x + k) with the given statistics, coefficients the
// (3, C) rows ι, a and k.
std::tuple<at::Tensor, at::Tensor> eval_forward(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& var,
                                                const at::Tensor& weight, const at::Tensor& bias, double eps,
                                                bool relu);

// dx = a·g of prediction mode, g = dy masked by the ReLU.
at::Tensor eval_backward_input(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& coefficients,
                               bool relu);

// (dμ, dσ², dγ, dβ) of prediction mode: −a·Σg, −½γι³·Σg(x − μ), ι·Σg(x − μ), Σg.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> eval_backward_statistics(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& weight,
    const at::Tensor& coefficients, bool relu);

// Per-channel mean and Σ(x − μ)² of a batch, float64, from one read of x.
std::tuple<at::Tensor, at::Tensor> moments(const at::Tensor& x);

// float32 → bfloat16 through the kernels' output loop (tests).
at::Tensor to_bf16(const at::Tensor& x);

// The vector instruction set this build was compiled for.
const char* isa();

// The bytes a pass's tensors take from which it streams its output (the last-level cache's size), and a
// setter that returns the value it replaces (tests reach the streamed path with small tensors).
int64_t stream_bytes();
int64_t set_stream_bytes(int64_t bytes);

}  // namespace bnrun
