"""The kernel lab: build, check and race the int4 GEMV/GEMM variants, on a laptop or a GPU.

    python -m minimoe.bench.kernels --device cpu                   # every CPU stage, check + time, table + JSON
    python -m minimoe.bench.kernels --device cpu --variant 04 05   # some of them
    python -m minimoe.bench.kernels --device cpu --check-only      # correctness only (what CI runs)
    python -m minimoe.bench.kernels --device cpu --update-docs --plot docs/figures/kernel_lab_cpu_roofline.png
    python -m minimoe.bench.kernels --device cuda ...              # benchmarks/kernel_cuda.py, the CUDA ladder
    python -m minimoe.bench.kernels --device cuda --update-docs    # its last JSON -> docs/kernels-cuda.md table

CPU: csrc/dev/cpu/registry.json lists the variants. Each stage is one self-contained C++ file exporting
`minimoe_int4_gemm` (C ABI, no torch headers): built with the system compiler and the flags in the registry
(about a second each, cached under build/dev-cpu/ by a hash of source and flags), loaded with ctypes. Every
variant is first checked against the spec (minimoe.awq's dequantize, in float64) on shapes chosen to be awkward
(N not a multiple of 64, M not of 4, tiny subnormal scales) with its output filled with NaN first, so an output a
kernel forgets to write is caught; then it is timed (best of several calls) at a decode shape (M = 1) and a
prefill shape (M = 16), each call on the next of enough copies of the packed weights to exceed the L3 (so they
come from DRAM, as in a real decode step). Each row says: milliseconds, GB/s of the bytes it must move (packed weights, zeros,
scales, x, y), GFLOP/s (2MNK), the fraction of the machine's read bandwidth measured in the same run (the decode
roof), and x of torch fp32 on the dequantized weight (entry 00, which reads 4x the bytes). Nothing asserts a speed.

To add a stage: copy the last file to 10_your_idea.cpp, say at its top what changed and why, add a line to the
registry, run this. tests/test_kernel_lab.py then checks it in CI like the others.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import hashlib
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CPU_DIR = os.path.join(ROOT, "csrc", "dev", "cpu")
REGISTRY = os.path.join(CPU_DIR, "registry.json")
BUILD = os.path.join(ROOT, "build", "dev-cpu")
RESULTS = os.path.join(ROOT, "benchmarks", "results", "kernel_lab_cpu.json")
DOCS = os.path.join(ROOT, "docs", "kernels-cpu.md")
BEGIN, END = "<!-- kernel-lab:cpu:begin -->", "<!-- kernel-lab:cpu:end -->"
# The CUDA ladder's last GPU run (benchmarks/kernel_cuda.py writes it; --update-docs renders it, any machine).
CUDA_RESULTS = os.path.join(ROOT, "benchmarks", "results", "gpu", "kernel_cuda.json")
CUDA_DOCS = os.path.join(ROOT, "docs", "kernels-cuda.md")
CUDA_BEGIN, CUDA_END = "<!-- kernel-lab:cuda:begin -->", "<!-- kernel-lab:cuda:end -->"

# (M, K, N, G): awkward on purpose. N = 72 and 136 leave words over after blocks of 8; M = 3 and 5 leave rows
# over after tiles of 4; K = G is a single group.
CHECK_SHAPES = [(1, 128, 64, 32), (3, 256, 72, 128), (1, 64, 8, 64), (5, 512, 136, 128), (4, 256, 128, 64),
                (1, 1024, 512, 128)]
TIME_SHAPES = {"decode": (1, 4096, 14336, 128), "prefill": (16, 4096, 4096, 128)}


def load_registry() -> list[dict]:
    with open(REGISTRY, encoding="utf-8") as f:
        return json.load(f)["variants"]


def cpu_has(isa: str) -> bool:
    if isa == "any":
        return True
    if isa == "avx2":
        if platform.machine().lower() not in ("x86_64", "amd64"):
            return False
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
            return {"avx2", "fma", "f16c"} <= set(flags)
        except OSError:
            return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    if isa == "neon":  # every ARM64 CPU has NEON (Linux says aarch64, macOS arm64)
        return platform.machine().lower() in ("aarch64", "arm64")
    raise ValueError(f"registry: unknown isa {isa!r}")


class BuildError(RuntimeError):
    pass


def build(entry: dict):
    """Compile a stage (cached) and return its `minimoe_int4_gemm` as a ctypes function."""
    source = os.path.join(CPU_DIR, entry["file"])
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        raise BuildError("no C++ compiler found (set $CXX)")
    flags = list(entry.get("flags", []))
    with open(source, "rb") as f:
        digest = hashlib.sha256(f.read() + " ".join(flags).encode()).hexdigest()[:12]
    os.makedirs(BUILD, exist_ok=True)
    library = os.path.join(BUILD, f"{entry['id']}_{digest}.so")
    if not os.path.exists(library):
        command = [compiler, *flags, "-std=c++17", "-shared", "-fPIC", "-Wall", "-o", library + ".tmp", source]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise BuildError(f"{entry['file']}: {' '.join(command)}\n{done.stderr[-3000:]}")
        os.replace(library + ".tmp", library)
    fn = ctypes.CDLL(library).minimoe_int4_gemm
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 4 + [ctypes.c_int]
    return fn


def runner(entry: dict, threads: int):
    """A function (x, qweight, qzeros, scales, G) -> y for this entry."""
    if entry["kind"] == "torch":
        from minimoe import awq

        def dense(x, qweight, qzeros, scales, G, _cache={}):
            key = (qweight.data_ptr(), G)
            if key not in _cache:
                _cache.clear()
                _cache[key] = awq.dequantize(qweight, qzeros, scales, G, torch.float32)
            return x @ _cache[key]
        return dense
    if entry["kind"] == "triton":
        if os.environ.get("TRITON_INTERPRET") != "1":
            return None
        from minimoe.kernels.triton_awq import awq_gemm_triton

        return awq_gemm_triton
    if entry["kind"] == "production":
        from minimoe import ops

        if not ops._has_kernel("awq_gemm", "cpu"):
            return None
        return lambda x, qweight, qzeros, scales, G: torch.ops.minimoe.awq_gemm(x, qweight, qzeros, scales, G)
    fn = build(entry)

    def call(x, qweight, qzeros, scales, G):
        M, K = x.shape
        N = qweight.shape[1] * 8
        y = torch.full((M, N), float("nan"))
        code = fn(x.data_ptr(), qweight.data_ptr(), qzeros.data_ptr(), scales.data_ptr(), y.data_ptr(), M, K, N, G,
                  threads)
        if code != 0:
            raise RuntimeError(f"variant {entry['id']} returned {code}")
        return y
    return call


def case(M, K, N, G, seed=0):
    from minimoe import awq

    g = torch.Generator().manual_seed(seed)
    tensors = awq.quantize(torch.randn(N, K, generator=g), G)
    scales = tensors.scales.clone()
    scales.view(-1)[::97] = 3e-6        # a few subnormal fp16 scales: the fp16 conversion must handle them
    return torch.randn(M, K, generator=g), tensors.qweight, tensors.qzeros, scales


def check(run, shapes=CHECK_SHAPES) -> float:
    """Largest error against the spec (relative to each shape's largest output); raises on NaN or a wrong shape."""
    from minimoe import awq

    worst = 0.0
    for i, (M, K, N, G) in enumerate(shapes):
        x, qweight, qzeros, scales = case(M, K, N, G, seed=i)
        y = run(x, qweight, qzeros, scales, G)
        if tuple(y.shape) != (M, N):
            raise AssertionError(f"shape {(M, K, N, G)}: output {tuple(y.shape)}, expected {(M, N)}")
        if torch.isnan(y).any():
            raise AssertionError(f"shape {(M, K, N, G)}: NaN in the output (an output left unwritten?)")
        want = x.double() @ awq.dequantize(qweight, qzeros, scales, G, torch.float64)
        worst = max(worst, ((y.double() - want).abs().max() / want.abs().max()).item())
    return worst


def best_seconds(fn, budget_s: float = 1.0, repeats: int = 5) -> float:
    fn()
    best, spent, n = float("inf"), 0.0, 0
    while n < repeats and (n == 0 or spent < budget_s):
        t0 = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - t0
        best, spent, n = min(best, elapsed), spent + elapsed, n + 1
    return best


def machine_ceilings(threads: int) -> dict:
    """Read bandwidth (sum over 512 MB) and fp32 matmul throughput (2048^3), measured now."""
    torch.set_num_threads(threads)
    big = torch.ones(128 * 1024 * 1024)
    bandwidth = big.numel() * 4 / best_seconds(big.sum, repeats=5)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    flops = 2 * 2048 ** 3 / best_seconds(lambda: a @ b, repeats=5)
    return {"read_bandwidth_Bps": bandwidth, "fp32_matmul_flops": flops}


# Timed calls read their weights from DRAM, as a decode step does (a model's weights are far larger than any cache):
# each call takes the next of enough copies of the packed weights to exceed this many bytes, more than the L3 of
# the CPUs this has run on (32 MB on the 2-core EPYC VMs; one 4096 x 14336 layer is 30 MB and stayed in it, which
# showed the shipped kernel at 107% of the DRAM read bandwidth).
COLD_BYTES = 256 * 1024 * 1024


@functools.lru_cache(maxsize=None)
def timing_case(shape: tuple, copies: int) -> tuple:
    """x and `copies` copies of one shape's packed weights, made once per run and shared by every variant."""
    M, K, N, G = shape
    x, qweight, qzeros, scales = case(M, K, N, G)
    return x, [(qweight, qzeros, scales)] + [(qweight.clone(), qzeros.clone(), scales.clone()) for _ in range(copies - 1)]


def time_variant(run, shape, ceilings, torch_seconds=None, rotate=True) -> dict:
    """rotate=False for the torch baseline: its dense fp32 weight (4x the bytes, dequantized once) already
    exceeds the caches, and a copy per rotation would dequantize (and hold) every one of them."""
    M, K, N, G = shape
    packed = K * N // 2 + K // G * N // 2 + K // G * N * 2  # qweight + qzeros (int4) + fp16 scales, in bytes
    x, sets = timing_case(tuple(shape), max(1, -(-COLD_BYTES // packed)))
    sets = sets if rotate else sets[:1]
    qweight, qzeros, scales = sets[0]
    turn = itertools.count()

    def call():
        q, z, sc = sets[next(turn) % len(sets)]
        return run(x, q, z, sc, G)
    seconds = best_seconds(call)
    moved = packed + x.numel() * 4 + M * N * 4
    row = {"ms": seconds * 1e3, "GBps": moved / seconds / 1e9, "GFLOPs": 2 * M * N * K / seconds / 1e9,
           "of_bandwidth": moved / ceilings["read_bandwidth_Bps"] / seconds, "bytes": moved}
    if torch_seconds:
        row["x_torch"] = torch_seconds / seconds
    return row


def render_table(results: dict) -> str:
    """The markdown table of a results JSON (what --update-docs writes into docs/kernels-cpu.md)."""
    m = results["machine"]
    lines = [f"Measured {results['date']} on {m['cpu']}, {m['threads']} threads, torch {m['torch']}: read bandwidth "
             f"{m['read_bandwidth_Bps'] / 1e9:.1f} GB/s, fp32 matmul {m['fp32_matmul_flops'] / 1e9:.0f} GFLOP/s "
             "(both measured in the same run). Decode: M = 1, K = 4096, N = 14336 (an expert's w1); prefill: "
             "M = 16, K = N = 4096; G = 128.", "",
             "| variant | idea | decode ms | decode GB/s | % of read bandwidth | x torch | prefill ms | prefill "
             "GFLOP/s | x torch |", "|---|---|---|---|---|---|---|---|---|"]
    for row in results["variants"]:
        d, p = row.get("decode"), row.get("prefill")
        if d is None:
            lines.append(f"| {row['id']} | {row['summary']} | {row.get('skipped', '-')} | | | | | | |")
            continue
        lines.append(f"| {row['id']} | {row['summary']} | {d['ms']:.2f} | {d['GBps']:.1f} | "
                     f"{100 * d['of_bandwidth']:.0f}% | {d.get('x_torch', 1.0):.2f} | {p['ms']:.1f} | "
                     f"{p['GFLOPs']:.1f} | {p.get('x_torch', 1.0):.2f} |")
    return "\n".join(lines)


def render_cuda_table(results: dict) -> str:
    """The markdown table of benchmarks/kernel_cuda.py's JSON (what --update-docs writes into docs/kernels-cuda.md)."""
    when = results.get("date", "date not recorded in the JSON")
    lines = [f"Last GPU run ({when}): {results['gpu']}, torch {results['torch']}, CUDA {results['cuda']}, "
             f"{results['dtype']}; device copy bandwidth {results['copy_GBps']:.0f} GB/s measured in the same run. "
             f"Checks: {sum(v == 'ok' for v in results['checks'].values())} ok, "
             f"{sum(v not in ('ok', 'n/a') for v in results['checks'].values())} failing "
             "(n/a: a shape the variant refuses).", "",
             "| variant | M | K | N | us | GB/s | TFLOP/s | % of copy bandwidth | % of cuBLAS fp16 (dense) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results.get("rows", []):
        lines.append(f"| {r['variant']} | {r['M']} | {r['K']} | {r['N']} | {1e3 * r['ms']:.1f} | {r['GB/s']:.0f} | "
                     f"{r['TFLOP/s']:.2f} | {r['% copy BW']:.1f}% | {r['% cuBLAS']:.0f}% |")
    return "\n".join(lines)


def update_docs(results: dict, path: str = DOCS, begin: str = BEGIN, end: str = END, render=render_table) -> None:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if begin not in text or end not in text:
        raise ValueError(f"{path}: no {begin} ... {end} markers to write the table between")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    with open(path, "w", encoding="utf-8") as f:
        f.write(head + begin + "\n" + render(results) + "\n" + end + tail)


def update_cuda_docs() -> None:
    """Render the committed CUDA results (the last GPU run) into docs/kernels-cuda.md: no GPU needed."""
    with open(CUDA_RESULTS, encoding="utf-8") as f:
        results = json.load(f)
    update_docs(results, CUDA_DOCS, CUDA_BEGIN, CUDA_END, render_cuda_table)
    print(f"wrote the CUDA table of {CUDA_RESULTS} into {CUDA_DOCS}")


def plot_roofline(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = results["machine"]
    bandwidth, peak = m["read_bandwidth_Bps"] / 1e9, m["fp32_matmul_flops"] / 1e9
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ridge = peak / bandwidth
    xs = [0.05, ridge, 200.0]
    ax.plot(xs, [min(bandwidth * i, peak) for i in xs], color="black", label="roof: read bandwidth, fp32 matmul")
    for row in results["variants"]:
        for name, marker in (("decode", "o"), ("prefill", "s")):
            r = row.get(name)
            if r:
                ai = r["GFLOPs"] * 1e9 * (r["ms"] / 1e3) / r["bytes"]
                ax.scatter(ai, r["GFLOPs"], marker=marker, s=30)
                ax.annotate(row["id"], (ai, r["GFLOPs"]), textcoords="offset points", xytext=(4, 3), fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP per byte of int4 weights, zeros, scales, x, y)")
    ax.set_ylabel("GFLOP/s")
    ax.set_title(f"int4 GEMV (o, M = 1) and GEMM (s, M = 16) on {m['cpu']}, {m['threads']} threads", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def cpu_main(args) -> int:
    entries = load_registry()
    if args.variant and args.variant != ["all"]:
        unknown = set(args.variant) - {e["id"] for e in entries}
        if unknown:
            raise SystemExit(f"unknown variant(s) {sorted(unknown)}; the registry has {[e['id'] for e in entries]}")
        entries = [e for e in entries if e["id"] in args.variant]
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    failures, rows = 0, []
    ceilings = None if args.check_only else machine_ceilings(threads)
    torch_seconds = {}
    for entry in entries:
        row = {"id": entry["id"], "kind": entry["kind"], "summary": entry["summary"]}
        if not cpu_has(entry["isa"]):
            row["skipped"] = f"needs {entry['isa']}"
            print(f"{entry['id']}: skipped (this CPU lacks {entry['isa']})")
            rows.append(row)
            continue
        run = runner(entry, threads)
        if run is None:
            row["skipped"] = ("checked with TRITON_INTERPRET=1; timed on a GPU" if entry["kind"] == "triton"
                              else "extension not built")
            print(f"{entry['id']}: skipped ({row['skipped']})")
            rows.append(row)
            continue
        # A stage's OpenMP runtime is not torch's (torch wheels bundle their own libgomp): torch's idle threads
        # spin for a while after each parallel op and take the cores from the stage's threads (measured here: 06
        # at 3.8 ms with them spinning, 2.1 ms without). So torch is held to one thread while a stage runs.
        torch.set_num_threads(1 if entry["kind"] == "stage" else threads)
        try:
            row["max_error"] = check(run)
        except AssertionError as error:
            failures += 1
            print(f"{entry['id']}: WRONG: {error}")
            rows.append({**row, "wrong": str(error)})
            continue
        line = f"{entry['id']}: correct (max error {row['max_error']:.1e})"
        if not args.check_only and entry["kind"] != "triton":     # the interpreter's speed means nothing
            for name, shape in TIME_SHAPES.items():
                row[name] = time_variant(run, shape, ceilings, torch_seconds.get(name), rotate=entry["kind"] != "torch")
                if entry["kind"] == "torch":
                    torch_seconds[name] = row[name]["ms"] / 1e3
            line += (f"; decode {row['decode']['ms']:.2f} ms ({100 * row['decode']['of_bandwidth']:.0f}% of read "
                     f"bandwidth), prefill {row['prefill']['GFLOPs']:.1f} GFLOP/s")
        print(line, flush=True)
        rows.append(row)
    torch.set_num_threads(threads)
    if args.check_only:
        return 1 if failures else 0
    results = {"date": time.strftime("%Y-%m-%d"), "machine": {"cpu": args.cpu_name or platform.processor() or
                                                              platform.machine(), "threads": threads,
                                                              "torch": torch.__version__, **ceilings},
               "variants": rows}
    print("\n" + render_table(results))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    if args.update_docs:
        update_docs(results)
    if args.plot:
        plot_roofline(results, args.plot)
    return 1 if failures else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--variant", nargs="*", help="ids from the registry (default: all)")
    parser.add_argument("--check-only", action="store_true", help="correctness only, no timing")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=RESULTS, help="the JSON to write (CPU)")
    parser.add_argument("--update-docs", action="store_true", help="write the table into docs/kernels-cpu.md")
    parser.add_argument("--plot", help="also draw the roofline to this PNG (needs matplotlib)")
    parser.add_argument("--cpu-name", help="how to name this CPU in the table (default: platform.processor())")
    args, rest = parser.parse_known_args(argv)
    if args.device == "cuda" and args.update_docs and not args.variant and not args.check_only and not rest:
        update_cuda_docs()  # the table of the last GPU run; a run on a GPU writes its JSON first, then this
        return 0
    if args.device == "cuda":
        script = os.path.join(ROOT, "benchmarks", "kernel_cuda.py")
        if not os.path.exists(script):
            raise SystemExit("the CUDA ladder runs from a minimoe checkout: benchmarks/kernel_cuda.py not found")
        command = [sys.executable, script] + (["--variant", *args.variant] if args.variant else []) + \
                  (["--check-only"] if args.check_only else []) + rest
        return subprocess.call(command)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return cpu_main(args)


if __name__ == "__main__":
    sys.exit(main())
