// 02_gemv_vectorized: 16-byte loads + magic-number dequantization, but no split over K.
//
// What changed from 01: a lane loads 4 packed words (32 channels) of a row in one 16-byte load, a warp reads
// 512 contiguous bytes per row; nibbles become fp16/bf16 two at a time with one lop3 (the 0x6400 / 0x4300
// trick, csrc/dequant.h), zero point and scale applied as one exact hsub2 and one rounding hmul2 per pair; the
// loads of 4 rows are issued before any is used; 8 warps share each group's rows; up to 8 rows of x reuse each
// loaded weight from registers.
// What is still wrong (on purpose): the grid has only N / 1024 blocks (4 for N = 4096), each walking all of
// K, so most SMs sit idle. 03 fixes exactly that. Compare the two at 4096 x 14336 vs 14336 x 4096.
#include "../cuda/awq_gemv.cuh"
#include "variant.h"

extern "C" const char* minimoe_variant_name() { return "02_gemv_vectorized"; }
extern "C" size_t minimoe_variant_workspace_bytes(int, int, int, int) { return 0; }
extern "C" int minimoe_variant_run(int dtype, const void* x, const int32_t* qweight, const int32_t* qzeros,
                                   const void* scales, void* y, int M, int K, int N, int G, void*, size_t,
                                   cudaStream_t stream) {
  const int sms = minimoe_variant_sms();
  MINIMOE_VARIANT_DISPATCH(dtype, {
    for (int m = 0; m < M; m += minimoe::kGemvMaxRows) {
      const int rows = M - m < minimoe::kGemvMaxRows ? M - m : minimoe::kGemvMaxRows;
      minimoe::awq_gemv_launch<T, T>(static_cast<const T*>(x) + static_cast<size_t>(m) * K,
                                     reinterpret_cast<const uint32_t*>(qweight),
                                     reinterpret_cast<const uint32_t*>(qzeros), static_cast<const T*>(scales),
                                     static_cast<T*>(y) + static_cast<size_t>(m) * N, nullptr, rows, K, N, G, sms,
                                     stream, /*allow_split=*/false);
    }
  });
  return static_cast<int>(cudaGetLastError());
}
