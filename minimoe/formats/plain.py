"""Plain weights: W [N, K] in fp32/fp16/bf16, as nn.Linear holds it (fp16, bf16 and fp32 checkpoints)."""

from __future__ import annotations

import torch.nn as nn

from minimoe.formats.base import Format


def tensor_specs(prefix: str, out_features: int, in_features: int, group_size: int) -> dict:
    from minimoe.checkpoint import FLOAT_DTYPES, TensorSpec

    return {f"{prefix}.weight": TensorSpec((out_features, in_features), FLOAT_DTYPES)}


def build(tensors: dict, group_size: int, dtype, device, name: str) -> nn.Module:
    from minimoe.linear import Linear

    out_features, in_features = tensors["weight"].shape
    module = Linear(in_features, out_features, bias="bias" in tensors, dtype=dtype, device="meta")
    module.weight = nn.Parameter(tensors["weight"].to(device=device, dtype=dtype), requires_grad=False)
    if "bias" in tensors:
        module.bias = nn.Parameter(tensors["bias"].to(device=device, dtype=dtype), requires_grad=False)
    return module


FORMAT = Format("plain", "W [N, K] in the model's dtype: y = x W^T (+ b)", ("weight",), None, tensor_specs, build)
