// awq_gemv.cuh - the decode kernel: y[M, N] = x[M, K] @ W^T for M <= 8 rows (one token per sequence).
//
// At M = 1 every weight is used for exactly one multiply-add, so the kernel's only job is to stream the packed
// weights at full memory bandwidth and keep the ALUs out of the way. The floor is
//   time >= (K*N/2 weight bytes + K/G*N*2.25 scale/zero bytes) / bandwidth.
//
// Work layout (one block = 8 warps = 256 threads):
//
//          N (packed words W = N/8) ->
//        +--------------------------------------------------+
//   K    | block (x=0, y=s): 32 lanes x WORDS words each     |   lane l loads words [l*WORDS, l*WORDS+WORDS)
//   |    |   of every row k in groups [s*gps, (s+1)*gps);    |   of a row: one 16-byte load for WORDS = 4,
//   v    |   warp w takes rows w, w+8, w+16 ... of a group   |   a warp reads 512 contiguous bytes per row
//        +--------------------------------------------------+
//
//  * split-K (grid.y): a decode GEMV has only N/(8*32*WORDS) blocks along N (4 for N = 4096), far too few to
//    keep 132 SMs streaming. Cutting K into `splits` ranges of whole groups multiplies the blocks; each writes
//    fp32 partial sums, and a tiny second kernel adds the splits and rounds to T (deterministic, no atomics).
//  * within a block the 8 warps split the rows of each group; their accumulators are added through shared
//    memory one warp at a time (again deterministic).
//  * per row: one packed load per lane, then per word 4 x (lop3, hsub2, hmul2) -> 8 dequantized weights,
//    converted to fp32 and multiplied into M_TILE x 8 x WORDS fp32 accumulators.
//  * memory-level parallelism: the row loop issues the loads of 4 rows before using any of them.
#pragma once

#include "awq_device.cuh"
#include "awq_plan.h"

namespace minimoe {

constexpr int kGemvThreads = kGemvLanes * kGemvWarps;  // 256
constexpr int kGemvUnroll = 4;                         // rows whose loads are in flight together

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

// x [M, K] (row stride K), qweight [K, W], qzeros [K/G, W], scales [K/G, N]. Writes y [M, N] (T) when the
// grid has one split, else partial [splits, M, N] (fp32). M <= M_TILE. W % WORDS == 0.
template <typename T, typename S, int M_TILE, int WORDS>
__global__ void __launch_bounds__(kGemvThreads)
    awq_gemv_kernel(const T* __restrict__ x, const uint32_t* __restrict__ qweight,
                    const uint32_t* __restrict__ qzeros, const S* __restrict__ scales, T* __restrict__ y,
                    float* __restrict__ partial, int M, int K, int N, int G, int groups_per_split) {
  using T2 = typename Pair<T>::type;
  constexpr int kChannels = 8 * WORDS;  // output channels per thread
  const int W = N / 8;
  const int lane = threadIdx.x % kGemvLanes;
  const int warp = threadIdx.x / kGemvLanes;
  const int word0 = (blockIdx.x * kGemvLanes + lane) * WORDS;  // first packed column of this thread
  const bool active = word0 < W;
  const int groups = K / G;
  const int g_begin = blockIdx.y * groups_per_split;
  const int g_end = min(g_begin + groups_per_split, groups);

  float acc[M_TILE][kChannels];
#pragma unroll
  for (int m = 0; m < M_TILE; ++m)
#pragma unroll
    for (int c = 0; c < kChannels; ++c) acc[m][c] = 0.0f;

  // One row k: dequantize WORDS words and multiply them into the accumulators.
  auto consume_row = [&](const uint32_t q[WORDS], int k, const T2 (&zm)[WORDS][4], const T2 (&sc)[WORDS][4]) {
    float xv[M_TILE];
#pragma unroll
    for (int m = 0; m < M_TILE; ++m) xv[m] = m < M ? to_float(x[static_cast<size_t>(m) * K + k]) : 0.0f;
#pragma unroll
    for (int w = 0; w < WORDS; ++w) {
      T2 dq[4];
      dequant_word<T>(q[w], zm[w], sc[w], dq);
#pragma unroll
      for (int p = 0; p < 4; ++p) {
        const float2 f = pair_to_float2(dq[p]);
#pragma unroll
        for (int m = 0; m < M_TILE; ++m) {
          acc[m][w * 8 + 2 * p] = fmaf(xv[m], f.x, acc[m][w * 8 + 2 * p]);
          acc[m][w * 8 + 2 * p + 1] = fmaf(xv[m], f.y, acc[m][w * 8 + 2 * p + 1]);
        }
      }
    }
  };

  if (active) {
    for (int g = g_begin; g < g_end; ++g) {
      // This group's zero points and scales for our WORDS words, kept in registers for its G rows.
      T2 zm[WORDS][4], sc[WORDS][4];
      uint32_t zwords[WORDS];
      load_words<WORDS>(qzeros + static_cast<size_t>(g) * W + word0, zwords);
#pragma unroll
      for (int w = 0; w < WORDS; ++w) {
        zero_magic_pairs<T>(zwords[w], zm[w]);
        load_scale_pairs<T, S>(scales + static_cast<size_t>(g) * N + 8 * (word0 + w), sc[w]);
      }
      const int k_end = (g + 1) * G;
      int k = g * G + warp;
      // Main loop: kGemvUnroll rows per step, all their loads issued before the first use.
      for (; k + (kGemvUnroll - 1) * kGemvWarps < k_end; k += kGemvUnroll * kGemvWarps) {
        uint32_t q[kGemvUnroll][WORDS];
#pragma unroll
        for (int u = 0; u < kGemvUnroll; ++u)
          load_words<WORDS>(qweight + static_cast<size_t>(k + u * kGemvWarps) * W + word0, q[u]);
#pragma unroll
        for (int u = 0; u < kGemvUnroll; ++u) consume_row(q[u], k + u * kGemvWarps, zm, sc);
      }
      for (; k < k_end; k += kGemvWarps) {  // the rest of the group (G not a multiple of 32)
        uint32_t q[WORDS];
        load_words<WORDS>(qweight + static_cast<size_t>(k) * W + word0, q);
        consume_row(q, k, zm, sc);
      }
    }
  }

  // Add the 8 warps' accumulators in shared memory, warp 0 first, one warp at a time (a fixed order, so the
  // result is bitwise reproducible). Layout red[m][c][lane]: consecutive lanes hit consecutive banks.
  __shared__ float red[M_TILE * kChannels * kGemvLanes];
  for (int w = 0; w < kGemvWarps; ++w) {
    if (warp == w) {
#pragma unroll
      for (int m = 0; m < M_TILE; ++m)
#pragma unroll
        for (int c = 0; c < kChannels; ++c) {
          float& slot = red[(m * kChannels + c) * kGemvLanes + lane];
          slot = (w == 0 ? 0.0f : slot) + acc[m][c];
        }
    }
    __syncthreads();
  }

  // Write out: consecutive threads take consecutive channels (coalesced stores).
  const int block_channels = kGemvLanes * kChannels;
  const int n_base = blockIdx.x * block_channels;
  for (int o = threadIdx.x; o < M_TILE * block_channels; o += kGemvThreads) {
    const int m = o / block_channels;
    const int local = o % block_channels;  // = lane' * kChannels + c
    const int n = n_base + local;
    if (m >= M || n >= N) continue;
    const float v = red[(m * kChannels + local % kChannels) * kGemvLanes + local / kChannels];
    if (gridDim.y == 1) {
      y[static_cast<size_t>(m) * N + n] = from_float<T>(v);
    } else {
      partial[(static_cast<size_t>(blockIdx.y) * M + m) * N + n] = v;
    }
  }
}

// y[m, n] = sum over splits of partial[s, m, n], rounded to T once.
template <typename T>
__global__ void awq_splitk_reduce_kernel(const float* __restrict__ partial, T* __restrict__ y, int splits,
                                         int64_t MN) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= MN) return;
  float sum = 0.0f;
  for (int s = 0; s < splits; ++s) sum += partial[s * MN + i];
  y[i] = from_float<T>(sum);
}

// ------------------------------------------------------------------------------------------------ launcher
// Host side, no torch: the op and the experiment variants both call these.

// fp32 workspace elements the GEMV needs for `rows` (<= 8) rows; 0 when it runs unsplit.
inline size_t awq_gemv_workspace_elems(int rows, int K, int N, int G, int sms, bool allow_split = true) {
  const GemvConfig cfg = awq_gemv_config(rows, N / 8);
  const int gps = allow_split ? awq_gemv_groups_per_split(awq_gemv_blocks_n(N / 8, cfg.words), K / G, sms)
                              : K / G;
  const int splits = awq_gemv_splits(K / G, gps);
  return splits > 1 ? static_cast<size_t>(splits) * rows * N : 0;
}

template <typename T, typename S, int M_TILE, int WORDS>
inline void awq_gemv_launch_config(const T* x, const uint32_t* qweight, const uint32_t* qzeros, const S* scales,
                                   T* y, float* workspace, int rows, int K, int N, int G, int gps,
                                   cudaStream_t stream) {
  const int groups = K / G;
  const int splits = awq_gemv_splits(groups, gps);
  const dim3 grid(awq_gemv_blocks_n(N / 8, WORDS), splits);
  awq_gemv_kernel<T, S, M_TILE, WORDS>
      <<<grid, kGemvThreads, 0, stream>>>(x, qweight, qzeros, scales, y, workspace, rows, K, N, G, gps);
  if (splits > 1) {
    const int64_t MN = static_cast<int64_t>(rows) * N;
    const int threads = 256;
    awq_splitk_reduce_kernel<T><<<static_cast<unsigned>((MN + threads - 1) / threads), threads, 0, stream>>>(
        workspace, y, splits, MN);
  }
}

// One GEMV launch (+ its reduction) for rows <= 8 rows of x. `workspace` must hold
// awq_gemv_workspace_elems(rows, ...) floats. allow_split = false runs one block row over all of K (used by
// the experiment that shows why split-K matters).
template <typename T, typename S>
inline void awq_gemv_launch(const T* x, const uint32_t* qweight, const uint32_t* qzeros, const S* scales, T* y,
                            float* workspace, int rows, int K, int N, int G, int sms, cudaStream_t stream,
                            bool allow_split = true) {
  const GemvConfig cfg = awq_gemv_config(rows, N / 8);
  const int gps = allow_split ? awq_gemv_groups_per_split(awq_gemv_blocks_n(N / 8, cfg.words), K / G, sms)
                              : K / G;
#define MINIMOE_GEMV_CASE(MT, WD)                                                                            \
  if (cfg.m_tile == MT && cfg.words == WD) {                                                                 \
    awq_gemv_launch_config<T, S, MT, WD>(x, qweight, qzeros, scales, y, workspace, rows, K, N, G, gps, stream); \
    return;                                                                                                  \
  }
  MINIMOE_GEMV_CASE(1, 4)
  MINIMOE_GEMV_CASE(2, 4)
  MINIMOE_GEMV_CASE(4, 2)
  MINIMOE_GEMV_CASE(8, 1)
#undef MINIMOE_GEMV_CASE
}

}  // namespace minimoe
