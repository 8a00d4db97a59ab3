"""Assignment 4, part two: how fast is your int4 GEMV, against the roofline of your own CPU?

    python -m assignments.a4_awq_format.bench [--solution DIR] [--K 4096 --N 4096] [--threads N]

A decode step reads every weight once, so an int4 GEMV at M = 1 is bound by memory bandwidth: its floor is
(bytes of qweight + qzeros + scales) / (your CPU's read bandwidth), measured here by summing a 512 MB tensor.
Prints your kernel's time, the GB/s it streams, the fraction of that roofline, and torch's fp32 matmul on
the dequantized weight (4x the bytes) for comparison. The target of the handout: 25% of the roofline (the
textbook loop reaches well under 1%; minimoe's own AVX2/AVX-512 kernel 50-60% on the development machine).
Not graded by the tests: timings belong in benchmarks, not in tests (they are noisy); report it in your write-up.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from assignments.framework import SOLUTION_ENV, build_cpp  # noqa: E402
from minimoe import awq  # noqa: E402

TARGET = 0.25


def best_of(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--solution", help="the directory holding your int4_gemv.cpp (default: minimoe's 01 stage)")
    parser.add_argument("--K", type=int, default=4096)
    parser.add_argument("--N", type=int, default=4096)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.solution:
        os.environ[SOLUTION_ENV] = os.path.abspath(args.solution)
    if args.threads:
        torch.set_num_threads(args.threads)
    ops = build_cpp("a4_awq_format")
    g = torch.Generator().manual_seed(0)
    tensors = awq.quantize(torch.randn(args.N, args.K, generator=g), args.group_size)
    x = torch.randn(1, args.K, generator=g)
    y = ops.int4_gemv(x, *tensors, args.group_size)
    want = x.double() @ awq.dequantize(*tensors, args.group_size, torch.float64)
    error = (y.double() - want).abs().max().item() / want.abs().max().item()
    bytes_read = sum(t.numel() * t.element_size() for t in tensors)
    seconds = best_of(lambda: ops.int4_gemv(x, *tensors, args.group_size), args.repeats)
    big = torch.ones(128 * 1024 * 1024)
    bandwidth = big.numel() * 4 / best_of(big.sum, 5)
    dense = awq.dequantize(*tensors, args.group_size, torch.float32)
    torch_seconds = best_of(lambda: x @ dense, args.repeats)
    print(f"int4 GEMV, M = 1, K = {args.K}, N = {args.N}, G = {args.group_size}, {torch.get_num_threads()} threads")
    print(f"  max error vs the spec        {error:.1e} (relative to the largest output)")
    print(f"  your kernel                  {seconds * 1e3:9.3f} ms   {bytes_read / seconds / 1e9:7.2f} GB/s")
    print(f"  roofline (read bandwidth)    {bytes_read / bandwidth * 1e3:9.3f} ms   {bandwidth / 1e9:7.2f} GB/s")
    print(f"  torch fp32 on dequantized W  {torch_seconds * 1e3:9.3f} ms   (reads {4 * args.K * args.N / 1e6:.0f} MB)")
    fraction = bytes_read / bandwidth / seconds
    print(f"  -> {fraction:.1%} of the roofline (target {TARGET:.0%}): {'met' if fraction >= TARGET else 'not yet'}; "
          f"{torch_seconds / seconds:.2f}x torch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
