# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · The int4 kernel and its roofline
#
# Decoding one token multiplies a single activation row by every weight matrix: a GEMV. Each int4 weight is
# used for exactly one multiply-add, so the time goes into *reading* the weights, not into arithmetic. This
# tutorial
#
# 1. writes the int4 GEMV the way a CPU kernel organises it (unpack nibbles with shifts and masks, work one
#    group at a time, pull the zero point out of the inner loop), in plain PyTorch,
# 2. checks it against the spec (`minimoe.awq.awq_linear_reference`) and the compiled op (`minimoe.ops.awq_gemm`),
# 3. times them and puts the numbers on a roofline: what is the fastest this machine could possibly go?
#
# Timings here are from whatever machine runs this file, at a small shape, for orientation only;
# `benchmarks/` holds the real measurements. The pages: docs/kernels.md, docs/kernels-cpu.md.

# %%
import time

import torch

from minimoe import awq, ops
from minimoe.testing import CONFINUS_SHAPE

torch.manual_seed(0)

# %% [markdown]
# ## A group-at-a-time int4 GEMV
#
# With $x$ one row, group g of G inputs, codes $q$, zero $z$ and scale $s$ per (group, output):
#
# $$ y_n = \sum_g s_{g,n} \sum_{k \in g} x_k (q_{k,n} - z_{g,n})
#        = \sum_g s_{g,n} \Big( \underbrace{\sum_{k \in g} x_k\, q_{k,n}}_{\text{integer codes only}}
#          - z_{g,n} \underbrace{\sum_{k \in g} x_k}_{\text{once per group}} \Big) $$
#
# The inner sum touches only the 4-bit codes; the zero point costs one multiply per group and output. This is
# how llama.cpp organises its quantized dot products; docs/kernels-cpu.md describes minimoe's own CPU kernel.

# %%
ORDER = torch.tensor([0, 2, 4, 6, 1, 3, 5, 7])                      # nibble i holds channel 8c + ORDER[i]


def unpack_words(words: torch.Tensor) -> torch.Tensor:
    """int32 [R, N/8] -> codes [R, N] as float32, by shift-and-mask (no lookup tables)."""
    R, C = words.shape
    out = torch.empty(R, C, 8)
    for nibble in range(8):
        out[:, :, ORDER[nibble]] = ((words >> (4 * nibble)) & 0xF).float()   # mask: words may be negative
    return out.reshape(R, C * 8)


def int4_gemv(x: torch.Tensor, qweight, qzeros, scales, group_size: int) -> torch.Tensor:
    """x [K] fp32 -> y [N] fp32, one group of K at a time."""
    K = qweight.shape[0]
    zeros = unpack_words(qzeros)                                     # [K/G, N]
    y = torch.zeros(scales.shape[1])
    for g in range(K // group_size):
        rows = slice(g * group_size, (g + 1) * group_size)
        codes = unpack_words(qweight[rows])                          # [G, N]: only this group's weights
        xg = x[rows]
        y += scales[g].float() * (xg @ codes - zeros[g] * xg.sum())
    return y


K, N, G = 2048, 2048, 128
qweight, qzeros, scales = awq.quantize(torch.randn(N, K) * K ** -0.5, group_size=G)
x = torch.randn(K)

ours = int4_gemv(x, qweight, qzeros, scales, G)
reference = awq.awq_linear_reference(x[None], qweight, qzeros, scales, G)[0]
compiled = ops.awq_gemm(x[None], qweight, qzeros, scales, G)[0]
torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)
torch.testing.assert_close(compiled, reference, rtol=1e-4, atol=1e-4)
print(f"group-at-a-time GEMV == reference == ops.awq_gemm (backend on this machine: '{ops.awq_backend('cpu')}')")

# %% [markdown]
# ## Timing, and what the memory allows
#
# First a rough measure of this machine's read bandwidth (summing a 128 MB tensor reads every byte once),
# then each implementation's time and the bandwidth it achieves on the weight bytes.

# %%
def best_time(fn, repeats: int) -> float:
    fn()                                                              # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


big = torch.ones(32 * 2**20)                                          # 128 MB of fp32
bandwidth = big.numel() * 4 / best_time(big.sum, 5)
print(f"this machine reads about {bandwidth / 1e9:.1f} GB/s with torch.sum ({torch.get_num_threads()} threads)")

weight_bytes = qweight.numel() * 4 + qzeros.numel() * 4 + scales.numel() * 2
floor = weight_bytes / bandwidth
print(f"\nGEMV 1 x {K} @ {K} x {N}: {weight_bytes / 1e6:.2f} MB of int4 weights, scales and zeros;"
      f" memory floor {floor * 1e3:.3f} ms")
rows = [("ops.awq_gemm", lambda: ops.awq_gemm(x[None], qweight, qzeros, scales, G), 20),
        ("group-at-a-time (this file)", lambda: int4_gemv(x, qweight, qzeros, scales, G), 2),
        ("awq_linear_reference", lambda: awq.awq_linear_reference(x[None], qweight, qzeros, scales, G), 2)]
print(f"{'implementation':<30}{'ms':>9}{'GB/s':>8}{'x floor':>9}")
for name, fn, repeats in rows:
    seconds = best_time(fn, repeats)
    print(f"{name:<30}{seconds * 1e3:>9.3f}{weight_bytes / seconds / 1e9:>8.2f}{seconds / floor:>9.1f}")

# %% [markdown]
# ## The roofline
#
# A kernel is bounded by $\min(\text{peak FLOP/s},\ \text{bandwidth} \times I)$ where the arithmetic
# intensity $I$ is FLOPs per byte read. An int4 GEMV does 2 FLOPs per weight and reads half a byte per
# weight: $I \approx 4$. At M tokens at once (prefill, or a batch) the same bytes serve M rows: $I \approx 4M$,
# until the compute roof takes over. docs/figures/roofline_cpu.svg draws this for the development machine.

# %%
def int4_cost(m: int, k: int, n: int, group: int) -> tuple[float, float]:
    flops = 2.0 * m * k * n
    nbytes = k * n / 2 + (k // group) * n * 2.5 + 2.0 * m * (k + n)     # codes, fp16 scales + int4 zeros, x and y
    return flops, nbytes


for m in (1, 8, 64):
    flops, nbytes = int4_cost(m, 4096, 14336, 128)
    print(f"Confinus expert w1 (4096 -> 14336), M = {m:>2}: intensity {flops / nbytes:6.1f} FLOP/byte,"
          f" memory floor {nbytes / bandwidth * 1e3:6.2f} ms at this machine's bandwidth")

# %% [markdown]
# ## What to look at: the floor for a whole decoded token
#
# Every decoded token of Confinus-2x7B reads every int4 linear of every layer (both experts are always
# chosen), plus the router, the norms, one embedding row and the whole lm_head. Summing the shapes:

# %%
c = CONFINUS_SHAPE
C, I, L, V, G = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"], c["group_size"]
kv = c["num_key_value_heads"] * C // c["num_attention_heads"]


def awq_bytes(k: int, n: int) -> float:
    return k * n / 2 + (k // G) * n * 2.5


attention = awq_bytes(C, C) * 2 + awq_bytes(C, kv) * 2                # q, o and k, v
experts = c["num_local_experts"] * (2 * awq_bytes(C, I) + awq_bytes(I, C))
small = c["num_local_experts"] * C * 2 + 2 * C * 2                     # router and the two norms, fp16
per_token = L * (attention + experts + small) + C * 2 + C * 2 + V * C * 2   # + embedding row, final norm, lm_head
print(f"bytes read per decoded token: {per_token / 1e9:.2f} GB")
assert abs(per_token / 1e9 - 6.8) < 0.1                                 # docs/facts.md#bandwidth: "about 6.8 GB"
print(f"floor on this machine: {per_token / bandwidth:.2f} s per token = {bandwidth / per_token:.1f} tokens/s"
      " (an upper bound from bandwidth alone, not a measurement)")
for name, bw in (("H200 datasheet 4.8 TB/s", 4.8e12), ("H200 measured device copy ~4.3 TB/s", 4.3e12)):
    print(f"{name}: floor {per_token / bw * 1e3:.2f} ms per token = {bw / per_token:.0f} tokens/s at batch 1")
