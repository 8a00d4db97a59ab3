// awq_gemm_avx512.cpp - the AVX-512 kernels behind minimoe::awq_gemm on x86-64 (driver: awq_gemm.cpp).
//
// setup.py compiles every csrc/cpu/*.cpp with the same flags and no -march, so nothing here may run on a CPU
// without AVX-512. Each function carries `target(...)` instead, and the driver calls them only after
// avx512_available() has asked cpuid. Helpers need the attribute too: GCC refuses to inline an AVX-512
// function into one compiled for plain x86-64 (and lambdas do not inherit it, so there are none here).
//
// ---- The one trick: a nibble becomes a float without a convert instruction -------------------------------
// An fp32 with bit pattern 0x3F800000 | (q << 19) is 1 + q/16 for q in 0..15: q lands in the top 4 bits of
// the mantissa of 1.0. Getting there from a packed word takes a rotate (nibble i from bits 4i..4i+3 up to bits
// 19..22) and one vpternlogd computing (rotated & 0x00780000) | 0x3F800000. So 16 codes cost 2 integer ops,
// and the multiply-accumulate is a plain FMA on f = 1 + q/16:
//
//     sum_k x[k] * f[k]  =  X + D/16      with X = sum_k x[k] (per group, computed once) and D = sum_k x[k] q[k]
//
// and the group's contribution to y folds scale and zero point together:
//
//     s * sum_k x[k] (q[k] - z)  =  s * (D - z X)  =  s * (16 * acc - (16 + z) * X)
//
// All of 16, 16 + z, s, 1 + q/16 are exact in fp32, so the only rounding is the usual one of an fp32 dot
// product. The accumulator is somewhat larger than a plain sum of x*q would be (f is >= 1), so its rounding
// error is a few times that of a textbook loop; tests/test_kernels.py bounds it against the reference.
// (Converting with vcvtdq2ps instead costs a shift, an and and a convert: 3 ops instead of 2, on the same ports
// as the FMA. With the weights in cache the decode loop is port-bound at M = 1 on this machine, so the 2-op form
// matters there; from memory the memory side sets the pace: a loop with half the instructions, on VNNI integer
// dot products, measured no faster. See docs/kernels-cpu.md.)
//
// ---- Where the bytes go (decode, M = 1, 4096 x 14336) ------------------------------------------------------
// qweight is 29.4 MB and is read exactly once; scales + zeros add 1.1 MB; x (16 KB) and the running sums stay
// in L1/L2. Each 64-byte load is one cache line = one row k of a block of 128 output channels.
// Loop order per thread, over its own run of columns: group g -> chunk of 8 rows -> block b -> rows of x -> k.
// So the thread reads 8 rows at a time, each as one long contiguous segment (its whole run: 3.5 KB per row at
// 2 threads), which the hardware's stream prefetchers follow; the running sums of a block are loaded and stored
// once per 8 rows. Negative result: the first version walked down one block's column (128 rows x 64 B, rows
// 7 KB apart, then the next block). In L2 it ran at 11 GB/s per core; from memory, 2.3 GB/s, even with a
// software prefetch of the next strip: a new 4 KB page every row defeats the prefetchers.
// The 8-row chunk still reads 8 row segments side by side. When they are short (a 2 KB row of the 14336 x 4096
// w2, or a span of a narrow layer), the hardware prefetchers see 8 short streams and never get far enough
// ahead: those shapes ran at 5-8 GB/s per core from memory while the same loop does 11-12 warm. So the loop
// also prefetches, into L1, the rows one to four chunks ahead (~32 KB of its span ahead), one line per line
// it reads: measured 1.4-1.7x on the narrow shapes at one thread, about even on the wide 4096 x 14336.
#include "awq_gemm.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

// GCC 12 reports false "may be used uninitialized" warnings from inside its own AVX-512 headers
// (their _mm512_undefined_* placeholders) at -Wall; they say nothing about this file.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "avx512_inl.h"

#include <algorithm>
#include <utility>
#include <vector>

namespace minimoe {
namespace cpu {

bool avx512_available() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma");
}

namespace {
using namespace avx512;  // the shared helpers of avx512_inl.h

// acc[m][I] += x[m] * (1 + q/16) for nibble NIB0 + I of one row of 16 words.
template <int MB, int NIB, int NIB0, int I>
MINIMOE_AVX512 inline void accumulate_nibble(__m512i words, const __m512 (&xk)[MB], __m512 (&acc)[MB][NIB]) {
  const __m512 f = nibble_as_one_plus_q16<NIB0 + I>(words);
  for (int m = 0; m < MB; ++m) acc[m][I] = _mm512_fmadd_ps(xk[m], f, acc[m][I]);
}

// All NIB nibbles of the pass, unrolled at compile time (the rotate count must be an immediate). A fold over
// a function template rather than a lambda: lambdas do not inherit the target attribute.
template <int MB, int NIB, int NIB0, int... I>
MINIMOE_AVX512 inline void accumulate_row(__m512i words, const __m512 (&xk)[MB], __m512 (&acc)[MB][NIB],
                                          std::integer_sequence<int, I...>) {
  (accumulate_nibble<MB, NIB, NIB0, I>(words, xk, acc), ...);
}

// A few rows k (a "row chunk") of one block of 16 words (`lanes` masks a short last block), for MB rows of x
// and nibbles NIB0 .. NIB0+NIB-1: dot[m][NIB0 + i][lane] += sum_k x[m, k] * (1 + q/16).
// The running sums live in memory (dot, `dot_stride` floats between rows of x) and are loaded once and stored
// once per chunk, so a chunk of 8 rows costs 1 load + 1 store per 64-byte row of weights on top of the maths.
// Register budget (32 zmm): MB * NIB accumulators + MB broadcasts of x + words + f. MB * NIB <= 16 keeps
// everything in registers; two passes over 4 nibbles beat spilling (the chunk's 8 x 64 B sit in L1 anyway).
// Eight or more independent accumulators are needed to cover the FMA latency (4 cycles, 2 per cycle).
template <int MB, int NIB, int NIB0>
MINIMOE_AVX512 void chunk_dot(const uint32_t* rows_of_words, int64_t row_stride, int64_t rows, __mmask16 lanes,
                              const float* x, int64_t x_stride, float* dot, int64_t dot_stride) {
  __m512 acc[MB][NIB];
  for (int m = 0; m < MB; ++m)
    for (int i = 0; i < NIB; ++i) acc[m][i] = _mm512_loadu_ps(dot + m * dot_stride + (NIB0 + i) * 16);
  for (int64_t k = 0; k < rows; ++k) {
    const __m512i words = _mm512_maskz_loadu_epi32(lanes, rows_of_words + k * row_stride);
    __m512 xk[MB];
    for (int m = 0; m < MB; ++m) xk[m] = _mm512_set1_ps(x[m * x_stride + k]);
    accumulate_row<MB, NIB, NIB0>(words, xk, acc, std::make_integer_sequence<int, NIB>{});
  }
  for (int m = 0; m < MB; ++m)
    for (int i = 0; i < NIB; ++i) _mm512_storeu_ps(dot + m * dot_stride + (NIB0 + i) * 16, acc[m][i]);
}

// chunk_dot for MB rows of x over all 8 nibbles (one pass of 8, or two of 4 when MB > 2).
template <int MB>
MINIMOE_AVX512 void chunk_dot_all_nibbles(const uint32_t* rows_of_words, int64_t row_stride, int64_t rows,
                                          __mmask16 lanes, const float* x, int64_t x_stride, float* dot,
                                          int64_t dot_stride) {
  if constexpr (MB <= 2) {
    chunk_dot<MB, 8, 0>(rows_of_words, row_stride, rows, lanes, x, x_stride, dot, dot_stride);
  } else {
    chunk_dot<MB, 4, 0>(rows_of_words, row_stride, rows, lanes, x, x_stride, dot, dot_stride);
    chunk_dot<MB, 4, 4>(rows_of_words, row_stride, rows, lanes, x, x_stride, dot, dot_stride);
  }
}

// Rows of qweight per chunk in the decode loop (see decode_avx512).
constexpr int64_t kDecodeRowChunk = 8;
// How far ahead of the rows being multiplied the decode loop prefetches, in bytes of its own span of qweight
// (rounded to whole row chunks, 8..32 rows).
constexpr int64_t kDecodePrefetchBytes = 32 * 1024;
// How far ahead (in rows of qweight) the tile dequantization prefetches; see dequant_tile_avx512.
constexpr int64_t kTilePrefetchRows = 16;

}  // namespace

MINIMOE_AVX512 void decode_avx512(const AwqGemmArgs& a, int64_t word_begin, int64_t word_end, int64_t group_begin,
                                  int64_t group_end, float* y) {
  const int64_t words = a.N / 8, groups = a.K / a.G;
  const int64_t blocks = (word_end - word_begin + kBlockWords - 1) / kBlockWords;
  const int64_t width = blocks * kBlockChannels;  // floats per row of x in the buffers below
  const uint16_t* scales = static_cast<const uint16_t*>(a.scales);
  // Both buffers are [M][blocks][128] in packed order: dot = this group's sum of x * (1 + q/16),
  // y_acc = the output so far, summed over groups in order g = 0, 1, ...
  std::vector<float> dot(a.M * width), y_acc(a.M * width, 0.0f);
  const __m512 sixteen = _mm512_set1_ps(16.0f);
  // Software prefetch, about kDecodePrefetchBytes ahead of the rows being multiplied (see the top of the file).
  const int64_t span_bytes = 4 * (word_end - word_begin);
  const int64_t prefetch_rows =
      std::clamp<int64_t>((kDecodePrefetchBytes / span_bytes + kDecodeRowChunk - 1) / kDecodeRowChunk * kDecodeRowChunk,
                          kDecodeRowChunk, 4 * kDecodeRowChunk);

  for (int64_t g = group_begin; g < group_end; ++g) {
    std::fill(dot.begin(), dot.end(), 0.0f);
    for (int64_t k0 = g * a.G; k0 < (g + 1) * a.G; k0 += kDecodeRowChunk) {
      const int64_t rows = std::min(kDecodeRowChunk, (g + 1) * a.G - k0);
      for (int64_t b = 0; b < blocks; ++b) {
        const int64_t w0 = word_begin + b * kBlockWords;
        const __mmask16 lanes = lanes_of(word_end - w0);
        const uint32_t* chunk = a.qweight + k0 * words + w0;
        if (k0 + prefetch_rows + rows <= a.K)
          for (int64_t r = 0; r < rows; ++r)
            _mm_prefetch(reinterpret_cast<const char*>(chunk + (prefetch_rows + r) * words), _MM_HINT_T0);
        for (int64_t m0 = 0; m0 < a.M;) {
          const int64_t rows_left = a.M - m0;
          const int mb = rows_left >= 4 ? 4 : static_cast<int>(rows_left);
          const float* x = a.x + m0 * a.K + k0;
          float* d = dot.data() + m0 * width + b * kBlockChannels;
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
    // Fold the group into y: y += s * (16 * dot - (16 + z) * X), X = this row's sum of x over the group.
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t w0 = word_begin + b * kBlockWords, block_words = std::min(kBlockWords, word_end - w0);
      __m512 s[8], z[8];
      load_scales_packed(scales + g * a.N + 8 * w0, 8 * block_words, s);
      load_zeros_packed(a.qzeros + g * words + w0, lanes_of(block_words), z);
      for (int64_t m = 0; m < a.M; ++m) {
        const __m512 xsum = _mm512_set1_ps(a.xsum[m * groups + g]);
        const float* d = dot.data() + m * width + b * kBlockChannels;
        float* yb = y_acc.data() + m * width + b * kBlockChannels;
        for (int i = 0; i < 8; ++i) {
          const __m512 zx = _mm512_mul_ps(_mm512_add_ps(z[i], sixteen), xsum);  // (16 + z) X
          const __m512 t = _mm512_fmsub_ps(_mm512_loadu_ps(d + i * 16), sixteen, zx);
          _mm512_storeu_ps(yb + i * 16, _mm512_fmadd_ps(s[i], t, _mm512_loadu_ps(yb + i * 16)));
        }
      }
    }
  }
  // Un-permute once: packed position -> channel, only for words that exist.
  for (int64_t m = 0; m < a.M; ++m)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t w0 = word_begin + b * kBlockWords, block_words = std::min(kBlockWords, word_end - w0);
      const float* yb = y_acc.data() + m * width + b * kBlockChannels;
      for (int64_t p = 0; p < kBlockChannels; ++p)
        if (p % kBlockWords < block_words) y[m * a.N + channel_of_packed_position(w0, p)] = yb[p];
    }
}

// Tile dequantization for the prefill path. Loop order k -> block -> nibble writes the tile row by row
// (sequential stores) while reading each qweight row segment once; the per-group scale vectors of all
// blocks (2 x 8 vectors each) are prepared at the group's first row and read back from L1.
// Value = (q - z) * s = 16 s f - (16 + z) s with f = 1 + q/16: one FMA, exact (the result fits in fp32).
// Known weakness: a tile is only 512 columns wide (256 B of each qweight row, rows 7 KB apart), the access
// pattern the decode path had to abandon; the software prefetch 16 rows ahead helps but does not cure it, and
// the tile (4-8 MB at K = 4096) does not fit in L2. See docs/kernels-cpu.md for what that costs.
MINIMOE_AVX512 void dequant_tile_avx512(const AwqGemmArgs& a, int64_t word_begin, int64_t word_end, void* tile,
                                        bool bf16) {
  const int64_t words = a.N / 8, groups = a.K / a.G;
  const int64_t blocks = (word_end - word_begin + kBlockWords - 1) / kBlockWords;
  const int64_t width = blocks * kBlockChannels;
  const uint16_t* scales = static_cast<const uint16_t*>(a.scales);
  std::vector<float> s16(blocks * kBlockChannels), zs(blocks * kBlockChannels);  // 16 s, (16 + z) s; packed order
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t w0 = word_begin + b * kBlockWords, block_words = std::min(kBlockWords, word_end - w0);
      __m512 s[8], z[8];
      load_scales_packed(scales + g * a.N + 8 * w0, 8 * block_words, s);
      load_zeros_packed(a.qzeros + g * words + w0, lanes_of(block_words), z);
      for (int i = 0; i < 8; ++i) {
        _mm512_storeu_ps(&s16[b * kBlockChannels + i * 16], _mm512_mul_ps(s[i], _mm512_set1_ps(16.0f)));
        _mm512_storeu_ps(&zs[b * kBlockChannels + i * 16], _mm512_mul_ps(_mm512_add_ps(z[i], _mm512_set1_ps(16.0f)), s[i]));
      }
    }
    for (int64_t k = g * a.G; k < (g + 1) * a.G; ++k) {
      for (int64_t b = 0; b < blocks; ++b) {
        const int64_t w0 = word_begin + b * kBlockWords;
        const __m512i w = _mm512_maskz_loadu_epi32(lanes_of(word_end - w0), a.qweight + k * words + w0);
        if (k + kTilePrefetchRows < a.K)
          _mm_prefetch(reinterpret_cast<const char*>(a.qweight + (k + kTilePrefetchRows) * words + w0), _MM_HINT_T1);
        __m512 v[8];
        v[0] = nibble_as_one_plus_q16<0>(w), v[1] = nibble_as_one_plus_q16<1>(w);
        v[2] = nibble_as_one_plus_q16<2>(w), v[3] = nibble_as_one_plus_q16<3>(w);
        v[4] = nibble_as_one_plus_q16<4>(w), v[5] = nibble_as_one_plus_q16<5>(w);
        v[6] = nibble_as_one_plus_q16<6>(w), v[7] = nibble_as_one_plus_q16<7>(w);
        const int64_t offset = k * width + b * kBlockChannels;
        for (int i = 0; i < 8; ++i) {
          // Padding lanes: s = 0 and z = 0 there, so the value is exactly 0.
          const __m512 value = _mm512_fmsub_ps(v[i], _mm512_loadu_ps(&s16[b * kBlockChannels + i * 16]),
                                               _mm512_loadu_ps(&zs[b * kBlockChannels + i * 16]));
          if (bf16) {
            const __m256i half = _mm512_cvtepi32_epi16(_mm512_srli_epi32(round_to_bf16_bits(value), 16));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(tile) + offset + i * 16), half);
          } else {
            _mm512_storeu_ps(static_cast<float*>(tile) + offset + i * 16, value);
          }
        }
      }
    }
  }
}

}  // namespace cpu
}  // namespace minimoe

#else  // not x86-64: no AVX-512 kernels; the driver's scalar path runs instead.

namespace minimoe {
namespace cpu {
bool avx512_available() { return false; }
void decode_avx512(const AwqGemmArgs&, int64_t, int64_t, int64_t, int64_t, float*) {}
void dequant_tile_avx512(const AwqGemmArgs&, int64_t, int64_t, void*, bool) {}
}  // namespace cpu
}  // namespace minimoe

#endif
