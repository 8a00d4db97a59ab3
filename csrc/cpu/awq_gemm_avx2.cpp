// awq_gemm_avx2.cpp - the AVX2 decode loop behind minimoe::awq_gemm, for x86-64 CPUs without AVX-512
// (most AMD Zen 2/3 and Intel client parts). Driver: awq_gemm.cpp. Contract: decode_avx512 in awq_gemm.h.
//
// The job: y[m, n] = sum over groups g of s[g, n] * (sum_{k in g} x[m, k] q[k, n] - z[g, n] X[m, g]),
// X[m, g] = sum of x over the group (precomputed by the driver). The inner sum over k is all the work.
//
// How one packed word becomes floats, in 2 vector ops per 8 codes (AND, convert) plus the FMA:
//   nibble i of a word sits at bits 4i..4i+3. `word & (0xF << 4i)` is the integer q * 16^i, which converts to
//   float exactly (4 significant bits), so the loop accumulates x * q * 16^i and the group's fold multiplies by
//   16^-i once (a power of two: no rounding changes). Nibble 7 would convert as a negative int32, so it is
//   shifted down instead (`word >> 28` is q). No bias trick, no cancellation: each sum is the plain fp32 sum of
//   x * q in k order.
//
// Loop order (docs/kernels-cpu.md, "The AVX2 tier", has what it measured against the previous loop):
//   * a strip is 16 packed words = 128 channels = one 64-byte cache line of a qweight row; its running sums
//     for one group live in `dot` (L1/L2), in packed order (awq_gemm.h), position i * 16 + l for nibble i of
//     word l;
//   * per group, chunks of kRows rows sweep every strip; for each strip the chunk's 16 lines are read from
//     memory once and from L1 in the later passes: a pass takes a few nibbles of both halves (2 ymm of words),
//     as many as keep MB rows of x x accumulators within the 16 ymm registers (8 accumulators);
//   * the next chunk's line of the strip is prefetched while this one is worked on (the hardware prefetchers
//     follow 16 row streams less well than one);
//   * per group and strip, the fold y += s (dot / 16^i - z X) runs on vectors: 8 words' fp16 scales transposed
//     in registers (8 x 8 16-bit transpose) into packed order, zero points taken from qzeros the same way as
//     the codes (nibble i of word l belongs to the same channel in both).
// A result depends only on k order inside a group and group order, never on the strip or thread split.
//
// From M = 32 on, the driver hands the product to the AVX2 prefill kernel instead (prefill_fp32_avx2.cpp).
#include "awq_gemm.h"
#include "decode_strips.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#define MINIMOE_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace minimoe {
namespace cpu {

bool avx2_available() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

namespace {

using strips::kRows, strips::kStripChannels, strips::kStripWords;  // decode_strips.h: the shared loop nest

// Nibble `Nib` of 8 packed words as floats q * 16^Nib (Nib < 7) or q (Nib == 7).
template <int Nib>
MINIMOE_AVX2 inline __m256 codes_scaled(__m256i words) {
  if constexpr (Nib == 7) return _mm256_cvtepi32_ps(_mm256_srli_epi32(words, 28));
  else return _mm256_cvtepi32_ps(_mm256_and_si256(words, _mm256_set1_epi32(0xF << (4 * Nib))));
}

// The factor that undoes codes_scaled: 16^-Nib, or 1 for nibble 7.
inline float unscale(int nib) { return nib == 7 ? 1.0f : 1.0f / static_cast<float>(1 << (4 * nib)); }

template <bool Full>
MINIMOE_AVX2 inline __m256i load_words(const uint32_t* p, __m256i lanes) {
  if constexpr (Full) return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  else return _mm256_maskload_epi32(reinterpret_cast<const int*>(p), lanes);  // padding lanes read as 0
}

// acc[m][I][h] += x[m, k] * nibble NIB0 + I of half h, for every I (a fold expression: unrolled at compile time).
template <int MB, int NP, int NIB0, int I>
MINIMOE_AVX2 inline void nibble(__m256i w0, __m256i w1, const __m256 (&xk)[MB], __m256 (&acc)[MB][NP][2]) {
  const __m256 f0 = codes_scaled<NIB0 + I>(w0), f1 = codes_scaled<NIB0 + I>(w1);
  for (int m = 0; m < MB; ++m) {
    acc[m][I][0] = _mm256_fmadd_ps(xk[m], f0, acc[m][I][0]);
    acc[m][I][1] = _mm256_fmadd_ps(xk[m], f1, acc[m][I][1]);
  }
}
template <int MB, int NP, int NIB0, int... I>
MINIMOE_AVX2 inline void nibbles(__m256i w0, __m256i w1, const __m256 (&xk)[MB], __m256 (&acc)[MB][NP][2],
                                 std::integer_sequence<int, I...>) {
  (nibble<MB, NP, NIB0, I>(w0, w1, xk, acc), ...);
}

// One pass over a chunk of `rows` rows of one strip: nibbles NIB0 .. NIB0 + NP - 1 of both halves (words 0-7
// and 8-15), MB rows of x. dot (per row of x: 128 floats, packed order, stride dot_stride) holds the running sums.
template <int MB, int NP, int NIB0, bool Full, bool Prefetch>
MINIMOE_AVX2 inline void strip_pass(const uint32_t* rows_of_words, int64_t row_stride, int64_t rows,
                                    __m256i lanes0, __m256i lanes1, const float* x, int64_t x_stride,
                                    float* dot, int64_t dot_stride) {
  __m256 acc[MB][NP][2];
  for (int m = 0; m < MB; ++m)
    for (int i = 0; i < NP; ++i)
      for (int h = 0; h < 2; ++h) acc[m][i][h] = _mm256_loadu_ps(dot + m * dot_stride + (NIB0 + i) * 16 + h * 8);
  for (int64_t k = 0; k < rows; ++k) {
    const uint32_t* row = rows_of_words + k * row_stride;
    if constexpr (Prefetch) _mm_prefetch(reinterpret_cast<const char*>(row + kRows * row_stride), _MM_HINT_T0);
    const __m256i w0 = load_words<Full>(row, lanes0), w1 = load_words<Full>(row + 8, lanes1);
    __m256 xk[MB];
    for (int m = 0; m < MB; ++m) xk[m] = _mm256_broadcast_ss(x + m * x_stride + k);
    nibbles<MB, NP, NIB0>(w0, w1, xk, acc, std::make_integer_sequence<int, NP>{});
  }
  for (int m = 0; m < MB; ++m)
    for (int i = 0; i < NP; ++i)
      for (int h = 0; h < 2; ++h) _mm256_storeu_ps(dot + m * dot_stride + (NIB0 + i) * 16 + h * 8, acc[m][i][h]);
}

// The passes P = 0, 1, ... over nibbles P * NP ..; only the first reads the chunk from memory: it prefetches.
template <int MB, int NP, bool Full, int... P>
MINIMOE_AVX2 inline void passes(const uint32_t* rows_of_words, int64_t row_stride, int64_t rows, __m256i lanes0,
                                __m256i lanes1, const float* x, int64_t x_stride, float* dot, int64_t dot_stride,
                                bool prefetch, std::integer_sequence<int, P...>) {
  if (prefetch)
    strip_pass<MB, NP, 0, Full, true>(rows_of_words, row_stride, rows, lanes0, lanes1, x, x_stride, dot, dot_stride);
  else
    strip_pass<MB, NP, 0, Full, false>(rows_of_words, row_stride, rows, lanes0, lanes1, x, x_stride, dot, dot_stride);
  ((P > 0 ? strip_pass<MB, NP, P * NP, Full, false>(rows_of_words, row_stride, rows, lanes0, lanes1, x, x_stride,
                                                     dot, dot_stride)
          : void()),
   ...);
}

// All 8 nibbles for MB rows of x: 8 / NP passes, NP = 4 / MB nibbles each (8 accumulators).
template <int MB, bool Full>
MINIMOE_AVX2 void strip_chunk(const uint32_t* rows_of_words, int64_t row_stride, int64_t rows, __m256i lanes0,
                              __m256i lanes1, const float* x, int64_t x_stride, float* dot, int64_t dot_stride,
                              bool prefetch) {
  constexpr int NP = 4 / MB;
  passes<MB, NP, Full>(rows_of_words, row_stride, rows, lanes0, lanes1, x, x_stride, dot, dot_stride, prefetch,
                       std::make_integer_sequence<int, 8 / NP>{});
}

// 8 x 8 transpose of 16-bit values: r[l] holds 8 values of row l on entry, r[j] holds value j of every row.
MINIMOE_AVX2 inline void transpose_8x8_epi16(__m128i (&r)[8]) {
  __m128i a[8], b[8];
  for (int i = 0; i < 4; ++i) {
    a[2 * i] = _mm_unpacklo_epi16(r[2 * i], r[2 * i + 1]);      // rows 2i, 2i+1: values 0-3, interleaved
    a[2 * i + 1] = _mm_unpackhi_epi16(r[2 * i], r[2 * i + 1]);  // values 4-7
  }
  for (int i = 0; i < 2; ++i)
    for (int hi = 0; hi < 2; ++hi) {
      // rows 4i .. 4i+3: values (2 hi'), (2 hi' + 1) for each source half
      b[4 * i + 2 * hi] = _mm_unpacklo_epi32(a[4 * i + hi], a[4 * i + 2 + hi]);
      b[4 * i + 2 * hi + 1] = _mm_unpackhi_epi32(a[4 * i + hi], a[4 * i + 2 + hi]);
    }
  // b[4i + q]: rows 4i..4i+3, values 2q, 2q+1
  for (int q = 0; q < 4; ++q) {
    r[2 * q] = _mm_unpacklo_epi64(b[q], b[4 + q]);
    r[2 * q + 1] = _mm_unpackhi_epi64(b[q], b[4 + q]);
  }
}

// y_acc[m] (packed order, 128 floats per strip) += s * (dot / 16^i - z * X[m, g]) for one strip and group.
MINIMOE_AVX2 void fold_strip(const AwqGemmArgs& a, int64_t g, int64_t strip_word, int64_t strip_words,
                             const float* dot, int64_t dot_stride, float* y_acc, int64_t y_stride) {
  const int64_t words = a.N / 8, groups = a.K / a.G;
  const uint16_t* scales = static_cast<const uint16_t*>(a.scales) + g * a.N;
  for (int h = 0; h < 2; ++h) {
    const int64_t valid = std::clamp<int64_t>(strip_words - 8 * h, 0, 8);
    if (valid == 0) continue;
    __m128i s16[8];
    for (int l = 0; l < 8; ++l)
      s16[l] = l < valid ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(scales + 8 * (strip_word + 8 * h + l)))
                         : _mm_setzero_si128();  // padding words: scale 0, so they add exactly 0
    transpose_8x8_epi16(s16);  // s16[j]: scale of channel 8 l + j of words l = 0..7
    const __m256i lanes = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(valid)),
                                             _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    const __m256i zwords =
        _mm256_maskload_epi32(reinterpret_cast<const int*>(a.qzeros + g * words + strip_word + 8 * h), lanes);
    for (int i = 0; i < 8; ++i) {
      const __m256 s = _mm256_cvtph_ps(s16[(i & 3) * 2 + (i >> 2)]);  // nibble i holds channel ORDER[i]
      const __m256 z =
          _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(zwords, 4 * i), _mm256_set1_epi32(0xF)));
      const __m256 back = _mm256_set1_ps(unscale(i));
      for (int64_t m = 0; m < a.M; ++m) {
        const __m256 xsum = _mm256_set1_ps(a.xsum[m * groups + g]);
        const __m256 d = _mm256_mul_ps(_mm256_loadu_ps(dot + m * dot_stride + i * 16 + h * 8), back);
        float* ya = y_acc + m * y_stride + i * 16 + h * 8;
        _mm256_storeu_ps(ya, _mm256_fmadd_ps(s, _mm256_fnmadd_ps(z, xsum, d), _mm256_loadu_ps(ya)));
      }
    }
  }
}

MINIMOE_AVX2 inline __m256i lanes_of(int64_t words_in_half) {
  const __m256i index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(std::clamp<int64_t>(words_in_half, 0, 8))), index);
}

template <bool Full>
MINIMOE_AVX2 void chunk_all_rows(const AwqGemmArgs& a, const uint32_t* chunk, int64_t rows, int64_t strip_words,
                                 const float* x, float* dot, int64_t dot_stride, bool prefetch) {
  const int64_t words = a.N / 8;
  const __m256i lanes0 = lanes_of(strip_words), lanes1 = lanes_of(strip_words - 8);
  for (int64_t m0 = 0; m0 < a.M;) {
    const int64_t left = a.M - m0;
    const int mb = left >= 4 ? 4 : left >= 2 ? 2 : 1;
    const float* xm = x + m0 * a.K;
    float* d = dot + m0 * dot_stride;
    if (mb == 4) strip_chunk<4, Full>(chunk, words, rows, lanes0, lanes1, xm, a.K, d, dot_stride, prefetch);
    else if (mb == 2) strip_chunk<2, Full>(chunk, words, rows, lanes0, lanes1, xm, a.K, d, dot_stride, prefetch);
    else strip_chunk<1, Full>(chunk, words, rows, lanes0, lanes1, xm, a.K, d, dot_stride, prefetch);
    prefetch = false;  // the chunk's lines are in L1 now
    m0 += mb;
  }
}

}  // namespace

void decode_avx2(const AwqGemmArgs& a, int64_t word_begin, int64_t word_end, int64_t group_begin, int64_t group_end,
                 float* y) {
  strips::decode(
      a, word_begin, word_end, group_begin, group_end, y,
      [&](const uint32_t* chunk, int64_t rows, int64_t strip_words, const float* x, float* dot, int64_t stride,
          bool prefetch) {
        if (strip_words == kStripWords) chunk_all_rows<true>(a, chunk, rows, strip_words, x, dot, stride, prefetch);
        else chunk_all_rows<false>(a, chunk, rows, strip_words, x, dot, stride, prefetch);
      },
      [&](int64_t g, int64_t w0, int64_t strip_words, const float* dot, int64_t dot_stride, float* y_acc,
          int64_t y_stride) { fold_strip(a, g, w0, strip_words, dot, dot_stride, y_acc, y_stride); });
}

}  // namespace cpu
}  // namespace minimoe

#else  // not x86-64: no AVX2 kernel; the driver's scalar path runs instead.

namespace minimoe {
namespace cpu {
bool avx2_available() { return false; }
void decode_avx2(const AwqGemmArgs&, int64_t, int64_t, int64_t, int64_t, float*) {}
}  // namespace cpu
}  // namespace minimoe

#endif
