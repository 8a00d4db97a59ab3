"""Kernels written in Python DSLs, outside the compiled extension: the Triton int4 GEMM (triton_awq.py)."""
