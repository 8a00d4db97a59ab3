// lab_stage_main.cpp - runs one kernel-lab stage (csrc/dev/cpu/NN_*.cpp, the C ABI minimoe_int4_gemm) on one case
// read from a file, so that tests/test_neon.py can check an ARM64 stage under qemu-aarch64 on any machine.
//
//   lab_stage_main CASE OUT
//
// CASE (little-endian): int64 M, K, N, G, threads; float x[M*K]; int32 qweight[K*N/8], qzeros[K/G*N/8];
// uint16 scales (fp16 bits)[K/G*N]. OUT: float y[M*N], which starts as NaN (an output left unwritten stays NaN).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <vector>

extern "C" int minimoe_int4_gemm(const float* x, const int32_t* qweight, const int32_t* qzeros,
                                 const uint16_t* scales, float* y, int64_t M, int64_t K, int64_t N, int64_t G,
                                 int threads);

namespace {

template <typename T>
std::vector<T> read(FILE* in, int64_t n) {
  std::vector<T> v(n);
  if (n > 0 && std::fread(v.data(), sizeof(T), n, in) != static_cast<size_t>(n)) {
    std::fprintf(stderr, "lab_stage_main: case file too short\n");
    std::exit(2);
  }
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: lab_stage_main CASE OUT\n");
    return 2;
  }
  FILE* in = std::fopen(argv[1], "rb");
  if (!in) return 2;
  const std::vector<int64_t> h = read<int64_t>(in, 5);
  const int64_t M = h[0], K = h[1], N = h[2], G = h[3], threads = h[4];
  const std::vector<float> x = read<float>(in, M * K);
  const std::vector<int32_t> qweight = read<int32_t>(in, K * N / 8), qzeros = read<int32_t>(in, K / G * N / 8);
  const std::vector<uint16_t> scales = read<uint16_t>(in, K / G * N);
  std::fclose(in);
  std::vector<float> y(M * N, std::numeric_limits<float>::quiet_NaN());
  const int rc = minimoe_int4_gemm(x.data(), qweight.data(), qzeros.data(), scales.data(), y.data(), M, K, N, G,
                                   static_cast<int>(threads));
  if (rc != 0) return 10 + rc;
  FILE* out = std::fopen(argv[2], "wb");
  if (!out) return 2;
  std::fwrite(y.data(), sizeof(float), y.size(), out);
  std::fclose(out);
  return 0;
}
