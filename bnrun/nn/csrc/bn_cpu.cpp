// bnrun's fused CPU batch norm: the math of bnrun/nn/functional.py written as loops, so that the
// statistics, the normalization and the affine step cost the fewest passes over memory and Python
// is entered once per layer, not once per tensor op. This file holds the loops and the kernels
// built from them (bn_cpu.h); bn_ops.cpp registers them as operators, with their autograd.
//
// The input is viewed as (N, C, S), S = 1 for (N, C), L for (N, C, L) and H·W for (N, C, H, W);
// every statistic is per channel over m = N·S values. Per channel:
//   forward   μ = Σx/m, σ² = Σ(x−μ)²/m (biased; see plane_moments), ι = 1/√(σ²+ε),
//             y = a·x + k with a = γι, k = β − μa; running stats move towards μ and σ²·m/(m−1).
//   backward  dβ = Σdy, dγ = ι·Σdy·(x−μ), and the closed form of functional.normalize_backward,
//             dx = γι·(dy − (dβ + x̂·dγ)/m), expanded to dx = a·dy + b·x + k per channel.
//   prediction mode: y = a·x + k with the running statistics; dx = a·dy, dβ = Σdy,
//             dγ = ι·Σdy·(x−μ), dμ = −a·Σdy, dσ² = −½γι³·Σdy·(x−μ).
// With `relu` the layer is g(BN(x)) for g = ReLU (BN before the activation): max(y, 0) is taken in
// the output pass, and the backward masks dy where the pre-activation a·x + k is ≤ 0, recomputed
// from x in the same arithmetic as the forward (what torch's ReLU backward does with the saved
// output, without reading it).
//
// Passes: forward reads x once for the moments and once more (read + write) for the output;
// backward reads x and dy once for the two sums and once more for dx. Contiguous (N, C, S) input
// is processed one channel at a time, so the second pass finds the channel's N·S values in L2.
// Outputs (y, dx) of kStreamBytes and more are written with streaming stores, which skip reading
// the lines they overwrite and leave the cache to the input the next pass reads again.
// Sums run in acc_t per position of a row (or stripe) within a block, in double beyond: the
// moments of a block of about kBlockValues values are taken twice while it sits in cache (its
// mean, then its squared deviations) and blocks merged with Chan et al.'s update; the gradient
// sums, one pass, add about kValuesPerLane values per position before a merge.
//
// Precision: x (and y, dy, dx) may be float32, float64, bfloat16 or float16; every per-channel
// tensor (γ, β, running and saved statistics, dγ, dβ) and every arithmetic step is acc_t, the
// op-math type (float32 for the 16-bit types), as in torch's own mixed-precision kernel. bfloat16
// is read as its bits shifted into a float32 and written rounded to nearest even: by
// vcvtne2ps2bf16 in the avx512-bf16 build (subnormals flushed to zero), elsewhere by integer
// arithmetic in loops the compiler vectorizes.
// Layout: contiguous input is (N, C, S); channels_last (N, C, H, W) is read in place as N·H·W rows
// of C channels, i.e. (N·H·W, C, 1), and y and dx are allocated in x's layout. Rows of channels are
// split among threads in fixed chunks whose partial sums are merged in order: the result does
// not depend on the number of threads.
//
// ISA: kernel_build.py compiles this file per machine with the vector flags of its CPU (AVX-512, AVX2 or
// none); `isa()` reports which code the build holds.
#include "bn_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define BNRUN_AVX512_BF16 1
#endif

namespace {

using at::Tensor;

constexpr const char* kIsa =
#if defined(BNRUN_AVX512_BF16)
    "avx512-bf16";
#elif defined(__AVX512F__)
    "avx512";
#elif defined(__AVX2__)
    "avx2";
#else
    "scalar";
#endif

// ---------------------------------------------------------------------------------------------
// Element access: bfloat16 travels as its raw bits (uint16_t), the other types as themselves.

template <typename scalar_t>
struct Raw {
  using type = scalar_t;
};
template <>
struct Raw<c10::BFloat16> {
  using type = uint16_t;
};
template <typename scalar_t>
using raw_t = typename Raw<scalar_t>::type;

inline float widen(uint16_t bits) {
  const uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline float widen(float v) { return v; }
inline double widen(double v) { return v; }
inline float widen(c10::Half v) { return static_cast<float>(v); }

// float32 → bfloat16 bits, rounded to nearest even; NaN stays a (quiet) NaN.
inline uint16_t bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return f != f ? static_cast<uint16_t>(0x7FC0) : static_cast<uint16_t>(rounded);
}


#if defined(BNRUN_AVX512_BF16)
// 32 floats → 32 bfloat16 in one vcvtne2ps2bf16: round to nearest even, as bf16_bits, except that
// the instruction flushes subnormal inputs and outputs to zero.
inline void store_bf16x32(uint16_t* dst, const float* src) {
  const __m512bh packed = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + 16), _mm512_loadu_ps(src));
  _mm512_storeu_si512(dst, reinterpret_cast<const __m512i&>(packed));
}

// bfloat16 output through the conversion instruction: value() into a tile of floats in L1 (the
// loop the compiler vectorizes), then 32 at a time converted and stored; the last len % 32 by
// integer rounding.
template <typename F>
inline void fill_bf16(uint16_t* dst, int64_t len, const F& value) {
  constexpr int64_t kTile = 256;
  alignas(64) float tile[kTile];
  int64_t first = 0;
  while (len - first >= 32) {
    const int64_t count = std::min(kTile, (len - first) / 32 * 32);
#pragma omp simd
    for (int64_t i = 0; i < count; ++i) tile[i] = value(first + i);
    for (int64_t i = 0; i < count; i += 32) store_bf16x32(dst + first + i, tile + i);
    first += count;
  }
  for (int64_t i = first; i < len; ++i) dst[i] = bf16_bits(value(i));
}
#endif

// dst[i] = value(i) for i in [0, len), value(i) computed in acc_t. bfloat16 is rounded by
// vcvtne2ps2bf16 where the build has it (fill_bf16), elsewhere in the same vectorized loop by
// integer arithmetic, which keeps subnormals as torch's conversion does.
template <typename T, typename F>
inline void fill(T* dst, int64_t len, const F& value) {
  if constexpr (std::is_same_v<T, uint16_t>) {
#if defined(BNRUN_AVX512_BF16)
    fill_bf16(dst, len, value);
#else
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) dst[i] = bf16_bits(value(i));
#endif
  } else {
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) dst[i] = static_cast<T>(value(i));
  }
}

// Non-temporal ("streaming") stores write whole cache lines to memory without first reading them
// into the cache, and leave the cache to the input that the next pass reads again. One vector's
// worth per call, at an address aligned to its width.
#if defined(__x86_64__)
constexpr bool kCanStream = true;
#if defined(__AVX512F__)
constexpr int64_t kStreamWidth = 64;
inline void stream_vector(char* dst, const char* src) {
  _mm512_stream_si512(reinterpret_cast<__m512i*>(dst), _mm512_loadu_si512(src));
}
#elif defined(__AVX2__)
constexpr int64_t kStreamWidth = 32;
inline void stream_vector(char* dst, const char* src) {
  _mm256_stream_si256(reinterpret_cast<__m256i*>(dst), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)));
}
#else
constexpr int64_t kStreamWidth = 16;
inline void stream_vector(char* dst, const char* src) {
  _mm_stream_si128(reinterpret_cast<__m128i*>(dst), _mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
}
#endif
// Streamed stores are weakly ordered: each task fences them before other threads may read.
inline void fence_streams() { _mm_sfence(); }
#else
constexpr bool kCanStream = false;
constexpr int64_t kStreamWidth = 16;
inline void stream_vector(char* dst, const char* src) { std::memcpy(dst, src, kStreamWidth); }
inline void fence_streams() {}
#endif

// dst[0, len) = src[0, len), streamed from the first aligned address on.
template <typename T>
void stream_copy(T* dst, const T* src, int64_t len) {
  char* d = reinterpret_cast<char*>(dst);
  const char* s = reinterpret_cast<const char*>(src);
  const int64_t bytes = len * static_cast<int64_t>(sizeof(T));
  const int64_t misaligned = static_cast<int64_t>(reinterpret_cast<uintptr_t>(d) % kStreamWidth);
  const int64_t head = std::min(bytes, (kStreamWidth - misaligned) % kStreamWidth);
  std::memcpy(d, s, head);
  int64_t i = head;
  for (; i + kStreamWidth <= bytes; i += kStreamWidth) stream_vector(d + i, s + i);
  std::memcpy(d + i, s + i, bytes - i);
}

// fill() through a staging buffer in L1 and streaming stores (inside a task of parallel_writes,
// which fences them). Kept out of line: its buffer would otherwise weigh on every inlined write.
template <typename T, typename F>
[[gnu::noinline]] void write_streamed(T* dst, int64_t len, const F& value) {
  constexpr int64_t kStagingValues = 1024;
  alignas(64) T staging[kStagingValues];
  for (int64_t first = 0; first < len; first += kStagingValues) {
    const int64_t count = std::min(kStagingValues, len - first);
    fill(staging, count, [&](int64_t i) { return value(first + i); });
    stream_copy(dst + first, staging, count);
  }
}

// dst[i] = value(i) as fill() does; streamed when `stream` and the piece spans a few vectors (a
// shorter one would pay the staging for its unaligned ends alone).
template <typename T, typename F>
inline void write(T* dst, int64_t len, const F& value, bool stream = false) {
  if constexpr (kCanStream) {
    if (stream && len * static_cast<int64_t>(sizeof(T)) >= 4 * kStreamWidth) {
      write_streamed(dst, len, value);
      return;
    }
  }
  fill(dst, len, value);
}

// at::parallel_for whose tasks fence their streamed stores, so that the output is whole when it
// returns.
template <typename F>
void parallel_writes(int64_t begin, int64_t end, int64_t grain, const F& f) {
  at::parallel_for(begin, end, grain, [&](int64_t b, int64_t e) {
    f(b, e);
    fence_streams();
  });
}

// The pre-activation and the ReLU, shared by the forward and the backward's mask so that both
// see the same value. The mask is threshold_backward's: the gradient passes unless y ≤ 0.
template <typename acc_t>
inline acc_t pre(acc_t a, acc_t x, acc_t k) {
  return a * x + k;
}
template <bool kRelu, typename acc_t>
inline acc_t activate(acc_t v) {
  return kRelu && v < acc_t(0) ? acc_t(0) : v;  // NaN stays NaN, as in torch.relu
}
template <bool kRelu, typename acc_t>
inline acc_t masked(acc_t g, acc_t a, acc_t x, acc_t k) {
  return kRelu && pre(a, x, k) <= acc_t(0) ? acc_t(0) : g;
}

// ---------------------------------------------------------------------------------------------
// Shapes, layouts, work split.

struct Shape {
  int64_t n, c, s;
  int64_t m() const { return n * s; }
};

bool rows_of_channels(const Tensor& x) {
  return x.dim() == 4 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

Shape shape_of(const Tensor& x) {
  const int64_t n = x.size(0), c = x.size(1);
  if (rows_of_channels(x)) return {x.numel() / c, c, 1};
  return {n, c, x.numel() / (n * c)};
}

// Outputs of at least this many bytes are streamed (write's `stream`): on the AVX512-BF16 EPYC
// (1 MiB of L2 per core) bn_layer.py's 6.4 MB and 12.8 MB outputs gained 13–22 % and its 3.2 MB
// bfloat16 ones lost 8–12 %.
constexpr int64_t kStreamBytes = int64_t(4) << 20;

template <typename T>
bool streams_output(const Shape& shape) {
  return shape.n * shape.c * shape.s * static_cast<int64_t>(sizeof(T)) >= kStreamBytes;
}

// x itself when it is contiguous or channels_last, otherwise a contiguous copy.
Tensor dense(const Tensor& x) {
  return x.is_contiguous() || (x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast)) ? x : x.contiguous();
}

// t laid out as `like` (one of dense()'s two layouts), so that flat indices match.
Tensor laid_out_as(const Tensor& t, const Tensor& like) {
  return rows_of_channels(like) ? t.contiguous(at::MemoryFormat::ChannelsLast) : t.contiguous();
}

constexpr int64_t kWork = 32768;     // values per task worth waking a thread for
constexpr int64_t kBlockValues = 4096;  // values of a moments block, read twice while in L1 (16 KiB of float32)
constexpr int64_t kValuesPerLane = 128;  // values a position's gradient sums add in acc_t before a merge in double
static_assert(kWork / 256 <= kValuesPerLane, "a chunk of rows of channels (stripes of ≥ 256 values) bounds its sums");

// Channels per task (S > 1), so that each thread gets enough work to be worth waking.
int64_t channel_grain(const Shape& shape) { return std::max<int64_t>(1, kWork / std::max<int64_t>(1, shape.m())); }

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Rows of C channels (S == 1) are processed in stripes of R whole rows, P = R·C ≥ 256 values, so
// that every loop runs over P contiguous values (channel i % C) with the per-channel vectors
// repeated R times, instead of paying a loop's overhead per row of C. A block (the moments' unit,
// summed twice while in cache) is whole stripes of about kBlockValues values and at least 8 rows;
// a chunk (one task, and the gradient sums' unit in acc_t: about kWork / P ≤ kValuesPerLane values
// per stripe position) is whole blocks, fixed by the shape alone.
struct Stripes {
  int64_t rows, width, block_rows, chunk_rows, chunks;
};

Stripes stripes_of(const Shape& shape) {
  const int64_t r = std::max<int64_t>(1, ceil_div(256, shape.c));
  const int64_t block = r * std::max(ceil_div(8, r), kBlockValues / (r * shape.c));
  const int64_t chunk = block * std::max<int64_t>(1, ceil_div(kWork, block * shape.c));
  return {r, r * shape.c, block, chunk, ceil_div(shape.n, chunk)};
}

// v (C values) repeated to fill one stripe.
template <typename acc_t>
void tile(const acc_t* v, const Stripes& st, int64_t channels, acc_t* out) {
  for (int64_t r = 0; r < st.rows; ++r) std::copy(v, v + channels, out + r * channels);
}
template <typename acc_t>
std::vector<acc_t> tiled(const acc_t* v, const Stripes& st, int64_t channels) {
  std::vector<acc_t> out(st.width);
  tile(v, st, channels, out.data());
  return out;
}

// f(first value, count) for each stripe, or the partial stripe at the end, of rows [r0, r1).
template <typename F>
inline void for_each_stripe(const Shape& shape, const Stripes& st, int64_t r0, int64_t r1, const F& f) {
  for (int64_t row = r0; row < r1; row += st.rows) f(row * shape.c, (std::min(r1, row + st.rows) - row) * shape.c);
}

// acc[i % C] summed over one stripe's worth of per-position sums, into per-channel `out`.
template <typename acc_t>
void fold(const acc_t* per_position, const Stripes& st, int64_t channels, acc_t* per_channel) {
  std::copy(per_position, per_position + channels, per_channel);
  for (int64_t r = 1; r < st.rows; ++r) {
    const acc_t* part = per_position + r * channels;
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) per_channel[c] += part[c];
  }
}

template <typename scalar_t>
const raw_t<scalar_t>* in(const Tensor& t) {
  return reinterpret_cast<const raw_t<scalar_t>*>(t.const_data_ptr());
}
template <typename scalar_t>
raw_t<scalar_t>* out(Tensor& t) {
  return reinterpret_cast<raw_t<scalar_t>*>(t.mutable_data_ptr());
}

// Chan et al.'s pairwise update of (mean, m2) over `count` values by a part of `n` values; the
// weights depend on the counts alone, so one pair serves every channel.
struct Merge {
  double to_mean, to_m2;
  Merge(double count, double n) : to_mean(n / (count + n)), to_m2(count * n / (count + n)) {}
  void operator()(double& mean, double& m2, double part_mean, double part_m2) const {
    const double delta = part_mean - mean;
    mean += delta * to_mean;
    m2 += part_m2 + delta * delta * to_m2;
  }
};

// ---------------------------------------------------------------------------------------------
// Contiguous (N, C, S), S > 1: one channel's N rows of S values.

// Sums of a block of rows run per position of the row (`lanes`, up to kLanes positions): the loop
// over a row is then a plain vector add with no reduction to close, and each lane adds few values.
constexpr int64_t kLanes = 4096;

// f(row, lane offset, count) for the pieces of up to kLanes values of rows [first, last) of channel c.
template <typename F>
inline void for_each_piece(const Shape& shape, int64_t c, int64_t first, int64_t last, const F& f) {
  for (int64_t n = first; n < last; ++n)
    for (int64_t s0 = 0; s0 < shape.s; s0 += kLanes)
      f((n * shape.c + c) * shape.s + s0, std::min(kLanes, shape.s - s0));
}

// Rows per moments block: about kBlockValues values, at least 4 rows.
int64_t plane_moments_rows(const Shape& shape) { return std::max<int64_t>(4, kBlockValues / shape.s); }

// Rows per gradient-sums block: each position adds about kValuesPerLane values, one per piece of
// kLanes values of each row (so a row of more than kValuesPerLane·kLanes values alone gives more).
int64_t plane_sums_rows(const Shape& shape) { return std::max<int64_t>(1, kValuesPerLane / ceil_div(shape.s, kLanes)); }

template <typename acc_t>
acc_t lane_sum(const std::vector<acc_t>& lanes) {
  acc_t total = 0;
  const acc_t* p = lanes.data();
  const int64_t len = static_cast<int64_t>(lanes.size());
#pragma omp simd reduction(+ : total)
  for (int64_t i = 0; i < len; ++i) total += p[i];
  return total;
}

// Mean and Σ(x − μ)² of channel c: each block of rows is summed twice while it sits in L1 (its
// mean, then its squared deviations) and blocks are merged in double, as accurate as a two-pass
// computation.
template <typename T, typename acc_t>
void plane_moments(const Shape& shape, int64_t c, const T* px, double& mean, double& squares) {
  const int64_t block = plane_moments_rows(shape);
  std::vector<acc_t> lanes(std::min(kLanes, shape.s));
  acc_t* pl = lanes.data();
  double count = 0, mu = 0, m2 = 0;
  for (int64_t first = 0; first < shape.n; first += block) {
    const int64_t last = std::min(shape.n, first + block);
    std::fill(lanes.begin(), lanes.end(), acc_t(0));
    for_each_piece(shape, c, first, last, [&](int64_t at, int64_t len) {
      const T* x = px + at;
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) pl[i] += widen(x[i]);
    });
    const acc_t block_mean = lane_sum(lanes) / static_cast<acc_t>((last - first) * shape.s);
    std::fill(lanes.begin(), lanes.end(), acc_t(0));
    for_each_piece(shape, c, first, last, [&](int64_t at, int64_t len) {
      const T* x = px + at;
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) {
        const acc_t d = widen(x[i]) - block_mean;
        pl[i] += d * d;
      }
    });
    const double n = static_cast<double>((last - first) * shape.s);
    Merge(count, n)(mu, m2, block_mean, lane_sum(lanes));
    count += n;
  }
  mean = mu;
  squares = m2;
}

// y = g(a·x + k) over channel c.
template <bool kRelu, typename T, typename acc_t>
void plane_affine(const Shape& shape, int64_t c, const T* px, acc_t a, acc_t k, T* py) {
  const bool stream = streams_output<T>(shape);
  for (int64_t n = 0; n < shape.n; ++n) {
    const int64_t base = (n * shape.c + c) * shape.s;
    const T* x = px + base;
    write(py + base, shape.s, [&](int64_t s) { return activate<kRelu>(pre(a, acc_t(widen(x[s])), k)); }, stream);
  }
}

// Σg and Σg·(x − μ) over channel c, g = dy masked by the ReLU when kRelu: per lane in acc_t within
// a block of plane_sums_rows rows, in double beyond.
template <bool kRelu, typename T, typename acc_t>
void plane_gradient_sums(const Shape& shape, int64_t c, const T* pdy, const T* px, acc_t mu, acc_t a, acc_t k,
                         double& sum_dy, double& sum_dy_centered) {
  const int64_t block = plane_sums_rows(shape);
  std::vector<acc_t> lanes0(std::min(kLanes, shape.s)), lanes1(lanes0.size());
  acc_t *p0 = lanes0.data(), *p1 = lanes1.data();
  double total_dy = 0, total_dy_centered = 0;
  for (int64_t first = 0; first < shape.n; first += block) {
    std::fill(lanes0.begin(), lanes0.end(), acc_t(0));
    std::fill(lanes1.begin(), lanes1.end(), acc_t(0));
    for_each_piece(shape, c, first, std::min(shape.n, first + block), [&](int64_t at, int64_t len) {
      const T *dy = pdy + at, *x = px + at;
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) {
        const acc_t xv = widen(x[i]);
        const acc_t g = masked<kRelu>(acc_t(widen(dy[i])), a, xv, k);
        p0[i] += g;
        p1[i] += g * (xv - mu);
      }
    });
    total_dy += lane_sum(lanes0);
    total_dy_centered += lane_sum(lanes1);
  }
  sum_dy = total_dy;
  sum_dy_centered = total_dy_centered;
}

// dx = A·g + B·x + K over channel c (kWithX), or dx = A·g; g masked as above with (a, k).
template <bool kRelu, bool kWithX, typename T, typename acc_t>
void plane_grad_input(const Shape& shape, int64_t c, const T* pdy, const T* px, acc_t a, acc_t k, acc_t A, acc_t B,
                      acc_t K, T* pdx) {
  const bool stream = streams_output<T>(shape);
  for (int64_t n = 0; n < shape.n; ++n) {
    const int64_t base = (n * shape.c + c) * shape.s;
    const T *dy = pdy + base, *x = px + base;
    write(pdx + base, shape.s, [&](int64_t s) {
      if constexpr (!kRelu && !kWithX) {
        return A * acc_t(widen(dy[s]));
      } else {
        const acc_t xv = widen(x[s]);
        const acc_t g = masked<kRelu>(acc_t(widen(dy[s])), a, xv, k);
        if constexpr (kWithX) {
          return A * g + B * xv + K;
        } else {
          return A * g;
        }
      }
    }, stream);
  }
}

// ---------------------------------------------------------------------------------------------
// Rows of C channels (S == 1: (N, C) and channels_last): vectorized across the channels.

// Mean and Σ(x − μ)² per channel over rows [r0, r1): each block is summed twice while in L1 (its
// mean, then its squared deviations), per stripe position then per channel, blocks merged in double.
template <typename T, typename acc_t>
void rows_moments(const Shape& shape, const Stripes& st, int64_t r0, int64_t r1, const T* px, double* mean,
                  double* squares) {
  const int64_t C = shape.c, P = st.width;
  std::vector<acc_t> sum(P), m2(P), centre(P), channel_sum(C), channel_m2(C);
  std::fill(mean, mean + C, 0.0);
  std::fill(squares, squares + C, 0.0);
  double count = 0;
  for (int64_t first = r0; first < r1; first += st.block_rows) {
    const int64_t last = std::min(r1, first + st.block_rows), rows = last - first;
    acc_t *ps = sum.data(), *pm = m2.data(), *pc = centre.data();
    std::fill(sum.begin(), sum.end(), acc_t(0));
    std::fill(m2.begin(), m2.end(), acc_t(0));
    for_each_stripe(shape, st, first, last, [&](int64_t at, int64_t len) {
      const T* x = px + at;
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) ps[i] += widen(x[i]);
    });
    fold(ps, st, C, channel_sum.data());
    for (int64_t c = 0; c < C; ++c) channel_sum[c] /= static_cast<acc_t>(rows);  // now the block's mean
    tile(channel_sum.data(), st, C, pc);
    for_each_stripe(shape, st, first, last, [&](int64_t at, int64_t len) {
      const T* x = px + at;
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) {
        const acc_t d = widen(x[i]) - pc[i];
        pm[i] += d * d;
      }
    });
    fold(pm, st, C, channel_m2.data());
    const Merge merge(count, static_cast<double>(rows));
    for (int64_t c = 0; c < C; ++c) merge(mean[c], squares[c], pc[c], channel_m2[c]);
    count += rows;
  }
}

// Per-channel mean and Σ(x − μ)² over all rows: fixed chunks in parallel, merged in order.
template <typename T, typename acc_t>
void all_rows_moments(const Shape& shape, const T* px, double* mean, double* squares) {
  const Stripes st = stripes_of(shape);
  const int64_t C = shape.c;
  std::vector<double> part_mean(st.chunks * C), part_m2(st.chunks * C);
  at::parallel_for(0, st.chunks, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      rows_moments<T, acc_t>(shape, st, i * st.chunk_rows, std::min(shape.n, (i + 1) * st.chunk_rows), px,
                             &part_mean[i * C], &part_m2[i * C]);
  });
  std::copy(part_mean.begin(), part_mean.begin() + C, mean);
  std::copy(part_m2.begin(), part_m2.begin() + C, squares);
  for (int64_t i = 1; i < st.chunks; ++i) {
    const double count = static_cast<double>(i * st.chunk_rows);
    const Merge merge(count, static_cast<double>(std::min(shape.n, (i + 1) * st.chunk_rows)) - count);
    for (int64_t c = 0; c < C; ++c) merge(mean[c], squares[c], part_mean[i * C + c], part_m2[i * C + c]);
  }
}

// f(first value, count) for every stripe of all rows, stripes split among threads (which may stream).
template <typename F>
void parallel_stripes(const Shape& shape, const Stripes& st, const F& f) {
  const int64_t per_task = std::max<int64_t>(1, st.chunk_rows / st.rows);
  parallel_writes(0, ceil_div(shape.n, st.rows), per_task, [&](int64_t s0, int64_t s1) {
    for_each_stripe(shape, st, s0 * st.rows, std::min(shape.n, s1 * st.rows), f);
  });
}

// y = g(a·x + k) over all rows, in parallel.
template <bool kRelu, typename T, typename acc_t>
void rows_affine(const Shape& shape, const T* px, const acc_t* a, const acc_t* k, T* py) {
  const Stripes st = stripes_of(shape);
  const std::vector<acc_t> ta = tiled(a, st, shape.c), tk = tiled(k, st, shape.c);
  const acc_t *pa = ta.data(), *pk = tk.data();
  const bool stream = streams_output<T>(shape);
  parallel_stripes(shape, st, [&](int64_t at, int64_t len) {
    const T* x = px + at;
    write(py + at, len, [&](int64_t i) { return activate<kRelu>(pre(pa[i], acc_t(widen(x[i])), pk[i])); }, stream);
  });
}

// Σg and Σg·(x − μ) per channel over all rows: fixed chunks in parallel, each summed per stripe
// position in acc_t, chunks merged in double in order.
template <bool kRelu, typename T, typename acc_t>
void all_rows_gradient_sums(const Shape& shape, const T* pdy, const T* px, const acc_t* mu, const acc_t* a,
                            const acc_t* k, double* sum_dy, double* sum_dy_centered) {
  const Stripes st = stripes_of(shape);
  const int64_t C = shape.c, P = st.width;
  const std::vector<acc_t> tmu = tiled(mu, st, C), ta = tiled(a, st, C), tk = tiled(k, st, C);
  std::vector<double> part0(st.chunks * C, 0.0), part1(st.chunks * C, 0.0);
  at::parallel_for(0, st.chunks, 1, [&](int64_t b, int64_t e) {
    std::vector<acc_t> r0(P), r1(P), c0(C), c1(C);
    const acc_t *pmu = tmu.data(), *pa = ta.data(), *pk = tk.data();
    for (int64_t i = b; i < e; ++i) {
      acc_t *p0 = r0.data(), *p1 = r1.data();
      std::fill(r0.begin(), r0.end(), acc_t(0));
      std::fill(r1.begin(), r1.end(), acc_t(0));
      const int64_t first = i * st.chunk_rows, last = std::min(shape.n, first + st.chunk_rows);
      for_each_stripe(shape, st, first, last, [&](int64_t at, int64_t len) {
        const T *dy = pdy + at, *x = px + at;
#pragma omp simd
        for (int64_t j = 0; j < len; ++j) {
          const acc_t xv = widen(x[j]);
          const acc_t g = masked<kRelu>(acc_t(widen(dy[j])), pa[j], xv, pk[j]);
          p0[j] += g;
          p1[j] += g * (xv - pmu[j]);
        }
      });
      fold(p0, st, C, c0.data());
      fold(p1, st, C, c1.data());
      std::copy(c0.begin(), c0.end(), &part0[i * C]);
      std::copy(c1.begin(), c1.end(), &part1[i * C]);
    }
  });
  for (int64_t c = 0; c < C; ++c) {
    double t0 = 0, t1 = 0;
    for (int64_t i = 0; i < st.chunks; ++i) {
      t0 += part0[i * C + c];
      t1 += part1[i * C + c];
    }
    sum_dy[c] = t0;
    sum_dy_centered[c] = t1;
  }
}

// dx = A·g + B·x + K per channel (kWithX), or dx = A·g, over all rows, in parallel.
template <bool kRelu, bool kWithX, typename T, typename acc_t>
void rows_grad_input(const Shape& shape, const T* pdy, const T* px, const acc_t* a, const acc_t* k, const acc_t* A,
                     const acc_t* B, const acc_t* K, T* pdx) {
  const Stripes st = stripes_of(shape);
  const int64_t C = shape.c;
  const std::vector<acc_t> ta = tiled(a, st, C), tk = tiled(k, st, C), tA = tiled(A, st, C);
  const std::vector<acc_t> tB = kWithX ? tiled(B, st, C) : std::vector<acc_t>(), tK = kWithX ? tiled(K, st, C) : tB;
  const acc_t *pa = ta.data(), *pk = tk.data(), *pA = tA.data(), *pB = tB.data(), *pK = tK.data();
  const bool stream = streams_output<T>(shape);
  parallel_stripes(shape, st, [&](int64_t at, int64_t len) {
    const T *dy = pdy + at, *x = px + at;
    write(pdx + at, len, [&](int64_t i) {
      if constexpr (!kRelu && !kWithX) {
        return pA[i] * acc_t(widen(dy[i]));
      } else {
        const acc_t xv = widen(x[i]);
        const acc_t g = masked<kRelu>(acc_t(widen(dy[i])), pa[i], xv, pk[i]);
        if constexpr (kWithX) {
          return pA[i] * g + pB[i] * xv + pK[i];
        } else {
          return pA[i] * g;
        }
      }
    }, stream);
  });
}

// ---------------------------------------------------------------------------------------------
// Layout-independent steps: each picks the (N, C, S) or the rows-of-channels loops.

#define BNRUN_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, TYPE, NAME, __VA_ARGS__)

template <typename F>
void with_relu(bool relu, const F& f) {
  if (relu) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

at::TensorOptions per_channel_options(const Tensor& x) { return x.options().dtype(at::toOpMathType(x.scalar_type())); }

template <typename acc_t>
const acc_t* maybe(const Tensor& t) {
  return t.defined() ? t.const_data_ptr<acc_t>() : nullptr;
}

// Σg and Σg·(x − μ) per channel, in double; g = dy masked by the ReLU of a·x + k when `relu`.
template <typename scalar_t, typename acc_t>
void gradient_sums(const Shape& shape, bool relu, const Tensor& dy, const Tensor& x, const acc_t* mu, const acc_t* a,
                   const acc_t* k, double* sum_dy, double* sum_dy_centered) {
  using T = raw_t<scalar_t>;
  with_relu(relu, [&](auto r) {
    constexpr bool kRelu = decltype(r)::value;
    if (shape.s == 1) {
      all_rows_gradient_sums<kRelu, T, acc_t>(shape, in<scalar_t>(dy), in<scalar_t>(x), mu, a, k, sum_dy,
                                              sum_dy_centered);
      return;
    }
    at::parallel_for(0, shape.c, channel_grain(shape), [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c)
        plane_gradient_sums<kRelu, T, acc_t>(shape, c, in<scalar_t>(dy), in<scalar_t>(x), mu[c], a[c], k[c], sum_dy[c],
                                              sum_dy_centered[c]);
    });
  });
}

// dx = A·g (+ B·x + K when `with_x`) per channel, g masked as in gradient_sums.
template <typename scalar_t, typename acc_t>
void grad_input(const Shape& shape, bool relu, bool with_x, const Tensor& dy, const Tensor& x, const acc_t* a,
                const acc_t* k, const acc_t* A, const acc_t* B, const acc_t* K, Tensor& dx) {
  using T = raw_t<scalar_t>;
  const T *pdy = in<scalar_t>(dy), *px = in<scalar_t>(x);
  T* pdx = out<scalar_t>(dx);
  with_relu(relu, [&](auto r) {
    constexpr bool kRelu = decltype(r)::value;
    const auto run = [&](auto w) {
      constexpr bool kWithX = decltype(w)::value;
      if (shape.s == 1) {
        rows_grad_input<kRelu, kWithX, T, acc_t>(shape, pdy, px, a, k, A, B, K, pdx);
        return;
      }
      parallel_writes(0, shape.c, channel_grain(shape), [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c)
          plane_grad_input<kRelu, kWithX, T, acc_t>(shape, c, pdy, px, a[c], k[c], A[c], kWithX ? B[c] : acc_t(0),
                                                    kWithX ? K[c] : acc_t(0), pdx);
      });
    };
    if (with_x) {
      run(std::true_type{});
    } else {
      run(std::false_type{});
    }
  });
}

// y = g(a·x + k) per channel.
template <typename scalar_t, typename acc_t>
void affine_output(const Shape& shape, bool relu, const Tensor& x, const acc_t* a, const acc_t* k, Tensor& y) {
  using T = raw_t<scalar_t>;
  const T* px = in<scalar_t>(x);
  T* py = out<scalar_t>(y);
  with_relu(relu, [&](auto r) {
    constexpr bool kRelu = decltype(r)::value;
    if (shape.s == 1) {
      rows_affine<kRelu, T, acc_t>(shape, px, a, k, py);
      return;
    }
    // Prediction mode has no statistics pass to keep a channel together: split (n, c) planes.
    const int64_t planes = shape.n * shape.c, grain = std::max<int64_t>(1, kWork / shape.s);
    const bool stream = streams_output<T>(shape);
    parallel_writes(0, planes, grain, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t c = p % shape.c;
        write(py + p * shape.s, shape.s,
              [&](int64_t s) { return activate<kRelu>(pre(a[c], acc_t(widen(px[p * shape.s + s])), k[c])); }, stream);
      }
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Training mode.

// The per-channel statistics and output coefficients of a batch: mean, var (biased), ι, a, k.
template <typename acc_t>
struct Stats {
  acc_t *mean, *var, *inv, *a, *k;
  void set(int64_t c, double mu, double biased_var, double eps, const acc_t* weight, const acc_t* bias) {
    mean[c] = static_cast<acc_t>(mu);
    var[c] = static_cast<acc_t>(biased_var);
    inv[c] = static_cast<acc_t>(1.0 / std::sqrt(static_cast<double>(var[c]) + eps));
    a[c] = (weight ? weight[c] : acc_t(1)) * inv[c];
    k[c] = (bias ? bias[c] : acc_t(0)) - mean[c] * a[c];
  }
};

// Rows of the (5, C) per-channel tensor the training step keeps: mean, biased var, 1/σ̂, a, k (one
// allocation instead of five).
enum StatRow : int64_t { kMean, kVar, kInv, kA, kK, kStatRows };

template <typename acc_t>
Stats<acc_t> stats_of(const Tensor& stats) {
  acc_t* p = stats.mutable_data_ptr<acc_t>();
  const int64_t c = stats.size(1);
  return {p + kMean * c, p + kVar * c, p + kInv * c, p + kA * c, p + kK * c};
}

// Returns (y, stats), stats as in StatRow, in acc_t; y = max(BN(x), 0) when `relu`.
std::tuple<Tensor, Tensor> forward_kernel(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps,
                                          bool relu) {
  const Shape shape = shape_of(x);
  Tensor y = at::empty_like(x), stats = at::empty({kStatRows, shape.c}, per_channel_options(x));
  BNRUN_DISPATCH(x.scalar_type(), "bnrun_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using T = raw_t<scalar_t>;
    Stats<acc_t> st = stats_of<acc_t>(stats);
    const acc_t *pw = maybe<acc_t>(weight), *pb = maybe<acc_t>(bias);
    const double m = static_cast<double>(shape.m());
    if (shape.s == 1) {
      std::vector<double> mu(shape.c), squares(shape.c);
      all_rows_moments<T, acc_t>(shape, in<scalar_t>(x), mu.data(), squares.data());
      for (int64_t c = 0; c < shape.c; ++c) st.set(c, mu[c], squares[c] / m, eps, pw, pb);
      affine_output<scalar_t, acc_t>(shape, relu, x, st.a, st.k, y);
      return;
    }
    const T* px = in<scalar_t>(x);
    T* py = out<scalar_t>(y);
    with_relu(relu, [&](auto r) {
      parallel_writes(0, shape.c, channel_grain(shape), [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {  // the output pass finds the channel still in L2
          double mu, squares;
          plane_moments<T, acc_t>(shape, c, px, mu, squares);
          st.set(c, mu, squares / m, eps, pw, pb);
          plane_affine<decltype(r)::value, T, acc_t>(shape, c, px, st.a[c], st.k[c], py);
        }
      });
    });
  });
  return {y, stats};
}

// Returns (dx, dγ, dβ); dy must be laid out as x; stats: the forward's (StatRow), whose a and k
// give the ReLU mask.
std::tuple<Tensor, Tensor, Tensor> backward_kernel(const Tensor& grad_y, const Tensor& x, const Tensor& stats,
                                                   const Tensor& weight, bool relu) {
  const Shape shape = shape_of(x);
  Tensor grad_x = at::empty_like(x), grad_weight = at::empty({shape.c}, per_channel_options(x));
  Tensor grad_bias = at::empty_like(grad_weight);
  BNRUN_DISPATCH(x.scalar_type(), "bnrun_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Stats<acc_t> st = stats_of<acc_t>(stats);
    const acc_t *pw = maybe<acc_t>(weight), *pmean = st.mean, *pinv = st.inv, *pa = st.a, *pk = st.k;
    acc_t *pdw = grad_weight.mutable_data_ptr<acc_t>(), *pdb = grad_bias.mutable_data_ptr<acc_t>();
    std::vector<double> sum_dy(shape.c), sum_dy_centered(shape.c);
    std::vector<acc_t> A(shape.c), B(shape.c), K(shape.c);
    const auto coefficients = [&](int64_t c) {
      const double inv = pinv[c], m = static_cast<double>(shape.m());
      const double db = sum_dy[c], dw = inv * sum_dy_centered[c];
      pdb[c] = static_cast<acc_t>(db);
      pdw[c] = static_cast<acc_t>(dw);
      const double ac = (pw ? pw[c] : acc_t(1)) * inv;  // γι
      const double bc = -ac * inv * dw / m;             // coefficient of x (x̂ = ι(x − μ))
      A[c] = static_cast<acc_t>(ac);
      B[c] = static_cast<acc_t>(bc);
      K[c] = static_cast<acc_t>(-ac * db / m - bc * pmean[c]);
    };
    if (shape.s == 1) {
      gradient_sums<scalar_t, acc_t>(shape, relu, grad_y, x, pmean, pa, pk, sum_dy.data(), sum_dy_centered.data());
      for (int64_t c = 0; c < shape.c; ++c) coefficients(c);
      grad_input<scalar_t, acc_t>(shape, relu, true, grad_y, x, pa, pk, A.data(), B.data(), K.data(), grad_x);
      return;
    }
    using T = raw_t<scalar_t>;
    const T *pdy = in<scalar_t>(grad_y), *px = in<scalar_t>(x);
    T* pdx = out<scalar_t>(grad_x);
    with_relu(relu, [&](auto r) {
      constexpr bool kRelu = decltype(r)::value;
      parallel_writes(0, shape.c, channel_grain(shape), [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {  // the dx pass finds the channel's x and dy still in L2
          plane_gradient_sums<kRelu, T, acc_t>(shape, c, pdy, px, pmean[c], pa[c], pk[c], sum_dy[c],
                                               sum_dy_centered[c]);
          coefficients(c);
          plane_grad_input<kRelu, true, T, acc_t>(shape, c, pdy, px, pa[c], pk[c], A[c], B[c], K[c], pdx);
        }
      });
    });
  });
  return {grad_x, grad_weight, grad_bias};
}

// Moves the running statistics towards the batch's: one loop over C instead of four tensor ops.
template <typename acc_t>
void update_running(const Stats<acc_t>& st, int64_t channels, double m, double factor, const Tensor& running_mean,
                    const Tensor& running_var) {
  acc_t *rm = running_mean.mutable_data_ptr<acc_t>(), *rv = running_var.mutable_data_ptr<acc_t>();
  for (int64_t c = 0; c < channels; ++c) {
    rm[c] = static_cast<acc_t>(rm[c] + factor * (st.mean[c] - rm[c]));
    rv[c] = static_cast<acc_t>(rv[c] + factor * (st.var[c] * m / (m - 1) - rv[c]));
  }
}

}  // namespace

namespace bnrun {

std::tuple<Tensor, Tensor> train_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps,
                                         bool relu) {
  return forward_kernel(dense(x), weight, bias, eps, relu);
}

std::tuple<Tensor, Tensor, Tensor> train_backward(const Tensor& grad_y, const Tensor& x, const Tensor& stats,
                                                  const Tensor& weight, bool relu) {
  const Tensor input = dense(x);
  return backward_kernel(laid_out_as(grad_y, input), input, stats, weight, relu);
}

void update_running_stats(const Tensor& stats, const Tensor& running_mean, const Tensor& running_var, int64_t count,
                          double factor) {
  AT_DISPATCH_FLOATING_TYPES(stats.scalar_type(), "bnrun_running_stats", [&] {
    update_running(stats_of<scalar_t>(stats), stats.size(1), static_cast<double>(count), factor, running_mean,
                   running_var);
  });
}

std::tuple<Tensor, Tensor> eval_forward(const Tensor& x_in, const Tensor& mean, const Tensor& var,
                                        const Tensor& weight, const Tensor& bias, double eps, bool relu) {
  const Tensor x = dense(x_in);
  const Shape shape = shape_of(x);
  // One allocation for ι, a and k (rows 0, 1, 2).
  Tensor y = at::empty_like(x), coefficients = at::empty({3, shape.c}, mean.options());
  BNRUN_DISPATCH(x.scalar_type(), "bnrun_eval", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t *pm = mean.const_data_ptr<acc_t>(), *pv = var.const_data_ptr<acc_t>();
    const acc_t *pw = maybe<acc_t>(weight), *pb = maybe<acc_t>(bias);
    acc_t* pi = coefficients.mutable_data_ptr<acc_t>();
    acc_t *pa = pi + shape.c, *pk = pi + 2 * shape.c;
    for (int64_t c = 0; c < shape.c; ++c) {
      const double iv = 1.0 / std::sqrt(static_cast<double>(pv[c]) + eps);
      const double ac = (pw ? static_cast<double>(pw[c]) : 1.0) * iv;
      pi[c] = static_cast<acc_t>(iv);
      pa[c] = static_cast<acc_t>(ac);
      pk[c] = static_cast<acc_t>((pb ? static_cast<double>(pb[c]) : 0.0) - static_cast<double>(pm[c]) * ac);
    }
    affine_output<scalar_t, acc_t>(shape, relu, x, pa, pk, y);
  });
  return {y, coefficients};
}

Tensor eval_backward_input(const Tensor& grad_y, const Tensor& x_in, const Tensor& coefficients, bool relu) {
  const Tensor x = dense(x_in), dy = laid_out_as(grad_y, x);
  const Shape shape = shape_of(x);
  Tensor dx = at::empty_like(x);
  BNRUN_DISPATCH(x.scalar_type(), "bnrun_eval_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t *pa = coefficients.const_data_ptr<acc_t>() + shape.c, *pk = pa + shape.c;
    grad_input<scalar_t, acc_t>(shape, relu, false, dy, x, pa, pk, pa, nullptr, nullptr, dx);
  });
  return dx;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> eval_backward_statistics(const Tensor& grad_y, const Tensor& x_in,
                                                                    const Tensor& mean, const Tensor& weight,
                                                                    const Tensor& coefficients, bool relu) {
  const Tensor x = dense(x_in), dy = laid_out_as(grad_y, x);
  const Shape shape = shape_of(x);
  Tensor d_mean = at::empty_like(mean), d_var = at::empty_like(mean), d_weight = at::empty_like(mean);
  Tensor d_bias = at::empty_like(mean);
  BNRUN_DISPATCH(x.scalar_type(), "bnrun_eval_backward_statistics", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t *pi = coefficients.const_data_ptr<acc_t>(), *pa = pi + shape.c, *pk = pi + 2 * shape.c;
    std::vector<double> s0(shape.c), s1(shape.c);
    gradient_sums<scalar_t, acc_t>(shape, relu, dy, x, mean.const_data_ptr<acc_t>(), pa, pk, s0.data(), s1.data());
    const acc_t* pw = maybe<acc_t>(weight);
    acc_t *pdm = d_mean.mutable_data_ptr<acc_t>(), *pdv = d_var.mutable_data_ptr<acc_t>();
    acc_t *pdw = d_weight.mutable_data_ptr<acc_t>(), *pdb = d_bias.mutable_data_ptr<acc_t>();
    for (int64_t c = 0; c < shape.c; ++c) {
      const double iv = pi[c], gamma = pw ? static_cast<double>(pw[c]) : 1.0;
      pdm[c] = static_cast<acc_t>(-static_cast<double>(pa[c]) * s0[c]);
      pdv[c] = static_cast<acc_t>(-0.5 * gamma * iv * iv * iv * s1[c]);
      pdw[c] = static_cast<acc_t>(iv * s1[c]);
      pdb[c] = static_cast<acc_t>(s0[c]);
    }
  });
  return {d_mean, d_var, d_weight, d_bias};
}

std::tuple<Tensor, Tensor> moments(const Tensor& x) {
  const Tensor input = dense(x);
  const Shape shape = shape_of(input);
  Tensor mean = at::empty({shape.c}, x.options().dtype(at::kDouble)), squares = at::empty_like(mean);
  BNRUN_DISPATCH(x.scalar_type(), "bnrun_moments", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using T = raw_t<scalar_t>;
    double *pm = mean.mutable_data_ptr<double>(), *ps = squares.mutable_data_ptr<double>();
    if (shape.s == 1) {
      all_rows_moments<T, acc_t>(shape, in<scalar_t>(input), pm, ps);
      return;
    }
    at::parallel_for(0, shape.c, channel_grain(shape), [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) plane_moments<T, acc_t>(shape, c, in<scalar_t>(input), pm[c], ps[c]);
    });
  });
  return {mean, squares};
}

Tensor to_bf16(const Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.is_contiguous(), "to_bf16 takes contiguous float32");
  Tensor y = at::empty(x.sizes(), x.options().dtype(at::kBFloat16));
  const float* src = x.const_data_ptr<float>();
  write(reinterpret_cast<uint16_t*>(y.mutable_data_ptr()), x.numel(), [&](int64_t i) { return src[i]; });
  return y;
}

const char* isa() { return kIsa; }

int64_t stream_bytes() { return kStreamBytes; }

}  // namespace bnrun
