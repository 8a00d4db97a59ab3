// prefill_fp32.cpp - the fp32 prefill path of minimoe::awq_gemm on x86-64: y = x @ W^T with our own AVX-512
// FMA micro-kernel instead of a BLAS call (driver: awq_gemm.cpp; shared helpers: avx512_inl.h).
//
// Why not MKL: handing each dequantized tile to torch's GEMM made the result depend on the thread count (MKL
// keeps its own threads and splits K differently for 1 and 2 of them), and cost ~15-20% against torch's fp32
// matmul on pre-dequantized weights. Here every output y[m, n] is ONE running fp32 sum, updated by one FMA per
// k in the order k = 0, 1, ..., K-1, whatever the chunking, tiling or thread count; threads split only the
// output columns. So the result is bit-for-bit the same for any thread count (tests/test_kernels.py).
//
// ---- Blocking: where the bytes go (M = 256, K x N = 4096 x 14336, 2 cores) -----------------------------------
//   threads   split the 128-channel column blocks (16 packed words, awq_gemm.h's kBlockChannels); N = 14336 is
//             112 blocks. A block's whole [M, 128] output is computed by one thread.
//   chunk     per block, K is walked in chunks of ~256 rows (whole groups). dequant_tile_avx512 turns a chunk
//             of W^T into an exact fp32 "panel" [256, 128] in packed order: 128 KB, lives in L2 (2 MB here).
//             Unpacking costs ~4 ops per 16 weights, against M FMAs per 16 weights of multiply: ~1-2% at M = 256.
//   tile      x is cut into row tiles of <= 14 rows, packed once per call as [k][row] (xp below), so one tile's
//             chunk (14 x 256 x 4 B = 14 KB) is contiguous and stays in L1 while it meets all 4 column strips
//             of the panel. Packing also avoids the 4 KB aliasing of 14 x-rows K * 4 bytes apart in L1.
//   micro-kernel  14 rows x 32 columns: 28 zmm accumulators + 2 zmm of panel + 1 broadcast of x = 31 of the 32
//             registers. Per k: 2 aligned 64-byte loads (one panel row of the strip, streamed from L2) and 14
//             broadcasts (L1) feed 28 FMAs = 14 cycles at 2 FMAs/cycle, so loads (16 per 14 cycles) keep up.
//             28 independent accumulators hide the 4-cycle FMA latency 3.5 times over.
//             The accumulators go to a [rows, 128] buffer (c) between chunks: 28 loads + 28 stores per
//             256 x 28 FMAs, nothing.
//   output    c is in packed order (position i * 16 + l = channel 8 (w0 + l) + ORDER[i]); each row of a block is
//             put back in channel order once at the end by an 8 x 16 register transpose (unpermute_block).
//
// What was measured to choose this (other tile shapes and chunk sizes, the panel prefetch, equal-height tiles):
// docs/kernels-cpu.md, "Prefill".
#include "awq_gemm.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

// GCC 12 reports false "may be used uninitialized" warnings from inside its own AVX-512 headers; see
// awq_gemm_avx512.cpp.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <algorithm>
#include <memory>
#include <vector>

#include "avx512_inl.h"
#include "prefill_blocking.h"

namespace minimoe {
namespace cpu {
namespace {

// Micro-kernel shape: kTileRows rows of x by kPanelVectors * 16 columns of the panel.
constexpr int kTileRows = 14;
constexpr int64_t kPanelVectors = 2;
// The micro-kernel prefetches the panel row this far ahead into L1 (see the measurements above).
constexpr int64_t kPrefetchRows = 16;
// Rows of x handled per pass over the weights: the packed copy of x is made for this many tiles at a time, so
// its size is bounded (36 x 14 rows x K = 29 MB at K = 14336) whatever M is. Each pass dequantizes the weights
// again, which at >= 504 rows costs < 1%.
constexpr int64_t kTilesPerRowBlock = 36;

using prefill::align64;
using prefill::chunk_rows;
using RowTiles = prefill::RowTiles<kTileRows>;

// c[MR, 16 NV] (row stride c_stride) = (accumulate ? c : 0) + xp^T @ w over `rows` rows k, where xp is a packed
// tile chunk [rows][MR] and w a strip of the panel [rows][16 NV] (row stride w_stride, 64-byte aligned). Each
// accumulator lane adds its k terms one at a time in order: this loop is the whole numerical story of the path.
// The prefetch runs past the end of the panel on the last rows; prefetches never fault, so that is harmless.
template <int MR, int NV>
MINIMOE_AVX512 void micro_kernel(const float* xp, const float* w, int64_t w_stride, int64_t rows, float* c,
                                 int64_t c_stride, bool accumulate) {
  __m512 acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v)
      acc[r][v] = accumulate ? _mm512_loadu_ps(c + r * c_stride + 16 * v) : _mm512_setzero_ps();
  for (int64_t k = 0; k < rows; ++k) {
    __m512 b[NV];
    for (int v = 0; v < NV; ++v) b[v] = _mm512_load_ps(w + k * w_stride + 16 * v);
    for (int v = 0; v < NV; ++v)
      _mm_prefetch(reinterpret_cast<const char*>(w + (k + kPrefetchRows) * w_stride + 16 * v), _MM_HINT_T0);
    const float* xk = xp + k * MR;
    for (int r = 0; r < MR; ++r) {
      const __m512 xr = _mm512_set1_ps(xk[r]);
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(xr, b[v], acc[r][v]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(c + r * c_stride + 16 * v, acc[r][v]);
}

// One tile of MR rows of x times the whole panel (4 strips of 32 columns), the tile staying in L1 meanwhile.
template <int MR>
MINIMOE_AVX512 void tile_times_panel(const float* xp, const float* panel, int64_t rows, float* c, bool accumulate) {
  constexpr int64_t nr = 16 * kPanelVectors;
  for (int64_t j = 0; j < kBlockChannels; j += nr)
    micro_kernel<MR, kPanelVectors>(xp, panel + j, kBlockChannels, rows, c + j, kBlockChannels, accumulate);
}

// MR must be a compile-time constant (the accumulators are registers): one instantiation per tile height.
MINIMOE_AVX512 void tile_dispatch(int mr, const float* xp, const float* panel, int64_t rows, float* c,
                                  bool accumulate) {
  switch (mr) {
    case 1: tile_times_panel<1>(xp, panel, rows, c, accumulate); break;
    case 2: tile_times_panel<2>(xp, panel, rows, c, accumulate); break;
    case 3: tile_times_panel<3>(xp, panel, rows, c, accumulate); break;
    case 4: tile_times_panel<4>(xp, panel, rows, c, accumulate); break;
    case 5: tile_times_panel<5>(xp, panel, rows, c, accumulate); break;
    case 6: tile_times_panel<6>(xp, panel, rows, c, accumulate); break;
    case 7: tile_times_panel<7>(xp, panel, rows, c, accumulate); break;
    case 8: tile_times_panel<8>(xp, panel, rows, c, accumulate); break;
    case 9: tile_times_panel<9>(xp, panel, rows, c, accumulate); break;
    case 10: tile_times_panel<10>(xp, panel, rows, c, accumulate); break;
    case 11: tile_times_panel<11>(xp, panel, rows, c, accumulate); break;
    case 12: tile_times_panel<12>(xp, panel, rows, c, accumulate); break;
    case 13: tile_times_panel<13>(xp, panel, rows, c, accumulate); break;
    default: tile_times_panel<14>(xp, panel, rows, c, accumulate); break;
    static_assert(kTileRows == 14, "tile_dispatch lists the tile heights 1 .. kTileRows");
  }
}

// ---- packed order -> channel order, 128 floats at a time ----------------------------------------------------
// A row of a block holds 8 vectors v[i] (nibble i), lane l = word l: v[i][l] is channel 8 l + ORDER[i]. Naming
// them by channel, u[j] = v[REVERSE[j]], makes it the transpose of an 8 x 16 matrix u[j][l] into [l][j], done in
// three stages of vpermt2ps, each merging two registers that hold `c` channels of each of their words into two
// that hold 2c channels of half as many words (c = 1, 2, 4): 24 permutes and 8 stores per 128 outputs.
// Stage index: output element t of half s (0: the first half of the words, 1: the second) takes, for r = t % 2c,
// channel r % c of word s * 8/c + t / 2c from the first source (r < c) or the second (16 + ..., r >= c).
struct TransposeIndex {
  alignas(64) int32_t index[3][2][16];
  TransposeIndex() {
    for (int stage = 0; stage < 3; ++stage) {
      const int c = 1 << stage;
      for (int s = 0; s < 2; ++s)
        for (int t = 0; t < 16; ++t) {
          const int r = t % (2 * c);
          index[stage][s][t] = (r >= c ? 16 : 0) + (s * (8 / c) + t / (2 * c)) * c + r % c;
        }
    }
  }
};
const TransposeIndex kTranspose;

template <int Stage>
MINIMOE_AVX512 inline void combine(__m512 a, __m512 b, __m512& lo, __m512& hi) {
  lo = _mm512_permutex2var_ps(a, _mm512_load_si512(kTranspose.index[Stage][0]), b);
  hi = _mm512_permutex2var_ps(a, _mm512_load_si512(kTranspose.index[Stage][1]), b);
}

// y[8 w + j] = the packed row's value of channel j of word w, for the block_words words that exist.
MINIMOE_AVX512 void unpermute_block(const float* packed, int64_t block_words, float* y) {
  __m512 u[8];
  for (int j = 0; j < 8; ++j) u[j] = _mm512_load_ps(packed + 16 * ((j & 1) * 4 + (j >> 1)));
  __m512 pairs[4][2];
  for (int p = 0; p < 4; ++p) combine<0>(u[2 * p], u[2 * p + 1], pairs[p][0], pairs[p][1]);
  __m512 quads[2][2][2];
  for (int q = 0; q < 2; ++q)
    for (int s = 0; s < 2; ++s) combine<1>(pairs[2 * q][s], pairs[2 * q + 1][s], quads[q][s][0], quads[q][s][1]);
  for (int s = 0; s < 2; ++s)
    for (int s2 = 0; s2 < 2; ++s2) {
      __m512 out[2];
      combine<2>(quads[0][s][s2], quads[1][s][s2], out[0], out[1]);
      for (int s3 = 0; s3 < 2; ++s3) {
        const int64_t word = 8 * s + 4 * s2 + 2 * s3;
        const __mmask16 mask = word + 1 < block_words ? 0xFFFF : word < block_words ? 0x00FF : 0;
        _mm512_mask_storeu_ps(y + 8 * word, mask, out[s3]);
      }
    }
}

// y[rows t0.., columns of blocks block_begin..block_end) for the row tiles t0..t1 (x packed in xp from tile t0's
// first row on). Loop order per block: chunk k0 -> tile -> strip -> k, so each panel is made once per pass and
// every tile meets it while it is in L2; the block's [rows, 128] running sums wait in c between chunks.
MINIMOE_AVX512 void multiply_blocks(const AwqGemmArgs& a, const RowTiles& tiles, int64_t t0, int64_t t1,
                                    const float* xp, int64_t block_begin, int64_t block_end, float* y) {
  const int64_t words = a.N / 8, chunk = chunk_rows(a.G);
  const int64_t m0 = tiles.start(t0), rows = tiles.start(t1) - m0;
  // One panel and one set of running sums per thread, reused for all its blocks; +16 floats to align to 64 B.
  std::vector<float> panel_storage(chunk * kBlockChannels + 16), c_storage(rows * kBlockChannels + 16);
  float* panel = align64(panel_storage.data());
  float* c = align64(c_storage.data());
  const uint16_t* scales = static_cast<const uint16_t*>(a.scales);
  for (int64_t b = block_begin; b < block_end; ++b) {
    const int64_t w0 = b * kBlockWords, w1 = std::min(words, w0 + kBlockWords);
    for (int64_t k0 = 0; k0 < a.K; k0 += chunk) {
      // The chunk as a GEMM of its own: rows k0 .. k0 + kc of qweight, and the scale / zero rows from its group.
      const int64_t kc = std::min(chunk, a.K - k0), g0 = k0 / a.G;
      AwqGemmArgs part = a;
      part.qweight = a.qweight + k0 * words;
      part.qzeros = a.qzeros + g0 * words;
      part.scales = scales + g0 * a.N;
      part.K = kc;
      part.G = std::min(a.G, chunk);
      dequant_tile_avx512(part, w0, w1, panel, false);  // exact fp32; lanes past w1 are 0
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t start = tiles.start(t), mr = tiles.rows(t);
        tile_dispatch(static_cast<int>(mr), xp + (start - m0) * a.K + k0 * mr, panel, kc,
                      c + (start - m0) * kBlockChannels, k0 > 0);
      }
    }
    for (int64_t m = 0; m < rows; ++m) unpermute_block(c + m * kBlockChannels, w1 - w0, y + (m0 + m) * a.N + 8 * w0);
  }
}

}  // namespace

bool prefill_fp32_avx512(const AwqGemmArgs& a, float* y) {
  prefill::run_row_blocks<kTileRows>(a, kTilesPerRowBlock,
                                     [&](const RowTiles& tiles, int64_t t0, int64_t t1, const float* xp,
                                         int64_t first, int64_t last) {
                                       multiply_blocks(a, tiles, t0, t1, xp, first, last, y);
                                     });
  return true;
}

}  // namespace cpu
}  // namespace minimoe

#else  // not x86-64: no AVX-512; the driver never calls this (avx512_available() is false) but it must link.

namespace minimoe {
namespace cpu {
bool prefill_fp32_avx512(const AwqGemmArgs&, float*) { return false; }
}  // namespace cpu
}  // namespace minimoe

#endif
