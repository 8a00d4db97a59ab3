// 02 · loop order: stream qweight row by row, unpack each word once for its 8 outputs.
//
// What changed from 01: the k loop moved outside the n loop. Row k of qweight is N/8 consecutive words, read once,
// front to back, while the 8 codes of each word update 8 neighbouring outputs held in y itself. The hardware
// prefetcher now sees one forward stream instead of N strided ones, and each code is unpacked once per row of x
// instead of once per output. Still scalar, still a multiply by the converted fp16 scale for every weight.

#include <cstdint>
#include <cstring>

namespace {

constexpr int kReverse[8] = {0, 4, 1, 5, 2, 6, 3, 7};

// IEEE half -> float by the bits (sign, 5-bit exponent, 10-bit mantissa), subnormals included.
inline float half_to_float(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1Fu, mantissa = h & 0x3FFu, bits;
  if (exponent == 0) {
    if (mantissa == 0) {
      bits = sign;
    } else {                                   // subnormal: normalise the mantissa
      exponent = 113;
      while ((mantissa & 0x400u) == 0) { mantissa <<= 1; --exponent; }
      bits = sign | (exponent << 23) | ((mantissa & 0x3FFu) << 13);
    }
  } else if (exponent == 31) {
    bits = sign | 0x7F800000u | (mantissa << 13);
  } else {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

}  // namespace

extern "C" int minimoe_int4_gemm(const float* x, const int32_t* qweight, const int32_t* qzeros,
                                 const uint16_t* scales, float* y, int64_t M, int64_t K, int64_t N, int64_t G,
                                 int /*threads*/) {
  const int64_t words = N / 8;
  for (int64_t m = 0; m < M; ++m) {
    float* out = y + m * N;
    for (int64_t n = 0; n < N; ++n) out[n] = 0.0f;
    for (int64_t k = 0; k < K; ++k) {
      const float xv = x[m * K + k];
      const int64_t g = k / G;
      const int32_t* row = qweight + k * words;
      const int32_t* zeros = qzeros + g * words;
      const uint16_t* s = scales + g * N;
      for (int64_t c = 0; c < words; ++c) {
        const int32_t w = row[c], zw = zeros[c];
        for (int j = 0; j < 8; ++j) {
          const int shift = 4 * kReverse[j];
          const int q = (w >> shift) & 0xF, z = (zw >> shift) & 0xF;
          out[8 * c + j] += xv * static_cast<float>(q - z) * half_to_float(s[8 * c + j]);
        }
      }
    }
  }
  return 0;
}
