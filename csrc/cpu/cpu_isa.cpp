// cpu_isa.cpp - which instruction-set tier the CPU ops run (awq_gemm, awq_gemm_many, linear_stored).
//
// "auto" (the default) is the best tier this CPU has: AVX-512 (awq_gemm_avx512.cpp and the prefill kernels),
// else AVX2 + FMA + F16C (awq_gemm_avx2.cpp, prefill_fp32_avx2.cpp), else, on ARM64, NEON (awq_gemm_neon.cpp),
// else the portable scalar loops. MINIMOE_CPU_ISA=avx512|avx2|neon|scalar (read on every call) forces one, so the
// tests run every x86 tier on an AVX-512 machine; forcing one this CPU cannot run is an error, never a silent
// fallback. build_info() reports default_isa_name().
#include <torch/extension.h>

#include <cstdlib>
#include <string>

#include "awq_gemm_driver.h"

namespace minimoe {
namespace cpu {
namespace {

Isa auto_isa() {
  if (avx512_available()) return Isa::kAvx512;
  if (avx2_available()) return Isa::kAvx2;
  return neon_available() ? Isa::kNeon : Isa::kScalar;
}

}  // namespace

Isa choose_isa(const char* op) {
  const char* env = std::getenv("MINIMOE_CPU_ISA");
  const std::string wish = env ? env : "";
  if (wish == "scalar") return Isa::kScalar;
  if (wish == "avx512") {
    TORCH_CHECK(avx512_available(), op, ": MINIMOE_CPU_ISA=avx512 but this CPU (or this build) has no AVX-512");
    return Isa::kAvx512;
  }
  if (wish == "avx2") {
    TORCH_CHECK(avx2_available(), op, ": MINIMOE_CPU_ISA=avx2 but this CPU (or this build) has no AVX2/FMA/F16C");
    return Isa::kAvx2;
  }
  if (wish == "neon") {
    TORCH_CHECK(neon_available(), op, ": MINIMOE_CPU_ISA=neon but this is not an ARM64 (AArch64) build");
    return Isa::kNeon;
  }
  TORCH_CHECK(wish.empty() || wish == "auto", op,
              ": MINIMOE_CPU_ISA must be auto, avx512, avx2, neon or scalar, found '", wish, "'");
  return auto_isa();
}

const char* default_isa_name() {
  switch (auto_isa()) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    case Isa::kNeon: return "neon";
    default: return "scalar";
  }
}

Isa kernels_for(Isa isa, const at::Tensor& scales) {
  return scales.scalar_type() == at::kHalf ? isa : Isa::kScalar;
}

}  // namespace cpu
}  // namespace minimoe
