"""The ARM64 (NEON) tier, tested on any machine: csrc/cpu/awq_gemm_neon.cpp cross-compiled and run under qemu.

The NEON kernels are torch-free, so tests/native/neon_harness.cpp links them into a small static AArch64 program
(aarch64-linux-gnu-g++ -static, a few seconds) that reads one case from a file and writes the kernel's output;
qemu-aarch64 (user-mode emulation) runs it here. The outputs are checked like every other tier's:
  * against the pure-PyTorch spec (minimoe.awq; F.linear on converted weights for linear_stored), with the
    bounds stated in tests/test_kernels.py and tests/test_linear_stored.py;
  * NaN-poisoned: the harness fills y with NaN first, so an output the kernel skips fails the finiteness check;
  * split invariance: the same product computed in two pieces (as two threads of the driver would cut it) must
    give the same bits;
  * where this machine has the AVX2 tier, the same bits as it (the NEON loops do the same operations in the same
    order: tests/test_kernels.py checks AVX2 against AVX-512 the same way).
Also: every C++ source of the extension compiles for AArch64 (torch's headers are the same on every CPU).

The tools come from Debian/Ubuntu packages: `make neon-tools` (apt-get install g++-aarch64-linux-gnu
qemu-user). Without them these tests skip and say so. Speed is not measured here: an emulator says nothing
about it.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sysconfig
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from minimoe import ops
from minimoe.bench import kernels as lab
from tests.test_kernels import assert_matches_reference, examples, has_isa_kernels, random_awq, random_x

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CROSS = shutil.which("aarch64-linux-gnu-g++")
QEMU = shutil.which("qemu-aarch64") or shutil.which("qemu-aarch64-static")
TOOLS_MISSING = ("needs aarch64-linux-gnu-g++ and qemu-aarch64 (`make neon-tools`, i.e. apt-get install "
                 "g++-aarch64-linux-gnu qemu-user); found " + f"compiler={CROSS}, qemu={QEMU}")
needs_tools = pytest.mark.skipif(CROSS is None or QEMU is None, reason=TOOLS_MISSING)
DECODE, PREFILL, LINEAR = 0, 1, 2


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    out = tmp_path_factory.mktemp("neon") / "neon_harness"
    cmd = [CROSS, "-std=c++17", "-O2", "-static", "-Wall", "-Wextra", "-Werror", "-I", os.path.join(ROOT, "csrc"),
           os.path.join(ROOT, "tests", "native", "neon_harness.cpp"),
           os.path.join(ROOT, "csrc", "cpu", "awq_gemm_neon.cpp"), "-o", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, f"cross compile failed:\n{' '.join(cmd)}\n{result.stderr}"
    return str(out)


def run(harness, tmp_path, header: list[int], arrays: list[np.ndarray], outputs: int,
        pieces: int = 2) -> tuple[np.ndarray, ...]:
    """Write one case, run a program under qemu, return its `pieces` outputs of `outputs` floats each (the NEON
    harness: y in one piece, y in two pieces; a lab stage: y)."""
    case, out = tmp_path / "case.bin", tmp_path / "out.bin"
    with open(case, "wb") as f:
        f.write(np.asarray(header, dtype="<i8").tobytes())
        for a in arrays:
            f.write(np.ascontiguousarray(a).tobytes())
    result = subprocess.run([QEMU, harness, str(case), str(out)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{os.path.basename(harness)} exited {result.returncode}: {result.stderr}"
    y = np.fromfile(out, dtype="<f4")
    assert y.size == pieces * outputs, f"{os.path.basename(harness)} wrote {y.size} floats, expected {pieces * outputs}"
    return tuple(y[i * outputs:(i + 1) * outputs] for i in range(pieces))


def awq_case(harness, tmp_path, op, x, qweight, qzeros, scales, G, split):
    M, K = x.shape
    N = scales.shape[1]
    header = [op, M, K, N, G, split]
    arrays = [x.float().numpy(), qweight.numpy().view(np.uint32), qzeros.numpy().view(np.uint32),
              scales.view(torch.int16).numpy().view(np.uint16)]
    y, y2 = run(harness, tmp_path, header, arrays, M * N)
    return torch.from_numpy(y.reshape(M, N).copy()), torch.from_numpy(y2.reshape(M, N).copy())


def assert_same_bits(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    assert torch.isfinite(a).all() and torch.isfinite(b).all(), f"{what}: NaN or inf (an output left unwritten?)"
    same = a.view(torch.int32) == b.view(torch.int32)
    assert same.all(), f"{what}: {int((~same).sum())} of {a.numel()} outputs differ in their bits"


@needs_tools
@pytest.mark.parametrize("op", [DECODE, PREFILL], ids=["decode", "prefill"])
@examples(10)
@given(M=st.sampled_from([1, 2, 3, 4, 5, 9, 40]), words=st.integers(1, 70), G=st.sampled_from([32, 64, 128]),
       groups=st.integers(1, 3), dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
       seed=st.integers(0, 2**32 - 1), data=st.data())
def test_neon_awq_gemm_matches_spec(harness, tmp_path_factory, op, M, words, G, groups, dtype, seed, data):
    # words up to 70 leave a short last strip/block (N % 128 != 0); x of every dtype reaches the kernel as fp32
    # (exactly: the driver converts it), so bf16/fp16 x are drawn at their precision and checked as fp32 x.
    K = G * groups
    qweight, qzeros, scales, spread = random_awq(K, 8 * words, G, seed, "cpu")
    x = random_x((M, K), dtype, seed, "cpu", spread).float()
    pieces = words // 16 if op == DECODE else (words + 15) // 16  # 16-word strips / 128-channel blocks
    split = data.draw(st.integers(0, pieces)) * (16 if op == DECODE else 1)
    y, y2 = awq_case(harness, tmp_path_factory.mktemp("case"), op, x, qweight, qzeros, scales, G, split)
    assert_matches_reference(y, x, qweight, qzeros, scales, G)
    assert_same_bits(y, y2, f"split at {split}")


def host_avx2_kernel() -> bool:
    return "cpu" in ops.build_info()["kernels"].get("awq_gemm", []) and has_isa_kernels("avx2")


@needs_tools
@pytest.mark.parametrize("op", [DECODE, PREFILL], ids=["decode", "prefill"])
@examples(5)
@given(M=st.sampled_from([1, 3, 6, 13]), words=st.integers(1, 40), G=st.sampled_from([32, 128]),
       seed=st.integers(0, 2**32 - 1))
def test_neon_gives_the_avx2_tiers_bits(harness, tmp_path_factory, op, M, words, G, seed):
    # Decode: one group (K = G), so the driver runs the AVX2 loop over all of K in one piece, as the harness does
    # (with more groups it cuts K into chunks and adds their partial sums). Prefill: any K.
    if not host_avx2_kernel():
        pytest.skip("this machine (or build) has no AVX2 tier to compare with")
    K = G if op == DECODE else 3 * G
    qweight, qzeros, scales, spread = random_awq(K, 8 * words, G, seed, "cpu")
    x = random_x((M, K), torch.float32, seed, "cpu", spread)
    os.environ["MINIMOE_CPU_ISA"], os.environ["MINIMOE_CPU_PATH"] = "avx2", "decode" if op == DECODE else "prefill"
    try:
        expected = torch.ops.minimoe.awq_gemm(x, qweight, qzeros, scales, G)
    finally:
        del os.environ["MINIMOE_CPU_ISA"], os.environ["MINIMOE_CPU_PATH"]
    y, _ = awq_case(harness, tmp_path_factory.mktemp("case"), op, x, qweight, qzeros, scales, G, 0)
    assert_same_bits(y, expected, "NEON vs the AVX2 tier")


@needs_tools
@examples(20)
@given(M=st.integers(1, 5), K=st.integers(1, 300), N=st.integers(1, 70),
       w_dtype=st.sampled_from([torch.float16, torch.bfloat16]), round_bf16=st.booleans(),
       seed=st.integers(0, 2**31 - 1), data=st.data())
def test_neon_linear_stored_matches_linear(harness, tmp_path_factory, M, K, N, w_dtype, round_bf16, seed, data):
    # round_bf16 is what bf16 activations ask (W.to(bf16)); bf16 weights are bf16 already, so only fp16 rounds.
    round_bf16 = round_bf16 and w_dtype == torch.float16
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g)
    if round_bf16:
        x = x.bfloat16().float()  # bf16 activations, exactly as fp32
    w = (torch.randn(N, K, generator=g) * 0.05).to(w_dtype)
    split = data.draw(st.integers(0, N))
    header = [LINEAR, M, K, N, int(w_dtype == torch.float16), int(round_bf16), split]
    y, y2 = run(harness, tmp_path_factory.mktemp("case"), header, [x.numpy(), w.view(torch.int16).numpy()], M * N)
    y, y2 = torch.from_numpy(y.reshape(M, N).copy()), torch.from_numpy(y2.reshape(M, N).copy())
    wc = (w.bfloat16() if round_bf16 else w).double()
    exact = x.double() @ wc.T
    bound = 2.0**-20 * (x.double().abs() @ wc.abs().T) + 1e-30
    assert torch.isfinite(y).all(), "NaN or inf (an output left unwritten?)"
    err = (y.double() - exact).abs()
    assert (err <= bound).all(), f"max error {err.max():.3g}, bound there {bound.flatten()[err.argmax()]:.3g}"
    assert_same_bits(y, y2, f"split at row {split}")


NEON_STAGES = [e for e in lab.load_registry() if e.get("isa") == "neon"]


@pytest.fixture(scope="module")
def lab_stages(tmp_path_factory):
    """Each ARM64 stage of the kernel lab, linked with tests/native/lab_stage_main.cpp: {id: program}."""
    programs = {}
    for entry in NEON_STAGES:
        out = tmp_path_factory.mktemp("lab") / f"stage_{entry['id']}"
        cmd = [CROSS, "-std=c++17", "-static", *entry["flags"], os.path.join(ROOT, "csrc", "dev", "cpu", entry["file"]),
               os.path.join(ROOT, "tests", "native", "lab_stage_main.cpp"), "-o", str(out)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        assert result.returncode == 0, f"cross compile of {entry['file']} failed:\n{result.stderr[-3000:]}"
        programs[entry["id"]] = str(out)
    return programs


@needs_tools
@pytest.mark.parametrize("stage", [e["id"] for e in NEON_STAGES])
@examples(6)
@given(M=st.sampled_from([1, 2, 3]), words=st.sampled_from([16, 17, 32, 40]), G=st.sampled_from([32, 128]),
       groups=st.integers(1, 3), threads=st.sampled_from([1, 2]), seed=st.integers(0, 2**32 - 1))
def test_neon_lab_stage_matches_spec(lab_stages, tmp_path_factory, stage, M, words, G, groups, threads, seed):
    # The lab's own check runs a stage only on a CPU with its ISA; this runs the ARM64 ones under qemu here.
    # words 17 and 40 leave words past the last full 16-word strip (the stage's scalar path).
    K = G * groups
    qweight, qzeros, scales, spread = random_awq(K, 8 * words, G, seed, "cpu")
    x = random_x((M, K), torch.float32, seed, "cpu", spread)
    arrays = [x.numpy(), qweight.numpy(), qzeros.numpy(), scales.view(torch.int16).numpy()]
    (y,) = run(lab_stages[stage], tmp_path_factory.mktemp("case"), [M, K, 8 * words, G, threads], arrays,
               M * 8 * words, pieces=1)
    y = torch.from_numpy(y.reshape(M, 8 * words).copy())
    assert_matches_reference(y, x, qweight, qzeros, scales, G)


@needs_tools
def test_extension_sources_compile_for_aarch64(tmp_path):
    # The extension itself cannot be linked here (no AArch64 torch), but every translation unit must compile for
    # AArch64 with the NEON tier in (the x86 kernels reduce to their stubs there). -fsyntax-only: no code made.
    include = os.path.join(os.path.dirname(torch.__file__), "include")
    sources = sorted(glob.glob(os.path.join(ROOT, "csrc", "*.cpp")) + glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp")))

    def compile_one(source):  # -> an error report, or None
        cmd = [CROSS, "-std=c++20", "-fsyntax-only", "-fopenmp", "-Wall", "-I", os.path.join(ROOT, "csrc"),
               "-I", include, "-I", os.path.join(include, "torch", "csrc", "api", "include"),
               "-I", sysconfig.get_paths()["include"], "-DTORCH_API_INCLUDE_EXTENSION_H",
               "-DTORCH_EXTENSION_NAME=_C", source]
        result = subprocess.run(cmd, capture_output=True, text=True)
        return None if result.returncode == 0 else f"{os.path.relpath(source, ROOT)}:\n{result.stderr[-3000:]}"

    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:  # ~10 s a file
        failures = [report for report in pool.map(compile_one, sources) if report]
    assert not failures, "does not compile for AArch64:\n" + "\n".join(failures)
