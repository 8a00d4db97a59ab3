"""Race the CUDA int4 GEMV/GEMM kernels: the experiments of csrc/dev/ and the op's own kernels.

    python benchmarks/kernel_cuda.py                        # every variant + the op, real layer shapes
    python benchmarks/kernel_cuda.py --variant 03 04        # some experiments
    python benchmarks/kernel_cuda.py --sweep                # the op's gemv vs mma over M (the dispatch threshold)
    python benchmarks/kernel_cuda.py --check-only           # correctness only

For each variant listed in csrc/dev/registry.json: compile it with nvcc into a shared library (cached under
build/dev-cuda/, a few seconds each, no torch headers), load it with ctypes, check it against
minimoe.awq.awq_linear_reference on several shapes (awkward ones included) with the output poisoned with NaN
first, then time it: 20 calls captured in one CUDA graph, replayed between CUDA events, so that the time is the
GPU's alone (no host launch latency). The op's kernels (`op:auto`, `op:gemv`, `op:mma`) are timed the same way
when minimoe._C has them.

Printed per shape: time, GB/s (bytes the kernel must move: packed weights, scales, zeros, x, y), TFLOP/s (2MNK),
% of measured device-copy bandwidth, % of cuBLAS fp16 (torch.matmul on a dense fp16 weight of the same shape).
Weights rotate through enough copies to exceed the L2 cache, so decode numbers are HBM numbers.
Writes everything as JSON (--out, default benchmarks/results/gpu/kernel_cuda.json). Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from minimoe.testing import awq_gemm_check  # noqa: E402
from floors import copy_bandwidth  # noqa: E402  (benchmarks/floors.py)
from report import write_json  # noqa: E402  (benchmarks/report.py)

DEV = os.path.join(ROOT, "csrc", "dev")
REAL_SHAPES = [  # (M, K, N, G): w1/w3 (4096 -> 14336) and w2 (14336 -> 4096) of Confinus-2x7B
    (1, 4096, 14336, 128), (1, 14336, 4096, 128), (2048, 4096, 14336, 128), (2048, 14336, 4096, 128)]
CHECK_SHAPES = [(1, 128, 8, 128), (3, 256, 64, 128), (8, 512, 256, 64), (9, 512, 256, 32), (257, 512, 160, 32),
                (130, 1024, 1024, 128), (5, 96, 24, 32), (1, 1024, 512, 64), (1, 4096, 4096, 128)]


# ------------------------------------------------------------------------------------------------- building


def find_toolkit() -> str:
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var) and os.path.isfile(os.path.join(os.environ[var], "bin", "nvcc")):
            return os.environ[var]
    import importlib.util

    spec = importlib.util.spec_from_file_location("minimoe_setup", os.path.join(ROOT, "setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    toolkit, how = module.find_cuda_toolkit()
    if toolkit is None:
        sys.exit(f"kernel_cuda: no CUDA toolkit found ({how})")
    return toolkit


def nvidia_pip_dirs(kind: str) -> list[str]:
    try:
        import nvidia
    except ImportError:
        return []
    return [os.path.join(base, sub, kind) for base in nvidia.__path__ for sub in sorted(os.listdir(base))
            if os.path.isdir(os.path.join(base, sub, kind))]


def library_flags(name: str, toolkit: str) -> list[str]:
    """-L/-l flags for lib<name>.so, looking in the toolkit and in torch's pip-installed nvidia packages."""
    for folder in [os.path.join(toolkit, "lib64"), os.path.join(toolkit, "lib")] + nvidia_pip_dirs("lib"):
        if not os.path.isdir(folder):
            continue
        candidates = sorted(f for f in os.listdir(folder) if f.startswith(f"lib{name}.so"))
        if candidates:
            return ["-L", folder, f"-l:{candidates[0]}", f"-Xlinker=-rpath={folder}"]
    raise RuntimeError(f"lib{name}.so not found in the toolkit or site-packages/nvidia/*/lib")


def build_variant(entry: dict, arch: str) -> str:
    """Compile csrc/dev/<file> into a cached shared library; return its path."""
    toolkit = find_toolkit()
    nvcc = os.path.join(toolkit, "bin", "nvcc")
    sources = [os.path.join(DEV, entry["file"])] + [
        os.path.join(ROOT, "csrc", p) for p in ("dequant.h", "cuda/awq_plan.h", "cuda/awq_device.cuh",
                                                 "cuda/awq_gemv.cuh", "cuda/awq_mma_gemm.cuh",
                                                 "cuda/awq_simple.cuh", "dev/variant.h")] + sorted(
        os.path.join(DEV, f) for f in os.listdir(DEV) if f.endswith((".cuh", ".h")))
    digest = hashlib.sha256(arch.encode())
    for path in sources:
        with open(path, "rb") as f:
            digest.update(f.read())
    out_dir = os.path.join(ROOT, "build", "dev-cuda")
    os.makedirs(out_dir, exist_ok=True)
    out = os.path.join(out_dir, f"{os.path.splitext(entry['file'])[0]}-sm{arch}-{digest.hexdigest()[:12]}.so")
    if os.path.exists(out):
        return out
    includes = [flag for inc in nvidia_pip_dirs("include") for flag in ("-I", inc)]
    libs = [flag for lib in entry.get("libs", []) for flag in library_flags(lib, toolkit)]
    cmd = [nvcc, "-std=c++17", "-O3", "-lineinfo", "-shared", "-Xcompiler", "-fPIC",
           "-gencode", f"arch=compute_{arch},code=sm_{arch}", *includes, sources[0], "-o", out + ".tmp", *libs]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"nvcc failed for {entry['file']}:\n{' '.join(cmd)}\n{result.stderr[-4000:]}")
    os.replace(out + ".tmp", out)
    return out


class Variant:
    """A csrc/dev experiment loaded through its C interface (csrc/dev/variant.h)."""

    def __init__(self, entry: dict, arch: str):
        self.entry = entry
        self.name = f"{entry['id']}:{os.path.splitext(entry['file'])[0][3:]}"
        self.lib = ctypes.CDLL(build_variant(entry, arch))
        self.lib.minimoe_variant_workspace_bytes.restype = ctypes.c_size_t
        self.lib.minimoe_variant_workspace_bytes.argtypes = [ctypes.c_int] * 4
        self.lib.minimoe_variant_run.restype = ctypes.c_int
        self.lib.minimoe_variant_run.argtypes = [ctypes.c_int] + [ctypes.c_void_p] * 5 + [ctypes.c_int] * 4 + [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        self.workspace = torch.empty(0, dtype=torch.uint8, device="cuda")

    def prepare(self, M, K, N, G):
        need = self.lib.minimoe_variant_workspace_bytes(M, K, N, G)
        if self.workspace.numel() < need:
            self.workspace = torch.empty(need, dtype=torch.uint8, device="cuda")

    def __call__(self, x, qweight, qzeros, scales, G, y):
        M, K = x.shape
        N = y.shape[1]
        code = self.lib.minimoe_variant_run(
            0 if x.dtype == torch.float16 else 1, x.data_ptr(), qweight.data_ptr(), qzeros.data_ptr(),
            scales.data_ptr(), y.data_ptr(), M, K, N, G, self.workspace.data_ptr(), self.workspace.numel(),
            torch.cuda.current_stream().cuda_stream)
        if code == -1:
            raise NotImplementedError("shape not supported by this variant")
        if code != 0:
            raise RuntimeError(f"{self.name}: launch failed with code {code}")


class OpKernel:
    """minimoe's own op with a named kernel (torch.ops.minimoe.awq_gemm_cuda_kernel)."""

    def __init__(self, kernel: str):
        self.name, self.kernel = f"op:{kernel}", kernel

    def prepare(self, M, K, N, G):
        if self.kernel == "mma" and (G % 32 or N % 32):
            raise NotImplementedError

    def __call__(self, x, qweight, qzeros, scales, G, y=None):
        out = torch.ops.minimoe.awq_gemm_cuda_kernel(x, qweight, qzeros, scales, G, self.kernel)
        if y is not None:  # the checks compare y; the timing passes None and skips the copy kernel
            y.copy_(out)


def op_available() -> bool:
    try:
        from minimoe import ops

        return "cuda" in ops.build_info()["kernels"].get("awq_gemm", []) and hasattr(
            torch.ops.minimoe, "awq_gemm_cuda_kernel")
    except Exception:  # noqa: BLE001 - the benchmark still runs the experiments without the extension
        return False


# --------------------------------------------------------------------------------------- checking, timing


def make_weights(K, N, G, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    qweight = torch.randint(-2**31, 2**31 - 1, (K, N // 8), dtype=torch.int32, device="cuda", generator=g)
    qzeros = torch.randint(-2**31, 2**31 - 1, (K // G, N // 8), dtype=torch.int32, device="cuda", generator=g)
    scales = (torch.rand(K // G, N, device="cuda", generator=g) * 0.01 + 0.001).to(dtype)
    return qweight, qzeros, scales


def check(kernel, M, K, N, G, dtype) -> str:
    """'ok', 'n/a' (unsupported shape) or a failure message. Output pre-filled with NaN."""
    try:
        kernel.prepare(M, K, N, G)
    except NotImplementedError:
        return "n/a"
    qweight, qzeros, scales = make_weights(K, N, G, dtype, seed=M + K + N)
    x = torch.randn(M, K, device="cuda").to(dtype)
    y = torch.full((M, N), float("nan"), dtype=dtype, device="cuda")
    try:
        kernel(x, qweight, qzeros, scales, G, y)
    except NotImplementedError:
        return "n/a"
    torch.cuda.synchronize()
    bad, err = awq_gemm_check(y, x, qweight, qzeros, scales, G)  # NaN counts as bad
    if bad.any():
        return f"FAIL {int(bad.sum())}/{bad.numel()} wrong (max err {float(err.nan_to_num(float('inf')).max()):.3g})"
    return "ok"


def time_ms(fn, copies: int, warmup: int = 3, iters: int = 20) -> float:
    """Milliseconds of one fn(i) on the GPU (i cycles through weight copies), with no host time in it.

    The calls are captured in one CUDA graph and replayed: `iters` kernels back to back, timed with events around
    the replay, median of 5 replays. (Events around one eagerly launched call would also time the host's launch
    latency, tens of microseconds through Python and the dispatcher, which is longer than a whole decode GEMV.)
    Falls back to events around `iters` eager launches if capture fails.
    """
    for i in range(warmup):
        fn(i % copies)
    torch.cuda.synchronize()
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for i in range(iters):
                fn(i % copies)
        run = graph.replay
    except RuntimeError as error:
        print(f"(CUDA graph capture failed, timing eager launches: {str(error)[:120]})", flush=True)
        torch.cuda.synchronize()

        def run():
            for i in range(iters):
                fn(i % copies)
    run()
    torch.cuda.synchronize()
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / iters)
    times.sort()
    return times[len(times) // 2]


def copies_for(bytes_per_copy: int) -> int:
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 64 * 2**20)
    return max(1, min(16, -(-3 * l2 // max(bytes_per_copy, 1))))


def bench_shape(kernels, M, K, N, G, dtype, copy_gbs) -> list[dict]:
    weight_bytes = K * N // 2 + (K // G) * (N // 8) * 4 + (K // G) * N * 2
    moved = weight_bytes + M * K * 2 + M * N * 2
    copies = copies_for(weight_bytes)
    weights = [make_weights(K, N, G, dtype, seed=c) for c in range(copies)]
    x = torch.randn(M, K, device="cuda").to(dtype)
    y = torch.empty(M, N, dtype=dtype, device="cuda")
    dense = [torch.randn(K, N, device="cuda", dtype=torch.float16) * 0.01 for _ in range(copies_for(K * N * 2))]
    x16 = x.to(torch.float16)
    cublas_ms = time_ms(lambda i: torch.matmul(x16, dense[i % len(dense)]), copies=len(dense))
    del dense
    rows = [dict(variant="cuBLAS fp16 (dense)", M=M, K=K, N=N, G=G, ms=cublas_ms)]
    for kernel in kernels:
        try:
            kernel.prepare(M, K, N, G)
            kernel(x, *weights[0], G, y)
            out = None if isinstance(kernel, OpKernel) else y
            ms = time_ms(lambda i: kernel(x, *weights[i], G, out), copies=copies)
        except NotImplementedError:
            continue
        rows.append(dict(variant=kernel.name, M=M, K=K, N=N, G=G, ms=ms))
    for row in rows:
        seconds = row["ms"] * 1e-3
        row["GB/s"] = (moved if row["variant"] != "cuBLAS fp16 (dense)" else K * N * 2 + M * (K + N) * 2) / seconds / 1e9
        row["TFLOP/s"] = 2 * M * N * K / seconds / 1e12
        row["% copy BW"] = 100 * row["GB/s"] / copy_gbs
        row["% cuBLAS"] = 100 * cublas_ms / row["ms"]
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'variant':<24} {'M':>5} {'K':>6} {'N':>6} {'ms':>9} {'GB/s':>8} {'TFLOP/s':>8} {'%copyBW':>8} {'%cuBLAS':>8}")
    for r in rows:
        print(f"{r['variant']:<24} {r['M']:>5} {r['K']:>6} {r['N']:>6} {r['ms']:>9.4f} {r['GB/s']:>8.1f} "
              f"{r['TFLOP/s']:>8.2f} {r['% copy BW']:>8.1f} {r['% cuBLAS']:>8.1f}")


def _try(fn, *args):
    try:
        return fn(*args), None
    except Exception as error:  # noqa: BLE001 - a failed build is reported, the other variants still race
        return None, str(error)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", nargs="*", default=None, help="registry ids (default: all)")
    parser.add_argument("--no-op", action="store_true", help="skip the op's own kernels")
    parser.add_argument("--dtype", choices=["fp16", "bf16"], default="fp16")
    parser.add_argument("--check-only", action="store_true")
    parser.add_argument("--sweep", action="store_true", help="op gemv vs mma over M at 4096 x 14336")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "gpu"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("kernel_cuda: needs a CUDA GPU (torch.cuda.is_available() is False)")
    dtype = torch.float16 if args.dtype == "fp16" else torch.bfloat16
    major, minor = torch.cuda.get_device_capability()
    arch = f"{major}{minor}"

    with open(os.path.join(DEV, "registry.json")) as f:
        registry = json.load(f)["variants"]
    kernels, build_errors = [], {}
    every = args.variant is None or args.variant == ["all"]  # --variant all, as for the CPU ladder
    wanted = [e for e in registry if every or e["id"] in args.variant]
    t0 = time.time()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:  # nvcc runs in parallel, one per variant
        built = list(pool.map(lambda e: _try(build_variant, e, arch), wanted))
    for entry, (path, error) in zip(wanted, built):
        if error is None:
            kernels.append(Variant(entry, arch))
        else:
            build_errors[entry["file"]] = error
            print(f"BUILD FAILED {entry['file']}: {error[-800:]}", flush=True)
    print(f"built {len(wanted) - len(build_errors)} variants in {time.time() - t0:.1f} s", flush=True)
    if not args.no_op and op_available():
        kernels += [OpKernel("auto"), OpKernel("gemv"), OpKernel("mma")]

    checks = {}
    for kernel in kernels:
        for shape in CHECK_SHAPES:
            checks[f"{kernel.name} {shape}"] = status = check(kernel, *shape, dtype)
            if status not in ("ok", "n/a"):
                print(f"CHECK {kernel.name} M,K,N,G={shape}: {status}", flush=True)
    failed = sorted({k.split(" ")[0] for k, v in checks.items() if v.startswith("FAIL")})
    print(f"checks: {sum(v == 'ok' for v in checks.values())} ok, {len(failed)} kernels failing {failed}")

    result = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, cuda=torch.version.cuda,
                  python=platform.python_version(), dtype=args.dtype, checks=checks, build_errors=build_errors,
                  date=time.strftime("%Y-%m-%d"))
    rows = []
    if not args.check_only:
        copy_gbs = copy_bandwidth("cuda", gigabytes=2**30 / 1e9) / 1e9  # read + write, 1 GiB buffers
        result["copy_GBps"] = copy_gbs
        print(f"measured device copy bandwidth: {copy_gbs:.0f} GB/s")
        good = [k for k in kernels if k.name not in failed]
        shapes = REAL_SHAPES
        if args.sweep:
            good = [OpKernel("gemv"), OpKernel("mma")] if op_available() else []
            shapes = [(m, 4096, 14336, 128) for m in (1, 2, 4, 8, 16, 32, 64, 128)]
        for shape in shapes:
            # Slow variants at prefill size would take seconds per call: race only the gemm-capable ones there.
            chosen = [k for k in good if shape[0] <= 8 or not isinstance(k, Variant)
                      or k.entry["kind"] in ("gemm", "both") and k.entry["id"] != "01"]
            rows += bench_shape(chosen, *shape, dtype, copy_gbs)
            torch.cuda.empty_cache()
        result["rows"] = rows
    name = "kernel_cuda_sweep.json" if args.sweep else "kernel_cuda.json"
    write_json(os.path.join(args.out, name), result)
    if rows:
        print_table(rows)
    sys.exit(1 if failed or build_errors else 0)


if __name__ == "__main__":
    main()
