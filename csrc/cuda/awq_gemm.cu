// awq_gemm.cu - the CUDA kernel of minimoe::awq_gemm: y[M, N] = x[M, K] @ dequantize(qweight, qzeros, scales).
//
// This file is only the op: argument checks, the dispatch rule (awq_plan.h), workspace and stream. The kernels
// live in headers without torch so that csrc/dev/ experiments can include them and compile in seconds:
//   awq_gemv.cuh       decode, M <= 8: 16-byte loads, magic-number dequant, split-K + reduction
//   awq_mma_gemm.cuh   prefill, M > 8: dequantize tiles to shared memory, mma.sync m16n8k16, cp.async
//   awq_simple.cuh     everything else (fp32 activations, odd alignment): one thread per 8 outputs
//
// Besides awq_gemm this registers `awq_gemm_cuda_kernel(..., str kernel)`, the same op with the kernel named
// ("auto", "gemv", "mma", "simple"): the tests use it to run every kernel on every shape, the benchmark to
// measure the crossover that sets the dispatch threshold. It exists only for CUDA tensors.
// ATen + the op registry only (not torch/extension.h, which drags in Python and the C++ frontend: minutes of
// compile time per architecture on a small machine).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <climits>
#include <string>

#include "../awq_checks.h"
#include "../check_text.h"
#include "awq_gemv.cuh"
#include "awq_mma_gemm.cuh"
#include "awq_plan.h"
#include "awq_simple.cuh"

namespace minimoe {
namespace {

// The torch dtype -> CUDA type mapping the kernels are instantiated for.
template <typename Fn>
void with_float_type(at::ScalarType t, Fn&& fn) {
  switch (t) {
    case at::kHalf: fn(__half{}); break;
    case at::kBFloat16: fn(__nv_bfloat16{}); break;
    case at::kFloat: fn(float{}); break;
    default: TORCH_CHECK(false, "minimoe::awq_gemm (CUDA): unsupported float dtype ", t);
  }
}

bool aligned16(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

AwqKernel parse_kernel(const std::string& name, bool* is_auto) {
  *is_auto = name == "auto";
  if (name == "auto" || name == "gemv") return AwqKernel::kGemv;
  if (name == "mma") return AwqKernel::kMmaGemm;
  if (name == "simple") return AwqKernel::kSimple;
  TORCH_CHECK(false, "minimoe::awq_gemm_cuda_kernel: kernel must be one of auto, gemv, mma, simple; found '", name,
              "'");
  return AwqKernel::kSimple;
}

template <typename T, typename S>
void run_gemv(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& qzeros, const at::Tensor& scales,
              at::Tensor& y, int M, int K, int N, int G, cudaStream_t stream) {
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const auto* xp = reinterpret_cast<const T*>(x.data_ptr());
  auto* yp = reinterpret_cast<T*>(y.data_ptr());
  const auto* qw = reinterpret_cast<const uint32_t*>(qweight.data_ptr<int32_t>());
  const auto* qz = reinterpret_cast<const uint32_t*>(qzeros.data_ptr<int32_t>());
  const auto* sp = reinterpret_cast<const S*>(scales.data_ptr());
  // Rows beyond 8 (a forced "gemv" or an odd-shaped prefill) go in chunks of 8, each re-reading the weights.
  const int rows0 = M < kGemvMaxRows ? M : kGemvMaxRows;
  const size_t ws = awq_gemv_workspace_elems(rows0, K, N, G, sms);
  at::Tensor workspace = at::empty({static_cast<int64_t>(ws > 0 ? ws : 1)}, x.options().dtype(at::kFloat));
  for (int m = 0; m < M; m += kGemvMaxRows) {
    const int rows = M - m < kGemvMaxRows ? M - m : kGemvMaxRows;
    if (awq_gemv_workspace_elems(rows, K, N, G, sms) > static_cast<size_t>(workspace.numel()))
      workspace = at::empty({static_cast<int64_t>(awq_gemv_workspace_elems(rows, K, N, G, sms))},
                            x.options().dtype(at::kFloat));
    awq_gemv_launch<T, S>(xp + static_cast<size_t>(m) * K, qw, qz, sp, yp + static_cast<size_t>(m) * N,
                          workspace.data_ptr<float>(), rows, K, N, G, sms, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

at::Tensor awq_gemm_cuda_impl(const at::Tensor& x_in, const at::Tensor& qweight_in, const at::Tensor& qzeros_in,
                              const at::Tensor& scales_in, int64_t group_size, const std::string& kernel_name) {
  const std::string op = "minimoe::awq_gemm (CUDA)";
  TORCH_CHECK(x_in.is_cuda(), op, ": x must be a CUDA tensor, found one on ", x_in.device());
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"qweight", qweight_in},
                                {"qzeros", qzeros_in},
                                {"scales", scales_in}}) {
    TORCH_CHECK(t.device() == x_in.device(), op, ": ", name, " must be on x's device ", x_in.device(),
                ", found ", t.device());
  }
  check_awq_gemm_arguments(x_in, qweight_in, qzeros_in, scales_in, group_size, op);  // the CPU's contract too
  const at::ScalarType xt = x_in.scalar_type(), st = scales_in.scalar_type();
  const int64_t M64 = x_in.size(0), K64 = qweight_in.size(0), N64 = scales_in.size(1);
  // The kernels index with int (and size_t products): every extent must fit.
  TORCH_CHECK(M64 <= INT_MAX && K64 <= INT_MAX && N64 <= INT_MAX, op, ": sizes must fit in int32, found M=",
              as_text(M64), " K=", as_text(K64), " N=", as_text(N64));

  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), qweight = qweight_in.contiguous(), qzeros = qzeros_in.contiguous(),
                   scales = scales_in.contiguous();
  at::Tensor y = at::empty({M64, N64}, x.options());
  if (M64 == 0) return y;
  const int M = static_cast<int>(M64), K = static_cast<int>(K64), N = static_cast<int>(N64),
            G = static_cast<int>(group_size);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  const bool fast_types = (xt == at::kHalf && st == at::kHalf) ||
                          (xt == at::kBFloat16 && (st == at::kBFloat16 || st == at::kHalf));
  const bool aligned = aligned16(x) && aligned16(qweight) && aligned16(qzeros) && aligned16(scales) &&
                       aligned16(y);
  bool is_auto = false;
  AwqKernel kernel = parse_kernel(kernel_name, &is_auto);
  if (is_auto) {
    kernel = awq_choose_kernel(M, K, N, G, fast_types, aligned);
  } else if (kernel != AwqKernel::kSimple) {
    TORCH_CHECK(fast_types && aligned, op, ": kernel '", kernel_name, "' needs fp16 x with fp16 scales or bf16 x ",
                "with bf16/fp16 scales, 16-byte aligned; found x ", xt, ", scales ", st);
    TORCH_CHECK(kernel != AwqKernel::kMmaGemm || awq_mma_shape_ok(K, N, G), op,
                ": kernel 'mma' needs group_size % 32 == 0 and N % 32 == 0, found G=", as_text(G), " N=", as_text(N));
  }

  const auto* qw = reinterpret_cast<const uint32_t*>(qweight.data_ptr<int32_t>());
  const auto* qz = reinterpret_cast<const uint32_t*>(qzeros.data_ptr<int32_t>());
  with_float_type(xt, [&](auto x_tag) {
    using T = decltype(x_tag);
    with_float_type(st, [&](auto s_tag) {
      using S = decltype(s_tag);
      if (kernel == AwqKernel::kSimple) {
        awq_simple_launch<T, S>(reinterpret_cast<const T*>(x.data_ptr()), qw, qz,
                                reinterpret_cast<const S*>(scales.data_ptr()), reinterpret_cast<T*>(y.data_ptr()),
                                M, K, N, G, stream);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        return;
      }
      // Only the fast type pairs reach here (checked above); the constexpr filter keeps the other pairs from
      // being instantiated at all.
      if constexpr (!std::is_same_v<T, float> && !std::is_same_v<S, float> &&
                    !(std::is_same_v<T, __half> && std::is_same_v<S, __nv_bfloat16>)) {
        if (kernel == AwqKernel::kGemv) {
          run_gemv<T, S>(x, qweight, qzeros, scales, y, M, K, N, G, stream);
        } else {
          awq_mma_gemm_launch<T, S>(reinterpret_cast<const T*>(x.data_ptr()), qw, qz,
                                    reinterpret_cast<const S*>(scales.data_ptr()),
                                    reinterpret_cast<T*>(y.data_ptr()), M, K, N, G, stream);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      }
    });
  });
  return y;
}

at::Tensor awq_gemm_cuda(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& qzeros,
                         const at::Tensor& scales, int64_t group_size) {
  return awq_gemm_cuda_impl(x, qweight, qzeros, scales, group_size, "auto");
}

at::Tensor awq_gemm_cuda_kernel(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& qzeros,
                                const at::Tensor& scales, int64_t group_size, c10::string_view kernel) {
  return awq_gemm_cuda_impl(x, qweight, qzeros, scales, group_size, std::string(kernel.data(), kernel.size()));
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(minimoe, m) {
  // awq_gemm with the CUDA kernel chosen by name: "auto" (the dispatch rule), "gemv", "mma" or "simple".
  m.def("awq_gemm_cuda_kernel(Tensor x, Tensor qweight, Tensor qzeros, Tensor scales, int group_size, "
        "str kernel) -> Tensor");
}

TORCH_LIBRARY_IMPL(minimoe, CUDA, m) {
  m.impl("awq_gemm", &awq_gemm_cuda);
  m.impl("awq_gemm_cuda_kernel", &awq_gemm_cuda_kernel);
}

}  // namespace minimoe
