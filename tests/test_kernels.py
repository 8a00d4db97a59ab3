"""The compiled AWQ GEMM kernels against the pure-PyTorch spec (minimoe.awq.awq_linear_reference).

Every test is parametrised over devices() (the CPU always; CUDA as a case that skips without a GPU), so a CUDA
kernel registered under torch.ops.minimoe.awq_gemm is held to the same properties as the CPU one.

How close is close enough, stated once (see `assert_matches_reference`):
  * The kernel and the reference both compute in fp32 but add in different orders (and the CPU kernel folds the
    zero point into a per-group correction), so they differ by fp32 rounding, which grows with the sum of the
    magnitudes of the terms added. The bound used is 2^-20 (8 fp32 ulps) times |x| @ (31 s), where 31 s bounds
    every term either formulation adds (|q - z|, q + 16 and z + 16 are all <= 31). Observed fp32 errors sit 5-10x
    below it.
  * bf16 and fp16 outputs are rounded once at the end by both sides; two roundings of nearly equal fp32 values can
    land one ulp apart, so add one ulp of the output dtype (2^-7 / 2^-10 relative, 2^-24 absolute for fp16
    subnormals). That ulp is what observed bf16/fp16 errors mostly are.
  * bf16 activations may take the AMX prefill path, which multiplies weights rounded to bf16 (as torch.matmul on
    bf16-dequantized weights would): add 2^-8 |x| @ |W|, the bound for rounding every weight once.
NaN or inf never passes: comparisons against NaN are False, and finiteness is asserted first.
"""

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minimoe import awq, ops
from tests.conftest import at_thread_counts, devices

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
ULP = {torch.float32: 0.0, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}  # one ulp, relative
ULP_FLOOR = {torch.float32: 0.0, torch.bfloat16: 0.0, torch.float16: 2.0**-24}  # fp16's subnormal step


def examples(count):
    """`count` examples under the "ci" profile (20 examples); other profiles scale it (see conftest.py)."""
    scale = settings.default.max_examples / 20
    return settings(max_examples=max(1, round(count * scale)), deadline=None)


def require_kernel(device):
    if device not in ops.build_info()["kernels"].get("awq_gemm", []):
        pytest.fail(f"no compiled awq_gemm kernel for {device}: build_info() = {ops.build_info()}")


def random_awq(K, N, G, seed, device, scale_dtype=torch.float16):
    """Fresh random packed tensors: any codes, any zeros, positive scales of a realistic size (1e-3 .. 2e-2),
    and a random activation spread (0.1 .. 10.1) for random_x."""
    g = torch.Generator().manual_seed(seed)
    qweight = awq.pack(torch.randint(0, 16, (K, N), generator=g))
    qzeros = awq.pack(torch.randint(0, 16, (K // G, N), generator=g))
    scales = (torch.rand(K // G, N, generator=g) * 0.02 + 1e-3).to(scale_dtype)
    spread = 0.1 + 10 * float(torch.rand(1, generator=g))  # how large this example's activations are
    return qweight.to(device), qzeros.to(device), scales.to(device), spread


def random_x(shape, dtype, seed, device, spread=1.0):
    g = torch.Generator().manual_seed(seed ^ 0x5EED)
    return (torch.randn(*shape, generator=g) * spread).to(dtype).to(device)


def call_kernel(x, qweight, qzeros, scales, G):
    """Run the op with the allocator's free memory poisoned: the op allocates its own output, so fill and free
    a tensor of the output's size first; an output element the kernel forgets to write then likely reads NaN."""
    N = scales.shape[1]
    poison = torch.full((max(1, x.shape[0]), N), float("nan"), dtype=x.dtype, device=x.device)
    del poison
    return torch.ops.minimoe.awq_gemm(x, qweight, qzeros, scales, G)


def assert_matches_reference(y, x, qweight, qzeros, scales, G):
    assert y.dtype == x.dtype, f"output dtype {y.dtype}, expected x's {x.dtype}"
    assert y.shape == (*x.shape[:-1], scales.shape[1]), f"output shape {tuple(y.shape)}"
    assert torch.isfinite(y).all(), "kernel output has NaN or inf"
    # The CUDA kernels dequantize each weight into x's dtype before multiplying (as AutoAWQ's do); the CPU
    # kernels keep fp16-activation weights in fp32. Rounding a weight costs at most half an ulp of it.
    weights_rounded = x.dtype == torch.bfloat16 or (y.device.type == "cuda" and x.dtype == torch.float16)
    # The reference runs on the CPU whatever the kernel's device: there its half-precision matmul accumulates in
    # fp32 and rounds once, which is what `allowed` below assumes. cuBLAS may reduce fp16/bf16 in reduced
    # precision (torch's default on GPUs).
    y, x, qweight, qzeros, scales = (t.cpu() for t in (y, x, qweight, qzeros, scales))
    ref = awq.awq_linear_reference(x, qweight, qzeros, scales, G).float()
    x32 = x.float().reshape(-1, x.shape[-1])
    w32 = awq.dequantize(qweight, qzeros, scales, G, dtype=torch.float32)
    s_rows = scales.float().repeat_interleave(G, dim=0)  # [K, N]: the scale of each weight
    allowed = 2.0**-20 * (x32.abs() @ (31 * s_rows))
    if weights_rounded:  # |sum x (w_rounded - w)| <= half an ulp * sum |x| |w|
        allowed += ULP[x.dtype] / 2 * (x32.abs() @ w32.abs())
    allowed = allowed.reshape(ref.shape) + ULP[x.dtype] * ref.abs() + ULP_FLOOR[x.dtype]
    err = (y.float() - ref).abs()
    bad = ~(err <= allowed)
    if bad.any():
        i = tuple(int(v) for v in bad.nonzero()[0])
        raise AssertionError(f"{int(bad.sum())} of {err.numel()} outputs off; first at {i}: kernel "
                             f"{float(y.float()[i])}, reference {float(ref[i])}, allowed {float(allowed[i])}")


# ----------------------------------------------------------------------------------------- the property


@pytest.mark.parametrize("device", devices())
@examples(40)
@given(
    M=st.sampled_from([0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 40]),
    groups=st.integers(1, 6),
    G=st.sampled_from([32, 64, 128, "K"]),
    words=st.integers(1, 80),  # N = 8 .. 640: one short block, several blocks, more than one 512-wide tile
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**32 - 1),
)
def test_matches_reference(device, M, groups, G, words, dtype, seed):
    require_kernel(device)
    K = groups * (128 if G == "K" else G)
    G = K if G == "K" else G
    N = 8 * words
    qweight, qzeros, scales, spread = random_awq(K, N, G, seed, device)
    x = random_x((M, K), dtype, seed, device, spread)
    y = call_kernel(x, qweight, qzeros, scales, G)
    assert_matches_reference(y, x, qweight, qzeros, scales, G)


@pytest.mark.parametrize("device", devices())
def test_real_layer_shape_decode(device):
    # One real 4096 x 4096 layer (q_proj / o_proj of Confinus-2x7B) at M = 1, G = 128.
    require_kernel(device)
    qweight, qzeros, scales, _ = random_awq(4096, 4096, 128, 7, device)
    x = random_x((1, 4096), torch.float32, 7, device)
    assert_matches_reference(call_kernel(x, qweight, qzeros, scales, 128), x, qweight, qzeros, scales, 128)


@pytest.mark.parametrize("device", devices())
def test_empty_batch_returns_empty(device):
    require_kernel(device)
    qweight, qzeros, scales, _ = random_awq(128, 64, 128, 1, device)
    for dtype in DTYPES:
        y = torch.ops.minimoe.awq_gemm(torch.empty(0, 128, dtype=dtype, device=device), qweight, qzeros, scales, 128)
        assert y.shape == (0, 64) and y.dtype == dtype


@pytest.mark.parametrize("device", devices())
def test_leading_batch_dims_through_ops(device):
    # minimoe.ops.awq_gemm takes [..., K] like nn.Linear and flattens the leading dims for the op.
    require_kernel(device)
    qweight, qzeros, scales, _ = random_awq(256, 72, 64, 2, device)
    for shape in [(256,), (2, 3, 256), (2, 1, 9, 256)]:
        x = random_x(shape, torch.float32, 3, device)
        y = ops.awq_gemm(x, qweight, qzeros, scales, 64)
        assert y.shape == (*shape[:-1], 72)
        assert_matches_reference(y, x, qweight, qzeros, scales, 64)


@pytest.mark.parametrize("device", devices())
def test_non_contiguous_inputs(device):
    require_kernel(device)
    qweight, qzeros, scales, _ = random_awq(256, 128, 128, 4, device)
    x = random_x((256, 5), torch.float32, 4, device).t()  # [5, 256], column-major
    q_nc = qweight.t().contiguous().t()  # same values, transposed strides
    assert not x.is_contiguous() and not q_nc.is_contiguous()
    assert_matches_reference(call_kernel(x, q_nc, qzeros, scales, 128), x, qweight, qzeros, scales, 128)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("scale_dtype", [torch.bfloat16, torch.float32])
def test_other_scale_dtypes(device, scale_dtype):
    require_kernel(device)
    qweight, qzeros, scales, _ = random_awq(256, 136, 64, 5, device, scale_dtype=scale_dtype)
    for M in (1, 40):
        x = random_x((M, 256), torch.float32, 5, device)
        assert_matches_reference(call_kernel(x, qweight, qzeros, scales, 64), x, qweight, qzeros, scales, 64)


# --------------------------------------------------------------------- determinism and the two CPU paths


@pytest.mark.parametrize("M", [1, 3, 40])  # decode (one and several rows of x) and prefill (bf16 at 40)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
# decode cuts K into 1 chunk / 2 chunks / 8 chunks of groups (fewer chunks than threads: columns split as well)
@pytest.mark.parametrize("K,G", [(128, 128), (384, 128), (2048, 32)])
@pytest.mark.parametrize("isa", ["auto", "avx2"])  # this CPU's own tier, and the AVX2 loop where it can run
def test_bitwise_identical_across_thread_counts_cpu(M, dtype, K, G, isa, monkeypatch):
    require_kernel("cpu")
    if isa != "auto" and not has_isa_kernels(isa):
        pytest.skip(f"this CPU (or build) has no {isa}")
    monkeypatch.setenv("MINIMOE_CPU_ISA", isa)
    # N spans several tiles so that two threads really split it.
    qweight, qzeros, scales, _ = random_awq(K, 8 * 300, G, 6, "cpu")
    x = random_x((M, K), dtype, 6, "cpu")
    outputs = at_thread_counts(lambda: torch.ops.minimoe.awq_gemm(x, qweight, qzeros, scales, G))
    assert torch.equal(outputs[0], outputs[1]) and torch.equal(outputs[0], outputs[2])
    assert_matches_reference(outputs[0], x, qweight, qzeros, scales, G)


def test_torch_mm_itself_depends_on_thread_count_at_this_size():
    # Why the fp32 prefill path has its own micro-kernel (prefill_fp32.cpp) rather than handing tiles to torch's
    # GEMM, as it first did: that GEMM (MKL) is not thread-count invariant at this size, and neither was the path.
    a, b = torch.randn(40, 2048), torch.randn(2048, 512)
    one, two = at_thread_counts(lambda: torch.mm(a, b), counts=(1, 2))
    if torch.get_num_threads() < 2 or torch.equal(one, two):
        pytest.skip("this BLAS build/machine happens to be thread-count invariant here")
    assert not torch.equal(one, two)


def has_isa_kernels(isa):
    os.environ["MINIMOE_CPU_ISA"] = isa
    try:
        torch.ops.minimoe.awq_gemm(torch.zeros(1, 32), *random_awq(32, 8, 32, 0, "cpu")[:3], 32)
        return True
    except RuntimeError:
        return False
    finally:
        del os.environ["MINIMOE_CPU_ISA"]


@pytest.mark.parametrize("path", ["decode", "prefill"])
@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512"])
@examples(10)
@given(M=st.sampled_from([1, 2, 3, 5, 40]), words=st.integers(1, 70), G=st.sampled_from([32, 64, 192]),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**32 - 1))
def test_each_cpu_kernel_matches_reference(isa, path, M, words, G, dtype, seed):
    # MINIMOE_CPU_ISA and MINIMOE_CPU_PATH (read on every call) force one kernel family and one path, so all
    # six combinations are checked on an AVX-512 machine, at any M. (AVX2's prefill is its own fp32 kernel for
    # every dtype; forced to prefill, the scalar tier runs the dequantize + GEMM fallback.)
    require_kernel("cpu")
    if isa != "scalar" and not has_isa_kernels(isa):
        pytest.skip(f"this CPU (or build) has no {isa}")
    # G = 32 is two chunks of the AVX2 loop's 16 rows, 192 twelve; words up to 70 leave a short last strip.
    qweight, qzeros, scales, spread = random_awq(192, 8 * words, G, seed, "cpu")
    x = random_x((M, 192), dtype, seed, "cpu", spread)
    os.environ["MINIMOE_CPU_ISA"], os.environ["MINIMOE_CPU_PATH"] = isa, path
    try:
        y = call_kernel(x, qweight, qzeros, scales, G)
    finally:
        del os.environ["MINIMOE_CPU_ISA"], os.environ["MINIMOE_CPU_PATH"]
    assert_matches_reference(y, x, qweight, qzeros, scales, G)


@pytest.mark.parametrize("variable, value, message", [
    ("MINIMOE_CPU_ISA", "sse9", "MINIMOE_CPU_ISA must be auto, avx512, avx2, neon or scalar, found 'sse9'"),
    ("MINIMOE_CPU_PATH", "fast", "MINIMOE_CPU_PATH must be auto, decode or prefill, found 'fast'"),
])
def test_unknown_kernel_choice_is_refused(monkeypatch, variable, value, message):
    require_kernel("cpu")
    monkeypatch.setenv(variable, value)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.minimoe.awq_gemm(torch.zeros(1, 32), *random_awq(32, 8, 32, 0, "cpu")[:3], 32)


# ------------------------------------------------------------------------------ every check, from Python


def _bad_calls():
    """(description, kwargs override, message regex). Base call: x [2, 256], K = 256, N = 64, G = 64."""
    return [
        ("x int", dict(x=torch.zeros(2, 256, dtype=torch.int32)), r"x must be float32, bfloat16 or float16, found Int"),
        ("x float64", dict(x=torch.zeros(2, 256, dtype=torch.float64)), r"x must be float32, bfloat16 or float16, found Double"),
        ("x 3-D", dict(x=torch.zeros(1, 2, 256)), r"x must be 2-D, found 3-D with shape \[1, 2, 256\]"),
        ("x wrong K", dict(x=torch.zeros(2, 255)), r"x must be \[M, K\] with K = qweight.size\(0\) = 256, found shape \[2, 255\]"),
        ("qweight float", dict(qweight=torch.zeros(256, 8)), r"qweight must be int32 \(8 packed 4-bit codes\), found Float"),
        ("qweight 1-D", dict(qweight=torch.zeros(256, dtype=torch.int32)), r"qweight must be 2-D, found 1-D"),
        ("qweight empty", dict(qweight=torch.zeros(256, 0, dtype=torch.int32)), r"qweight must be \[K, N/8\] with K >= 1 and N/8 >= 1"),
        ("qzeros int64", dict(qzeros=torch.zeros(4, 8, dtype=torch.int64)), r"qzeros must be int32 \(8 packed 4-bit zeros\), found Long"),
        ("qzeros shape", dict(qzeros=torch.zeros(4, 9, dtype=torch.int32)), r"qzeros must be \[K/G, N/8\] = \[4, 8\], found shape \[4, 9\]"),
        ("scales int", dict(scales=torch.zeros(4, 64, dtype=torch.int16)), r"scales must be float16 \(or bfloat16/float32\), found Short"),
        ("scales rows", dict(scales=torch.zeros(2, 64, dtype=torch.float16)), r"scales must be \[K/G, N\] = \[4, 64\] .*found shape \[2, 64\]"),
        ("scales cols (N % 8)", dict(scales=torch.zeros(4, 60, dtype=torch.float16)), r"scales must be \[K/G, N\] = \[4, 64\] \(N = 8 \* qweight.size\(1\), so N % 8 == 0\), found shape \[4, 60\]"),
        ("group_size 0", dict(group_size=0), r"group_size must be positive, found 0"),
        ("group_size -1", dict(group_size=-1), r"group_size must be positive, found -1"),
        ("K % G", dict(group_size=96), r"group_size 96 must divide K = 256, found remainder 64"),
    ]


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("case", _bad_calls(), ids=lambda case: case[0])
def test_every_argument_check_fires(device, case):
    require_kernel(device)
    _, override, message = case
    qweight, qzeros, scales, _ = random_awq(256, 64, 64, 0, "cpu")
    args = dict(x=torch.zeros(2, 256), qweight=qweight, qzeros=qzeros, scales=scales, group_size=64)
    args.update(override)
    moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    with pytest.raises(RuntimeError, match=message):
        torch.ops.minimoe.awq_gemm(moved["x"], moved["qweight"], moved["qzeros"], moved["scales"], moved["group_size"])


@pytest.mark.cuda
def test_device_mismatch_is_refused():
    # x on the GPU, weights on the CPU (needs a GPU to construct).
    qweight, qzeros, scales, _ = random_awq(256, 64, 64, 0, "cpu")
    with pytest.raises(RuntimeError, match="(?i)(device|cuda|cpu)"):
        torch.ops.minimoe.awq_gemm(torch.zeros(2, 256, device="cuda"), qweight, qzeros, scales, 64)


def torch_gemm_calls(fn):
    """The names of the torch matrix-multiply ops that fn() ran, from the profiler's op list (a GEMM called from
    inside our C++ op goes through the dispatcher too, so it is listed)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return [e.name for e in prof.events() if e.name in ("aten::mm", "aten::mm_out", "aten::addmm", "aten::bmm")]


@pytest.mark.parametrize("isa", ["avx2", "scalar"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_without_avx512_no_product_reaches_torch_gemm(isa, dtype, monkeypatch):
    """On a CPU without AVX-512 (its tier forced here) no default path hands a tile to torch's GEMM: bf16 there
    ran ~100x slower than fp32 (no native bf16), and fp32 through MKL depends on the thread count. The AVX2 tier
    prefills with its own fp32 micro-kernel at 32 rows and more, every dtype as fp32; the scalar tier decodes."""
    require_kernel("cpu")
    if isa != "scalar" and not has_isa_kernels(isa):
        pytest.skip(f"this CPU (or build) has no {isa}")
    qweight, qzeros, scales, spread = random_awq(256, 200, 64, 3, "cpu")
    monkeypatch.setenv("MINIMOE_CPU_ISA", isa)
    for M in (1, 31, 32, 64):
        x = random_x((M, 256), dtype, 1, "cpu", spread)
        results = []
        assert torch_gemm_calls(lambda: results.append(call_kernel(x, qweight, qzeros, scales, 64))) == []
        assert_matches_reference(results[0], x, qweight, qzeros, scales, 64)
        monkeypatch.setenv("MINIMOE_CPU_PATH", "prefill" if isa == "avx2" and M >= 32 else "decode")
        assert torch.equal(results[0], call_kernel(x, qweight, qzeros, scales, 64))  # the path it says it takes
        monkeypatch.delenv("MINIMOE_CPU_PATH")
    # The detector itself: the scalar tier forced to prefill does call torch's GEMM, and the list shows it.
    monkeypatch.setenv("MINIMOE_CPU_ISA", "scalar")
    monkeypatch.setenv("MINIMOE_CPU_PATH", "prefill")
    assert torch_gemm_calls(lambda: call_kernel(x, qweight, qzeros, scales, 64)) != []


@examples(10)
@given(M=st.integers(1, 40), words=st.integers(1, 40), G=st.sampled_from([32, 64, 256]), seed=st.integers(0, 2**32 - 1))
def test_avx2_prefill_is_bitwise_the_avx512_one(M, words, G, seed):
    """Both fp32 prefill micro-kernels add the same products in the same k order: the same bits."""
    require_kernel("cpu")
    if not (has_isa_kernels("avx2") and has_isa_kernels("avx512")):
        pytest.skip("needs a CPU with both AVX2 and AVX-512")
    qweight, qzeros, scales, spread = random_awq(512, 8 * words, G, seed, "cpu")
    x = random_x((M, 512), torch.float32, seed, "cpu", spread)
    outputs = {}
    for isa in ("avx2", "avx512"):
        os.environ["MINIMOE_CPU_ISA"], os.environ["MINIMOE_CPU_PATH"] = isa, "prefill"
        try:
            outputs[isa] = call_kernel(x, qweight, qzeros, scales, G)
        finally:
            del os.environ["MINIMOE_CPU_ISA"], os.environ["MINIMOE_CPU_PATH"]
    assert torch.equal(outputs["avx2"], outputs["avx512"])
    assert_matches_reference(outputs["avx2"], x, qweight, qzeros, scales, G)
