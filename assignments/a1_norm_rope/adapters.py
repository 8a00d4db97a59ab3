"""The only way the tests reach the code under test (CS336's adapters): one small typed function per thing graded.

`impl` is the student's norm_rope.py under `--solution`, minimoe.model otherwise (assignments/framework.py).
An instructor swapping in another implementation edits these functions, never the tests.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from assignments.framework import implementation

impl = implementation("a1_norm_rope")


def run_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm(x) with this weight (C,) and eps; x (..., C) in any float dtype."""
    norm = impl.RMSNorm(x.shape[-1], eps, dtype=weight.dtype)
    norm.weight = nn.Parameter(weight.clone(), requires_grad=False)
    return norm(x)


def run_rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float,
                     dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """positions (B, T) -> cos, sin (B, T, head_dim) in dtype."""
    return impl.RotaryEmbedding(head_dim, theta)(positions, dtype)


def run_rotate_half(x: torch.Tensor) -> torch.Tensor:
    return impl.rotate_half(x)


def run_apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, D), cos/sin (B, T, D) -> x rotated."""
    return impl.apply_rope(x, cos, sin)
