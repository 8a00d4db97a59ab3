"""The physical floors every benchmark compares against, measured in the same run (machines here are noisy).

    read_bandwidth(device)   bytes/s of streaming reads: a sum over a large fp32 tensor touches every byte once
    copy_bandwidth(device)   bytes/s of a device copy, counting read + write bytes (the usual GPU "copy" figure)

Both return the best of `repeats` timings: the floor is what the machine can do, not its average mood.
"""

from __future__ import annotations

import time

import torch


def _best_seconds(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up: first touch of the pages, kernel launch set-up
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1e3
        else:
            t0 = time.perf_counter()
            fn()
            seconds = time.perf_counter() - t0
        best = min(best, seconds)
    return best


def read_bandwidth(device: str | torch.device = "cpu", gigabytes: float = 0.5, repeats: int = 5) -> float:
    """Streaming-read bandwidth in bytes/s (sum over a `gigabytes` fp32 tensor)."""
    device = torch.device(device)
    x = torch.ones(int(gigabytes * 1e9 / 4), dtype=torch.float32, device=device)
    return x.numel() * 4 / _best_seconds(x.sum, device, repeats)


def copy_bandwidth(device: str | torch.device = "cuda", gigabytes: float = 1.0, repeats: int = 10) -> float:
    """Copy bandwidth in bytes/s, counting the bytes read and the bytes written."""
    device = torch.device(device)
    src = torch.empty(int(gigabytes * 1e9), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() / _best_seconds(lambda: dst.copy_(src), device, repeats)
