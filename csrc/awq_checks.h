// awq_checks.h - the argument contracts of minimoe::awq_gemm and minimoe::awq_unpack, written once for the CPU
// and the CUDA kernels.
//
// Each kernel first checks where its tensors live (its own device rule), then calls check_awq_gemm_arguments,
// so both refuse the same inputs with the same words (tests/test_kernels.py runs one list of bad calls on
// every device). Numbers and shapes go through as_text (check_text.h says why).
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <utility>

#include "check_text.h"

namespace minimoe {

// Shapes, dtypes and group size of y = x @ dequantize(qweight, qzeros, scales); `op` names the caller in the
// message ("minimoe::awq_gemm (CPU)", "... (CUDA)", "..., product 3").
inline void check_awq_gemm_arguments(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& qzeros,
                                     const at::Tensor& scales, int64_t group_size, const std::string& op) {
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"x", x}, {"qweight", qweight},
                                {"qzeros", qzeros}, {"scales", scales}}) {
    TORCH_CHECK(t.dim() == 2, op, ": ", name, " must be 2-D, found ", as_text(t.dim()), "-D with shape ",
                as_text(t.sizes()));
  }
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf,
              op, ": x must be float32, bfloat16 or float16, found ", x.scalar_type());
  TORCH_CHECK(qweight.scalar_type() == at::kInt, op, ": qweight must be int32 (8 packed 4-bit codes), found ",
              qweight.scalar_type());
  TORCH_CHECK(qzeros.scalar_type() == at::kInt, op, ": qzeros must be int32 (8 packed 4-bit zeros), found ",
              qzeros.scalar_type());
  TORCH_CHECK(scales.scalar_type() == at::kHalf || scales.scalar_type() == at::kBFloat16 ||
                  scales.scalar_type() == at::kFloat,
              op, ": scales must be float16 (or bfloat16/float32), found ", scales.scalar_type());
  TORCH_CHECK(group_size > 0, op, ": group_size must be positive, found ", as_text(group_size));
  const int64_t K = qweight.size(0), words = qweight.size(1), N = 8 * words;
  TORCH_CHECK(K > 0 && words > 0, op, ": qweight must be [K, N/8] with K >= 1 and N/8 >= 1, found shape ",
              as_text(qweight.sizes()));
  TORCH_CHECK(x.size(1) == K, op, ": x must be [M, K] with K = qweight.size(0) = ", as_text(K), ", found shape ",
              as_text(x.sizes()));
  TORCH_CHECK(K % group_size == 0, op, ": group_size ", as_text(group_size), " must divide K = ", as_text(K),
              ", found remainder ", as_text(K % group_size));
  const int64_t groups = K / group_size;
  TORCH_CHECK(scales.size(0) == groups && scales.size(1) == N, op, ": scales must be [K/G, N] = [", as_text(groups),
              ", ", as_text(N), "] (N = 8 * qweight.size(1), so N % 8 == 0), found shape ", as_text(scales.sizes()));
  TORCH_CHECK(qzeros.size(0) == groups && qzeros.size(1) == words, op, ": qzeros must be [K/G, N/8] = [",
              as_text(groups), ", ", as_text(words), "], found shape ", as_text(qzeros.sizes()));
}

// The packed words of minimoe::awq_unpack: int32 [R, N/8].
inline void check_awq_unpack_argument(const at::Tensor& packed) {
  TORCH_CHECK(packed.scalar_type() == at::kInt, "minimoe::awq_unpack: packed must be int32, found ",
              packed.scalar_type());
  TORCH_CHECK(packed.dim() == 2, "minimoe::awq_unpack: packed must be 2-D [R, N/8], found ", as_text(packed.dim()),
              "-D with shape ", as_text(packed.sizes()));
}

}  // namespace minimoe
