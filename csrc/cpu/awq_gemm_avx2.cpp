// awq_gemm_avx2.cpp - the AVX2 decode loop behind minimoe::awq_gemm, for x86-64 CPUs without AVX-512
// (most AMD Zen 2/3 and Intel client parts). Driver: awq_gemm.cpp; the AVX-512 loop it mirrors:
// awq_gemm_avx512.cpp, whose top comment explains the nibble trick and the loop order in full.
//
// What changes at 256 bits:
//   * a register holds 8 packed words (64 codes), so the unit here is a block of 8 words;
//   * there is no rotate and no vpternlogd: a nibble reaches bits 19..22 with one shift, and becomes the float
//     1 + q/16 with an AND and an OR (3 integer ops per 8 codes, then the FMA);
//   * 16 registers, not 32: one row of x keeps 8 accumulators (one per nibble), more rows take the nibbles in
//     passes of 4 or 2 so that accumulators + broadcasts of x + the words fit.
// The running sums are in "packed order" of the 8-word block: position i * 8 + l holds channel
// 8 (w0 + l) + ORDER[i] (nibble i of word l), and are put back in channel order once at the end.
// Per group, the scales and zero points of a block are gathered into that order with scalar code (64 values
// per block per group, against 8 x 128 rows of vector work): simple, and about 5% of the loop.
//
// The prefill path has no AVX2 kernel: x of every dtype keeps decoding at any M on such CPUs (thread-count
// invariant; bf16 x used to take a dequantize + torch bf16 GEMM, ~100x slower than fp32 without native bf16).
#include "awq_gemm.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "../dequant.h"

#define MINIMOE_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace minimoe {
namespace cpu {

bool avx2_available() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

namespace {

constexpr int64_t kWords = 8;          // packed words per block (one ymm)
constexpr int64_t kChannels = 8 * kWords;
constexpr int64_t kRowChunk = 8;       // rows of qweight per chunk, as in the AVX-512 loop

// Nibble `Nib` of 8 packed words as the float 1 + q/16: the nibble moved to bits 19..22 (mantissa top), the
// other bits cleared, the bits of 1.0f set.
template <int Nib>
MINIMOE_AVX2 inline __m256 nibble_as_one_plus_q16(__m256i words) {
  constexpr int shift = 19 - 4 * Nib;  // > 0: left; < 0: right
  const __m256i moved = shift >= 0 ? _mm256_slli_epi32(words, shift) : _mm256_srli_epi32(words, -shift);
  const __m256i bits = _mm256_or_si256(_mm256_and_si256(moved, _mm256_set1_epi32(0xF << 19)),
                                       _mm256_set1_epi32(0x3F800000));
  return _mm256_castsi256_ps(bits);
}

template <int MB, int NIB, int NIB0, int I>
MINIMOE_AVX2 inline void accumulate_nibble(__m256i words, const __m256 (&xk)[MB], __m256 (&acc)[MB][NIB]) {
  const __m256 f = nibble_as_one_plus_q16<NIB0 + I>(words);
  for (int m = 0; m < MB; ++m) acc[m][I] = _mm256_fmadd_ps(xk[m], f, acc[m][I]);
}

template <int MB, int NIB, int NIB0, int... I>
MINIMOE_AVX2 inline void accumulate_row(__m256i words, const __m256 (&xk)[MB], __m256 (&acc)[MB][NIB],
                                        std::integer_sequence<int, I...>) {
  (accumulate_nibble<MB, NIB, NIB0, I>(words, xk, acc), ...);
}

// dot[m][(NIB0 + i) * 8 + lane] += sum over the chunk's rows of x[m, k] * (1 + q/16), for one block.
template <int MB, int NIB, int NIB0>
MINIMOE_AVX2 void chunk_dot(const uint32_t* rows_of_words, int64_t row_stride, int64_t rows, __m256i lanes,
                            const float* x, int64_t x_stride, float* dot, int64_t dot_stride) {
  __m256 acc[MB][NIB];
  for (int m = 0; m < MB; ++m)
    for (int i = 0; i < NIB; ++i) acc[m][i] = _mm256_loadu_ps(dot + m * dot_stride + (NIB0 + i) * 8);
  for (int64_t k = 0; k < rows; ++k) {
    const __m256i words =
        _mm256_maskload_epi32(reinterpret_cast<const int*>(rows_of_words + k * row_stride), lanes);
    __m256 xk[MB];
    for (int m = 0; m < MB; ++m) xk[m] = _mm256_set1_ps(x[m * x_stride + k]);
    accumulate_row<MB, NIB, NIB0>(words, xk, acc, std::make_integer_sequence<int, NIB>{});
  }
  for (int m = 0; m < MB; ++m)
    for (int i = 0; i < NIB; ++i) _mm256_storeu_ps(dot + m * dot_stride + (NIB0 + i) * 8, acc[m][i]);
}

// All 8 nibbles for MB rows of x, in passes that fit 16 registers: MB * NIB accumulators + MB broadcasts + 2.
template <int MB>
MINIMOE_AVX2 void chunk_dot_all_nibbles(const uint32_t* rows_of_words, int64_t row_stride, int64_t rows,
                                        __m256i lanes, const float* x, int64_t x_stride, float* dot,
                                        int64_t dot_stride) {
  if constexpr (MB == 1) {
    chunk_dot<1, 8, 0>(rows_of_words, row_stride, rows, lanes, x, x_stride, dot, dot_stride);
  } else if constexpr (MB == 2) {
    chunk_dot<2, 4, 0>(rows_of_words, row_stride, rows, lanes, x, x_stride, dot, dot_stride);
    chunk_dot<2, 4, 4>(rows_of_words, row_stride, rows, lanes, x, x_stride, dot, dot_stride);
  } else {
    chunk_dot<MB, 2, 0>(rows_of_words, row_stride, rows, lanes, x, x_stride, dot, dot_stride);
    chunk_dot<MB, 2, 2>(rows_of_words, row_stride, rows, lanes, x, x_stride, dot, dot_stride);
    chunk_dot<MB, 2, 4>(rows_of_words, row_stride, rows, lanes, x, x_stride, dot, dot_stride);
    chunk_dot<MB, 2, 6>(rows_of_words, row_stride, rows, lanes, x, x_stride, dot, dot_stride);
  }
}

MINIMOE_AVX2 inline __m256i lanes_of(int64_t words_in_block) {
  const __m256i index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(std::min<int64_t>(words_in_block, kWords))), index);
}

}  // namespace

MINIMOE_AVX2 void decode_avx2(const AwqGemmArgs& a, int64_t word_begin, int64_t word_end, int64_t group_begin,
                              int64_t group_end, float* y) {
  const int64_t words = a.N / 8, groups = a.K / a.G;
  const int64_t blocks = (word_end - word_begin + kWords - 1) / kWords;
  const int64_t width = blocks * kChannels;
  const uint16_t* scales = static_cast<const uint16_t*>(a.scales);
  std::vector<float> dot(a.M * width), y_acc(a.M * width, 0.0f);
  alignas(32) float s16[kChannels], zs[kChannels];  // per block and group: 16 s, (16 + z) s, packed order

  for (int64_t g = group_begin; g < group_end; ++g) {
    std::fill(dot.begin(), dot.end(), 0.0f);
    for (int64_t k0 = g * a.G; k0 < (g + 1) * a.G; k0 += kRowChunk) {
      const int64_t rows = std::min(kRowChunk, (g + 1) * a.G - k0);
      for (int64_t b = 0; b < blocks; ++b) {
        const int64_t w0 = word_begin + b * kWords;
        const __m256i lanes = lanes_of(word_end - w0);
        const uint32_t* chunk = a.qweight + k0 * words + w0;
        for (int64_t m0 = 0; m0 < a.M;) {
          const int mb = a.M - m0 >= 4 ? 4 : static_cast<int>(a.M - m0);
          const float* x = a.x + m0 * a.K + k0;
          float* d = dot.data() + m0 * width + b * kChannels;
          switch (mb) {
            case 1: chunk_dot_all_nibbles<1>(chunk, words, rows, lanes, x, a.K, d, width); break;
            case 2: chunk_dot_all_nibbles<2>(chunk, words, rows, lanes, x, a.K, d, width); break;
            case 3: chunk_dot_all_nibbles<3>(chunk, words, rows, lanes, x, a.K, d, width); break;
            default: chunk_dot_all_nibbles<4>(chunk, words, rows, lanes, x, a.K, d, width); break;
          }
          m0 += mb;
        }
      }
    }
    // Fold the group: y += s (16 dot - (16 + z) X) = 16 s dot - (16 + z) s X, per block, scales gathered first.
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t w0 = word_begin + b * kWords, block_words = std::min(kWords, word_end - w0);
      for (int64_t p = 0; p < kChannels; ++p) {
        s16[p] = zs[p] = 0.0f;  // padding lanes: contribute exactly 0
        if (p % kWords < block_words) {
          const int64_t channel = channel_of_packed_position(w0, p, kWords);
          uint16_t bits;
          std::memcpy(&bits, scales + g * a.N + channel, 2);
          const float s = _cvtsh_ss(bits);
          const float z = static_cast<float>(awq_code(a.qzeros[g * words + channel / 8], channel % 8));
          s16[p] = 16.0f * s;
          zs[p] = (16.0f + z) * s;
        }
      }
      for (int64_t m = 0; m < a.M; ++m) {
        const __m256 xsum = _mm256_set1_ps(a.xsum[m * groups + g]);
        const float* d = dot.data() + m * width + b * kChannels;
        float* yb = y_acc.data() + m * width + b * kChannels;
        for (int64_t p = 0; p < kChannels; p += 8) {
          const __m256 t = _mm256_fmsub_ps(_mm256_loadu_ps(d + p), _mm256_load_ps(s16 + p),
                                           _mm256_mul_ps(_mm256_load_ps(zs + p), xsum));
          _mm256_storeu_ps(yb + p, _mm256_add_ps(_mm256_loadu_ps(yb + p), t));
        }
      }
    }
  }
  for (int64_t m = 0; m < a.M; ++m)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t w0 = word_begin + b * kWords, block_words = std::min(kWords, word_end - w0);
      for (int64_t p = 0; p < kChannels; ++p)
        if (p % kWords < block_words)
          y[m * a.N + channel_of_packed_position(w0, p, kWords)] = y_acc[m * width + b * kChannels + p];
    }
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
