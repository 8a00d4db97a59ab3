// neon_harness.cpp - runs the NEON kernels (csrc/cpu/awq_gemm_neon.cpp) on one case read from a file and
// writes their outputs to another, so that tests/test_neon.py can check them against the pure-PyTorch spec on
// any machine: it is cross-compiled with aarch64-linux-gnu-g++ -static and run under qemu-aarch64.
//
//   neon_harness CASE OUT
//
// CASE (little-endian, as AArch64 Linux is): int64 op, then
//   op 0 (awq_gemm decode) / 1 (awq_gemm prefill): int64 M, K, N, G, split; float x[M*K]; uint32 qweight[K*N/8];
//       uint32 qzeros[K/G*N/8]; uint16 scales (fp16 bits)[K/G*N]
//   op 2 (linear_stored): int64 M, K, N, fp16 (1) or bf16 (0) weights, round_bf16, split; float x[M*K];
//       uint16 w[N*K]
// OUT: float y[M*N] computed in one piece, then float y[M*N] computed in two pieces cut at `split` (words for
// decode, 128-channel blocks for prefill, rows for linear_stored), as two threads of the drivers would cut it:
// the test asserts both are bit for bit equal. Both start as NaN, so an output a kernel forgets stays NaN.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <vector>

#include "cpu/awq_gemm.h"

namespace {

FILE* in;

template <typename T>
std::vector<T> read(int64_t n) {
  std::vector<T> v(n);
  if (n > 0 && std::fread(v.data(), sizeof(T), n, in) != static_cast<size_t>(n)) {
    std::fprintf(stderr, "neon_harness: case file too short\n");
    std::exit(2);
  }
  return v;
}

int64_t read_int() { return read<int64_t>(1)[0]; }

std::vector<float> nan_filled(int64_t n) { return std::vector<float>(n, std::numeric_limits<float>::quiet_NaN()); }

}  // namespace

int main(int argc, char** argv) {
  using namespace minimoe::cpu;
  if (argc != 3) {
    std::fprintf(stderr, "usage: neon_harness CASE OUT\n");
    return 2;
  }
  if (!neon_available()) {
    std::fprintf(stderr, "neon_harness: built without the NEON tier (not an AArch64 build)\n");
    return 3;
  }
  in = std::fopen(argv[1], "rb");
  if (!in) return 2;
  const int64_t op = read_int();
  std::vector<float> y, y2;
  if (op == 0 || op == 1) {
    const int64_t M = read_int(), K = read_int(), N = read_int(), G = read_int(), split = read_int();
    const std::vector<float> x = read<float>(M * K);
    const std::vector<uint32_t> qweight = read<uint32_t>(K * N / 8), qzeros = read<uint32_t>(K / G * N / 8);
    const std::vector<uint16_t> scales = read<uint16_t>(K / G * N);
    const int64_t groups = K / G, words = N / 8;
    // The zero-point term's per-group sums of x, left to right, as the driver (awq_gemm.cpp) computes them.
    std::vector<float> xsum(M * groups);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t g = 0; g < groups; ++g) {
        float sum = 0.0f;
        for (int64_t k = g * G; k < (g + 1) * G; ++k) sum += x[m * K + k];
        xsum[m * groups + g] = sum;
      }
    const AwqGemmArgs a{x.data(), op == 0 ? xsum.data() : nullptr, qweight.data(), qzeros.data(), scales.data(),
                        M, K, N, G};
    y = nan_filled(M * N);
    y2 = nan_filled(M * N);
    if (op == 0) {
      decode_neon(a, 0, words, 0, groups, y.data());
      decode_neon(a, 0, split, 0, groups, y2.data());
      decode_neon(a, split, words, 0, groups, y2.data());
    } else {
      const int64_t blocks = (words + kBlockWords - 1) / kBlockWords;
      std::vector<float> xp(neon_packed_x_floats(M, K));
      neon_pack_x(x.data(), M, K, xp.data());
      prefill_neon(a, xp.data(), 0, blocks, y.data());
      prefill_neon(a, xp.data(), 0, split, y2.data());
      prefill_neon(a, xp.data(), split, blocks, y2.data());
    }
  } else if (op == 2) {
    const int64_t M = read_int(), K = read_int(), N = read_int(), fp16 = read_int(), round_bf16 = read_int(),
                  split = read_int();
    const std::vector<float> x = read<float>(M * K);
    const std::vector<uint16_t> w = read<uint16_t>(N * K);
    y = nan_filled(M * N);
    y2 = nan_filled(M * N);
    linear_rows_neon(x.data(), w.data(), fp16 != 0, round_bf16 != 0, M, K, N, 0, N, y.data());
    linear_rows_neon(x.data(), w.data(), fp16 != 0, round_bf16 != 0, M, K, N, 0, split, y2.data());
    linear_rows_neon(x.data(), w.data(), fp16 != 0, round_bf16 != 0, M, K, N, split, N, y2.data());
  } else {
    std::fprintf(stderr, "neon_harness: unknown op %lld\n", static_cast<long long>(op));
    return 2;
  }
  std::fclose(in);
  FILE* out = std::fopen(argv[2], "wb");
  if (!out) return 2;
  std::fwrite(y.data(), sizeof(float), y.size(), out);
  std::fwrite(y2.data(), sizeof(float), y2.size(), out);
  std::fclose(out);
  return 0;
}
