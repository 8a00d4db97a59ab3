// lab.cuh - the device helpers the CUDA lab stages share, FROZEN: a copy, made 2026-12-07, of what the stages
// used from the production headers (csrc/dequant.h, csrc/cuda/awq_device.cuh, awq_gemv.cuh, awq_plan.h), so
// that editing a production kernel never changes a numbered stage. Nothing here may include csrc/cuda/ or
// csrc/dequant.h (tests/test_cuda_kernels.py checks the stages' includes). Change it only to fix a bug, and then
// re-measure every stage that includes it.
//
// The AWQ word (8 channels of one row k, AutoAWQ's interleaved order): nibble i holds channel ORDER[i],
// ORDER = {0, 2, 4, 6, 1, 3, 5, 7}; channel j sits in nibble (j % 2) * 4 + j / 2.
//
// The magic-number conversion: a 16-bit float whose exponent makes one mantissa step worth 1.0 turns an integer
// OR-ed into its low mantissa bits into that float plus the integer. fp16 1024.0 = 0x6400, bf16 128.0 = 0x4300.
// Nibbles p and p + 4 of a word are channels 2p and 2p + 1, so `(word >> 4p) & 0x000F000F | magic2` is the pair
// (magic + q[2p], magic + q[2p + 1]) in one lop3.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "the CUDA lab stages need sm_80 or newer (bf16 arithmetic, cp.async)"
#endif

namespace lab {

constexpr int kLanes = 32;       // GEMV threads of a block along N (one warp: 32 consecutive 16-byte loads)
constexpr int kWarps = 8;        // GEMV warps of a block, each taking every 8th row of a group
constexpr int kThreads = kLanes * kWarps;
constexpr int kBlocksPerSm = 2;  // split-K aims for this many resident blocks per SM

inline int ceil_div(int a, int b) { return (a + b - 1) / b; }

// Code (0..15) of channel j of a packed word, read as unsigned.
__host__ __device__ __forceinline__ uint32_t code(uint32_t word, int j) { return (word >> (4 * ((j & 1) * 4 + (j >> 1)))) & 0xFu; }

// ---- 16-bit pair types -------------------------------------------------------------------------------------
template <typename T>
struct Pair;
template <>
struct Pair<__half> {
  using type = __half2;
  static constexpr uint32_t kMagic2 = 0x64006400u;
};
template <>
struct Pair<__nv_bfloat16> {
  using type = __nv_bfloat162;
  static constexpr uint32_t kMagic2 = 0x43004300u;
};

template <typename T2>
__device__ __forceinline__ T2 bits_as(uint32_t bits) {
  T2 out;
  __builtin_memcpy(&out, &bits, 4);
  return out;
}
template <typename T2>
__device__ __forceinline__ uint32_t as_bits(T2 v) {
  uint32_t out;
  __builtin_memcpy(&out, &v, 4);
  return out;
}

__device__ __forceinline__ float2 pair_to_float2(__half2 v) { return __half22float2(v); }
__device__ __forceinline__ float2 pair_to_float2(__nv_bfloat162 v) { return __bfloat1622float2(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// ---- dequantization in 16-bit pairs ------------------------------------------------------------------------
// Pair p (0..3) of a word: (magic + q[2p], magic + q[2p + 1]), one lop3 ((a & b) | c, table 0xEA) after a shift.
__device__ __forceinline__ uint32_t magic_pair(uint32_t word, int p, uint32_t magic2) {
  const uint32_t shifted = word >> (4 * p);
  uint32_t out;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(out) : "r"(shifted), "r"(0x000F000Fu), "r"(magic2));
  return out;
}

// The 8 scales of word c (16 bytes, 16-byte aligned) as four pairs.
template <typename T>
__device__ __forceinline__ void load_scale_pairs(const T* __restrict__ src, typename Pair<T>::type out[4]) {
  using T2 = typename Pair<T>::type;
  const uint4 raw = *reinterpret_cast<const uint4*>(src);
  out[0] = bits_as<T2>(raw.x), out[1] = bits_as<T2>(raw.y), out[2] = bits_as<T2>(raw.z), out[3] = bits_as<T2>(raw.w);
}

// The zero points of a word in magic form, pair p = (magic + z[2p], magic + z[2p + 1]).
template <typename T>
__device__ __forceinline__ void zero_magic_pairs(uint32_t zero_word, typename Pair<T>::type out[4]) {
  using T2 = typename Pair<T>::type;
#pragma unroll
  for (int p = 0; p < 4; ++p) out[p] = bits_as<T2>(magic_pair(zero_word, p, Pair<T>::kMagic2));
}

// out[p] = (q - z) * s for channels 2p, 2p + 1: lop3, one exact subtraction, one rounding multiply per pair.
template <typename T>
__device__ __forceinline__ void dequant_word(uint32_t word, const typename Pair<T>::type zero_magic[4],
                                             const typename Pair<T>::type scale[4], typename Pair<T>::type out[4]) {
  using T2 = typename Pair<T>::type;
#pragma unroll
  for (int p = 0; p < 4; ++p) {
    const T2 q = bits_as<T2>(magic_pair(word, p, Pair<T>::kMagic2));
    out[p] = __hmul2(__hsub2(q, zero_magic[p]), scale[p]);
  }
}

// WORDS consecutive packed words through the read-only cache, in one load for 4 (16 bytes) or 2 (8 bytes).
template <int WORDS>
__device__ __forceinline__ void load_words(const uint32_t* __restrict__ src, uint32_t out[WORDS]) {
  if constexpr (WORDS == 4) {
    const uint4 v = __ldg(reinterpret_cast<const uint4*>(src));
    out[0] = v.x, out[1] = v.y, out[2] = v.z, out[3] = v.w;
  } else if constexpr (WORDS == 2) {
    const uint2 v = __ldg(reinterpret_cast<const uint2*>(src));
    out[0] = v.x, out[1] = v.y;
  } else {
    out[0] = __ldg(src);
  }
}

// ---- split-K -----------------------------------------------------------------------------------------------
// Groups per split so that blocks_n x splits puts kBlocksPerSm blocks on every SM (at most one split a group).
inline int groups_per_split(int blocks_n, int groups, int sms) {
  int splits = ceil_div(kBlocksPerSm * (sms > 0 ? sms : 1), blocks_n);
  if (splits < 1) splits = 1;
  if (splits > groups) splits = groups;
  return ceil_div(groups, splits);
}

// y[i] = sum over splits s of partial[s * MN + i] in split order, rounded to T once (deterministic).
template <typename T>
__global__ void splitk_reduce(const float* __restrict__ partial, T* __restrict__ y, int splits, int64_t MN) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= MN) return;
  float sum = 0.0f;
  for (int s = 0; s < splits; ++s) sum += partial[s * MN + i];
  y[i] = from_float<T>(sum);
}

}  // namespace lab
