// awq_decode_plan.cpp - the decode path of minimoe::awq_gemm / awq_gemm_many: how one or several products are
// cut into work items for the threads, run, and summed (driver: awq_gemm.cpp; kernels: decode_* in awq_gemm.h).
//
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
//
// Measurements behind the constants below: docs/kernels-cpu.md ("Decode: where the bytes go").
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include "awq_gemm_driver.h"

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
// slab of whole rows each rather than a half of every row each (measured faster, counting the extra pass that
// adds the two partials).
inline int64_t decode_k_chunks(int64_t groups) { return std::clamp<int64_t>(groups / 8, std::min<int64_t>(groups, 2), 8); }
// Decode wants at least one work item per thread, so that a layer with few chunks still gives every thread
// something to do; when the K chunks alone are fewer than the threads, the columns are cut into spans as well,
// but no more than that: a thread's row segments should stay long (256-byte segments measured 15-20% slower
// than 896-byte ones). Spans change no result, so they may depend on the thread count; chunks may not.
// Below this many floats of partial sums, decode adds them up on the calling thread.
constexpr int64_t kSerialFinishFloats = 64 * 1024;

}  // namespace

DecodeJob plan_decode(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& qzeros, const at::Tensor& scales,
                      int64_t G, at::Tensor y, Isa isa) {
  DecodeJob job;
  const int64_t M = x.size(0), K = qweight.size(0), words = qweight.size(1), N = 8 * words, groups = K / G;
  job.y = y;
  job.out_dtype = x.scalar_type();
  job.scale_dtype = scales.scalar_type();
  job.isa = isa;
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
    switch (d.isa) {
      case Isa::kAvx512: decode_avx512(d.args, w0, w1, g0, g1, out); break;
      case Isa::kAvx2: decode_avx2(d.args, w0, w1, g0, g1, out); break;
      case Isa::kNeon: decode_neon(d.args, w0, w1, g0, g1, out); break;
      default: decode_scalar(d.args, d.scale_dtype, w0, w1, g0, g1, out);
    }
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

}  // namespace cpu
}  // namespace minimoe
