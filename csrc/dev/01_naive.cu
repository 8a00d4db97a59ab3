// 01_naive: one thread per 8 outputs, fp32 everywhere (frozen; the op's fallback kernel is the same idea,
// csrc/cuda/awq_simple.cuh).
//
// What it is: the format read the obvious way. Thread c of row m walks all of K, loads word c of each row of
// qweight (adjacent threads, adjacent words: coalesced, but only 4 bytes per thread per load), decodes the 8
// nibbles one by one, and accumulates (q - z) * s * x in fp32.
// Why it is slow: every row of x re-reads all the weights; 4-byte loads with one load in flight per thread
// cannot fill the memory pipe; scalar int -> float conversions per nibble.
#include "lab.cuh"
#include "variant.h"

namespace {

template <typename T>
__global__ void naive_kernel(const T* __restrict__ x, const uint32_t* __restrict__ qweight,
                             const uint32_t* __restrict__ qzeros, const T* __restrict__ scales, T* __restrict__ y,
                             int M, int K, int N, int G) {
  const int W = N / 8;
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= W) return;
  for (int m = blockIdx.y; m < M; m += gridDim.y) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int g = 0; g < K / G; ++g) {
      const uint32_t zero = qzeros[static_cast<size_t>(g) * W + c];
      float s[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) s[j] = lab::to_float(scales[static_cast<size_t>(g) * N + 8 * c + j]);
      for (int k = g * G; k < (g + 1) * G; ++k) {
        const uint32_t word = qweight[static_cast<size_t>(k) * W + c];
        const float xv = lab::to_float(x[static_cast<size_t>(m) * K + k]);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const float w = (static_cast<float>(lab::code(word, j)) - static_cast<float>(lab::code(zero, j))) * s[j];
          acc[j] = fmaf(xv, w, acc[j]);
        }
      }
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) y[static_cast<size_t>(m) * N + 8 * c + j] = lab::from_float<T>(acc[j]);
  }
}

}  // namespace

extern "C" const char* minimoe_variant_name() { return "01_naive"; }
extern "C" size_t minimoe_variant_workspace_bytes(int, int, int, int) { return 0; }
extern "C" int minimoe_variant_run(int dtype, const void* x, const int32_t* qweight, const int32_t* qzeros,
                                   const void* scales, void* y, int M, int K, int N, int G, void*, size_t,
                                   cudaStream_t stream) {
  if (N % 8 != 0 || G <= 0 || K % G != 0) return -1;
  if (M == 0) return 0;
  const int threads = 128;
  const dim3 grid(lab::ceil_div(N / 8, threads), M < 65535 ? M : 65535);
  MINIMOE_VARIANT_DISPATCH(dtype, {
    naive_kernel<T><<<grid, threads, 0, stream>>>(static_cast<const T*>(x), reinterpret_cast<const uint32_t*>(qweight),
                                                  reinterpret_cast<const uint32_t*>(qzeros),
                                                  static_cast<const T*>(scales), static_cast<T*>(y), M, K, N, G);
  });
  return static_cast<int>(cudaGetLastError());
}
