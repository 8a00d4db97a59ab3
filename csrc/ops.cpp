// ops.cpp - the front door of minimoe's native extension.
//
// 1. Declares the op schemas in the torch dispatcher under the namespace `minimoe`. A schema is only a
//    signature; the kernels register themselves per device in their own files:
//       csrc/cpu/*.cpp   TORCH_LIBRARY_IMPL(minimoe, CPU, m)
//       csrc/cuda/*.cu   TORCH_LIBRARY_IMPL(minimoe, CUDA, m)
//    so `torch.ops.minimoe.awq_gemm(x, ...)` runs the CPU or the CUDA kernel depending on x.device.
//    Shape-only ("fake") implementations, which torch.compile uses to trace without running kernels,
//    are registered from Python in minimoe/ops.py (torch.library.register_fake).
// 2. Exposes `build_info()` to Python: what this binary was compiled with, which kernels exist, and which CPU
//    instruction-set tier they use on this machine.
#include <torch/extension.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "cpu/awq_gemm.h"

#ifndef MINIMOE_CUDA_ARCHS
#define MINIMOE_CUDA_ARCHS ""
#endif

TORCH_LIBRARY(minimoe, m) {
  // Unpack AWQ-packed int32 words [R, N/8] into codes [R, N] (uint8, natural channel order). Small, but it
  // runs the shared nibble helpers of dequant.h on both devices, so it proves the CPU and CUDA builds dispatch.
  m.def("awq_unpack(Tensor packed) -> Tensor");
  // y[M, N] = x[M, K] @ dequantize(qweight, qzeros, scales)   (x in fp32/fp16/bf16, fp32 accumulation)
  m.def("awq_gemm(Tensor x, Tensor qweight, Tensor qzeros, Tensor scales, int group_size) -> Tensor");
  // [awq_gemm(x[i], qweight[i], qzeros[i], scales[i], group_size[i]) for each i], in one call: the CPU kernel
  // runs the decode-sized products in one parallel region (a layer's q, k and v; both experts' w1 and w3).
  m.def("awq_gemm_many(Tensor[] x, Tensor[] qweight, Tensor[] qzeros, Tensor[] scales, int[] group_size) -> Tensor[]");
  // y[M, N] = x[M, K] @ weight.to(x.dtype)^T with weight [N, K] kept in its stored fp16/bf16 (CPU: the lm_head)
  m.def("linear_stored(Tensor x, Tensor weight) -> Tensor");
  // The fused small ops of a CPU decode step (csrc/cpu/rmsnorm_attention.cpp; the spec is the PyTorch code in model.py):
  // y = weight * x / rms(x) over the last dimension (RMSNorm, statistics in fp32)
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  // One new token per row: RoPE on q and k, k and v written into slot `slot` of the caches, then attention of
  // every query head over slots 0..slot where mask [B, slot + 1] allows. q [B, H, D], k/v [B, Hkv, D],
  // cos/sin [B, D], caches [B, Hkv, slots, D] -> [B, H, D]
  m.def("decode_attention(Tensor q, Tensor k, Tensor v, Tensor cos, Tensor sin, Tensor(a!) key_cache, "
        "Tensor(b!) value_cache, int slot, Tensor mask, float scale) -> Tensor");
  // One decoder layer's decode step (csrc/cpu/decode_layer.cpp): the torch and minimoe ops of DecoderLayer.forward
  // for x [B, 1, C], called from C++. norms: the 2 RMSNorm weights; attention: the linears q, k, v, o; ffn: each
  // expert's w1, w3, w2 (router given) or gate, up, down (router None). Each linear is (qweight, qzeros, scales)
  // with a group size (awq) or one plain weight [N, K] (no group sizes).
  // -> (out [B, 1, C], router logits, chosen experts, their weights; the last three None without a router)
  m.def("decode_layer(Tensor x, Tensor cos, Tensor sin, Tensor mask, Tensor(a!) key_cache, Tensor(b!) value_cache, "
        "int slot, Tensor[] norms, Tensor[] attention, int[] attention_groups, Tensor? router, Tensor[] ffn, "
        "int[] ffn_groups, bool awq, int heads, int kv_heads, int top_k, float scale, float eps) "
        "-> (Tensor, Tensor?, Tensor?, Tensor?)");
}

namespace {

// Which devices have a kernel for `minimoe::<name>` in this binary. Asked of the dispatcher itself, so it
// cannot disagree with what a call would do.
std::vector<std::string> devices_with_kernel(const std::string& name) {
  std::vector<std::string> devices;
  auto handle = c10::Dispatcher::singleton().findSchema({"minimoe::" + name, ""});
  if (!handle) return devices;
  if (handle->hasKernelForDispatchKey(c10::DispatchKey::CPU)) devices.push_back("cpu");
  if (handle->hasKernelForDispatchKey(c10::DispatchKey::CUDA)) devices.push_back("cuda");
  return devices;
}

pybind11::dict build_info() {
  pybind11::dict info;
#ifdef MINIMOE_WITH_CUDA
  info["cuda_compiled"] = true;
#else
  info["cuda_compiled"] = false;
#endif
  info["cuda_archs"] = std::string(MINIMOE_CUDA_ARCHS);
  info["compiled_with_torch"] = std::string(TORCH_VERSION);
  pybind11::dict kernels;
  for (const char* op : {"awq_unpack", "awq_gemm", "awq_gemm_many", "linear_stored", "rms_norm", "decode_attention",
                         "decode_layer"})
    kernels[op] = devices_with_kernel(op);
  info["kernels"] = kernels;
  // The CPU kernels' instruction-set tier on this machine (the automatic choice; MINIMOE_CPU_ISA overrides it
  // per call), and whether the bf16 prefill runs on AMX.
  info["cpu_isa"] = std::string(minimoe::cpu::default_isa_name());
  info["cpu_amx"] = minimoe::cpu::amx_available();
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "minimoe native kernels (ops are reached through torch.ops.minimoe.*)";
  m.def("build_info", &build_info, "What this extension was compiled with and which kernels it registered.");
}
