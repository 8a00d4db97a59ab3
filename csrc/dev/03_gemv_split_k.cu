// 03_gemv_split_k: 02 plus a split over K - the decode kernel the op runs for M <= 8. A PRODUCTION
// configuration (registry.json): it calls csrc/cuda/awq_gemv.cuh, so it follows that file; 02 is frozen.
//
// What changed from 02: grid.y cuts K into ranges of whole groups, sized so every SM gets about
// kGemvBlocksPerSm blocks (csrc/cuda/awq_plan.h). Each block writes fp32 partial sums [splits, M, N]; a second
// small kernel adds them in a fixed order and rounds to fp16/bf16 once (deterministic, no atomics). The
// partials are M*N*4 bytes per split: at M = 1 a few hundred KB that stay in L2 - small next to 30 MB of
// weights, which is why split-K is nearly free here while it would not be for large M.
#include "../cuda/awq_gemv.cuh"
#include "variant.h"

extern "C" const char* minimoe_variant_name() { return "03_gemv_split_k"; }
extern "C" size_t minimoe_variant_workspace_bytes(int M, int K, int N, int G) {
  const int rows = M < minimoe::kGemvMaxRows ? M : minimoe::kGemvMaxRows;
  return sizeof(float) * minimoe::awq_gemv_workspace_elems(rows, K, N, G, minimoe_variant_sms());
}
extern "C" int minimoe_variant_run(int dtype, const void* x, const int32_t* qweight, const int32_t* qzeros,
                                   const void* scales, void* y, int M, int K, int N, int G, void* workspace,
                                   size_t workspace_bytes, cudaStream_t stream) {
  const int sms = minimoe_variant_sms();
  MINIMOE_VARIANT_DISPATCH(dtype, {
    for (int m = 0; m < M; m += minimoe::kGemvMaxRows) {
      const int rows = M - m < minimoe::kGemvMaxRows ? M - m : minimoe::kGemvMaxRows;
      if (sizeof(float) * minimoe::awq_gemv_workspace_elems(rows, K, N, G, sms) > workspace_bytes) return -1;
      minimoe::awq_gemv_launch<T, T>(static_cast<const T*>(x) + static_cast<size_t>(m) * K,
                                     reinterpret_cast<const uint32_t*>(qweight),
                                     reinterpret_cast<const uint32_t*>(qzeros), static_cast<const T*>(scales),
                                     static_cast<T*>(y) + static_cast<size_t>(m) * N,
                                     static_cast<float*>(workspace), rows, K, N, G, sms, stream);
    }
  });
  return static_cast<int>(cudaGetLastError());
}
