// avx512_inl.h - small AVX-512 building blocks shared by the CPU kernels (awq_gemm_avx512.cpp, prefill_*.cpp).
//
// Include only from x86-64 GCC/Clang translation units (inside their #if). Every function carries the
// MINIMOE_AVX512 target attribute: the files are compiled without -march, and the driver calls into them only
// after avx512_available() has asked cpuid. See awq_gemm_avx512.cpp for the nibble trick explained in full.
#pragma once

// GCC 12 reports false "may be used uninitialized" warnings from inside its own AVX-512 headers
// (their _mm512_undefined_* placeholders) at -Wall; they say nothing about our code.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "awq_gemm.h"

#define MINIMOE_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))

namespace minimoe {
namespace cpu {
namespace avx512 {

// Nibble `Nib` of each of 16 packed words as the float 1 + q/16 (awq_gemm_avx512.cpp explains why).
template <int Nib>
MINIMOE_AVX512 inline __m512 nibble_as_one_plus_q16(__m512i words) {
  static_assert(0 <= Nib && Nib < 8, "a word holds 8 nibbles");
  const __m512i rotated = _mm512_rol_epi32(words, (19 - 4 * Nib) & 31);  // nibble -> bits 19..22
  // vpternlogd truth table 0xEA = (A & B) | C with A = rotated, B = mask, C = the bits of 1.0f.
  const __m512i bits =
      _mm512_ternarylogic_epi32(rotated, _mm512_set1_epi32(0xF << 19), _mm512_set1_epi32(0x3F800000), 0xEA);
  return _mm512_castsi512_ps(bits);
}

// The 16-bit gather indices that put a block's 128 fp16 scales into packed order, two nibbles per vector:
// output half t (0..31) is nibble 2p + t/16, lane l = t % 16, and sits at half 8 * (l % 8) + ORDER[nibble]
// of the pair of source registers holding words 0..7 (l < 8) or words 8..15 (l >= 8).
struct ScaleGather {
  alignas(64) uint16_t index[4][32];
  ScaleGather() {
    for (int p = 0; p < 4; ++p)
      for (int t = 0; t < 32; ++t) {
        const int nibble = 2 * p + t / 16, lane = t % 16;
        index[p][t] = static_cast<uint16_t>(8 * (lane % 8) + (nibble & 3) * 2 + (nibble >> 2));
      }
  }
};
inline const ScaleGather kScaleGather;

// Scales of one block and group, fp16 -> fp32, in packed order: s[i] lane l = scale of channel 8(w0+l)+ORDER[i].
// Four 64-byte loads bring the 128 halves in channel order; two vpermt2w + one blend per pair of nibbles
// reorder them. (The alternative, reordering the accumulators to channel order, is an 8 x 16 transpose per
// group per row of x; reordering 128 scales once per group costs about 1% of the strip's work.)
MINIMOE_AVX512 inline void load_scales_packed(const uint16_t* row, int64_t valid_halves, __m512 (&s)[8]) {
  __m512i h[4];
  for (int r = 0; r < 4; ++r) {
    const int64_t left = std::clamp<int64_t>(valid_halves - 32 * r, 0, 32);
    const __mmask32 mask = left == 32 ? ~__mmask32(0) : ((__mmask32(1) << left) - 1);
    h[r] = _mm512_maskz_loadu_epi16(mask, row + 32 * r);
  }
  for (int p = 0; p < 4; ++p) {
    const __m512i idx = _mm512_load_si512(kScaleGather.index[p]);
    const __m512i low_words = _mm512_permutex2var_epi16(h[0], idx, h[1]);   // lanes l < 8
    const __m512i high_words = _mm512_permutex2var_epi16(h[2], idx, h[3]);  // lanes l >= 8
    const __m512i both = _mm512_mask_blend_epi16(0xFF00FF00u, low_words, high_words);
    s[2 * p] = _mm512_cvtph_ps(_mm512_castsi512_si256(both));
    s[2 * p + 1] = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(both, 1));
  }
}

// Zero points of one block and group, already in packed order (qzeros is packed like qweight): z[i] = nibble i.
MINIMOE_AVX512 inline void load_zeros_packed(const uint32_t* words, __mmask16 lanes, __m512 (&z)[8]) {
  const __m512i packed = _mm512_maskz_loadu_epi32(lanes, words);
  for (int i = 0; i < 8; ++i) {
    const __m512i code = _mm512_and_si512(_mm512_srlv_epi32(packed, _mm512_set1_epi32(4 * i)), _mm512_set1_epi32(0xF));
    z[i] = _mm512_cvtepi32_ps(code);
  }
}

// fp32 -> bf16, round to nearest even, in integer ops (no AVX512-BF16 needed): add 0x7FFF + the lowest bit that
// is kept (bit 16), so ties go to even. The bf16 is the top half of each returned lane; the low half is garbage.
MINIMOE_AVX512 inline __m512i round_to_bf16_bits(__m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  return _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF)));
}

// Lane mask for a block holding `words_in_block` packed words (a short last block when N % 128 != 0).
MINIMOE_AVX512 inline __mmask16 lanes_of(int64_t words_in_block) {
  return words_in_block >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << words_in_block) - 1);
}

}  // namespace avx512
}  // namespace cpu
}  // namespace minimoe
