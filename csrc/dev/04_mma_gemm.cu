// 04_mma_gemm: tensor cores - the prefill kernel the op runs for M > 8 (csrc/cuda/awq_mma_gemm.cuh). A PRODUCTION
// configuration (registry.json): it calls that header, so it follows it.
//
// What changed from 03: for large M the weights are reused M times and arithmetic dominates, so the
// question becomes how to feed tensor cores. A block owns a 128 x 128 tile of y; per 32-wide K step it
// cp.async-copies the x tile and the packed qweight tile (plus that group's scales and zeros) into shared
// memory one stage ahead (double buffering), dequantizes the qweight tile to fp16/bf16 in shared memory with the
// magic-number trick, then its 8 warps run 16 mma.sync.m16n8k16 each per 16-wide K slice from ldmatrix-loaded
// fragments, accumulating in fp32.
// Known limits, candidates for 05+: the dequantization step sits between two barriers (a third stage or
// dequantizing straight into B fragments would overlap it); M <= 128 launches only N / 128 blocks (split-K or a
// 64-row tile for mid-size M); the epilogue stores 4-byte pairs instead of staging through shared memory.
#include "../cuda/awq_mma_gemm.cuh"
#include "variant.h"

extern "C" const char* minimoe_variant_name() { return "04_mma_gemm"; }
extern "C" size_t minimoe_variant_workspace_bytes(int, int, int, int) { return 0; }
extern "C" int minimoe_variant_run(int dtype, const void* x, const int32_t* qweight, const int32_t* qzeros,
                                   const void* scales, void* y, int M, int K, int N, int G, void*, size_t,
                                   cudaStream_t stream) {
  if (!minimoe::awq_mma_shape_ok(K, N, G)) return -1;
  MINIMOE_VARIANT_DISPATCH(dtype, {
    minimoe::awq_mma_gemm_launch<T, T>(static_cast<const T*>(x), reinterpret_cast<const uint32_t*>(qweight),
                                       reinterpret_cast<const uint32_t*>(qzeros), static_cast<const T*>(scales),
                                       static_cast<T*>(y), M, K, N, G, stream);
  });
  return static_cast<int>(cudaGetLastError());
}
