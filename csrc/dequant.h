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
//   channel:  8c+7    8c+3    8c+6    8c+2    8c+5    8c+1    8c+4    8c+0
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
