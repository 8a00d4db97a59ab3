"""The only way the tests reach the code under test: one small typed function per thing graded.

`impl` is the student's awq_format.py under `--solution`, minimoe/awq.py otherwise; the C++ GEMV is the
student's int4_gemv.cpp, or the reference one in reference/int4_gemv.cpp. dequantize is graded on its own:
it runs with minimoe's unpack in place of the student's, so a bug in task 4.1 costs task 4.1's points only.
"""

from __future__ import annotations

import contextlib

import torch

from assignments.framework import build_cpp, implementation
from minimoe import awq as spec

impl = implementation("a4_awq_format")


@contextlib.contextmanager
def _spec_unpack():
    student = _student_module()
    if student is None:
        yield
        return
    saved = student.unpack
    student.unpack = spec.unpack
    try:
        yield
    finally:
        student.unpack = saved


def _student_module():
    """The student's module object (None for the reference, which is minimoe.awq itself)."""
    load = getattr(impl, "_load", None)
    return load() if load is not None else None


def run_unpack(packed: torch.Tensor) -> torch.Tensor:
    """int32 words (R, C) -> codes (R, 8C) uint8, channel order restored."""
    return impl.unpack(packed)


def run_dequantize(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int,
                   dtype: torch.dtype | None = None) -> torch.Tensor:
    """-> W^T (K, N) = (q - z) * s."""
    with _spec_unpack():
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
