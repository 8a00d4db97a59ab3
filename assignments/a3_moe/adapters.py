"""The only way the tests reach the code under test: one small typed function per thing graded.

`impl` is the student's moe.py under `--solution`, minimoe's model.py and train.py otherwise. The MoE block is
graded on its own: its router and experts are swapped for minimoe's before it runs, so a bug in task 3.1 or 3.2
costs those tasks' points only.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from assignments.framework import implementation
from minimoe import model as reference
from minimoe.config import ModelConfig

impl = implementation("a3_moe")


def run_router(x: torch.Tensor, weight: torch.Tensor, top_k: int):
    """x (N, C), router weight (E, C) -> a RouterOutput (logits, experts (N, k) best first, weights (N, k))."""
    router = impl.Router(x.shape[-1], weight.shape[0], top_k, dtype=weight.dtype)
    router.weight = nn.Parameter(weight.clone(), requires_grad=False)
    return router(x)


def run_expert(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor) -> torch.Tensor:
    """One SwiGLU expert with weights in nn.Linear layout: w1, w3 (F, C), w2 (C, F)."""
    expert = impl.Expert(w1.shape[1], w1.shape[0], dtype=w1.dtype)
    for name, w in (("w1", w1), ("w2", w2), ("w3", w3)):
        getattr(expert, name).weight = nn.Parameter(w.clone(), requires_grad=False)
    return expert(x)


def run_moe_block(x: torch.Tensor, config: ModelConfig, gate: torch.Tensor,
                  experts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]):
    """SparseMoeBlock(x) (B, T, C) -> (out (B, T, C), RouterOutput), with minimoe's Router and Experts inside."""
    block = impl.SparseMoeBlock(config, dtype=x.dtype)
    router = reference.Router(config.hidden_size, config.num_local_experts, config.num_experts_per_tok, dtype=x.dtype)
    router.weight = nn.Parameter(gate.clone(), requires_grad=False)
    block.gate = router
    modules = []
    for w1, w2, w3 in experts:
        expert = reference.Expert(config.hidden_size, config.intermediate_size, dtype=x.dtype)
        for name, w in (("w1", w1), ("w2", w2), ("w3", w3)):
            getattr(expert, name).weight = nn.Parameter(w.clone(), requires_grad=False)
        modules.append(expert)
    block.experts = nn.ModuleList(modules)
    return block(x)


def run_load_balancing_loss(routes: list, num_experts: int) -> torch.Tensor:
    """The Switch auxiliary loss over these layers' RouterOutputs."""
    return impl.load_balancing_loss(routes, num_experts)
