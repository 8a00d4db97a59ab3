"""Model families, by config.json's model_type. Adding one = its own file here + one line in FAMILIES.

    model_type   file           layers
    mixtral      mixtral.py     top-k of E SwiGLU experts in every layer (Confinus-2x7B, Mixtral-8x7B)
    mistral      mistral.py     a dense SwiGLU MLP in every layer (Mistral-7B)
    qwen2_moe    qwen2_moe.py   many small experts + a gated shared expert, q/k/v biases (Qwen1.5-MoE)

What a family file holds and why is in base.py; the walk-through is docs/extending.md.
"""

from __future__ import annotations

from minimoe.families import mistral, mixtral, qwen2_moe
from minimoe.families.base import Family

FAMILIES: dict[str, Family] = {family.model_type: family for family in (
    mixtral.FAMILY,
    mistral.FAMILY,
    qwen2_moe.FAMILY,
)}


def family_of(model_type: str) -> Family:
    """The Family for `model_type` (the config parser has already refused unknown ones)."""
    return FAMILIES[model_type]
