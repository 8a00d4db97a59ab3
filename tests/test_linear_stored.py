"""minimoe.ops.linear_stored (the lm_head with fp16/bf16 weights kept as stored) and the loader that uses it.

The reference is torch itself: F.linear(x, W.to(x.dtype)), computed here in fp32 from the converted weights
(exact for fp32 activations; for bf16 the converted weights are bf16 values, multiplied exactly in fp32) and
rounded once to x's dtype, which is what the kernel promises. The two add in different orders, so they may
differ by fp32 rounding: bound 2^-20 * |x| @ |W|^T, plus one ulp of bf16 output. NaN never passes.
"""

import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import minimoe
from minimoe import ops
from minimoe.testing import make_tiny_checkpoint
from tests.conftest import at_thread_counts
from tests.test_kernels import examples, has_isa_kernels

needs_kernel = pytest.mark.skipif(not ops.can_keep_stored("cpu", torch.float32, torch.float16),
                                  reason="the compiled CPU extension (linear_stored) is not built")


def reference(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(exact-ish fp32 result of F.linear(x, w.to(x.dtype)), its error bound before output rounding)."""
    wc = w.to(x.dtype).float()
    exact = F.linear(x.double(), wc.double())
    bound = 2.0**-20 * F.linear(x.double().abs(), wc.double().abs())
    return exact, bound


def assert_close_to_reference(y: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> None:
    assert y.dtype == x.dtype and y.shape == (*x.shape[:-1], w.shape[0])
    assert torch.isfinite(y).all(), "non-finite output"
    exact, bound = reference(x, w)
    ulp = 2.0**-7 if x.dtype == torch.bfloat16 else 0.0
    err = (y.double() - exact).abs()
    limit = bound + ulp * exact.abs() + 1e-30
    assert (err <= limit).all(), f"max error {err.max():.3g}, limit there {limit.flatten()[err.argmax()]:.3g}"


# Every tier this CPU can run: the vector tiers (AVX-512, AVX2 + FMA + F16C) and the portable loop.
ISAS = ["scalar"] + ([isa for isa in ("avx512", "avx2") if has_isa_kernels(isa)]
                    if ops.can_keep_stored("cpu", torch.float32, torch.float16) else [])


@needs_kernel
@examples(30)
@given(M=st.integers(0, 5), K=st.integers(1, 300), N=st.integers(1, 70),
       x_dtype=st.sampled_from([torch.float32, torch.bfloat16]), w_dtype=st.sampled_from([torch.float16, torch.bfloat16]),
       isa=st.sampled_from(ISAS), seed=st.integers(0, 2**31 - 1))
def test_matches_linear_on_converted_weights(M, K, N, x_dtype, w_dtype, isa, seed):
    if x_dtype == w_dtype:
        return  # not a stored/compute mismatch: the model calls F.linear then
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g).to(x_dtype)
    w = (torch.randn(N, K, generator=g) * 0.05).to(w_dtype)
    previous = os.environ.get("MINIMOE_CPU_ISA")
    os.environ["MINIMOE_CPU_ISA"] = isa  # read on every call: forces that tier
    try:
        y = ops.linear_stored(x, w)
    finally:
        if previous is None:
            del os.environ["MINIMOE_CPU_ISA"]
        else:
            os.environ["MINIMOE_CPU_ISA"] = previous
    assert_close_to_reference(y, x, w)


@needs_kernel
def test_rounds_fp16_weights_to_bf16_like_a_conversion():
    # fp16 weights that bf16 cannot hold: halfway and non-halfway cases of the 3 low mantissa bits.
    w = torch.tensor([[1 + 2**-8, 1 + 3 * 2**-9, 1 + 2**-10, -(1 + 2**-8 + 2**-10)]], dtype=torch.float16)
    for column in range(4):
        x = torch.zeros(1, 4, dtype=torch.bfloat16)
        x[0, column] = 1.0
        assert ops.linear_stored(x, w).item() == w[0, column].to(torch.bfloat16).item()


@needs_kernel
def test_leading_dims_and_empty():
    x = torch.randn(2, 3, 40)
    w = torch.randn(24, 40).half()
    assert_close_to_reference(ops.linear_stored(x, w).reshape(6, 24), x.reshape(6, 40), w)
    assert ops.linear_stored(torch.empty(0, 40), w).shape == (0, 24)


@needs_kernel
def test_bitwise_identical_across_thread_counts():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4096, generator=g)
    w = (torch.randn(1000, 4096, generator=g) * 0.02).half()
    one, two = at_thread_counts(lambda: ops.linear_stored(x, w), counts=(1, 2))
    assert torch.equal(one, two)


@needs_kernel
@pytest.mark.parametrize("args, message", [
    ((torch.randn(2, 8, dtype=torch.float16), torch.randn(4, 8).half()), "x must be float32 or bfloat16"),
    ((torch.randn(2, 8), torch.randn(4, 8)), "weight must be float16 or bfloat16"),
    ((torch.randn(2, 8), torch.randn(4, 9).half()), "must agree on K"),
    ((torch.randn(2, 2, 8), torch.randn(4, 8).half()), "x must be 2-D"),
    ((torch.randn(2, 8), torch.randn(8).half()), "weight must be 2-D"),
])
def test_checks_arguments(args, message):
    with pytest.raises(RuntimeError, match=message):
        torch.ops.minimoe.linear_stored(*args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tied", [False, True])
def test_model_keeps_fp16_tables_and_matches_converted_model(tmp_path, dtype, tied):
    path = make_tiny_checkpoint(tmp_path / "ckpt", dtype="float16", tie_word_embeddings=tied)
    model = minimoe.load_model(path, dtype=dtype)
    converted = minimoe.load_model(path, dtype=dtype)  # then the table and the lm_head converted by hand
    table = converted.model.embed_tokens
    table.weight = torch.nn.Parameter(table.weight.to(dtype), requires_grad=False)
    converted.lm_head.weight = (table.weight if tied else
                                torch.nn.Parameter(converted.lm_head.weight.to(dtype), requires_grad=False))
    assert converted.lm_head.weight.dtype == dtype
    kernel = ops.can_keep_stored("cpu", dtype, torch.float16)
    assert model.lm_head.weight.dtype == (torch.float16 if kernel else dtype)
    assert model.model.embed_tokens.weight.dtype == (torch.float16 if kernel or not tied else dtype)
    assert model.dtype == dtype
    ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    got, want = model(ids), converted(ids)
    assert got.dtype == want.dtype == dtype and torch.isfinite(got).all()
    # Same weights and the same arithmetic up to the order of the lm_head's sum (and the AWQ kernel's, which
    # is the same in both models): fp32 agrees to rounding, bf16 to a couple of bf16 ulps of the logits.
    tolerance = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2**-6, atol=2**-6)
    torch.testing.assert_close(got, want, **tolerance)


def test_stored_weight_with_the_kernel_off_is_the_conversion():
    from minimoe.linear import Linear

    x = torch.randn(3, 16)
    layer = Linear(16, 5, bias=True, dtype=torch.float16)
    layer.weight.data, layer.bias.data = torch.randn(5, 16).half(), torch.randn(5).half()
    layer.kernel = False  # what the reference engine sets
    want = F.linear(x, layer.weight.float(), layer.bias.float())
    torch.testing.assert_close(layer(x), want, rtol=0, atol=0)
    layer.kernel = True
    torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-5)  # the kernel: same sum, maybe another order

