"""Turning an fp16/bf16/fp32 Mixtral or Mistral checkpoint into an AWQ int4 GEMM checkpoint.

    minimoe quantize SRC_DIR DST_DIR --method rtn --group-size 128
    minimoe quantize SRC_DIR DST_DIR --method awq --group-size 128 --calib text.txt --samples 64 --seq-len 256

What is written is the layout AutoAWQ writes (docs/awq-format.md): every linear layer of the decoder layers
(q/k/v/o, the experts' w1/w2/w3 or the MLP's gate/up/down) as `qweight`/`qzeros`/`scales` (int32, int32, fp16),
everything else (embeddings, norms, the router `gate`, `lm_head`) kept as plain fp16 tensors, config.json with
AutoAWQ's `quantization_config` and a quant_config.json beside it, the tokenizer files copied.

Methods:
    rtn     round-to-nearest per group (minimoe.awq.quantize): the baseline every better method is measured
            against. It looks at the weights only.
    awq     the activation-aware search of AWQ (Lin et al., 2023, arXiv:2306.00978), minimoe/quantize/awq_search.py:
            per-channel scales and clipping chosen on calibration text, folded into the norms and the previous
            linears (so the AWQ checkpoint's norm weights and router differ from the source's), then rounded to
            nearest. Needs calibration tokens.

Memory: rtn reads one source shard's tensors at a time (memory-mapped), converts and writes them; awq reads one
decoder layer at a time and writes it to its own shard before the next, so a checkpoint much larger than RAM
quantizes in about the size of its largest shard (rtn) or of one layer in fp32 plus the calibration
activations (awq).
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

METHODS = ("rtn", "awq")
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json")


def quantize_checkpoint(src: str, dst: str, *, method: str = "rtn", group_size: int = 128,
                        calibration: torch.Tensor | None = None, settings=None,
                        progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Write `src` quantized into the new directory `dst`; returns a summary (per-layer errors).

    calibration (awq only): (samples, seq_len) token ids (awq_search.calibration_windows makes them from text).
    settings (awq only): an awq_search.Settings, for everything but the group size.
    progress(name, done, total) is called after each linear layer (rtn) or decoder layer (awq)."""
    if method not in METHODS:
        raise ValueError(f"quantization method {method!r} is not available; available: {', '.join(METHODS)}")
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
    if method == "awq" and config.model_type not in ("mixtral", "mistral"):
        raise ValueError(f"the awq method knows the mixtral and mistral feed-forward blocks (where each scale "
                         f"folds), not {config.model_type!r}'s; quantize it with --method rtn")
    if method == "awq" and calibration is None:
        raise ValueError("the awq method needs calibration tokens (`--calib FILE` on the command line)")
    if method == "rtn" and (calibration is not None or settings is not None):
        raise ValueError("rtn looks at the weights only: calibration and settings belong to --method awq")
    if os.path.exists(dst) and os.listdir(dst):
        raise ValueError(f"{dst}: exists and is not empty; expected a new directory")
    if method == "awq":
        return _quantize_awq(src_ckpt, src, dst, group_size, calibration, settings, progress)
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
    _finish(src_ckpt, src, dst, group_size, weight_map if len(src_ckpt.files) > 1 else None, total_size)
    summary["seconds"] = time.perf_counter() - start
    return summary


def _finish(src_ckpt: Checkpoint, src: str, dst: str, group_size: int, weight_map: dict | None,
            total_size: int) -> None:
    """The index (for a sharded output), the configs, the tokenizer files; then minimoe's own checks."""
    if weight_map is not None:
        with open(os.path.join(dst, INDEX_FILE), "w") as f:
            json.dump({"metadata": {"total_size": total_size}, "weight_map": weight_map}, f, indent=2)
    _write_configs(src, dst, group_size)
    for name in TOKENIZER_FILES:
        if os.path.isfile(os.path.join(src, name)):
            shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
    src_ckpt.close()
    Checkpoint(dst)  # what was written passes minimoe's own checks, or this raises


def _quantize_awq(src_ckpt: Checkpoint, src: str, dst: str, group_size: int, calibration: torch.Tensor,
                  settings, progress) -> dict:
    """AWQ, streamed: decoder layer i is read, searched, rounded and written to shard i + 1 before layer i + 1
    is read; the embeddings, final norm and lm_head go to the last shard."""
    import dataclasses

    from safetensors.torch import save_file

    from minimoe.quantize import awq_search

    config = src_ckpt.config
    settings = dataclasses.replace(settings or awq_search.Settings(), group_size=group_size)
    if settings.bits != awq.SUPPORTED_BITS:
        raise ValueError(f"the AWQ GEMM format stores {awq.SUPPORTED_BITS}-bit codes, found bits={settings.bits} "
                         "(other widths can only be simulated: awq_search.quantize_model)")
    os.makedirs(dst, exist_ok=True)
    L = config.num_hidden_layers
    shard = [f"model-{i + 1:05d}-of-{L + 1:05d}.safetensors" for i in range(L + 1)]
    weight_map: dict[str, str] = {}
    total_size = 0

    def write(tensors: dict[str, torch.Tensor], file: str) -> None:
        nonlocal total_size
        save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(dst, file), metadata={"format": "pt"})
        for name, value in tensors.items():
            weight_map[name] = file
            total_size += value.numel() * value.element_size()

    def on_layer(i: int, layer, report: dict) -> None:
        out = {}
        for name, t in report["tensors"].items():
            prefix = f"model.layers.{i}.{name}"
            out.update({f"{prefix}.qweight": t.qweight, f"{prefix}.qzeros": t.qzeros, f"{prefix}.scales": t.scales})
        quantized = {f"{name}.weight" for name in report["tensors"]}
        for name, value in layer.state_dict().items():    # norms and the router, with the scales folded in
            if name not in quantized:
                out[f"model.layers.{i}.{name}"] = _to_fp16(value, f"model.layers.{i}.{name}")
        write(out, shard[i])

    def layers():
        for i in range(L):
            layer = awq_search.load_layer(src_ckpt, config, i)
            src_ckpt.close()   # unmap the source files: the pages read for layer i are not kept resident
            yield layer


    embed = src_ckpt.tensor("model.embed_tokens.weight")
    summary = awq_search.quantize_layers(config, embed, calibration, layers(),
                                         settings, on_layer=on_layer,
                                         progress=(lambda done, total, report: progress(
                                             awq_search.layer_line(report), done, total)) if progress else None)
    in_layers = {n for n in src_ckpt.tensors if n.startswith("model.layers.")}
    write({n: _to_fp16(src_ckpt.tensor(n), n) for n in src_ckpt.tensors if n not in in_layers}, shard[L])
    summary.update(method="awq", group_size=group_size)
    _finish(src_ckpt, src, dst, group_size, weight_map, total_size)
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
