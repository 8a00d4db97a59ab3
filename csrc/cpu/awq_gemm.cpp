// awq_gemm.cpp - CPU kernel of minimoe::awq_gemm: y[M, N] = x[M, K] @ W^T, W^T = (q - z) * s from AWQ int4.
//
// This file is the driver's front: it checks every argument, picks a path and the kernels, and runs the prefill
// paths. The rest of the driver (awq_gemm_driver.h): the decode work split (awq_decode_plan.cpp), the scalar
// kernels (awq_gemm_scalar.cpp), the tier choice (cpu_isa.cpp). The per-ISA kernels are awq_gemm_avx512.cpp,
// awq_gemm_avx2.cpp, awq_gemm_neon.cpp and the prefill_*.cpp; docs/kernels-cpu.md explains them with measurements.
//
// Two paths, chosen by M (rows of x):
//   decode  M < prefill_min_rows(): read the packed weights exactly once and multiply-accumulate straight from
//           the nibbles. This is memory-bound: at M = 1 every weight byte is used for 2 flops per code.
//   prefill M >= that: the unpack is paid once per weight for all M rows, and the multiply is a real GEMM.
//           On AVX-512 CPUs our own micro-kernels do it, fed by dequantizing straight into the layout they
//           multiply from: prefill_amx.cpp (bf16 x, AMX tiles) and prefill_fp32.cpp (fp32/fp16 x, FMA). Without
//           AMX, bf16 x on AVX-512 takes a fallback that dequantizes a tile of W^T and calls torch's GEMM. On
//           AVX2 CPUs x of every dtype goes as fp32 to prefill_fp32_avx2.cpp (fp32-exact weights, no torch GEMM).
//
// Determinism: threads split the *output columns* only, on fixed boundaries (never the K sum), and each output
// is summed in the same order whatever the thread count, so results are bitwise thread-count invariant. (The
// decode path splits K into chunks fixed by the shape, and adds the chunks in order.) In the GEMM fallback each
// tile's GEMM runs single-threaded on its calling thread, which makes oneDNN (bf16) invariant; MKL (fp32) is
// not, at larger K, which is why fp32 on AVX-512 no longer goes there.
//
// Instruction set (cpu_isa.cpp): AVX-512 when the CPU has it, else AVX2, on ARM64 NEON, else scalar C++;
// MINIMOE_CPU_ISA forces one, MINIMOE_CPU_PATH likewise the decode or the prefill path.
#include <torch/extension.h>
#include <torch/library.h>

#include <ATen/Parallel.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../awq_checks.h"
#include "../check_text.h"
#include "awq_gemm_driver.h"

namespace minimoe {
namespace cpu {
namespace {

constexpr int64_t kPrefillTileWords = 4 * kBlockWords;

// From this many rows of x on, dequantize-then-GEMM beats streaming the nibbles (measured with
// benchmarks/kernel_cpu.py on the 2-core AVX-512/AMX machine; see docs/kernels-cpu.md).
// The decode loop's cost grows with M (one FMA per row of x per code) while prefill's is nearly flat until the
// GEMM dominates; bf16 crosses earlier because its GEMM runs on AMX.
int64_t prefill_min_rows(at::ScalarType x_dtype) { return x_dtype == at::kBFloat16 ? 16 : 32; }
// The AVX2 tier's crossover, every dtype (x always reaches its micro-kernel as fp32), measured on a Zen 4 core
// with AVX2 forced, 4096 x 14336: decode faster at M = 24, prefill at M = 32 (docs/kernels-cpu.md).
constexpr int64_t kAvx2PrefillMinRows = 32;
// The NEON tier's: taken from the AVX2 tier's (same design, same register budget per FMA unit); not measured on
// ARM hardware, where none was available.
constexpr int64_t kNeonPrefillMinRows = 32;

// MINIMOE_CPU_PATH=decode|prefill (read on every call) forces a path whatever M is: the tests use it to run
// both paths on small shapes, the benchmark to find where they cross. Unset or "auto": decided by M on the
// AVX-512 and AVX2 tiers; the scalar tier always decodes (its only prefill is the GEMM fallback, whose MKL result
// depends on the thread count, and for bf16 torch's bf16 GEMM, ~100x slower than fp32 on CPUs without native
// bf16 arithmetic: a mid-size 128-token prompt took 34 s on an AVX2 EPYC when that path was taken). The AVX2
// tier's prefill converts x to fp32 (exact) and multiplies the exact fp32 weights, as its decode loop does.
bool use_prefill(int64_t M, at::ScalarType x_dtype, Isa isa) {
  const char* env = std::getenv("MINIMOE_CPU_PATH");
  const std::string wish = env ? env : "";
  if (wish == "decode") return false;
  if (wish == "prefill") return true;
  TORCH_CHECK(wish.empty() || wish == "auto", "minimoe::awq_gemm: MINIMOE_CPU_PATH must be auto, decode or prefill, found '",
              wish, "'");
  switch (isa) {
    case Isa::kAvx512: return M >= prefill_min_rows(x_dtype);
    case Isa::kAvx2: return M >= kAvx2PrefillMinRows;
    case Isa::kNeon: return M >= kNeonPrefillMinRows;
    default: return false;
  }
}

// ---- argument checks -----------------------------------------------------------------------------------

void check_arguments(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& qzeros, const at::Tensor& scales,
                     int64_t group_size, const std::string& op = "minimoe::awq_gemm (CPU)") {
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"x", x}, {"qweight", qweight},
                                {"qzeros", qzeros}, {"scales", scales}}) {
    TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor, found one on ", t.device());
  }
  check_awq_gemm_arguments(x, qweight, qzeros, scales, group_size, op);  // shapes and dtypes: ../awq_checks.h
}

// y[m, channel] = out[m, packed position] for the valid lanes of a prefill tile.
template <typename Out, typename Y>
void scatter_tile(const Out* out, int64_t width, Y* y, int64_t M, int64_t N, int64_t word_begin, int64_t word_end) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t p = 0; p < width; ++p) {
      const int64_t w0 = word_begin + (p / kBlockChannels) * kBlockWords, position = p % kBlockChannels;
      if (w0 + position % kBlockWords < word_end)
        y[m * N + channel_of_packed_position(w0, position)] = static_cast<Y>(static_cast<float>(out[m * width + p]));
    }
}

// Makes OpenMP-threaded BLAS calls from this thread (oneDNN: the bf16 path) single-threaded for the guard's
// lifetime; the setting is per thread, and is restored after, also when an exception passes through.
// MKL (fp32) keeps its own global thread count and is not affected: see the determinism note in
// docs/kernels-cpu.md.
class SingleThreadedBlas {
 public:
  SingleThreadedBlas() {
#ifdef _OPENMP
    saved_ = omp_get_max_threads();
    omp_set_num_threads(1);
#endif
  }
  ~SingleThreadedBlas() {
#ifdef _OPENMP
    omp_set_num_threads(saved_);
#endif
  }
  SingleThreadedBlas(const SingleThreadedBlas&) = delete;
  SingleThreadedBlas& operator=(const SingleThreadedBlas&) = delete;

 private:
  int saved_ = 1;
};

}  // namespace

at::Tensor awq_gemm_cpu(const at::Tensor& x_in, const at::Tensor& qweight_in, const at::Tensor& qzeros_in,
                        const at::Tensor& scales_in, int64_t group_size) {
  check_arguments(x_in, qweight_in, qzeros_in, scales_in, group_size);
  const at::Tensor x = x_in.contiguous(), qweight = qweight_in.contiguous(), qzeros = qzeros_in.contiguous(),
                   scales = scales_in.contiguous();
  const int64_t M = x.size(0), K = qweight.size(0), words = qweight.size(1), N = 8 * words, G = group_size;
  at::Tensor y = at::empty({M, N}, x.options());
  if (M == 0) return y;

  const Isa isa = kernels_for(choose_isa(), scales);
  if (!use_prefill(M, x.scalar_type(), isa)) {
    std::vector<DecodeJob> jobs{plan_decode(x, qweight, qzeros, scales, G, y, isa)};
    run_decode(jobs);
    return y;
  }

  const bool bf16 = x.scalar_type() == at::kBFloat16;
  const auto args_with = [&](const float* x_fp32) {
    return AwqGemmArgs{x_fp32, nullptr, reinterpret_cast<const uint32_t*>(qweight.data_ptr<int32_t>()),
                       reinterpret_cast<const uint32_t*>(qzeros.data_ptr<int32_t>()), scales.data_ptr(), M, K, N, G};
  };
  const at::ScalarType scale_dtype = scales.scalar_type();

  // bf16 prefill on AMX (prefill_amx.cpp) reads the bf16 x itself: try it before converting anything.
  // It declines (false) on CPUs without AMX.
  const bool avx512 = isa == Isa::kAvx512;
  if (avx512 && bf16 &&
      prefill_bf16_amx(args_with(nullptr), reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>()),
                       reinterpret_cast<uint16_t*>(y.data_ptr<at::BFloat16>())))
    return y;
  const at::Tensor xf = x.to(at::kFloat);  // exact for bf16/fp16
  const AwqGemmArgs args = args_with(xf.data_ptr<float>());

  // ---- prefill ----
  // bf16 x multiplies bf16 weights: each weight is rounded to bf16 once, as in torch.matmul on weights
  // dequantized to bf16. fp32 and fp16 x multiply exact fp32 weights by fp32 x (fp16 -> fp32 is exact).
  // fp32/fp16 x: our own FMA micro-kernel (prefill_fp32.cpp); bf16 already tried AMX above.
  // AVX2 (no AVX-512): every dtype, as fp32 (prefill_fp32_avx2.cpp), never torch's GEMM.
  if ((avx512 && !bf16) || isa == Isa::kAvx2) {
    at::Tensor yf = x.scalar_type() == at::kFloat ? y : at::empty({M, N}, xf.options());
    if (avx512 ? prefill_fp32_avx512(args, yf.data_ptr<float>()) : prefill_fp32_avx2(args, yf.data_ptr<float>())) {
      if (!yf.is_same(y)) y.copy_(yf);
      return y;
    }
  }
  // NEON (ARM64): every dtype as fp32, like AVX2. Its kernel is single-threaded (awq_gemm.h): threads take
  // column blocks here, which changes no bit.
  if (isa == Isa::kNeon) {
    at::Tensor yf = x.scalar_type() == at::kFloat ? y : at::empty({M, N}, xf.options());
    std::vector<float> xp(neon_packed_x_floats(M, K));
    neon_pack_x(args.x, M, K, xp.data());
    at::parallel_for(0, (words + kBlockWords - 1) / kBlockWords, 1, [&](int64_t first, int64_t last) {
      prefill_neon(args, xp.data(), first, last, yf.data_ptr<float>());
    });
    if (!yf.is_same(y)) y.copy_(yf);
    return y;
  }
  // Fallback: dequantize a tile of W^T, multiply with torch's GEMM, scatter the columns back.
  const at::Tensor a = bf16 ? x : xf;
  const int64_t tiles = (words + kPrefillTileWords - 1) / kPrefillTileWords;
  const int64_t tile_width = (kPrefillTileWords / kBlockWords) * kBlockChannels;
  at::parallel_for(0, tiles, 1, [&](int64_t first, int64_t last) {
    // Each tile's GEMM should run on one thread, whatever the thread count: oneDNN otherwise starts nested
    // threads inside this region (oversubscribing the cores) and splits K differently for 1 and 2 threads,
    // which changed bf16 results bit-wise (tests/test_kernels.py). MKL (fp32, scalar ISA only) still may.
    const SingleThreadedBlas single_threaded;
    // One tile buffer and one output buffer per thread, reused for all of its tiles.
    at::Tensor tile = at::empty({K, tile_width}, a.options());
    at::Tensor out = at::empty({M, tile_width}, a.options());
    for (int64_t t = first; t < last; ++t) {
      const int64_t w0 = t * kPrefillTileWords, w1 = std::min(words, w0 + kPrefillTileWords);
      const int64_t width = ((w1 - w0 + kBlockWords - 1) / kBlockWords) * kBlockChannels;
      at::Tensor tile_view = width == tile_width ? tile : at::empty({K, width}, a.options());
      at::Tensor out_view = width == tile_width ? out : at::empty({M, width}, a.options());
      if (avx512) dequant_tile_avx512(args, w0, w1, tile_view.data_ptr(), bf16);
      else if (bf16) dequant_tile_scalar(args, scale_dtype, w0, w1, tile_view.data_ptr<at::BFloat16>());
      else dequant_tile_scalar(args, scale_dtype, w0, w1, tile_view.data_ptr<float>());
      at::mm_out(out_view, a, tile_view);
      if (bf16) scatter_tile(out_view.data_ptr<at::BFloat16>(), width, y.data_ptr<at::BFloat16>(), M, N, w0, w1);
      else if (x.scalar_type() == at::kFloat) scatter_tile(out_view.data_ptr<float>(), width, y.data_ptr<float>(), M, N, w0, w1);
      else scatter_tile(out_view.data_ptr<float>(), width, y.data_ptr<at::Half>(), M, N, w0, w1);
    }
  });
  return y;
}

// Several products y_i = x_i @ W_i^T in one call (same contract as awq_gemm for each). The decode-sized ones
// share one parallel region (see DecodeJob); any that take the prefill path run one after another.
std::vector<at::Tensor> awq_gemm_many_cpu(at::TensorList xs, at::TensorList qweights, at::TensorList qzeros,
                                          at::TensorList scales, at::IntArrayRef group_sizes) {
  const std::string op = "minimoe::awq_gemm_many (CPU)";
  const size_t n = xs.size();
  TORCH_CHECK(qweights.size() == n && qzeros.size() == n && scales.size() == n && group_sizes.size() == n, op,
              ": x, qweight, qzeros, scales and group_size must be lists of the same length, found ", as_text(n),
              ", ", as_text(qweights.size()), ", ", as_text(qzeros.size()), ", ", as_text(scales.size()), " and ",
              as_text(group_sizes.size()));
  for (size_t i = 0; i < n; ++i)
    check_arguments(xs[i], qweights[i], qzeros[i], scales[i], group_sizes[i], op + ", product " + std::to_string(i));
  const Isa isa = choose_isa();
  std::vector<at::Tensor> ys(n);
  std::vector<DecodeJob> jobs;
  // A DecodeJob holds raw pointers into its tensors until run_decode: the contiguous copies of non-contiguous
  // inputs must outlive the loop (a temporary's copy was freed before the jobs ran: wrong results, found by
  // tests/test_fuzz_ops.py with a column-major qweight).
  std::vector<at::Tensor> alive;
  alive.reserve(4 * n);
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor x = xs[i].contiguous(), scale = scales[i].contiguous();
    const Isa kernels = kernels_for(isa, scale);
    if (x.size(0) == 0 || use_prefill(x.size(0), x.scalar_type(), kernels)) {
      ys[i] = awq_gemm_cpu(x, qweights[i], qzeros[i], scale, group_sizes[i]);
      continue;
    }
    ys[i] = at::empty({x.size(0), 8 * qweights[i].size(1)}, x.options());
    for (const at::Tensor& t : {x, qweights[i].contiguous(), qzeros[i].contiguous(), scale}) alive.push_back(t);
    const size_t k = alive.size();
    jobs.push_back(plan_decode(alive[k - 4], alive[k - 3], alive[k - 2], alive[k - 1], group_sizes[i], ys[i],
                               kernels));
  }
  if (!jobs.empty()) run_decode(jobs);
  return ys;
}

}  // namespace cpu

TORCH_LIBRARY_IMPL(minimoe, CPU, m) {
  m.impl("awq_gemm", &cpu::awq_gemm_cpu);
  m.impl("awq_gemm_many", &cpu::awq_gemm_many_cpu);
}

}  // namespace minimoe
