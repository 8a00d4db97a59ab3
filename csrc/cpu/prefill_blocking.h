// prefill_blocking.h - the blocking that both fp32 prefill micro-kernels share (prefill_fp32.cpp: AVX-512,
// prefill_fp32_avx2.cpp: AVX2): chunks of K, row tiles of x, x packed per tile. ISA-free on purpose.
//
// Everything here is a function of M, K and G only, never of the thread count: that, and one running fp32 sum
// per output updated in k order, is why both kernels give the same bits for any number of threads.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <memory>

#include "awq_gemm.h"

namespace minimoe {
namespace cpu {
namespace prefill {

// Rows of W^T per chunk (panel), about 256: whole groups when G <= 256, else a divisor of G (so a chunk never
// straddles two groups: a chunk is then exactly whole groups of size G or of size chunk, one scale row each).
constexpr int64_t kTargetChunkRows = 256;

inline int64_t chunk_rows(int64_t G) {
  if (G <= kTargetChunkRows) return G * (kTargetChunkRows / G);
  for (int64_t d = kTargetChunkRows; d > 1; --d)
    if (G % d == 0) return d;
  return 1;
}

// M rows of x cut into ceil(M / TileRows) tiles of nearly equal height (heights differ by at most 1), so that
// no slow short tile is left over (256 = 9 x 14 + 10 x 13 rather than 18 x 14 + 4).
template <int TileRows>
struct RowTiles {
  int64_t count, base, extra;
  explicit RowTiles(int64_t M) : count((M + TileRows - 1) / TileRows), base(M / count), extra(M % count) {}
  int64_t start(int64_t i) const { return i * base + std::min(i, extra); }
  int64_t rows(int64_t i) const { return base + (i < extra ? 1 : 0); }
};

inline float* align64(float* buffer) {
  const uintptr_t p = reinterpret_cast<uintptr_t>(buffer);
  return reinterpret_cast<float*>((p + 63) & ~uintptr_t(63));
}

// xp = rows of tiles t0..t1 of x, each tile stored [k][row] (MR floats per k), tiles one after the other: one
// tile's chunk is then contiguous and stays in L1 while it meets every strip of the panel.
template <int TileRows>
void pack_x(const AwqGemmArgs& a, const RowTiles<TileRows>& tiles, int64_t t0, int64_t t1, float* xp) {
  const int64_t m0 = tiles.start(t0);
  at::parallel_for(t0, t1, 1, [&](int64_t first, int64_t last) {
    for (int64_t t = first; t < last; ++t) {
      const int64_t start = tiles.start(t), mr = tiles.rows(t);
      float* dst = xp + (start - m0) * a.K;
      for (int64_t k = 0; k < a.K; ++k)
        for (int64_t r = 0; r < mr; ++r) dst[k * mr + r] = a.x[(start + r) * a.K + k];
    }
  });
}

// The outer loop of both kernels: rows of x in blocks of `tiles_per_row_block` tiles (so the packed copy of x
// stays bounded for any M), each block packed once, then threads over the 128-channel column blocks, grain 1.
// multiply(tiles, t0, t1, xp, first_block, last_block) is the ISA's own; it must be a plain function or a
// lambda calling one (a lambda does not inherit the caller's target attribute).
template <int TileRows, typename Multiply>
void run_row_blocks(const AwqGemmArgs& a, int64_t tiles_per_row_block, Multiply&& multiply) {
  const RowTiles<TileRows> tiles(a.M);
  const int64_t row_block = tiles.start(std::min(tiles.count, tiles_per_row_block));
  std::unique_ptr<float[]> xp_storage(new float[row_block * a.K + 16]);  // no zero-fill: pack_x writes all of it
  float* xp = align64(xp_storage.get());
  const int64_t blocks = (a.N / 8 + kBlockWords - 1) / kBlockWords;
  for (int64_t t0 = 0; t0 < tiles.count; t0 += tiles_per_row_block) {
    const int64_t t1 = std::min(tiles.count, t0 + tiles_per_row_block);
    pack_x(a, tiles, t0, t1, xp);
    at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) { multiply(tiles, t0, t1, xp, first, last); });
  }
}

}  // namespace prefill
}  // namespace cpu
}  // namespace minimoe
