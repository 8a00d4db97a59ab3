// 07 · prefill: a 4-row x 16-output register tile, each unpacked word used by four rows of x.
//
// What changed from 06: at M > 1 (a prompt) every word of qweight was unpacked M times, once per row of x. Here
// rows are taken four at a time: for each row k of a group, two words (16 outputs) are unpacked once into two
// float vectors and multiplied into 4 x 2 accumulators (eight ymm registers), one fma per row per vector. The
// arithmetic per unpacked word rises fourfold, which is what moves prefill from the memory roof towards the
// compute roof. Threads split the output columns (each thread a contiguous slab of blocks, no reduction). The
// M % 4 leftover rows take a one-row tile.

#include <immintrin.h>
#include <omp.h>

#include <cstdint>

namespace {

inline __m256 codes_of(int32_t word, __m256i shifts, __m256i low4) {
  return _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(word), shifts), low4));
}

// Rows [m0, m0 + R) of x times the 16 outputs of words (c, c + 1) (or 8 outputs when only word c exists).
template <int R>
void tile(const float* x, const int32_t* qweight, const int32_t* qzeros, const uint16_t* scales, float* y,
          int64_t m0, int64_t K, int64_t N, int64_t G, int64_t c, int nwords) {
  const int64_t words = N / 8;
  const __m256i shifts = _mm256_setr_epi32(0, 16, 4, 20, 8, 24, 12, 28);
  const __m256i low4 = _mm256_set1_epi32(0xF);
  __m256 out[R][2];
  for (int r = 0; r < R; ++r) out[r][0] = out[r][1] = _mm256_setzero_ps();
  for (int64_t g = 0; g < K / G; ++g) {
    __m256 acc[R][2];
    float xsum[R];
    for (int r = 0; r < R; ++r) { acc[r][0] = acc[r][1] = _mm256_setzero_ps(); xsum[r] = 0.0f; }
    for (int64_t k = g * G; k < (g + 1) * G; ++k) {
      const int32_t* row = qweight + k * words + c;
      const __m256 w0 = codes_of(row[0], shifts, low4);
      const __m256 w1 = nwords > 1 ? codes_of(row[1], shifts, low4) : _mm256_setzero_ps();
      for (int r = 0; r < R; ++r) {
        const float xv = x[(m0 + r) * K + k];
        xsum[r] += xv;
        const __m256 xb = _mm256_set1_ps(xv);
        acc[r][0] = _mm256_fmadd_ps(xb, w0, acc[r][0]);
        acc[r][1] = _mm256_fmadd_ps(xb, w1, acc[r][1]);
      }
    }
    for (int b = 0; b < nwords; ++b) {
      const __m256 z = codes_of(qzeros[g * words + c + b], shifts, low4);
      const __m256 s = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(scales + g * N + 8 * (c + b))));
      for (int r = 0; r < R; ++r)
        out[r][b] = _mm256_fmadd_ps(s, _mm256_fnmadd_ps(z, _mm256_set1_ps(xsum[r]), acc[r][b]), out[r][b]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < nwords; ++b) _mm256_storeu_ps(y + (m0 + r) * N + 8 * (c + b), out[r][b]);
}

}  // namespace

extern "C" int minimoe_int4_gemm(const float* x, const int32_t* qweight, const int32_t* qzeros,
                                 const uint16_t* scales, float* y, int64_t M, int64_t K, int64_t N, int64_t G,
                                 int threads) {
  const int64_t words = N / 8, pairs = (words + 1) / 2;
  const int T = threads > 0 ? threads : omp_get_max_threads();
#pragma omp parallel for num_threads(T) schedule(static)
  for (int64_t p = 0; p < pairs; ++p) {
    const int64_t c = 2 * p;
    const int nwords = c + 1 < words ? 2 : 1;
    int64_t m = 0;
    for (; m + 4 <= M; m += 4) tile<4>(x, qweight, qzeros, scales, y, m, K, N, G, c, nwords);
    for (; m < M; ++m) tile<1>(x, qweight, qzeros, scales, y, m, K, N, G, c, nwords);
  }
  return 0;
}
