"""Assignment 4 tests: words unpacked by hand, dequantization by hand, and the C++ GEMV against the spec."""

import pytest
import torch

from assignments.a4_awq_format import adapters
from assignments.framework import task
from minimoe import awq as spec


def as_int32(word: int) -> int:
    """An unsigned 32-bit pattern as the int32 a checkpoint stores (top bit = sign)."""
    return word - 2 ** 32 if word >= 2 ** 31 else word


# ---- 4.1 unpack ---------------------------------------------------------------------------------------------

@task("4.1")
def test_unpack_one_word_by_hand():
    # nibble i (bits 4i..4i+3) holds the value i + 1. AWQ's nibble i holds channel ORDER[i] = (0,2,4,6,1,3,5,7)[i]:
    # channel 0 <- nibble 0 (1), channel 1 <- nibble 4 (5), channel 2 <- nibble 1 (2), channel 3 <- nibble 5 (6) ...
    word = torch.tensor([[as_int32(0x87654321)]], dtype=torch.int32)
    got = adapters.run_unpack(word)
    assert got.dtype == torch.uint8 and got.shape == (1, 8)
    assert got.tolist() == [[1, 5, 2, 6, 3, 7, 4, 8]]


@task("4.1")
def test_unpack_negative_words():
    words = torch.tensor([[-1, as_int32(0x80000000)]], dtype=torch.int32)   # all 15s; only nibble 7 = 8
    assert adapters.run_unpack(words).tolist() == [[15] * 8 + [0, 0, 0, 0, 0, 0, 0, 8]]


@task("4.1")
def test_unpack_inverts_the_spec_pack():
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (5, 24), generator=g, dtype=torch.uint8)
    assert torch.equal(adapters.run_unpack(spec.pack(codes)), codes)


# ---- 4.2 dequantize -----------------------------------------------------------------------------------------

@task("4.2")
def test_dequantize_one_group_by_hand():
    # K = 2 rows, N = 8 channels, one group: q row 0 = 0..7, row 1 = 8..15; z = 3 and s = 0.5 everywhere
    q = torch.tensor([list(range(8)), list(range(8, 16))], dtype=torch.uint8)
    qzeros = spec.pack(torch.full((1, 8), 3, dtype=torch.uint8))
    scales = torch.full((1, 8), 0.5, dtype=torch.float16)
    got = adapters.run_dequantize(spec.pack(q), qzeros, scales, group_size=2, dtype=torch.float32)
    assert got.tolist() == [[(c - 3) * 0.5 for c in range(8)], [(c - 3) * 0.5 for c in range(8, 16)]]


@task("4.2")
def test_dequantize_uses_each_rows_group():
    # K = 4, G = 2: rows 0-1 use group 0 (z = 1, s = 2), rows 2-3 group 1 (z = 15, s = 0.25); q = 9 everywhere
    qweight = spec.pack(torch.full((4, 8), 9, dtype=torch.uint8))
    qzeros = spec.pack(torch.tensor([[1] * 8, [15] * 8], dtype=torch.uint8))
    scales = torch.tensor([[2.0] * 8, [0.25] * 8], dtype=torch.float16)
    got = adapters.run_dequantize(qweight, qzeros, scales, group_size=2, dtype=torch.float32)
    assert got.tolist() == [[16.0] * 8, [16.0] * 8, [-1.5] * 8, [-1.5] * 8]


@task("4.2")
def test_dequantize_returns_the_scales_dtype_by_default():
    qweight = spec.pack(torch.full((2, 8), 5, dtype=torch.uint8))
    qzeros = spec.pack(torch.full((1, 8), 4, dtype=torch.uint8))
    got = adapters.run_dequantize(qweight, qzeros, torch.full((1, 8), 0.125, dtype=torch.float16), group_size=2)
    assert got.dtype == torch.float16 and got.tolist() == [[0.125] * 8] * 2


# ---- 4.3 the C++ GEMV ---------------------------------------------------------------------------------------

def awq_case(M, K, N, G, seed):
    g = torch.Generator().manual_seed(seed)
    tensors = spec.quantize(torch.randn(N, K, generator=g), G)
    return torch.randn(M, K, generator=g), tensors


@task("4.3")
@pytest.mark.parametrize("M,K,N,G", [(1, 128, 64, 32), (3, 256, 128, 128), (1, 64, 8, 64), (2, 512, 72, 128)])
def test_int4_gemv_matches_the_spec(M, K, N, G):
    x, (qweight, qzeros, scales) = awq_case(M, K, N, G, seed=M * K + N)
    y = adapters.run_int4_gemv(x, qweight, qzeros, scales, G)
    assert y.shape == (M, N) and y.dtype == torch.float32
    assert not torch.isnan(y).any()
    want = x.double() @ spec.dequantize(qweight, qzeros, scales, G, torch.float64)
    torch.testing.assert_close(y.double(), want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


@task("4.3")
def test_int4_gemv_checks_its_arguments_before_touching_memory():
    x, (qweight, qzeros, scales) = awq_case(1, 128, 16, 64, seed=5)
    torch.testing.assert_close(adapters.run_int4_gemv(x, qweight, qzeros, scales, 64).double(),
                               x.double() @ spec.dequantize(qweight, qzeros, scales, 64, torch.float64),
                               rtol=1e-4, atol=1e-3)
    with pytest.raises(RuntimeError):
        adapters.run_int4_gemv(x.double(), qweight, qzeros, scales, 64)        # float64 activations
    with pytest.raises(RuntimeError):
        adapters.run_int4_gemv(x[:, :64].contiguous(), qweight, qzeros, scales, 64)   # K does not match
    with pytest.raises(RuntimeError):
        adapters.run_int4_gemv(x, qweight, qzeros, scales, 48)                 # 48 does not divide K
