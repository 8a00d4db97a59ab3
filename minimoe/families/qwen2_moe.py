"""Qwen2-MoE (Qwen1.5-MoE-A2.7B and its kind; transformers' Qwen2MoeForCausalLM): what it adds to Mixtral.

Same attention, norms and RoPE as Mixtral, with three differences a reader can see below, each a few lines:

1. A shared expert. Besides the top-k routed experts, every token also goes through one always-on SwiGLU
   expert (`shared_expert`), scaled by its own learned sigmoid gate (`shared_expert_gate`, a C -> 1 product):
       out = sum_k w_k * expert_k(x) + sigmoid(g . x) * shared_expert(x)
   What every token needs lives in the shared expert, so the routed ones can specialise.
2. Many fine-grained experts (Qwen1.5-MoE: 60 experts of width 1408, top-4, where Mixtral has 8 of 14336,
   top-2), and the top-k weights are *not* renormalised unless `norm_topk_prob` is true: they are the k
   largest of the softmax over all E, so they sum to less than 1 (TopKRouter).
3. Biases on the q, k and v projections (`qkv_bias`; o_proj has none), and layers may be dense: a layer is a
   MoE block when its index is not in `mlp_only_layers` and (index + 1) is a multiple of
   `decoder_sparse_step`; otherwise it holds a dense MLP of width `intermediate_size`.

In the checkpoint each layer's block is `mlp` either way: `mlp.gate.weight` (E, C), `mlp.experts.{e}.gate_proj/
up_proj/down_proj`, `mlp.shared_expert.gate_proj/up_proj/down_proj`, `mlp.shared_expert_gate.weight` (1, C).
Like the router, the shared expert's gate is never quantized (it is one row, and a decision, not a product).
Sliding-window attention (`use_sliding_window: true`) is not implemented and is refused.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from minimoe.families.base import Family
from minimoe.linear import Linear
from minimoe.model import MLP, Router, RouterOutput, SparseMoeBlock


@dataclasses.dataclass(frozen=True)
class Qwen2MoeOptions:
    moe_intermediate_size: int              # each routed expert's width
    shared_expert_intermediate_size: int    # the shared expert's width
    norm_topk_prob: bool                    # renormalise the top-k weights (Mixtral always does)
    sparse_layers: tuple[bool, ...]         # per layer: a MoE block (True) or a dense MLP


def read_config(reader) -> dict:
    layers = reader.positive("num_hidden_layers")
    if reader.flag("use_sliding_window", False):
        reader.fail("use_sliding_window is true: Qwen2-MoE's sliding-window layers are not implemented; "
                    "expected false (every released Qwen2-MoE checkpoint has it false)")
    act = reader.raw.get("hidden_act", "silu")
    if act != "silu":
        reader.fail(f"hidden_act must be 'silu' (SwiGLU experts), found {act!r}")
    step = reader.positive("decoder_sparse_step", default=1)
    dense = reader.int_list("mlp_only_layers", default=[])
    outside = [i for i in dense if not 0 <= i < layers]
    if outside:
        reader.fail(f"mlp_only_layers must name layers in 0..{layers - 1}, found {outside}")
    experts = reader.positive("num_experts")
    options = Qwen2MoeOptions(
        moe_intermediate_size=reader.positive("moe_intermediate_size"),
        shared_expert_intermediate_size=reader.positive("shared_expert_intermediate_size"),
        norm_topk_prob=reader.flag("norm_topk_prob", False),
        sparse_layers=tuple(i not in dense and (i + 1) % step == 0 for i in range(layers)))
    return {"num_local_experts": experts, "num_experts_per_tok": reader.positive("num_experts_per_tok"),
            "attention_bias": reader.flag("qkv_bias", True),
            "sliding_window": None,   # the key holds a size even when use_sliding_window is false
            "options": options}


class TopKRouter(Router):
    """Mixtral's router, except that the top-k weights are renormalised only when norm_topk_prob says so."""

    def __init__(self, hidden_size: int, num_experts: int, top_k: int, renormalize: bool, dtype=None):
        super().__init__(hidden_size, num_experts, top_k, dtype=dtype)
        self.renormalize = renormalize

    def forward(self, x: torch.Tensor) -> RouterOutput:
        logits = F.linear(x.float(), self.weight.float()).to(x.dtype)   # (N, E)
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        weights, experts = torch.topk(probs, self.top_k, dim=-1)        # (N, k): they sum to <= 1
        if self.renormalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return RouterOutput(logits, experts, weights)


class SwiGLUExpert(nn.Module):
    """minimoe.model.Expert under Qwen's tensor names: w1 = gate_proj, w3 = up_proj, w2 = down_proj."""

    def __init__(self, hidden_size: int, intermediate_size: int, dtype=None):
        super().__init__()
        self.gate_proj = Linear(hidden_size, intermediate_size, dtype=dtype)
        self.up_proj = Linear(hidden_size, intermediate_size, dtype=dtype)
        self.down_proj = Linear(intermediate_size, hidden_size, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class SharedExpertGate(nn.Module):
    """sigmoid(x . g): how much of the shared expert each token takes. A plain (never quantized) C -> 1 row."""

    def __init__(self, hidden_size: int, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(1, hidden_size, dtype=dtype), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(F.linear(x, self.weight))                  # (..., 1)


class SharedExpertMoeBlock(SparseMoeBlock):
    """Mixtral's sparse block (the routed experts, grouped by expert as there) plus an always-on shared expert."""

    def __init__(self, config, dtype=None):
        nn.Module.__init__(self)   # not SparseMoeBlock's: its experts have other names and widths here
        c, o = config, config.options
        self.gate = TopKRouter(c.hidden_size, c.num_local_experts, c.num_experts_per_tok, o.norm_topk_prob,
                               dtype=dtype)
        self.experts = nn.ModuleList(SwiGLUExpert(c.hidden_size, o.moe_intermediate_size, dtype=dtype)
                                     for _ in range(c.num_local_experts))
        self.shared_expert = SwiGLUExpert(c.hidden_size, o.shared_expert_intermediate_size, dtype=dtype)
        self.shared_expert_gate = SharedExpertGate(c.hidden_size, dtype=dtype)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RouterOutput]:
        routed, route = super().forward(x)                              # sum_k w_k * expert_k(x)
        shared = self.shared_expert_gate(x) * self.shared_expert(x)     # sigmoid(g . x) * shared_expert(x)
        return routed + shared, route


def feed_forward(config, layer_index: int, dtype=None):
    if config.options.sparse_layers[layer_index]:
        return "mlp", SharedExpertMoeBlock(config, dtype=dtype)
    return "mlp", MLP(config, dtype=dtype)   # a dense layer, intermediate_size wide


FAMILY = Family("qwen2_moe", "Qwen2-MoE", "Qwen2MoeForCausalLM",
                "top-k of many small experts + a sigmoid-gated shared expert; q/k/v biases; dense layers allowed",
                read_config, feed_forward)
