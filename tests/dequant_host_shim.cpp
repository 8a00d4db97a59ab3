// dequant_host_shim.cpp - exposes the shared __host__ __device__ helpers (csrc/dequant.h) and the CUDA dispatch
// plan (csrc/cuda/awq_plan.h) to Python through ctypes, for tests/test_dequant_host.py. Compiled with plain g++
// (no torch, no CUDA): the very lines the GPU kernels run, checked on any machine.
#include <cstdint>

#include "cuda/awq_plan.h"
#include "dequant.h"

extern "C" {

// codes[8 i + j] = code of channel j of words[i]  (awq_unpack_word)
void shim_unpack_words(const uint32_t* words, int64_t n, uint8_t* codes) {
  for (int64_t i = 0; i < n; ++i) minimoe::awq_unpack_word(words[i], codes + 8 * i);
}

// out[4 i + p] = awq_magic_pair(words[i], p, magic2)
void shim_magic_pairs(const uint32_t* words, int64_t n, uint32_t magic2, uint32_t* out) {
  for (int64_t i = 0; i < n; ++i)
    for (int p = 0; p < 4; ++p) out[4 * i + p] = minimoe::awq_magic_pair(words[i], p, magic2);
}

void shim_pair_channels(int p, int* low, int* high) {
  *low = minimoe::awq_pair_low_channel(p);
  *high = minimoe::awq_pair_high_channel(p);
}

// out[i] = awq_dequant(codes[i], zeros[i], scales[i])
void shim_dequant(const uint8_t* codes, const uint8_t* zeros, const float* scales, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = minimoe::awq_dequant(codes[i], zeros[i], scales[i]);
}

void shim_fp16_bits_to_float(const uint16_t* bits, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = minimoe::awq_fp16_bits_to_float(bits[i]);
}

void shim_bf16_bits_to_float(const uint16_t* bits, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = minimoe::awq_bf16_bits_to_float(bits[i]);
}

// ----- the dispatch plan
void shim_gemv_config(int rows, int W, int* m_tile, int* words) {
  const minimoe::GemvConfig c = minimoe::awq_gemv_config(rows, W);
  *m_tile = c.m_tile;
  *words = c.words;
}
int shim_gemv_blocks_n(int W, int words) { return minimoe::awq_gemv_blocks_n(W, words); }
int shim_gemv_groups_per_split(int blocks_n, int groups, int sms) {
  return minimoe::awq_gemv_groups_per_split(blocks_n, groups, sms);
}
int shim_gemv_splits(int groups, int gps) { return minimoe::awq_gemv_splits(groups, gps); }
int shim_choose_kernel(int M, int K, int N, int G, int fast_types, int aligned) {
  return static_cast<int>(minimoe::awq_choose_kernel(M, K, N, G, fast_types != 0, aligned != 0));
}
int shim_gemv_max_rows() { return minimoe::kGemvMaxRows; }
int shim_gemv_lanes() { return minimoe::kGemvLanes; }
}
