// gemv_fp32_codes.cuh - stage 05 (frozen): the decode GEMV of 03 (csrc/cuda/awq_gemv.cuh), M = 1, with the
// arithmetic per weight cut down. 05 instantiates it with 4 rows of loads in flight; 06 is a configuration of
// it (8 rows), listed as such in registry.json. Self-contained: only lab.cuh (frozen helpers) and variant.h.
//
// What changed from 03, and why. 03 turns each nibble into a 16-bit float with the magic-number trick, subtracts
// the zero point and multiplies by the scale in 16-bit pairs, then converts every dequantized weight to fp32 for
// the fp32 multiply-add: per weight about 1.75 pair instructions, one 16 -> 32-bit conversion and one FMA. At
// M = 1 the FMA is the only arithmetic the product needs; the rest is overhead paid 57 million times per
// 4096 x 14336 layer. Here:
//   * a code becomes an exact fp32 integer directly: OR-ing it into the mantissa of 2^23 (0x4B000000) gives the
//     float 2^23 + q, and subtracting 2^23 is exact. Two integer ops and one FADD, no conversion instruction.
//   * the zero point and the scale leave the inner loop: within a group, sum_k (q - z) s x = s (sum_k q x -
//     z sum_k x). Each thread keeps sum_k q x per channel and sum_k x for its rows of the group, and applies
//     z and s once per group (16 rows per warp at G = 128).
// Per weight: shift + lop3, FADD, FFMA. Numerically the products and sums are fp32 of exact integers times x,
// which is closer to the exact result than 03's, whose dequantized weight is rounded to 16 bits first.
//
// Measured on an H200 (2026-11-28, 4096 x 14336 and 14336 x 4096, graph-timed): 05 25.0 / 25.9 us, 06 23.6 /
// 24.5 us, against 03's 21.1 / 22.1 us. Slower: the GEMV is not limited by its instructions per weight but by
// the bytes it keeps in flight, and the per-group epilogue plus the extra qx registers cost more than the
// conversions saved. Deeper unrolling (06) helped by 6%, which points the same way.
//
// Everything else is 03: 16-byte loads, 8 warps splitting each group's rows, split-K over whole groups with fp32
// partials and a deterministic reduction kernel, the warps' sums added in shared memory in a fixed order.
#pragma once

#include "lab.cuh"
#include "variant.h"

namespace minimoe {
namespace dev {

constexpr int kWords = 4;            // packed words per thread per row: one 16-byte load, 32 channels
constexpr int kChannels = 8 * kWords;

__device__ __forceinline__ float code_as_float(uint32_t word, int channel) {
  const uint32_t bits = lab::code(word, channel) | 0x4B000000u;  // 2^23 + q
  return __uint_as_float(bits) - 8388608.0f;                                                    // q, exact
}

template <typename T, int UNROLL>
__global__ void __launch_bounds__(lab::kThreads, 2)
    gemv_fp32_codes_kernel(const T* __restrict__ x, const uint32_t* __restrict__ qweight,
                           const uint32_t* __restrict__ qzeros, const T* __restrict__ scales, T* __restrict__ y,
                           float* __restrict__ partial, int K, int N, int G, int groups_per_split) {
  const int W = N / 8;
  const int lane = threadIdx.x % lab::kLanes;
  const int warp = threadIdx.x / lab::kLanes;
  const int word0 = (blockIdx.x * lab::kLanes + lane) * kWords;
  const bool active = word0 < W;
  const int groups = K / G;
  const int g_begin = blockIdx.y * groups_per_split;
  const int g_end = min(g_begin + groups_per_split, groups);

  float acc[kChannels];
#pragma unroll
  for (int c = 0; c < kChannels; ++c) acc[c] = 0.0f;

  if (active) {
    for (int g = g_begin; g < g_end; ++g) {
      float qx[kChannels];  // sum over this thread's rows of the group of q * x, per channel
#pragma unroll
      for (int c = 0; c < kChannels; ++c) qx[c] = 0.0f;
      float sx = 0.0f;  // sum of x over the same rows

      auto consume = [&](const uint32_t (&q)[kWords], float xv) {
        sx += xv;
#pragma unroll
        for (int w = 0; w < kWords; ++w)
#pragma unroll
          for (int j = 0; j < 8; ++j) qx[w * 8 + j] = fmaf(code_as_float(q[w], j), xv, qx[w * 8 + j]);
      };

      const int k_end = (g + 1) * G;
      int k = g * G + warp;
      for (; k + (UNROLL - 1) * lab::kWarps < k_end; k += UNROLL * lab::kWarps) {
        uint32_t q[UNROLL][kWords];
        float xv[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
          lab::load_words<kWords>(qweight + static_cast<size_t>(k + u * lab::kWarps) * W + word0, q[u]);
          xv[u] = lab::to_float(x[k + u * lab::kWarps]);
        }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) consume(q[u], xv[u]);
      }
      for (; k < k_end; k += lab::kWarps) {
        uint32_t q[kWords];
        lab::load_words<kWords>(qweight + static_cast<size_t>(k) * W + word0, q);
        consume(q, lab::to_float(x[k]));
      }

      // Once per group: acc += s * (sum q x - z * sum x).
      uint32_t zwords[kWords];
      lab::load_words<kWords>(qzeros + static_cast<size_t>(g) * W + word0, zwords);
#pragma unroll
      for (int w = 0; w < kWords; ++w) {
        const uint4 raw = *reinterpret_cast<const uint4*>(scales + static_cast<size_t>(g) * N + 8 * (word0 + w));
        const uint32_t pairs[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
        for (int p = 0; p < 4; ++p) {
          const float2 s = lab::pair_to_float2(lab::bits_as<typename lab::Pair<T>::type>(pairs[p]));
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int j = 2 * p + h;
            const float z = code_as_float(zwords[w], j);
            acc[w * 8 + j] = fmaf(h == 0 ? s.x : s.y, fmaf(-z, sx, qx[w * 8 + j]), acc[w * 8 + j]);
          }
        }
      }
    }
  }

  // The warps' sums, added in shared memory in a fixed order (as 03).
  __shared__ float red[kChannels * lab::kLanes];
  for (int w = 0; w < lab::kWarps; ++w) {
    if (warp == w) {
#pragma unroll
      for (int c = 0; c < kChannels; ++c) {
        float& slot = red[c * lab::kLanes + lane];
        slot = (w == 0 ? 0.0f : slot) + acc[c];
      }
    }
    __syncthreads();
  }
  const int block_channels = lab::kLanes * kChannels;
  const int n_base = blockIdx.x * block_channels;
  for (int local = threadIdx.x; local < block_channels; local += lab::kThreads) {
    const int n = n_base + local;
    if (n >= N) continue;
    const float v = red[(local % kChannels) * lab::kLanes + local / kChannels];
    if (gridDim.y == 1) {
      y[n] = lab::from_float<T>(v);
    } else {
      partial[static_cast<size_t>(blockIdx.y) * N + n] = v;
    }
  }
}

// The shapes this experiment runs: M = 1, whole 16-byte loads along N (N % 32 == 0), whole groups along K.
// Everything else is refused before any arithmetic on the shape (run 2 on the H200 died of SIGFPE: the
// workspace size for N = 8 divided by zero blocks).
inline bool gemv_fp32_codes_shape_ok(int M, int K, int N, int G) {
  return M == 1 && N > 0 && N % (8 * kWords) == 0 && G > 0 && K > 0 && K % G == 0;
}

// Blocks along N: 32 threads x 4 words each. K is split as 03 splits it (frozen copy in lab.cuh).
inline int gemv_fp32_codes_blocks_n(int N) { return lab::ceil_div(N / 8 / kWords, lab::kLanes); }
inline int gemv_fp32_codes_gps(int K, int N, int G, int sms) {
  return lab::groups_per_split(gemv_fp32_codes_blocks_n(N), K / G, sms);
}

inline size_t gemv_fp32_codes_workspace_bytes(int K, int N, int G, int sms) {
  const int splits = lab::ceil_div(K / G, gemv_fp32_codes_gps(K, N, G, sms));
  return splits > 1 ? sizeof(float) * static_cast<size_t>(splits) * N : 0;
}

template <typename T, int UNROLL>
int gemv_fp32_codes_run(const T* x, const uint32_t* qweight, const uint32_t* qzeros, const T* scales, T* y, int M,
                        int K, int N, int G, float* workspace, size_t workspace_bytes, cudaStream_t stream) {
  const int sms = minimoe_variant_sms();
  if (!gemv_fp32_codes_shape_ok(M, K, N, G)) return -1;
  if (gemv_fp32_codes_workspace_bytes(K, N, G, sms) > workspace_bytes) return -1;
  const int gps = gemv_fp32_codes_gps(K, N, G, sms);
  const int splits = lab::ceil_div(K / G, gps);
  const dim3 grid(gemv_fp32_codes_blocks_n(N), splits);
  gemv_fp32_codes_kernel<T, UNROLL><<<grid, lab::kThreads, 0, stream>>>(x, qweight, qzeros, scales, y, workspace, K,
                                                                       N, G, gps);
  if (splits > 1) {
    lab::splitk_reduce<T><<<(N + 255) / 256, 256, 0, stream>>>(workspace, y, splits, N);
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace dev
}  // namespace minimoe

// The C interface of one experiment (variant.h) for a given unroll depth and name.
#define MINIMOE_GEMV_FP32_CODES_VARIANT(NAME, UNROLL)                                                           \
  extern "C" const char* minimoe_variant_name() { return NAME; }                                                \
  extern "C" size_t minimoe_variant_workspace_bytes(int M, int K, int N, int G) {                               \
    return minimoe::dev::gemv_fp32_codes_shape_ok(M, K, N, G)                                                   \
               ? minimoe::dev::gemv_fp32_codes_workspace_bytes(K, N, G, minimoe_variant_sms())                   \
               : 0;                                                                                             \
  }                                                                                                             \
  extern "C" int minimoe_variant_run(int dtype, const void* x, const int32_t* qweight, const int32_t* qzeros,   \
                                     const void* scales, void* y, int M, int K, int N, int G, void* workspace,  \
                                     size_t workspace_bytes, cudaStream_t stream) {                             \
    MINIMOE_VARIANT_DISPATCH(dtype, {                                                                           \
      return minimoe::dev::gemv_fp32_codes_run<T, UNROLL>(                                                     \
          static_cast<const T*>(x), reinterpret_cast<const uint32_t*>(qweight),                                 \
          reinterpret_cast<const uint32_t*>(qzeros), static_cast<const T*>(scales), static_cast<T*>(y), M, K,   \
          N, G, static_cast<float*>(workspace), workspace_bytes, stream);                                       \
    });                                                                                                         \
    return -1;                                                                                                  \
  }
