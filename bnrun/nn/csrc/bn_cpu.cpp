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
// Sums run in scalar_t within a row of S values (a block of rows when S = 1), in double beyond.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/python.h>

#include <algorithm>
#include <vector>

namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct Shape {
  int64_t n, c, s;
  int64_t m() const { return n * s; }
};

Shape shape_of(const Tensor& x) {
  const int64_t n = x.size(0), c = x.size(1);
  return {n, c, x.numel() / (n * c)};
}

// Channels per task so that each thread gets enough work to be worth waking.
int64_t grain(const Shape& shape) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, shape.m())); }

// For channels [c0, c1): out[c - c0] = Σ over n, s of term(i, c), i the flat index of (n, c, s).
// S == 1 walks rows of C contiguous channels, vectorized over c: blocks of rows are summed in
// scalar_t, each block's sum then in double. S > 1 sums each row of S contiguous values in
// scalar_t (vectorized), rows in double. (One term per call: a generic two-term version did not vectorize; see gradient_sums.)
template <typename scalar_t, typename Term>
void channel_sums(const Shape& shape, int64_t c0, int64_t c1, Term term, double* out) {
  const int64_t width = c1 - c0;
  std::fill(out, out + width, 0.0);
  if (shape.s == 1) {
    constexpr int64_t kRowsPerBlock = 64;
    std::vector<scalar_t> block(width);
    for (int64_t first = 0; first < shape.n; first += kRowsPerBlock) {
      std::fill(block.begin(), block.end(), scalar_t(0));
      const int64_t last = std::min(shape.n, first + kRowsPerBlock);
      for (int64_t row = first * shape.c; row < last * shape.c; row += shape.c) {
        scalar_t* b = block.data() - c0;
#pragma omp simd
        for (int64_t c = c0; c < c1; ++c) b[c] += term(row + c, c);
      }
      for (int64_t i = 0; i < width; ++i) out[i] += block[i];
    }
    return;
  }
  for (int64_t c = c0; c < c1; ++c) {
    for (int64_t n = 0; n < shape.n; ++n) {
      const int64_t base = (n * shape.c + c) * shape.s;
      scalar_t row = 0;
#pragma omp simd reduction(+ : row)
      for (int64_t s = 0; s < shape.s; ++s) row += term(base + s, c);
      out[c - c0] += row;
    }
  }
}

// Per-channel mean and sum of squared deviations Σ(x − μ)², for channels [c0, c1).
// S == 1: two passes over the (small, cache-resident) batch. S > 1: each row of S values is
// summed twice while it sits in L1, and rows are merged with Chan et al.'s pairwise update, so
// the batch is read from memory once and the result is as accurate as a two-pass computation.
template <typename scalar_t>
void channel_moments(const Shape& shape, int64_t c0, int64_t c1, const scalar_t* px, double* mean, double* squares) {
  if (shape.s == 1) {
    channel_sums<scalar_t>(shape, c0, c1, [&](int64_t i, int64_t) { return px[i]; }, mean);
    for (int64_t c = c0; c < c1; ++c) mean[c - c0] /= shape.m();
    channel_sums<scalar_t>(
        shape, c0, c1,
        [&](int64_t i, int64_t c) {
          const scalar_t d = px[i] - static_cast<scalar_t>(mean[c - c0]);
          return d * d;
        },
        squares);
    return;
  }
  for (int64_t c = c0; c < c1; ++c) {
    double count = 0, mu = 0, m2 = 0;
    for (int64_t n = 0; n < shape.n; ++n) {
      const scalar_t* row = px + (n * shape.c + c) * shape.s;
      scalar_t sum = 0, row_m2 = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t s = 0; s < shape.s; ++s) sum += row[s];
      const scalar_t row_mean = sum / shape.s;
#pragma omp simd reduction(+ : row_m2)
      for (int64_t s = 0; s < shape.s; ++s) row_m2 += (row[s] - row_mean) * (row[s] - row_mean);
      const double merged = count + shape.s, delta = row_mean - mu;
      mu += delta * shape.s / merged;
      m2 += row_m2 + delta * delta * count * shape.s / merged;
      count = merged;
    }
    mean[c - c0] = mu;
    squares[c - c0] = m2;
  }
}

// Per-channel Σdy and Σdy·(x − μ) for channels [c0, c1). S > 1: both in one read of dy and x,
// written out plainly so that the two-sum loop vectorizes; S == 1 (cache-resident): two passes.
template <typename scalar_t>
void gradient_sums(const Shape& shape, int64_t c0, int64_t c1, const scalar_t* pdy, const scalar_t* px,
                   const scalar_t* pmean, double* sum_dy, double* sum_dy_centered) {
  if (shape.s == 1) {
    channel_sums<scalar_t>(shape, c0, c1, [&](int64_t i, int64_t) { return pdy[i]; }, sum_dy);
    channel_sums<scalar_t>(
        shape, c0, c1, [&](int64_t i, int64_t c) { return pdy[i] * (px[i] - pmean[c]); }, sum_dy_centered);
    return;
  }
  for (int64_t c = c0; c < c1; ++c) {
    const scalar_t mu = pmean[c];
    double total_dy = 0, total_dy_centered = 0;
    for (int64_t n = 0; n < shape.n; ++n) {
      const scalar_t* dy = pdy + (n * shape.c + c) * shape.s;
      const scalar_t* x = px + (n * shape.c + c) * shape.s;
      scalar_t r0 = 0, r1 = 0;
#pragma omp simd reduction(+ : r0, r1)
      for (int64_t s = 0; s < shape.s; ++s) {
        r0 += dy[s];
        r1 += dy[s] * (x[s] - mu);
      }
      total_dy += r0;
      total_dy_centered += r1;
    }
    sum_dy[c - c0] = total_dy;
    sum_dy_centered[c - c0] = total_dy_centered;
  }
}

// dst[i] = a[c]·src[i] + k[c] (+ b[c]·extra[i] when extra is given) for channels [c0, c1),
// then max(dst[i], 0) when `relu` (only without extra; NaN stays NaN, as in torch.relu).
template <typename scalar_t>
void channel_affine(const Shape& shape, int64_t c0, int64_t c1, const scalar_t* src, const scalar_t* a,
                    const scalar_t* k, const scalar_t* extra, const scalar_t* b, scalar_t* dst, bool relu = false) {
  const auto clamp = [](scalar_t v) { return v < scalar_t(0) ? scalar_t(0) : v; };
  if (shape.s == 1) {  // rows of C contiguous channels: vectorize over c
    for (int64_t row = 0; row < shape.n * shape.c; row += shape.c) {
      if (extra == nullptr && relu) {
#pragma omp simd
        for (int64_t c = c0; c < c1; ++c) dst[row + c] = clamp(a[c] * src[row + c] + k[c]);
      } else if (extra == nullptr) {
#pragma omp simd
        for (int64_t c = c0; c < c1; ++c) dst[row + c] = a[c] * src[row + c] + k[c];
      } else {
#pragma omp simd
        for (int64_t c = c0; c < c1; ++c) dst[row + c] = a[c] * src[row + c] + b[c] * extra[row + c] + k[c];
      }
    }
    return;
  }
  for (int64_t n = 0; n < shape.n; ++n) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t base = (n * shape.c + c) * shape.s;
      const scalar_t ac = a[c], kc = k[c];
      if (extra == nullptr && relu) {
#pragma omp simd
        for (int64_t s = 0; s < shape.s; ++s) dst[base + s] = clamp(ac * src[base + s] + kc);
      } else if (extra == nullptr) {
#pragma omp simd
        for (int64_t s = 0; s < shape.s; ++s) dst[base + s] = ac * src[base + s] + kc;
      } else {
        const scalar_t bc = b[c];
#pragma omp simd
        for (int64_t s = 0; s < shape.s; ++s) dst[base + s] = ac * src[base + s] + bc * extra[base + s] + kc;
      }
    }
  }
}

// Returns (y, mean, biased var, 1/σ̂); y = max(BN(x), 0) when `relu`.
std::vector<Tensor> forward_kernel(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps, bool relu) {
  const Shape shape = shape_of(x);
  Tensor y = at::empty_like(x), mean = at::empty({shape.c}, x.options()), var = at::empty_like(mean),
         inv_std = at::empty_like(mean);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bnrun_forward", [&] {
    const scalar_t *px = x.data_ptr<scalar_t>(), *pweight = weight.data_ptr<scalar_t>(), *pbias = bias.data_ptr<scalar_t>();
    scalar_t *pmean = mean.data_ptr<scalar_t>(), *pvar = var.data_ptr<scalar_t>(), *pinv = inv_std.data_ptr<scalar_t>();
    std::vector<scalar_t> a(shape.c), k(shape.c);
    at::parallel_for(0, shape.c, grain(shape), [&](int64_t c0, int64_t c1) {
      std::vector<double> means(c1 - c0), squares(c1 - c0);
      channel_moments<scalar_t>(shape, c0, c1, px, means.data(), squares.data());
      for (int64_t c = c0; c < c1; ++c) {
        pmean[c] = static_cast<scalar_t>(means[c - c0]);
        pvar[c] = static_cast<scalar_t>(squares[c - c0] / shape.m());
        pinv[c] = static_cast<scalar_t>(1.0 / std::sqrt(static_cast<double>(pvar[c]) + eps));
        a[c] = pweight[c] * pinv[c];
        k[c] = pbias[c] - pmean[c] * a[c];
      }
      channel_affine<scalar_t>(shape, c0, c1, px, a.data(), k.data(), nullptr, nullptr, y.data_ptr<scalar_t>(), relu);
    });
  });
  return {y, mean, var, inv_std};
}

// Returns (dx, dγ, dβ).
std::vector<Tensor> backward_kernel(const Tensor& grad_y, const Tensor& x, const Tensor& mean, const Tensor& inv_std,
                                    const Tensor& weight) {
  const Shape shape = shape_of(x);
  Tensor grad_x = at::empty_like(x), grad_weight = at::empty_like(mean), grad_bias = at::empty_like(mean);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bnrun_backward", [&] {
    const scalar_t *px = x.data_ptr<scalar_t>(), *pdy = grad_y.data_ptr<scalar_t>(), *pweight = weight.data_ptr<scalar_t>();
    const scalar_t *pmean = mean.data_ptr<scalar_t>(), *pinv = inv_std.data_ptr<scalar_t>();
    scalar_t *pdw = grad_weight.data_ptr<scalar_t>(), *pdb = grad_bias.data_ptr<scalar_t>();
    std::vector<scalar_t> a(shape.c), b(shape.c), k(shape.c);
    at::parallel_for(0, shape.c, grain(shape), [&](int64_t c0, int64_t c1) {
      std::vector<double> sum_dy(c1 - c0), sum_dy_centered(c1 - c0);
      gradient_sums<scalar_t>(shape, c0, c1, pdy, px, pmean, sum_dy.data(), sum_dy_centered.data());
      for (int64_t c = c0; c < c1; ++c) {
        const double inv = pinv[c], m = static_cast<double>(shape.m());
        const double db = sum_dy[c - c0], dw = inv * sum_dy_centered[c - c0];
        pdb[c] = static_cast<scalar_t>(db);
        pdw[c] = static_cast<scalar_t>(dw);
        const double ac = pweight[c] * inv;  // γι
        const double bc = -ac * inv * dw / m;  // coefficient of x (x̂ = ι(x − μ))
        a[c] = static_cast<scalar_t>(ac);
        b[c] = static_cast<scalar_t>(bc);
        k[c] = static_cast<scalar_t>(-ac * db / m - bc * pmean[c]);
      }
      channel_affine<scalar_t>(shape, c0, c1, pdy, a.data(), k.data(), px, b.data(), grad_x.data_ptr<scalar_t>());
    });
  });
  return {grad_x, grad_weight, grad_bias};
}

class TrainFunction : public torch::autograd::Function<TrainFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, Tensor x, Tensor weight, Tensor bias, double eps, bool relu) {
    x = x.contiguous();
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
    Tensor grad_y = grads[0].contiguous();
    if (saved[4].defined()) grad_y = at::threshold_backward(grad_y, saved[4], 0);  // ReLU's own backward
    auto g = backward_kernel(grad_y, saved[0], saved[1], saved[2], saved[3]);
    return {g[0], g[1], g[2], Tensor(), Tensor()};
  }
};

// float32/float64 on CPU, every per-channel tensor of x's dtype and contiguous (the loops read them raw).
bool supported(const Tensor& x, std::initializer_list<const std::optional<Tensor>*> per_channel) {
  if (!x.device().is_cpu() || (x.scalar_type() != at::kFloat && x.scalar_type() != at::kDouble)) return false;
  if (x.dim() < 2 || x.numel() == 0) return false;  // an empty batch has no statistics (and m = 0 divides)
  for (const auto* t : per_channel) {
    if (t->has_value() && ((*t)->scalar_type() != x.scalar_type() || !(*t)->is_contiguous() || !(*t)->device().is_cpu())) {
      return false;
    }
  }
  return true;
}

// The training step in full: normalize with batch statistics (then ReLU when `relu`), fold them
// into the running ones. Returns an undefined tensor (None in Python) for input it does not
// handle; the caller goes eager.
Tensor train(const Tensor& x, const std::optional<Tensor>& weight, const std::optional<Tensor>& bias,
             const std::optional<Tensor>& running_mean, const std::optional<Tensor>& running_var, double factor,
             double eps, bool relu) {
  if (!supported(x, {&weight, &bias, &running_mean, &running_var})) return Tensor();
  // Without affine parameters γ = 1 and β = 0; their gradients then go nowhere (nothing requires them).
  const int64_t channels = x.size(1);
  auto out = TrainFunction::apply(x, weight.has_value() ? *weight : at::ones({channels}, x.options()),
                                  bias.has_value() ? *bias : at::zeros({channels}, x.options()), eps, relu);
  if (running_mean.has_value()) {
    // One loop over C instead of four tensor ops (supported() checked the buffers' dtype and layout).
    const double m = static_cast<double>(shape_of(x).m());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "bnrun_running_stats", [&] {
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
  return out[0];
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("train", &train, "bnrun fused training-mode batch norm, optionally followed by ReLU (CPU)");
}
