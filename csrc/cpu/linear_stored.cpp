// linear_stored.cpp - minimoe::linear_stored on the CPU: y = x @ W^T with W kept in the checkpoint's dtype.
//
// Why it exists. Confinus-2x7B stores its lm_head (and embeddings) in fp16: 32000 x 4096 = 262 MB. A model
// loaded with bf16 or fp32 activations used to convert that matrix at load time, which costs memory twice (the
// converted copy, plus the file pages touched while converting) and, for fp32, doubles the bytes every decoded
// token must read (the lm_head is then the largest single matrix in the model: 524 MB). This kernel reads the
// stored fp16 (or bf16) weights as they are and converts each one in registers, just before it is used.
//
// Semantics are those of F.linear(x, W.to(x.dtype)), the conversion the loader used to do:
//   x fp32: W fp16/bf16 -> fp32 is exact; products and sums in fp32.
//   x bf16: each weight is rounded to bf16 (round to nearest even; exact for bf16 weights), multiplied by x
//           (exact in fp32), summed in fp32, and the sum rounded once to bf16, as a bf16 GEMM does.
// Only the order of the fp32 sum differs from torch's GEMM, so results agree to fp32 rounding.
//
// Where the bytes go: decode calls it with M = 1 (the last token's hidden state). Every weight is read once,
// 2 bytes each; x (16 KB) stays in L1. Threads split the output rows n (never K), and each output is one
// fixed-order dot product, so the result does not depend on the thread count.
#include <torch/extension.h>
#include <torch/library.h>

#include <ATen/Parallel.h>

#include <cstdlib>
#include <cstring>

#include "../check_text.h"
#include "awq_gemm.h"
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include "avx512_inl.h"  // x86-64 only (immintrin.h); an ARM64 build takes linear_rows_neon (awq_gemm_neon.cpp)
#endif

namespace minimoe {
namespace cpu {
namespace {

// Rows of W per work item: 64 rows x 4096 x 2 B = 512 KB, a few hundred items for the lm_head.
constexpr int64_t kRowsPerItem = 64;
// How far ahead of the rows being multiplied the AVX-512 loop prefetches (see rows_avx512_t).
constexpr int64_t kPrefetchBytes = 16 * 1024;

inline float stored_to_float(const void* w, bool fp16, int64_t i) {
  return fp16 ? static_cast<float>(static_cast<const at::Half*>(w)[i])
              : static_cast<float>(static_cast<const at::BFloat16*>(w)[i]);
}

// Portable path: y[m, n] for rows n in [n0, n1).
void rows_scalar(const float* x, const void* w, bool fp16, bool round_bf16, int64_t M, int64_t K, int64_t N,
                 int64_t n0, int64_t n1, float* y) {
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t m = 0; m < M; ++m) {
      float sum = 0.0f;
      for (int64_t k = 0; k < K; ++k) {
        float wv = stored_to_float(w, fp16, n * K + k);
        if (round_bf16) wv = static_cast<float>(static_cast<at::BFloat16>(wv));  // c10 rounds to nearest even
        sum += x[m * K + k] * wv;
      }
      y[m * N + n] = sum;
    }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

// 16 stored weights -> 16 fp32 (fp16: vcvtph2ps; bf16: the 16 bits are the top half of an fp32), rounded to
// bf16 when the activations are bf16. Templated so that the inner loop has no dtype branches.
template <bool kFp16, bool kRoundBf16>
MINIMOE_AVX512 inline __m512 widen(__m256i half) {
  __m512 v = kFp16 ? _mm512_cvtph_ps(half) : _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
  if constexpr (kRoundBf16) {  // keep the rounded bf16 as an fp32: clear the low half
    const __m512i high_half = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
    v = _mm512_castsi512_ps(_mm512_and_si512(avx512::round_to_bf16_bits(v), high_half));
  }
  return v;
}

// R rows of W against one row of x: R independent accumulators (FMA latency), one x load shared by the R rows,
// full 16-wide steps unmasked and one masked tail. Then a fixed horizontal sum per accumulator.
template <int R, bool kFp16, bool kRoundBf16>
MINIMOE_AVX512 inline void dot_rows(const float* x, const uint16_t* w, int64_t K, float* out, int64_t out_stride,
                                    int64_t prefetch_ahead) {
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    if (prefetch_ahead > 0 && k % 32 == 0)  // one 64-byte line of each row, `prefetch_ahead` halves further on
      for (int r = 0; r < R; ++r) _mm_prefetch(reinterpret_cast<const char*>(w + r * K + k + prefetch_ahead), _MM_HINT_T0);
    const __m512 xv = _mm512_loadu_ps(x + k);
    for (int r = 0; r < R; ++r) {
      const __m256i half = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + r * K + k));
      acc[r] = _mm512_fmadd_ps(xv, widen<kFp16, kRoundBf16>(half), acc[r]);
    }
  }
  if (k < K) {
    const __mmask16 lanes = static_cast<__mmask16>((1u << (K - k)) - 1);
    const __m512 xv = _mm512_maskz_loadu_ps(lanes, x + k);
    for (int r = 0; r < R; ++r)
      acc[r] = _mm512_fmadd_ps(xv, widen<kFp16, kRoundBf16>(_mm256_maskz_loadu_epi16(lanes, w + r * K + k)), acc[r]);
  }
  for (int r = 0; r < R; ++r) out[r * out_stride] = _mm512_reduce_add_ps(acc[r]);
}

template <bool kFp16, bool kRoundBf16>
MINIMOE_AVX512 void rows_avx512_t(const float* x, const uint16_t* w, int64_t M, int64_t K, int64_t N, int64_t n0,
                                  int64_t n1, float* y) {
  // Software prefetch kPrefetchBytes ahead in the weights (the hardware prefetchers alone streamed the lm_head
  // at ~75% of read bandwidth; with this, at the read bandwidth), never past the end of W.
  const int64_t ahead = kPrefetchBytes / 2;
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4)
    for (int64_t m = 0; m < M; ++m)
      dot_rows<4, kFp16, kRoundBf16>(x + m * K, w + n * K, K, y + m * N + n, 1,
                                     m == 0 && (n + 4) * K + ahead <= N * K ? ahead : 0);
  for (; n < n1; ++n)
    for (int64_t m = 0; m < M; ++m) dot_rows<1, kFp16, kRoundBf16>(x + m * K, w + n * K, K, y + m * N + n, 1, 0);
}

MINIMOE_AVX512 void rows_avx512(const float* x, const uint16_t* w, bool fp16, bool round_bf16, int64_t M, int64_t K,
                                int64_t N, int64_t n0, int64_t n1, float* y) {
  if (fp16 && round_bf16) rows_avx512_t<true, true>(x, w, M, K, N, n0, n1, y);
  else if (fp16) rows_avx512_t<true, false>(x, w, M, K, N, n0, n1, y);
  else rows_avx512_t<false, false>(x, w, M, K, N, n0, n1, y);  // bf16 weights: already bf16, no rounding
}

// The AVX2 + FMA + F16C tier (Zen 1-3, Intel since Haswell: most laptops): the same loop 8 lanes wide. Without
// it, CPUs with no AVX-512 took the scalar loop: the fp16 lm_head of a mid-size model cost 27 ms a token, a third
// of the decode step (AMD EPYC, AVX2, 2 cores). No masked loads on AVX2: the last K % 8 weights of a row go
// through the scalar conversion, added after the vector sum, in a fixed order like everything else here.
#define MINIMOE_AVX2 __attribute__((target("avx2,fma,f16c")))

template <bool kFp16, bool kRoundBf16>
MINIMOE_AVX2 inline __m256 widen8(__m128i half) {
  __m256 v = kFp16 ? _mm256_cvtph_ps(half) : _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(half), 16));
  if constexpr (kRoundBf16) {  // round to nearest even at bit 16, as avx512::round_to_bf16_bits does
    const __m256i bits = _mm256_castps_si256(v);
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    const __m256i rounded = _mm256_add_epi32(bits, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7FFF)));
    v = _mm256_castsi256_ps(_mm256_and_si256(rounded, _mm256_set1_epi32(static_cast<int>(0xFFFF0000u))));
  }
  return v;
}

MINIMOE_AVX2 inline float sum8(__m256 v) {  // a fixed pairwise order: (0+4, 1+5, 2+6, 3+7), then halves
  const __m128 quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
  return _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)));
}

template <int R, bool kFp16, bool kRoundBf16>
MINIMOE_AVX2 inline void dot_rows8(const float* x, const uint16_t* w, int64_t K, float* out) {
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    const __m256 xv = _mm256_loadu_ps(x + k);
    for (int r = 0; r < R; ++r) {
      const __m128i half = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + r * K + k));
      acc[r] = _mm256_fmadd_ps(xv, widen8<kFp16, kRoundBf16>(half), acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    float sum = sum8(acc[r]);
    for (int64_t t = k; t < K; ++t) {
      float wv = stored_to_float(w + r * K, kFp16, t);
      if (kRoundBf16) wv = static_cast<float>(static_cast<at::BFloat16>(wv));
      sum += x[t] * wv;
    }
    out[r] = sum;
  }
}

template <bool kFp16, bool kRoundBf16>
MINIMOE_AVX2 void rows_avx2_t(const float* x, const uint16_t* w, int64_t M, int64_t K, int64_t N, int64_t n0,
                              int64_t n1, float* y) {
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4)
    for (int64_t m = 0; m < M; ++m) {
      float out[4];
      dot_rows8<4, kFp16, kRoundBf16>(x + m * K, w + n * K, K, out);
      for (int r = 0; r < 4; ++r) y[m * N + n + r] = out[r];
    }
  for (; n < n1; ++n)
    for (int64_t m = 0; m < M; ++m) dot_rows8<1, kFp16, kRoundBf16>(x + m * K, w + n * K, K, y + m * N + n);
}

MINIMOE_AVX2 void rows_avx2(const float* x, const uint16_t* w, bool fp16, bool round_bf16, int64_t M, int64_t K,
                            int64_t N, int64_t n0, int64_t n1, float* y) {
  if (fp16 && round_bf16) rows_avx2_t<true, true>(x, w, M, K, N, n0, n1, y);
  else if (fp16) rows_avx2_t<true, false>(x, w, M, K, N, n0, n1, y);
  else rows_avx2_t<false, false>(x, w, M, K, N, n0, n1, y);
}

#else

void rows_avx512(const float*, const uint16_t*, bool, bool, int64_t, int64_t, int64_t, int64_t, int64_t, float*) {}
void rows_avx2(const float*, const uint16_t*, bool, bool, int64_t, int64_t, int64_t, int64_t, int64_t, float*) {}

#endif

at::Tensor linear_stored_cpu(const at::Tensor& x_in, const at::Tensor& weight_in) {
  const char* op = "minimoe::linear_stored (CPU)";
  TORCH_CHECK(x_in.device().is_cpu() && weight_in.device().is_cpu(), op, ": x and weight must be CPU tensors, found ",
              x_in.device(), " and ", weight_in.device());
  TORCH_CHECK(x_in.dim() == 2, op, ": x must be 2-D [M, K], found shape ", as_text(x_in.sizes()));
  TORCH_CHECK(weight_in.dim() == 2, op, ": weight must be 2-D [N, K], found shape ", as_text(weight_in.sizes()));
  TORCH_CHECK(x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kBFloat16, op,
              ": x must be float32 or bfloat16, found ", x_in.scalar_type());
  TORCH_CHECK(weight_in.scalar_type() == at::kHalf || weight_in.scalar_type() == at::kBFloat16, op,
              ": weight must be float16 or bfloat16 (the stored dtype), found ", weight_in.scalar_type());
  TORCH_CHECK(x_in.size(1) == weight_in.size(1), op, ": x [M, K] and weight [N, K] must agree on K, found ",
              as_text(x_in.sizes()), " and ", as_text(weight_in.sizes()));
  const at::Tensor x = x_in.to(at::kFloat).contiguous(), weight = weight_in.contiguous();
  const int64_t M = x.size(0), K = x.size(1), N = weight.size(0);
  at::Tensor y = at::empty({M, N}, x.options());
  if (M > 0 && N > 0) {
    const bool fp16 = weight.scalar_type() == at::kHalf;
    const bool round_bf16 = x_in.scalar_type() == at::kBFloat16;  // W.to(bf16): round each stored weight
    const Isa isa = choose_isa(op);  // MINIMOE_CPU_ISA forces a tier, as for awq_gemm
    const float* px = x.data_ptr<float>();
    const uint16_t* pw = static_cast<const uint16_t*>(weight.data_ptr());
    float* py = y.data_ptr<float>();
    at::parallel_for(0, (N + kRowsPerItem - 1) / kRowsPerItem, 1, [&](int64_t first, int64_t last) {
      for (int64_t item = first; item < last; ++item) {
        const int64_t n0 = item * kRowsPerItem, n1 = std::min(N, n0 + kRowsPerItem);
        if (isa == Isa::kAvx512) rows_avx512(px, pw, fp16, round_bf16, M, K, N, n0, n1, py);
        else if (isa == Isa::kAvx2) rows_avx2(px, pw, fp16, round_bf16, M, K, N, n0, n1, py);
        else if (isa == Isa::kNeon) linear_rows_neon(px, pw, fp16, round_bf16, M, K, N, n0, n1, py);  // ARM64
        else rows_scalar(px, pw, fp16, round_bf16, M, K, N, n0, n1, py);
      }
    });
  }
  return x_in.scalar_type() == at::kFloat ? y : y.to(x_in.scalar_type());
}

}  // namespace
}  // namespace cpu

TORCH_LIBRARY_IMPL(minimoe, CPU, m) { m.impl("linear_stored", &cpu::linear_stored_cpu); }

}  // namespace minimoe
