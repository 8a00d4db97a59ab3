// prefill_amx.cpp - PLACEHOLDER being replaced by the AMX bf16 prefill kernel (work in progress).
#include "awq_gemm.h"
namespace minimoe {
namespace cpu {
bool prefill_bf16_amx(const AwqGemmArgs&, const uint16_t*, uint16_t*) { return false; }
}  // namespace cpu
}  // namespace minimoe
