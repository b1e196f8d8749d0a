// bnrun's fused CPU batch norm: the math of bnrun/nn/functional.py written as loops, so that the
// statistics, the normalization and the affine step cost the fewest passes over memory and Python
// is entered once per layer, not once per tensor op. This file holds the loops and the kernels
// built from them (bn_cpu.h); bn_ops.cpp registers them as operators, with their autograd.
//
// The input is viewed as (N, C, S), S = 1 for (N, C), L for (N, C, L) and H·W for (N, C, H, W);
// every statistic is per channel over m = N·S values. Per channel:
//   forward   μ = Σx/m, σ² = Σ(x−μ)²/m (biased; see images_moments), ι = 1/√(σ²+ε),
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
// backward reads x and dy once for the two sums and once more for dx. Every pass walks memory in
// order (contiguous (N, C, S) input as its N·C planes, channels_last as rows of channels), in a
// fixed split among threads. A pass whose tensors take more bytes than the last-level cache (a quarter
// of it, where the output is stored a whole aligned vector at a time) writes its output (y, dx) with
// streaming stores, which skip reading the lines they overwrite and leave the cache to the input the
// next pass reads again (streams_output; bfloat16 output only in the avx512-bf16 build).
// Sums run in register vectors of acc_t (vec, the build's vector width) within a block, in double
// beyond: each lane adds about kValuesPerLane values before its block is merged. The moments take
// one pass: a block's Σ(x − p) and Σ(x − p)² around a pivot p, the running mean of the blocks
// before it, give its mean and Σ(x − mean)² (around()), and blocks are merged with Chan et al.'s
// update; bfloat16 planes in the avx512-bf16 build are summed by dot products instead (dot_sums).
// Every output is computed and stored a register vector at a time (write()).
//
// Precision: x (and y, dy, dx) may be float32, float64, bfloat16 or float16; every per-channel
// tensor (γ, β, running and saved statistics, dγ, dβ) and every arithmetic step is acc_t, the
// op-math type (float32 for the 16-bit types), as in torch's own mixed-precision kernel. bfloat16
// is read as its bits shifted into a float32 (vpmovzxwd and a shift) and written rounded to
// nearest even: by vcvtne2ps2bf16 in the avx512-bf16 build (subnormals flushed to zero),
// elsewhere by integer arithmetic on register vectors (pack_bf16), whose test that writes NaN as
// torch does (0x7FC0) the training passes leave out where their coefficients are finite (NaNFree).
// Layout: contiguous input is (N, C, S); channels_last (N, C, H, W) is read in place as N·H·W rows
// of C channels, i.e. (N·H·W, C, 1), and y and dx are allocated in x's layout. Rows (or images) are
// split among threads in fixed chunks whose partial sums are merged in order: the result does
// not depend on the number of threads.
//
// ISA: kernel_build.py compiles this file per machine with the vector flags of its CPU (AVX-512, AVX2 or
// none), which set the register vectors' width (kVecBytes: 64, 32 or 16 bytes); `isa()` reports which
// code the build holds.
#include "bn_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/EmptyTensor.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <cstring>
#include <fstream>
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


// ---------------------------------------------------------------------------------------------
// Register vectors for the sums: the compiler's vector extensions at the build's width (one zmm, ymm or
// xmm register per value), so that each build's sums run in registers and reach memory once per block.

#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
#elif defined(__AVX2__)
constexpr int kVecBytes = 32;
#else
constexpr int kVecBytes = 16;
#endif
template <typename A>
struct VecOf {
  typedef A type __attribute__((vector_size(kVecBytes)));
};
template <typename A>
using vec = typename VecOf<A>::type;
// One register vector's bytes, as stored: kWidth values of acc_t, or 2·kWidth bfloat16 packed from two
// vectors of float32. Passed by value, so that a computed vector goes to memory once, at its destination.
using Bytes = vec<int32_t>;

template <typename A>
inline Bytes bytes_of(vec<A> v) {
  Bytes b;
  std::memcpy(&b, &v, sizeof b);
  return b;
}
template <typename A>
constexpr int64_t kWidth = kVecBytes / static_cast<int64_t>(sizeof(A));
constexpr int64_t kUnroll = 4;  // register vectors per sum in a loop, to hide the adds' latency

// kWidth<A> values of p widened to A; bfloat16 bits are zero-extended and shifted into float32.
template <typename A, typename T>
inline vec<A> load(const T* p) {
  vec<A> v;
  if constexpr (std::is_same_v<T, A>) {
    std::memcpy(&v, p, sizeof v);
  } else if constexpr (std::is_same_v<T, uint16_t>) {
#if defined(__AVX512F__)
    const __m512i wide = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16);
    std::memcpy(&v, &wide, sizeof v);
#elif defined(__AVX2__)
    const __m256i wide = _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16);
    std::memcpy(&v, &wide, sizeof v);
#else
    typedef uint16_t bits_t __attribute__((vector_size(kVecBytes / 2)));
    typedef uint32_t wide_t __attribute__((vector_size(kVecBytes)));
    bits_t bits;
    std::memcpy(&bits, p, sizeof bits);
    const wide_t wide = __builtin_convertvector(bits, wide_t) << 16;
    std::memcpy(&v, &wide, sizeof v);
#endif
  } else {
    for (int64_t j = 0; j < kWidth<A>; ++j) v[j] = widen(p[j]);
  }
  return v;
}

template <typename A>
inline vec<A> splat(A a) {
  return vec<A>{} + a;
}

template <typename A>
inline double total(vec<A> v) {
  double t = 0;
  for (int64_t j = 0; j < kWidth<A>; ++j) t += v[j];
  return t;
}

// The pre-activation and the ReLU, shared by the forward and the backward's mask so that both
// see the same value, for one value (acc_t) or a register vector of them (vec<acc_t>). The mask is
// threshold_backward's: the gradient passes unless y ≤ 0.
template <typename U>
inline U pre(U a, U x, U k) {
  return a * x + k;
}
template <bool kRelu, typename U>
inline U activate(U v) {
  if constexpr (!kRelu) {
    return v;
  } else if constexpr (std::is_arithmetic_v<U>) {
    return v < U(0) ? U(0) : v;  // NaN stays NaN, as in torch.relu
  } else {
    return v < U{} ? U{} : v;
  }
}
template <bool kRelu, typename U>
inline U masked(U g, U a, U x, U k) {
  if constexpr (!kRelu) {
    return g;
  } else if constexpr (std::is_arithmetic_v<U>) {
    return pre(a, x, k) <= U(0) ? U(0) : g;
  } else {
    return pre(a, x, k) <= U{} ? U{} : g;
  }
}

// In the avx2 build, an output pass over bfloat16 (planes_run, rows_interleaved) takes 16 values at a time as
// two register vectors of float32, the even-indexed values and the odd ones (U = Interleaved<kOdd>): one load
// of 32 bytes, then a shift or a mask, where load() widens 8 values by vpmovzxwd and a shift; and
// pack_bf16_interleaved puts the two rounded halves back in order by one OR, where pack_bf16 narrows and
// permutes. Every value is the same arithmetic on the same coefficients either way.
template <bool kIsOdd>
struct Interleaved {
  static constexpr bool kOdd = kIsOdd;
};
template <typename U>
struct IsInterleaved : std::false_type {};
template <bool kOdd>
struct IsInterleaved<Interleaved<kOdd>> : std::true_type {};
#if defined(__AVX2__) && !defined(__AVX512F__)
constexpr bool kInterleavedBf16 = true;
template <bool kOdd>
inline vec<float> interleaved_half(const uint16_t* p) {
  const __m256i pairs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  const __m256i bits = kOdd ? _mm256_and_si256(pairs, _mm256_set1_epi32(static_cast<int>(0xFFFF0000u)))
                            : _mm256_slli_epi32(pairs, 16);
  vec<float> v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}
#else
constexpr bool kInterleavedBf16 = false;
template <bool kOdd>
inline vec<float> interleaved_half(const uint16_t*);  // never called: kInterleavedBf16 is false
#endif

// Element i of p widened to U's element type: one value when U is a scalar, the kWidth values from i on
// when U is a register vector.
template <typename U, typename P>
inline auto get(const P* p, int64_t i) {
  if constexpr (IsInterleaved<U>::value) {
    return interleaved_half<U::kOdd>(p + i);
  } else if constexpr (std::is_arithmetic_v<U>) {
    return static_cast<U>(widen(p[i]));
  } else {
    return load<std::remove_cv_t<std::remove_reference_t<decltype(std::declval<U>()[0])>>>(p + i);
  }
}

// a as U: itself, or a register vector of it.
template <typename U, typename A>
inline U broadcast(A a) {
  if constexpr (std::is_arithmetic_v<U>) {
    return a;
  } else {
    return U{} + a;
  }
}

// Non-temporal ("streaming") stores write whole cache lines to memory without first reading them
// into the cache, and leave the cache to the input that the next pass reads again. One register vector
// (kVecBytes) per call, at an address aligned to it.
#if defined(__x86_64__)
constexpr bool kCanStream = true;
inline void stream_vector(void* dst, Bytes v) {
#if defined(__AVX512F__)
  __m512i r;
  std::memcpy(&r, &v, sizeof r);
  _mm512_stream_si512(static_cast<__m512i*>(dst), r);
#elif defined(__AVX2__)
  __m256i r;
  std::memcpy(&r, &v, sizeof r);
  _mm256_stream_si256(static_cast<__m256i*>(dst), r);
#else
  __m128i r;
  std::memcpy(&r, &v, sizeof r);
  _mm_stream_si128(static_cast<__m128i*>(dst), r);
#endif
}
// Streamed stores are weakly ordered: each task fences them before other threads may read.
inline void fence_streams() { _mm_sfence(); }
#else
constexpr bool kCanStream = false;
inline void stream_vector(void* dst, Bytes v) { std::memcpy(dst, &v, kVecBytes); }
inline void fence_streams() {}
#endif

#if defined(__AVX2__) && !defined(__AVX512F__)
// v's values rounded to bfloat16 in 32-bit lanes, as bf16_bits rounds them: in each lane's low 16 bits (the
// rest zero), or with kHigh in its high 16 bits (the rest zero). Without kNaNs (NaNFree), NaN lanes are not
// made 0x7FC0: a NaN of the lanes' own arithmetic keeps its upper half's bits, and so stays a NaN.
template <bool kHigh, bool kNaNs>
inline __m256i rounded_bf16(vec<float> v) {
  __m256 f;
  std::memcpy(&f, &v, sizeof f);
  const __m256i u = _mm256_castps_si256(f);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i sum = _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), lsb);
  const __m256i bits = kHigh ? _mm256_and_si256(sum, _mm256_set1_epi32(static_cast<int>(0xFFFF0000u)))
                             : _mm256_srli_epi32(sum, 16);
  if constexpr (!kNaNs) return bits;
  const __m256i ordered = _mm256_castps_si256(_mm256_cmp_ps(f, f, _CMP_ORD_Q));
  return _mm256_blendv_epi8(_mm256_set1_epi32(kHigh ? 0x7FC00000 : 0x7FC0), bits, ordered);
}

// 16 bfloat16 in order from the even-indexed values and the odd ones (interleaved_half's two halves).
template <bool kNaNs>
inline Bytes pack_bf16_interleaved(vec<float> even, vec<float> odd) {
  const __m256i packed = _mm256_or_si256(rounded_bf16<false, kNaNs>(even), rounded_bf16<true, kNaNs>(odd));
  Bytes b;
  std::memcpy(&b, &packed, sizeof b);
  return b;
}
#else
template <bool kNaNs>
inline Bytes pack_bf16_interleaved(vec<float>, vec<float>);  // never called: kInterleavedBf16 is false
#endif

// Two register vectors of float32 as 2·kWidth bfloat16 (kVecBytes bytes), rounded to nearest even: by
// vcvtne2ps2bf16 in the avx512-bf16 build (which flushes subnormal inputs and outputs to zero), elsewhere
// by bf16_bits' integer arithmetic a vector at a time (subnormals kept, as torch's conversion keeps them),
// NaNs made 0x7FC0 as bf16_bits makes them unless !kNaNs (rounded_bf16).
template <bool kNaNs = true>
inline Bytes pack_bf16(vec<float> lo, vec<float> hi) {
#if defined(BNRUN_AVX512_BF16)
  __m512 l, h;
  std::memcpy(&l, &lo, sizeof l);
  std::memcpy(&h, &hi, sizeof h);
  const __m512bh packed = _mm512_cvtne2ps_pbh(h, l);
  Bytes b;
  std::memcpy(&b, &packed, sizeof b);
  return b;
#elif defined(__AVX2__) && !defined(__AVX512F__)
  // Both halves rounded in 32-bit lanes, then narrowed by one vpackusdw (exact: every lane is at most
  // 0xFFFF) and put in order by one vpermq, its lanes being interleaved per 128 bits; the generic code
  // below narrows each half apart and took a third more instructions.
  const __m256i packed =
      _mm256_permute4x64_epi64(_mm256_packus_epi32(rounded_bf16<false, kNaNs>(lo), rounded_bf16<false, kNaNs>(hi)),
                               0xD8);
  Bytes b;
  std::memcpy(&b, &packed, sizeof b);
  return b;
#else
  typedef uint32_t bits_t __attribute__((vector_size(kVecBytes)));
  typedef int32_t mask_t __attribute__((vector_size(kVecBytes)));
  typedef uint16_t half_t __attribute__((vector_size(kVecBytes / 2)));
  const vec<float> halves[2] = {lo, hi};
  half_t narrow[2];
  for (int h = 0; h < 2; ++h) {
    bits_t u;
    std::memcpy(&u, &halves[h], sizeof u);
    const bits_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    bits_t bits = rounded;
    if constexpr (kNaNs) {
      const mask_t nan = halves[h] != halves[h];
      bits = nan ? bits_t{} + 0x7FC0u : rounded;
    }
    narrow[h] = __builtin_convertvector(bits, half_t);
  }
  Bytes b;
  std::memcpy(&b, narrow, sizeof b);
  return b;
#endif
}

// A map's value function whose outputs hold no NaN but what its own arithmetic makes of an overflow (inf − inf):
// the training passes' when every coefficient is finite, which their sums show x and dy to be (nan_free()). Its
// bfloat16 outputs round without making NaNs 0x7FC0 (pack_bf16<false>), two of the seven operations per vector
// of the builds that round by integer arithmetic; the NaN that an overflow makes stays a NaN.
template <typename F>
struct NaNFree : F {};
template <typename F>
constexpr bool kExactNaNs = true;
template <typename F>
constexpr bool kExactNaNs<NaNFree<F>> = false;

// g as F is: NaNFree where F is, so that a function wrapping F's calls keeps its rounding.
template <typename F, typename G>
inline auto as_nans_of(const G& g) {
  if constexpr (kExactNaNs<F>) {
    return g;
  } else {
    return NaNFree<G>{g};
  }
}

template <typename T, typename acc_t>
inline T narrow(acc_t v) {
  if constexpr (std::is_same_v<T, uint16_t>) {
    return bf16_bits(v);
  } else {
    return static_cast<T>(v);
  }
}

// The first `bytes` (< kVecBytes) of src at dst: one masked store where AVX-512 has them.
inline void store_first(void* dst, const char* src, int64_t bytes) {
#if defined(__AVX512BW__)
  _mm512_mask_storeu_epi8(dst, (uint64_t(1) << bytes) - 1, _mm512_loadu_si512(src));
#else
  char* d = static_cast<char*>(dst);
  for (int64_t j = 0; j < bytes; ++j) d[j] = src[j];
#endif
}

// dst[i] = value(i) for i in [0, len), where value(U{}, i) gives one value (U = acc_t) or the kWidth from
// i on (U = vec<acc_t>). float32, float64 and bfloat16 outputs are computed and stored a register vector
// at a time (bfloat16 two vectors per store, through pack_bf16); with `stream`, and a piece of a few
// vectors, stored with streaming stores from the first aligned address on (inside a task of
// parallel_writes, which fences them). A piece shorter than a store (the head before that address, the
// tail) is computed as whole vectors too where value's inputs have `room` values from dst's index 0 on,
// and only its own values are stored; else one value at a time, as float16 always is.
template <typename T, typename acc_t, typename F>
inline void write(T* dst, int64_t len, const F& value, bool stream = false, int64_t room = 0) {
  using V = vec<acc_t>;
  constexpr int64_t W = kWidth<acc_t>;
  if constexpr (!std::is_same_v<T, acc_t> && !std::is_same_v<T, uint16_t>) {
    for (int64_t i = 0; i < len; ++i) dst[i] = static_cast<T>(value(acc_t{}, i));
  } else {
    constexpr int64_t kStep = kVecBytes / static_cast<int64_t>(sizeof(T));  // values per stored vector
    const auto pack = [&](int64_t i) -> Bytes {
      if constexpr (std::is_same_v<T, uint16_t>) {
        return pack_bf16<kExactNaNs<F>>(value(V{}, i), value(V{}, i + W));
      } else {
        return bytes_of<acc_t>(value(V{}, i));
      }
    };
    // values [i, i + count), count < kStep
    const auto part = [&](int64_t i, int64_t count) {
      if (i + kStep <= room) {
        const Bytes packed = pack(i);
        store_first(dst + i, reinterpret_cast<const char*>(&packed), count * static_cast<int64_t>(sizeof(T)));
      } else {
        for (int64_t j = i; j < i + count; ++j) dst[j] = narrow<T>(value(acc_t{}, j));
      }
    };
    const bool streamed = kCanStream && stream && len * static_cast<int64_t>(sizeof(T)) >= 4 * kVecBytes;
    int64_t i = 0;
    if (streamed) {
      const int64_t misaligned = static_cast<int64_t>(reinterpret_cast<uintptr_t>(dst) % kVecBytes);
      if (misaligned != 0) {
        i = std::min(len, (kVecBytes - misaligned) / static_cast<int64_t>(sizeof(T)));
        part(0, i);
      }
    }
    for (; i + kStep <= len; i += kStep) {
      const Bytes packed = pack(i);
      if (streamed) {
        stream_vector(dst + i, packed);
      } else {
        std::memcpy(dst + i, &packed, kVecBytes);
      }
    }
    if (i < len) part(i, len - i);
  }
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

// The size of cpu0's highest-level cache as Linux reports it (sysfs, as lscpu reads it; glibc's
// sysconf(_SC_LEVEL3_CACHE_SIZE) gave 320 MiB for the EPYC's 32 MiB L3 in a VM), else 32 MiB.
int64_t last_level_cache_bytes() {
  int64_t bytes = int64_t(32) << 20;
  for (int index = 0, level = 0;; ++index) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/";
    std::ifstream level_file(dir + "level"), size_file(dir + "size");
    int this_level = 0;
    int64_t size = 0;
    std::string unit;
    if (!(level_file >> this_level) || !(size_file >> size)) break;
    size_file >> unit;  // "K" or "M", read apart from the number ("32768K")
    const int64_t scale = unit == "M" ? int64_t(1) << 20 : unit == "K" ? int64_t(1) << 10 : 1;
    if (this_level > level && size > 0) {
      level = this_level;
      bytes = size * scale;
    }
  }
  return bytes;
}

// A pass whose tensors (inputs and output) take at least this many bytes streams its output (write's
// `stream`): the last-level cache's size, so that a pass whose tensors fit leaves its output in the cache
// for the next pass or layer. An output stored a whole aligned vector at a time streams from a quarter of it:
// rows of channels (channels_last, (N, C)), and (N, C, S) planes of at least a store's values, which
// planes_run writes as one run per task. Shorter planes start and end in partial stores, and a streamed
// store to a line that a cached store has just written costs more than it saves. On the AVX512-BF16 EPYC (32
// MiB of L3), with bn_layer.py's shapes (tensors of 3.2–12.8 MB): channels_last rows of 6.4 MB were 1.1×
// faster streamed than not. There, streaming planes from 8 MiB made a forward and backward up to 1.9× slower
// than from 32 MiB, when each plane was still written on its own, its ends in partial stores (before
// planes_run). On the AVX2-only EPYC, with planes written as runs, streaming them from 8 MiB made the
// float32 NCHW layer steps at (128, 64, 14, 14) and (128, 32, 28, 28) 1.4–1.6× faster.
std::atomic<int64_t> stream_threshold{last_level_cache_bytes()};

// bfloat16 output is streamed only where the CPU converts it (vcvtne2ps2bf16, the avx512-bf16 build). The
// other builds round it by integer arithmetic. In the avx2 build, run on the AVX512-BF16 EPYC with
// ATEN_CPU_CAPABILITY=avx2, streamed bfloat16 stores were slower than cached ones at every size measured:
// a bfloat16 layer step at bn_layer.py's channels_last shapes and at (512, 32, 28, 28), NCHW and
// channels_last, took 0.62–0.81× of its streamed time unstreamed, where float32 steps took 1.04–1.47×.
#if defined(BNRUN_AVX512_BF16)
constexpr bool kStreamsBf16 = true;
#else
constexpr bool kStreamsBf16 = false;
#endif

// Outputs of float32, float64 and bfloat16 are stored a register vector at a time, float16 a value at a time.
template <typename T>
constexpr bool kVectorStores = std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_same_v<T, uint16_t>;

// Whether planes_map writes (N, C, S) planes as runs of whole stores (planes_run): planes of a store's values or more.
template <typename T>
bool planes_in_runs(const Shape& shape) {
  return kVectorStores<T> && shape.s >= kVecBytes / static_cast<int64_t>(sizeof(T));
}

template <typename T>
bool streams_output(const Shape& shape, int64_t tensors) {
  if constexpr (std::is_same_v<T, uint16_t> && !kStreamsBf16) return false;
  const int64_t threshold = stream_threshold.load(std::memory_order_relaxed);
  return tensors * shape.n * shape.c * shape.s * static_cast<int64_t>(sizeof(T)) >=
         (shape.s == 1 || planes_in_runs<T>(shape) ? threshold / 4 : threshold);
}

// x itself when it is contiguous or channels_last, otherwise a contiguous copy.
Tensor dense(const Tensor& x) {
  return x.is_contiguous() || (x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast)) ? x : x.contiguous();
}

// t laid out as `like` (one of dense()'s two layouts), so that flat indices match.
Tensor laid_out_as(const Tensor& t, const Tensor& like) {
  return rows_of_channels(like) ? t.contiguous(at::MemoryFormat::ChannelsLast) : t.contiguous();
}

constexpr int64_t kWork = 32768;         // values per task worth waking a thread for
constexpr int64_t kValuesPerLane = 128;  // values a register vector's lane adds in acc_t before a merge in double

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The batch's split into chunks (one task each): `rows` rows of channels (S == 1) or images (S > 1, see
// image_chunks) per chunk, `count` chunks, fixed by the shape alone so that the sums do not depend on the
// number of threads. Rows of C channels come in whole blocks of kValuesPerLane rows, at least kWork values.
struct Chunks {
  int64_t rows, count;
};

Chunks chunks_of(const Shape& shape) {
  const int64_t rows = kValuesPerLane * std::max<int64_t>(1, ceil_div(kWork, kValuesPerLane * shape.c));
  return {rows, ceil_div(shape.n, rows)};
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

// A block's one-pass moments around a pivot p: its mean and Σ(x − mean)² from n values' Σ(x − p) and
// Σ(x − p)², in double, given 1/n. The pivot is the running mean of the blocks before (or, for the first block, a
// mean of its first values), so that x − p stays near the spread and the float sums lose no digits.
struct BlockMoments {
  double mean, m2;
};
inline BlockMoments around(double inv_n, double pivot, double s1, double s2) {
  return {pivot + s1 * inv_n, std::max(0.0, s2 - s1 * s1 * inv_n)};
}

// f(U, first channel) for tiles of U = kUnroll register vectors across a row of C channels, then one tile of
// the 1 to kUnroll − 1 vectors left (U a compile-time constant), then tail(channel) for the last C % kWidth.
template <typename acc_t, typename F, typename G>
inline void over_channels(int64_t channels, const F& f, const G& tail) {
  constexpr int64_t W = kWidth<acc_t>;
  int64_t c = 0;
  for (; c + kUnroll * W <= channels; c += kUnroll * W) f(std::integral_constant<int64_t, kUnroll>{}, c);
  const int64_t left = (channels - c) / W;
  if (left == 3) f(std::integral_constant<int64_t, 3>{}, c);
  if (left == 2) f(std::integral_constant<int64_t, 2>{}, c);
  if (left == 1) f(std::integral_constant<int64_t, 1>{}, c);
  for (c += left * W; c < channels; ++c) tail(c);
}

// at::parallel_for whose tasks fence their streamed stores, so that the output is whole when it
// returns. Each thread takes one contiguous range (a split that hands out pieces to whichever thread is free
// measured up to 2× slower on an output pass).
template <typename F>
void parallel_writes(int64_t begin, int64_t end, int64_t grain, const F& f) {
  at::parallel_for(begin, end, grain, [&](int64_t b, int64_t e) {
    f(b, e);
    fence_streams();
  });
}

// ---------------------------------------------------------------------------------------------
// Contiguous (N, C, S), S > 1: the N·C planes of S values, in memory order. Images are split into
// fixed chunks (one task each); in a chunk, each plane's sums run in register vectors and are added
// to its channel's, held in a buffer of C vectors per sum, which a block of images fills before it
// is merged in double. Every pass is one sequential stream, the hardware prefetchers' best case (a
// walk per channel jumps C·S values between planes of S, and measured 10–30 % slower).

// Images per block: a vector lane of a channel's sums adds about kValuesPerLane values before the block
// is merged in double.
template <typename acc_t>
int64_t image_block(const Shape& shape) {
  return std::max<int64_t>(1, kValuesPerLane * kWidth<acc_t> / shape.s);
}

// Images per chunk (one task): whole blocks, at least kWork values, fixed by the shape alone, so that the
// sums do not depend on the number of threads.
template <typename acc_t>
Chunks image_chunks(const Shape& shape) {
  const int64_t block = image_block<acc_t>(shape);
  const int64_t images = block * std::max<int64_t>(1, ceil_div(kWork, block * shape.c * shape.s));
  return {images, ceil_div(shape.n, images)};
}

// A whole register vector of a plane, as over_plane passes it.
struct Whole {};

// v with the lanes from `valid` on set to zero (the values over_plane read past the plane's end).
template <typename A, typename N>
inline vec<A> keep(vec<A> v, N valid) {
  if constexpr (std::is_same_v<N, Whole>) {
    return v;
  } else {
    using M = decltype(v < v);
    M lane;
    for (int64_t j = 0; j < kWidth<A>; ++j) lane[j] = j;
    return lane < static_cast<decltype(lane[0] + 0)>(valid) ? v : vec<A>{};
  }
}

// f(u, i, valid) over a plane of `len` values: groups of kUnroll whole vectors (u = 0 .. kUnroll − 1, valid =
// Whole{}), single whole vectors (u = 0), then the last len % kWidth values as one vector (u = 0, valid = their
// count) whose other lanes are read past the plane, where the tensor has `room` values from the plane's
// start; else (its last plane) one value at a time through tail(i).
template <typename acc_t, typename F, typename G>
inline void over_plane(int64_t len, int64_t room, const F& f, const G& tail) {
  constexpr int64_t W = kWidth<acc_t>;
  int64_t i = 0;
  for (; i + kUnroll * W <= len; i += kUnroll * W)
#pragma GCC unroll 4
    for (int64_t u = 0; u < kUnroll; ++u) f(u, i + u * W, Whole{});
  for (; i + W <= len; i += W) f(0, i, Whole{});
  if (i < len && i + W <= room) {
    f(0, i, len - i);
    return;
  }
  for (; i < len; ++i) tail(i);
}

// bfloat16 sums by dot products, in the avx512-bf16 build: vdpbf16ps multiplies bfloat16 pairs exactly into
// float32 and adds both products to a float32 lane, so that Σx (as x·1) and Σx² cost one instruction per 32
// values each, where the widened sums around a pivot cost five per 16. Without a pivot, Σ(x − mean)² =
// Σx² − (Σx)²/n cancels where the mean is large against the spread: a block whose Σ(x − mean)² is under
// 1/kCancels of its Σx² (|mean| above about 3.9 standard deviations) is summed again around its mean, and the
// gradient sums take the pivoted loops when a channel's |μ|·ι is above √kCancels.
constexpr double kCancels = 16;

#if defined(BNRUN_AVX512_BF16)
template <typename T>
constexpr bool kDots = std::is_same_v<T, uint16_t>;

// Σa and Σa·b over `len` bfloat16 values, added to sum_a and sum_ab (a pair of values per float32 lane); the
// last len % 32 values are loaded masked, their zeros adding nothing.
inline void dot_sums(const uint16_t* a, const uint16_t* b, int64_t len, vec<float>& sum_a, vec<float>& sum_ab) {
  const __m512bh ones = (__m512bh)_mm512_set1_epi16(0x3F80);
  __m512 sa[kUnroll], sab[kUnroll];
  for (int64_t u = 0; u < kUnroll; ++u) sa[u] = sab[u] = _mm512_setzero_ps();
  const auto add = [&](int64_t u, __m512i va, __m512i vb) {
    sa[u] = _mm512_dpbf16_ps(sa[u], (__m512bh)va, ones);
    sab[u] = _mm512_dpbf16_ps(sab[u], (__m512bh)va, (__m512bh)vb);
  };
  int64_t i = 0;
  for (; i + kUnroll * 32 <= len; i += kUnroll * 32)
#pragma GCC unroll 4
    for (int64_t u = 0; u < kUnroll; ++u) add(u, _mm512_loadu_si512(a + i + 32 * u), _mm512_loadu_si512(b + i + 32 * u));
  for (; i + 32 <= len; i += 32) add(0, _mm512_loadu_si512(a + i), _mm512_loadu_si512(b + i));
  if (i < len) {
    const __mmask32 part = static_cast<__mmask32>((uint64_t(1) << (len - i)) - 1);
    add(1, _mm512_maskz_loadu_epi16(part, a + i), _mm512_maskz_loadu_epi16(part, b + i));
  }
  const __m512 ta = _mm512_add_ps(_mm512_add_ps(sa[0], sa[1]), _mm512_add_ps(sa[2], sa[3]));
  const __m512 tab = _mm512_add_ps(_mm512_add_ps(sab[0], sab[1]), _mm512_add_ps(sab[2], sab[3]));
  vec<float> va, vab;
  std::memcpy(&va, &ta, sizeof va);
  std::memcpy(&vab, &tab, sizeof vab);
  sum_a += va;
  sum_ab += vab;
}

// Where row_pair_dot_sums finds each channel of a group of 32: channel 8L + i (L the 128-bit lane) is lo's
// lane 4L + i for i < 4, else hi's lane 4L + i − 4 (hi's lanes numbered from 16, as _mm512_permutex2var_ps takes
// them); index[0] covers channels 0-15, index[1] channels 16-31.
struct RowPairLanes {
  alignas(64) int32_t index[2][16];
};
constexpr RowPairLanes kRowPairLanes = [] {
  RowPairLanes lanes{};
  for (int channel = 0; channel < 32; ++channel) {
    const int lane = channel / 8, i = channel % 8;
    lanes.index[channel / 16][channel % 16] = i < 4 ? 4 * lane + i : 16 + 4 * lane + i - 4;
  }
  return lanes;
}();

// Rows of C bfloat16 channels (channels_last, (N, C)) by dot products, two rows at a time: unpacklo and
// unpackhi interleave rows r and r + 1 channel by channel, so that each float32 lane adds one channel's two
// values. The channels of a register vector come in groups of 32 (the last group of an odd U: 16, zero-
// extended); lo's lanes hold channels 8L..8L+3 and hi's 8L+4..8L+7 of each 128-bit lane L, put back in channel
// order once per block. Σa over rows [first, last) and Σa·b (b = a for the moments: kSame) of the channels
// c0 .. c0 + U·16 − 1 are added to sum_a[u] and sum_ab[u]; an odd last row is paired with zeros. Two sets of
// accumulators take alternate pairs of rows, so that the dot products' latency overlaps.
template <int64_t U, bool kSame>
inline void row_pair_dot_sums(const uint16_t* a, const uint16_t* b, int64_t C, int64_t c0, int64_t first,
                              int64_t last, vec<float> (&sum_a)[U], vec<float> (&sum_ab)[U]) {
  constexpr int64_t P = (U + 1) / 2;  // groups of 32 channels
  const __m512bh ones = (__m512bh)_mm512_set1_epi16(0x3F80);
  __m512 sa[2][P][2], sab[2][P][2];  // [set][group][lo, hi]
  for (int set = 0; set < 2; ++set)
    for (int64_t g = 0; g < P; ++g)
      for (int h = 0; h < 2; ++h) sa[set][g][h] = sab[set][g][h] = _mm512_setzero_ps();
  const auto row = [&](const uint16_t* p, int64_t r, int64_t g) {
    const uint16_t* at = p + r * C + c0 + 32 * g;
    if (2 * g + 1 < U) return _mm512_loadu_si512(at);
    return _mm512_zextsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(at)));
  };
  const auto add = [&](int set, int64_t r, bool pair) {
#pragma GCC unroll 2
    for (int64_t g = 0; g < P; ++g) {
      const __m512i a0 = row(a, r, g), a1 = pair ? row(a, r + 1, g) : _mm512_setzero_si512();
      const __m512i alo = _mm512_unpacklo_epi16(a0, a1), ahi = _mm512_unpackhi_epi16(a0, a1);
      __m512i blo = alo, bhi = ahi;
      if constexpr (!kSame) {
        const __m512i b0 = row(b, r, g), b1 = pair ? row(b, r + 1, g) : _mm512_setzero_si512();
        blo = _mm512_unpacklo_epi16(b0, b1);
        bhi = _mm512_unpackhi_epi16(b0, b1);
      }
      sa[set][g][0] = _mm512_dpbf16_ps(sa[set][g][0], (__m512bh)alo, ones);
      sa[set][g][1] = _mm512_dpbf16_ps(sa[set][g][1], (__m512bh)ahi, ones);
      sab[set][g][0] = _mm512_dpbf16_ps(sab[set][g][0], (__m512bh)alo, (__m512bh)blo);
      sab[set][g][1] = _mm512_dpbf16_ps(sab[set][g][1], (__m512bh)ahi, (__m512bh)bhi);
    }
  };
  int64_t r = first;
  for (; r + 4 <= last; r += 4) {
    add(0, r, true);
    add(1, r + 2, true);
  }
  for (; r + 2 <= last; r += 2) add(0, r, true);
  if (r < last) add(1, r, false);
  for (int64_t g = 0; g < P; ++g) {
    const __m512 lo = _mm512_add_ps(sa[0][g][0], sa[1][g][0]), hi = _mm512_add_ps(sa[0][g][1], sa[1][g][1]);
    const __m512 lo_ab = _mm512_add_ps(sab[0][g][0], sab[1][g][0]);
    const __m512 hi_ab = _mm512_add_ps(sab[0][g][1], sab[1][g][1]);
    for (int half = 0; half < 2 && 2 * g + half < U; ++half) {
      const __m512i index = _mm512_load_si512(kRowPairLanes.index[half]);
      const __m512 va = _mm512_permutex2var_ps(lo, index, hi), vab = _mm512_permutex2var_ps(lo_ab, index, hi_ab);
      vec<float> ta, tab;
      std::memcpy(&ta, &va, sizeof ta);
      std::memcpy(&tab, &vab, sizeof tab);
      sum_a[2 * g + half] += ta;
      sum_ab[2 * g + half] += tab;
    }
  }
}
#else
template <typename T>
constexpr bool kDots = false;

// Never called (kDots is false): declared so that the templates that test kDots compile in every build.
void dot_sums(const uint16_t* a, const uint16_t* b, int64_t len, vec<float>& sum_a, vec<float>& sum_ab);
template <int64_t U, bool kSame>
void row_pair_dot_sums(const uint16_t* a, const uint16_t* b, int64_t C, int64_t c0, int64_t first, int64_t last,
                       vec<float> (&sum_a)[U], vec<float> (&sum_ab)[U]);
#endif

template <typename acc_t>
inline vec<acc_t> fold(const vec<acc_t> (&v)[kUnroll]) {
  return (v[0] + v[1]) + (v[2] + v[3]);
}

// Two sums per channel over a block of images: register vectors (v0, v1) and the values over_plane takes
// one at a time (t0, t1).
template <typename acc_t>
struct ChannelSums {
  std::vector<vec<acc_t>> v0, v1;
  std::vector<acc_t> t0, t1;
  explicit ChannelSums(int64_t channels) : v0(channels), v1(channels), t0(channels), t1(channels) {}
  void clear() {
    std::fill(v0.begin(), v0.end(), vec<acc_t>{});
    std::fill(v1.begin(), v1.end(), vec<acc_t>{});
    std::fill(t0.begin(), t0.end(), acc_t(0));
    std::fill(t1.begin(), t1.end(), acc_t(0));
  }
  double first(int64_t c) const { return total<acc_t>(v0[c]) + t0[c]; }
  double second(int64_t c) const { return total<acc_t>(v1[c]) + t1[c]; }
};

// Σ(x − p) and Σ(x − p)² over a plane of S values at x, added to s1 and s2 (register vectors) and to t1 and t2
// (the values over_plane takes one at a time); the tensor has `room` values from x on.
template <typename T, typename acc_t>
inline void plane_sums_around(const T* x, int64_t S, int64_t room, acc_t p, vec<acc_t>& s1, vec<acc_t>& s2, acc_t& t1,
                              acc_t& t2) {
  using V = vec<acc_t>;
  const V vp = splat(p);
  V a1[kUnroll] = {}, a2[kUnroll] = {};
  over_plane<acc_t>(S, room, [&](int64_t u, int64_t i, auto valid) {
    const V d = keep<acc_t>(load<acc_t>(x + i) - vp, valid);
    a1[u] += d;
    a2[u] += d * d;
  }, [&](int64_t i) {
    const acc_t d = acc_t(widen(x[i])) - p;
    t1 += d;
    t2 += d * d;
  });
  s1 += fold<acc_t>(a1);
  s2 += fold<acc_t>(a2);
}

// Mean and Σ(x − mean)² of channel c over images [b0, b1), summed around the pivot p.
template <typename T, typename acc_t>
BlockMoments block_around(const Shape& shape, const T* px, int64_t c, int64_t b0, int64_t b1, acc_t p) {
  vec<acc_t> s1{}, s2{};
  acc_t t1 = 0, t2 = 0;
  for (int64_t n = b0; n < b1; ++n) {
    const int64_t base = (n * shape.c + c) * shape.s;
    plane_sums_around<T, acc_t>(px + base, shape.s, shape.n * shape.c * shape.s - base, p, s1, s2, t1, t2);
  }
  return around(1.0 / static_cast<double>((b1 - b0) * shape.s), static_cast<double>(p), total<acc_t>(s1) + t1,
                total<acc_t>(s2) + t2);
}

// Per-channel mean and Σ(x − μ)² over images [n0, n1) in one pass: blocks of image_block images summed
// around the running mean in register vectors per channel, merged in double (around()). bfloat16 in the
// avx512-bf16 build sums x and x² by dot_sums instead, and sums a block again around its mean where those
// sums cancel (kCancels).
template <typename T, typename acc_t>
void images_moments(const Shape& shape, int64_t n0, int64_t n1, const T* px, double* mean, double* squares) {
  const int64_t C = shape.c, S = shape.s, block = image_block<acc_t>(shape), numel = shape.n * C * S;
  ChannelSums<acc_t> sums(C);  // Σ(x − p) and Σ(x − p)², or Σx and Σx² (kDots)
  std::vector<acc_t> pivot(C);
  const int64_t head = std::min<int64_t>(S, 16);
  for (int64_t c = 0; c < C; ++c) {
    double first = 0;
    for (int64_t i = 0; i < head; ++i) first += widen(px[(n0 * C + c) * S + i]);
    pivot[c] = static_cast<acc_t>(first / static_cast<double>(head));
    mean[c] = squares[c] = 0;
  }
  double count = 0;
  for (int64_t b0 = n0; b0 < n1; b0 += block) {
    const int64_t b1 = std::min(n1, b0 + block);
    sums.clear();
    for (int64_t n = b0; n < b1; ++n)
      for (int64_t c = 0; c < C; ++c) {
        const int64_t base = (n * C + c) * S;
        if constexpr (kDots<T>) {
          dot_sums(px + base, px + base, S, sums.v0[c], sums.v1[c]);
        } else {
          plane_sums_around<T, acc_t>(px + base, S, numel - base, pivot[c], sums.v0[c], sums.v1[c], sums.t0[c],
                                      sums.t1[c]);
        }
      }
    const double values = static_cast<double>((b1 - b0) * S), inv_values = 1.0 / values;
    const Merge merge(count, values);
    for (int64_t c = 0; c < C; ++c) {
      BlockMoments b;
      if constexpr (kDots<T>) {
        b = around(inv_values, 0.0, sums.first(c), sums.second(c));
        if (b.m2 * kCancels < sums.second(c)) {
          b = block_around<T, acc_t>(shape, px, c, b0, b1, static_cast<acc_t>(b.mean));
        }
      } else {
        b = around(inv_values, static_cast<double>(pivot[c]), sums.first(c), sums.second(c));
      }
      merge(mean[c], squares[c], b.mean, b.m2);
      pivot[c] = static_cast<acc_t>(mean[c]);
    }
    count += values;
  }
}

// Σg and Σg·(x − μ) per channel over images [n0, n1), added to the double sums: blocks of image_block images
// in register vectors per channel; with `dots` (bfloat16 without the ReLU, kDots), Σg and Σg·x by dot_sums.
template <bool kRelu, typename T, typename acc_t>
void images_gradient_sums(const Shape& shape, int64_t n0, int64_t n1, const T* pdy, const T* px, const acc_t* mu,
                          const acc_t* a, const acc_t* k, bool dots, double* sum_dy, double* sum_dy_centered) {
  using V = vec<acc_t>;
  const int64_t C = shape.c, S = shape.s, block = image_block<acc_t>(shape), numel = shape.n * C * S;
  ChannelSums<acc_t> sums(C);  // Σg and Σg·(x − μ), or Σg and Σg·x (dots)
  for (int64_t b0 = n0; b0 < n1; b0 += block) {
    const int64_t b1 = std::min(n1, b0 + block);
    sums.clear();
    for (int64_t n = b0; n < b1; ++n)
      for (int64_t c = 0; c < C; ++c) {
        const int64_t base = (n * C + c) * S;
        const T *dy = pdy + base, *x = px + base;
        if constexpr (kDots<T> && !kRelu) {
          if (dots) {
            dot_sums(dy, x, S, sums.v0[c], sums.v1[c]);
            continue;
          }
        }
        const V vmu = splat(mu[c]), va = splat(a[c]), vk = splat(k[c]);
        V g0[kUnroll] = {}, g1[kUnroll] = {};
        acc_t e0 = 0, e1 = 0;
        over_plane<acc_t>(S, numel - base, [&](int64_t u, int64_t i, auto valid) {
          const V xv = load<acc_t>(x + i);
          const V g = keep<acc_t>(masked<kRelu>(load<acc_t>(dy + i), va, xv, vk), valid);
          g0[u] += g;
          g1[u] += g * (xv - vmu);
        }, [&](int64_t i) {
          const acc_t xv = widen(x[i]);
          const acc_t g = masked<kRelu>(acc_t(widen(dy[i])), a[c], xv, k[c]);
          e0 += g;
          e1 += g * (xv - mu[c]);
        });
        sums.v0[c] += fold<acc_t>(g0);
        sums.v1[c] += fold<acc_t>(g1);
        sums.t0[c] += e0;
        sums.t1[c] += e1;
      }
    for (int64_t c = 0; c < C; ++c) {
      const double g = sums.first(c), gx = sums.second(c);
      sum_dy[c] += g;
      sum_dy_centered[c] += dots ? gx - static_cast<double>(mu[c]) * g : gx;
    }
  }
}

// The lanes [0, n) of a and the others of b (n may be ≤ 0 or ≥ kWidth).
template <typename A>
inline vec<A> first_lanes(vec<A> a, vec<A> b, int64_t n) {
  using M = decltype(a < a);
  M lane;
  for (int64_t j = 0; j < kWidth<A>; ++j) lane[j] = j;
  return lane < static_cast<decltype(lane[0] + 0)>(std::clamp<int64_t>(n, 0, kWidth<A>)) ? a : b;
}

// out[i] = fn(V{}, coefficients of i's plane, i) over planes [p0, p1) of S ≥ a store's values, walked as one run
// of memory a whole store at a time from the first aligned address: a store that spans two planes takes each
// lane's coefficients from its own plane. Walked plane by plane instead, planes whose bytes are not a multiple of
// a store (S = 196 float32) each start off the stores' alignment, so that half their stores split a cache line,
// and end in a partial store. Each output is the same arithmetic on the same coefficients either way. Only
// the values before the first aligned address and after the last whole store are stored in part (write()).
template <typename T, typename acc_t, size_t K, typename F>
void planes_run(const Shape& shape, const std::array<const acc_t*, K>& coefficients, T* out, int64_t p0, int64_t p1,
                bool stream, const F& fn) {
  using V = vec<acc_t>;
  constexpr int64_t W = kWidth<acc_t>;
  constexpr int64_t kStep = kVecBytes / static_cast<int64_t>(sizeof(T));  // values per store
  constexpr int64_t kParts = kStep / W;                                  // register vectors per store
  const int64_t S = shape.s, C = shape.c, numel = shape.n * C * S;
  acc_t q[K];
  V vq[K], next[K];
  const auto take = [&](int64_t c, acc_t (&qs)[K], V (&vs)[K]) {
    for (size_t k = 0; k < K; ++k) {
      qs[k] = coefficients[k][c];
      vs[k] = splat(qs[k]);
    }
  };
  // values [i, i + len) of one plane, in part stores (write())
  const auto piece = [&](int64_t i, int64_t len) {
    write<T, acc_t>(out + i, len, as_nans_of<F>([&](auto u, int64_t s) {
      if constexpr (std::is_same_v<decltype(u), V>) {
        return fn(u, vq, i + s);
      } else {
        return fn(u, q, i + s);
      }
    }), false, numel - i);
  };
  bool streamed = false;  // set once the run is aligned
  const auto put = [&](int64_t i, Bytes packed) {
    if (streamed) {
      stream_vector(out + i, packed);
    } else {
      std::memcpy(out + i, &packed, kVecBytes);
    }
  };
  int64_t c = p0 % C, i = p0 * S;
  take(c, q, vq);
  const int64_t misaligned = static_cast<int64_t>(reinterpret_cast<uintptr_t>(out + i) % kVecBytes);
  if (misaligned != 0 && misaligned % static_cast<int64_t>(sizeof(T)) == 0) {
    const int64_t head = (kVecBytes - misaligned) / static_cast<int64_t>(sizeof(T));
    piece(i, head);
    i += head;
  }
  streamed = stream && reinterpret_cast<uintptr_t>(out + i) % kVecBytes == 0;
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t plane_end = (p + 1) * S;
    for (; i + kStep <= plane_end; i += kStep) {
      if constexpr (kParts == 2 && kInterleavedBf16) {
        put(i, pack_bf16_interleaved<kExactNaNs<F>>(fn(Interleaved<false>{}, vq, i), fn(Interleaved<true>{}, vq, i)));
      } else if constexpr (kParts == 2) {
        put(i, pack_bf16<kExactNaNs<F>>(fn(V{}, vq, i), fn(V{}, vq, i + W)));
      } else {
        put(i, bytes_of<acc_t>(fn(V{}, vq, i)));
      }
    }
    c = c + 1 == C ? 0 : c + 1;
    if (p + 1 == p1) {
      if (i < plane_end) piece(i, plane_end - i);
      break;
    }
    acc_t next_q[K];
    take(c, next_q, next);
    if (i < plane_end) {  // a store over this plane's last values and the next plane's first
      V lanes[kParts][K];
      const int64_t left = plane_end - i;  // this plane's values in the store
      for (int64_t part = 0; part < kParts; ++part) {
        // lanes of this plane: the first `left` of the store, or of its even-indexed (odd-indexed) values
        const int64_t own = kParts == 2 && kInterleavedBf16 ? (left + 1 - part) / 2 : left - part * W;
        for (size_t k = 0; k < K; ++k) lanes[part][k] = first_lanes<acc_t>(vq[k], next[k], own);
      }
      if constexpr (kParts == 2 && kInterleavedBf16) {
        put(i, pack_bf16_interleaved<kExactNaNs<F>>(fn(Interleaved<false>{}, lanes[0], i),
                                                    fn(Interleaved<true>{}, lanes[1], i)));
      } else if constexpr (kParts == 2) {
        put(i, pack_bf16<kExactNaNs<F>>(fn(V{}, lanes[0], i), fn(V{}, lanes[1], i + W)));
      } else {
        put(i, bytes_of<acc_t>(fn(V{}, lanes[0], i)));
      }
      i += kStep;
    }
    for (size_t k = 0; k < K; ++k) {
      q[k] = next_q[k];
      vq[k] = next[k];
    }
  }
}

// out[p·S + s] = value(U{}, q, p·S + s) over the planes p in memory order, in parallel, where q holds the K
// coefficients of the plane's channel (coefficients[i][c]) broadcast to U, as rows_map's value takes them:
// planes of at least a store's values as one run (planes_run), shorter ones one at a time.
template <typename T, typename acc_t, size_t K, typename F>
void planes_map(const Shape& shape, const std::array<const acc_t*, K>& coefficients, T* out, int64_t tensors,
                const F& value) {
  using V = vec<acc_t>;
  const int64_t planes = shape.n * shape.c, grain = std::max<int64_t>(1, kWork / shape.s), numel = planes * shape.s;
  const bool stream = kCanStream && streams_output<T>(shape, tensors);
  const bool run = planes_in_runs<T>(shape);
  parallel_writes(0, planes, grain, [&](int64_t p0, int64_t p1) {
    const F fn = value;  // a copy the task owns, whose pointers the stores cannot alias, so kept in registers
    if constexpr (kVectorStores<T>) {
      if (run) {
        planes_run<T, acc_t, K>(shape, coefficients, out, p0, p1, stream, fn);
        return;
      }
    }
    for (int64_t p = p0, c = p0 % shape.c; p < p1; ++p, c = c + 1 == shape.c ? 0 : c + 1) {
      const int64_t base = p * shape.s;
      acc_t q[K];
      V vq[K];
      for (size_t i = 0; i < K; ++i) {
        q[i] = coefficients[i][c];
        vq[i] = splat(q[i]);
      }
      write<T, acc_t>(out + base, shape.s, as_nans_of<F>([&](auto u, int64_t s) {
        if constexpr (std::is_same_v<decltype(u), V>) {
          return fn(u, vq, base + s);
        } else {
          return fn(u, q, base + s);
        }
      }), stream, numel - base);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Rows of C channels (S == 1: (N, C) and channels_last): vectorized across the channels.

// Σ(x − p) and Σ(x − p)² of the U·kWidth channels from c0 over rows [first, last) of C channels, with the
// channels' pivots at pivot, added to s1[u] and s2[u].
template <typename T, typename acc_t, int64_t U>
inline void rows_sums_around(const T* px, int64_t C, int64_t c0, int64_t first, int64_t last, const acc_t* pivot,
                             vec<acc_t> (&s1)[U], vec<acc_t> (&s2)[U]) {
  using V = vec<acc_t>;
  constexpr int64_t W = kWidth<acc_t>;
  V p[U];
#pragma GCC unroll 4
  for (int64_t u = 0; u < U; ++u) p[u] = load<acc_t>(pivot + u * W);
  for (int64_t r = first; r < last; ++r) {
    const T* x = px + r * C + c0;
#pragma GCC unroll 4
    for (int64_t u = 0; u < U; ++u) {
      const V d = load<acc_t>(x + u * W) - p[u];
      s1[u] += d;
      s2[u] += d * d;
    }
  }
}

// Mean and Σ(x − mean)² of channel c over rows [first, last) of C channels, summed around the pivot p.
template <typename T, typename acc_t>
BlockMoments rows_around(const T* px, int64_t C, int64_t c, int64_t first, int64_t last, acc_t p) {
  acc_t t1 = 0, t2 = 0;
  for (int64_t r = first; r < last; ++r) {
    const acc_t d = acc_t(widen(px[r * C + c])) - p;
    t1 += d;
    t2 += d * d;
  }
  return around(1.0 / static_cast<double>(last - first), static_cast<double>(p), t1, t2);
}

// Mean and Σ(x − μ)² per channel over rows [r0, r1) in one pass: blocks of kValuesPerLane rows summed
// around the running mean in register vectors across the channels, merged in double (around()). bfloat16 in
// the avx512-bf16 build sums x and x² by row_pair_dot_sums instead (the last C % kWidth channels as before),
// and sums a block again around its mean where those sums cancel (kCancels).
template <typename T, typename acc_t>
void rows_moments(const Shape& shape, int64_t r0, int64_t r1, const T* px, double* mean, double* squares) {
  using V = vec<acc_t>;
  constexpr int64_t W = kWidth<acc_t>;
  const int64_t C = shape.c, head = std::min<int64_t>(8, r1 - r0);
  const int64_t dotted = kDots<T> ? C - C % W : 0;  // channels summed by row_pair_dot_sums, without a pivot
  std::vector<acc_t> pivot(C), s1(C), s2(C);
  std::fill(mean, mean + C, 0.0);
  std::fill(squares, squares + C, 0.0);
  for (int64_t r = r0; r < r0 + head; ++r)
    for (int64_t c = 0; c < C; ++c) mean[c] += widen(px[r * C + c]);
  for (int64_t c = 0; c < C; ++c) pivot[c] = static_cast<acc_t>(mean[c] / static_cast<double>(head));
  std::fill(mean, mean + C, 0.0);
  double count = 0;
  for (int64_t first = r0; first < r1; first += kValuesPerLane) {
    const int64_t last = std::min(r1, first + kValuesPerLane);
    over_channels<acc_t>(C, [&](auto tile, int64_t c0) {
      constexpr int64_t U = decltype(tile)::value;
      V a1[U] = {}, a2[U] = {};
      if constexpr (kDots<T>) {
        row_pair_dot_sums<U, true>(px, px, C, c0, first, last, a1, a2);  // Σx and Σx², no pivot
      } else {
        rows_sums_around<T, acc_t, U>(px, C, c0, first, last, pivot.data() + c0, a1, a2);
      }
      for (int64_t u = 0; u < U; ++u) {
        std::memcpy(s1.data() + c0 + u * W, &a1[u], sizeof(V));
        std::memcpy(s2.data() + c0 + u * W, &a2[u], sizeof(V));
      }
    }, [&](int64_t c) {
      acc_t t1 = 0, t2 = 0;
      for (int64_t r = first; r < last; ++r) {
        const acc_t d = acc_t(widen(px[r * C + c])) - pivot[c];
        t1 += d;
        t2 += d * d;
      }
      s1[c] = t1;
      s2[c] = t2;
    });
    const double n = static_cast<double>(last - first), inv_n = 1.0 / n;
    const Merge merge(count, n);
    for (int64_t c = 0; c < C; ++c) {
      BlockMoments b;
      if (c < dotted) {
        b = around(inv_n, 0.0, s1[c], s2[c]);
        if (b.m2 * kCancels < s2[c]) b = rows_around<T, acc_t>(px, C, c, first, last, static_cast<acc_t>(b.mean));
      } else {
        b = around(inv_n, static_cast<double>(pivot[c]), s1[c], s2[c]);
      }
      merge(mean[c], squares[c], b.mean, b.m2);
      pivot[c] = static_cast<acc_t>(mean[c]);
    }
    count += n;
  }
}

// Per-channel mean and Σ(x − μ)² over the batch: fixed chunks (of rows, or of images) in parallel, merged in
// order.
template <typename T, typename acc_t>
void batch_moments(const Shape& shape, const T* px, double* mean, double* squares) {
  const Chunks chunks = shape.s == 1 ? chunks_of(shape) : image_chunks<acc_t>(shape);
  const int64_t C = shape.c;
  std::vector<double> part_mean(chunks.count * C), part_m2(chunks.count * C);
  at::parallel_for(0, chunks.count, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const int64_t first = i * chunks.rows, last = std::min(shape.n, (i + 1) * chunks.rows);
      if (shape.s == 1) {
        rows_moments<T, acc_t>(shape, first, last, px, &part_mean[i * C], &part_m2[i * C]);
      } else {
        images_moments<T, acc_t>(shape, first, last, px, &part_mean[i * C], &part_m2[i * C]);
      }
    }
  });
  std::copy(part_mean.begin(), part_mean.begin() + C, mean);
  std::copy(part_m2.begin(), part_m2.begin() + C, squares);
  const double per_row = static_cast<double>(shape.s);  // values per channel in a row (S == 1) or an image
  for (int64_t i = 1; i < chunks.count; ++i) {
    const double count = static_cast<double>(i * chunks.rows) * per_row;
    const Merge merge(count, static_cast<double>(std::min(shape.n, (i + 1) * chunks.rows)) * per_row - count);
    for (int64_t c = 0; c < C; ++c) merge(mean[c], squares[c], part_mean[i * C + c], part_m2[i * C + c]);
  }
}

// Stores U register vectors of acc_t at dst as T: bfloat16 two vectors per store (pack_bf16), an odd
// last one as half a store; streamed where `stream` and the address is aligned (inside a task of
// parallel_writes, which fences them); float16 a value at a time.
template <typename T, int64_t U, typename acc_t, bool kNaNs = true>
inline void store_vectors(T* dst, const vec<acc_t> (&v)[U], bool stream) {
  constexpr int64_t W = kWidth<acc_t>;
  const auto put = [stream](void* to, Bytes packed) {
    if (stream && reinterpret_cast<uintptr_t>(to) % kVecBytes == 0) {
      stream_vector(to, packed);
    } else {
      std::memcpy(to, &packed, kVecBytes);
    }
  };
  if constexpr (std::is_same_v<T, acc_t>) {
    for (int64_t u = 0; u < U; ++u) put(dst + u * W, bytes_of<acc_t>(v[u]));
  } else if constexpr (std::is_same_v<T, uint16_t>) {
    for (int64_t u = 0; u + 1 < U; u += 2) put(dst + u * W, pack_bf16<kNaNs>(v[u], v[u + 1]));
    if constexpr (U % 2 == 1) {
      const Bytes packed = pack_bf16<kNaNs>(v[U - 1], v[U - 1]);
      std::memcpy(dst + (U - 1) * W, &packed, kVecBytes / 2);
    }
  } else {
    for (int64_t u = 0; u < U; ++u)
      for (int64_t j = 0; j < W; ++j) dst[u * W + j] = static_cast<T>(v[u][j]);
  }
}

// rows_map's tile of U register vectors of channels from c0, over rows [r0, r1), for bfloat16 in the avx2
// build: each store's 16 channels as their even-indexed and odd-indexed halves (interleaved_half), with their
// coefficients gathered to match once per tile; with an odd U, the last vector's 8 channels (coefficients
// `last`) as half a store, through pack_bf16.
template <int64_t U, size_t K, typename F>
inline void rows_interleaved(const std::array<const float*, K>& coefficients, int64_t c0, int64_t C, int64_t r0,
                             int64_t r1, uint16_t* dst, bool stream, const vec<float> (&last)[K], const F& fn) {
  using V = vec<float>;
  constexpr int64_t W = kWidth<float>, kPairs = U / 2;
  V halves[kPairs][2][K];  // [store][even, odd][coefficient]
  for (int64_t p = 0; p < kPairs; ++p)
    for (int64_t odd = 0; odd < 2; ++odd)
      for (size_t i = 0; i < K; ++i)
        for (int64_t j = 0; j < W; ++j) halves[p][odd][i][j] = coefficients[i][c0 + 2 * p * W + 2 * j + odd];
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t at = r * C + c0;
#pragma GCC unroll 2
    for (int64_t p = 0; p < kPairs; ++p) {
      const int64_t first = at + 2 * p * W;
      const Bytes packed = pack_bf16_interleaved<kExactNaNs<F>>(fn(Interleaved<false>{}, halves[p][0], first),
                                                                fn(Interleaved<true>{}, halves[p][1], first));
      if (stream && reinterpret_cast<uintptr_t>(dst + first) % kVecBytes == 0) {
        stream_vector(dst + first, packed);
      } else {
        std::memcpy(dst + first, &packed, kVecBytes);
      }
    }
    if constexpr (U % 2 == 1) {
      const V v = fn(V{}, last, at + (U - 1) * W);
      const Bytes packed = pack_bf16<kExactNaNs<F>>(v, v);
      std::memcpy(dst + at + (U - 1) * W, &packed, kVecBytes / 2);
    }
  }
}

// out[r·C + c] = value(U{}, q, r·C + c) over all rows, in parallel chunks, where q holds the K per-channel
// coefficients (coefficients[i][c]) as U: register vectors of kWidth channels, loaded once per tile of
// channels (over_channels) and kept in registers down the rows, or one value per channel for the last
// C % kWidth.
template <typename T, typename acc_t, size_t K, typename F>
void rows_map(const Shape& shape, const std::array<const acc_t*, K>& coefficients, T* out, int64_t tensors,
              const F& value) {
  using V = vec<acc_t>;
  constexpr int64_t W = kWidth<acc_t>;
  const int64_t C = shape.c;
  const Chunks chunks = chunks_of(shape);
  const bool stream = streams_output<T>(shape, tensors);
  parallel_writes(0, chunks.count, 1, [&](int64_t i0, int64_t i1) {
    const F fn = value;  // as in planes_map
    T* const dst = out;
    const int64_t r0 = i0 * chunks.rows, r1 = std::min(shape.n, i1 * chunks.rows);
    over_channels<acc_t>(C, [&](auto tile, int64_t c0) {
      constexpr int64_t U = decltype(tile)::value;
      V q[U][K];
#pragma GCC unroll 4
      for (int64_t u = 0; u < U; ++u)
        for (size_t i = 0; i < K; ++i) q[u][i] = load<acc_t>(coefficients[i] + c0 + u * W);
      if constexpr (std::is_same_v<T, uint16_t> && kInterleavedBf16 && U >= 2) {
        rows_interleaved<U, K>(coefficients, c0, C, r0, r1, dst, stream, q[U - 1], fn);
        return;
      }
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t at = r * C + c0;
        V values[U];
#pragma GCC unroll 4
        for (int64_t u = 0; u < U; ++u) values[u] = fn(V{}, q[u], at + u * W);
        store_vectors<T, U, acc_t, kExactNaNs<F>>(dst + at, values, stream);
      }
    }, [&](int64_t c) {
      acc_t q[K];
      for (size_t i = 0; i < K; ++i) q[i] = coefficients[i][c];
      for (int64_t r = r0; r < r1; ++r) dst[r * C + c] = narrow<T>(fn(acc_t{}, q, r * C + c));
    });
  });
}

// Σg and Σg·(x − μ) per channel over rows [r0, r1), added to the double sums: blocks of kValuesPerLane rows
// in register vectors across the channels; with `dots` (bfloat16 without the ReLU, kDots), Σg and Σg·x by
// row_pair_dot_sums.
template <bool kRelu, typename T, typename acc_t>
void rows_gradient_sums(const Shape& shape, int64_t r0, int64_t r1, const T* pdy, const T* px, const acc_t* mu,
                        const acc_t* a, const acc_t* k, bool dots, double* sum_dy, double* sum_dy_centered) {
  using V = vec<acc_t>;
  constexpr int64_t W = kWidth<acc_t>;
  const int64_t C = shape.c;
  for (int64_t first = r0; first < r1; first += kValuesPerLane) {
    const int64_t last = std::min(r1, first + kValuesPerLane);
    over_channels<acc_t>(C, [&](auto tile, int64_t c0) {
      constexpr int64_t U = decltype(tile)::value;
      V vmu[U], va[U], vk[U], s0[U] = {}, s1[U] = {};
      if constexpr (kDots<T> && !kRelu) {
        if (dots) {  // Σg and Σg·x; Σg·(x − μ) = Σg·x − μΣg in double
          row_pair_dot_sums<U, false>(pdy, px, C, c0, first, last, s0, s1);
          for (int64_t u = 0; u < U; ++u)
            for (int64_t j = 0; j < W; ++j) {
              const int64_t c = c0 + u * W + j;
              sum_dy[c] += s0[u][j];
              sum_dy_centered[c] += s1[u][j] - static_cast<double>(mu[c]) * s0[u][j];
            }
          return;
        }
      }
#pragma GCC unroll 4
      for (int64_t u = 0; u < U; ++u) {
        vmu[u] = load<acc_t>(mu + c0 + u * W);
        va[u] = load<acc_t>(a + c0 + u * W);
        vk[u] = load<acc_t>(k + c0 + u * W);
      }
      for (int64_t r = first; r < last; ++r) {
        const int64_t at = r * C + c0;
#pragma GCC unroll 4
        for (int64_t u = 0; u < U; ++u) {
          const V xv = load<acc_t>(px + at + u * W);
          const V g = masked<kRelu>(load<acc_t>(pdy + at + u * W), va[u], xv, vk[u]);
          s0[u] += g;
          s1[u] += g * (xv - vmu[u]);
        }
      }
      for (int64_t u = 0; u < U; ++u)
        for (int64_t j = 0; j < W; ++j) {
          sum_dy[c0 + u * W + j] += s0[u][j];
          sum_dy_centered[c0 + u * W + j] += s1[u][j];
        }
    }, [&](int64_t c) {
      acc_t t0 = 0, t1 = 0;
      for (int64_t r = first; r < last; ++r) {
        const acc_t xv = widen(px[r * C + c]);
        const acc_t g = masked<kRelu>(acc_t(widen(pdy[r * C + c])), a[c], xv, k[c]);
        t0 += g;
        t1 += g * (xv - mu[c]);
      }
      sum_dy[c] += t0;
      sum_dy_centered[c] += t1;
    });
  }
}

// Σg and Σg·(x − μ) per channel over the batch: fixed chunks (of rows, or of images) in parallel, merged in
// double in order.
template <bool kRelu, typename T, typename acc_t>
void batch_gradient_sums(const Shape& shape, const T* pdy, const T* px, const acc_t* mu, const acc_t* inv,
                         const acc_t* a, const acc_t* k, double* sum_dy, double* sum_dy_centered) {
  const Chunks chunks = shape.s == 1 ? chunks_of(shape) : image_chunks<acc_t>(shape);
  const int64_t C = shape.c;
  bool dots = kDots<T> && !kRelu;
  for (int64_t c = 0; c < C && dots; ++c) {
    const double z = static_cast<double>(mu[c]) * inv[c];  // the mean in standard deviations
    dots = z * z <= kCancels;
  }
  std::vector<double> part0(chunks.count * C, 0.0), part1(chunks.count * C, 0.0);
  at::parallel_for(0, chunks.count, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const int64_t first = i * chunks.rows, last = std::min(shape.n, (i + 1) * chunks.rows);
      if (shape.s == 1) {
        rows_gradient_sums<kRelu, T, acc_t>(shape, first, last, pdy, px, mu, a, k, dots, &part0[i * C],
                                            &part1[i * C]);
      } else {
        images_gradient_sums<kRelu, T, acc_t>(shape, first, last, pdy, px, mu, a, k, dots, &part0[i * C],
                                              &part1[i * C]);
      }
    }
  });
  for (int64_t c = 0; c < C; ++c) {
    double t0 = 0, t1 = 0;
    for (int64_t i = 0; i < chunks.count; ++i) {
      t0 += part0[i * C + c];
      t1 += part1[i * C + c];
    }
    sum_dy[c] = t0;
    sum_dy_centered[c] = t1;
  }
}

// out = value(U{}, q, at) with q the K coefficients of at's channel, in either layout (rows_map or planes_map).
template <typename T, typename acc_t, size_t K, typename F>
void map_channels(const Shape& shape, const std::array<const acc_t*, K>& coefficients, T* out, int64_t tensors,
                  const F& value) {
  if (shape.s == 1) {
    rows_map<T, acc_t, K>(shape, coefficients, out, tensors, value);
  } else {
    planes_map<T, acc_t, K>(shape, coefficients, out, tensors, value);
  }
}

#if defined(BNRUN_AVX512_BF16)
constexpr bool kRoundsByIntegers = false;  // vcvtne2ps2bf16 rounds NaNs itself
#else
constexpr bool kRoundsByIntegers = true;
#endif

// Whether outputs of type T round without the NaN test when their pass is NaN-free (map_outputs).
template <typename T>
constexpr bool kNaNFreeRounding = std::is_same_v<T, uint16_t> && kRoundsByIntegers;

// map_channels, with `value` NaNFree where `nan_free` and this build rounds bfloat16 outputs by integer arithmetic.
template <typename T, typename acc_t, size_t K, typename F>
void map_outputs(bool nan_free, const Shape& shape, const std::array<const acc_t*, K>& coefficients, T* out,
                 int64_t tensors, const F& value) {
  if constexpr (kNaNFreeRounding<T>) {
    if (nan_free) {
      map_channels<T, acc_t, K>(shape, coefficients, out, tensors, NaNFree<F>{value});
      return;
    }
  }
  map_channels<T, acc_t, K>(shape, coefficients, out, tensors, value);
}

// Whether every one of the C values of each array is finite (one vectorized pass each, without an early exit).
template <typename A>
bool all_finite(int64_t C, std::initializer_list<const A*> arrays) {
  bool finite = true;
  for (const A* p : arrays)
    for (int64_t c = 0; c < C; ++c) finite &= std::abs(p[c]) <= std::numeric_limits<A>::max();
  return finite;
}

// y = g(a·x + k), in parallel; nan_free as map_outputs takes it.
template <bool kRelu, typename T, typename acc_t>
void affine_map(const Shape& shape, const T* px, const acc_t* a, const acc_t* k, T* py, bool nan_free) {
  map_outputs<T, acc_t, 2>(nan_free, shape, {a, k}, py, 2, [=](auto u, const auto* q, int64_t at) {
    using U = decltype(u);
    return activate<kRelu>(pre(q[0], get<U>(px, at), q[1]));
  });
}

// dx = A·g + B·x + K per channel (kWithX), or dx = A·g, in parallel; nan_free as map_outputs takes it.
template <bool kRelu, bool kWithX, typename T, typename acc_t>
void grad_input_map(const Shape& shape, const T* pdy, const T* px, const acc_t* a, const acc_t* k, const acc_t* A,
                     const acc_t* B, const acc_t* K, T* pdx, bool nan_free) {
  if constexpr (kWithX && kRelu) {
    map_outputs<T, acc_t, 5>(nan_free, shape, {a, k, A, B, K}, pdx, 3, [=](auto u, const auto* q, int64_t at) {
      using U = decltype(u);
      const auto xv = get<U>(px, at);
      return q[2] * masked<kRelu>(get<U>(pdy, at), q[0], xv, q[1]) + q[3] * xv + q[4];
    });
  } else if constexpr (kWithX) {  // no mask: three coefficients in registers instead of five
    map_outputs<T, acc_t, 3>(nan_free, shape, {A, B, K}, pdx, 3, [=](auto u, const auto* q, int64_t at) {
      using U = decltype(u);
      return q[0] * get<U>(pdy, at) + q[1] * get<U>(px, at) + q[2];
    });
  } else {
    if constexpr (kRelu) {
      map_outputs<T, acc_t, 3>(nan_free, shape, {a, k, A}, pdx, 3, [=](auto u, const auto* q, int64_t at) {
        using U = decltype(u);
        return q[2] * masked<kRelu>(get<U>(pdy, at), q[0], get<U>(px, at), q[1]);
      });
    } else {
      map_outputs<T, acc_t, 1>(nan_free, shape, {A}, pdx, 2, [=](auto u, const auto* q, int64_t at) {
        using U = decltype(u);
        return q[0] * get<U>(pdy, at);
      });
    }
  }
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

// Outputs come from the CPU backend's allocation directly (at::detail::empty_*_cpu, as ATen's own CPU
// kernels allocate theirs), not through a dispatcher round trip each: a few tenths of a microsecond per
// tensor, which a small layer's step notices. like(x): x's sizes, strides and dtype (x dense, as dense()
// makes it); per_channel(x, rows): `rows` rows (0: one) of C values in x's op-math type.
Tensor like(const Tensor& x) { return at::detail::empty_strided_cpu(x.sizes(), x.strides(), x.scalar_type()); }

Tensor per_channel(const Tensor& x, int64_t rows = 0) {
  const auto dtype = at::toOpMathType(x.scalar_type());
  return rows ? at::detail::empty_cpu({rows, x.size(1)}, dtype) : at::detail::empty_cpu({x.size(1)}, dtype);
}

template <typename acc_t>
const acc_t* maybe(const Tensor& t) {
  return t.defined() ? t.const_data_ptr<acc_t>() : nullptr;
}

// Σg and Σg·(x − μ) per channel, in double; g = dy masked by the ReLU of a·x + k when `relu`; ι = 1/σ̂ (inv)
// tells where the mean is far from zero.
template <typename scalar_t, typename acc_t>
void gradient_sums(const Shape& shape, bool relu, const Tensor& dy, const Tensor& x, const acc_t* mu, const acc_t* inv,
                   const acc_t* a, const acc_t* k, double* sum_dy, double* sum_dy_centered) {
  with_relu(relu, [&](auto r) {
    batch_gradient_sums<decltype(r)::value, raw_t<scalar_t>, acc_t>(shape, in<scalar_t>(dy), in<scalar_t>(x), mu, inv,
                                                                    a, k, sum_dy, sum_dy_centered);
  });
}

// dx = A·g (+ B·x + K when `with_x`) per channel, g masked as in gradient_sums; nan_free as map_outputs takes it.
template <typename scalar_t, typename acc_t>
void grad_input(const Shape& shape, bool relu, bool with_x, const Tensor& dy, const Tensor& x, const acc_t* a,
                const acc_t* k, const acc_t* A, const acc_t* B, const acc_t* K, Tensor& dx, bool nan_free = false) {
  using T = raw_t<scalar_t>;
  const T *pdy = in<scalar_t>(dy), *px = in<scalar_t>(x);
  T* pdx = out<scalar_t>(dx);
  with_relu(relu, [&](auto r) {
    constexpr bool kRelu = decltype(r)::value;
    if (with_x) {
      grad_input_map<kRelu, true, T, acc_t>(shape, pdy, px, a, k, A, B, K, pdx, nan_free);
    } else {
      grad_input_map<kRelu, false, T, acc_t>(shape, pdy, px, a, k, A, B, K, pdx, nan_free);
    }
  });
}

// y = g(a·x + k) per channel; nan_free as map_outputs takes it.
template <typename scalar_t, typename acc_t>
void affine_output(const Shape& shape, bool relu, const Tensor& x, const acc_t* a, const acc_t* k, Tensor& y,
                   bool nan_free = false) {
  with_relu(relu, [&](auto r) {
    affine_map<decltype(r)::value, raw_t<scalar_t>, acc_t>(shape, in<scalar_t>(x), a, k, out<scalar_t>(y), nan_free);
  });
}

// ---------------------------------------------------------------------------------------------
// Training mode.

// The per-channel statistics and output coefficients of a batch: mean, var (biased), ι, a, k.
template <typename acc_t>
struct Stats {
  acc_t *mean, *var, *inv, *a, *k;
  // Channels [0, C) from the moments: Σ(x − μ)² / m is the biased variance. One loop per branch of
  // γ and β and restrict-qualified rows, so that the compiler vectorizes the square roots and
  // divisions (one channel at a time they took about a microsecond at C = 256); each value is
  // computed as one channel at a time would compute it.
  void set(int64_t C, const double* __restrict mu, const double* __restrict squares, double m, double eps,
           const acc_t* __restrict weight, const acc_t* __restrict bias) {
    acc_t *__restrict pm = mean, *__restrict pv = var, *__restrict pi = inv, *__restrict pa = a, *__restrict pk = k;
    for (int64_t c = 0; c < C; ++c) {
      pm[c] = static_cast<acc_t>(mu[c]);
      pv[c] = static_cast<acc_t>(squares[c] / m);
      pi[c] = static_cast<acc_t>(1.0 / std::sqrt(static_cast<double>(pv[c]) + eps));
    }
    if (weight) {
      for (int64_t c = 0; c < C; ++c) pa[c] = weight[c] * pi[c];
    } else {
      for (int64_t c = 0; c < C; ++c) pa[c] = acc_t(1) * pi[c];
    }
    if (bias) {
      for (int64_t c = 0; c < C; ++c) pk[c] = bias[c] - pm[c] * pa[c];
    } else {
      for (int64_t c = 0; c < C; ++c) pk[c] = acc_t(0) - pm[c] * pa[c];
    }
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
  Tensor y = like(x), stats = per_channel(x, kStatRows);
  BNRUN_DISPATCH(x.scalar_type(), "bnrun_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using T = raw_t<scalar_t>;
    Stats<acc_t> st = stats_of<acc_t>(stats);
    const acc_t *pw = maybe<acc_t>(weight), *pb = maybe<acc_t>(bias);
    const double m = static_cast<double>(shape.m());
    std::vector<double> mu(shape.c), squares(shape.c);
    batch_moments<T, acc_t>(shape, in<scalar_t>(x), mu.data(), squares.data());
    st.set(shape.c, mu.data(), squares.data(), m, eps, pw, pb);
    // x holds no NaN or infinity where a and k are finite: its mean, and so k, would not be.
    const bool nan_free = kNaNFreeRounding<T> && all_finite<acc_t>(shape.c, {st.a, st.k});
    affine_output<scalar_t, acc_t>(shape, relu, x, st.a, st.k, y, nan_free);
  });
  return {y, stats};
}

// The backward's two per-channel sums, Σdy and Σdy·(x − μ), in float64.
struct GradientSums {
  const double *dy, *dy_centered;
};

// What the backward computes per channel from its sums: dγ, dβ, and dx = A·dy + B·x + K.
template <typename acc_t>
struct DxCoefficients {
  acc_t *dw, *db, *A, *B, *K;
};

// Channels [0, C) of DxCoefficients, γ = 1 without kWeight. Restrict-qualified pointers and no branch
// in the loop, so that the compiler vectorizes its divisions; each value is computed as one channel
// at a time would compute it.
template <bool kWeight, typename acc_t>
void backward_coefficients(int64_t C, double m, const GradientSums& sums, const acc_t* __restrict weight,
                           const acc_t* __restrict mean, const acc_t* __restrict inverse,
                           const DxCoefficients<acc_t>& out) {
  const double *__restrict sum_dy = sums.dy, *__restrict sum_dy_centered = sums.dy_centered;
  acc_t *__restrict dw_out = out.dw, *__restrict db_out = out.db;
  acc_t *__restrict A = out.A, *__restrict B = out.B, *__restrict K = out.K;
  for (int64_t c = 0; c < C; ++c) {
    const double inv = inverse[c];
    const double db = sum_dy[c], dw = inv * sum_dy_centered[c];
    db_out[c] = static_cast<acc_t>(db);
    dw_out[c] = static_cast<acc_t>(dw);
    const acc_t gamma = kWeight ? weight[c] : acc_t(1);
    const double ac = gamma * inv;         // γι
    const double bc = -ac * inv * dw / m;  // coefficient of x (x̂ = ι(x − μ))
    A[c] = static_cast<acc_t>(ac);
    B[c] = static_cast<acc_t>(bc);
    K[c] = static_cast<acc_t>(-ac * db / m - bc * mean[c]);
  }
}

// Returns (dx, dγ, dβ); dy must be laid out as x; stats: the forward's (StatRow), whose a and k
// give the ReLU mask. With reuse_grad_y, dx is dy's memory, overwritten.
std::tuple<Tensor, Tensor, Tensor> backward_kernel(const Tensor& grad_y, const Tensor& x, const Tensor& stats,
                                                   const Tensor& weight, bool relu, bool reuse_grad_y) {
  const Shape shape = shape_of(x);
  Tensor grad_x = reuse_grad_y ? grad_y : like(x), grad_weight = per_channel(x), grad_bias = per_channel(x);
  BNRUN_DISPATCH(x.scalar_type(), "bnrun_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Stats<acc_t> st = stats_of<acc_t>(stats);
    const acc_t *pw = maybe<acc_t>(weight), *pmean = st.mean, *pinv = st.inv, *pa = st.a, *pk = st.k;
    acc_t *pdw = grad_weight.mutable_data_ptr<acc_t>(), *pdb = grad_bias.mutable_data_ptr<acc_t>();
    std::vector<double> sum_dy(shape.c), sum_dy_centered(shape.c);
    std::vector<acc_t> A(shape.c), B(shape.c), K(shape.c);
    gradient_sums<scalar_t, acc_t>(shape, relu, grad_y, x, pmean, pinv, pa, pk, sum_dy.data(), sum_dy_centered.data());
    const GradientSums sums{sum_dy.data(), sum_dy_centered.data()};
    const DxCoefficients<acc_t> out{pdw, pdb, A.data(), B.data(), K.data()};
    const double m = static_cast<double>(shape.m());
    if (pw) {
      backward_coefficients<true>(shape.c, m, sums, pw, pmean, pinv, out);
    } else {
      backward_coefficients<false>(shape.c, m, sums, pw, pmean, pinv, out);
    }
    // Finite sums and coefficients: x (its mean finite) and the dy that dx takes (their sums finite) hold no
    // NaN or infinity.
    const bool nan_free = kNaNFreeRounding<raw_t<scalar_t>> &&
                          all_finite<acc_t>(shape.c, {pmean, pinv, pa, pk, A.data(), B.data(), K.data()}) &&
                          all_finite<double>(shape.c, {sum_dy.data(), sum_dy_centered.data()});
    grad_input<scalar_t, acc_t>(shape, relu, true, grad_y, x, pa, pk, A.data(), B.data(), K.data(), grad_x, nan_free);
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

// Prediction mode's per-channel ι, a = γι and k = β − μa (in double) from the running statistics, for
// channels [0, C); restrict-qualified, so that the compiler vectorizes the square roots and divisions.
template <typename acc_t>
void eval_coefficients(int64_t C, const acc_t* __restrict mean, const acc_t* __restrict var,
                       const acc_t* __restrict weight, const acc_t* __restrict bias, double eps, acc_t* __restrict inv,
                       acc_t* __restrict a, acc_t* __restrict k) {
  for (int64_t c = 0; c < C; ++c) {
    const double iv = 1.0 / std::sqrt(static_cast<double>(var[c]) + eps);
    const double ac = (weight ? static_cast<double>(weight[c]) : 1.0) * iv;
    inv[c] = static_cast<acc_t>(iv);
    a[c] = static_cast<acc_t>(ac);
    k[c] = static_cast<acc_t>((bias ? static_cast<double>(bias[c]) : 0.0) - static_cast<double>(mean[c]) * ac);
  }
}

}  // namespace

namespace bnrun {

std::tuple<Tensor, Tensor> train_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps,
                                         bool relu) {
  return forward_kernel(dense(x), weight, bias, eps, relu);
}

std::tuple<Tensor, Tensor, Tensor> train_backward(const Tensor& grad_y, const Tensor& x, const Tensor& stats,
                                                  const Tensor& weight, bool relu, bool reuse_grad_y) {
  const Tensor input = dense(x), dy = laid_out_as(grad_y, input);
  // A copy that laid_out_as made is this call's own to overwrite.
  const bool own = reuse_grad_y || !dy.is_same(grad_y);
  const bool reuse = own && dy.scalar_type() == input.scalar_type() && dy.strides() == input.strides();
  return backward_kernel(dy, input, stats, weight, relu, reuse);
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
  Tensor y = like(x), coefficients = per_channel(x, 3);
  BNRUN_DISPATCH(x.scalar_type(), "bnrun_eval", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    acc_t* pi = coefficients.mutable_data_ptr<acc_t>();
    acc_t *pa = pi + shape.c, *pk = pi + 2 * shape.c;
    eval_coefficients<acc_t>(shape.c, mean.const_data_ptr<acc_t>(), var.const_data_ptr<acc_t>(), maybe<acc_t>(weight),
                             maybe<acc_t>(bias), eps, pi, pa, pk);
    affine_output<scalar_t, acc_t>(shape, relu, x, pa, pk, y);
  });
  return {y, coefficients};
}

Tensor eval_backward_input(const Tensor& grad_y, const Tensor& x_in, const Tensor& coefficients, bool relu) {
  const Tensor x = dense(x_in), dy = laid_out_as(grad_y, x);
  const Shape shape = shape_of(x);
  Tensor dx = like(x);
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
    gradient_sums<scalar_t, acc_t>(shape, relu, dy, x, mean.const_data_ptr<acc_t>(), pi, pa, pk, s0.data(), s1.data());
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
    batch_moments<T, acc_t>(shape, in<scalar_t>(input), pm, ps);
  });
  return {mean, squares};
}

Tensor to_bf16(const Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.is_contiguous(), "to_bf16 takes contiguous float32");
  Tensor y = at::empty(x.sizes(), x.options().dtype(at::kBFloat16));
  const float* src = x.const_data_ptr<float>();
  write<uint16_t, float>(reinterpret_cast<uint16_t*>(y.mutable_data_ptr()), x.numel(),
                         [&](auto u, int64_t i) { return get<decltype(u)>(src, i); });
  return y;
}

const char* isa() { return kIsa; }

int64_t stream_bytes() { return stream_threshold.load(); }

int64_t set_stream_bytes(int64_t bytes) { return stream_threshold.exchange(bytes); }

}  // namespace bnrun
