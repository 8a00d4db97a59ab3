"""Checkpoints for tests and benchmarks, written in the exact Hugging Face (and AutoAWQ) layout.

    make_tiny_checkpoint(path)                              # a 2-layer, 2-expert AWQ Mixtral in a few hundred KB
    make_tiny_checkpoint(path, quantized=False, shards=3)   # fp16, three shards + model.safetensors.index.json
    make_tiny_checkpoint(path, **CONFINUS_SHAPE)            # the real 2x7B shape (~7 GB), written shard by shard

Weights are random but deterministic (seed); AWQ tensors come from minimoe.awq.quantize, so what a test loads
is exactly what a real AWQ release would hold for those weights. The real shape never has the whole model in
memory: tensors are generated, quantized and written one shard at a time.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from minimoe import awq
from minimoe.checkpoint import INDEX_FILE, linear_names, plain_tensor_specs
from minimoe.config import ModelConfig

# A small Mixtral: big enough to exercise GQA (4 query heads on 2 kv heads), top-2 of 2 experts and AWQ groups.
TINY_CONFIG: dict[str, Any] = dict(
    model_type="mixtral",
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_local_experts=2,
    num_experts_per_tok=2,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    max_position_embeddings=512,
    sliding_window=None,
    tie_word_embeddings=False,
    dtype="float16",
    group_size=32,
)

# Confinus-2x7B(-AWQ): two Mistral-7B experts, top-2 routing, G = 128 (docs/facts.md#confinus-2x7b).
CONFINUS_SHAPE: dict[str, Any] = dict(
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    num_local_experts=2,
    num_experts_per_tok=2,
    max_position_embeddings=32768,
    group_size=128,
    shards=4,
)


def config_json(settings: dict[str, Any], *, quantized: bool, style: str) -> dict[str, Any]:
    """A config.json as a real release writes it. style "legacy" (torch_dtype, rope_theta) or "v5"."""
    s = settings
    arch = "MixtralForCausalLM" if s["model_type"] == "mixtral" else "MistralForCausalLM"
    raw: dict[str, Any] = {
        "architectures": [arch],
        "model_type": s["model_type"],
        "vocab_size": s["vocab_size"],
        "hidden_size": s["hidden_size"],
        "intermediate_size": s["intermediate_size"],
        "num_hidden_layers": s["num_hidden_layers"],
        "num_attention_heads": s["num_attention_heads"],
        "num_key_value_heads": s["num_key_value_heads"],
        "hidden_act": "silu",
        "rms_norm_eps": s["rms_norm_eps"],
        "max_position_embeddings": s["max_position_embeddings"],
        "sliding_window": s["sliding_window"],
        "tie_word_embeddings": s["tie_word_embeddings"],
        "bos_token_id": 1,
        "eos_token_id": 2,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
    }
    if s.get("head_dim") is not None:
        raw["head_dim"] = s["head_dim"]
    if s["model_type"] == "mixtral":
        raw.update(num_local_experts=s["num_local_experts"], num_experts_per_tok=s["num_experts_per_tok"],
                   output_router_logits=False, router_aux_loss_coef=0.02)
    if style == "legacy":
        raw.update(torch_dtype=s["dtype"], rope_theta=s["rope_theta"], transformers_version="4.36.2")
    elif style == "v5":
        raw.update(dtype=s["dtype"], rope_parameters={"rope_type": "default", "rope_theta": s["rope_theta"]},
                   transformers_version="5.0.0")
    else:
        raise ValueError(f"config style must be 'legacy' or 'v5', found {style!r}")
    if quantized:
        raw["quantization_config"] = {
            "quant_method": "awq", "bits": 4, "group_size": s["group_size"], "zero_point": True,
            "version": "gemm", "modules_to_not_convert": None,
        }
    return raw


def _random_tensor(generator: torch.Generator, shape, std: float) -> torch.Tensor:
    return torch.randn(*shape, generator=generator) * std


def _plan_shards(names: list[str], shards: int, layers: int) -> list[list[str]]:
    """Split tensor names into shards by layer (like HF's sharding): embeddings first, lm_head last."""
    plan: list[list[str]] = [[] for _ in range(shards)]
    for name in names:
        if name.startswith("model.layers."):
            layer = int(name.split(".")[2])
            plan[min(shards - 1, layer * shards // max(1, layers))].append(name)
        elif name.startswith("model.embed_tokens"):
            plan[0].append(name)
        else:
            plan[-1].append(name)
    return plan


def make_tiny_checkpoint(path: str | os.PathLike, *, quantized: bool = True, seed: int = 0, shards: int = 1,
                         config_style: str = "legacy", quant_config_file: bool = True,
                         **config_overrides) -> str:
    """Write a complete checkpoint directory (config.json, [quant_config.json], safetensors) and return its path.

    config_overrides: any key of TINY_CONFIG (model_type "mistral" gives a dense model), plus head_dim.
    The fp weights are written in `dtype`; linears are AWQ int4 (group_size) when `quantized`.
    """
    from safetensors.torch import save_file

    unknown = set(config_overrides) - set(TINY_CONFIG) - {"head_dim"}
    if unknown:
        raise TypeError(f"make_tiny_checkpoint: unknown setting(s) {sorted(unknown)}; known: {sorted(TINY_CONFIG)}")
    settings = {**TINY_CONFIG, **config_overrides}
    if shards < 1:
        raise ValueError(f"make_tiny_checkpoint: shards must be >= 1, found {shards}")
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    raw = config_json(settings, quantized=quantized, style=config_style)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(raw, f, indent=2)
    if quantized and quant_config_file:  # AutoAWQ releases also ship this file (its own key spellings)
        with open(os.path.join(path, "quant_config.json"), "w") as f:
            json.dump({"zero_point": True, "q_group_size": settings["group_size"], "w_bit": 4, "version": "GEMM"}, f)

    config = ModelConfig.from_dict(raw)
    dtype = config.torch_dtype
    group = settings["group_size"]
    plain = plain_tensor_specs(config)
    linears = linear_names(config)
    names = list(plain) + list(linears)
    plan = _plan_shards(names, shards, config.num_hidden_layers)
    generator = torch.Generator().manual_seed(seed)
    weight_map: dict[str, str] = {}
    total_size = 0
    for s, shard_names in enumerate(plan):
        file = "model.safetensors" if shards == 1 else f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        tensors: dict[str, torch.Tensor] = {}
        for name in shard_names:
            if name in plain:
                shape = plain[name].shape
                if name.endswith("layernorm.weight") or name == "model.norm.weight":
                    value = 1.0 + _random_tensor(generator, shape, 0.1)
                else:  # embeddings, router, lm_head
                    value = _random_tensor(generator, shape, 1.0 if "embed" in name else shape[-1] ** -0.5)
                tensors[name] = value.to(dtype)
                continue
            n, k = linears[name]
            weight = _random_tensor(generator, (n, k), k ** -0.5)
            if quantized:
                qweight, qzeros, scales = awq.quantize(weight, group_size=group)
                tensors.update({f"{name}.qweight": qweight, f"{name}.qzeros": qzeros, f"{name}.scales": scales})
            else:
                tensors[f"{name}.weight"] = weight.to(dtype)
            del weight
        save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(path, file),
                  metadata={"format": "pt"})
        for name, value in tensors.items():
            weight_map[name] = file
            total_size += value.numel() * value.element_size()
        del tensors
    if shards > 1:
        with open(os.path.join(path, INDEX_FILE), "w") as f:
            json.dump({"metadata": {"total_size": total_size}, "weight_map": weight_map}, f, indent=2)
    return path


def awq_gemm_check(y: torch.Tensor, x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor,
                   scales: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Which outputs of a half-precision int4 kernel are wrong: -> (bad mask, |error|), NaN counting as bad.

    The one tolerance of the CUDA kernel checks (tests/test_cuda_kernels.py, scripts/check_cuda_op.py,
    benchmarks/kernel_cuda.py). Reference: `awq.awq_linear_reference`. The kernels may round each dequantized
    weight to x's dtype and round the output once, so the error allowed is 2 eps of the sum of |x| |w| (the
    terms, not the result: cancellation makes the result small while its error is not) plus 2 eps of the result.
    """
    expected = awq.awq_linear_reference(x, qweight, qzeros, scales, group_size).float()
    magnitude = x.float().abs() @ awq.dequantize(qweight, qzeros, scales, group_size, dtype=torch.float32).abs()
    eps = torch.finfo(x.dtype).eps
    err = (y.float() - expected).abs()
    return ~(err <= 2 * eps * magnitude + 2 * eps * expected.abs() + 1e-6), err
