"""ops.linear_stored (the lm_head with fp16 weights kept as stored) per CPU tier, against the read-bandwidth floor.

    python benchmarks/linear_stored.py [--out benchmarks/results/linear_stored_cpu.json]

For each lm_head shape (the mid-size model's 32000 x 1024 and Confinus-2x7B's 32000 x 4096, fp16) and each tier
this CPU can run (MINIMOE_CPU_ISA=avx512 / avx2 / scalar), one decode row (M = 1) in fp32 and bf16 activations:
the median time, GB/s of weights read, % of the read bandwidth measured in the same run (a sum over a 512 MB fp32
tensor), and x of the baseline from the same run: torch's F.linear on the weight converted to x's dtype beforehand
(what the loader did before this op existed: for fp32, twice the memory and the bytes). Several copies of each weight are rotated,
so every call reads from memory, not from the caches.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from floors import read_bandwidth  # noqa: E402  (benchmarks/floors.py)
from kernel_cpu import copies_for, machine_description  # noqa: E402
from report import write_json  # noqa: E402

from minimoe import ops  # noqa: E402

SHAPES = {"mid-size lm_head": (32000, 1024), "Confinus-2x7B lm_head": (32000, 4096)}


def median_seconds(fn, weights, repeats: int) -> float:
    fn(weights[0])
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        fn(weights[i % len(weights)])
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def tiers() -> list[str]:
    available = []
    for isa in ("avx512", "avx2", "scalar"):
        os.environ["MINIMOE_CPU_ISA"] = isa
        try:
            ops.linear_stored(torch.zeros(1, 8), torch.zeros(8, 8, dtype=torch.float16))
            available.append(isa)
        except RuntimeError:
            pass
    os.environ.pop("MINIMOE_CPU_ISA")
    return available


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "linear_stored_cpu.json"))
    args = parser.parse_args()
    if not ops.can_keep_stored("cpu", torch.float32, torch.float16):
        sys.exit("the CPU extension (linear_stored) is not built: nothing to measure")
    bandwidth = read_bandwidth("cpu", gigabytes=0.512) / 1e9
    print(f"read bandwidth floor: {bandwidth:.1f} GB/s (sum over 512 MB fp32), {torch.get_num_threads()} threads")
    rows = []
    g = torch.Generator().manual_seed(0)
    for name, (N, K) in SHAPES.items():
        nbytes = N * K * 2
        weights = [(torch.randn(N, K, generator=g) * 0.05).half() for _ in range(copies_for(nbytes))]
        for x_dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(1, K, generator=g).to(x_dtype)
            converted = [w.to(x_dtype) for w in weights[:copies_for(nbytes * x_dtype.itemsize // 2)]]
            base = median_seconds(lambda w: F.linear(x, w), converted, args.repeats)
            del converted
            for isa in tiers():
                os.environ["MINIMOE_CPU_ISA"] = isa
                t = median_seconds(lambda w: ops.linear_stored(x, w), weights, args.repeats)
                os.environ.pop("MINIMOE_CPU_ISA")
                row = {"shape": name, "N": N, "K": K, "x_dtype": str(x_dtype).replace("torch.", ""), "tier": isa,
                       "ms": t * 1e3, "gb_s": nbytes / t / 1e9, "pct_bandwidth": 100 * nbytes / t / 1e9 / bandwidth,
                       "baseline_ms": base * 1e3, "x_baseline": base / t}
                rows.append(row)
                print(f"{name:22s} x {row['x_dtype']:8s} {isa:6s} {row['ms']:7.2f} ms {row['gb_s']:5.1f} GB/s "
                      f"({row['pct_bandwidth']:3.0f}% of floor)  torch on converted {row['baseline_ms']:7.2f} ms "
                      f"-> {row['x_baseline']:.2f}x")
    write_json(args.out, {"machine": machine_description(), "read_bandwidth_gb_s": bandwidth, "rows": rows})


if __name__ == "__main__":
    main()
