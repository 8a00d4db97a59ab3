"""Benchmark the CPU decode attention (torch.ops.minimoe.decode_attention) against the PyTorch code it replaces.

    .venv/bin/python benchmarks/attention_cpu.py            # ~1 minute on 2 cores
    .venv/bin/python benchmarks/attention_cpu.py --quick    # one head shape, two context lengths

One new token's attention over L cached tokens, batch 1, for the mid-size model's heads (16 query, 4 kv, D = 64) and
Confinus-2x7B's (32 query, 8 kv, D = 128), caches in bf16 and fp32, L = 160, 1000 and 4000. Interleaved call by
call, so that machine noise hits both alike:
    ours     ops.decode_attention: RoPE on q and k, the cache write and the attention of every head, one call
    torch    the same step in the PyTorch lines of model.Attention.forward (RoPE, cache write, grouped matmul,
             mask, fp32 softmax, matmul), which is what runs where the op does not
and the floor measured in the same run: the bytes of keys and values the step must read, over the read bandwidth.
The caches are cold, as in a real step where every layer's cache and gigabytes of weights stream by between two
visits: each call uses the next of several copies of the cache, together at least 768 MB (at most 512 copies).
Times are medians. Ratios > 1 mean the op is faster.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from minimoe import ops  # noqa: E402
from minimoe.model import apply_rope, grouped_attention  # noqa: E402
from floors import read_bandwidth  # noqa: E402  (benchmarks/floors.py)
from kernel_cpu import machine_description  # noqa: E402  (benchmarks/kernel_cpu.py)
from report import write_json  # noqa: E402  (benchmarks/report.py)

HEADS = {"mid-size (16 / 4, D 64)": (16, 4, 64), "Confinus (32 / 8, D 128)": (32, 8, 128)}
LENGTHS = [160, 1000, 4000]


def torch_step(q, k, v, cos, sin, keys, values, slot, mask, scale):
    """model.Attention.forward's lines for one new token through a KVCache, from RoPE to the value sum.
    q (B, H, 1, D), k/v (B, Hkv, 1, D), cos/sin (B, 1, D), keys/values (B, Hkv, slots, D), mask (B, 1, L)."""
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    keys[:, :, slot:slot + 1], values[:, :, slot:slot + 1] = k, v    # KVCache.update
    return grouped_attention(q, keys[:, :, :slot + 1], values[:, :, :slot + 1], mask, scale)


def bench_case(H, Hkv, D, L, dtype, budget_s, cold_bytes):
    gen = torch.Generator().manual_seed(H * L + D)
    slots = L + 16
    cache_bytes = 2 * Hkv * slots * D * dtype.itemsize
    copies = max(2, min(512, math.ceil(cold_bytes / cache_bytes)))
    caches = [(torch.randn(1, Hkv, slots, D, generator=gen).to(dtype), torch.randn(1, Hkv, slots, D, generator=gen)
               .to(dtype)) for _ in range(copies)]
    q = torch.randn(1, H, D, generator=gen).to(dtype)
    k, v = (torch.randn(1, Hkv, D, generator=gen).to(dtype) for _ in range(2))
    angles = torch.rand(1, D // 2, generator=gen) * 6.28
    cos, sin = (torch.cat((f(angles), f(angles)), -1).to(dtype) for f in (torch.cos, torch.sin))
    mask = torch.ones(1, L, dtype=torch.bool)
    slot, scale = L - 1, D ** -0.5

    def ours(i):
        keys, values = caches[i % copies]
        return ops.decode_attention(q, k, v, cos, sin, keys, values, slot, mask, scale)

    def plain(i):
        keys, values = caches[(i + copies // 2) % copies]
        return torch_step(q[:, :, None], k[:, :, None], v[:, :, None], cos[:, None], sin[:, None], keys, values,
                          slot, mask[:, None], scale)

    # Both compute the same thing: check once (the tests check it thoroughly) so the table compares like with like.
    torch.testing.assert_close(ours(0).float(), plain(copies - copies // 2).float()[:, :, 0],
                               rtol=0.05 if dtype != torch.float32 else 1e-4, atol=1e-2 if dtype != torch.float32 else 1e-5)
    times = {"ours": [], "torch": []}
    start, i = time.perf_counter(), 1
    while i < 6 or (time.perf_counter() - start < budget_s and i < 400):
        for name, fn in (("ours", ours), ("torch", plain)) if i % 2 else (("torch", plain), ("ours", ours)):
            t0 = time.perf_counter()
            fn(i)
            times[name].append(time.perf_counter() - t0)
        i += 1
    return {name: statistics.median(t) for name, t in times.items()}, 2 * Hkv * L * D * dtype.itemsize, copies


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the mid-size heads at 160 and 1000 tokens only")
    parser.add_argument("--seconds", type=float, default=1.5, help="time budget per case (at least 5 rounds)")
    parser.add_argument("--cold-mb", type=float, default=768,
                        help="the copies of each cache together, in MB (enough to exceed the L3 keeps them cold)")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "attention_cpu.json"))
    args = parser.parse_args(argv)
    if not ops.has_fused_ops("cpu"):
        print("the compiled CPU extension (decode_attention) is not built: nothing to measure")
        return 1
    heads = dict(list(HEADS.items())[:1]) if args.quick else HEADS
    lengths = LENGTHS[:2] if args.quick else LENGTHS
    dtypes = [torch.bfloat16] if args.quick else [torch.bfloat16, torch.float32]
    bandwidth = read_bandwidth("cpu")
    rows = []
    print(f"decode attention, batch 1, cold caches; read bandwidth {bandwidth / 1e9:.1f} GB/s; "
          f"{torch.get_num_threads()} threads")
    print(f"  {'heads':26s} {'cache':9s} {'tokens':>6s} {'ours us':>9s} {'torch us':>9s} {'vs torch':>9s} "
          f"{'floor us':>9s} {'% floor':>8s}")
    for label, (H, Hkv, D) in heads.items():
        for dtype in dtypes:
            for L in lengths:
                seconds, nbytes, copies = bench_case(H, Hkv, D, L, dtype, args.seconds, args.cold_mb * 2**20)
                floor = nbytes / bandwidth
                row = {"heads": H, "kv_heads": Hkv, "head_dim": D, "dtype": str(dtype).replace("torch.", ""),
                       "cached_tokens": L, "ours_us": seconds["ours"] * 1e6, "torch_us": seconds["torch"] * 1e6,
                       "speedup_vs_torch": seconds["torch"] / seconds["ours"], "bytes_read": nbytes,
                       "floor_us": floor * 1e6, "fraction_of_floor": floor / seconds["ours"],
                       "cache_copies": copies}
                rows.append(row)
                print(f"  {label:26s} {row['dtype']:9s} {L:6d} {row['ours_us']:9.1f} {row['torch_us']:9.1f} "
                      f"{row['speedup_vs_torch']:8.2f}x {row['floor_us']:9.1f} {100 * row['fraction_of_floor']:7.0f}%")
    write_json(args.out, {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                          "machine": machine_description(), "read_bandwidth_bytes_per_s": bandwidth,
                          "cold_bytes": args.cold_mb * 2**20, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
