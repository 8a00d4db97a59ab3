"""The AWQ int4 GEMM in Triton: y = x @ dequantize(qweight, qzeros, scales), one program per (BLOCK_M, BLOCK_N) tile.

    from minimoe.kernels.triton_awq import awq_gemm_triton
    y = awq_gemm_triton(x, qweight, qzeros, scales, group_size)       # CUDA tensors; or TRITON_INTERPRET=1 on CPU

The kernel is the format's formula, tiled: each program walks K in steps of BLOCK_K, loads the x tile and the
matching rows of packed words (each word is read by the 8 output channels it holds), pulls every channel's code
out with its own shift, 4 * REVERSE[n % 8] (AWQ's nibble order as arithmetic: REVERSE[j] = 4 (j % 2) + j // 2),
does the same for the zero points of each row's group, multiplies by the fp16 scales in fp32, and accumulates
x_tile @ w_tile with tl.dot in fp32 (IEEE precision, no TF32). It dequantizes each weight once per BLOCK_M rows of
x, the same trade the CUDA and CPU kernels make, in about 40 lines; what it leaves on the table against
csrc/cuda (no split-K for M = 1, no software pipelining of the unpacking) is what the CUDA ladder is for.

Triton is an optional extra (`pip install triton`; Linux wheels of torch bring it). With TRITON_INTERPRET=1 set
before this module is imported, the kernel runs in Triton's interpreter on CPU tensors: how CI checks it against the
spec on a machine without a GPU (slowly: correctness only). Registered in csrc/dev/cpu/registry.json as "triton".
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _awq_gemm_kernel(x_ptr, qweight_ptr, qzeros_ptr, scales_ptr, y_ptr, M, N, K, G,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    j = cols % 8
    shift = (4 * (j % 2) + j // 2) * 4                 # 4 * REVERSE[j]: the bits of channel 8c + j in word c
    words_per_row = N // 8
    row_ok, col_ok = rows < M, cols < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        x = tl.load(x_ptr + rows[:, None] * K + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        both = k_ok[:, None] & col_ok[None, :]
        words = tl.load(qweight_ptr + ks[:, None] * words_per_row + cols[None, :] // 8, mask=both, other=0)
        group = ks // G
        zero_words = tl.load(qzeros_ptr + group[:, None] * words_per_row + cols[None, :] // 8, mask=both, other=0)
        scale = tl.load(scales_ptr + group[:, None] * N + cols[None, :], mask=both, other=0.0).to(tl.float32)
        codes = (words >> shift[None, :]) & 0xF          # arithmetic shift of a negative word: & 0xF keeps 4 bits
        zeros = (zero_words >> shift[None, :]) & 0xF
        w = (codes - zeros).to(tl.float32) * scale       # (BLOCK_K, BLOCK_N) of W^T
        acc += tl.dot(x.to(tl.float32), w, input_precision="ieee")
    tl.store(y_ptr + rows[:, None] * N + cols[None, :], acc, mask=row_ok[:, None] & col_ok[None, :])


def awq_gemm_triton(x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                    group_size: int, *, block_m: int = 16, block_n: int = 64, block_k: int = 32) -> torch.Tensor:
    """x (M, K) fp32/fp16/bf16 -> y (M, N) fp32. Arguments checked as the spec checks them (minimoe.awq)."""
    from minimoe import awq

    K, N = awq.check_awq_tensors(qweight, qzeros, scales, group_size)
    if x.dim() != 2 or x.shape[1] != K or not x.dtype.is_floating_point:
        raise ValueError(f"x must be a float (M, K = {K}) tensor, found {x.dtype} {tuple(x.shape)}")
    if len({x.device, qweight.device, qzeros.device, scales.device}) != 1:
        raise ValueError("x, qweight, qzeros and scales must be on one device")
    x = x.contiguous()
    y = torch.empty(x.shape[0], N, dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(x.shape[0], block_m), triton.cdiv(N, block_n))
    _awq_gemm_kernel[grid](x, qweight.contiguous(), qzeros.contiguous(), scales.contiguous(), y, x.shape[0], N, K,
                           group_size, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k)
    return y
