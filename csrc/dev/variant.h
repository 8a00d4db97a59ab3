// variant.h - the one C interface every experiment in csrc/dev/ exports, so benchmarks/kernel_cuda.py can load
// any of them with ctypes (no torch headers: each variant compiles with plain nvcc in seconds).
//
//   x        [M, K] fp16 or bf16 (dtype 0 = fp16, 1 = bf16), row-major
//   qweight  [K, N/8] int32, qzeros [K/G, N/8] int32, scales [K/G, N] in x's dtype  (AWQ GEMM layout)
//   y        [M, N] in x's dtype, written in full
//   workspace: at least minimoe_variant_workspace_bytes(M, K, N, G) bytes of device memory (may be 0 bytes)
//   returns 0 on success, -1 when the variant does not support the shape, else a cudaError_t of the launch.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

extern "C" {
const char* minimoe_variant_name();
size_t minimoe_variant_workspace_bytes(int M, int K, int N, int G);
int minimoe_variant_run(int dtype, const void* x, const int32_t* qweight, const int32_t* qzeros,
                        const void* scales, void* y, int M, int K, int N, int G, void* workspace,
                        size_t workspace_bytes, cudaStream_t stream);
}

// The number of SMs of the current device (split-K sizes its grid by it).
inline int minimoe_variant_sms() {
  int device = 0, sms = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  return sms > 0 ? sms : 1;
}

// Calls fn(T{}) with T = __half for dtype 0 and __nv_bfloat16 for dtype 1; returns -1 for other dtypes.
#define MINIMOE_VARIANT_DISPATCH(dtype, ...)          \
  do {                                                \
    if ((dtype) == 0) {                               \
      using T = __half;                               \
      __VA_ARGS__                                     \
    } else if ((dtype) == 1) {                        \
      using T = __nv_bfloat16;                        \
      __VA_ARGS__                                     \
    } else {                                          \
      return -1;                                      \
    }                                                 \
  } while (0)
