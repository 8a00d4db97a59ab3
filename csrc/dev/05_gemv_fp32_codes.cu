// 05_gemv_fp32_codes: 03 at M = 1 with codes turned into fp32 integers directly and the zero point and scale
// applied once per group instead of once per weight (csrc/dev/gemv_fp32_codes.cuh says how and why).
// 4 rows of loads in flight per thread, as 03.
#include "variant.h"
#include "gemv_fp32_codes.cuh"

MINIMOE_GEMV_FP32_CODES_VARIANT("05_gemv_fp32_codes", 4)
