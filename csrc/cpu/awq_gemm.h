// awq_gemm.h - the contract between the CPU AWQ GEMM driver (awq_gemm.cpp) and its per-ISA kernels.
//
// Plain C++ on purpose: no torch headers, so a per-ISA file (awq_gemm_avx512.cpp) compiles in seconds and a
// reader sees exactly what a kernel gets: raw pointers and sizes, nothing else.
//
// Two kinds of kernel work on a range of packed qweight columns ("words", 8 output channels each):
//   decode  (small M): stream the int4 words once and multiply-accumulate straight from the nibbles;
//   tile    (large M): dequantize a [K, columns] slice of W^T into a small fp32/bf16 buffer that a BLAS GEMM
//                      then multiplies, so the unpacking is paid once for all M rows.
// Both work on fixed blocks of 16 words = 128 channels, which is one AVX-512 register of words.
#pragma once

#include <cstdint>

namespace minimoe {
namespace cpu {

// One block = 16 packed words = 128 output channels. The tile layout and the decode tiling are built on it,
// and every thread boundary falls on a block boundary, so results cannot depend on the thread count.
constexpr int64_t kBlockWords = 16;
constexpr int64_t kBlockChannels = 8 * kBlockWords;  // 128

struct AwqGemmArgs {
  const float* x;           // [M, K] activations, converted to fp32 by the driver (exact for bf16/fp16)
  const float* xsum;        // [M, K/G]: xsum[m, g] = sum of x[m, k] over group g, summed left to right
                            // (decode only; null for the prefill kernels, and x is null for the AMX one)
  const uint32_t* qweight;  // [K, N/8] packed codes (read as unsigned: no sign smearing on shifts)
  const uint32_t* qzeros;   // [K/G, N/8] packed zero points
  const void* scales;       // [K/G, N]: float16 for the AVX-512 kernels; the scalar kernels also read bf16/fp32
  int64_t M, K, N, G;
};

// "Packed order" inside a block, used by all the kernels: position i * 16 + l holds channel 8 * (w0 + l) + ORDER[i]
// (word l of the block, nibble i of that word). It is the order in which a vector register naturally holds
// nibbles after one shift; un-permuting it to channel order happens once per output, never per weight.
// block_words: words per block, 16 (one zmm of words); the AVX2 loop uses blocks of 8 (one ymm).
inline int64_t channel_of_packed_position(int64_t block_first_word, int64_t position,
                                          int64_t block_words = kBlockWords) {
  const int64_t nibble = position / block_words, lane = position % block_words;
  return 8 * (block_first_word + lane) + ((nibble & 3) * 2 + (nibble >> 2));  // ORDER[i] = (i%4)*2 + i/4
}

// True when this binary has the AVX-512 kernels and the CPU running it can execute them.
bool avx512_available();

// The instruction-set tier the kernels pick on this CPU when MINIMOE_CPU_ISA does not force one:
// "avx512", "avx2", "neon" or "scalar" (cpu_isa.cpp; also reported by build_info()).
const char* default_isa_name();

// True when the CPU has AVX2 + FMA + F16C (awq_gemm_avx2.cpp: the decode loop for CPUs without AVX-512).
bool avx2_available();

// True on AArch64 (awq_gemm_neon.cpp: NEON is part of every ARMv8-A CPU), false elsewhere.
bool neon_available();

// The tier a CPU op runs: MINIMOE_CPU_ISA=avx512|avx2|neon|scalar (read on every call) forces one (an error
// naming `op` if this CPU cannot run it), unset or "auto" picks the best this CPU has.
enum class Isa { kScalar, kAvx2, kAvx512, kNeon };
Isa choose_isa(const char* op = "minimoe::awq_gemm");

// The AVX2 decode loop: same contract as decode_avx512 below (fp16 scales).
void decode_avx2(const AwqGemmArgs& a, int64_t word_begin, int64_t word_end, int64_t group_begin, int64_t group_end,
                 float* y);

// y[m, 8*word_begin .. 8*word_end) (fp32, row stride N) = the part of x @ W^T that comes from groups
// group_begin..group_end (rows k = G*group_begin .. G*group_end of W^T), for those columns, all M rows.
// word_begin must be a multiple of kBlockWords; word_end may cut the last block short (N % 128 != 0).
void decode_avx512(const AwqGemmArgs& a, int64_t word_begin, int64_t word_end, int64_t group_begin,
                   int64_t group_end, float* y);

// Dequantize W^T[:, columns of words word_begin..word_end) into `tile`, [K, blocks * 128] row-major,
// each block of 128 columns in packed order; lanes past word_end are written as 0. bf16 == true writes
// bfloat16 (round to nearest even from the exact fp32 value), else fp32 (exact: (q - z) * s fits fp32).
void dequant_tile_avx512(const AwqGemmArgs& a, int64_t word_begin, int64_t word_end, void* tile, bool bf16);

// ---- prefill kernels that do the whole multiply themselves (no BLAS), threads included -------------------
// Each computes all of y = x @ W^T for the prefill path and returns true, or returns false without touching
// y when this CPU cannot run it (the driver then falls back to dequantize-a-tile + torch's GEMM). Both split
// only the output columns between threads, on fixed boundaries, and sum K in a fixed order, so the result is
// bit-for-bit the same for any thread count.

// prefill_amx.cpp: bf16 x [M, K] (x_bf16, row-major) times W^T dequantized to bf16 (round to nearest even, as
// torch.matmul on weights dequantized to bf16), fp32 accumulation on AMX tiles; y_bf16 is [M, N] row-major.
bool prefill_bf16_amx(const AwqGemmArgs& a, const uint16_t* x_bf16, uint16_t* y_bf16);
// True when prefill_bf16_amx can run here: the CPU has AMX-TILE/AMX-BF16/AVX512-BF16 and Linux granted AMX state.
bool amx_available();

// prefill_fp32.cpp: fp32 x (a.x) times the exact fp32 W^T, AVX-512 FMA micro-kernel; y is fp32 [M, N].
bool prefill_fp32_avx512(const AwqGemmArgs& a, float* y);
// prefill_fp32_avx2.cpp: the same product and the same bits at 256 bits (AVX2 + FMA + F16C), for CPUs without
// AVX-512; x of every dtype reaches it as fp32.
bool prefill_fp32_avx2(const AwqGemmArgs& a, float* y);

// ---- the NEON tier (awq_gemm_neon.cpp): torch-free and single-threaded, so that tests/native/neon_harness.cpp
// can run the same file under qemu-aarch64; the drivers split the work between threads. fp16 scales. ----------

// Same contract as decode_avx2 / decode_avx512 (and the same bits as decode_avx2).
void decode_neon(const AwqGemmArgs& a, int64_t word_begin, int64_t word_end, int64_t group_begin, int64_t group_end,
                 float* y);
// x [M, K] packed for prefill_neon: tiles of 4 rows, each [k][4] (rows past M are 0). xp holds
// neon_packed_x_floats(M, K) floats.
int64_t neon_packed_x_floats(int64_t M, int64_t K);
void neon_pack_x(const float* x, int64_t M, int64_t K, float* xp);
// y[:, columns of blocks block_begin..block_end) (fp32, row stride N) = x @ W^T with exact fp32 weights, one
// fused running sum per output in k order: the same bits as prefill_fp32_avx2/avx512 for any block split.
void prefill_neon(const AwqGemmArgs& a, const float* xp, int64_t block_begin, int64_t block_end, float* y);
// linear_stored's rows n0..n1 of y = x @ W^T (x fp32 [M, K]; W [N, K] fp16 (fp16 = true) or bf16 bits;
// round_bf16: each weight rounded to bf16 first, as W.to(bf16) does).
void linear_rows_neon(const float* x, const uint16_t* w, bool fp16, bool round_bf16, int64_t M, int64_t K, int64_t N,
                      int64_t n0, int64_t n1, float* y);

}  // namespace cpu
}  // namespace minimoe
