// awq_mma_gemm.cuh - the prefill kernel: y[M, N] = x[M, K] @ W^T with tensor cores, for M > 8.
//
// At M = 2048 every weight is reused 2048 times, so the work is arithmetic: 2*M*N*K flops. Tensor cores do
// that ~16x faster than fp32 FMAs, but they only take fp16/bf16 operands, so each tile of W^T is dequantized
// into shared memory first; the int4 format then just shrinks the bytes streamed from memory.
//
// One block computes a 128 x 128 tile of y, walking K in steps of 32 (BM x BN x BK = 128 x 128 x 32):
//
//        global                         shared (2 stages)                          registers
//   x[m0:+128, k0:+32] --cp.async-->  As[s][128][32+8] (T)  --ldmatrix------------> A fragments
//   qweight[k0:+32, n0/8:+16] ---->   Qs[s][32][16]   (u32) --dequant--> Bs[32][128+8] (T) --ldmatrix.trans--> B
//   scales[g, n0:+128], qzeros ---->  Ss[s][128] (S), Zs[s][16] (u32)   (g = k0 / G: one group per K tile)
//
// Double buffering: while the tensor cores chew on stage s, cp.async is already fetching the tiles of
// k0 + 32 into stage s^1; cp.async.wait_group 1 waits for exactly the older group.
//
// Warps: 8 warps as 2 (along M) x 4 (along N); each owns a 64 x 32 piece of the tile = 4 x 4 mma tiles of
// 16 x 8, i.e. 64 fp32 accumulators per thread. Per 16-wide K step a warp loads 4 A fragments (ldmatrix.x4)
// and 4 B fragments (2 x ldmatrix.x4.trans) and issues 16 mma.sync.
//
// The +8 element padding of As and Bs rows shifts consecutive rows by 16 bytes mod 128, so the 8 row addresses
// of one ldmatrix land in 8 different bank groups (no shared-memory bank conflicts).
//
// Requirements (awq_mma_shape_ok): G % 32 == 0 and N % 32 == 0; every pointer 16-byte aligned. M is free:
// rows past M are zero-filled on load and skipped on store. Columns past N likewise (N % 128 != 0 is fine).
#pragma once

#include "awq_device.cuh"
#include "awq_plan.h"

namespace minimoe {

constexpr int kMmaThreads = 256;
constexpr int kMmaPad = 8;  // elements of padding per shared row (16 bytes)

template <typename T, typename S>
__global__ void __launch_bounds__(kMmaThreads)
    awq_mma_gemm_kernel(const T* __restrict__ x, const uint32_t* __restrict__ qweight,
                        const uint32_t* __restrict__ qzeros, const S* __restrict__ scales, T* __restrict__ y,
                        int M, int K, int N, int G) {
  using T2 = typename Pair<T>::type;
  constexpr int BM = kMmaBlockM, BN = kMmaBlockN, BK = kMmaBlockK;
  constexpr int BW = BN / 8;  // packed words per tile row (16)
  __shared__ alignas(16) T As[2][BM][BK + kMmaPad];
  __shared__ alignas(16) uint32_t Qs[2][BK][BW];
  __shared__ alignas(16) S Ss[2][BN];
  __shared__ alignas(16) uint32_t Zs[2][BW];
  __shared__ alignas(16) T Bs[BK][BN + kMmaPad];

  const int W = N / 8;
  const int m0 = blockIdx.y * BM;
  const int n0 = blockIdx.x * BN;
  const int tid = threadIdx.x;
  const int lane = tid % 32, warp = tid / 32;
  const int warp_m = warp / 4, warp_n = warp % 4;  // 2 x 4 warps, each 64 x 32

  // Issue the cp.async copies of K tile `kt` into stage `s`. Every thread issues the same number of copies,
  // so each thread's commit groups line up with everyone else's.
  auto load_stage = [&](int s, int kt) {
    const int k0 = kt * BK;
    // x tile: 128 rows x 32 elements = 128 x 4 chunks of 16 bytes; 2 per thread.
#pragma unroll
    for (int i = 0; i < (BM * BK / 8) / kMmaThreads; ++i) {
      const int chunk = tid + i * kMmaThreads;
      const int row = chunk / (BK / 8), col = (chunk % (BK / 8)) * 8;
      const bool ok = m0 + row < M;
      const T* src = ok ? x + static_cast<size_t>(m0 + row) * K + k0 + col : x;
      cp_async_16(&As[s][row][col], src, ok);
    }
    // qweight tile: 32 rows x 16 words = 128 chunks of 4 words; threads 0..127.
    if (tid < BK * BW / 4) {
      const int row = tid / (BW / 4), col = (tid % (BW / 4)) * 4;
      const bool ok = n0 / 8 + col < W;
      const uint32_t* src = ok ? qweight + static_cast<size_t>(k0 + row) * W + n0 / 8 + col : qweight;
      cp_async_16(&Qs[s][row][col], src, ok);
    } else if (tid < BK * BW / 4 + BN * static_cast<int>(sizeof(S)) / 16) {
      // scales of the tile's group: BN values = BN * sizeof(S) / 16 chunks.
      const int c = tid - BK * BW / 4;
      const int per_chunk = 16 / static_cast<int>(sizeof(S));
      const int g = k0 / G;
      const bool ok = n0 + c * per_chunk < N;
      const S* src = ok ? scales + static_cast<size_t>(g) * N + n0 + c * per_chunk : scales;
      cp_async_16(&Ss[s][c * per_chunk], src, ok);
    } else if (tid < BK * BW / 4 + BN * static_cast<int>(sizeof(S)) / 16 + BW / 4) {
      // zero points of the tile's group: 16 words = 4 chunks.
      const int c = tid - BK * BW / 4 - BN * static_cast<int>(sizeof(S)) / 16;
      const int g = k0 / G;
      const bool ok = n0 / 8 + c * 4 < W;
      const uint32_t* src = ok ? qzeros + static_cast<size_t>(g) * W + n0 / 8 + c * 4 : qzeros;
      cp_async_16(&Zs[s][c * 4], src, ok);
    }
  };

  // Dequantize stage s: 32 x 16 words -> Bs[32][128]; each thread 2 words of one column (same zeros/scales).
  auto dequant_stage = [&](int s) {
    const int col = tid % BW;
    T2 zm[4], sc[4];
    zero_magic_pairs<T>(Zs[s][col], zm);
    if constexpr (std::is_same_v<S, T>) {
#pragma unroll
      for (int p = 0; p < 4; ++p) sc[p] = *reinterpret_cast<const T2*>(&Ss[s][col * 8 + 2 * p]);
    } else {
#pragma unroll
      for (int p = 0; p < 4; ++p)
        sc[p] = pair_from_floats<T>(to_float(Ss[s][col * 8 + 2 * p]), to_float(Ss[s][col * 8 + 2 * p + 1]));
    }
#pragma unroll
    for (int i = 0; i < BK * BW / kMmaThreads; ++i) {
      const int row = tid / BW + i * (kMmaThreads / BW);
      T2 dq[4];
      dequant_word<T>(Qs[s][row][col], zm, sc, dq);
      uint4 packed;
      packed.x = as_bits(dq[0]), packed.y = as_bits(dq[1]), packed.z = as_bits(dq[2]), packed.w = as_bits(dq[3]);
      *reinterpret_cast<uint4*>(&Bs[row][col * 8]) = packed;  // 8 channels, natural order
    }
  };

  float acc[4][4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;

  const int KT = K / BK;
  load_stage(0, 0);
  cp_async_commit();
  for (int kt = 0; kt < KT; ++kt) {
    const int s = kt & 1;
    if (kt + 1 < KT) load_stage(s ^ 1, kt + 1);
    cp_async_commit();  // possibly empty: keeps "all but the newest group" meaning "stage s"
    cp_async_wait<1>();
    __syncthreads();  // stage s visible to all threads
    dequant_stage(s);
    __syncthreads();  // Bs complete

#pragma unroll
    for (int ks = 0; ks < BK; ks += 16) {
      uint32_t a[4][4], b[4][2];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        // lanes 0-15 name rows 0-15 at column ks, lanes 16-31 rows 0-15 at column ks + 8 (see awq_device.cuh)
        const int row = warp_m * 64 + i * 16 + lane % 16;
        ldmatrix_x4(a[i], &As[s][row][ks + (lane / 16) * 8]);
      }
#pragma unroll
      for (int jp = 0; jp < 2; ++jp) {
        // matrices: (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7, n 8-15), (k 8-15, n 8-15) of this 16 x 16 piece
        uint32_t r[4];
        const int col = warp_n * 32 + jp * 16 + (lane / 16) * 8;
        ldmatrix_x4_trans(r, &Bs[ks + lane % 16][col]);
        b[2 * jp][0] = r[0], b[2 * jp][1] = r[1], b[2 * jp + 1][0] = r[2], b[2 * jp + 1][1] = r[3];
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) mma_m16n8k16<T>(acc[i][j], a[i], b[j]);
    }
    __syncthreads();  // everyone is done with As[s] / Bs before the next iteration's copies overwrite them
  }

  // Epilogue: c[0], c[1] -> row g, cols 2t, 2t+1; c[2], c[3] -> row g + 8 (g = lane / 4, t = lane % 4).
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int col = n0 + warp_n * 32 + j * 8 + (lane % 4) * 2;
      if (col >= N) continue;  // N is even, so col < N implies col + 1 < N
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = m0 + warp_m * 64 + i * 16 + lane / 4 + h * 8;
        if (row < M)
          *reinterpret_cast<T2*>(&y[static_cast<size_t>(row) * N + col]) =
              pair_from_floats<T>(acc[i][j][2 * h], acc[i][j][2 * h + 1]);
      }
    }
  }
}

template <typename T, typename S>
inline void awq_mma_gemm_launch(const T* x, const uint32_t* qweight, const uint32_t* qzeros, const S* scales, T* y,
                                int M, int K, int N, int G, cudaStream_t stream) {
  const dim3 grid(ceil_div(N, kMmaBlockN), ceil_div(M, kMmaBlockM));
  awq_mma_gemm_kernel<T, S><<<grid, kMmaThreads, 0, stream>>>(x, qweight, qzeros, scales, y, M, K, N, G);
}

}  // namespace minimoe
