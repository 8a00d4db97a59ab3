// prefill_fp32_avx2.cpp - the prefill path of minimoe::awq_gemm on CPUs with AVX2 + FMA + F16C but no AVX-512:
// y = x @ W^T with exact fp32 weights, by an FMA micro-kernel at 256 bits. Driver: awq_gemm.cpp.
//
// The AVX-512 kernel (prefill_fp32.cpp, whose top comment explains the blocking in full) at half the width, with
// its blocking shared through prefill_blocking.h:
//   * a chunk of ~256 rows of W^T of one 128-channel block is dequantized into an fp32 panel [rows, 128] in
//     packed order (awq_gemm.h): (q - z) * s is exact in fp32, so the panel holds exactly the dequantized weights;
//   * x is packed [k][row] per tile of 6 rows; the micro-kernel is 6 rows x 16 columns: 12 ymm accumulators +
//     2 ymm of panel + 1 broadcast = 15 of the 16 registers. Per k: 2 panel loads, 6 broadcasts, 12 FMAs = 6 cycles
//     at 2 FMAs per cycle;
//   * every output is ONE fp32 running sum updated in k order, threads split only the column blocks: the result
//     is the same bit for bit for any thread count, and the same as the AVX-512 kernel's (same products, same
//     order, same rounding).
// x of every dtype comes here as fp32 (the driver converts bf16/fp16, exactly): CPUs without AVX-512 have no fast
// bf16 arithmetic either, so bf16 x gets fp32-exact weights, the contract of the decode loop for every dtype.
#include "awq_gemm.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "../dequant.h"
#include "prefill_blocking.h"

#define MINIMOE_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace minimoe {
namespace cpu {
namespace {

constexpr int kTileRows = 6;        // rows of x per micro-kernel
constexpr int64_t kPrefetchRows = 16;  // panel rows prefetched ahead, as in the AVX-512 kernel
constexpr int64_t kTilesPerRowBlock = 84;  // 504 rows of x packed at a time (bounded memory for any M)
using RowTiles = prefill::RowTiles<kTileRows>;

// The exact fp32 weights of rows k0 .. k0 + rows of the block at word w0, strip by strip: strip i (nibble i of
// the block's 16 words = packed positions 16 i .. 16 i + 15) is panel[i * rows * 16 + (k - k0) * 16 + l], so a
// strip is 16 KB read front to back (rows of 512 bytes, one 64-byte line of each, alias in L1 every 8 rows and
// ran ~25% slower). Lanes past w1 are 0. Scales and zero points are put in packed order once per group (128 scalar steps per group,
// against 128 x rows vector element writes).
MINIMOE_AVX2 void dequant_panel(const AwqGemmArgs& a, int64_t k0, int64_t rows, int64_t w0, int64_t w1,
                                float* panel) {
  const int64_t words = a.N / 8, block_words = w1 - w0;
  const uint16_t* scales = static_cast<const uint16_t*>(a.scales);
  const __m256i index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i lanes0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(std::min<int64_t>(block_words, 8))), index);
  const __m256i lanes1 =
      _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(std::clamp<int64_t>(block_words - 8, 0, 8))), index);
  alignas(32) float s[kBlockChannels], z[kBlockChannels];
  int64_t group = -1;
  for (int64_t k = k0; k < k0 + rows; ++k) {
    if (k / a.G != group) {
      group = k / a.G;
      for (int64_t p = 0; p < kBlockChannels; ++p) {
        s[p] = z[p] = 0.0f;  // padding lanes: weight exactly 0
        if (p % kBlockWords < block_words) {
          const int64_t channel = channel_of_packed_position(w0, p);
          uint16_t bits;
          std::memcpy(&bits, scales + group * a.N + channel, 2);
          s[p] = _cvtsh_ss(bits);
          z[p] = static_cast<float>(awq_code(a.qzeros[group * words + channel / 8], channel % 8));
        }
      }
    }
    const uint32_t* row = a.qweight + k * words + w0;
    const __m256i half[2] = {_mm256_maskload_epi32(reinterpret_cast<const int*>(row), lanes0),
                             _mm256_maskload_epi32(reinterpret_cast<const int*>(row + 8), lanes1)};
    for (int i = 0; i < 8; ++i)
      for (int h = 0; h < 2; ++h) {
        const int p = i * 16 + h * 8;
        float* out = panel + i * rows * 16 + (k - k0) * 16 + h * 8;
        const __m256 q =
            _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(half[h], 4 * i), _mm256_set1_epi32(0xF)));
        _mm256_store_ps(out, _mm256_mul_ps(_mm256_sub_ps(q, _mm256_load_ps(z + p)), _mm256_load_ps(s + p)));
      }
  }
}

// c[MR, 16] (row stride 128) = (accumulate ? c : 0) + xp^T @ w over `rows` rows k: xp a packed tile chunk
// [rows][MR], w one strip of the panel [rows][16]. One FMA per k per output, in k order.
template <int MR>
MINIMOE_AVX2 void micro_kernel(const float* xp, const float* w, int64_t rows, float* c, bool accumulate) {
  __m256 acc[MR][2];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < 2; ++v)
      acc[r][v] = accumulate ? _mm256_loadu_ps(c + r * kBlockChannels + 8 * v) : _mm256_setzero_ps();
  for (int64_t k = 0; k < rows; ++k) {
    const __m256 b0 = _mm256_load_ps(w + k * 16), b1 = _mm256_load_ps(w + k * 16 + 8);
    _mm_prefetch(reinterpret_cast<const char*>(w + (k + kPrefetchRows) * 16), _MM_HINT_T0);
    const float* xk = xp + k * MR;
    for (int r = 0; r < MR; ++r) {
      const __m256 xr = _mm256_broadcast_ss(xk + r);
      acc[r][0] = _mm256_fmadd_ps(xr, b0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(xr, b1, acc[r][1]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < 2; ++v) _mm256_storeu_ps(c + r * kBlockChannels + 8 * v, acc[r][v]);
}

template <int MR>
MINIMOE_AVX2 void tile_times_panel(const float* xp, const float* panel, int64_t rows, float* c, bool accumulate) {
  for (int64_t j = 0; j < 8; ++j) micro_kernel<MR>(xp, panel + j * rows * 16, rows, c + 16 * j, accumulate);
}

MINIMOE_AVX2 void tile_dispatch(int mr, const float* xp, const float* panel, int64_t rows, float* c,
                                bool accumulate) {
  switch (mr) {
    case 1: tile_times_panel<1>(xp, panel, rows, c, accumulate); break;
    case 2: tile_times_panel<2>(xp, panel, rows, c, accumulate); break;
    case 3: tile_times_panel<3>(xp, panel, rows, c, accumulate); break;
    case 4: tile_times_panel<4>(xp, panel, rows, c, accumulate); break;
    case 5: tile_times_panel<5>(xp, panel, rows, c, accumulate); break;
    default: tile_times_panel<6>(xp, panel, rows, c, accumulate); break;
    static_assert(kTileRows == 6, "tile_dispatch lists the tile heights 1 .. kTileRows");
  }
}

// y[rows of tiles t0..t1, columns of blocks block_begin..block_end): per block, chunk -> tile -> strip -> k.
MINIMOE_AVX2 void multiply_blocks(const AwqGemmArgs& a, const RowTiles& tiles, int64_t t0, int64_t t1,
                                  const float* xp, int64_t block_begin, int64_t block_end, float* y) {
  const int64_t words = a.N / 8, chunk = prefill::chunk_rows(a.G);
  const int64_t m0 = tiles.start(t0), rows = tiles.start(t1) - m0;
  std::vector<float> panel_storage(chunk * kBlockChannels + 16), c_storage(rows * kBlockChannels + 16);
  float* panel = prefill::align64(panel_storage.data());
  float* c = prefill::align64(c_storage.data());
  for (int64_t b = block_begin; b < block_end; ++b) {
    const int64_t w0 = b * kBlockWords, w1 = std::min(words, w0 + kBlockWords);
    for (int64_t k0 = 0; k0 < a.K; k0 += chunk) {
      const int64_t kc = std::min(chunk, a.K - k0);
      dequant_panel(a, k0, kc, w0, w1, panel);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t start = tiles.start(t), mr = tiles.rows(t);
        tile_dispatch(static_cast<int>(mr), xp + (start - m0) * a.K + k0 * mr, panel, kc,
                      c + (start - m0) * kBlockChannels, k0 > 0);
      }
    }
    // Back to channel order (once per output).
    for (int64_t m = 0; m < rows; ++m)
      for (int64_t p = 0; p < kBlockChannels; ++p)
        if (p % kBlockWords < w1 - w0)
          y[(m0 + m) * a.N + channel_of_packed_position(w0, p)] = c[m * kBlockChannels + p];
  }
}

}  // namespace

bool prefill_fp32_avx2(const AwqGemmArgs& a, float* y) {
  if (!avx2_available()) return false;
  prefill::run_row_blocks<kTileRows>(a, kTilesPerRowBlock,
                                     [&](const RowTiles& tiles, int64_t t0, int64_t t1, const float* xp,
                                         int64_t first, int64_t last) {
                                       multiply_blocks(a, tiles, t0, t1, xp, first, last, y);
                                     });
  return true;
}

}  // namespace cpu
}  // namespace minimoe

#else  // not x86-64: no AVX2; the driver never calls this (avx2_available() is false) but it must link.

namespace minimoe {
namespace cpu {
bool prefill_fp32_avx2(const AwqGemmArgs&, float*) { return false; }
}  // namespace cpu
}  // namespace minimoe

#endif
