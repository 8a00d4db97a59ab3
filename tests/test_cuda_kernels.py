"""The CUDA kernels of minimoe::awq_gemm against the spec (minimoe.awq.awq_linear_reference).

Every kernel ("gemv", "mma", "simple", and "auto" = the dispatch rule) runs on random shapes including the
awkward ones (M = 1, 3, 257; N = 8; K = G; N not a multiple of the tile), in fp16 and bf16, through
`torch.ops.minimoe.awq_gemm_cuda_kernel`, which is awq_gemm with the kernel named. The op allocates its output,
so "poisoning" is checked the other way: every output must be finite and match the reference (a kernel that
skipped an element would leave torch.empty's garbage, which the comparison catches; NaN never compares close).

These tests are marked `cuda` and skip without a GPU. One test here runs everywhere: nvcc compiles every
experiment variant listed in csrc/dev/registry.json (skipped when no CUDA toolkit is installed).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from minimoe import awq, ops
from minimoe.testing import awq_gemm_check

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS = ["auto", "gemv", "mma", "simple"]
DTYPES = [torch.float16, torch.bfloat16]


def has_cuda_kernel() -> bool:
    return "cuda" in ops.build_info()["kernels"].get("awq_gemm", [])


def make_case(M, K, N, G, dtype, seed, scale_dtype=torch.float16):
    """Random AWQ weights (via the spec's quantizer) and activations on the GPU."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(N, K, generator=generator) * 0.05
    qweight, qzeros, scales = awq.quantize(weight, G)
    x = torch.randn(M, K, generator=generator).to(dtype)
    return [t.cuda() for t in (x, qweight, qzeros, scales.to(scale_dtype))]


def check_against_reference(x, qweight, qzeros, scales, G, kernel):
    torch.backends.cuda.matmul.allow_tf32 = False
    y = torch.ops.minimoe.awq_gemm_cuda_kernel(x, qweight, qzeros, scales, G, kernel)
    torch.cuda.synchronize()
    assert y.dtype == x.dtype and y.shape == (x.shape[0], scales.shape[1])
    assert torch.isfinite(y).all(), f"kernel {kernel}: non-finite output"
    bad, err = awq_gemm_check(y, x, qweight, qzeros, scales, G)  # the tolerance and why: minimoe/testing.py
    assert not bad.any(), (f"kernel {kernel}: {int(bad.sum())} of {bad.numel()} outside tolerance, largest "
                           f"error {float(err.max()):.3g}")


needs_kernel = pytest.mark.skipif(torch.cuda.is_available() and not has_cuda_kernel(),
                                  reason="minimoe._C was built without its CUDA kernels")


@pytest.mark.cuda
@needs_kernel
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M, K, N, G", [
    (1, 128, 8, 128),      # K = G, N = 8: one word per row
    (3, 256, 64, 128),     # odd M
    (8, 4096, 4096, 128),  # the dispatch boundary, GEMV side
    (9, 4096, 4096, 128),  # ... and the tensor-core side
    (257, 512, 160, 32),   # M crosses a 128 tile + 1, N not a multiple of 128
    (130, 4096, 14336, 128),
    (5, 96, 24, 32),       # N % 32 != 0: no 16-byte words; mma not applicable
])
def test_kernel_matches_reference(kernel, dtype, M, K, N, G):
    if kernel == "mma" and (G % 32 or N % 32):
        pytest.skip("the mma kernel needs G % 32 == 0 and N % 32 == 0 (awq_plan.h)")
    check_against_reference(*make_case(M, K, N, G, dtype, seed=M * 7 + N), G, kernel)


@pytest.mark.cuda
@needs_kernel
@given(M=st.sampled_from([1, 2, 3, 4, 5, 7, 8, 9, 17, 64, 129, 257]),
       groups=st.integers(1, 6), G=st.sampled_from([8, 32, 64, 128]), words=st.integers(1, 40),
       dtype=st.sampled_from(DTYPES), kernel=st.sampled_from(KERNELS), seed=st.integers(0, 2**31 - 1))
def test_kernels_random_shapes(M, groups, G, words, dtype, kernel, seed):
    K, N = groups * G, 8 * words
    if kernel == "mma" and (G % 32 or N % 32):
        kernel = "auto"
    check_against_reference(*make_case(M, K, N, G, dtype, seed), G, kernel)


@pytest.mark.cuda
@needs_kernel
@pytest.mark.parametrize("x_dtype, scale_dtype", [(torch.bfloat16, torch.float16), (torch.bfloat16, torch.bfloat16),
                                                  (torch.float16, torch.bfloat16), (torch.float32, torch.float16),
                                                  (torch.float32, torch.float32)])
@pytest.mark.parametrize("M", [1, 33])
def test_mixed_dtypes_through_auto(x_dtype, scale_dtype, M):
    check_against_reference(*make_case(M, 256, 256, 64, x_dtype, seed=M, scale_dtype=scale_dtype), 64, "auto")


@pytest.mark.cuda
@needs_kernel
def test_public_op_and_non_contiguous_input():
    x, qweight, qzeros, scales = make_case(6, 256, 128, 128, torch.float16, seed=5)
    wide = torch.zeros(6, 512, dtype=x.dtype, device=x.device)
    wide[:, ::2] = x
    view = wide[:, ::2]  # non-contiguous: the op must copy it
    y = ops.awq_gemm(view, qweight, qzeros, scales, 128)
    ref = awq.awq_linear_reference(x, qweight, qzeros, scales, 128)
    torch.testing.assert_close(y.float(), ref.float(), rtol=2e-2, atol=2e-2)
    assert torch.equal(y, ops.awq_gemm(x, qweight, qzeros, scales, 128)), "same input, same bits"


@pytest.mark.cuda
@needs_kernel
def test_errors_name_the_problem():
    x, qweight, qzeros, scales = make_case(2, 256, 64, 128, torch.float16, seed=6)
    with pytest.raises(RuntimeError, match="group_size"):
        torch.ops.minimoe.awq_gemm(x, qweight, qzeros, scales, 96)
    with pytest.raises(RuntimeError, match=r"K = qweight.size\(0\) = 256, found shape \[2, 128\]"):
        torch.ops.minimoe.awq_gemm(x[:, :128], qweight, qzeros, scales, 128)
    with pytest.raises(RuntimeError, match="kernel must be one of"):
        torch.ops.minimoe.awq_gemm_cuda_kernel(x, qweight, qzeros, scales, 128, "fastest")
    with pytest.raises(RuntimeError, match="device"):
        torch.ops.minimoe.awq_gemm(x, qweight.cpu(), qzeros, scales, 128)


@pytest.mark.cuda
@needs_kernel
def test_current_stream_is_used():
    x, qweight, qzeros, scales = make_case(1, 4096, 4096, 128, torch.float16, seed=7)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        y = torch.ops.minimoe.awq_gemm(x, qweight, qzeros, scales, 128)
    stream.synchronize()
    check_against_reference(x, qweight, qzeros, scales, 128, "auto")
    torch.testing.assert_close(y, torch.ops.minimoe.awq_gemm(x, qweight, qzeros, scales, 128), rtol=0, atol=0)


# --------------------------------------------------------------------------- experiments compile (no GPU)


def real_nvcc() -> str | None:
    """The toolkit's nvcc (setup.py's finder sees through the wrapper script on PATH)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("minimoe_setup", os.path.join(ROOT, "setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    toolkit = module.find_cuda_toolkit()[0]
    return os.path.join(toolkit, "bin", "nvcc") if toolkit else None


def cuda_library_includes() -> list[str]:
    """site-packages/nvidia/*/include (cublas_v2.h lives there when the toolkit is slim)."""
    try:
        import nvidia
    except ImportError:
        return []
    return [os.path.join(base, sub, "include") for base in nvidia.__path__ for sub in sorted(os.listdir(base))
            if os.path.isdir(os.path.join(base, sub, "include"))]


def test_every_experiment_variant_compiles():
    nvcc = real_nvcc()
    if nvcc is None or shutil.which(nvcc) is None:
        pytest.skip("no CUDA toolkit (nvcc) found: the experiment variants cannot be compiled here")
    with open(os.path.join(ROOT, "csrc", "dev", "registry.json")) as f:
        variants = json.load(f)["variants"]
    listed = {v["file"] for v in variants}
    on_disk = {name for name in os.listdir(os.path.join(ROOT, "csrc", "dev")) if name.endswith(".cu")}
    assert listed == on_disk, f"registry.json and csrc/dev disagree: {sorted(listed ^ on_disk)}"
    includes = [flag for inc in cuda_library_includes() for flag in ("-I", inc)]

    def compile_one(variant, out_dir):
        # One architecture, object file only: this checks the code, the harness does the real build.
        cmd = [nvcc, "-std=c++17", "-O1", "-gencode", "arch=compute_80,code=sm_80", *includes, "-c",
               os.path.join(ROOT, "csrc", "dev", variant["file"]), "-o",
               os.path.join(out_dir, variant["file"] + ".o")]
        result = subprocess.run(cmd, capture_output=True, text=True)
        return variant["file"], result.returncode, result.stderr[-3000:]

    with tempfile.TemporaryDirectory() as out_dir, ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(pool.map(lambda v: compile_one(v, out_dir), variants))
    failures = [f"{name}:\n{err}" for name, rc, err in results if rc != 0]
    assert not failures, "\n".join(failures)


def local_includes(path: str) -> list[str]:
    """The quoted #include targets of a file, as written."""
    with open(path) as f:
        return re.findall(r'^\s*#\s*include\s+"([^"]+)"', f.read(), flags=re.M)


def test_frozen_stages_include_no_production_code():
    # A stage (or the baseline, or a configuration of a stage) is a frozen experiment: nothing it includes,
    # directly or through the lab's own headers, may live outside csrc/dev/ (csrc/cuda/, csrc/dequant.h), or
    # an edit to a production kernel would silently change a numbered result. Production configurations are
    # the opposite: they must call the shipped kernel. Runs everywhere (no nvcc needed).
    dev = os.path.join(ROOT, "csrc", "dev")
    with open(os.path.join(dev, "registry.json")) as f:
        variants = json.load(f)["variants"]
    ids = {v["id"] for v in variants}
    for v in variants:
        assert v.get("role") in ("stage", "baseline", "production", "configuration"), v
        if v["role"] == "configuration":
            assert v.get("of") in ids, f"{v['file']}: a configuration names the stage it configures ('of')"
        seen, todo, outside = set(), [v["file"]], []
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            for inc in local_includes(os.path.join(dev, name)):
                if os.path.dirname(os.path.normpath(inc)):  # ../cuda/..., ../dequant.h: outside the lab
                    outside.append(f"{name} includes {inc}")
                else:
                    todo.append(inc)
        if v["role"] == "production":
            assert any("../cuda/" in o for o in outside), f"{v['file']}: a production configuration calls csrc/cuda/"
        else:
            assert not outside, f"{v['file']} ({v['role']}) reaches production code: {outside}"


def test_the_shared_check_passes_the_reference_and_catches_errors():
    # awq_gemm_check is what every CUDA kernel is judged by (here, in check_cuda_op.py and kernel_cuda.py):
    # on the CPU, it must accept the reference's own output and refuse a wrong element and a NaN.
    torch.manual_seed(0)
    qweight, qzeros, scales = awq.quantize(torch.randn(64, 256) * 0.05, 128)
    x = torch.randn(3, 256).half()
    good = awq.awq_linear_reference(x, qweight, qzeros, scales, 128)
    bad, _ = awq_gemm_check(good, x, qweight, qzeros, scales, 128)
    assert not bad.any()
    wrong = good.clone()
    wrong[1, 5] += 0.05 * good.float().abs().max().item() + 0.01
    wrong[2, 7] = float("nan")
    bad, _ = awq_gemm_check(wrong, x, qweight, qzeros, scales, 128)
    assert bad.nonzero().tolist() == [[1, 5], [2, 7]]
