// awq_gemm_scalar.cpp - the portable scalar kernels of minimoe::awq_gemm (driver: awq_gemm.cpp).
//
// Natural channel order, plain C++, any scale dtype (fp16, bf16, fp32). They compute the same quantities as the
// vector kernels by the textbook formula (sum x*q, then s * (D - z X)) rather than the vector kernels' tricks
// (codes scaled by 16^i, packed order), so they are a second, independent implementation as well as the
// fallback on CPUs without a vector tier (MINIMOE_CPU_ISA=scalar forces them anywhere).
#include <algorithm>
#include <cstring>
#include <vector>

#include "../dequant.h"
#include "awq_gemm_driver.h"

namespace minimoe {
namespace cpu {
namespace {

inline float scale_at(const void* scales, at::ScalarType dtype, int64_t i) {
  switch (dtype) {
    case at::kHalf: return static_cast<float>(static_cast<const at::Half*>(scales)[i]);
    case at::kBFloat16: return static_cast<float>(static_cast<const at::BFloat16*>(scales)[i]);
    default: return static_cast<const float*>(scales)[i];
  }
}

template <typename T>
void dequant_tile(const AwqGemmArgs& a, at::ScalarType scale_dtype, int64_t word_begin, int64_t word_end, T* tile) {
  const int64_t words = a.N / 8;
  const int64_t blocks = (word_end - word_begin + kBlockWords - 1) / kBlockWords, width = blocks * kBlockChannels;
  for (int64_t k = 0; k < a.K; ++k) {
    const int64_t g = k / a.G;
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t w0 = word_begin + b * kBlockWords;
      for (int64_t p = 0; p < kBlockChannels; ++p) {
        float value = 0.0f;
        if (w0 + p % kBlockWords < word_end) {
          const int64_t channel = channel_of_packed_position(w0, p);
          const uint32_t q = awq_code(a.qweight[k * words + channel / 8], channel % 8);
          const uint32_t z = awq_code(a.qzeros[g * words + channel / 8], channel % 8);
          value = awq_dequant(q, z, scale_at(a.scales, scale_dtype, g * a.N + channel));  // exact in fp32
        }
        tile[k * width + b * kBlockChannels + p] = static_cast<T>(value);  // bf16: round to nearest even
      }
    }
  }
}}  // namespace

void decode_scalar(const AwqGemmArgs& a, at::ScalarType scale_dtype, int64_t word_begin, int64_t word_end,
                   int64_t group_begin, int64_t group_end, float* y) {
  const int64_t words = a.N / 8, groups = a.K / a.G, width = 8 * (word_end - word_begin);
  std::vector<float> codes(width), dot(a.M * width), y_acc(a.M * width, 0.0f);
  for (int64_t g = group_begin; g < group_end; ++g) {
    std::fill(dot.begin(), dot.end(), 0.0f);
    for (int64_t k = g * a.G; k < (g + 1) * a.G; ++k) {
      // Unpack the row segment once, use it for every row of x.
      for (int64_t w = word_begin; w < word_end; ++w)
        for (int j = 0; j < 8; ++j) codes[8 * (w - word_begin) + j] = static_cast<float>(awq_code(a.qweight[k * words + w], j));
      for (int64_t m = 0; m < a.M; ++m) {
        const float xv = a.x[m * a.K + k];
        float* d = dot.data() + m * width;
        for (int64_t n = 0; n < width; ++n) d[n] += xv * codes[n];
      }
    }
    for (int64_t m = 0; m < a.M; ++m) {
      const float xsum = a.xsum[m * groups + g];
      for (int64_t n = 0; n < width; ++n) {
        const int64_t channel = 8 * word_begin + n;
        const float z = static_cast<float>(awq_code(a.qzeros[g * words + channel / 8], channel % 8));
        const float s = scale_at(a.scales, scale_dtype, g * a.N + channel);
        y_acc[m * width + n] += s * (dot[m * width + n] - z * xsum);
      }
    }
  }
  for (int64_t m = 0; m < a.M; ++m)
    std::memcpy(y + m * a.N + 8 * word_begin, y_acc.data() + m * width, width * sizeof(float));
}

void dequant_tile_scalar(const AwqGemmArgs& a, at::ScalarType scale_dtype, int64_t word_begin, int64_t word_end,
                         float* tile) {
  dequant_tile(a, scale_dtype, word_begin, word_end, tile);
}

void dequant_tile_scalar(const AwqGemmArgs& a, at::ScalarType scale_dtype, int64_t word_begin, int64_t word_end,
                         at::BFloat16* tile) {
  dequant_tile(a, scale_dtype, word_begin, word_end, tile);
}

}  // namespace cpu
}  // namespace minimoe
