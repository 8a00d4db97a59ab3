// 01 · the textbook loop: for every output y[m, n], walk all K inputs.
//
// y[m, n] = sum_k x[m, k] * (q[k, n] - z[k / G, n]) * s[k / G, n], exactly as the AWQ format reads (minimoe/awq.py):
// pull the code out of its word (channel 8c + j lives in nibble REVERSE[j]), the zero point out of its word,
// convert the fp16 scale, multiply, add. Every step of the inner loop jumps N/8 words ahead in qweight, a new cache
// line each time, and every code is unpacked M times. The baseline the ladder climbs from.
//
// The ladder's contract (every stage): a C function, no torch headers, built by `python -m minimoe.bench.kernels`
// with the flags in csrc/dev/cpu/registry.json and called through ctypes; y is overwritten entirely (the harness
// fills it with NaN first, so an output a stage forgets shows up).

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
    for (int64_t n = 0; n < N; ++n) {
      const int shift = 4 * kReverse[n % 8];
      float acc = 0.0f;
      for (int64_t k = 0; k < K; ++k) {
        const int64_t g = k / G;
        const int q = (qweight[k * words + n / 8] >> shift) & 0xF;
        const int z = (qzeros[g * words + n / 8] >> shift) & 0xF;
        acc += x[m * K + k] * static_cast<float>(q - z) * half_to_float(scales[g * N + n]);
      }
      y[m * N + n] = acc;
    }
  }
  return 0;
}
