// awq_gemm_neon.cpp - the ARM64 (AArch64 NEON) tier of minimoe::awq_gemm and minimoe::linear_stored: Apple
// Silicon, Graviton, Ampere, Raspberry Pi 4/5. Driver: awq_gemm.cpp (and linear_stored.cpp). Contract: awq_gemm.h.
//
// Torch-free on purpose (raw pointers, no threads): the same file is compiled into the extension on an aarch64
// machine and, on any x86 machine, by a cross compiler into a small static program (tests/native/neon_harness.cpp)
// that tests/test_neon.py runs under qemu-aarch64 against the pure-PyTorch spec. NEON and the fp16 <-> fp32
// conversions are part of every AArch64 CPU (ARMv8-A), so there is no run-time feature check.
//
// Three kernels, each the AVX2 one's idea at 128 bits (4 floats a register, but 32 registers instead of 16):
//
// decode_neon (small M): nibble i of a word is taken in place, `word & (0xF << 4i)` = q * 16^i, and converted as
//   UNSIGNED (vcvtq_f32_u32), so even nibble 7 (up to 15 * 2^28) needs no shift; the fold multiplies by 16^-i
//   (a power of two: no rounding changes). Strips of 16 words (one 64-byte line of a qweight row, 4 registers),
//   16-row chunks sweeping every strip, running sums in packed order (awq_gemm.h, 16 words per block). Every sum
//   is the plain fp32 fused sum of x * q in k order (scaled by a power of two), then s * (D - z X): the same
//   operations, in the same order, as the AVX2 loop, so the two give the same bits, barring overflow or
//   subnormal products (AVX2 takes nibble 7 unscaled, here it is scaled by 2^28: for |x| above ~1e26 or products
//   below 2^-126 the two can differ; real activations are many orders of magnitude inside both).
//
// prefill_neon (large M): exact fp32 weights (q - z) * s dequantized per block of 128 channels and chunk of rows
//   into a strip-major panel, then a 4-row x 16-column micro-kernel: 16 accumulators, 4 panel registers, x of the
//   4 rows in one register used lane by lane (vfmaq_laneq_f32). One fused running sum per output in k order: the
//   same bits as the AVX2 and AVX-512 fp32 prefill kernels, for any split of the column blocks.
//
// linear_rows_neon (linear_stored, the fp16/bf16 lm_head): 4 rows of W against one row of x, 2 accumulators
//   each, weights widened in registers (fp16: vcvt_f32_f16; bf16: a 16-bit shift), optionally rounded to bf16.
//
// Speed: not measured on ARM hardware (none was available: the tests run under an emulator, which says nothing
// about speed). The blocking follows the x86 kernels' measured choices; docs/kernels-cpu.md says so.
#include "awq_gemm.h"

#if defined(__aarch64__)

#include <arm_neon.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "../dequant.h"
#include "decode_strips.h"

namespace minimoe {
namespace cpu {

bool neon_available() { return true; }  // AArch64: NEON and fp16 conversion are mandatory

namespace {

using strips::kStripChannels, strips::kStripWords;  // decode_strips.h: the loop nest shared with AVX2

// The 16 words of one strip of row `row`: the whole line, or (a short last strip) the valid words and zeros.
template <bool Full>
inline void load_strip(const uint32_t* row, int64_t strip_words, uint32x4_t (&w)[4]) {
  if constexpr (Full) {
    for (int q = 0; q < 4; ++q) w[q] = vld1q_u32(row + 4 * q);
  } else {
    uint32_t padded[kStripWords] = {};
    std::memcpy(padded, row, strip_words * sizeof(uint32_t));
    for (int q = 0; q < 4; ++q) w[q] = vld1q_u32(padded + 4 * q);
  }
}

// Nibble Nib of 4 words as floats q * 16^Nib (exact: 4 significant bits, below 2^32).
template <int Nib>
inline float32x4_t codes_scaled(uint32x4_t words) {
  return vcvtq_f32_u32(vandq_u32(words, vdupq_n_u32(0xFu << (4 * Nib))));
}

// acc[m][i][q] += x[m, k] * nibble NIB0 + i of quarter q of the strip, for i < NP.
template <int MB, int NP, int NIB0, int I = 0>
inline void nibbles(const uint32x4_t (&w)[4], const float32x4_t (&xk)[MB], float32x4_t (&acc)[MB][NP][4]) {
  if constexpr (I < NP) {
    for (int q = 0; q < 4; ++q) {
      const float32x4_t f = codes_scaled<NIB0 + I>(w[q]);
      for (int m = 0; m < MB; ++m) acc[m][I][q] = vfmaq_f32(acc[m][I][q], xk[m], f);
    }
    nibbles<MB, NP, NIB0, I + 1>(w, xk, acc);
  }
}

// One pass over `rows` rows of one strip: nibbles NIB0 .. NIB0 + NP - 1, MB rows of x (MB * NP * 4 = 16
// accumulators). dot (per row of x: 128 floats, packed order, stride dot_stride) holds the running sums.
template <int MB, int NP, int NIB0, bool Full>
inline void strip_pass(const uint32_t* rows_of_words, int64_t row_stride, int64_t rows, int64_t strip_words,
                       const float* x, int64_t x_stride, float* dot, int64_t dot_stride) {
  float32x4_t acc[MB][NP][4];
  for (int m = 0; m < MB; ++m)
    for (int i = 0; i < NP; ++i)
      for (int q = 0; q < 4; ++q) acc[m][i][q] = vld1q_f32(dot + m * dot_stride + (NIB0 + i) * 16 + 4 * q);
  for (int64_t k = 0; k < rows; ++k) {
    uint32x4_t w[4];
    load_strip<Full>(rows_of_words + k * row_stride, strip_words, w);
    float32x4_t xk[MB];
    for (int m = 0; m < MB; ++m) xk[m] = vdupq_n_f32(x[m * x_stride + k]);
    nibbles<MB, NP, NIB0>(w, xk, acc);
  }
  for (int m = 0; m < MB; ++m)
    for (int i = 0; i < NP; ++i)
      for (int q = 0; q < 4; ++q) vst1q_f32(dot + m * dot_stride + (NIB0 + i) * 16 + 4 * q, acc[m][i][q]);
}

// All 8 nibbles for MB rows of x: 8 / NP passes over the chunk (the first reads it from memory, the others L1).
template <int MB, bool Full, int NIB0 = 0>
inline void strip_chunk(const uint32_t* rows_of_words, int64_t row_stride, int64_t rows, int64_t strip_words,
                        const float* x, int64_t x_stride, float* dot, int64_t dot_stride) {
  constexpr int NP = 4 / MB;
  if constexpr (NIB0 < 8) {
    strip_pass<MB, NP, NIB0, Full>(rows_of_words, row_stride, rows, strip_words, x, x_stride, dot, dot_stride);
    strip_chunk<MB, Full, NIB0 + NP>(rows_of_words, row_stride, rows, strip_words, x, x_stride, dot, dot_stride);
  }
}

template <bool Full>
void chunk_all_rows(const AwqGemmArgs& a, const uint32_t* chunk, int64_t rows, int64_t strip_words, const float* x,
                    float* dot, int64_t dot_stride) {
  const int64_t words = a.N / 8;
  for (int64_t m0 = 0; m0 < a.M;) {
    const int64_t left = a.M - m0;
    const int mb = left >= 4 ? 4 : left >= 2 ? 2 : 1;
    const float* xm = x + m0 * a.K;
    float* d = dot + m0 * dot_stride;
    if (mb == 4) strip_chunk<4, Full>(chunk, words, rows, strip_words, xm, a.K, d, dot_stride);
    else if (mb == 2) strip_chunk<2, Full>(chunk, words, rows, strip_words, xm, a.K, d, dot_stride);
    else strip_chunk<1, Full>(chunk, words, rows, strip_words, xm, a.K, d, dot_stride);
    m0 += mb;
  }
}

// Scales (fp16 -> fp32) and zero points of one group for the 128 packed positions of a strip (or block) of
// `block_words` words at word w0; positions of words past the valid ones get 0 (they then add exactly 0).
void group_params(const AwqGemmArgs& a, int64_t g, int64_t w0, int64_t valid_words, int64_t block_words,
                  float* s, float* z) {
  const int64_t words = a.N / 8;
  const uint16_t* scales = static_cast<const uint16_t*>(a.scales) + g * a.N;
  alignas(16) uint16_t bits[kStripChannels];
  for (int64_t p = 0; p < kStripChannels; ++p) {
    bits[p] = 0;
    z[p] = 0.0f;
    if (p % block_words < valid_words) {
      const int64_t channel = channel_of_packed_position(w0, p, block_words);
      bits[p] = scales[channel];
      z[p] = static_cast<float>(awq_code(a.qzeros[g * words + channel / 8], channel % 8));
    }
  }
  for (int64_t p = 0; p < kStripChannels; p += 4) vst1q_f32(s + p, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(bits + p))));
}

// y_acc[m] (packed order) += s * (dot / 16^i - z * X[m, g]) for one strip and group: the AVX2 fold's operations.
void fold_strip(const AwqGemmArgs& a, int64_t g, int64_t strip_word, int64_t strip_words, const float* dot,
                int64_t dot_stride, float* y_acc, int64_t y_stride) {
  const int64_t groups = a.K / a.G;
  alignas(16) float s[kStripChannels], z[kStripChannels];
  group_params(a, g, strip_word, strip_words, kStripWords, s, z);
  for (int i = 0; i < 8; ++i) {
    const float32x4_t back = vdupq_n_f32(1.0f / static_cast<float>(1u << (4 * i)));
    for (int64_t m = 0; m < a.M; ++m) {
      const float32x4_t xsum = vdupq_n_f32(a.xsum[m * groups + g]);
      for (int q = 0; q < 4; ++q) {
        const int p = i * 16 + 4 * q;
        const float32x4_t d = vmulq_f32(vld1q_f32(dot + m * dot_stride + p), back);
        float* ya = y_acc + m * y_stride + p;
        vst1q_f32(ya, vfmaq_f32(vld1q_f32(ya), vld1q_f32(s + p), vfmsq_f32(d, vld1q_f32(z + p), xsum)));
      }
    }
  }
}

// ---- prefill --------------------------------------------------------------------------------------------
constexpr int kTileRows = 4;          // rows of x per micro-kernel: one register of x, used lane by lane
constexpr int64_t kChunkRows = 256;   // rows of W^T per panel: 256 x 128 x 4 B = 128 KB

// The exact fp32 weights of rows k0 .. k0 + rows of the block at word w0, strip-major: nibble i of the block's
// 16 words (packed positions 16 i .. 16 i + 15) is panel[i * rows * 16 + (k - k0) * 16 + l]. Padding lanes: 0.
void dequant_panel(const AwqGemmArgs& a, int64_t k0, int64_t rows, int64_t w0, int64_t valid_words, float* panel) {
  const int64_t words = a.N / 8;
  alignas(16) float s[kBlockChannels], z[kBlockChannels];
  int64_t group = -1;
  for (int64_t k = k0; k < k0 + rows; ++k) {
    if (k / a.G != group) {
      group = k / a.G;
      group_params(a, group, w0, valid_words, kBlockWords, s, z);
    }
    uint32x4_t w[4];
    if (valid_words == kBlockWords) load_strip<true>(a.qweight + k * words + w0, valid_words, w);
    else load_strip<false>(a.qweight + k * words + w0, valid_words, w);
    for (int i = 0; i < 8; ++i) {
      const int32x4_t shift = vdupq_n_s32(-4 * i);  // a right shift by 4 i
      for (int q = 0; q < 4; ++q) {
        const int p = i * 16 + 4 * q;
        const float32x4_t code = vcvtq_f32_u32(vandq_u32(vshlq_u32(w[q], shift), vdupq_n_u32(0xF)));
        vst1q_f32(panel + i * rows * 16 + (k - k0) * 16 + 4 * q,
                  vmulq_f32(vsubq_f32(code, vld1q_f32(z + p)), vld1q_f32(s + p)));
      }
    }
  }
}

// c[4, 128] (row stride 128) = (accumulate ? c : 0) + xp^T @ panel over `rows` rows k, strip by strip.
// xp: the tile's x packed [k][4] (rows past the tile's height are 0 and never stored by the caller).
void tile_times_panel(const float* xp, const float* panel, int64_t rows, float* c, bool accumulate) {
  for (int j = 0; j < 8; ++j) {
    const float* w = panel + j * rows * 16;
    float32x4_t acc[kTileRows][4];
    for (int r = 0; r < kTileRows; ++r)
      for (int q = 0; q < 4; ++q)
        acc[r][q] = accumulate ? vld1q_f32(c + r * kBlockChannels + 16 * j + 4 * q) : vdupq_n_f32(0.0f);
    for (int64_t k = 0; k < rows; ++k) {
      const float32x4_t xv = vld1q_f32(xp + k * kTileRows);
      const float32x4_t b0 = vld1q_f32(w + k * 16), b1 = vld1q_f32(w + k * 16 + 4), b2 = vld1q_f32(w + k * 16 + 8),
                        b3 = vld1q_f32(w + k * 16 + 12);
#define MINIMOE_NEON_ROW(r)                         \
  acc[r][0] = vfmaq_laneq_f32(acc[r][0], b0, xv, r); \
  acc[r][1] = vfmaq_laneq_f32(acc[r][1], b1, xv, r); \
  acc[r][2] = vfmaq_laneq_f32(acc[r][2], b2, xv, r); \
  acc[r][3] = vfmaq_laneq_f32(acc[r][3], b3, xv, r);
      MINIMOE_NEON_ROW(0) MINIMOE_NEON_ROW(1) MINIMOE_NEON_ROW(2) MINIMOE_NEON_ROW(3)
#undef MINIMOE_NEON_ROW
    }
    for (int r = 0; r < kTileRows; ++r)
      for (int q = 0; q < 4; ++q) vst1q_f32(c + r * kBlockChannels + 16 * j + 4 * q, acc[r][q]);
  }
}

// ---- linear_stored --------------------------------------------------------------------------------------
// 4 stored weights -> 4 fp32, rounded to bf16 (nearest even, as avx512::round_to_bf16_bits) when asked.
template <bool kFp16, bool kRoundBf16>
inline float32x4_t widen4(uint16x4_t stored) {
  float32x4_t v = kFp16 ? vcvt_f32_f16(vreinterpret_f16_u16(stored)) : vreinterpretq_f32_u32(vshll_n_u16(stored, 16));
  if constexpr (kRoundBf16) {
    const uint32x4_t bits = vreinterpretq_u32_f32(v);
    const uint32x4_t odd = vandq_u32(vshrq_n_u32(bits, 16), vdupq_n_u32(1));
    const uint32x4_t rounded = vaddq_u32(bits, vaddq_u32(odd, vdupq_n_u32(0x7FFF)));
    v = vreinterpretq_f32_u32(vandq_u32(rounded, vdupq_n_u32(0xFFFF0000u)));
  }
  return v;
}

// out[r] = row r of W (R rows, stride K) . x: 2 accumulators per row over steps of 8, the K % 8 tail as one
// zero-padded step, then (acc0 + acc1) summed across lanes in a fixed order (vaddvq_f32: pairwise).
template <int R, bool kFp16, bool kRoundBf16>
inline void dot_rows(const float* x, const uint16_t* w, int64_t K, float* out) {
  float32x4_t acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = vdupq_n_f32(0.0f);
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    const float32x4_t x0 = vld1q_f32(x + k), x1 = vld1q_f32(x + k + 4);
    for (int r = 0; r < R; ++r) {
      acc[r][0] = vfmaq_f32(acc[r][0], x0, widen4<kFp16, kRoundBf16>(vld1_u16(w + r * K + k)));
      acc[r][1] = vfmaq_f32(acc[r][1], x1, widen4<kFp16, kRoundBf16>(vld1_u16(w + r * K + k + 4)));
    }
  }
  if (k < K) {
    alignas(16) float xt[8] = {};
    std::memcpy(xt, x + k, (K - k) * sizeof(float));
    const float32x4_t x0 = vld1q_f32(xt), x1 = vld1q_f32(xt + 4);
    for (int r = 0; r < R; ++r) {
      alignas(16) uint16_t wt[8] = {};
      std::memcpy(wt, w + r * K + k, (K - k) * sizeof(uint16_t));
      acc[r][0] = vfmaq_f32(acc[r][0], x0, widen4<kFp16, kRoundBf16>(vld1_u16(wt)));
      acc[r][1] = vfmaq_f32(acc[r][1], x1, widen4<kFp16, kRoundBf16>(vld1_u16(wt + 4)));
    }
  }
  for (int r = 0; r < R; ++r) out[r] = vaddvq_f32(vaddq_f32(acc[r][0], acc[r][1]));
}

template <bool kFp16, bool kRoundBf16>
void linear_rows_t(const float* x, const uint16_t* w, int64_t M, int64_t K, int64_t N, int64_t n0, int64_t n1,
                   float* y) {
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4)
    for (int64_t m = 0; m < M; ++m) {
      float out[4];
      dot_rows<4, kFp16, kRoundBf16>(x + m * K, w + n * K, K, out);
      for (int r = 0; r < 4; ++r) y[m * N + n + r] = out[r];
    }
  for (; n < n1; ++n)
    for (int64_t m = 0; m < M; ++m) dot_rows<1, kFp16, kRoundBf16>(x + m * K, w + n * K, K, y + m * N + n);
}

}  // namespace

void decode_neon(const AwqGemmArgs& a, int64_t word_begin, int64_t word_end, int64_t group_begin, int64_t group_end,
                 float* y) {
  strips::decode(
      a, word_begin, word_end, group_begin, group_end, y,
      [&](const uint32_t* chunk, int64_t rows, int64_t strip_words, const float* x, float* dot, int64_t stride,
          bool /*prefetch: the AVX2 loop's; not tried here*/) {
        if (strip_words == kStripWords) chunk_all_rows<true>(a, chunk, rows, strip_words, x, dot, stride);
        else chunk_all_rows<false>(a, chunk, rows, strip_words, x, dot, stride);
      },
      [&](int64_t g, int64_t w0, int64_t strip_words, const float* dot, int64_t dot_stride, float* y_acc,
          int64_t y_stride) { fold_strip(a, g, w0, strip_words, dot, dot_stride, y_acc, y_stride); });
}

int64_t neon_packed_x_floats(int64_t M, int64_t K) { return (M + kTileRows - 1) / kTileRows * kTileRows * K; }

void neon_pack_x(const float* x, int64_t M, int64_t K, float* xp) {
  for (int64_t t = 0; t < (M + kTileRows - 1) / kTileRows; ++t)
    for (int64_t k = 0; k < K; ++k)
      for (int r = 0; r < kTileRows; ++r) {
        const int64_t m = t * kTileRows + r;
        xp[(t * K + k) * kTileRows + r] = m < M ? x[m * K + k] : 0.0f;
      }
}

void prefill_neon(const AwqGemmArgs& a, const float* xp, int64_t block_begin, int64_t block_end, float* y) {
  const int64_t words = a.N / 8, tiles = (a.M + kTileRows - 1) / kTileRows;
  const int64_t chunk = std::min(kChunkRows, a.K);
  std::vector<float> panel(chunk * kBlockChannels), c(tiles * kTileRows * kBlockChannels);
  for (int64_t b = block_begin; b < block_end; ++b) {
    const int64_t w0 = b * kBlockWords, valid_words = std::min(words, w0 + kBlockWords) - w0;
    for (int64_t k0 = 0; k0 < a.K; k0 += chunk) {
      const int64_t kc = std::min(chunk, a.K - k0);
      dequant_panel(a, k0, kc, w0, valid_words, panel.data());
      for (int64_t t = 0; t < tiles; ++t)
        tile_times_panel(xp + (t * a.K + k0) * kTileRows, panel.data(), kc, c.data() + t * kTileRows * kBlockChannels,
                         k0 > 0);
    }
    for (int64_t m = 0; m < a.M; ++m)  // back to channel order, once per output
      for (int64_t p = 0; p < kBlockChannels; ++p)
        if (p % kBlockWords < valid_words)
          y[m * a.N + channel_of_packed_position(w0, p)] = c[m * kBlockChannels + p];
  }
}

void linear_rows_neon(const float* x, const uint16_t* w, bool fp16, bool round_bf16, int64_t M, int64_t K, int64_t N,
                      int64_t n0, int64_t n1, float* y) {
  if (fp16 && round_bf16) linear_rows_t<true, true>(x, w, M, K, N, n0, n1, y);
  else if (fp16) linear_rows_t<true, false>(x, w, M, K, N, n0, n1, y);
  else linear_rows_t<false, false>(x, w, M, K, N, n0, n1, y);  // bf16 weights: already bf16, no rounding
}

}  // namespace cpu
}  // namespace minimoe

#else  // not AArch64: no NEON tier; the driver never calls these (neon_available() is false) but they must link.

namespace minimoe {
namespace cpu {
bool neon_available() { return false; }
void decode_neon(const AwqGemmArgs&, int64_t, int64_t, int64_t, int64_t, float*) {}
int64_t neon_packed_x_floats(int64_t, int64_t) { return 0; }
void neon_pack_x(const float*, int64_t, int64_t, float*) {}
void prefill_neon(const AwqGemmArgs&, const float*, int64_t, int64_t, float*) {}
void linear_rows_neon(const float*, const uint16_t*, bool, bool, int64_t, int64_t, int64_t, int64_t, int64_t,
                      float*) {}
}  // namespace cpu
}  // namespace minimoe

#endif
