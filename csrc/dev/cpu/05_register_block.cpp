// 05 · register blocking: 64 outputs' accumulators stay in registers for a whole group.
//
// What changed from 04: the loops are reordered to group -> block of 8 words (64 outputs) -> the group's G rows.
// The eight accumulators of a block live in eight ymm registers while the G rows stream past: each row contributes
// 32 contiguous bytes of qweight (one half cache line), and nothing else goes to memory until the group ends,
// when z and s are applied and the block is added into y. Per word: one broadcast, shift, and, convert, and fma.
// The N % 64 columns left over take the same path one word (8 outputs) at a time.

#include <immintrin.h>

#include <cstdint>

namespace {

inline __m256 codes_of(int32_t word, __m256i shifts, __m256i low4) {
  return _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(word), shifts), low4));
}

}  // namespace

extern "C" int minimoe_int4_gemm(const float* x, const int32_t* qweight, const int32_t* qzeros,
                                 const uint16_t* scales, float* y, int64_t M, int64_t K, int64_t N, int64_t G,
                                 int /*threads*/) {
  const int64_t words = N / 8;
  const __m256i shifts = _mm256_setr_epi32(0, 16, 4, 20, 8, 24, 12, 28);
  const __m256i low4 = _mm256_set1_epi32(0xF);
  for (int64_t m = 0; m < M; ++m) {
    const float* xr = x + m * K;
    float* out = y + m * N;
    for (int64_t n = 0; n < N; ++n) out[n] = 0.0f;
    for (int64_t g = 0; g < K / G; ++g) {
      float xsum = 0.0f;
      for (int64_t k = g * G; k < (g + 1) * G; ++k) xsum += xr[k];
      const __m256 sum = _mm256_set1_ps(xsum);
      int64_t c0 = 0;
      for (; c0 + 8 <= words; c0 += 8) {
        __m256 acc[8];
        for (int b = 0; b < 8; ++b) acc[b] = _mm256_setzero_ps();
        for (int64_t k = g * G; k < (g + 1) * G; ++k) {
          const __m256 xv = _mm256_set1_ps(xr[k]);
          const int32_t* row = qweight + k * words + c0;
          for (int b = 0; b < 8; ++b) acc[b] = _mm256_fmadd_ps(xv, codes_of(row[b], shifts, low4), acc[b]);
        }
        for (int b = 0; b < 8; ++b) {
          const int64_t c = c0 + b;
          const __m256 z = codes_of(qzeros[g * words + c], shifts, low4);
          const __m256 s = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(scales + g * N + 8 * c)));
          __m256 o = _mm256_loadu_ps(out + 8 * c);
          _mm256_storeu_ps(out + 8 * c, _mm256_fmadd_ps(s, _mm256_fnmadd_ps(z, sum, acc[b]), o));
        }
      }
      for (; c0 < words; ++c0) {           // the leftover words, one at a time
        __m256 acc = _mm256_setzero_ps();
        for (int64_t k = g * G; k < (g + 1) * G; ++k)
          acc = _mm256_fmadd_ps(_mm256_set1_ps(xr[k]), codes_of(qweight[k * words + c0], shifts, low4), acc);
        const __m256 z = codes_of(qzeros[g * words + c0], shifts, low4);
        const __m256 s = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(scales + g * N + 8 * c0)));
        __m256 o = _mm256_loadu_ps(out + 8 * c0);
        _mm256_storeu_ps(out + 8 * c0, _mm256_fmadd_ps(s, _mm256_fnmadd_ps(z, sum, acc), o));
      }
    }
  }
  return 0;
}
