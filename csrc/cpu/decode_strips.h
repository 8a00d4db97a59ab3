// decode_strips.h - the loop nest that the AVX2 and NEON decode kernels share (awq_gemm_avx2.cpp,
// awq_gemm_neon.cpp): groups -> 16-row chunks -> 16-word strips, then each group's fold, then packed order back
// to channel order. The per-ISA parts (multiply a chunk of one strip into its running sums; fold one strip's sums
// into the output) come in as callables. Torch-free: the NEON file is also built into a qemu test program.
//
// A result depends only on k order inside a group and group order, never on the strip or the word range a call
// gets: that is what makes the drivers' thread splits bit-for-bit invisible.
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "awq_gemm.h"

namespace minimoe {
namespace cpu {
namespace strips {

constexpr int64_t kStripWords = 16;                  // one 64-byte cache line of a qweight row
constexpr int64_t kStripChannels = 8 * kStripWords;  // 128 running sums per row of x, in packed order
constexpr int64_t kRows = 16;                        // rows of a group per chunk

// y[m, 8 word_begin .. 8 word_end) = the decode contract of awq_gemm.h.
//   chunk(rows_of_words, rows, strip_words, x_at_k0, dot, dot_stride, prefetch_next_chunk): adds x * q of
//       `rows` rows of one strip to its running sums (dot: 128 floats per row of x, stride dot_stride);
//   fold(g, strip_word, strip_words, dot, dot_stride, y_acc, y_stride): y_acc += s (dot / 16^i - z X) for it.
template <typename Chunk, typename Fold>
void decode(const AwqGemmArgs& a, int64_t word_begin, int64_t word_end, int64_t group_begin, int64_t group_end,
            float* y, Chunk&& chunk, Fold&& fold) {
  const int64_t words = a.N / 8;
  const int64_t count = (word_end - word_begin + kStripWords - 1) / kStripWords;
  const int64_t width = count * kStripChannels;  // running sums per row of x, packed order strip by strip
  std::vector<float> dot(a.M * width), y_acc(a.M * width, 0.0f);
  const auto strip = [&](int64_t s) {  // (first word, valid words) of strip s
    const int64_t w0 = word_begin + s * kStripWords;
    return std::pair<int64_t, int64_t>{w0, std::min(kStripWords, word_end - w0)};
  };
  for (int64_t g = group_begin; g < group_end; ++g) {
    std::fill(dot.begin(), dot.end(), 0.0f);
    const int64_t k_end = (g + 1) * a.G;
    for (int64_t k0 = g * a.G; k0 < k_end; k0 += kRows) {
      const int64_t rows = std::min(kRows, k_end - k0);
      const bool prefetch = k0 + kRows < a.K;  // the next chunk's rows exist
      for (int64_t s = 0; s < count; ++s) {
        const auto [w0, valid] = strip(s);
        chunk(a.qweight + k0 * words + w0, rows, valid, a.x + k0, dot.data() + s * kStripChannels, width, prefetch);
      }
    }
    for (int64_t s = 0; s < count; ++s) {
      const auto [w0, valid] = strip(s);
      fold(g, w0, valid, dot.data() + s * kStripChannels, width, y_acc.data() + s * kStripChannels, width);
    }
  }
  for (int64_t m = 0; m < a.M; ++m)
    for (int64_t s = 0; s < count; ++s) {
      const auto [w0, valid] = strip(s);
      for (int64_t p = 0; p < kStripChannels; ++p)
        if (p % kStripWords < valid)
          y[m * a.N + channel_of_packed_position(w0, p, kStripWords)] = y_acc[m * width + s * kStripChannels + p];
    }
}

}  // namespace strips
}  // namespace cpu
}  // namespace minimoe
