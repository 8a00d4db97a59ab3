"""The only way the tests reach the code under test: one small typed function per thing graded.

`impl` is the student's awq_format.py under `--solution`, minimoe/awq.py otherwise; the C++ GEMV is the
student's int4_gemv.cpp, or the reference one in reference/int4_gemv.cpp. dequantize is graded on its own:
it runs with minimoe's unpack in place of the student's, so a bug in task 4.1 costs task 4.1's points only.
"""

from __future__ import annotations

import torch

from assignments.framework import build_cpp, implementation, student_module, swapped
from minimoe import awq as spec

impl = implementation("a4_awq_format")


def run_unpack(packed: torch.Tensor) -> torch.Tensor:
    """int32 words (R, C) -> codes (R, 8C) uint8, channel order restored."""
    return impl.unpack(packed)


def run_dequantize(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int,
                   dtype: torch.dtype | None = None) -> torch.Tensor:
    """-> W^T (K, N) = (q - z) * s."""
    with swapped(student_module(impl), unpack=spec.unpack):
        return impl.dequantize(qweight, qzeros, scales, group_size, dtype)


def run_int4_gemv(x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                  group_size: int) -> torch.Tensor:
    """The C++ op: x (M, K) fp32 -> y (M, N) fp32."""
    ops = build_cpp("a4_awq_format")
    try:
        return ops.int4_gemv(x, qweight, qzeros, scales, group_size)
    except RuntimeError as error:
        if "NotImplementedError" in str(error):
            raise NotImplementedError(str(error).splitlines()[0]) from None
        raise
