// 02_gemv_vectorized: 16-byte loads + magic-number dequantization, but no split over K (frozen).
//
// What changed from 01: a lane loads 4 packed words (32 channels) of a row in one 16-byte load, a warp reads
// 512 contiguous bytes per row; nibbles become fp16/bf16 two at a time with one lop3 (the 0x6400 / 0x4300
// trick, lab.cuh), zero point and scale applied as one exact hsub2 and one rounding hmul2 per pair; the
// loads of 4 rows are issued before any is used; 8 warps share each group's rows (their sums added in shared
// memory in a fixed order); up to 8 rows of x reuse each loaded weight from registers.
// What is still wrong (on purpose): the grid has only N / 1024 blocks (4 for N = 4096), each walking all of
// K, so most SMs sit idle. 03 fixes exactly that. Compare the two at 4096 x 14336 vs 14336 x 4096.
#include "lab.cuh"
#include "variant.h"

namespace {

constexpr int kMaxRows = 8;  // rows of x per launch
constexpr int kUnroll = 4;   // rows of K whose loads are in flight together

// y [M, N] = x [M, K] @ W^T for M <= M_TILE rows, one block per 32 x WORDS packed words, all of K.
template <typename T, int M_TILE, int WORDS>
__global__ void __launch_bounds__(lab::kThreads)
    gemv_kernel(const T* __restrict__ x, const uint32_t* __restrict__ qweight, const uint32_t* __restrict__ qzeros,
                const T* __restrict__ scales, T* __restrict__ y, int M, int K, int N, int G) {
  using T2 = typename lab::Pair<T>::type;
  constexpr int kChannels = 8 * WORDS;
  const int W = N / 8;
  const int lane = threadIdx.x % lab::kLanes, warp = threadIdx.x / lab::kLanes;
  const int word0 = (blockIdx.x * lab::kLanes + lane) * WORDS;
  const bool active = word0 < W;

  float acc[M_TILE][kChannels];
#pragma unroll
  for (int m = 0; m < M_TILE; ++m)
#pragma unroll
    for (int c = 0; c < kChannels; ++c) acc[m][c] = 0.0f;

  auto consume_row = [&](const uint32_t q[WORDS], int k, const T2 (&zm)[WORDS][4], const T2 (&sc)[WORDS][4]) {
    float xv[M_TILE];
#pragma unroll
    for (int m = 0; m < M_TILE; ++m) xv[m] = m < M ? lab::to_float(x[static_cast<size_t>(m) * K + k]) : 0.0f;
#pragma unroll
    for (int w = 0; w < WORDS; ++w) {
      T2 dq[4];
      lab::dequant_word<T>(q[w], zm[w], sc[w], dq);
#pragma unroll
      for (int p = 0; p < 4; ++p) {
        const float2 f = lab::pair_to_float2(dq[p]);
#pragma unroll
        for (int m = 0; m < M_TILE; ++m) {
          acc[m][w * 8 + 2 * p] = fmaf(xv[m], f.x, acc[m][w * 8 + 2 * p]);
          acc[m][w * 8 + 2 * p + 1] = fmaf(xv[m], f.y, acc[m][w * 8 + 2 * p + 1]);
        }
      }
    }
  };

  if (active) {
    for (int g = 0; g < K / G; ++g) {
      T2 zm[WORDS][4], sc[WORDS][4];
      uint32_t zwords[WORDS];
      lab::load_words<WORDS>(qzeros + static_cast<size_t>(g) * W + word0, zwords);
#pragma unroll
      for (int w = 0; w < WORDS; ++w) {
        lab::zero_magic_pairs<T>(zwords[w], zm[w]);
        lab::load_scale_pairs<T>(scales + static_cast<size_t>(g) * N + 8 * (word0 + w), sc[w]);
      }
      const int k_end = (g + 1) * G;
      int k = g * G + warp;
      for (; k + (kUnroll - 1) * lab::kWarps < k_end; k += kUnroll * lab::kWarps) {
        uint32_t q[kUnroll][WORDS];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u)
          lab::load_words<WORDS>(qweight + static_cast<size_t>(k + u * lab::kWarps) * W + word0, q[u]);
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) consume_row(q[u], k + u * lab::kWarps, zm, sc);
      }
      for (; k < k_end; k += lab::kWarps) {
        uint32_t q[WORDS];
        lab::load_words<WORDS>(qweight + static_cast<size_t>(k) * W + word0, q);
        consume_row(q, k, zm, sc);
      }
    }
  }

  __shared__ float red[M_TILE * kChannels * lab::kLanes];
  for (int w = 0; w < lab::kWarps; ++w) {
    if (warp == w) {
#pragma unroll
      for (int m = 0; m < M_TILE; ++m)
#pragma unroll
        for (int c = 0; c < kChannels; ++c) {
          float& slot = red[(m * kChannels + c) * lab::kLanes + lane];
          slot = (w == 0 ? 0.0f : slot) + acc[m][c];
        }
    }
    __syncthreads();
  }
  const int block_channels = lab::kLanes * kChannels, n_base = blockIdx.x * block_channels;
  for (int o = threadIdx.x; o < M_TILE * block_channels; o += lab::kThreads) {
    const int m = o / block_channels, local = o % block_channels, n = n_base + local;
    if (m >= M || n >= N) continue;
    y[static_cast<size_t>(m) * N + n] = lab::from_float<T>(red[(m * kChannels + local % kChannels) * lab::kLanes + local / kChannels]);
  }
}

template <typename T, int M_TILE, int WORDS>
void launch(const T* x, const uint32_t* qweight, const uint32_t* qzeros, const T* scales, T* y, int rows, int K,
            int N, int G, cudaStream_t stream) {
  const int blocks = lab::ceil_div(N / 8 / WORDS, lab::kLanes);
  gemv_kernel<T, M_TILE, WORDS><<<blocks, lab::kThreads, 0, stream>>>(x, qweight, qzeros, scales, y, rows, K, N, G);
}

// Accumulators per thread are M_TILE x 8 x WORDS: the load narrows as the rows grow (at most 64 registers). The
// tile is chosen from the rows alone; a load width that does not divide W falls back to 8 rows x 1 word.
template <typename T>
void launch_rows(const T* x, const uint32_t* qweight, const uint32_t* qzeros, const T* scales, T* y, int rows, int K,
                 int N, int G, cudaStream_t stream) {
  const int W = N / 8;
  const int m_tile = rows <= 1 ? 1 : rows <= 2 ? 2 : rows <= 4 ? 4 : 8;
  const int words = m_tile == 1 || m_tile == 2 ? 4 : m_tile == 4 ? 2 : 1;
  if (W % words != 0) launch<T, 8, 1>(x, qweight, qzeros, scales, y, rows, K, N, G, stream);
  else if (m_tile == 1) launch<T, 1, 4>(x, qweight, qzeros, scales, y, rows, K, N, G, stream);
  else if (m_tile == 2) launch<T, 2, 4>(x, qweight, qzeros, scales, y, rows, K, N, G, stream);
  else if (m_tile == 4) launch<T, 4, 2>(x, qweight, qzeros, scales, y, rows, K, N, G, stream);
  else launch<T, 8, 1>(x, qweight, qzeros, scales, y, rows, K, N, G, stream);
}

}  // namespace

extern "C" const char* minimoe_variant_name() { return "02_gemv_vectorized"; }
extern "C" size_t minimoe_variant_workspace_bytes(int, int, int, int) { return 0; }
extern "C" int minimoe_variant_run(int dtype, const void* x, const int32_t* qweight, const int32_t* qzeros,
                                   const void* scales, void* y, int M, int K, int N, int G, void*, size_t,
                                   cudaStream_t stream) {
  if (N % 8 != 0 || G <= 0 || K % G != 0) return -1;
  MINIMOE_VARIANT_DISPATCH(dtype, {
    for (int m = 0; m < M; m += kMaxRows) {
      const int rows = M - m < kMaxRows ? M - m : kMaxRows;
      launch_rows<T>(static_cast<const T*>(x) + static_cast<size_t>(m) * K, reinterpret_cast<const uint32_t*>(qweight),
                     reinterpret_cast<const uint32_t*>(qzeros), static_cast<const T*>(scales),
                     static_cast<T*>(y) + static_cast<size_t>(m) * N, rows, K, N, G, stream);
    }
  });
  return static_cast<int>(cudaGetLastError());
}
