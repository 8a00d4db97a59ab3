// prefill_amx.cpp - the bf16 prefill kernel on AMX tiles: y[M, N] = x[M, K] @ W^T, W^T dequantized from AWQ int4
// straight into the layout the tile multiply reads (driver: awq_gemm.cpp; contract: awq_gemm.h).
//
// ---- What AMX is, in the three facts this file needs -------------------------------------------------------
// An AMX core has 8 "tile" registers tmm0..tmm7, each up to 16 rows of 64 bytes (1 KB), and one multiply:
//
//     tdpbf16ps C, A, B:   C[16 x 16 fp32] += A[16 x 32 bf16] . B[32 x 16 bf16]     (16 x 16 x 32 = 8192 MACs)
//
// 1. A is plain row-major: row m = 32 consecutive bf16 of x (k .. k+31 of row m). A slice of x already is one.
// 2. B is NOT row-major [32 k][16 n]. It is "VNNI" (pair-interleaved): its row r holds, for each column n, the
//    pair (W^T[2r, n], W^T[2r+1, n]) as one 32-bit lane (low half = the even k). So one 64-byte B row holds
//    16 columns x 2 rows k. Bytes of B row r:  [w(2r,0) w(2r+1,0)] [w(2r,1) w(2r+1,1)] ... [w(2r,15) w(2r+1,15)].
//    The hardware pairs A row m's halves 2r, 2r+1 with B row r's lane n: C[m, n] += sum_r (x x w + x x w).
// 3. Tiles are configured (rows, bytes per row) with ldtilecfg, per thread; Linux must first grant the process
//    the right to use the 8 KB of tile state (arch_prctl, see amx_usable()), and the state is dropped with
//    tilerelease when a thread is done.
//
// ---- Why a kernel of our own ----------------------------------------------------------------------------------
// The fallback (awq_gemm.cpp) dequantizes W^T to a row-major bf16 tile and calls torch's GEMM; oneDNN then
// repacks that tile into VNNI before its own AMX loop, so the weights are written and re-read twice; that path
// reached 0.60-0.69x of torch's bf16 GEMM on pre-dequantized weights (issue #6). Here the nibbles are dequantized
// directly into VNNI: two rows k, k+1 of one block of 16 packed words (128 channels) become 8 B-tile rows, one
// per nibble, because nibble i of 16 words is 16 channels = the 16 columns of one B tile. The 128 columns of a
// block are therefore computed in "packed order" (awq_gemm.h): tile column t = nibble t, column l of it =
// channel 8 (w0 + l) + ORDER[t]. The output is un-permuted once, when it is written (write_rows).
//
// ---- Numbers: same as the fallback -------------------------------------------------------------------------------
// Each weight is the exact fp32 (q - z) s (one FMA: 16 s (1 + q/16) - (16 + z) s, see dequant_tile_avx512),
// rounded once to bf16 (vcvtne2ps2bf16: round to nearest even), products accumulated in fp32 by the tiles, the
// sum rounded once to bf16 at the end. Different summation order than oneDNN, so not bit-identical to the
// fallback, but equally close to the fp32 reference (tests/test_kernels.py, tests/test_prefill_amx.py).
//
// ---- Blocking: where the bytes go (per core: 48 KB L1, 2 MB L2) ------------------------------------------------
// Threads split the N/128 column blocks (never K). A thread takes its blocks kGroupBlocks = 4 at a time
// (512 channels) and walks K in chunks of kChunkRows = 512 rows:
//   1. dequantize the chunk of the 4 blocks into 4 per-thread VNNI buffers (512 x 128 bf16 = 128 KB each), reading
//      qweight a row at a time: 4 x 64 = 256 contiguous bytes per row. (One block at a time reads 64 bytes per
//      row, N/2 bytes apart, a new page almost every row: measured, the dequantization then waited on memory
//      and TLB most of the time; 4 blocks at once made the M = 16 case, which this step dominates, 15-30%
//      faster.) A buffer is laid out tile after tile, [tile column t (8)][k block (16)][16 pair rows][32 halves],
//      so every B tile is one contiguous 1 KB.
//   2. for each block, for each 32 rows of x, for each pair of tile columns: a 2 x 2 register tile (C = tmm0..3,
//      32 rows x 32 columns of fp32) runs down the chunk, 2 A loads + 2 B loads per 4 multiplies, and C goes to
//      the block's fp32 accumulator [Mp, 128] (loaded back for the next chunk; written out after the last).
//      Per chunk the A tiles of 32 rows (32 KB) are reused by the 4 column pairs, the B chunk (128 KB) by every
//      32 rows of x: all of it L2-resident.
// x is first copied once (all threads share it) into the A-tile layout [16-row block][k block][16][32], zero
// padded to multiples of 16 rows and 32 columns. Every A tile is then one contiguous 1 KB; read straight from x
// instead, a tile's 16 rows sit K * 2 bytes apart (a power of two at the real shapes), all in the same L1 set,
// and the tile loops of M = 256, K = N = 4096 took about 11 ms instead of 6 (separate, noisy runs). The padding
// also makes the M and K remainders free: padding rows of x give output rows nobody reads; padding k has x = 0
// and W = 0, both true zeros (0 x garbage could be NaN).
// K is summed in the same order (chunk after chunk, k block after k block) whatever the thread count and
// whatever group a block falls in, so results are bit-identical for any thread count.
#include "awq_gemm.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

// Same false positives from GCC 12's own AVX-512 headers as in awq_gemm_avx512.cpp (their _mm512_undefined_*
// placeholders; here some surface as -Wuninitialized).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#include <ATen/Parallel.h>
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <utility>

#include "avx512_inl.h"

#define MINIMOE_AMX __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma")))

namespace minimoe {
namespace cpu {
namespace {
using namespace avx512;  // nibble_as_one_plus_q16, load_scales_packed, load_zeros_packed, lanes_of

constexpr int64_t kTileK = 32;              // bf16 values of k per A row / per B column pair row x 2
constexpr int64_t kTileRows = 16;           // rows of every tile used here
constexpr int64_t kTileHalves = 16 * 32;    // one 1 KB tile of bf16
constexpr int64_t kChunkRows = 512;         // rows of W^T dequantized at a time (a multiple of kTileK)

// ---- may this process use AMX? ---------------------------------------------------------------------------------
// CPU: cpuid leaf 7 EDX bit 24 (AMX-TILE), bit 22 (AMX-BF16); leaf 7 subleaf 1 EAX bit 5 (AVX512-BF16, for
// vcvtne2ps2bf16); the AVX-512 bits through __builtin_cpu_supports, which also checks that the OS saves zmm state.
// OS: tile data is 8 KB of extra per-thread state, so Linux (5.16+) hands it out only on request, once per
// process: arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA). Without that grant the first tile instruction
// kills the process with SIGILL; an older kernel, or one that does not enable AMX, refuses the request.
constexpr int kArchReqXcompPerm = 0x1023;
constexpr int kXfeatureXtiledata = 18;

bool ask_amx() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
  const bool amx_tile = (edx >> 24) & 1u, amx_bf16 = (edx >> 22) & 1u;
  if (!amx_tile || !amx_bf16 || eax < 1) return false;  // eax of subleaf 0 = highest subleaf
  __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx);
  const bool avx512_bf16 = (eax >> 5) & 1u;
  if (!avx512_bf16 || !avx512_available()) return false;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}

bool amx_usable() {
  static const bool usable = ask_amx();  // asked once per process (thread-safe static initialisation)
  return usable;
}

// ---- tile configuration ------------------------------------------------------------------------------------------
// The 64-byte operand of ldtilecfg: palette 1 (the only one: 8 tiles of up to 16 x 64 B), then bytes per row of
// each tile (uint16 at byte 16 + 2t), rows of each tile (uint8 at byte 48 + t). All 8 tiles here are 16 x 64 B:
// C = 16 rows x 16 fp32, A = 16 rows x 32 bf16, B = 16 pair rows x 16 columns x 2 bf16.
struct alignas(64) TileConfig {
  uint8_t palette_id = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
static_assert(sizeof(TileConfig) == 64, "ldtilecfg reads exactly 64 bytes");

TileConfig make_tile_config() {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = kTileRows;
  }
  return cfg;
}

// ---- permutation tables ------------------------------------------------------------------------------------------
struct Permutations {
  // vpermw: halves [a0..a15, b0..b15] -> [a0 b0 a1 b1 ... a15 b15] (two rows k -> 16 VNNI lanes).
  alignas(64) uint16_t interleave[32];
  // vpermt2d: dwords [p0..p15] [q0..q15] -> [p0 q0 p1 q1 .. p7 q7] (low) or [p8 q8 .. p15 q15] (high).
  alignas(64) uint32_t zip[2][16];
  // vpermt2d: from zip(Q0, Q1) (.., 2l + p, ..) and zip(Q2, Q3) (16 + 2l + p - 2): the 4 pairs of each of 4 words
  // in channel order, words 0..3 (half 0) or 4..7 (half 1) of the 8 words the two zips hold.
  alignas(64) uint32_t words4[2][16];
  Permutations() {
    for (int l = 0; l < 16; ++l) {
      interleave[2 * l] = static_cast<uint16_t>(l);
      interleave[2 * l + 1] = static_cast<uint16_t>(16 + l);
    }
    for (int h = 0; h < 2; ++h)
      for (int d = 0; d < 16; ++d) {
        zip[h][d] = static_cast<uint32_t>(8 * h + d / 2 + 16 * (d % 2));
        const int l = 4 * h + d / 4, p = d % 4;
        words4[h][d] = static_cast<uint32_t>(p < 2 ? 2 * l + p : 16 + 2 * l + p - 2);
      }
  }
};
inline const Permutations kPerm;

// ---- dequantization into VNNI B tiles --------------------------------------------------------------------------
// Per group and block, in packed order: 16 s and (16 + z) s, so that a weight is fmsub(1 + q/16, 16 s, (16 + z) s).
struct GroupTable {
  alignas(64) float s16[kBlockChannels];
  alignas(64) float zs[kBlockChannels];
  int64_t group = -1;
};

// Padding rows (k >= K) use this table and no words: (1 + 0/16) * 0 - 0 = +0 exactly.
inline const GroupTable kZeroTable{};

MINIMOE_AMX void fill_group_table(const AwqGemmArgs& a, int64_t w0, int64_t block_words, int64_t g,
                                  GroupTable& t) {
  const int64_t words = a.N / 8;
  __m512 s[8], z[8];
  load_scales_packed(static_cast<const uint16_t*>(a.scales) + g * a.N + 8 * w0, 8 * block_words, s);
  load_zeros_packed(a.qzeros + g * words + w0, lanes_of(block_words), z);
  const __m512 sixteen = _mm512_set1_ps(16.0f);
  for (int i = 0; i < 8; ++i) {
    _mm512_store_ps(t.s16 + 16 * i, _mm512_mul_ps(s[i], sixteen));
    _mm512_store_ps(t.zs + 16 * i, _mm512_mul_ps(_mm512_add_ps(z[i], sixteen), s[i]));  // exact: 5 x 11 bits
  }
  t.group = g;
}

// Nibble I of the words of rows k (even) and k + 1 (odd): 16 channels of both rows, exact fp32 (one FMA:
// 16 s (1 + q/16) - (16 + z) s = (q - z) s; lanes past the block's words have s = z = 0 and give 0), then
// vcvtne2ps2bf16 rounds both to bf16 (round to nearest even; low 16 halves = row k, high 16 = row k + 1) and
// vpermw interleaves them into (row k, row k + 1) per column: one 64-byte row of B tile column I, VNNI.
template <int I>
MINIMOE_AMX inline void pair_nibble(__m512i even_words, __m512i odd_words, const GroupTable& te, const GroupTable& to,
                                    __m512i interleave, uint16_t* dst) {
  const __m512 even = _mm512_fmsub_ps(nibble_as_one_plus_q16<I>(even_words), _mm512_load_ps(te.s16 + 16 * I),
                                      _mm512_load_ps(te.zs + 16 * I));
  const __m512 odd = _mm512_fmsub_ps(nibble_as_one_plus_q16<I>(odd_words), _mm512_load_ps(to.s16 + 16 * I),
                                     _mm512_load_ps(to.zs + 16 * I));
  const __m512i halves = (__m512i)_mm512_cvtne2ps_pbh(odd, even);
  _mm512_store_si512(dst, _mm512_permutexvar_epi16(interleave, halves));
}

// All 8 nibbles (the rotate counts must be immediates, hence a fold over a function template; lambdas would
// not inherit the target attribute).
template <int... I>
MINIMOE_AMX inline void pair_all_nibbles(__m512i even_words, __m512i odd_words, const GroupTable& te,
                                         const GroupTable& to, uint16_t* dst, int64_t tile_column_halves,
                                         std::integer_sequence<int, I...>) {
  const __m512i interleave = _mm512_load_si512(kPerm.interleave);
  (pair_nibble<I>(even_words, odd_words, te, to, interleave, dst + I * tile_column_halves), ...);
}

// A thread dequantizes its blocks in groups of up to kGroupBlocks neighbours at once, row by row: a row of a group
// is 4 x 64 = 256 contiguous bytes of qweight. With one block (64 bytes) per row, every row of qweight (N/2 bytes
// apart: a new 4 KB page each row at N = 14336) cost a TLB walk and a memory latency for 64 bytes; measured,
// that made the dequantization memory-latency bound (the loads and prefetches took most of its time).
constexpr int64_t kGroupBlocks = 4;

// How far ahead (rows of qweight) the dequantization prefetches. The rows of a group are a different page each
// (or every few) rows, which the hardware prefetchers do not follow.
constexpr int64_t kPrefetchRows = 24;

// The group table of `slots` for group g of the block at word w0 (two slots, by parity: rows k and k + 1 can
// fall in consecutive groups when G is odd).
MINIMOE_AMX inline const GroupTable& table_for(const AwqGemmArgs& a, int64_t w0, int64_t block_words, int64_t g,
                                                GroupTable (&slots)[2]) {
  GroupTable& t = slots[g & 1];
  if (t.group != g) fill_group_table(a, w0, block_words, g, t);
  return t;
}

// Rows k_begin .. k_end of W^T (a multiple of 32 apart, k_begin < K; rows >= K are zeros) for blocks
// w0 / 16 .. w0 / 16 + blocks - 1, into b[block]: [tile column (8)][k block (kbc)][pair row (16)][32 halves].
// So B tile (column t, k block kb) of a block is the 1 KB at b[block] + (t * kbc + kb) * 512 halves.
MINIMOE_AMX void dequant_chunk(const AwqGemmArgs& a, int64_t w0, int64_t blocks, int64_t k_begin, int64_t k_end,
                               GroupTable (*tables)[2], uint16_t* const* b) {
  const int64_t words = a.N / 8, kbc = (k_end - k_begin) / kTileK;
  const int64_t group_words = std::min(blocks * kBlockWords, words - w0);
  int64_t group = k_begin / a.G, group_end = (group + 1) * a.G;  // no division per row
  for (int64_t k = k_begin; k < k_end; k += 2) {
    for (int64_t row = k + kPrefetchRows; row < k + kPrefetchRows + 2 && row < a.K; ++row)
      for (int64_t w = 0; w < group_words; w += 16)
        _mm_prefetch(reinterpret_cast<const char*>(a.qweight + row * words + w0 + w), _MM_HINT_T0);
    const bool even_real = k < a.K, odd_real = k + 1 < a.K;
    while (k >= group_end) ++group, group_end += a.G;
    const int64_t even_group = group;
    while (k + 1 >= group_end) ++group, group_end += a.G;
    const int64_t odd_group = group;
    const int64_t r = (k - k_begin) / 2;  // pair row within the chunk
    const int64_t offset = (r / kTileRows) * kTileHalves + (r % kTileRows) * 32;
    for (int64_t i = 0; i < blocks; ++i) {
      const int64_t bw0 = w0 + i * kBlockWords, block_words = std::min(kBlockWords, words - bw0);
      const __mmask16 lanes = lanes_of(block_words);
      const GroupTable& te = even_real ? table_for(a, bw0, block_words, even_group, tables[i]) : kZeroTable;
      const GroupTable& to = odd_real ? table_for(a, bw0, block_words, odd_group, tables[i]) : kZeroTable;
      const __m512i even_words = _mm512_maskz_loadu_epi32(even_real ? lanes : 0, a.qweight + k * words + bw0);
      const __m512i odd_words = _mm512_maskz_loadu_epi32(odd_real ? lanes : 0, a.qweight + (k + 1) * words + bw0);
      pair_all_nibbles(even_words, odd_words, te, to, b[i] + offset, kbc * kTileHalves,
                       std::make_integer_sequence<int, 8>{});
    }
  }
}

// ---- the tile loops ---------------------------------------------------------------------------------------------
// Tiles: 0..3 = C (2 x 2: rows m0 / m0+16 x columns t / t+1), 4, 5 = A (the two 16-row blocks of x), 6, 7 = B.
// A and B tiles are 1 KB each, k blocks one after the other. c points at the accumulator [rows][128] fp32
// (512-byte rows) at row m0, column 16 t. Loads are interleaved with the multiplies so operands are requested
// early. kTwoRows = false is the 1 x 2 case (C = 0, 1; A = 4; a1 unused) for the last 16 rows when the padded
// M is an odd number of 16-row blocks. (Tile numbers must be immediates, hence the template, not a loop.)
template <bool kTwoRows>
MINIMOE_AMX void tiles_x2(const uint16_t* a0, const uint16_t* a1, const uint16_t* b0, const uint16_t* b1,
                          int64_t kbs, float* c, bool first) {
  constexpr int64_t kCStride = kBlockChannels * sizeof(float);
  float* c1 = c + 16 * kBlockChannels;  // C rows m0 + 16 ..
  if (first) {
    _tile_zero(0);
    _tile_zero(1);
    if constexpr (kTwoRows) {
      _tile_zero(2);
      _tile_zero(3);
    }
  } else {
    _tile_loadd(0, c, kCStride);
    _tile_loadd(1, c + 16, kCStride);
    if constexpr (kTwoRows) {
      _tile_loadd(2, c1, kCStride);
      _tile_loadd(3, c1 + 16, kCStride);
    }
  }
  for (int64_t kb = 0; kb < kbs; ++kb) {
    _tile_loadd(4, a0 + kb * kTileHalves, 64);
    _tile_loadd(6, b0 + kb * kTileHalves, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_loadd(7, b1 + kb * kTileHalves, 64);
    _tile_dpbf16ps(1, 4, 7);
    if constexpr (kTwoRows) {
      _tile_loadd(5, a1 + kb * kTileHalves, 64);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
  }
  _tile_stored(0, c, kCStride);
  _tile_stored(1, c + 16, kCStride);
  if constexpr (kTwoRows) {
    _tile_stored(2, c1, kCStride);
    _tile_stored(3, c1 + 16, kCStride);
  }
}

// ---- output: packed order fp32 -> channel order bf16 ------------------------------------------------------------
// acc row (128 fp32, packed order: P_i lane l = channel 8l + ORDER[i]) -> y[m, 8 w0 ..] in channel order.
// Channel 8l + 2p is nibble p, channel 8l + 2p + 1 is nibble p + 4 (ORDER = 0 2 4 6 1 3 5 7). So
//   Q_p = interleave(bf16(P_p), bf16(P_{p+4})): dword l = channels (8l + 2p, 8l + 2p + 1) = output dword 4l + p,
// and a 4 x 16 dword transpose (two rounds of vpermt2d) puts output dwords 4l + p in order: 16 shuffles per 128
// outputs instead of 128 scalar moves.
MINIMOE_AMX void write_rows(const float* acc, int64_t rows, uint16_t* y, int64_t N, int64_t w0,
                            int64_t block_words) {
  const __m512i interleave = _mm512_load_si512(kPerm.interleave);
  const __m512i zip_lo = _mm512_load_si512(kPerm.zip[0]), zip_hi = _mm512_load_si512(kPerm.zip[1]);
  const __m512i words_lo = _mm512_load_si512(kPerm.words4[0]), words_hi = _mm512_load_si512(kPerm.words4[1]);
  __mmask32 mask[4];
  for (int q = 0; q < 4; ++q) {
    const int64_t valid = std::clamp<int64_t>(8 * block_words - 32 * q, 0, 32);  // halves of output vector q
    mask[q] = valid == 32 ? ~__mmask32(0) : ((__mmask32(1) << valid) - 1);
  }
  for (int64_t m = 0; m < rows; ++m) {
    const float* p = acc + m * kBlockChannels;
    __m512i q[4];
    for (int i = 0; i < 4; ++i) {
      const __m512i pair = (__m512i)_mm512_cvtne2ps_pbh(_mm512_load_ps(p + 16 * (i + 4)), _mm512_load_ps(p + 16 * i));
      q[i] = _mm512_permutexvar_epi16(interleave, pair);
    }
    const __m512i q01_lo = _mm512_permutex2var_epi32(q[0], zip_lo, q[1]);  // words 0..7, pairs 0, 1
    const __m512i q01_hi = _mm512_permutex2var_epi32(q[0], zip_hi, q[1]);  // words 8..15
    const __m512i q23_lo = _mm512_permutex2var_epi32(q[2], zip_lo, q[3]);
    const __m512i q23_hi = _mm512_permutex2var_epi32(q[2], zip_hi, q[3]);
    uint16_t* out = y + m * N + 8 * w0;
    _mm512_mask_storeu_epi16(out, mask[0], _mm512_permutex2var_epi32(q01_lo, words_lo, q23_lo));
    _mm512_mask_storeu_epi16(out + 32, mask[1], _mm512_permutex2var_epi32(q01_lo, words_hi, q23_lo));
    _mm512_mask_storeu_epi16(out + 64, mask[2], _mm512_permutex2var_epi32(q01_hi, words_lo, q23_hi));
    _mm512_mask_storeu_epi16(out + 96, mask[3], _mm512_permutex2var_epi32(q01_hi, words_hi, q23_hi));
  }
}

// ---- driver --------------------------------------------------------------------------------------------------
struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
template <typename T>
std::unique_ptr<T[], FreeDeleter> aligned_buffer(int64_t count) {
  const size_t bytes = (static_cast<size_t>(count) * sizeof(T) + 63) / 64 * 64;
  return std::unique_ptr<T[], FreeDeleter>(static_cast<T*>(std::aligned_alloc(64, bytes)));
}

struct Problem {
  const AwqGemmArgs* a;
  const uint16_t* xp;  // x in A-tile layout [Mp / 16][Kp / 32][16 rows][32 halves], zero padded
  uint16_t* y;
  int64_t Mp, Kp;      // M, K rounded up to 16 and 32
  int64_t chunk;       // rows of W^T per dequantized chunk (a multiple of 32)
  // The A tile of rows 16 mb .. 16 mb + 15, columns 32 kb .. 32 kb + 31 of x: 1 KB, contiguous.
  const uint16_t* a_tile(int64_t mb, int64_t kb) const { return xp + (mb * (Kp / kTileK) + kb) * kTileHalves; }
};

// acc[0 .. Mp) x 128 (+)= x[:, k_begin .. k_begin + 32 kbc) @ (the chunk of one block in b), all rows of x; the
// last chunk also writes the block's columns of y. Order: 32 rows of x, then pairs of tile columns, then k.
MINIMOE_AMX void multiply_chunk(const Problem& p, const uint16_t* b, int64_t kbc, int64_t k_begin, float* acc,
                                bool first_chunk, bool last_chunk, int64_t w0, int64_t block_words) {
  const int64_t kb0 = k_begin / kTileK;
  for (int64_t m0 = 0; m0 < p.Mp; m0 += 32) {
    const int64_t mb = m0 / 16;
    float* c = acc + m0 * kBlockChannels;
    for (int64_t t = 0; t < 8; t += 2) {
      const uint16_t* b0 = b + t * kbc * kTileHalves;
      const uint16_t* b1 = b0 + kbc * kTileHalves;
      if (m0 + 32 <= p.Mp)
        tiles_x2<true>(p.a_tile(mb, kb0), p.a_tile(mb + 1, kb0), b0, b1, kbc, c + 16 * t, first_chunk);
      else
        tiles_x2<false>(p.a_tile(mb, kb0), nullptr, b0, b1, kbc, c + 16 * t, first_chunk);
    }
    if (last_chunk) write_rows(c, std::min<int64_t>(32, p.a->M - m0), p.y + m0 * p.a->N, p.a->N, w0, block_words);
  }
}

// Column blocks first .. last (128 channels each) of y, on the calling thread: groups of up to kGroupBlocks
// blocks; per group, K chunk after K chunk: dequantize the chunk of all the group's blocks, then multiply each.
// (Tried and dropped: spreading the next chunk's dequantization over the current tile loops, so that the vector
// units would work while the tile unit multiplies. On this machine it ran no faster at M = 256 and 5-10% slower
// at M = 16 and 32.)
MINIMOE_AMX void run_blocks(const Problem& p, int64_t first, int64_t last) {
  const AwqGemmArgs& a = *p.a;
  constexpr int64_t G = kGroupBlocks;
  auto b_storage = aligned_buffer<uint16_t>(G * p.chunk * kBlockChannels);  // the VNNI chunks, one per block
  auto acc = aligned_buffer<float>(G * p.Mp * kBlockChannels);              // fp32 C between chunks, packed order
  auto tables = std::make_unique<GroupTable[][2]>(G);                      // scales and zeros, per block
  if (!b_storage || !acc) std::abort();  // allocation failure: nothing sensible to return half-way through
  uint16_t* b[G];
  for (int64_t i = 0; i < G; ++i) b[i] = b_storage.get() + i * p.chunk * kBlockChannels;
  static const TileConfig cfg = make_tile_config();
  _tile_loadconfig(&cfg);  // per thread: the tile registers are thread state
  for (int64_t g0 = first; g0 < last; g0 += G) {
    const int64_t blocks = std::min(G, last - g0);
    for (int64_t i = 0; i < blocks; ++i) tables[i][0].group = tables[i][1].group = -1;
    for (int64_t k0 = 0; k0 < p.Kp; k0 += p.chunk) {
      const int64_t k1 = std::min(p.Kp, k0 + p.chunk), kbc = (k1 - k0) / kTileK;
      dequant_chunk(a, g0 * kBlockWords, blocks, k0, k1, tables.get(), b);
      for (int64_t i = 0; i < blocks; ++i) {
        const int64_t w0 = (g0 + i) * kBlockWords;
        multiply_chunk(p, b[i], kbc, k0, acc.get() + i * p.Mp * kBlockChannels, k0 == 0, k1 == p.Kp, w0,
                       std::min(kBlockWords, a.N / 8 - w0));
      }
    }
  }
  _tile_release();
}

// Rows 16 mb0 .. 16 mb1 of x (row-major [M, K]) into the A-tile layout, zeros past K and past M.
void pack_x(const uint16_t* x, int64_t M, int64_t K, int64_t Kp, int64_t mb0, int64_t mb1, uint16_t* xp) {
  const int64_t kbs = Kp / kTileK;
  for (int64_t m = 16 * mb0; m < 16 * mb1; ++m)
    for (int64_t kb = 0; kb < kbs; ++kb) {
      uint16_t* dst = xp + ((m / 16) * kbs + kb) * kTileHalves + (m % 16) * kTileK;
      const int64_t valid = m < M ? std::clamp<int64_t>(K - kb * kTileK, 0, kTileK) : 0;
      if (valid > 0) std::memcpy(dst, x + m * K + kb * kTileK, valid * sizeof(uint16_t));
      if (valid < kTileK) std::memset(dst + valid, 0, (kTileK - valid) * sizeof(uint16_t));
    }
}

}  // namespace

bool amx_available() { return amx_usable(); }

bool prefill_bf16_amx(const AwqGemmArgs& a, const uint16_t* x_bf16, uint16_t* y_bf16) {
  if (!amx_usable()) return false;
  const int64_t Mp = (a.M + 15) / 16 * 16, Kp = (a.K + kTileK - 1) / kTileK * kTileK;
  auto xp = aligned_buffer<uint16_t>(Mp * Kp);
  if (!xp) return false;
  at::parallel_for(0, Mp / 16, 1, [&](int64_t mb0, int64_t mb1) { pack_x(x_bf16, a.M, a.K, Kp, mb0, mb1, xp.get()); });
  const Problem problem{&a, xp.get(), y_bf16, Mp, Kp, std::min(kChunkRows, Kp)};
  const int64_t blocks = (a.N / 8 + kBlockWords - 1) / kBlockWords;
  at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) { run_blocks(problem, first, last); });
  return true;
}

}  // namespace cpu
}  // namespace minimoe

#else  // not x86-64 GCC/Clang: no AMX; the driver falls back to dequantize + torch's GEMM.

namespace minimoe {
namespace cpu {
bool amx_available() { return false; }
bool prefill_bf16_amx(const AwqGemmArgs&, const uint16_t*, uint16_t*) { return false; }
}  // namespace cpu
}  // namespace minimoe

#endif
