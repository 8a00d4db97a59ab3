// dequant.h - the AWQ nibble layout, written once, shared by every kernel (CPU, CUDA, experiments).
//
// Everything here is `MINIMOE_HD` (= __host__ __device__ under nvcc, plain inline elsewhere), so the exact
// same lines run inside CUDA kernels and inside the CPU build, where the tests compare them with the
// pure-PyTorch spec in minimoe/awq.py. If this file is right on the host, the GPU reads nibbles the same way.
//
// One int32 word of qweight holds 8 consecutive output channels 8c .. 8c+7 of one input row k,
// but NOT in natural order (AutoAWQ interleaves them so that its GPU kernel can convert pairs fast):
//
//   bit:      31..28  27..24  23..20  19..16  15..12  11..8   7..4    3..0
//   nibble:     7       6       5       4       3       2       1       0
//   channel:  8c+7    8c+5    8c+3    8c+1    8c+6    8c+4    8c+2    8c+0
//
//   nibble i holds channel 8c + ORDER[i],    ORDER   = {0, 2, 4, 6, 1, 3, 5, 7}
//   channel 8c + j sits in nibble REVERSE[j], REVERSE = {0, 4, 1, 5, 2, 6, 3, 7}
//
// qzeros uses the same packing along N (one word = 8 channels of one group).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define MINIMOE_HD __host__ __device__ __forceinline__
#else
#define MINIMOE_HD inline
#endif

namespace minimoe {

constexpr int kAwqBits = 4;
constexpr int kAwqPackFactor = 32 / kAwqBits;  // 8 codes per int32 word

// The nibble index (0..7) that holds channel j (0..7) of a word: REVERSE[j] = (j % 2) * 4 + j / 2.
// Written as arithmetic rather than a table so that device code needs no constant memory.
MINIMOE_HD int awq_nibble_of_channel(int j) { return (j & 1) * 4 + (j >> 1); }

// The channel (0..7) held by nibble i: ORDER[i] = (i % 4) * 2 + i / 4.
MINIMOE_HD int awq_channel_of_nibble(int i) { return (i & 3) * 2 + (i >> 2); }

// Code (0..15) of channel j within a packed word. The word is treated as unsigned: a signed int32 with its
// top nibble >= 8 is negative, and an arithmetic right shift would smear the sign bit into the code.
MINIMOE_HD uint32_t awq_code(uint32_t word, int j) {
  return (word >> (4 * awq_nibble_of_channel(j))) & 0xFu;
}

// All 8 codes of a word in natural channel order: codes[j] = code of channel 8c + j.
MINIMOE_HD void awq_unpack_word(uint32_t word, uint8_t codes[8]) {
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int j = 0; j < 8; ++j) codes[j] = static_cast<uint8_t>(awq_code(word, j));
}

// Dequantize one weight: W^T[k, n] = (q - z) * s. Kept in float: callers convert to their dtype.
MINIMOE_HD float awq_dequant(uint32_t code, uint32_t zero, float scale) {
  return (static_cast<float>(code) - static_cast<float>(zero)) * scale;
}

}  // namespace minimoe

// ===========================================================================================================
// The magic-number int4 -> fp16 / bf16 conversion, written as plain bit operations (appended for the CUDA
// kernels, csrc/cuda/; tests/test_dequant_host.py runs these exact lines on the host).
//
// A GPU has no "int4 -> half" instruction, and going through int -> float -> half costs three instructions per
// weight. The trick: a float whose exponent makes one mantissa step worth exactly 1.0 turns an integer OR-ed
// into its low mantissa bits into that float plus the integer.
//
//   fp16 1024.0 = 0x6400 = 0 | 11001 | 0000000000      exponent 25 - 15 = 10, so 10 mantissa bits step by 1.0
//        0x6400 | q       = 1024 + q   (exactly, for 0 <= q < 1024)
//   bf16  128.0 = 0x4300 = 0 | 10000110 | 0000000      exponent 134 - 127 = 7, so 7 mantissa bits step by 1.0
//        0x4300 | q       = 128 + q    (exactly, for 0 <= q < 128)
//
// One 32-bit register holds two 16-bit halves, so one AND + one OR (a single `lop3` on the GPU) converts two
// nibbles at once. With AWQ's nibble order (top of this file) the mask 0x000F000F picks nibbles 0 and 4, i.e.
// channels 0 and 1, and shifting the word right by 4*p first picks nibbles p and p+4 = channels 2p and 2p+1:
//
//   word >> 4p:  .... .... .... [n(p+4)] .... .... .... [n(p)]     (n(i) = nibble i of the word)
//   & 0x000F000F 0000 0000 0000 [n(p+4)] 0000 0000 0000 [n(p)]
//   | 0x64006400 0110 0100 0000 [n(p+4)] 0110 0100 0000 [n(p)]
//                \______ high half: 1024 + q[2p+1] _____/ \______ low half: 1024 + q[2p] _______/
//
// So pair p of a word is (low, high) = (channel 2p, channel 2p+1): the pairs come out in natural channel order,
// exactly as half2 scales [.., 8c + 2p .. 8c + 2p + 1] sit in memory. Subtracting the zero point converted the
// same way, (1024 + q) - (1024 + z) = q - z, is exact in fp16 (and (128 + q) - (128 + z) in bf16): both are
// integers far below 2^10 (2^7). Only the multiply by the scale rounds, once, as awq.dequantize(dtype=half)
// rounds.
// ===========================================================================================================

namespace minimoe {

constexpr uint32_t kAwqPairMask = 0x000F000Fu;     // nibbles p and p+4 after the shift by 4p
constexpr uint32_t kAwqFp16Magic2 = 0x64006400u;   // two fp16 1024.0
constexpr uint32_t kAwqBf16Magic2 = 0x43004300u;   // two bf16 128.0
constexpr float kAwqFp16MagicValue = 1024.0f;
constexpr float kAwqBf16MagicValue = 128.0f;

// Pair p (0..3) of a packed word as two 16-bit floats (low half = channel 2p, high half = channel 2p+1), each
// equal to magic + code. `magic2` is kAwqFp16Magic2 or kAwqBf16Magic2. On the GPU this is one lop3 (+ a shift).
MINIMOE_HD uint32_t awq_magic_pair(uint32_t word, int p, uint32_t magic2) {
  const uint32_t shifted = word >> (4 * p);
#if defined(__CUDA_ARCH__)
  // lop3 computes any 3-input boolean function; the lookup table is f(0xF0, 0xCC, 0xAA) for f = (a & b) | c:
  // (0xF0 & 0xCC) | 0xAA = 0xC0 | 0xAA = 0xEA.
  uint32_t out;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(out) : "r"(shifted), "r"(kAwqPairMask), "r"(magic2));
  return out;
#else
  return (shifted & kAwqPairMask) | magic2;
#endif
}

// The channel (0..7 within the word) held by the low and high half of pair p: 2p and 2p+1.
MINIMOE_HD int awq_pair_low_channel(int p) { return 2 * p; }
MINIMOE_HD int awq_pair_high_channel(int p) { return 2 * p + 1; }

// Value of a 16-bit float bit pattern, computed with integer ops and exact float scaling (host-testable,
// no half type needed). Only used by the host tests and the simple kernels' checks; normal numbers only
// (the magic patterns and all AWQ scales of interest are normal; a zero pattern returns 0).
MINIMOE_HD float awq_fp16_bits_to_float(uint32_t bits16) {
  const uint32_t sign = (bits16 >> 15) & 1u, exponent = (bits16 >> 10) & 0x1Fu, mantissa = bits16 & 0x3FFu;
  float magnitude;
  if (exponent == 0) {
    magnitude = static_cast<float>(mantissa) * (1.0f / 16777216.0f);  // subnormal: m * 2^-24
  } else {
    // (1024 + m) * 2^(e - 25), built by repeated exact doublings/halvings (e is at most 30).
    magnitude = static_cast<float>(1024u + mantissa);
    for (int e = static_cast<int>(exponent); e > 25; --e) magnitude *= 2.0f;
    for (int e = static_cast<int>(exponent); e < 25; ++e) magnitude *= 0.5f;
  }
  return sign ? -magnitude : magnitude;
}

// bf16 is the top half of an fp32: its value is the fp32 whose bits are bits16 << 16.
MINIMOE_HD float awq_bf16_bits_to_float(uint32_t bits16) {
  union {
    uint32_t u;
    float f;
  } v;
  v.u = bits16 << 16;
  return v.f;
}

}  // namespace minimoe
