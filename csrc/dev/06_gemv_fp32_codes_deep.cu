// 06_gemv_fp32_codes_deep (a configuration of stage 05, registry.json): 05 with 8 rows of loads in flight per
// thread instead of 4: more bytes in flight per SM, for the case where 05 is still waiting on memory latency
// rather than on arithmetic.
#include "variant.h"
#include "gemv_fp32_codes.cuh"

MINIMOE_GEMV_FP32_CODES_VARIANT("06_gemv_fp32_codes_deep", 8)
