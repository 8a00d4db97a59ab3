// 01_naive: one thread per 8 outputs, fp32 everywhere (csrc/cuda/awq_simple.cuh, the op's fallback).
//
// What it is: the format read the obvious way. Thread c of row m walks all of K, loads word c of each row of
// qweight (adjacent threads, adjacent words: coalesced, but only 4 bytes per thread per load), decodes the 8
// nibbles with the dequant.h helpers and accumulates in fp32.
// Why it is slow: every row of x re-reads all the weights; 4-byte loads with one load in flight per thread
// cannot fill the memory pipe; scalar int -> float conversions per nibble.
#include "../cuda/awq_simple.cuh"
#include "variant.h"

extern "C" const char* minimoe_variant_name() { return "01_naive"; }
extern "C" size_t minimoe_variant_workspace_bytes(int, int, int, int) { return 0; }
extern "C" int minimoe_variant_run(int dtype, const void* x, const int32_t* qweight, const int32_t* qzeros,
                                   const void* scales, void* y, int M, int K, int N, int G, void*, size_t,
                                   cudaStream_t stream) {
  MINIMOE_VARIANT_DISPATCH(dtype, {
    minimoe::awq_simple_launch<T, T>(static_cast<const T*>(x), reinterpret_cast<const uint32_t*>(qweight),
                                     reinterpret_cast<const uint32_t*>(qzeros), static_cast<const T*>(scales),
                                     static_cast<T*>(y), M, K, N, G, stream);
  });
  return static_cast<int>(cudaGetLastError());
}
