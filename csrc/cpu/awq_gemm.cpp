// awq_gemm.cpp - CPU kernel of minimoe::awq_gemm: y[M, N] = x[M, K] @ W^T, W^T = (q - z) * s from AWQ int4.
//
// This file is the driver: it checks every argument, converts x to fp32, picks a path and an instruction set,
// splits the output columns over threads, and holds the portable scalar kernels. The AVX-512 kernels are in
// awq_gemm_avx512.cpp; docs/kernels-cpu.md explains both paths with measurements.
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
// Instruction set: AVX-512 when the CPU has it, else AVX2 (awq_gemm_avx2.cpp, prefill_fp32_avx2.cpp), on ARM64
// NEON (awq_gemm_neon.cpp), else scalar C++. MINIMOE_CPU_ISA=avx512|avx2|neon|scalar (read on every call) forces
// one, so the tests check the x86 tiers on an AVX-512 machine (and tests/test_neon.py runs the NEON kernels under
// qemu); MINIMOE_CPU_PATH likewise forces the decode or the prefill path.
#include <torch/extension.h>
#include <torch/library.h>

#include <ATen/Parallel.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../awq_checks.h"
#include "../check_text.h"
#include "../dequant.h"
#include "awq_gemm.h"

namespace minimoe {
namespace cpu {
namespace {

// Decode: the unit of work split between threads is a tile of 4 blocks (512 channels), small enough to split
// N = 1024 over 2 threads. A thread then streams its whole run of tiles row by row, in spans of at most
// kDecodeSpanFloats running sums (M x channels, 64 K floats = 256 KB of dot + 256 KB of y: L2-resident).
// The result of an output never depends on the span or run it falls in (same k order, same fold), so thread
// count and span size cannot change a bit of it.
constexpr int64_t kDecodeTileWords = 4 * kBlockWords;
constexpr int64_t kDecodeSpanFloats = 64 * 1024;

// Decode cuts K into this many chunks of whole groups (a function of the shape only, never of the thread
// count): about 8 groups (1024 rows at G = 128) per chunk, at most 8 chunks, so every chunk is a slab of
// at least ~0.5 MB of qweight at the real layer shapes and two threads always have several chunks to share.
// At least 2 chunks whenever there are 2 groups: a small layer (K = 1024, 8 groups) then gives two threads a
// slab of whole rows each rather than a half of every row each. Measured on the mid-size model's K = 1024
// products (4 x 1024 x 3584; q/k/v; o), interleaved in one process, 30 rounds: 4-11% faster in the median,
// faster in 70-80% of the paired rounds, counting the extra pass that adds the two partials.
inline int64_t decode_k_chunks(int64_t groups) { return std::clamp<int64_t>(groups / 8, std::min<int64_t>(groups, 2), 8); }
// Decode wants at least one work item per thread, so that a layer with few chunks still gives every thread
// something to do; when the K chunks alone are fewer than the threads, the columns are cut into spans as well,
// but no more than that: a thread's row segments should stay long (measured, 8 layers of the mid-size model at
// 2 threads: 256-byte segments, from 8 items per product, took 15-20% longer than 896-byte ones from 2). Spans
// change no result, so they may depend on the thread count; chunks may not.
// Below this many floats of partial sums, decode adds them up on the calling thread.
constexpr int64_t kSerialFinishFloats = 64 * 1024;
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
bool use_prefill(int64_t M, at::ScalarType x_dtype, bool vector, bool avx2, bool neon) {
  const char* env = std::getenv("MINIMOE_CPU_PATH");
  const std::string wish = env ? env : "";
  if (wish == "decode") return false;
  if (wish == "prefill") return true;
  TORCH_CHECK(wish.empty() || wish == "auto", "minimoe::awq_gemm: MINIMOE_CPU_PATH must be auto, decode or prefill, found '",
              wish, "'");
  if (vector) return M >= prefill_min_rows(x_dtype);
  if (neon) return M >= kNeonPrefillMinRows;
  return avx2 && M >= kAvx2PrefillMinRows;
}

// The best tier this CPU can run: what "auto" means.
Isa auto_isa() {
  if (avx512_available()) return Isa::kAvx512;
  if (avx2_available()) return Isa::kAvx2;
  return neon_available() ? Isa::kNeon : Isa::kScalar;
}

}  // namespace

Isa choose_isa(const char* op) {
  const char* env = std::getenv("MINIMOE_CPU_ISA");
  const std::string wish = env ? env : "";
  if (wish == "scalar") return Isa::kScalar;
  if (wish == "avx512") {
    TORCH_CHECK(avx512_available(), op, ": MINIMOE_CPU_ISA=avx512 but this CPU (or this build) has no AVX-512");
    return Isa::kAvx512;
  }
  if (wish == "avx2") {
    TORCH_CHECK(avx2_available(), op, ": MINIMOE_CPU_ISA=avx2 but this CPU (or this build) has no AVX2/FMA/F16C");
    return Isa::kAvx2;
  }
  if (wish == "neon") {
    TORCH_CHECK(neon_available(), op, ": MINIMOE_CPU_ISA=neon but this is not an ARM64 (AArch64) build");
    return Isa::kNeon;
  }
  TORCH_CHECK(wish.empty() || wish == "auto", op,
              ": MINIMOE_CPU_ISA must be auto, avx512, avx2, neon or scalar, found '", wish, "'");
  return auto_isa();
}

const char* default_isa_name() {
  switch (auto_isa()) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    case Isa::kNeon: return "neon";
    default: return "scalar";
  }
}

namespace {

// ---- scalar kernels: natural channel order, portable C++ --------------------------------------------------
// They compute the same quantities as the AVX-512 ones by the textbook formula (sum x*q, then s * (D - z X))
// rather than the 1 + q/16 trick, so they are a second, independent implementation as well as a fallback.

inline float scale_at(const void* scales, at::ScalarType dtype, int64_t i) {
  switch (dtype) {
    case at::kHalf: return static_cast<float>(static_cast<const at::Half*>(scales)[i]);
    case at::kBFloat16: return static_cast<float>(static_cast<const at::BFloat16*>(scales)[i]);
    default: return static_cast<const float*>(scales)[i];
  }
}

void decode_scalar(const AwqGemmArgs& a, at::ScalarType scale_dtype, int64_t word_begin, int64_t word_end,
                   int64_t group_begin, int64_t group_end, float* y) {
  const int64_t words = a.N / 8, groups = a.K / a.G, width = 8 * (word_end - word_begin);
  std::vector<float> codes(width), dot(a.M * width), y_acc(a.M * width, 0.0f);
  for (int64_t g = group_begin; g < group_end; ++g) {
    std::fill(dot.begin(), dot.end(), 0.0f);
    for (int64_t k = g * a.G; k < (g + 1) * a.G; ++k) {
      // Unpack the row segment once, use it for every row of x.
      for (int64_t w = word_begin; w < word_end; ++w)
        for (int j = 0; j < 8; ++j) codes[8 * (w - word_begin) + j] = static_cast<float>(awq_code(a.qweight[k * words + w], j));
      for (int64_t m = 0; m < a.M; ++m) {
        const float xv = a.x[m * a.K + k];
        float* d = dot.data() + m * width;
        for (int64_t n = 0; n < width; ++n) d[n] += xv * codes[n];
      }
    }
    for (int64_t m = 0; m < a.M; ++m) {
      const float xsum = a.xsum[m * groups + g];
      for (int64_t n = 0; n < width; ++n) {
        const int64_t channel = 8 * word_begin + n;
        const float z = static_cast<float>(awq_code(a.qzeros[g * words + channel / 8], channel % 8));
        const float s = scale_at(a.scales, scale_dtype, g * a.N + channel);
        y_acc[m * width + n] += s * (dot[m * width + n] - z * xsum);
      }
    }
  }
  for (int64_t m = 0; m < a.M; ++m)
    std::memcpy(y + m * a.N + 8 * word_begin, y_acc.data() + m * width, width * sizeof(float));
}

// Same tile layout as dequant_tile_avx512 (blocks of 128 columns in packed order, padding lanes 0).
template <typename T>
void dequant_tile_scalar(const AwqGemmArgs& a, at::ScalarType scale_dtype, int64_t word_begin, int64_t word_end,
                         T* tile) {
  const int64_t words = a.N / 8;
  const int64_t blocks = (word_end - word_begin + kBlockWords - 1) / kBlockWords, width = blocks * kBlockChannels;
  for (int64_t k = 0; k < a.K; ++k) {
    const int64_t g = k / a.G;
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t w0 = word_begin + b * kBlockWords;
      for (int64_t p = 0; p < kBlockChannels; ++p) {
        float value = 0.0f;
        if (w0 + p % kBlockWords < word_end) {
          const int64_t channel = channel_of_packed_position(w0, p);
          const uint32_t q = awq_code(a.qweight[k * words + channel / 8], channel % 8);
          const uint32_t z = awq_code(a.qzeros[g * words + channel / 8], channel % 8);
          value = awq_dequant(q, z, scale_at(a.scales, scale_dtype, g * a.N + channel));  // exact in fp32
        }
        tile[k * width + b * kBlockChannels + p] = static_cast<T>(value);  // bf16: round to nearest even
      }
    }
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

}  // namespace

namespace {

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

namespace {

// ---- decode: stream the packed weights once ----------------------------------------------------------
// Work items are (K chunk, column span) pairs. K is cut into a fixed number of chunks of whole groups, chosen
// from the shape alone: a thread then streams a contiguous slab of qweight (whole rows, one after the other),
// which the prefetchers follow at full speed, instead of a 1-3 KB piece of every row (which is what splitting
// only N between threads gives: measured 25-39% of read bandwidth for N <= 4096 that way).
// Each chunk writes its own partial [M, N]; the partials are then added in chunk order. Chunks never depend
// on the thread count, and spans cannot change a bit of any output, so neither do the results.
// Spans keep a chunk's [M, span] running sums L2-resident when M is large. At M = 1 a span is a whole row,
// unless a layer has fewer chunks than there are threads (a single group at 2 threads; K = 1024 at 3 or more).
//
// One product is one DecodeJob. awq_gemm_many puts the items of several jobs (q, k and v of one layer; both
// experts' w1 and w3) into one parallel region: a small layer alone cannot keep two cores busy (K = 1024,
// N = 256 is 128 KB), and each call pays a parallel region and a tail where one thread waits for the other.
struct DecodeJob {
  at::Tensor y, xf, xsum, partial;  // output, x in fp32, its per-group sums, per-chunk partial sums (or y)
  AwqGemmArgs args;
  at::ScalarType out_dtype, scale_dtype;
  bool vector, avx2, neon;
  int64_t chunks, groups_per_chunk, spans, span_words;
  bool direct;  // fp32 output from a single chunk: the kernel writes y itself
};

DecodeJob plan_decode(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& qzeros, const at::Tensor& scales,
                      int64_t G, at::Tensor y, bool vector, bool avx2, bool neon) {
  DecodeJob job;
  const int64_t M = x.size(0), K = qweight.size(0), words = qweight.size(1), N = 8 * words, groups = K / G;
  job.y = y;
  job.out_dtype = x.scalar_type();
  job.scale_dtype = scales.scalar_type();
  job.vector = vector;
  job.avx2 = avx2;
  job.neon = neon;
  // x in fp32 (exact for bf16/fp16 inputs) and its per-group sums, summed left to right: the zero-point term.
  job.xf = x.to(at::kFloat);
  job.xsum = at::empty({M, groups}, job.xf.options());
  const float* px = job.xf.data_ptr<float>();
  float* ps = job.xsum.data_ptr<float>();
  for (int64_t m = 0; m < M; ++m)
    for (int64_t g = 0; g < groups; ++g) {
      float sum = 0.0f;
      for (int64_t k = g * G; k < (g + 1) * G; ++k) sum += px[m * K + k];
      ps[m * groups + g] = sum;
    }
  job.args = AwqGemmArgs{px, ps, reinterpret_cast<const uint32_t*>(qweight.data_ptr<int32_t>()),
                         reinterpret_cast<const uint32_t*>(qzeros.data_ptr<int32_t>()), scales.data_ptr(), M, K, N, G};
  job.groups_per_chunk = (groups + decode_k_chunks(groups) - 1) / decode_k_chunks(groups);
  job.chunks = (groups + job.groups_per_chunk - 1) / job.groups_per_chunk;
  const int64_t l2_span = std::max<int64_t>(kDecodeTileWords, (kDecodeSpanFloats / (8 * M)) / kDecodeTileWords * kDecodeTileWords);
  const int64_t wanted_spans = (at::get_num_threads() + job.chunks - 1) / job.chunks;
  const int64_t even_span = ((words + wanted_spans - 1) / wanted_spans + kDecodeTileWords - 1) / kDecodeTileWords * kDecodeTileWords;
  job.span_words = std::min(l2_span, even_span);
  job.spans = (words + job.span_words - 1) / job.span_words;
  job.direct = job.chunks == 1 && job.out_dtype == at::kFloat;
  job.partial = job.direct ? y : at::empty({job.chunks, M, N}, job.xf.options());
  return job;
}

// Runs every item of every job, then adds each job's partials in chunk order and rounds to its output dtype.
// Threads take items from a shared counter, largest first: which thread runs an item changes no result.
void run_decode(std::vector<DecodeJob>& jobs) {
  struct Item {
    int64_t job, chunk, span, cost;
  };
  std::vector<Item> items;
  for (int64_t j = 0; j < static_cast<int64_t>(jobs.size()); ++j) {
    const DecodeJob& d = jobs[j];
    const int64_t groups = d.args.K / d.args.G, words = d.args.N / 8;
    for (int64_t c = 0; c < d.chunks; ++c)
      for (int64_t s = 0; s < d.spans; ++s) {
        const int64_t chunk_groups = std::min(groups, (c + 1) * d.groups_per_chunk) - c * d.groups_per_chunk;
        const int64_t span = std::min(words, (s + 1) * d.span_words) - s * d.span_words;
        items.push_back({j, c, s, chunk_groups * d.args.G * span * d.args.M});
      }
  }
  std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) { return a.cost > b.cost; });
  const auto run_item = [&](const Item& item) {
    const DecodeJob& d = jobs[item.job];
    const int64_t groups = d.args.K / d.args.G, words = d.args.N / 8;
    const int64_t w0 = item.span * d.span_words, w1 = std::min(words, w0 + d.span_words);
    const int64_t g0 = item.chunk * d.groups_per_chunk, g1 = std::min(groups, g0 + d.groups_per_chunk);
    float* out = d.partial.data_ptr<float>() + item.chunk * d.args.M * d.args.N;
    if (d.vector) decode_avx512(d.args, w0, w1, g0, g1, out);
    else if (d.avx2) decode_avx2(d.args, w0, w1, g0, g1, out);
    else if (d.neon) decode_neon(d.args, w0, w1, g0, g1, out);
    else decode_scalar(d.args, d.scale_dtype, w0, w1, g0, g1, out);
  };
  const int64_t n = static_cast<int64_t>(items.size());
  const int64_t threads = std::min<int64_t>(n, at::get_num_threads());
  if (threads <= 1) {
    for (const Item& item : items) run_item(item);
  } else {
    std::atomic<int64_t> next{0};
    at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
      for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) run_item(items[i]);
    });
  }
  for (DecodeJob& d : jobs) {
    if (d.direct) continue;
    const int64_t MN = d.args.M * d.args.N, chunks = d.chunks;
    const float* pp = d.partial.data_ptr<float>();
    void* out = d.y.data_ptr();
    const at::ScalarType out_dtype = d.out_dtype;
    auto finish = [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        float sum = pp[i];
        for (int64_t c = 1; c < chunks; ++c) sum += pp[c * MN + i];  // fixed order: chunk 0, 1, ...
        if (out_dtype == at::kBFloat16) static_cast<at::BFloat16*>(out)[i] = static_cast<at::BFloat16>(sum);
        else if (out_dtype == at::kHalf) static_cast<at::Half*>(out)[i] = static_cast<at::Half>(sum);
        else static_cast<float*>(out)[i] = sum;
      }
    };
    // A small output is not worth waking the other threads for (a parallel region costs several us).
    if (MN * chunks < kSerialFinishFloats) finish(0, MN);
    else at::parallel_for(0, MN, 4096, finish);
  }
}

// The ISA tier for a call: `vector` is AVX-512 (decode + both prefill micro-kernels), `avx2` the AVX2 decode
// loop and fp32 prefill, `neon` the NEON ones. The vector kernels read float16 scales; other scale dtypes take
// the scalar kernels.
struct Tier {
  bool vector, avx2, neon;
};
Tier tier_for(Isa isa, const at::Tensor& scales) {
  const bool half = scales.scalar_type() == at::kHalf;
  return {isa == Isa::kAvx512 && half, isa == Isa::kAvx2 && half, isa == Isa::kNeon && half};
}

}  // namespace

at::Tensor awq_gemm_cpu(const at::Tensor& x_in, const at::Tensor& qweight_in, const at::Tensor& qzeros_in,
                        const at::Tensor& scales_in, int64_t group_size) {
  check_arguments(x_in, qweight_in, qzeros_in, scales_in, group_size);
  const at::Tensor x = x_in.contiguous(), qweight = qweight_in.contiguous(), qzeros = qzeros_in.contiguous(),
                   scales = scales_in.contiguous();
  const int64_t M = x.size(0), K = qweight.size(0), words = qweight.size(1), N = 8 * words, G = group_size;
  at::Tensor y = at::empty({M, N}, x.options());
  if (M == 0) return y;

  const auto [vector, avx2, neon] = tier_for(choose_isa(), scales);
  const bool prefill = use_prefill(M, x.scalar_type(), vector, avx2, neon);
  if (!prefill) {
    std::vector<DecodeJob> jobs{plan_decode(x, qweight, qzeros, scales, G, y, vector, avx2, neon)};
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
  if (vector && bf16 &&
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
  if ((vector && !bf16) || avx2) {
    at::Tensor yf = x.scalar_type() == at::kFloat ? y : at::empty({M, N}, xf.options());
    if (vector ? prefill_fp32_avx512(args, yf.data_ptr<float>()) : prefill_fp32_avx2(args, yf.data_ptr<float>())) {
      if (!yf.is_same(y)) y.copy_(yf);
      return y;
    }
  }
  // NEON (ARM64): every dtype as fp32, like AVX2. Its kernel is single-threaded (awq_gemm.h): threads take
  // column blocks here, which changes no bit.
  if (neon) {
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
      if (vector) dequant_tile_avx512(args, w0, w1, tile_view.data_ptr(), bf16);
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
    const Tier tier = tier_for(isa, scale);
    if (x.size(0) == 0 || use_prefill(x.size(0), x.scalar_type(), tier.vector, tier.avx2, tier.neon)) {
      ys[i] = awq_gemm_cpu(x, qweights[i], qzeros[i], scale, group_sizes[i]);
      continue;
    }
    ys[i] = at::empty({x.size(0), 8 * qweights[i].size(1)}, x.options());
    for (const at::Tensor& t : {x, qweights[i].contiguous(), qzeros[i].contiguous(), scale}) alive.push_back(t);
    const size_t k = alive.size();
    jobs.push_back(plan_decode(alive[k - 4], alive[k - 3], alive[k - 2], alive[k - 1], group_sizes[i], ys[i],
                               tier.vector, tier.avx2, tier.neon));
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
