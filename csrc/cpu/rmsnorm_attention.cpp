// rmsnorm_attention.cpp - two small fused ops for the CPU: RMSNorm (prefill and decode), and the attention of
// one new token (decode).
//
// Why they exist. In a CPU decode step of the mid-size model (hidden 1024, 8 layers), the int4 products and the
// lm_head are only part of the time: the rest of each layer is about 270 tiny torch calls (views, casts, a norm
// in 7 ops, RoPE in 10, attention in 15), a microsecond or several each, which added up to 3.6-6 ms of a
// 18-20 ms token. These ops do the same arithmetic in one call each. docs/kernels-cpu.md has the measurements.
//
// The plain PyTorch code in minimoe/model.py stays the spec and runs everywhere these do not (CUDA, no extension,
// a prompt of several tokens, the static cache of a CUDA graph). tests/test_rmsnorm_attention.py checks them against it.
//
// Semantics, to the rounding (x's dtype "dt" is fp32, bf16 or fp16; r() rounds an fp32 value to dt):
//   rms_norm:   y = r(w * r(x * rsqrt(mean(x^2) + eps)))        statistics in fp32, as RMSNorm.forward
//   rope:       x' = r(r(x * cos) + r(rotate_half(x) * sin))      each torch op rounds to dt
//   scores:     s_j = r(r(q' . k_j) * scale)                      the dot in fp32 (a bf16 matmul accumulates in
//                                                                 fp32 and rounds once), then torch's `* scale`
//   softmax:    p_j = r(softmax over visible j of s, in fp32)     masked keys get exactly 0
//   output:     o = r(sum_j p_j v_j in fp32)
// For fp32 every r() is the identity. Only the order of the fp32 sums differs from torch's, so results agree
// to fp32 rounding (fp32), or to one rounding of dt in a few elements (bf16, fp16). RoPE and the cache write
// are exact: the keys these ops put in the cache are bit for bit those of the PyTorch path.
#include <torch/extension.h>
#include <torch/library.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "../check_text.h"
#include "awq_gemm.h"

// No fused multiply-adds the code does not ask for (see rope below): GCC and Clang spell it differently.
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// GCC 12 reports a false "used uninitialized" from inside its own _mm512_reduce_add_ps at -Wall.
#pragma GCC diagnostic ignored "-Wuninitialized"
#include "avx512_inl.h"
#define MINIMOE_DECODE_AVX512 1
#endif

namespace minimoe {
namespace cpu {
namespace {

// ---- element access in the activations' dtype ----------------------------------------------------------------

// f(T{}) with T = float, at::BFloat16 or at::Half for the three activation dtypes the ops accept.
template <typename F>
void with_dtype(at::ScalarType dtype, F&& f) {
  switch (dtype) {
    case at::kFloat: f(float{}); break;
    case at::kBFloat16: f(at::BFloat16{}); break;
    default: f(at::Half{}); break;  // the callers have checked that nothing else gets here
  }
}

template <typename T>
inline float to_float(T v) { return static_cast<float>(v); }

// r(): round an fp32 value to T and back (c10's conversions round to nearest even).
template <typename T>
inline float round_to(float v) { return static_cast<float>(static_cast<T>(v)); }
template <>
inline float round_to<float>(float v) { return v; }

// ---- dot product and axpy over one head: AVX-512 when available, else plain loops -------------------------------

template <typename T>
float dot_scalar(const float* q, const T* k, int64_t D) {
  float sum = 0.0f;
  for (int64_t d = 0; d < D; ++d) sum += q[d] * to_float(k[d]);
  return sum;
}

template <typename T>
void axpy_scalar(float p, const T* v, float* out, int64_t D) {
  for (int64_t d = 0; d < D; ++d) out[d] += p * to_float(v[d]);
}

#ifdef MINIMOE_DECODE_AVX512

// 16 elements (fewer under the mask) of a row stored as T, widened to fp32 (exact for every T).
template <typename T>
MINIMOE_AVX512 inline __m512 load_as_float(const T* p, __mmask16 lanes) {
  if constexpr (std::is_same_v<T, float>) {
    return _mm512_maskz_loadu_ps(lanes, p);
  } else {
    const __m256i half = _mm256_maskz_loadu_epi16(lanes, p);
    if constexpr (std::is_same_v<T, at::Half>) return _mm512_cvtph_ps(half);
    else return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));  // bf16: top half
  }
}

inline __mmask16 tail_lanes(int64_t left) {
  return left >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << left) - 1);
}

// Heads are processed 64 columns (4 registers) at a time, with the 4 lane masks of each 64-column piece computed
// once: a loop over a run-time count of registers would keep its sums on the stack, not in registers.
struct Piece {
  int64_t d;           // first column
  __mmask16 lanes[4];  // valid lanes of its 4 registers (a head of D = 24 has one full and one half register)
};

inline Piece piece_at(int64_t d, int64_t D) {
  Piece p{d, {}};
  for (int c = 0; c < 4; ++c) p.lanes[c] = tail_lanes(std::max<int64_t>(0, D - d - 16 * c));
  return p;
}

template <typename T>
MINIMOE_AVX512 float dot_avx512(const float* q, const T* k, int64_t D) {
  __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  for (int64_t d = 0; d < D; d += 64) {
    const Piece p = piece_at(d, D);
    for (int c = 0; c < 4; ++c)
      acc[c] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(p.lanes[c], q + d + 16 * c),
                               load_as_float(k + d + 16 * c, p.lanes[c]), acc[c]);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
}

// r() on 16 lanes: round each fp32 to T (nearest even) and widen it back.
template <typename T>
MINIMOE_AVX512 inline __m512 round_lanes(__m512 v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else if constexpr (std::is_same_v<T, at::Half>) {
    return _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  } else {
    const __m512i high_half = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
    return _mm512_castsi512_ps(_mm512_and_si512(avx512::round_to_bf16_bits(v), high_half));
  }
}

// e^x on 16 lanes, for x <= 0 (softmax after subtracting the row's maximum). e^x = 2^n e^r with n = round(x / ln 2)
// and |r| <= ln(2)/2; e^r by its Taylor series to r^7 (truncation < 2e-9 relative), 2^n by vscalefps. ln 2 is
// split in two (Cody-Waite) so that r is exact to fp32. Within a couple of fp32 ulps of the true value, like
// torch's own vectorised exp. x below -104 (e^x < 1e-45, not even a denormal) is clamped there.
MINIMOE_AVX512 inline __m512 exp_lanes(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);  // ln 2 = 0.693359375 - 2.12194440e-4
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.0f / 5040);
  for (const float c : {1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f})
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
  return _mm512_scalef_ps(p, n);
}

// Which of 16 slots (fewer under `lanes`) the mask lets the token see.
MINIMOE_AVX512 inline __mmask16 visible_lanes(const bool* mask, __mmask16 lanes) {
  const __m128i bytes = _mm_maskz_loadu_epi8(lanes, mask);
  return _mm_test_epi8_mask(bytes, bytes);
}

// The sums of the 16 lanes of each of v[0..15], in one vector: lane j = sum of v[order[j]] ... see below.
// A horizontal sum of one vector costs 8 dependent shuffles and adds; summing 16 together by a transpose-and-add
// costs 45 instructions for all 16 (4 rounds, each halving the vectors: two shuffles and an add per result).
// The rounds deliver lane j the sum of v[kSum16Order[j]]; the order is its own inverse, so a caller that puts key
// kSum16Order[i] in v[i] gets key j's dot product in lane j.
constexpr int kSum16Order[16] = {0, 2, 1, 3, 8, 10, 9, 11, 4, 6, 5, 7, 12, 14, 13, 15};

MINIMOE_AVX512 inline __m512 sum_each_of_16(__m512 (&v)[16]) {
  for (int j = 0; j < 8; ++j)  // 256-bit halves: v[j] and v[j + 8] -> 8 partial sums each
    v[j] = _mm512_add_ps(_mm512_shuffle_f32x4(v[j], v[j + 8], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_f32x4(v[j], v[j + 8], _MM_SHUFFLE(3, 2, 3, 2)));
  for (int j = 0; j < 4; ++j)  // 128-bit blocks -> 4 partial sums of 4 vectors each
    v[j] = _mm512_add_ps(_mm512_shuffle_f32x4(v[j], v[j + 4], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(v[j], v[j + 4], _MM_SHUFFLE(3, 1, 3, 1)));
  for (int j = 0; j < 2; ++j)  // pairs of lanes -> 2 partial sums
    v[j] = _mm512_add_ps(_mm512_shuffle_ps(v[j], v[j + 2], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_ps(v[j], v[j + 2], _MM_SHUFFLE(3, 2, 3, 2)));
  return _mm512_add_ps(_mm512_shuffle_ps(v[0], v[1], _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_ps(v[0], v[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

// One thread walks one kv head's keys, then its values: one sequential stream at a time, which the hardware
// prefetchers alone do not pull fast enough (cold caches: bf16 keys and values read at 40-50% of the bandwidth).
// So the loops also prefetch, into L1, the rows kAttentionPrefetchRows ahead. Prefetching past the cache's end
// is harmless: a prefetch never faults.
constexpr int64_t kAttentionPrefetchRows = 32;

MINIMOE_AVX512 inline void prefetch_rows(const void* start, int64_t bytes) {
  const char* p = static_cast<const char*>(start);
  for (int64_t offset = 0; offset < bytes; offset += 64) _mm_prefetch(p + offset, _MM_HINT_T0);
}

// scores[g][j] = q_g . k_j for the G query heads of one kv head and its L keys, for a head of NC * 16 columns
// (D = 64 or 128). 16 keys at a time: each key's NC products summed in one register, the 16 registers summed by
// sum_each_of_16; the block of keys (16 x D) comes from memory once, widened to fp32 once (bf16, fp16), and is
// read from L1 by every head.
// Keys the mask hides are multiplied too (an unwritten slot may hold NaN), but their lanes are never read
// afterwards (softmax_avx512 masks them). The last L % 16 keys go one at a time: no row past the L-th is read.
template <int NC, typename T>
MINIMOE_AVX512 void dots_avx512(int64_t G, int64_t L, const float* q, const T* keys, float* scores) {
  constexpr int64_t D = 16 * NC;
  alignas(64) float widened[16 * D];  // a bf16/fp16 block of keys in fp32, widened once for all G heads
  int64_t j0 = 0;
  for (; j0 + 16 <= L; j0 += 16) {
    prefetch_rows(keys + (j0 + kAttentionPrefetchRows) * D, 16 * D * sizeof(T));
    const float* block;
    if constexpr (std::is_same_v<T, float>) {
      block = keys + j0 * D;
    } else {
      for (int64_t i = 0; i < 16 * NC; ++i)
        _mm512_store_ps(widened + 16 * i, load_as_float(keys + j0 * D + 16 * i, 0xFFFF));
      block = widened;
    }
    for (int64_t g = 0; g < G; ++g) {
      __m512 qv[NC];
      for (int c = 0; c < NC; ++c) qv[c] = _mm512_loadu_ps(q + g * D + 16 * c);
      __m512 v[16];
      for (int i = 0; i < 16; ++i) {
        const float* k = block + kSum16Order[i] * D;
        __m512 sum = _mm512_mul_ps(qv[0], _mm512_loadu_ps(k));
        for (int c = 1; c < NC; ++c) sum = _mm512_fmadd_ps(qv[c], _mm512_loadu_ps(k + 16 * c), sum);
        v[i] = sum;
      }
      _mm512_storeu_ps(scores + g * L + j0, sum_each_of_16(v));
    }
  }
  for (; j0 < L; ++j0)
    for (int64_t g = 0; g < G; ++g) scores[g * L + j0] = dot_avx512(q + g * D, keys + j0 * D, D);
}

// One head's scores -> probabilities, in place, 16 keys at a time: scale and round as torch would, the maximum
// over visible keys, exp, the sum, the division, the rounding to T. Hidden keys get exactly 0.
template <typename T>
MINIMOE_AVX512 void softmax_avx512(int64_t L, float scale, const bool* mask, float* scores) {
  const __m512 scale_v = _mm512_set1_ps(scale);
  __m512 best = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t j = 0; j < L; j += 16) {
    const __mmask16 lanes = tail_lanes(L - j);
    const __m512 v = round_lanes<T>(_mm512_mul_ps(round_lanes<T>(_mm512_maskz_loadu_ps(lanes, scores + j)), scale_v));
    _mm512_mask_storeu_ps(scores + j, lanes, v);
    best = _mm512_mask_max_ps(best, visible_lanes(mask + j, lanes), best, v);
  }
  const __m512 best_v = _mm512_set1_ps(_mm512_reduce_max_ps(best));
  __m512 total_v = _mm512_setzero_ps();
  for (int64_t j = 0; j < L; j += 16) {
    const __mmask16 lanes = tail_lanes(L - j);
    const __m512 e = _mm512_maskz_mov_ps(visible_lanes(mask + j, lanes),
                                         exp_lanes(_mm512_sub_ps(_mm512_maskz_loadu_ps(lanes, scores + j), best_v)));
    _mm512_mask_storeu_ps(scores + j, lanes, e);
    total_v = _mm512_add_ps(total_v, e);
  }
  const __m512 total = _mm512_set1_ps(_mm512_reduce_add_ps(total_v));
  for (int64_t j = 0; j < L; j += 16) {
    const __mmask16 lanes = tail_lanes(L - j);
    const __m512 p = _mm512_div_ps(_mm512_maskz_loadu_ps(lanes, scores + j), total);
    _mm512_mask_storeu_ps(scores + j, lanes, round_lanes<T>(p));
  }
}

// out_f32[g] = sum_j probs[g][j] v_j for NG (1-4) heads of one kv head, 64 columns at a time with the sums in
// registers (NG x 4), each value row read once for all NG heads. With one head, even and odd keys go to two sets
// of sums, added at the end, or every key would wait for the previous key's multiply-adds (4 cycles).
template <int NG, typename T>
MINIMOE_AVX512 void weighted_values_avx512(int64_t L, int64_t D, const T* values, const bool* mask,
                                           const float* probs, float* out_f32) {
  constexpr int kSets = NG == 1 ? 2 : 1;
  for (int64_t d = 0; d < D; d += 64) {
    const Piece piece = piece_at(d, D);
    __m512 acc[kSets][NG][4];
    for (auto& set : acc)
      for (auto& head : set)
        for (auto& a : head) a = _mm512_setzero_ps();
    for (int64_t j0 = 0; j0 < L; j0 += kSets)
      for (int set = 0; set < kSets; ++set) {  // unrolled: `set` is a constant, so the sums stay in registers
        const int64_t j = j0 + set;
        if (d == 0) prefetch_rows(values + (j + kAttentionPrefetchRows) * D, D * sizeof(T));
        if (j >= L || !mask[j]) continue;  // never multiply an unwritten slot, even by 0: it may hold a NaN
        __m512 v[4];
        for (int c = 0; c < 4; ++c) v[c] = load_as_float(values + j * D + d + 16 * c, piece.lanes[c]);
        for (int g = 0; g < NG; ++g) {
          const __m512 p = _mm512_set1_ps(probs[g * L + j]);
          for (int c = 0; c < 4; ++c) acc[set][g][c] = _mm512_fmadd_ps(p, v[c], acc[set][g][c]);
        }
      }
    for (int g = 0; g < NG; ++g)
      for (int c = 0; c < 4; ++c) {
        __m512 sum = acc[0][g][c];
        if constexpr (kSets == 2) sum = _mm512_add_ps(sum, acc[1][g][c]);
        _mm512_mask_storeu_ps(out_f32 + g * D + d + 16 * c, piece.lanes[c], sum);
      }
  }
}

// attend_head_scalar (below) on AVX-512, for the G query heads that share one kv head, together: each block of
// keys and each value row comes from memory once for all G heads (grouped-query attention's point), not once per
// head. q, scores, out_f32 and out hold the G heads one after another. NC = D / 16 for D = 64 or 128 (the dots
// 16 keys at a time); NC = 0 for any other D (one key at a time). Same arithmetic as the scalar version but for
// the exp and the order of the fp32 sums.
template <int NC, typename T>
MINIMOE_AVX512 void attend_group_avx512(int64_t G, int64_t L, int64_t D, float scale, const float* q, const T* keys,
                                        const T* values, const bool* mask, float* scores, float* out_f32, T* out) {
  if constexpr (NC > 0) {
    dots_avx512<NC>(G, L, q, keys, scores);
  } else {
    for (int64_t g = 0; g < G; ++g)
      for (int64_t j = 0; j < L; ++j) scores[g * L + j] = mask[j] ? dot_avx512(q + g * D, keys + j * D, D) : 0.0f;
  }
  for (int64_t g = 0; g < G; ++g) softmax_avx512<T>(L, scale, mask, scores + g * L);
  for (int64_t g0 = 0; g0 < G; g0 += 4) {  // at most 4 heads x 4 registers of sums at a time
    const float* probs = scores + g0 * L;
    float* sums = out_f32 + g0 * D;
    switch (std::min<int64_t>(4, G - g0)) {
      case 1: weighted_values_avx512<1>(L, D, values, mask, probs, sums); break;
      case 2: weighted_values_avx512<2>(L, D, values, mask, probs, sums); break;
      case 3: weighted_values_avx512<3>(L, D, values, mask, probs, sums); break;
      default: weighted_values_avx512<4>(L, D, values, mask, probs, sums); break;
    }
  }
  for (int64_t i = 0; i < G * D; ++i) out[i] = static_cast<T>(out_f32[i]);
}

#endif

bool use_avx512() {
#ifdef MINIMOE_DECODE_AVX512
  const char* isa = std::getenv("MINIMOE_CPU_ISA");  // "scalar" forces the portable loops, as for awq_gemm
  return avx512_available() && !(isa && std::strcmp(isa, "scalar") == 0);
#else
  return false;
#endif
}

// ---- RoPE (exact: each product and the sum rounded separately, as torch's three ops round them) ---------------
// Nothing may contract a*b + c*d into one fused multiply-add: on x86-64 this file is compiled without FMA (only
// the AVX-512 functions above have it), and the pragmas at the top of the file forbid contraction elsewhere
// (GCC on aarch64 would otherwise do it across statements).

// out[d] = r(r(x[d] * cos[d]) + r(rotate_half(x)[d] * sin[d])), rotate_half(x) = (-x[D/2:], x[:D/2]).
template <typename T>
void rope(const T* x, const T* cos, const T* sin, int64_t D, float* out) {
  const int64_t half = D / 2;
  for (int64_t d = 0; d < D; ++d) {
    const float rotated = d < half ? -to_float(x[d + half]) : to_float(x[d - half]);
    const float a = round_to<T>(to_float(x[d]) * to_float(cos[d]));
    const float b = round_to<T>(rotated * to_float(sin[d]));
    out[d] = round_to<T>(a + b);
  }
}

// ---- rms_norm --------------------------------------------------------------------------------------------------

template <typename T>
void rms_norm_rows(const T* x, const T* w, T* y, int64_t C, double eps, int64_t first, int64_t last) {
  for (int64_t row = first; row < last; ++row) {
    const T* xr = x + row * C;
    T* yr = y + row * C;
    float squares = 0.0f;
    for (int64_t c = 0; c < C; ++c) {
      const float v = to_float(xr[c]);
      squares += v * v;
    }
    const float inverse_rms = 1.0f / std::sqrt(squares / static_cast<float>(C) + static_cast<float>(eps));
    for (int64_t c = 0; c < C; ++c)
      yr[c] = static_cast<T>(to_float(w[c]) * round_to<T>(to_float(xr[c]) * inverse_rms));
  }
}

at::Tensor rms_norm_cpu(const at::Tensor& x_in, const at::Tensor& weight_in, double eps) {
  const char* op = "minimoe::rms_norm (CPU)";
  TORCH_CHECK(x_in.device().is_cpu() && weight_in.device().is_cpu(), op,
              ": x and weight must be CPU tensors, found ", x_in.device(), " and ", weight_in.device());
  const auto dtype = x_in.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf, op,
              ": x must be float32, bfloat16 or float16, found ", dtype);
  TORCH_CHECK(weight_in.scalar_type() == dtype, op, ": weight must have x's dtype (", dtype, "), found ",
              weight_in.scalar_type());
  TORCH_CHECK(x_in.dim() >= 1 && x_in.size(-1) > 0, op, ": x must have a last dimension of size C > 0, found shape ",
              as_text(x_in.sizes()));
  TORCH_CHECK(weight_in.dim() == 1 && weight_in.size(0) == x_in.size(-1), op, ": weight must be [C] = [",
              as_text(x_in.size(-1)), "], found shape ", as_text(weight_in.sizes()));
  TORCH_CHECK(std::isfinite(eps) && eps >= 0, op, ": eps must be finite and >= 0");
  const at::Tensor x = x_in.contiguous(), weight = weight_in.contiguous();
  at::Tensor y = at::empty_like(x);
  const int64_t C = x.size(-1), rows = x.numel() / C;
  with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* px = static_cast<const T*>(x.data_ptr());
    const T* pw = static_cast<const T*>(weight.data_ptr());
    T* py = static_cast<T*>(y.data_ptr());
    // One row (a decode step) is not worth waking a thread for; a prompt's rows are split.
    at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / C),
                     [&](int64_t first, int64_t last) { rms_norm_rows(px, pw, py, C, eps, first, last); });
  });
  return y;
}

// ---- decode_attention -----------------------------------------------------------------------------------------

// Multiply-adds (query heads x keys x head size) from which the attention of one step is split between threads.
// Low, because in a real step the cache is cold: from 2^14 instead of 2^18, the mid-size model's attention at 40-160
// cached tokens took 1.1-1.5x less time (benchmarks/attention_cpu.py's cold caches, interleaved A/B).
constexpr int64_t kParallelAttentionWork = int64_t{1} << 14;

struct AttentionShape {
  int64_t B, H, Hkv, D, S, L;  // batch, query heads, key/value heads, head dim, cache slots, keys read (slot + 1)
  int64_t slot;
  float scale;
};

// Query head h of row b: scores against the L cached keys of its kv head, softmax, weighted sum of values.
// Portable loops; attend_group_avx512 is the same on AVX-512, for the heads of one kv head together.
template <typename T>
void attend_head_scalar(int64_t L, int64_t D, float scale, const float* q, const T* keys, const T* values,
                        const bool* mask, float* scores, float* out_f32, T* out) {
  float best = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < L; ++j) {
    if (!mask[j]) continue;
    scores[j] = round_to<T>(round_to<T>(dot_scalar(q, keys + j * D, D)) * scale);
    best = std::max(best, scores[j]);
  }
  float total = 0.0f;
  for (int64_t j = 0; j < L; ++j) {
    scores[j] = mask[j] ? std::exp(scores[j] - best) : 0.0f;
    total += scores[j];
  }
  std::fill(out_f32, out_f32 + D, 0.0f);
  for (int64_t j = 0; j < L; ++j)
    if (mask[j]) axpy_scalar(round_to<T>(scores[j] / total), values + j * D, out_f32, D);
  for (int64_t d = 0; d < D; ++d) out[d] = static_cast<T>(out_f32[d]);
}

template <typename T>
void decode_attention_typed(const AttentionShape& s, const T* q, const T* k, const T* v, const T* cos, const T* sin,
                            T* key_cache, T* value_cache, const bool* mask, T* out) {
  const int64_t D = s.D, group = s.H / s.Hkv;
  // 1. The new token's key (rotated) and value go into slot `slot` of every kv head.
  std::vector<float> rotated(D);
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t kvh = 0; kvh < s.Hkv; ++kvh) {
      const int64_t row = ((b * s.Hkv + kvh) * s.S + s.slot) * D;
      rope(k + (b * s.Hkv + kvh) * D, cos + b * D, sin + b * D, D, rotated.data());
      for (int64_t d = 0; d < D; ++d) key_cache[row + d] = static_cast<T>(rotated[d]);  // exact: already rounded
      std::memcpy(value_cache + row, v + (b * s.Hkv + kvh) * D, D * sizeof(T));
    }
  // 2. Every query head attends over slots 0..slot. The kv heads are independent, so threads split them (with
  // the query heads that share each); every head's sums run in a fixed order, so the result does not depend on
  // the thread count. (So a model with a single kv head decodes batch 1 on one thread; Mistral and Mixtral
  // have 8.)
  [[maybe_unused]] const bool vector = use_avx512();  // read only where AVX-512 code exists
  const int64_t kv_groups = s.B * s.Hkv, work = s.B * s.H * s.L * D;
  at::parallel_for(0, kv_groups, work >= kParallelAttentionWork ? 1 : kv_groups, [&](int64_t first, int64_t last) {
    std::vector<float> q_roped(group * D), scores(group * s.L), out_f32(group * D);
    for (int64_t bk = first; bk < last; ++bk) {
      const int64_t b = bk / s.Hkv, h0 = bk % s.Hkv * group;  // row b, query heads h0 .. h0 + group - 1
      for (int64_t g = 0; g < group; ++g)
        rope(q + (b * s.H + h0 + g) * D, cos + b * D, sin + b * D, D, q_roped.data() + g * D);
      const int64_t base = bk * s.S * D;
      const T* keys = key_cache + base;
      const T* values = value_cache + base;
      T* out_group = out + (b * s.H + h0) * D;
#ifdef MINIMOE_DECODE_AVX512
      if (vector) {
        const auto attend = D == 64 ? attend_group_avx512<4, T> : D == 128 ? attend_group_avx512<8, T>
                                                                           : attend_group_avx512<0, T>;
        attend(group, s.L, D, s.scale, q_roped.data(), keys, values, mask + b * s.L, scores.data(), out_f32.data(),
               out_group);
        continue;
      }
#endif
      for (int64_t g = 0; g < group; ++g)
        attend_head_scalar(s.L, D, s.scale, q_roped.data() + g * D, keys, values, mask + b * s.L, scores.data(),
                           out_f32.data(), out_group + g * D);
    }
  });
}

at::Tensor decode_attention_cpu(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                                const at::Tensor& cos_in, const at::Tensor& sin_in, at::Tensor key_cache,
                                at::Tensor value_cache, int64_t slot, const at::Tensor& mask_in, double scale) {
  const char* op = "minimoe::decode_attention (CPU)";
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"q", q_in}, {"k", k_in}, {"v", v_in},
                                {"cos", cos_in}, {"sin", sin_in}, {"key_cache", key_cache},
                                {"value_cache", value_cache}, {"mask", mask_in}})
    TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor, found one on ", t.device());
  const auto dtype = q_in.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf, op,
              ": q must be float32, bfloat16 or float16, found ", dtype);
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"k", k_in}, {"v", v_in}, {"cos", cos_in},
                                {"sin", sin_in}, {"key_cache", key_cache}, {"value_cache", value_cache}})
    TORCH_CHECK(t.scalar_type() == dtype, op, ": ", name, " must have q's dtype (", dtype, "), found ",
                t.scalar_type());
  TORCH_CHECK(q_in.dim() == 3, op, ": q must be [B, H, D], found shape ", as_text(q_in.sizes()));
  const int64_t B = q_in.size(0), H = q_in.size(1), D = q_in.size(2);
  TORCH_CHECK(B > 0 && H > 0 && D > 0 && D % 2 == 0, op, ": q [B, H, D] needs B, H > 0 and an even D > 0, found ",
              as_text(q_in.sizes()));
  TORCH_CHECK(k_in.dim() == 3 && k_in.size(0) == B && k_in.size(2) == D && k_in.size(1) > 0, op,
              ": k must be [B, Hkv, D] = [", as_text(B), ", Hkv, ", as_text(D), "], found shape ",
              as_text(k_in.sizes()));
  const int64_t Hkv = k_in.size(1);
  TORCH_CHECK(H % Hkv == 0, op, ": the query heads (", as_text(H), ") must be a multiple of the kv heads (",
              as_text(Hkv), ")");
  TORCH_CHECK(v_in.sizes() == k_in.sizes(), op, ": v must have k's shape ", as_text(k_in.sizes()), ", found ",
              as_text(v_in.sizes()));
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"cos", cos_in}, {"sin", sin_in}})
    TORCH_CHECK(t.dim() == 2 && t.size(0) == B && t.size(1) == D, op, ": ", name, " must be [B, D] = [", as_text(B),
                ", ", as_text(D), "], found shape ", as_text(t.sizes()));
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"key_cache", key_cache},
                                {"value_cache", value_cache}}) {
    TORCH_CHECK(t.dim() == 4 && t.size(0) == B && t.size(1) == Hkv && t.size(3) == D, op, ": ", name,
                " must be [B, Hkv, slots, D] = [", as_text(B), ", ", as_text(Hkv), ", slots, ", as_text(D),
                "], found shape ", as_text(t.sizes()));
    TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous (it is written in place)");
  }
  TORCH_CHECK(value_cache.size(2) == key_cache.size(2), op,
              ": key_cache and value_cache must have as many slots, found ", as_text(key_cache.size(2)), " and ",
              as_text(value_cache.size(2)));
  const int64_t S = key_cache.size(2);
  TORCH_CHECK(slot >= 0 && slot < S, op, ": slot must be in 0..", as_text(S - 1), " (the cache's slots), found ",
              as_text(slot));
  TORCH_CHECK(mask_in.scalar_type() == at::kBool, op, ": mask must be bool, found ", mask_in.scalar_type());
  TORCH_CHECK(mask_in.dim() == 2 && mask_in.size(0) == B && mask_in.size(1) == slot + 1, op,
              ": mask must be [B, slot + 1] = [", as_text(B), ", ", as_text(slot + 1), "], found shape ",
              as_text(mask_in.sizes()));
  TORCH_CHECK(std::isfinite(scale), op, ": scale must be finite");
  const at::Tensor mask = mask_in.contiguous();
  // Every row must see at least one key, or its softmax would be 0/0 (the model's mask always lets a token see
  // itself).
  const bool* pm = mask.data_ptr<bool>();
  for (int64_t b = 0; b < B; ++b)
    TORCH_CHECK(std::any_of(pm + b * (slot + 1), pm + (b + 1) * (slot + 1), [](bool m) { return m; }), op,
                ": every row of mask must allow at least one key, row ", as_text(b), " allows none");
  const at::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous(), cos = cos_in.contiguous(),
                   sin = sin_in.contiguous();
  at::Tensor out = at::empty({B, H, D}, q.options());
  const AttentionShape shape{B, H, Hkv, D, S, slot + 1, slot, static_cast<float>(scale)};
  with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const auto ptr = [](const at::Tensor& t) { return static_cast<T*>(t.data_ptr()); };
    decode_attention_typed<T>(shape, ptr(q), ptr(k), ptr(v), ptr(cos), ptr(sin), ptr(key_cache), ptr(value_cache),
                              mask.data_ptr<bool>(), ptr(out));
  });
  return out;
}

}  // namespace
}  // namespace cpu

TORCH_LIBRARY_IMPL(minimoe, CPU, m) {
  m.impl("rms_norm", &cpu::rms_norm_cpu);
  m.impl("decode_attention", &cpu::decode_attention_cpu);
}

}  // namespace minimoe
