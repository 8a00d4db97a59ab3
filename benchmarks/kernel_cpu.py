"""Benchmark the CPU AWQ int4 GEMM kernel (torch.ops.minimoe.awq_gemm) against what it replaces.

    .venv/bin/python benchmarks/kernel_cpu.py            # full run, ~3 minutes on 2 cores
    .venv/bin/python benchmarks/kernel_cpu.py --quick    # two shapes, M = 1 and 256

For each layer shape K x N of Confinus-2x7B (G = 128), rows of x M = 1 (decode), 16, 256 (prefill), and x in fp32
and bf16, it times, interleaved call by call so that machine noise hits all of them alike:
    ours           minimoe's kernel on the packed int4 weights
    torch fp32     x (fp32) @ W, W dequantized to fp32 beforehand (what the int4 weights stand in for)
    torch bf16     x (bf16) @ W, W dequantized to bf16 beforehand (oneDNN, AMX on this CPU)
    naive          minimoe.awq.awq_linear_reference (unpack, dequantize, matmul per call); M = 1, one shape
and measures the read-bandwidth floor in the same run (sum over a 512 MB fp32 tensor).

Weights are cold, as in a real decode step that streams 6.8 GB of weights: each timed call uses the next of
several copies of the weights, enough copies to exceed 768 MB so no call finds its weights in the (large, 300 MB)
L3 of the development machine. Times are medians over repetitions.
Columns: GB/s counts the int4 codes + fp16 scales + int4 zeros the kernel must read ("weight bytes");
"%BW" is that rate over the measured read bandwidth; ratios > 1 mean the kernel is faster.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from minimoe import awq, ops  # noqa: E402
from floors import read_bandwidth  # noqa: E402  (benchmarks/floors.py)
from report import write_json  # noqa: E402  (benchmarks/report.py)

G = 128
SHAPES = [(4096, 14336), (14336, 4096), (4096, 4096), (4096, 1024)]  # w1/w3, w2, q/o_proj, k/v_proj
QUICK_SHAPES = [(4096, 14336), (4096, 1024)]
ROWS = [1, 16, 256]
QUICK_ROWS = [1, 256]
COLD_BYTES = 768 * 2**20  # rotate over enough copies of each weight to defeat the L3


def copies_for(nbytes: int) -> int:
    return max(1, min(32, math.ceil(COLD_BYTES / nbytes)))


def weight_bytes(K: int, N: int) -> int:
    return K * N // 2 + (K // G) * N * 2 + (K // G) * N // 2  # codes + fp16 scales + zeros


def random_packed(K: int, N: int, generator: torch.Generator):
    qweight = torch.randint(-(2**31), 2**31 - 1, (K, N // 8), dtype=torch.int32, generator=generator)
    qzeros = torch.randint(-(2**31), 2**31 - 1, (K // G, N // 8), dtype=torch.int32, generator=generator)
    scales = (torch.rand(K // G, N, generator=generator) * 0.02 + 1e-3).to(torch.float16)
    return qweight, qzeros, scales


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def torch_bf16_is_pathological() -> bool:
    """torch's bf16 GEMM on an x86 CPU without native bf16 arithmetic (no AVX512_BF16, no AMX) runs ~100x slower
    than fp32 (measured on an AVX2 Zen 3: a --quick run did not finish in 10 minutes); such a baseline is skipped
    at M > 1 and the table says so."""
    flags = cpu_flags()
    return "avx2" in flags and not flags & {"avx512_bf16", "amx_bf16"}


def path_taken(M: int, dtype: torch.dtype) -> str:
    """Which path awq_gemm takes (mirrors use_prefill() in csrc/cpu/awq_gemm.cpp; informational only)."""
    isa = os.environ.get("MINIMOE_CPU_ISA") or "auto"
    if isa == "auto":
        isa = ops.build_info().get("cpu_isa") or "scalar"
    if isa == "avx512":
        return "decode" if M < (16 if dtype == torch.bfloat16 else 32) else "prefill"
    if isa == "avx2":
        return "decode" if M < 32 else "prefill"
    return "decode"


def bench_shape(K, N, rows, budget_s, with_naive):
    gen = torch.Generator().manual_seed(K * 31 + N)
    packed = [random_packed(K, N, gen) for _ in range(copies_for(weight_bytes(K, N)))]
    w32 = awq.dequantize(*packed[0], G, dtype=torch.float32)
    dense = {
        torch.float32: [w32] + [w32.clone() for _ in range(copies_for(w32.numel() * 4) - 1)],
        torch.bfloat16: [w32.to(torch.bfloat16) for _ in range(copies_for(w32.numel() * 2))],
    }
    skip_bf16 = torch_bf16_is_pathological()
    del w32
    results = []
    for M in rows:
        xs = {dt: torch.randn(M, K, generator=gen).to(dt) for dt in (torch.float32, torch.bfloat16)}
        # Contestants, each a function of the call index (which copy of the weights to use).
        contestants = {
            ("ours", torch.float32): lambda i: torch.ops.minimoe.awq_gemm(xs[torch.float32], *packed[i % len(packed)], G),
            ("ours", torch.bfloat16): lambda i: torch.ops.minimoe.awq_gemm(xs[torch.bfloat16], *packed[i % len(packed)], G),
            ("torch", torch.float32): lambda i: xs[torch.float32] @ dense[torch.float32][i % len(dense[torch.float32])],
            ("torch", torch.bfloat16): lambda i: xs[torch.bfloat16] @ dense[torch.bfloat16][i % len(dense[torch.bfloat16])],
        }
        if skip_bf16 and M > 1:
            del contestants[("torch", torch.bfloat16)]
        times = {key: [] for key in contestants}
        for key, fn in contestants.items():  # warm-up: first-call costs (oneDNN primitive creation) stay out
            fn(0)
        start, i = time.perf_counter(), 1
        while i < 4 or (time.perf_counter() - start < budget_s and i < 200):
            for key, fn in contestants.items():
                times[key].append(timed(lambda: fn(i)))
            i += 1
        naive_ms = None
        if with_naive and M == 1:
            naive = [timed(lambda: awq.awq_linear_reference(xs[torch.float32], *packed[j % len(packed)], G))
                     for j in range(3)]
            naive_ms = statistics.median(naive) * 1e3
        med = {key: statistics.median(v) * 1e3 for key, v in times.items()}
        med.setdefault(("torch", torch.bfloat16), None)  # skipped: pathological on this CPU
        for dt in (torch.float32, torch.bfloat16):
            ms = med[("ours", dt)]
            results.append({
                "K": K, "N": N, "G": G, "M": M, "dtype": str(dt).replace("torch.", ""),
                "ms": ms,
                "weight_GBps": weight_bytes(K, N) / (ms / 1e3) / 1e9,
                "GFLOPs": 2 * M * K * N / (ms / 1e3) / 1e9,
                "torch_same_dtype_ms": med[("torch", dt)],
                "torch_fp32_ms": med[("torch", torch.float32)],
                "naive_ms": naive_ms if dt == torch.float32 else None,
                "repetitions": len(times[("ours", dt)]),
                "path": path_taken(M, dt),
            })
    return results


def machine_description():
    model, flags = platform.processor(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {
        "cpu": model,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "avx512f": "avx512f" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "torch": torch.__version__,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="two shapes, M = 1 and 256 (about a minute)")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "kernel_cpu.json"))
    parser.add_argument("--budget", type=float, default=None, help="seconds of timing per (shape, M)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if ops.awq_backend("cpu") != "cpu":
        sys.exit(f"no compiled CPU awq_gemm kernel: {ops.build_info()}")

    shapes, rows = (QUICK_SHAPES, QUICK_ROWS) if args.quick else (SHAPES, ROWS)
    budget = args.budget if args.budget is not None else (1.0 if args.quick else 2.0)
    bandwidth = read_bandwidth("cpu", gigabytes=0.512) / 1e9  # GB/s, sum over a 512 MB fp32 tensor
    print(f"read bandwidth floor: {bandwidth:.1f} GB/s (sum over 512 MB fp32), {torch.get_num_threads()} threads")
    rows_out = []
    for i, (K, N) in enumerate(shapes):
        rows_out += bench_shape(K, N, rows, budget, with_naive=(i == 0))
    for r in rows_out:
        r["pct_read_bw"] = 100 * r["weight_GBps"] / bandwidth
        r["x_vs_torch_same_dtype"] = r["torch_same_dtype_ms"] / r["ms"] if r["torch_same_dtype_ms"] else None
        r["x_vs_torch_fp32"] = r["torch_fp32_ms"] / r["ms"]
        r["x_vs_naive"] = r["naive_ms"] / r["ms"] if r["naive_ms"] else None

    header = (f"{'K x N':>12} {'M':>4} {'x':>5} {'path':>7} {'ms':>8} {'GB/s':>6} {'%BW':>5} {'GFLOP/s':>8} "
              f"{'torch same':>10} {'vs same':>7} {'vs fp32':>7} {'vs naive':>8}")
    print(header)
    print("-" * len(header))
    for r in rows_out:
        naive = f"{r['x_vs_naive']:.0f}x" if r["x_vs_naive"] else ""
        same = (f"{r['torch_same_dtype_ms']:>8.2f}ms {r['x_vs_torch_same_dtype']:>6.2f}x" if r["torch_same_dtype_ms"]
                else f"{'skipped*':>10} {'':>7}")
        print(f"{r['K']:>5}x{r['N']:<6} {r['M']:>4} {r['dtype'][:5]:>5} {r['path']:>7} {r['ms']:>8.2f} "
              f"{r['weight_GBps']:>6.1f} {r['pct_read_bw']:>4.0f}% {r['GFLOPs']:>8.0f} "
              f"{same} {r['x_vs_torch_fp32']:>6.2f}x {naive:>8}")
    if any(r["torch_same_dtype_ms"] is None for r in rows_out):
        print("* torch bf16 skipped at M > 1: this CPU has no native bf16 (no AVX512_BF16 or AMX), where torch's bf16 "
              "GEMM runs ~100x slower than fp32")

    result = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine_description(),
        "read_bandwidth_GBps": bandwidth,
        "group_size": G,
        "rows": rows_out,
    }
    write_json(args.out, result)


if __name__ == "__main__":
    main()
