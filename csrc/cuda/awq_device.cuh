// awq_device.cuh - device building blocks shared by the CUDA kernels and the csrc/dev experiments:
// 16-bit float pair types, the magic-number dequantization of one packed word, and thin wrappers over the PTX
// instructions the tensor-core kernel uses (cp.async, ldmatrix, mma.sync). No torch headers: the experiment
// variants include this and compile in seconds.
//
// Only intrinsics are used for half / bfloat16 arithmetic (__hsub2, __hmul2, ...), never operators: torch's
// build defines __CUDA_NO_HALF_OPERATORS__ and friends, which remove them.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "../dequant.h"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "minimoe's AWQ CUDA kernels need sm_80 or newer (bf16 arithmetic, cp.async, bf16 mma.sync)"
#endif

namespace minimoe {

// ---------------------------------------------------------------------------------------- 16-bit pair types
// Pair<T>::type is the 2-wide vector of T; kMagic2 is the magic-number pattern of T (see dequant.h).
template <typename T>
struct Pair;
template <>
struct Pair<__half> {
  using type = __half2;
  static constexpr uint32_t kMagic2 = kAwqFp16Magic2;
};
template <>
struct Pair<__nv_bfloat16> {
  using type = __nv_bfloat162;
  static constexpr uint32_t kMagic2 = kAwqBf16Magic2;
};

// Reinterpret 32 bits as a pair (and back) without going through memory.
template <typename T2>
__device__ __forceinline__ T2 bits_as(uint32_t bits) {
  T2 out;
  static_assert(sizeof(T2) == 4, "a pair of 16-bit floats is 32 bits");
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

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

template <typename T>
__device__ __forceinline__ typename Pair<T>::type pair_from_floats(float lo, float hi);
template <>
__device__ __forceinline__ __half2 pair_from_floats<__half>(float lo, float hi) { return __floats2half2_rn(lo, hi); }
template <>
__device__ __forceinline__ __nv_bfloat162 pair_from_floats<__nv_bfloat16>(float lo, float hi) {
  return __floats2bfloat162_rn(lo, hi);
}

// --------------------------------------------------------------------------------- scales and zero points
// Eight scales s[g, 8c .. 8c+7] of one packed word c, as four pairs of T (pair p = channels 2p, 2p+1). When the
// scale dtype S is T, this is one 16-byte load reinterpreted; otherwise (bf16 activations, fp16 scales from
// the checkpoint) each pair goes through fp32 and is rounded to T once.
template <typename T, typename S>
__device__ __forceinline__ void load_scale_pairs(const S* __restrict__ src, typename Pair<T>::type out[4]) {
  using T2 = typename Pair<T>::type;
  const uint4 raw = *reinterpret_cast<const uint4*>(src);  // 8 x 16-bit: src must be 16-byte aligned
  const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int p = 0; p < 4; ++p) {
    if constexpr (sizeof(S) == 2 && std::is_same_v<S, T>) {
      out[p] = bits_as<T2>(words[p]);
    } else {
      const float2 f = pair_to_float2(bits_as<typename Pair<S>::type>(words[p]));
      out[p] = pair_from_floats<T>(f.x, f.y);
    }
  }
}

// The zero points of word c in "magic" form: pair p = (magic + z[2p], magic + z[2p+1]).
template <typename T>
__device__ __forceinline__ void zero_magic_pairs(uint32_t zero_word, typename Pair<T>::type out[4]) {
  using T2 = typename Pair<T>::type;
#pragma unroll
  for (int p = 0; p < 4; ++p) out[p] = bits_as<T2>(awq_magic_pair(zero_word, p, Pair<T>::kMagic2));
}

// Dequantize one packed word into four pairs: out[p] = (q - z) * s for channels 2p, 2p+1.
// Per pair: lop3 (+ shift), one exact subtraction, one rounding multiply.
template <typename T>
__device__ __forceinline__ void dequant_word(uint32_t word, const typename Pair<T>::type zero_magic[4],
                                             const typename Pair<T>::type scale[4],
                                             typename Pair<T>::type out[4]) {
  using T2 = typename Pair<T>::type;
#pragma unroll
  for (int p = 0; p < 4; ++p) {
    const T2 q = bits_as<T2>(awq_magic_pair(word, p, Pair<T>::kMagic2));
    out[p] = __hmul2(__hsub2(q, zero_magic[p]), scale[p]);
  }
}

// -------------------------------------------------------------------------------------------------- PTX
// cp.async: copy 16 bytes global -> shared without passing through registers; the copy completes in the
// background and is waited for by group. src_bytes = 0 writes 16 zero bytes instead (used for rows/columns
// past the edge of the matrix: the pointer must still be a valid address, we pass the tensor's base).
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid) {
  const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Wait until at most `pending` of the committed groups are still in flight.
template <int pending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(pending));
}

// ldmatrix.x4: the 32 lanes each give the shared address of one 16-byte row; lanes 8j..8j+7 name the 8 rows of
// 8x8 matrix j. Each lane receives one 32-bit register (two 16-bit elements) per matrix: lane t gets row t/4,
// columns 2(t%4), 2(t%4)+1. With .trans it gets the transposed element pair: rows 2(t%4), 2(t%4)+1 of
// column t/4, which is how mma wants B when B is stored k-major ([k][n]) in shared memory.
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* smem_row) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(smem_row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void* smem_row) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(smem_row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

// mma.sync m16n8k16: D[16x8] (fp32) += A[16x16] (row-major) * B[16x8] ("col": k pairs adjacent), one warp.
// Fragment layout, with g = lane / 4 (the "group") and t = lane % 4:
//
//   A (4 regs, 2 elements each)          B (2 regs)                    C/D (4 fp32)
//   a[0]: row g,   cols 2t, 2t+1         b[0]: rows 2t, 2t+1,   col g  c[0], c[1]: row g,   cols 2t, 2t+1
//   a[1]: row g+8, cols 2t, 2t+1         b[1]: rows 2t+8, 2t+9, col g  c[2], c[3]: row g+8, cols 2t, 2t+1
//   a[2]: row g,   cols 2t+8, 2t+9
//   a[3]: row g+8, cols 2t+8, 2t+9
//
// ldmatrix_x4 on four 8x8 quarters of A (rows 0-7/8-15 x cols 0-7/8-15, in that order) yields a[0..3] exactly.
template <typename T>
__device__ __forceinline__ void mma_m16n8k16(float c[4], const uint32_t a[4], const uint32_t b[2]);

template <>
__device__ __forceinline__ void mma_m16n8k16<__half>(float c[4], const uint32_t a[4], const uint32_t b[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
template <>
__device__ __forceinline__ void mma_m16n8k16<__nv_bfloat16>(float c[4], const uint32_t a[4], const uint32_t b[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

inline int ceil_div(int a, int b) { return (a + b - 1) / b; }

}  // namespace minimoe
