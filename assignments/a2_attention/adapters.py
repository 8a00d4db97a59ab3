"""The only way the tests reach the code under test: one small typed function per thing graded.

`impl` is the student's attention.py under `--solution`, minimoe's model.py and cache.py otherwise.
"""

from __future__ import annotations

import types

import torch
import torch.nn as nn

from assignments.framework import implementation
from minimoe.config import ModelConfig

impl = implementation("a2_attention")


def run_grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                          scale: float) -> torch.Tensor:
    """q (B, H, T, D), k/v (B, Hkv, L, D), mask (B, T, L) bool -> (B, H, T, D)."""
    return impl.grouped_attention(q, k, v, mask, scale)


def run_attention_mask(q_slots: torch.Tensor, key_real: torch.Tensor, sliding_window: int | None) -> torch.Tensor:
    """The (B, T, L) bool mask for queries in cache slots q_slots (T,) over keys whose reality is key_real (B, L)."""
    shell = types.SimpleNamespace(config=types.SimpleNamespace(sliding_window=sliding_window))
    return impl.Transformer._attention_mask(shell, q_slots, key_real)


def new_kv_cache(num_layers: int):
    """A fresh KVCache (begin / update / commit as in minimoe/cache.py)."""
    return impl.KVCache(num_layers)


def new_attention(config: ModelConfig, weights: dict[str, torch.Tensor]) -> nn.Module:
    """Attention(config, layer 0) with these q/k/v/o weights (nn.Linear layout, fp32)."""
    attention = impl.Attention(config, 0, dtype=torch.float32)
    for name, weight in weights.items():
        getattr(attention, name).weight = nn.Parameter(weight.clone(), requires_grad=False)
    return attention
