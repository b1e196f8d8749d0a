// bnrun's fused CPU batch norm (training mode): the math of bnrun/nn/functional.py written as
// loops, so that the statistics, the normalization and the affine step each cost one pass over
// memory and Python is entered once per layer, not once per tensor op.
//
// The input is viewed as (N, C, S), S = 1 for (N, C), L for (N, C, L) and H·W for (N, C, H, W);
// every statistic is per channel over m = N·S values. Per channel:
//   forward   μ = Σx/m, σ² = Σ(x−μ)²/m (biased; see channel_moments), ι = 1/√(σ²+ε),
//             y = a·x + k with a = γι, k = β − μa; running stats move towards μ and σ²·m/(m−1).
//   backward  dβ = Σdy, dγ = ι·Σdy·(x−μ), and the closed form of functional.normalize_backward,
//             dx = γι·(dy − (dβ + x̂·dγ)/m), expanded to dx = a·dy + b·x + k per channel.
// With `relu` the layer is g(BN(x)) for g = ReLU (BN before the activation): max(y, 0) is taken in
// the output pass, and the backward masks dy with the saved output as torch's ReLU does.
// Sums run in acc_t within a row of S values (a block of 64 rows when S = 1), in double beyond.
//
// Precision: x (and y, dy, dx) may be float32, float64, bfloat16 or float16; every per-channel
// tensor (γ, β, running and saved statistics, dγ, dβ) and every arithmetic step is acc_t, the
// op-math type (float32 for the 16-bit types), as in torch's own mixed-precision kernel.
// Layout: contiguous input is (N, C, S); channels_last (N, C, H, W) is read in place as N·H·W rows
// of C channels, i.e. (N·H·W, C, 1), and y and dx are allocated in x's layout.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/python.h>

#include <algorithm>
#include <string>
#include <tuple>
#include <vector>

namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct Shape {
  int64_t n, c, s;
  int64_t m() const { return n * s; }
};

bool rows_of_channels(const Tensor& x) { return x.dim() == 4 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast); }

Shape shape_of(const Tensor& x) {
  const int64_t n = x.size(0), c = x.size(1);
  if (rows_of_channels(x)) return {x.numel() / c, c, 1};
  return {n, c, x.numel() / (n * c)};
}

// x itself when it is contiguous or channels_last, otherwise a contiguous copy.
Tensor dense(const Tensor& x) {
  return x.is_contiguous() || (x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast)) ? x : x.contiguous();
}

// t laid out as `like` (one of dense()'s two layouts), so that flat indices match.
Tensor laid_out_as(const Tensor& t, const Tensor& like) {
  return rows_of_channels(like) ? t.contiguous(at::MemoryFormat::ChannelsLast) : t.contiguous();
}

// Channels per task so that each thread gets enough work to be worth waking.
int64_t grain(const Shape& shape) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, shape.m())); }

// Per-channel mean and sum of squared deviations Σ(x − μ)², for channels [c0, c1), reading x from
// memory once: each block of values (64 rows of C channels when S == 1, a row of S values when
// S > 1) is summed twice while it sits in L1 (its mean, then its squared deviations), and blocks
// are merged in double with Chan et al.'s pairwise update, as accurate as a two-pass computation.
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
void channel_moments(const Shape& shape, int64_t c0, int64_t c1, const scalar_t* px, double* mean, double* squares) {
  const int64_t width = c1 - c0;
  if (shape.s == 1) {
    constexpr int64_t kRowsPerBlock = 64;
    std::vector<acc_t> sum(width), m2(width);
    std::fill(mean, mean + width, 0.0);
    std::fill(squares, squares + width, 0.0);
    double count = 0;
    for (int64_t first = 0; first < shape.n; first += kRowsPerBlock) {
      const int64_t last = std::min(shape.n, first + kRowsPerBlock), rows = last - first;
      std::fill(sum.begin(), sum.end(), acc_t(0));
      std::fill(m2.begin(), m2.end(), acc_t(0));
      acc_t *ps = sum.data() - c0, *pm = m2.data() - c0;
      for (int64_t row = first * shape.c; row < last * shape.c; row += shape.c) {
#pragma omp simd
        for (int64_t c = c0; c < c1; ++c) ps[c] += static_cast<acc_t>(px[row + c]);
      }
      for (int64_t c = c0; c < c1; ++c) ps[c] /= rows;  // now the block's mean
      for (int64_t row = first * shape.c; row < last * shape.c; row += shape.c) {
#pragma omp simd
        for (int64_t c = c0; c < c1; ++c) {
          const acc_t d = static_cast<acc_t>(px[row + c]) - ps[c];
          pm[c] += d * d;
        }
      }
      const double merged = count + rows;
      for (int64_t i = 0; i < width; ++i) {
        const double delta = sum[i] - mean[i];
        mean[i] += delta * rows / merged;
        squares[i] += m2[i] + delta * delta * count * rows / merged;
      }
      count = merged;
    }
    return;
  }
  for (int64_t c = c0; c < c1; ++c) {
    double count = 0, mu = 0, m2 = 0;
    for (int64_t n = 0; n < shape.n; ++n) {
      const scalar_t* row = px + (n * shape.c + c) * shape.s;
      acc_t sum = 0, row_m2 = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t s = 0; s < shape.s; ++s) sum += static_cast<acc_t>(row[s]);
      const acc_t row_mean = sum / shape.s;
#pragma omp simd reduction(+ : row_m2)
      for (int64_t s = 0; s < shape.s; ++s) {
        const acc_t d = static_cast<acc_t>(row[s]) - row_mean;
        row_m2 += d * d;
      }
      const double merged = count + shape.s, delta = row_mean - mu;
      mu += delta * shape.s / merged;
      m2 += row_m2 + delta * delta * count * shape.s / merged;
      count = merged;
    }
    mean[c - c0] = mu;
    squares[c - c0] = m2;
  }
}

// Per-channel Σdy and Σdy·(x − μ) for channels [c0, c1), both in one read of dy and x: blocks of
// 64 rows (S == 1) or single rows (S > 1) are summed in acc_t, written out plainly so that the
// two-sum loop vectorizes, and blocks are added up in double.
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
void gradient_sums(const Shape& shape, int64_t c0, int64_t c1, const scalar_t* pdy, const scalar_t* px,
                   const acc_t* pmean, double* sum_dy, double* sum_dy_centered) {
  const int64_t width = c1 - c0;
  if (shape.s == 1) {
    constexpr int64_t kRowsPerBlock = 64;
    std::vector<acc_t> r0(width), r1(width);
    std::fill(sum_dy, sum_dy + width, 0.0);
    std::fill(sum_dy_centered, sum_dy_centered + width, 0.0);
    for (int64_t first = 0; first < shape.n; first += kRowsPerBlock) {
      const int64_t last = std::min(shape.n, first + kRowsPerBlock);
      std::fill(r0.begin(), r0.end(), acc_t(0));
      std::fill(r1.begin(), r1.end(), acc_t(0));
      acc_t *p0 = r0.data() - c0, *p1 = r1.data() - c0;
      for (int64_t row = first * shape.c; row < last * shape.c; row += shape.c) {
#pragma omp simd
        for (int64_t c = c0; c < c1; ++c) {
          const acc_t g = static_cast<acc_t>(pdy[row + c]);
          p0[c] += g;
          p1[c] += g * (static_cast<acc_t>(px[row + c]) - pmean[c]);
        }
      }
      for (int64_t i = 0; i < width; ++i) {
        sum_dy[i] += r0[i];
        sum_dy_centered[i] += r1[i];
      }
    }
    return;
  }
  for (int64_t c = c0; c < c1; ++c) {
    const acc_t mu = pmean[c];
    double total_dy = 0, total_dy_centered = 0;
    for (int64_t n = 0; n < shape.n; ++n) {
      const scalar_t* dy = pdy + (n * shape.c + c) * shape.s;
      const scalar_t* x = px + (n * shape.c + c) * shape.s;
      acc_t r0 = 0, r1 = 0;
#pragma omp simd reduction(+ : r0, r1)
      for (int64_t s = 0; s < shape.s; ++s) {
        const acc_t g = static_cast<acc_t>(dy[s]);
        r0 += g;
        r1 += g * (static_cast<acc_t>(x[s]) - mu);
      }
      total_dy += r0;
      total_dy_centered += r1;
    }
    sum_dy[c - c0] = total_dy;
    sum_dy_centered[c - c0] = total_dy_centered;
  }
}

// dst[i] = a[c]·src[i] + k[c] (+ b[c]·extra[i] when extra is given) for channels [c0, c1),
// computed in acc_t, then max(dst[i], 0) when `relu` (only without extra; NaN stays NaN, as in torch.relu).
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
void channel_affine(const Shape& shape, int64_t c0, int64_t c1, const scalar_t* src, const acc_t* a,
                    const acc_t* k, const scalar_t* extra, const acc_t* b, scalar_t* dst, bool relu = false) {
  const auto clamp = [](acc_t v) { return v < acc_t(0) ? acc_t(0) : v; };
  const auto in = [](scalar_t v) { return static_cast<acc_t>(v); };
  if (shape.s == 1) {  // rows of C contiguous channels: vectorize over c
    for (int64_t row = 0; row < shape.n * shape.c; row += shape.c) {
      if (extra == nullptr && relu) {
#pragma omp simd
        for (int64_t c = c0; c < c1; ++c) dst[row + c] = static_cast<scalar_t>(clamp(a[c] * in(src[row + c]) + k[c]));
      } else if (extra == nullptr) {
#pragma omp simd
        for (int64_t c = c0; c < c1; ++c) dst[row + c] = static_cast<scalar_t>(a[c] * in(src[row + c]) + k[c]);
      } else {
#pragma omp simd
        for (int64_t c = c0; c < c1; ++c)
          dst[row + c] = static_cast<scalar_t>(a[c] * in(src[row + c]) + b[c] * in(extra[row + c]) + k[c]);
      }
    }
    return;
  }
  for (int64_t n = 0; n < shape.n; ++n) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t base = (n * shape.c + c) * shape.s;
      const acc_t ac = a[c], kc = k[c];
      if (extra == nullptr && relu) {
#pragma omp simd
        for (int64_t s = 0; s < shape.s; ++s) dst[base + s] = static_cast<scalar_t>(clamp(ac * in(src[base + s]) + kc));
      } else if (extra == nullptr) {
#pragma omp simd
        for (int64_t s = 0; s < shape.s; ++s) dst[base + s] = static_cast<scalar_t>(ac * in(src[base + s]) + kc);
      } else {
        const acc_t bc = b[c];
#pragma omp simd
        for (int64_t s = 0; s < shape.s; ++s)
          dst[base + s] = static_cast<scalar_t>(ac * in(src[base + s]) + bc * in(extra[base + s]) + kc);
      }
    }
  }
}

#define BNRUN_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, TYPE, NAME, __VA_ARGS__)

at::TensorOptions per_channel_options(const Tensor& x) { return x.options().dtype(at::toOpMathType(x.scalar_type())); }

// Returns (y, mean, biased var, 1/σ̂), the statistics in acc_t; y = max(BN(x), 0) when `relu`.
std::vector<Tensor> forward_kernel(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps, bool relu) {
  const Shape shape = shape_of(x);
  Tensor y = at::empty_like(x), mean = at::empty({shape.c}, per_channel_options(x)), var = at::empty_like(mean),
         inv_std = at::empty_like(mean);
  BNRUN_DISPATCH(x.scalar_type(), "bnrun_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* px = x.data_ptr<scalar_t>();
    const acc_t *pweight = weight.data_ptr<acc_t>(), *pbias = bias.data_ptr<acc_t>();
    acc_t *pmean = mean.data_ptr<acc_t>(), *pvar = var.data_ptr<acc_t>(), *pinv = inv_std.data_ptr<acc_t>();
    std::vector<acc_t> a(shape.c), k(shape.c);
    at::parallel_for(0, shape.c, grain(shape), [&](int64_t c0, int64_t c1) {
      std::vector<double> means(c1 - c0), squares(c1 - c0);
      channel_moments<scalar_t>(shape, c0, c1, px, means.data(), squares.data());
      for (int64_t c = c0; c < c1; ++c) {
        pmean[c] = static_cast<acc_t>(means[c - c0]);
        pvar[c] = static_cast<acc_t>(squares[c - c0] / shape.m());
        pinv[c] = static_cast<acc_t>(1.0 / std::sqrt(static_cast<double>(pvar[c]) + eps));
        a[c] = pweight[c] * pinv[c];
        k[c] = pbias[c] - pmean[c] * a[c];
      }
      channel_affine<scalar_t, acc_t>(shape, c0, c1, px, a.data(), k.data(), nullptr, nullptr, y.data_ptr<scalar_t>(), relu);
    });
  });
  return {y, mean, var, inv_std};
}

// Returns (dx, dγ, dβ); dy must be laid out as x.
std::vector<Tensor> backward_kernel(const Tensor& grad_y, const Tensor& x, const Tensor& mean, const Tensor& inv_std,
                                    const Tensor& weight) {
  const Shape shape = shape_of(x);
  Tensor grad_x = at::empty_like(x), grad_weight = at::empty_like(mean), grad_bias = at::empty_like(mean);
  BNRUN_DISPATCH(x.scalar_type(), "bnrun_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t *px = x.data_ptr<scalar_t>(), *pdy = grad_y.data_ptr<scalar_t>();
    const acc_t *pweight = weight.data_ptr<acc_t>(), *pmean = mean.data_ptr<acc_t>(), *pinv = inv_std.data_ptr<acc_t>();
    acc_t *pdw = grad_weight.data_ptr<acc_t>(), *pdb = grad_bias.data_ptr<acc_t>();
    std::vector<acc_t> a(shape.c), b(shape.c), k(shape.c);
    at::parallel_for(0, shape.c, grain(shape), [&](int64_t c0, int64_t c1) {
      std::vector<double> sum_dy(c1 - c0), sum_dy_centered(c1 - c0);
      gradient_sums<scalar_t>(shape, c0, c1, pdy, px, pmean, sum_dy.data(), sum_dy_centered.data());
      for (int64_t c = c0; c < c1; ++c) {
        const double inv = pinv[c], m = static_cast<double>(shape.m());
        const double db = sum_dy[c - c0], dw = inv * sum_dy_centered[c - c0];
        pdb[c] = static_cast<acc_t>(db);
        pdw[c] = static_cast<acc_t>(dw);
        const double ac = pweight[c] * inv;  // γι
        const double bc = -ac * inv * dw / m;  // coefficient of x (x̂ = ι(x − μ))
        a[c] = static_cast<acc_t>(ac);
        b[c] = static_cast<acc_t>(bc);
        k[c] = static_cast<acc_t>(-ac * db / m - bc * pmean[c]);
      }
      channel_affine<scalar_t, acc_t>(shape, c0, c1, pdy, a.data(), k.data(), px, b.data(), grad_x.data_ptr<scalar_t>());
    });
  });
  return {grad_x, grad_weight, grad_bias};
}

class TrainFunction : public torch::autograd::Function<TrainFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, Tensor x, Tensor weight, Tensor bias, double eps, bool relu) {
    x = dense(x);
    weight = weight.contiguous();
    bias = bias.contiguous();
    auto out = forward_kernel(x, weight, bias, eps, relu);  // y, mean, var, inv_std
    ctx->save_for_backward({x, out[1], out[3], weight, relu ? out[0] : Tensor()});
    ctx->mark_non_differentiable({out[1], out[2]});
    ctx->set_materialize_grads(false);
    return {out[0], out[1], out[2]};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    // The kernel's gradient is not itself differentiable: refuse create_graph=True rather than
    // return a second derivative with terms missing.
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "bnrun's fused batch norm does not support double backward (create_graph=True); use fused=False");
    if (!grads[0].defined()) return {Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
    auto saved = ctx->get_saved_variables();
    Tensor grad_y = grads[0];
    if (saved[4].defined()) grad_y = at::threshold_backward(grad_y, saved[4], 0);  // ReLU's own backward
    auto g = backward_kernel(laid_out_as(grad_y, saved[0]), saved[0], saved[1], saved[2], saved[3]);
    return {g[0], g[1], g[2], Tensor(), Tensor()};
  }
};

bool supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

// Why the kernel cannot serve this call, or "" when it can: x float32/float64/bfloat16/float16
// on CPU, every per-channel tensor on CPU, contiguous, of x's op-math type (float32 for the 16-bit
// types: statistics and parameters stay float32, as in torch).
std::string unsupported(const Tensor& x, std::initializer_list<const std::optional<Tensor>*> per_channel) {
  if (!x.device().is_cpu()) return "input not on the CPU";
  if (!supported_dtype(x.scalar_type())) return std::string("input dtype ") + c10::toString(x.scalar_type());
  if (x.dim() < 2 || x.numel() == 0) return "empty input";  // no statistics (and m = 0 divides)
  const auto wanted = at::toOpMathType(x.scalar_type());
  for (const auto* t : per_channel) {
    if (!t->has_value()) continue;
    if ((*t)->scalar_type() != wanted)
      return std::string(c10::toString((*t)->scalar_type())) + " parameters or buffers with " + c10::toString(x.scalar_type()) + " input";
    if (!(*t)->is_contiguous() || !(*t)->device().is_cpu()) return "non-contiguous or non-CPU parameters or buffers";
  }
  return "";
}

// The training step in full: normalize with batch statistics (then ReLU when `relu`), fold them
// into the running ones. Returns (y, "") or, for input it does not handle, (undefined, why): the
// caller goes eager and says so.
std::tuple<Tensor, std::string> train(const Tensor& x, const std::optional<Tensor>& weight, const std::optional<Tensor>& bias,
                                      const std::optional<Tensor>& running_mean, const std::optional<Tensor>& running_var,
                                      double factor, double eps, bool relu) {
  const std::string why = unsupported(x, {&weight, &bias, &running_mean, &running_var});
  if (!why.empty()) return {Tensor(), why};
  // Without affine parameters γ = 1 and β = 0; their gradients then go nowhere (nothing requires them).
  const int64_t channels = x.size(1);
  const auto options = per_channel_options(x);
  auto out = TrainFunction::apply(x, weight.has_value() ? *weight : at::ones({channels}, options),
                                  bias.has_value() ? *bias : at::zeros({channels}, options), eps, relu);
  if (running_mean.has_value()) {
    // One loop over C instead of four tensor ops (unsupported() checked the buffers' dtype and layout).
    const double m = static_cast<double>(x.numel() / channels);
    AT_DISPATCH_FLOATING_TYPES(out[1].scalar_type(), "bnrun_running_stats", [&] {
      const scalar_t *mean = out[1].data_ptr<scalar_t>(), *var = out[2].data_ptr<scalar_t>();
      scalar_t *rm = running_mean->data_ptr<scalar_t>(), *rv = running_var->data_ptr<scalar_t>();
      for (int64_t c = 0; c < channels; ++c) {
        rm[c] = static_cast<scalar_t>(rm[c] + factor * (mean[c] - rm[c]));
        rv[c] = static_cast<scalar_t>(rv[c] + factor * (var[c] * m / (m - 1) - rv[c]));
      }
    });
    running_mean->unsafeGetTensorImpl()->bump_version();  // as an in-place tensor op would
    running_var->unsafeGetTensorImpl()->bump_version();
  }
  return {out[0], ""};
}

// Per-channel count, mean and Σ(x − μ)² of a batch, in double, from one read of x (the moments
// population statistics merge across batches). Undefined tensors for input the kernel does not handle.
std::tuple<int64_t, Tensor, Tensor> moments(const Tensor& x) {
  if (!unsupported(x, {}).empty()) return {0, Tensor(), Tensor()};
  const Tensor input = dense(x);
  const Shape shape = shape_of(input);
  Tensor mean = at::empty({shape.c}, x.options().dtype(at::kDouble)), squares = at::empty_like(mean);
  BNRUN_DISPATCH(x.scalar_type(), "bnrun_moments", [&] {
    at::parallel_for(0, shape.c, grain(shape), [&](int64_t c0, int64_t c1) {
      channel_moments<scalar_t>(shape, c0, c1, input.data_ptr<scalar_t>(), mean.data_ptr<double>() + c0,
                                squares.data_ptr<double>() + c0);
    });
  });
  return {shape.m(), mean, squares};
}

// Prediction mode: y = scale·x + shift per channel (then max(y, 0) when `relu`), one pass, in x's
// layout and dtype; scale and shift of x's op-math type. Undefined for input it does not handle.
Tensor affine(const Tensor& x, const Tensor& scale, const Tensor& shift, bool relu) {
  const std::optional<Tensor> a(scale), k(shift);
  if (!unsupported(x, {&a, &k}).empty()) return Tensor();
  const Tensor input = dense(x);
  const Shape shape = shape_of(input);
  Tensor y = at::empty_like(input);
  BNRUN_DISPATCH(x.scalar_type(), "bnrun_affine", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::parallel_for(0, shape.c, grain(shape), [&](int64_t c0, int64_t c1) {
      channel_affine<scalar_t, acc_t>(shape, c0, c1, input.data_ptr<scalar_t>(), scale.data_ptr<acc_t>(),
                                      shift.data_ptr<acc_t>(), nullptr, nullptr, y.data_ptr<scalar_t>(), relu);
    });
  });
  return y;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("train", &train, "bnrun fused training-mode batch norm, optionally followed by ReLU (CPU); returns (y, why-not)");
  m.def("moments", &moments, "per-channel (count, mean, sum of squared deviations) in double, one read of x (CPU)");
  m.def("affine", &affine, "prediction-mode batch norm as one per-channel affine pass, optionally followed by ReLU (CPU)");
}
