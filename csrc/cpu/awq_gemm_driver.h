// awq_gemm_driver.h - what the files of the CPU awq_gemm driver share. Torch-aware, unlike awq_gemm.h (the
// torch-free contract of the per-ISA kernels). The driver, file by file:
//   awq_gemm.cpp         the two ops: argument checks, decode or prefill, the prefill paths, registration
//   awq_decode_plan.cpp  decode: one or several products cut into work items for the threads, run, summed
//   awq_gemm_scalar.cpp  the portable scalar kernels (any CPU, any scale dtype): also a second implementation
//   cpu_isa.cpp          which instruction-set tier runs (cpuid, MINIMOE_CPU_ISA)
#pragma once

#include <torch/extension.h>

#include <vector>

#include "awq_gemm.h"

namespace minimoe {
namespace cpu {

// The kernels a call runs: its tier, or the scalar ones when the scales are not fp16 (every vector kernel reads
// fp16 scales, the checkpoints' dtype; bf16/fp32 scales are accepted and computed by the scalar kernels).
Isa kernels_for(Isa isa, const at::Tensor& scales);

// ---- awq_gemm_scalar.cpp: natural channel order, the textbook formula -----------------------------------
// Same contract as decode_avx512 in awq_gemm.h, any scale dtype.
void decode_scalar(const AwqGemmArgs& a, at::ScalarType scale_dtype, int64_t word_begin, int64_t word_end,
                   int64_t group_begin, int64_t group_end, float* y);
// Same tile as dequant_tile_avx512 (blocks of 128 columns in packed order, padding lanes 0), fp32 or bf16.
void dequant_tile_scalar(const AwqGemmArgs& a, at::ScalarType scale_dtype, int64_t word_begin, int64_t word_end,
                         float* tile);
void dequant_tile_scalar(const AwqGemmArgs& a, at::ScalarType scale_dtype, int64_t word_begin, int64_t word_end,
                         at::BFloat16* tile);

// ---- awq_decode_plan.cpp: the decode path's work split ---------------------------------------------------
// One product y = x @ W^T on the decode path, planned: x in fp32 with its per-group sums, K cut into chunks
// of whole groups (a function of the shape only), columns into spans (may follow the thread count: they
// change no bit). Holds raw pointers into its tensors: they must outlive run_decode.
struct DecodeJob {
  at::Tensor y, xf, xsum, partial;  // output, x in fp32, its per-group sums, per-chunk partial sums (or y)
  AwqGemmArgs args;
  at::ScalarType out_dtype, scale_dtype;
  Isa isa;  // the kernels: kernels_for(the tier, scales)
  int64_t chunks, groups_per_chunk, spans, span_words;
  bool direct;  // fp32 output from a single chunk: the kernel writes y itself
};

DecodeJob plan_decode(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& qzeros,
                      const at::Tensor& scales, int64_t G, at::Tensor y, Isa isa);
// Runs every item of every job in one parallel region, then adds each job's partials in chunk order.
void run_decode(std::vector<DecodeJob>& jobs);

}  // namespace cpu
}  // namespace minimoe
