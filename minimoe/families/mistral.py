"""Mistral-7B (Jiang et al., 2023, arXiv:2310.06825): Mixtral's dense sibling, one SwiGLU MLP per layer.

Confinus-2x7B's two experts are two Mistral-7B fine-tunes, which is why minimoe runs Mistral too: its layers'
`mlp.gate_proj/up_proj/down_proj` are an expert's w1/w3/w2 under other names.
"""

from __future__ import annotations

from minimoe.families.base import Family
from minimoe.model import MLP


def read_config(reader) -> dict:
    return {}


def feed_forward(config, layer_index: int, dtype=None):
    return "mlp", MLP(config, dtype=dtype)


FAMILY = Family("mistral", "Mistral", "MistralForCausalLM", "a dense SwiGLU MLP in every layer",
                read_config, feed_forward)
