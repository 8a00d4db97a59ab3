// prefill_fp32.cpp - PLACEHOLDER being replaced by the AVX-512 fp32 prefill kernel (work in progress).
#include "awq_gemm.h"
namespace minimoe {
namespace cpu {
bool prefill_fp32_avx512(const AwqGemmArgs&, float*) { return false; }
}  // namespace cpu
}  // namespace minimoe
