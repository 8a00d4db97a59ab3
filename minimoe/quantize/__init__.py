"""Turning an fp16/bf16/fp32 Mixtral or Mistral checkpoint into an AWQ int4 GEMM checkpoint.

    minimoe quantize SRC_DIR DST_DIR --method rtn --group-size 128

What is written is the layout AutoAWQ writes (docs/awq-format.md): every linear layer of the decoder layers
(q/k/v/o, the experts' w1/w2/w3 or the MLP's gate/up/down) as `qweight`/`qzeros`/`scales` (int32, int32, fp16),
everything else (embeddings, norms, the router `gate`, `lm_head`) kept as plain fp16 tensors, config.json with
AutoAWQ's `quantization_config` and a quant_config.json beside it, the tokenizer files copied.

Methods:
    rtn     round-to-nearest per group (minimoe.awq.quantize): the baseline every better method is measured
            against. It looks at the weights only.
The activation-aware search of AWQ (Lin et al., 2023, arXiv:2306.00978), which also needs calibration text,
is not implemented yet; asking for it says so.

Memory: one source shard's tensors at a time are read (memory-mapped), converted and written, so a checkpoint
much larger than RAM quantizes in about the size of its largest shard.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Callable

import torch

from minimoe import awq
from minimoe.checkpoint import INDEX_FILE, Checkpoint, CheckpointError, linear_names

METHODS = ("rtn",)
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json")


def quantize_checkpoint(src: str, dst: str, *, method: str = "rtn", group_size: int = 128,
                        progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Write `src` quantized into the new directory `dst`; returns a summary (per-layer reconstruction errors).

    progress(name, done, total) is called after each linear layer."""
    if method not in METHODS:
        raise ValueError(f"quantization method {method!r} is not available; available: {', '.join(METHODS)} "
                         "(the activation-aware AWQ search is not implemented yet)")
    src_ckpt = Checkpoint(src)
    config = src_ckpt.config
    if config.quantization is not None:
        raise ValueError(f"{src}: already quantized (AWQ int4, group {config.quantization.group_size}); "
                         "expected an fp16, bf16 or fp32 checkpoint")
    awq._check_group_size(group_size)
    linears = linear_names(config)
    for prefix, (n, k) in linears.items():
        if k % group_size:
            raise ValueError(f"{prefix}: in_features {k} is not a multiple of group size {group_size}")
        if n % 8:
            raise ValueError(f"{prefix}: out_features {n} is not a multiple of 8 (eight 4-bit codes per int32)")
    if os.path.exists(dst) and os.listdir(dst):
        raise ValueError(f"{dst}: exists and is not empty; expected a new directory")
    os.makedirs(dst, exist_ok=True)

    from safetensors.torch import save_file

    by_file: dict[str, list[str]] = {}
    for name, info in src_ckpt.tensors.items():
        by_file.setdefault(info.file, []).append(name)
    weight_names = {f"{prefix}.weight": prefix for prefix in linears}
    summary = {"method": method, "group_size": group_size, "layers": {}}
    weight_map: dict[str, str] = {}
    total_size, done, start = 0, 0, time.perf_counter()
    for file in src_ckpt.files:
        out: dict[str, torch.Tensor] = {}
        for name in by_file.get(file, []):
            value = src_ckpt.tensor(name)
            prefix = weight_names.get(name)
            if prefix is None:
                out[name] = _to_fp16(value, name)
                continue
            q = awq.quantize(value, group_size=group_size)
            out.update({f"{prefix}.qweight": q.qweight, f"{prefix}.qzeros": q.qzeros, f"{prefix}.scales": q.scales})
            w = value.float()
            error = awq.dequantize(q.qweight, q.qzeros, q.scales, group_size, torch.float32).t() - w
            summary["layers"][prefix] = {"relative_error": (error.norm() / w.norm()).item(),   # ||Q(W) - W|| / ||W||
                                         "max_abs_error": error.abs().max().item()}
            done += 1
            if progress:
                progress(prefix, done, len(linears))
        target = os.path.basename(file)
        save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(dst, target), metadata={"format": "pt"})
        for name, value in out.items():
            weight_map[name] = target
            total_size += value.numel() * value.element_size()
        del out
    if len(src_ckpt.files) > 1:
        with open(os.path.join(dst, INDEX_FILE), "w") as f:
            json.dump({"metadata": {"total_size": total_size}, "weight_map": weight_map}, f, indent=2)
    _write_configs(src, dst, group_size)
    for name in TOKENIZER_FILES:
        if os.path.isfile(os.path.join(src, name)):
            shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
    src_ckpt.close()
    Checkpoint(dst)  # what was written passes minimoe's own checks, or this raises
    summary["seconds"] = time.perf_counter() - start
    return summary


def _to_fp16(value: torch.Tensor, name: str) -> torch.Tensor:
    if not value.is_floating_point():
        return value
    half = value.to(torch.float16)
    if not torch.isfinite(half).all() and torch.isfinite(value).all():
        raise CheckpointError(f"{name}: values up to {value.abs().max().item():.3g} overflow fp16 (max 65504); "
                              "AWQ checkpoints store fp16")
    return half


def _write_configs(src: str, dst: str, group_size: int) -> None:
    with open(os.path.join(src, "config.json"), encoding="utf-8") as f:
        raw = json.load(f)
    raw["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": True,
                                  "version": "gemm", "modules_to_not_convert": None}
    if "torch_dtype" in raw or "dtype" not in raw:
        raw["torch_dtype"] = "float16"
    if "dtype" in raw:
        raw["dtype"] = "float16"
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(raw, f, indent=2)
    with open(os.path.join(dst, "quant_config.json"), "w") as f:  # AutoAWQ's own file and key spellings
        json.dump({"zero_point": True, "q_group_size": group_size, "w_bit": 4, "version": "GEMM"}, f)
