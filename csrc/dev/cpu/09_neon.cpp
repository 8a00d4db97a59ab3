// 09 · 08 on ARM64 (NEON): the same masked codes, converted unsigned, so no nibble needs a shift.
//
// What changed from 08: the instruction set. NEON registers hold 4 floats (AVX2: 8), but there are 32 of them
// (AVX2: 16), so a pass keeps 4 nibbles x 4 quarters of a 16-word strip = 16 accumulators, the same bytes per
// pass as 08. The one real difference is the convert: NEON has an unsigned int -> float conversion (vcvtq_f32_u32),
// so nibble 7 masked in place, `w & 0xF0000000` (q * 2^28, up to 15 * 2^28, above INT32_MAX), converts exactly as
// it stands; AVX2 only converts signed int32, which is why 08 shifts nibble 7 down. The fold undoes 16^i for
// every nibble alike. No prefetch instruction: ARM cores' prefetchers follow the 16 row streams of a chunk
// (not measured: no ARM machine was at hand; tests/test_neon.py runs this file under qemu-aarch64).
// Threads as in 06 and 08: contiguous slabs of whole groups, private partials summed in order. Words past the
// last full strip (N % 128 != 0) take a scalar path.

#include <arm_neon.h>
#include <omp.h>

#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t kRows = 16;

template <int Nib>
inline float32x4_t codes_scaled(uint32x4_t w) {  // q * 16^Nib, exact
  return vcvtq_f32_u32(vandq_u32(w, vdupq_n_u32(0xFu << (4 * Nib))));
}

// acc[i][q] += x[k] * nibble (4 P + i) of quarter q (words 4q .. 4q + 3), for the rows of one chunk of one strip.
template <int P>
inline void pass(const int32_t* base, int64_t stride, int64_t rows, const float* x, float* dot) {
  float32x4_t acc[4][4];
  for (int i = 0; i < 4; ++i)
    for (int q = 0; q < 4; ++q) acc[i][q] = vld1q_f32(dot + (4 * P + i) * 16 + 4 * q);
  for (int64_t k = 0; k < rows; ++k) {
    const uint32_t* row = reinterpret_cast<const uint32_t*>(base + k * stride);
    const float32x4_t xk = vdupq_n_f32(x[k]);
    for (int q = 0; q < 4; ++q) {
      const uint32x4_t w = vld1q_u32(row + 4 * q);
      acc[0][q] = vfmaq_f32(acc[0][q], xk, codes_scaled<4 * P + 0>(w));
      acc[1][q] = vfmaq_f32(acc[1][q], xk, codes_scaled<4 * P + 1>(w));
      acc[2][q] = vfmaq_f32(acc[2][q], xk, codes_scaled<4 * P + 2>(w));
      acc[3][q] = vfmaq_f32(acc[3][q], xk, codes_scaled<4 * P + 3>(w));
    }
  }
  for (int i = 0; i < 4; ++i)
    for (int q = 0; q < 4; ++q) vst1q_f32(dot + (4 * P + i) * 16 + 4 * q, acc[i][q]);
}

inline int awq_code(int32_t word, int channel) {  // AWQ's order: channel j sits in nibble ORDER^-1[j]
  static const int kShift[8] = {0, 16, 4, 20, 8, 24, 12, 28};
  return (static_cast<uint32_t>(word) >> kShift[channel]) & 0xF;
}

inline float half_to_float(uint16_t bits) {  // one fp16 -> fp32 through the vector convert
  return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(bits))), 0);
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
    // The fold, scalar for clarity: position i * 16 + l is nibble i of word l, channel 8 l + ORDER[i].
    for (int64_t s = 0; s < strips; ++s)
      for (int p = 0; p < 128; ++p) {
        const int i = p / 16, l = p % 16, word = 16 * static_cast<int>(s) + l;
        const int channel = 8 * word + 2 * (i % 4) + i / 4;
        const float back = 1.0f / static_cast<float>(1u << (4 * i));  // every nibble, 7 included
        const float z = static_cast<float>(awq_code(qzeros[g * words + word], channel % 8));
        out[channel] += half_to_float(scales[g * N + channel]) * (dot[128 * s + p] * back - z * xsum);
      }
    for (int64_t w = 16 * strips; w < words; ++w)  // words after the last full strip
      for (int j = 0; j < 8; ++j) {
        float acc = 0.0f;
        for (int64_t k = g * G; k < (g + 1) * G; ++k) acc += xr[k] * static_cast<float>(awq_code(qweight[k * words + w], j));
        const float z = static_cast<float>(awq_code(qzeros[g * words + w], j));
        out[8 * w + j] += half_to_float(scales[g * N + 8 * w + j]) * (acc - z * xsum);
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
