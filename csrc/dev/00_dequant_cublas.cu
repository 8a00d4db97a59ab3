// 00_dequant_cublas: the baseline every other variant races - dequantize all of W^T to fp16/bf16 in global
// memory, then one cuBLAS GEMM.
//
// What it is: the "AutoAWQ / vLLM above 256-1024 tokens" strategy (docs/facts.md#kernel-strategies). Kernel 1
// writes W^T [K, N] in x's dtype (K*N*2 bytes: 4x the packed weights), kernel 2 is cublasGemmEx with fp32
// accumulation.
// What it teaches: at large M the dequantization pass is a fixed cost amortised over M rows and cuBLAS is
// hard to beat; at M = 1 it reads the packed weights, writes 4x as much, and reads that again: at least 9x the
// bytes of a fused GEMV. Needs libcublas at link time (the harness passes it).
#include <cublas_v2.h>

#include "lab.cuh"
#include "variant.h"

namespace {

// One thread per packed word: 8 dequantized weights W^T[k, 8c .. 8c+7] stored as one 16-byte write.
template <typename T>
__global__ void dequant_to_dense(const uint32_t* __restrict__ qweight, const uint32_t* __restrict__ qzeros,
                                 const T* __restrict__ scales, T* __restrict__ w, int K, int N, int G) {
  using T2 = typename lab::Pair<T>::type;
  const int W = N / 8;
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= static_cast<int64_t>(K) * W) return;
  const int k = static_cast<int>(i / W), c = static_cast<int>(i % W), g = k / G;
  T2 zm[4], sc[4], out[4];
  lab::zero_magic_pairs<T>(qzeros[static_cast<size_t>(g) * W + c], zm);
  lab::load_scale_pairs<T>(scales + static_cast<size_t>(g) * N + 8 * c, sc);
  lab::dequant_word<T>(qweight[i], zm, sc, out);
  uint4 packed;
  packed.x = lab::as_bits(out[0]), packed.y = lab::as_bits(out[1]);
  packed.z = lab::as_bits(out[2]), packed.w = lab::as_bits(out[3]);
  reinterpret_cast<uint4*>(w)[i] = packed;
}

cublasHandle_t handle() {
  static cublasHandle_t h = nullptr;
  if (h == nullptr) cublasCreate(&h);
  return h;
}

}  // namespace

extern "C" const char* minimoe_variant_name() { return "00_dequant_cublas"; }
extern "C" size_t minimoe_variant_workspace_bytes(int, int K, int N, int) { return static_cast<size_t>(K) * N * 2; }
extern "C" int minimoe_variant_run(int dtype, const void* x, const int32_t* qweight, const int32_t* qzeros,
                                   const void* scales, void* y, int M, int K, int N, int G, void* workspace,
                                   size_t workspace_bytes, cudaStream_t stream) {
  if (workspace_bytes < static_cast<size_t>(K) * N * 2 || N % 8 != 0 || G <= 0 || K % G != 0) return -1;
  const int64_t words = static_cast<int64_t>(K) * (N / 8);
  const int threads = 256;
  const unsigned blocks = static_cast<unsigned>((words + threads - 1) / threads);
  cudaDataType_t type = CUDA_R_16F;
  MINIMOE_VARIANT_DISPATCH(dtype, {
    dequant_to_dense<T><<<blocks, threads, 0, stream>>>(reinterpret_cast<const uint32_t*>(qweight),
                                                         reinterpret_cast<const uint32_t*>(qzeros),
                                                         static_cast<const T*>(scales), static_cast<T*>(workspace),
                                                         K, N, G);
    type = dtype == 0 ? CUDA_R_16F : CUDA_R_16BF;
  });
  // cudaGetLastError clears the error it returns: read it once (calling it twice returned success).
  if (const cudaError_t launch = cudaGetLastError(); launch != cudaSuccess) return static_cast<int>(launch);
  // Row-major y[M, N] = x[M, K] @ W^T[K, N] is, read column-major, y^T[N, M] = (W^T)^T... i.e. cuBLAS computes
  // C (N x M, ld N) = A (N x K, ld N: the row-major W^T) * B (K x M, ld K: the row-major x), no transposes.
  const float alpha = 1.0f, beta = 0.0f;
  cublasSetStream(handle(), stream);
  const cublasStatus_t status = cublasGemmEx(handle(), CUBLAS_OP_N, CUBLAS_OP_N, N, M, K, &alpha, workspace, type, N,
                                             x, type, K, &beta, y, type, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  return status == CUBLAS_STATUS_SUCCESS ? 0 : 1000 + static_cast<int>(status);
}
