// awq_plan.h - which CUDA kernel runs minimoe::awq_gemm for a shape, and how it is cut into blocks.
//
// Plain C++ (no CUDA, no torch) on purpose: the op (awq_gemm.cu), the experiment variants (csrc/dev/) and the
// host tests (tests/test_dequant_host.py) all include this one file, so the rule the docs describe is the rule
// the code runs, and it is tested on machines without a GPU.
//
// The three kernels (docs/kernels-cuda.md explains each):
//   kGemv     decode: M <= 8 rows. Memory-bound: every weight byte is read once and used by M rows only, so
//             the time is weight bytes / bandwidth. 16-byte loads, split over K across blocks, fp32 partials
//             reduced by a second tiny kernel.
//   kMmaGemm  prefill: M > 8 rows. Compute-bound once M is large: tiles of W are dequantized to fp16/bf16 in
//             shared memory and fed to tensor cores (mma.sync m16n8k16). Needs G % 32 == 0 and N % 32 == 0.
//   kSimple   any shape and dtype (fp32 activations, unaligned pointers, mixed scale dtypes): one thread per
//             8 outputs, fp32 throughout. Slow, obviously correct, the fallback of last resort.
//
// Why the threshold is M = 8 (to be re-measured: scripts/gpu_check.sh sweeps M with both kernels forced):
// the GEMV keeps M_TILE x 8 x WORDS fp32 accumulators per thread, so beyond 8 rows it must re-read the weights
// once per 8 rows; the tensor-core kernel reads them once per 128 rows but wastes (128 - M)/128 of its mma work
// and launches only ceil(N / 128) blocks when M <= 128. Published kernels cross over around batch 4..16 for
// the plain AWQ GEMM kernel (docs/facts.md#kernel-strategies); 8 is where our GEMV's register budget ends.
#pragma once

#include <cstdint>

namespace minimoe {

enum class AwqKernel : int { kSimple = 0, kGemv = 1, kMmaGemm = 2 };

constexpr int kGemvMaxRows = 8;      // rows of x one GEMV launch handles; more rows -> more launches
constexpr int kGemvLanes = 32;       // threads of a block along N (one warp: 32 consecutive 16-byte loads)
constexpr int kGemvWarps = 8;        // warps of a block, each taking every 8th row of K within a group
constexpr int kGemvBlocksPerSm = 2;  // split-K aims for this many resident blocks per SM (register-limited)

constexpr int kMmaBlockM = 128, kMmaBlockN = 128, kMmaBlockK = 32;  // tensor-core kernel tile

// GEMV: how many rows of x one launch covers (1, 2, 4 or 8; the kernel masks rows >= M) and how many packed
// words (8 channels each) one thread loads per row of K: 4 words = one 16-byte load. Accumulators per thread
// are m_tile * 8 * words fp32 registers; we cap them at 64 by narrowing the load as m_tile grows. A words
// value that does not divide W = N / 8 falls back to 1 word (4-byte loads) with 8 rows.
struct GemvConfig {
  int m_tile;
  int words;
};

inline GemvConfig awq_gemv_config(int rows, int W) {
  GemvConfig c{8, 1};
  if (rows <= 1) c = {1, 4};
  else if (rows <= 2) c = {2, 4};
  else if (rows <= 4) c = {4, 2};
  if (W % c.words != 0) c = {8, 1};
  return c;
}

// GEMV blocks along N: each covers kGemvLanes threads x words x 8 channels.
inline int awq_gemv_blocks_n(int W, int words) {
  const int threads_n = W / words;
  return (threads_n + kGemvLanes - 1) / kGemvLanes;
}

// GEMV split over K, in whole groups (a block loads each group's scales and zeros once). Enough splits to put
// kGemvBlocksPerSm blocks on every SM, no more: each split adds M x N fp32 partials to write and re-read.
// Returns groups_per_split; the number of splits is ceil(groups / groups_per_split).
inline int awq_gemv_groups_per_split(int blocks_n, int groups, int sms) {
  const int target_blocks = kGemvBlocksPerSm * (sms > 0 ? sms : 1);
  int splits = (target_blocks + blocks_n - 1) / blocks_n;
  if (splits < 1) splits = 1;
  if (splits > groups) splits = groups;
  return (groups + splits - 1) / splits;
}

inline int awq_gemv_splits(int groups, int groups_per_split) {
  return (groups + groups_per_split - 1) / groups_per_split;
}

// The tensor-core kernel's shape requirements: a K tile never straddles a group (G % 32 == 0, hence K % 32 ==
// 0), and qweight / scales / zeros tiles are whole 16-byte chunks (N % 32 == 0).
inline bool awq_mma_shape_ok(int K, int N, int G) {
  return G % kMmaBlockK == 0 && K % kMmaBlockK == 0 && N % 32 == 0;
}

// The dispatch rule. fast_types: x is fp16 with fp16 scales, or bf16 with bf16 or fp16 scales.
// aligned: every pointer is 16-byte aligned (fresh or contiguous whole tensors are).
inline AwqKernel awq_choose_kernel(int M, int K, int N, int G, bool fast_types, bool aligned) {
  if (!fast_types || !aligned) return AwqKernel::kSimple;
  if (M <= kGemvMaxRows) return AwqKernel::kGemv;
  if (awq_mma_shape_ok(K, N, G)) return AwqKernel::kMmaGemm;
  return AwqKernel::kGemv;  // odd G or N: GEMV in chunks of 8 rows still beats the simple kernel
}

}  // namespace minimoe
