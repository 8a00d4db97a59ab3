"""Mixtral (Jiang et al., 2024, arXiv:2401.04088; Confinus-2x7B is one): a sparse MoE block in every layer.

config.json: num_local_experts E, num_experts_per_tok k. Each layer's `block_sparse_moe` holds a router
(`gate`, never quantized) and E SwiGLU experts (`experts.{e}.w1/w2/w3`); the k chosen experts' weights are
renormalised to sum to 1 (minimoe.model.Router).
"""

from __future__ import annotations

from minimoe.families.base import Family
from minimoe.model import SparseMoeBlock


def read_config(reader) -> dict:
    return {"num_local_experts": reader.positive("num_local_experts"),
            "num_experts_per_tok": reader.positive("num_experts_per_tok")}


def feed_forward(config, layer_index: int, dtype=None):
    return "block_sparse_moe", SparseMoeBlock(config, dtype=dtype)


FAMILY = Family("mixtral", "Mixtral", "MixtralForCausalLM",
                "top-k of E SwiGLU experts in every layer, renormalised weights", read_config, feed_forward)
