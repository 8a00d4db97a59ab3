// awq_unpack.cpp - CPU kernel of minimoe::awq_unpack: packed int32 [R, N/8] -> codes uint8 [R, N].
//
// Not on any hot path: it exists so the tests can check the shared nibble helpers of csrc/dequant.h (which
// the GEMM kernels also use) against the pure-PyTorch spec, on every machine, GPU or not.
#include <torch/extension.h>
#include <torch/library.h>

#include "../awq_checks.h"
#include "../dequant.h"

namespace minimoe {

at::Tensor awq_unpack_cpu(const at::Tensor& packed) {
  TORCH_CHECK(packed.device().is_cpu(), "minimoe::awq_unpack (CPU): expected a CPU tensor, found one on ",
              packed.device());
  check_awq_unpack_argument(packed);  // ../awq_checks.h
  const at::Tensor words = packed.contiguous();
  const int64_t rows = words.size(0), cols = words.size(1);
  at::Tensor codes = at::empty({rows, cols * kAwqPackFactor}, words.options().dtype(at::kByte));
  const uint32_t* src = reinterpret_cast<const uint32_t*>(words.data_ptr<int32_t>());
  uint8_t* dst = codes.data_ptr<uint8_t>();
  at::parallel_for(0, rows * cols, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t w = begin; w < end; ++w) awq_unpack_word(src[w], dst + w * kAwqPackFactor);
  });
  return codes;
}

TORCH_LIBRARY_IMPL(minimoe, CPU, m) { m.impl("awq_unpack", &awq_unpack_cpu); }

}  // namespace minimoe
