// awq_unpack.cu - CUDA kernel of minimoe::awq_unpack: packed int32 [R, N/8] -> codes uint8 [R, N].
//
// One thread per packed word, using the very helper (csrc/dequant.h) that the CPU build runs in the tests.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>
#include <torch/library.h>

#include "../awq_checks.h"
#include "../dequant.h"

namespace minimoe {

__global__ void awq_unpack_kernel(const uint32_t* __restrict__ src, uint8_t* __restrict__ dst, int64_t words) {
  const int64_t w = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (w < words) awq_unpack_word(src[w], dst + w * kAwqPackFactor);
}

at::Tensor awq_unpack_cuda(const at::Tensor& packed) {
  TORCH_CHECK(packed.is_cuda(), "minimoe::awq_unpack (CUDA): expected a CUDA tensor, found one on ",
              packed.device());
  check_awq_unpack_argument(packed);  // ../awq_checks.h
  const c10::cuda::CUDAGuard guard(packed.device());
  const at::Tensor words = packed.contiguous();
  at::Tensor codes = at::empty({words.size(0), words.size(1) * kAwqPackFactor}, words.options().dtype(at::kByte));
  const int64_t n = words.numel();
  if (n == 0) return codes;
  const int threads = 256;
  const int64_t blocks = (n + threads - 1) / threads;
  awq_unpack_kernel<<<static_cast<unsigned>(blocks), threads, 0, at::cuda::getCurrentCUDAStream()>>>(
      reinterpret_cast<const uint32_t*>(words.data_ptr<int32_t>()), codes.data_ptr<uint8_t>(), n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return codes;
}

TORCH_LIBRARY_IMPL(minimoe, CUDA, m) { m.impl("awq_unpack", &awq_unpack_cuda); }

}  // namespace minimoe
