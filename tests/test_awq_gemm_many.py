"""minimoe::awq_gemm_many (several AWQ products in one call) and linear_many, the model's way to reach it.

The grouped op promises the very same bits as one awq_gemm call per product: it only pools their work items
into one parallel region. So the tests compare it with awq_gemm bit for bit (and both with the pure-PyTorch
spec, through test_kernels' bound), across shapes that take different decode plans (one K chunk or several,
one column span or several, N not a multiple of 128), activation dtypes, rows of x (decode and prefill in
one call), thread counts and the three CPU instruction-set tiers.
"""

import os

import pytest
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st

from minimoe import ops
from minimoe.linear import AWQLinear, Linear, linear_many
from tests.conftest import at_thread_counts
from tests.test_kernels import assert_matches_reference, examples, has_isa_kernels, random_awq, random_x

needs_kernel = pytest.mark.skipif("cpu" not in ops.build_info()["kernels"].get("awq_gemm_many", []),
                                  reason="the compiled CPU extension (awq_gemm_many) is not built")

# (K, N, G): one chunk and one span; one chunk, several spans; several K chunks; N % 128 != 0; G = 32.
SHAPES = [(128, 64, 64), (1024, 8 * 300, 128), (2048, 256, 128), (384, 8 * 21, 128), (256, 8 * 40, 32)]


def call_many(xs, weights):
    return torch.ops.minimoe.awq_gemm_many(xs, [w[0] for w in weights], [w[1] for w in weights],
                                           [w[2] for w in weights], [w[3] for w in weights])


@needs_kernel
@examples(8)
@given(picks=st.lists(st.sampled_from(range(len(SHAPES))), min_size=1, max_size=4),
       rows=st.lists(st.sampled_from([0, 1, 3, 40]), min_size=4, max_size=4),
       dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]), seed=st.integers(0, 2**31))
def test_many_is_bitwise_awq_gemm_per_product(picks, rows, dtype, seed):
    weights, xs = [], []
    for i, shape in enumerate(picks):
        K, N, G = SHAPES[shape]
        qweight, qzeros, scales, spread = random_awq(K, N, G, seed + i, "cpu")
        weights.append((qweight, qzeros, scales, G))
        xs.append(random_x((rows[i], K), dtype, seed + i, "cpu", spread))
    ys = call_many(xs, weights)
    assert len(ys) == len(xs)
    for x, w, y in zip(xs, weights, ys):
        single = torch.ops.minimoe.awq_gemm(x, *w)
        assert y.dtype == x.dtype and y.shape == single.shape
        assert torch.equal(y, single), "awq_gemm_many must give awq_gemm's bits"
        if x.shape[0]:
            assert_matches_reference(y, x, *w)


@needs_kernel
@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512"])
def test_many_matches_single_calls_at_every_thread_count_and_tier(isa):
    if isa != "scalar" and not has_isa_kernels(isa):
        pytest.skip(f"this CPU (or build) has no {isa}")
    weights = [(*random_awq(K, N, G, 7 + i, "cpu")[:3], G) for i, (K, N, G) in enumerate(SHAPES)]
    xs = [random_x((1, w[0].shape[0]), torch.float32, 7 + i, "cpu") for i, w in enumerate(weights)]
    os.environ["MINIMOE_CPU_ISA"] = isa
    try:
        outputs = at_thread_counts(lambda: call_many(xs, weights))
        singles = [torch.ops.minimoe.awq_gemm(x, *w) for x, w in zip(xs, weights)]
    finally:
        del os.environ["MINIMOE_CPU_ISA"]
    for run in outputs:
        for y, single in zip(run, singles):
            assert torch.equal(y, single)


@needs_kernel
def test_many_checks_every_product_and_names_it():
    good = (*random_awq(256, 64, 64, 1, "cpu")[:3], 64)
    x = torch.zeros(1, 256)
    with pytest.raises(RuntimeError, match=r"product 1: x must be \[M, K\] with K = qweight.size\(0\) = 256"):
        call_many([x, torch.zeros(1, 128)], [good, good])
    with pytest.raises(RuntimeError, match="product 0: qweight must be int32"):
        call_many([x], [(good[0].float(), *good[1:])])
    with pytest.raises(RuntimeError, match="must be lists of the same length, found 2, 1"):
        torch.ops.minimoe.awq_gemm_many([x, x], [good[0]], [good[1]], [good[2]], [64])
    with pytest.raises(ValueError, match="2 inputs but 1 weights"):
        ops.awq_gemm_many([x, x], [good])
    assert ops.awq_gemm_many([], []) == []


def awq_layer(K, N, G, seed, bias=False):
    qweight, qzeros, scales, _ = random_awq(K, N, G, seed, "cpu")
    b = torch.randn(N, generator=torch.Generator().manual_seed(seed)) if bias else None
    return AWQLinear(qweight, qzeros, scales, G, bias=b)


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "pure-pytorch"])
def test_linear_many_is_each_layer_called_alone(kernel):
    # Mixed kinds (a plain Linear among AWQ layers), biases, a shared input and per-layer inputs, leading dims.
    plain = Linear(256, 48, bias=True, dtype=torch.float32)
    nn.init.normal_(plain.weight), nn.init.normal_(plain.bias)
    layers = [awq_layer(256, 64, 64, 1), plain, awq_layer(256, 8 * 21, 128, 2, bias=True), awq_layer(256, 32, 64, 3)]
    x = random_x((2, 3, 256), torch.float32, 4, "cpu")
    xs = [random_x((2, 3, 256), torch.float32, 5 + i, "cpu") for i in range(len(layers))]
    for layer in layers:
        layer.kernel = kernel  # off: linear_many must leave the layers to their own (PyTorch) forward
    for inputs, expect_inputs in ((x, [x] * len(layers)), (xs, xs)):
        got = linear_many(inputs, layers)
        for y, layer, xi in zip(got, layers, expect_inputs):
            assert torch.equal(y, layer(xi))


@pytest.mark.skipif(not ops._has_kernel("awq_gemm_many", "cpu"), reason="the compiled CPU extension is not built")
@pytest.mark.parametrize("which", ["x", "qweight", "qzeros", "scales"])
def test_non_contiguous_arguments_give_the_reference(which):
    """Each decode job held pointers into contiguous copies that were freed before it ran (found by the op
    fuzzer: a column-major qweight gave errors of order 1)."""
    from minimoe import awq

    jobs = []
    for seed in (0, 1):
        qweight, qzeros, scales, _ = random_awq(128, 64, 64, seed, "cpu")
        x = torch.randn(2, 128, generator=torch.Generator().manual_seed(seed))
        args = dict(x=x, qweight=qweight, qzeros=qzeros, scales=scales)
        args[which] = args[which].t().contiguous().t() if args[which].shape[0] > 1 else \
            torch.cat([args[which], args[which]], -1)[..., ::2]
        assert not args[which].is_contiguous()
        jobs.append(args)
    ys = torch.ops.minimoe.awq_gemm_many([j["x"] for j in jobs], [j["qweight"] for j in jobs],
                                         [j["qzeros"] for j in jobs], [j["scales"] for j in jobs], [64, 64])
    for j, y in zip(jobs, ys):
        want = awq.awq_linear_reference(j["x"], j["qweight"], j["qzeros"], j["scales"], 64)
        assert torch.allclose(y, want, atol=1e-4 * want.abs().max().item(), rtol=0)
