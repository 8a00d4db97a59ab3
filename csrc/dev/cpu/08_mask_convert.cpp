// 08 · codes masked in place (one AND + one convert per 8), cache-line strips swept in 16-row chunks, prefetch.
//
// What changed from 06: 06 unpacks a word with vpsrlvd + AND + convert and feeds one row of x a group at a time,
// keeping 8 words (one half cache line) of a row per step. Here:
//   * nibble i of 8 words is `w & (0xF << 4i)`: the integer q * 16^i, which converts to float exactly (4
//     significant bits). The loop accumulates x * q * 16^i and the fold undoes 16^i once per group (a power of
//     two: no rounding changes). Nibble 7 would convert as a negative int32, so it is shifted down (w >> 28 = q).
//     The result is in "packed order" (nibble i of word l, not channel 8 l + i) and is put back per group;
//   * a strip is 16 words, one 64-byte line of a row; 8 accumulators hold 4 nibbles of both halves, so a chunk of
//     16 rows is worked in two passes (nibbles 0-3, then 4-7), the second reading the chunk from L1;
//   * a group's chunks sweep every strip (16 row streams at once) and the next chunk's line is prefetched.
// Threads as in 06: contiguous slabs of whole groups, private partials summed in order. Words past the last
// full strip (N % 128 != 0) take 06's simple path.

#include <immintrin.h>
#include <omp.h>

#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t kRows = 16;

template <int Nib>
inline __m256 codes_scaled(__m256i w) {
  if constexpr (Nib == 7) return _mm256_cvtepi32_ps(_mm256_srli_epi32(w, 28));
  else return _mm256_cvtepi32_ps(_mm256_and_si256(w, _mm256_set1_epi32(0xF << (4 * Nib))));
}

// acc[i][h] += x[k] * nibble (4 P + i) of half h, for the rows of one chunk of one strip.
template <int P>
inline void pass(const int32_t* base, int64_t stride, int64_t rows, const float* x, float* dot) {
  __m256 acc[4][2];
  for (int i = 0; i < 4; ++i)
    for (int h = 0; h < 2; ++h) acc[i][h] = _mm256_loadu_ps(dot + (4 * P + i) * 16 + 8 * h);
  for (int64_t k = 0; k < rows; ++k) {
    const int32_t* row = base + k * stride;
    if (P == 0) _mm_prefetch(reinterpret_cast<const char*>(row + kRows * stride), _MM_HINT_T0);
    const __m256i w[2] = {_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row)),
                          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 8))};
    const __m256 xk = _mm256_broadcast_ss(x + k);
    for (int h = 0; h < 2; ++h) {
      acc[0][h] = _mm256_fmadd_ps(xk, codes_scaled<4 * P + 0>(w[h]), acc[0][h]);
      acc[1][h] = _mm256_fmadd_ps(xk, codes_scaled<4 * P + 1>(w[h]), acc[1][h]);
      acc[2][h] = _mm256_fmadd_ps(xk, codes_scaled<4 * P + 2>(w[h]), acc[2][h]);
      acc[3][h] = _mm256_fmadd_ps(xk, codes_scaled<4 * P + 3>(w[h]), acc[3][h]);
    }
  }
  for (int i = 0; i < 4; ++i)
    for (int h = 0; h < 2; ++h) _mm256_storeu_ps(dot + (4 * P + i) * 16 + 8 * h, acc[i][h]);
}

inline int awq_code(int32_t word, int channel) {  // AWQ's order: channel j sits in nibble ORDER^-1[j]
  static const int kShift[8] = {0, 16, 4, 20, 8, 24, 12, 28};
  return (static_cast<uint32_t>(word) >> kShift[channel]) & 0xF;
}

// Groups [g_begin, g_end) of one row of x, added into out (N floats).
void row_groups(const float* xr, const int32_t* qweight, const int32_t* qzeros, const uint16_t* scales, float* out,
                int64_t N, int64_t G, int64_t g_begin, int64_t g_end) {
  const int64_t words = N / 8, strips = words / 16;
  std::vector<float> dot(strips * 128);
  for (int64_t g = g_begin; g < g_end; ++g) {
    float xsum = 0.0f;
    for (int64_t k = g * G; k < (g + 1) * G; ++k) xsum += xr[k];
    std::fill(dot.begin(), dot.end(), 0.0f);
    for (int64_t k0 = g * G; k0 < (g + 1) * G; k0 += kRows) {
      const int64_t rows = (g + 1) * G - k0 < kRows ? (g + 1) * G - k0 : kRows;
      for (int64_t s = 0; s < strips; ++s) {
        pass<0>(qweight + k0 * words + 16 * s, words, rows, xr + k0, dot.data() + 128 * s);
        pass<1>(qweight + k0 * words + 16 * s, words, rows, xr + k0, dot.data() + 128 * s);
      }
    }
    // The fold, in scalar code for clarity (the production loop does it on vectors): position i * 16 + l is
    // nibble i of word l, channel 8 l + ORDER[i], ORDER[i] = 2 (i % 4) + i / 4.
    for (int64_t s = 0; s < strips; ++s)
      for (int p = 0; p < 128; ++p) {
        const int i = p / 16, l = p % 16, word = 16 * static_cast<int>(s) + l;
        const int channel = 8 * word + 2 * (i % 4) + i / 4;
        const float back = i == 7 ? 1.0f : 1.0f / static_cast<float>(1 << (4 * i));
        const float z = static_cast<float>(awq_code(qzeros[g * words + word], channel % 8));
        const float sc = _cvtsh_ss(scales[g * N + channel]);
        out[channel] += sc * (dot[128 * s + p] * back - z * xsum);
      }
    // Words after the last full strip: one word at a time, scalar.
    for (int64_t w = 16 * strips; w < words; ++w)
      for (int j = 0; j < 8; ++j) {
        float acc = 0.0f;
        for (int64_t k = g * G; k < (g + 1) * G; ++k) acc += xr[k] * static_cast<float>(awq_code(qweight[k * words + w], j));
        const float z = static_cast<float>(awq_code(qzeros[g * words + w], j));
        out[8 * w + j] += _cvtsh_ss(scales[g * N + 8 * w + j]) * (acc - z * xsum);
      }
  }
}

}  // namespace

extern "C" int minimoe_int4_gemm(const float* x, const int32_t* qweight, const int32_t* qzeros,
                                 const uint16_t* scales, float* y, int64_t M, int64_t K, int64_t N, int64_t G,
                                 int threads) {
  const int64_t groups = K / G;
  const int T = threads > 0 ? threads : omp_get_max_threads();
  const int used = static_cast<int>(groups < T ? groups : T);
  std::vector<float> partial(static_cast<size_t>(used) * M * N, 0.0f);
#pragma omp parallel for num_threads(used) schedule(static)
  for (int t = 0; t < used; ++t) {
    const int64_t g_begin = groups * t / used, g_end = groups * (t + 1) / used;
    for (int64_t m = 0; m < M; ++m)
      row_groups(x + m * K, qweight, qzeros, scales, partial.data() + (static_cast<int64_t>(t) * M + m) * N, N, G,
                 g_begin, g_end);
  }
  for (int64_t i = 0; i < M * N; ++i) {
    float total = 0.0f;
    for (int t = 0; t < used; ++t) total += partial[static_cast<int64_t>(t) * M * N + i];
    y[i] = total;
  }
  return 0;
}
