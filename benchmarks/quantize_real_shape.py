"""AWQ-quantizing a checkpoint of Confinus-2x7B's real shape: time per layer and peak memory.

    python benchmarks/quantize_real_shape.py [--layers 2] [--samples 2] [--seq-len 128] [--keep DIR]

Writes a random fp16 checkpoint with the real layer shape (hidden 4096, two experts of 14336, 32/8 heads,
vocab 32000) and `--layers` decoder layers, then runs minimoe.quantize.quantize_checkpoint(method="awq") in a
child process and reports its wall time, time per layer and peak resident memory (the child's ru_maxrss).
The quantizer streams one decoder layer at a time, so peak memory does not grow with the number of layers;
time does, linearly: the 32-layer time is 32 x the time per layer (printed as a projection, not measured,
unless --layers 32). Random weights and random calibration tokens: this measures cost, not quality.
Writes benchmarks/results/quantize_real_shape_<layers>L.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

CHILD = r"""
import json, sys, time, torch
from minimoe.quantize import quantize_checkpoint
from minimoe.quantize import awq_search as A
src, dst, samples, seq_len, grid, clip_grid = sys.argv[1:3] + [int(a) for a in sys.argv[3:7]]
ids = torch.randint(0, 32000, (samples * seq_len,), generator=torch.Generator().manual_seed(0))
rss = []
def progress(line, done, total):
    with open("/proc/self/status") as f:   # resident memory now: anonymous (tensors) and file-backed (mmap)
        status = dict(l.split(":", 1) for l in f if l.startswith("Rss"))
    rss.append({k: int(v.split()[0]) * 1024 for k, v in status.items()})
    print(f"[{done}/{total}] {line}; {rss[-1]}", file=sys.stderr, flush=True)
start = time.perf_counter()
summary = quantize_checkpoint(src, dst, method="awq", group_size=128,
                              calibration=A.calibration_windows(ids, samples, seq_len), progress=progress,
                              settings=A.Settings(grid=grid, clip_grid=clip_grid))
print(json.dumps({"seconds": time.perf_counter() - start,
                  "layer_seconds": [r["seconds"] for r in summary["layers"]], "rss_after_layer": rss}))
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--samples", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--grid", type=int, default=20, help="alphas searched (the default of minimoe quantize: 20)")
    p.add_argument("--clip-grid", type=int, default=20, help="clip grid (default 20: 10 candidates)")
    p.add_argument("--keep", default=None, help="write the checkpoints here and keep them (default: a temp dir)")
    p.add_argument("--out", default=None, help="default: benchmarks/results/quantize_real_shape_<layers>L.json")
    args = p.parse_args()
    args.out = args.out or os.path.join(HERE, "results", f"quantize_real_shape_{args.layers}L.json")

    from minimoe.testing import CONFINUS_SHAPE, make_tiny_checkpoint

    root = args.keep or tempfile.mkdtemp(prefix="minimoe-awq-")
    src, dst = os.path.join(root, "fp16"), os.path.join(root, "awq")
    shape = {k: v for k, v in CONFINUS_SHAPE.items() if k not in ("group_size", "shards")}
    shape["num_hidden_layers"] = args.layers
    start = time.perf_counter()
    if not os.path.isdir(src):
        make_tiny_checkpoint(src, quantized=False, dtype="float16", seed=0, shards=args.layers, **shape)
    written = time.perf_counter() - start
    src_bytes = sum(os.path.getsize(os.path.join(src, f)) for f in os.listdir(src))
    child = subprocess.run([sys.executable, "-c", CHILD, src, dst, str(args.samples), str(args.seq_len), str(args.grid),
                            str(args.clip_grid)],
                           capture_output=True, text=True)
    sys.stderr.write(child.stderr)
    if child.returncode != 0:
        print(f"the quantizer failed (exit {child.returncode})", file=sys.stderr)
        return 1
    run = json.loads(child.stdout.strip().splitlines()[-1])
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024   # Linux: KiB
    per_layer = sum(run["layer_seconds"]) / len(run["layer_seconds"])
    layer_bytes = sum(os.path.getsize(os.path.join(dst, f)) for f in os.listdir(dst) if f.endswith(".safetensors"))
    result = {
        "shape": shape, "layers": args.layers, "calibration_tokens": args.samples * args.seq_len,
        "grid": args.grid, "clip_grid": args.clip_grid,
        "source_bytes": src_bytes, "output_bytes": layer_bytes, "seconds": run["seconds"],
        "seconds_per_layer": per_layer, "projected_32_layer_seconds": 32 * per_layer,
        "peak_rss_bytes": peak, "rss_after_layer": run["rss_after_layer"], "checkpoint_write_seconds": written,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    }
    print(f"{args.layers} real-shape layers, {args.samples * args.seq_len} calibration tokens: "
          f"{run['seconds']:.0f} s ({per_layer:.0f} s per layer; 32 layers would take ~{32 * per_layer / 60:.0f} min), "
          f"peak RSS {peak / 1e9:.2f} GB; resident after each layer (anon, file) GB: "
          f"{[(round(r.get('RssAnon', 0) / 1e9, 2), round(r.get('RssFile', 0) / 1e9, 2)) for r in run['rss_after_layer']]}; "
          f"source {src_bytes / 1e9:.2f} GB on disk")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
