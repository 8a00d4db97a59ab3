// Assignment 4's reference int4 GEMV: y[m, n] = sum_k x[m, k] * (q[k, n] - z[k / G, n]) * s[k / G, n].
//
// The AWQ int4 product written exactly as the format's formula reads (minimoe/awq.py is the spec), with no trick
// at all: for every output, walk all K inputs, pull the code out of its word (AWQ's nibble order), the zero point
// out of its word, the fp16 scale, and accumulate in fp32. Correct and slow: the inner loop strides through
// qweight by N/8 words, so every step touches a new cache line, and each code is unpacked M times. The student's
// skeleton (assignments/a4_awq_format/skeleton/int4_gemv.cpp) is generated from this file with the task region
// removed; csrc/dev/cpu/ is the ladder of stages that make it fast, one idea at a time.
//
// Built on its own by torch.utils.cpp_extension.load(..., is_python_module=False): it registers the op
// torch.ops.minimoe_a4.int4_gemv and needs only ATen, no Python headers.

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdint>

namespace {

// Channel 8c + j of a word lives in nibble REVERSE[j] (minimoe/awq.py draws the word).
constexpr int kReverse[8] = {0, 4, 1, 5, 2, 6, 3, 7};

at::Tensor int4_gemv(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& qzeros,
                     const at::Tensor& scales, int64_t group_size) {
  // Every argument checked before any memory is read (these are given, not part of the task).
  TORCH_CHECK(x.device().is_cpu() && qweight.device().is_cpu() && qzeros.device().is_cpu() &&
                  scales.device().is_cpu(),
              "int4_gemv: every tensor must be on the CPU");
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.dim() == 2 && x.is_contiguous(),
              "int4_gemv: x must be a contiguous float32 (M, K) tensor, found ", x.scalar_type(), " ", x.sizes());
  TORCH_CHECK(qweight.scalar_type() == at::kInt && qweight.dim() == 2 && qweight.is_contiguous(),
              "int4_gemv: qweight must be a contiguous int32 (K, N/8) tensor, found ", qweight.scalar_type(), " ",
              qweight.sizes());
  const int64_t M = x.size(0), K = x.size(1), words = qweight.size(1), N = words * 8;
  TORCH_CHECK(qweight.size(0) == K, "int4_gemv: qweight has ", qweight.size(0), " rows, x has K = ", K);
  TORCH_CHECK(group_size > 0 && K % group_size == 0, "int4_gemv: group_size ", group_size, " must divide K = ", K);
  const int64_t groups = K / group_size;
  TORCH_CHECK(qzeros.scalar_type() == at::kInt && qzeros.is_contiguous() && qzeros.dim() == 2 &&
                  qzeros.size(0) == groups && qzeros.size(1) == words,
              "int4_gemv: qzeros must be a contiguous int32 (", groups, ", ", words, ") tensor, found ",
              qzeros.scalar_type(), " ", qzeros.sizes());
  TORCH_CHECK(scales.scalar_type() == at::kHalf && scales.is_contiguous() && scales.dim() == 2 &&
                  scales.size(0) == groups && scales.size(1) == N,
              "int4_gemv: scales must be a contiguous float16 (", groups, ", ", N, ") tensor, found ",
              scales.scalar_type(), " ", scales.sizes());
  at::Tensor y = at::empty({M, N}, x.options());

  // [task 4.3]
  TORCH_CHECK(false, "NotImplementedError: task 4.3 (an int4 GEMV in C++, checked against the spec) is not written yet");
  // [/task 4.3]
  return y;
}

}  // namespace

TORCH_LIBRARY(minimoe_a4, m) {
  m.def("int4_gemv(Tensor x, Tensor qweight, Tensor qzeros, Tensor scales, int group_size) -> Tensor");
}

TORCH_LIBRARY_IMPL(minimoe_a4, CPU, m) { m.impl("int4_gemv", int4_gemv); }
