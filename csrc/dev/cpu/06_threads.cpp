// 06 · threads over contiguous slabs of K (whole groups), each with its own partial output.
//
// What changed from 05: the groups are split between the threads (OpenMP), thread t taking a contiguous run of
// groups, so each reads its own contiguous part of qweight (decode is a memory stream: two cores read more than
// one). Each thread adds into a private partial y; the partials are summed at the end (N floats per thread, small
// next to the weights). Splitting K rather than N keeps every thread's reads one forward stream, and the sum at the
// end is in a fixed order, so the result does not depend on scheduling.

#include <immintrin.h>
#include <omp.h>

#include <cstdint>
#include <vector>

namespace {

inline __m256 codes_of(int32_t word, __m256i shifts, __m256i low4) {
  return _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(word), shifts), low4));
}

// 05's kernel for the groups [g_begin, g_end) of one row of x, added into out (N floats).
void row_groups(const float* xr, const int32_t* qweight, const int32_t* qzeros, const uint16_t* scales, float* out,
                int64_t N, int64_t G, int64_t g_begin, int64_t g_end) {
  const int64_t words = N / 8;
  const __m256i shifts = _mm256_setr_epi32(0, 16, 4, 20, 8, 24, 12, 28);
  const __m256i low4 = _mm256_set1_epi32(0xF);
  for (int64_t g = g_begin; g < g_end; ++g) {
    float xsum = 0.0f;
    for (int64_t k = g * G; k < (g + 1) * G; ++k) xsum += xr[k];
    const __m256 sum = _mm256_set1_ps(xsum);
    for (int64_t c0 = 0; c0 < words; c0 += 8) {
      const int blocks = static_cast<int>(words - c0 < 8 ? words - c0 : 8);
      __m256 acc[8];
      for (int b = 0; b < 8; ++b) acc[b] = _mm256_setzero_ps();
      for (int64_t k = g * G; k < (g + 1) * G; ++k) {
        const __m256 xv = _mm256_set1_ps(xr[k]);
        const int32_t* row = qweight + k * words + c0;
        for (int b = 0; b < blocks; ++b) acc[b] = _mm256_fmadd_ps(xv, codes_of(row[b], shifts, low4), acc[b]);
      }
      for (int b = 0; b < blocks; ++b) {
        const int64_t c = c0 + b;
        const __m256 z = codes_of(qzeros[g * words + c], shifts, low4);
        const __m256 s = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(scales + g * N + 8 * c)));
        _mm256_storeu_ps(out + 8 * c, _mm256_fmadd_ps(s, _mm256_fnmadd_ps(z, sum, acc[b]), _mm256_loadu_ps(out + 8 * c)));
      }
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
