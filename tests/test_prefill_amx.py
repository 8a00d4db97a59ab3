"""The bf16 prefill path (csrc/cpu/prefill_amx.cpp on a CPU with AMX, the dequantize + torch GEMM fallback
elsewhere) against the pure-PyTorch reference, on the shapes that exercise its edges.

The AMX kernel pads and cuts in several places, each a place for an off-by-one to hide:
  * rows of x: 16-row tiles, 32 rows at a time (M % 16 and M % 32 remainders, M < 16);
  * K: 32-value tiles (K % 32 != 0 happens when G < 32), 512-row chunks (K > 512, and a last chunk shorter than
    512), groups that straddle a row pair when G is odd;
  * N: 128-channel blocks (N % 128 != 0: a short last block), dequantized 4 blocks at a time (a thread's last
    group shorter than 4), blocks split between threads.
MINIMOE_CPU_PATH=prefill forces the path whatever M is. Tolerances are those of tests/test_kernels.py
(assert_matches_reference: fp32 rounding + one bf16 ulp + bf16 rounding of every weight); NaN/inf never passes.
"""

import pytest
import torch

from tests.conftest import at_thread_counts
from tests.test_kernels import assert_matches_reference, call_kernel, random_awq, random_x, require_kernel

SHAPES = [  # M, K, N, G
    (1, 8, 8, 8),  # one row, one k pair short of a tile, one word
    (5, 24, 24, 8),  # K % 32 != 0, N % 128 != 0
    (16, 64, 136, 32),  # exactly one 16-row tile; 2 blocks, the second with one word
    (17, 96, 136, 32),  # 16 + 1 rows: a padded 32-row pair of tiles
    (33, 128, 1024, 64),  # 32 + 1 rows: a 2 x 2 and a 1 x 2 pass
    (48, 544, 264, 32),  # two K chunks (512 + 32), 3 blocks
    (7, 21, 16, 3),  # odd G: rows k, k + 1 in different groups; odd K
    (40, 1536, 1048, 128),  # three chunks; 9 blocks (a group of 4, then a short group per thread)
    (70, 256, 520, 128),  # M % 32 = 6
]


@pytest.mark.parametrize("M,K,N,G", SHAPES)
def test_prefill_bf16_matches_reference(M, K, N, G, monkeypatch):
    require_kernel("cpu")
    monkeypatch.setenv("MINIMOE_CPU_PATH", "prefill")
    qweight, qzeros, scales, spread = random_awq(K, N, G, M * 7919 + K * 31 + N, "cpu")
    x = random_x((M, K), torch.bfloat16, M + K + N, "cpu", spread)
    y = call_kernel(x, qweight, qzeros, scales, G)
    assert_matches_reference(y, x, qweight, qzeros, scales, G)


def test_prefill_bf16_extreme_codes(monkeypatch):
    # All codes 15 and zeros 0 (largest positive weights), then codes 0 and zeros 15 (largest negative): the
    # (q - z) s formula at both ends, with the largest fp16 scale the tests use elsewhere.
    require_kernel("cpu")
    monkeypatch.setenv("MINIMOE_CPU_PATH", "prefill")
    from minimoe import awq

    K, N, G = 256, 264, 64
    for q, z in ((15, 0), (0, 15)):
        qweight = awq.pack(torch.full((K, N), q))
        qzeros = awq.pack(torch.full((K // G, N), z))
        scales = torch.full((K // G, N), 0.021, dtype=torch.float16)
        x = random_x((20, K), torch.bfloat16, q, "cpu")
        assert_matches_reference(call_kernel(x, qweight, qzeros, scales, G), x, qweight, qzeros, scales, G)


def test_prefill_bf16_bitwise_identical_across_thread_counts(monkeypatch):
    # 11 blocks: 1 thread dequantizes them in groups 4 + 4 + 3, 2 threads in 4 + 2 and 4 + 1; K spans 3 chunks.
    # Neither the grouping nor the thread may change a bit of any output.
    require_kernel("cpu")
    monkeypatch.setenv("MINIMOE_CPU_PATH", "prefill")
    qweight, qzeros, scales, _ = random_awq(1280, 8 * 176, 128, 11, "cpu")
    x = random_x((37, 1280), torch.bfloat16, 11, "cpu")
    outputs = at_thread_counts(lambda: torch.ops.minimoe.awq_gemm(x, qweight, qzeros, scales, 128))
    assert torch.equal(outputs[0], outputs[1]) and torch.equal(outputs[0], outputs[2])
    assert_matches_reference(outputs[0], x, qweight, qzeros, scales, 128)
