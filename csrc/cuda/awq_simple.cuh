// awq_simple.cuh - the kernel of last resort: correct for every shape the format allows (K % G == 0,
// N % 8 == 0), every float dtype of x and scales, any alignment; fp32 throughout. Also experiment 01 (naive).
//
// One thread per (row m, packed word c): it walks all of K, decoding word c of every row with the very
// helpers of dequant.h (awq_code, awq_dequant) that the host tests check against minimoe/awq.py, and writes
// the 8 outputs y[m, 8c .. 8c+7]. Adjacent threads read adjacent words, so loads are coalesced, but each
// thread reads only 4 bytes at a time and the weights are re-read from L2 once per row of x.
#pragma once

#include "awq_device.cuh"

namespace minimoe {

template <typename T, typename S>
__global__ void awq_simple_kernel(const T* __restrict__ x, const uint32_t* __restrict__ qweight,
                                  const uint32_t* __restrict__ qzeros, const S* __restrict__ scales,
                                  T* __restrict__ y, int M, int K, int N, int G) {
  const int W = N / 8;
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= W) return;
  for (int m = blockIdx.y; m < M; m += gridDim.y) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int g = 0; g < K / G; ++g) {
      const uint32_t zero = qzeros[static_cast<size_t>(g) * W + c];
      float s[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) s[j] = to_float(scales[static_cast<size_t>(g) * N + 8 * c + j]);
      for (int k = g * G; k < (g + 1) * G; ++k) {
        const uint32_t word = qweight[static_cast<size_t>(k) * W + c];
        const float xv = to_float(x[static_cast<size_t>(m) * K + k]);
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[j] = fmaf(xv, awq_dequant(awq_code(word, j), awq_code(zero, j), s[j]), acc[j]);
      }
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) y[static_cast<size_t>(m) * N + 8 * c + j] = from_float<T>(acc[j]);
  }
}

template <typename T, typename S>
inline void awq_simple_launch(const T* x, const uint32_t* qweight, const uint32_t* qzeros, const S* scales, T* y,
                              int M, int K, int N, int G, cudaStream_t stream) {
  const int threads = 128;
  const dim3 grid(ceil_div(N / 8, threads), M < 65535 ? M : 65535);
  awq_simple_kernel<T, S><<<grid, threads, 0, stream>>>(x, qweight, qzeros, scales, y, M, K, N, G);
}

}  // namespace minimoe
