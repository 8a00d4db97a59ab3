"""Checkpoint -> module tree: build the model on the meta device (free), then put each tensor in its place.

The file reading and validation is minimoe/checkpoint.py; the modules are minimoe/model.py; this is the
mapping between them, plus the choice of engine that will run the model (minimoe/engines).
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn

from minimoe import engines, ops
from minimoe.checkpoint import Checkpoint, linear_names, plain_tensor_specs
from minimoe.config import DTYPES
from minimoe.model import RotaryEmbedding, Transformer


def cpu_runs_bf16_prefill_on_amx() -> bool:
    """True when the compiled extension runs bf16 prefill on AMX tiles on this CPU (AMX-BF16 present and granted by
    the OS; the extension's own check, minimoe.ops.build_info()["cpu_amx"]); False without the extension."""
    from minimoe import ops

    return bool(ops.build_info().get("cpu_amx"))


def auto_dtype(config, device: str | torch.device = "cpu") -> torch.dtype:
    """What dtype="auto" loads (the command line's default): the fastest activation dtype, measured, that keeps the
    kernels' fp32 accumulation.

    - GPU, or a checkpoint without int4 linears: the checkpoint's own dtype (converting plain weights would
      change their memory, and GPUs run fp16/bf16 natively).
    - CPU, AWQ checkpoint: bfloat16 where the int4 prefill runs on AMX (about 3x fp32's prefill on a Xeon with
      AMX), else float32. Elsewhere the int4 kernels turn bf16 and fp16 x into fp32 anyway (exact), and fp32
      decoded at least as fast as bf16 and fp16 on every CPU measured, AVX512_BF16 included; fp32 also keeps every
      activation exact. Numbers: docs/kernels-cpu.md ("Which dtype on a CPU").
    """
    device = torch.device(device)
    if device.type != "cpu" or config.quantization is None:
        return config.torch_dtype
    return torch.bfloat16 if cpu_runs_bf16_prefill_on_amx() else torch.float32


def load_model(path: str | os.PathLike, dtype: torch.dtype | str | None = None,
               device: str | torch.device = "cpu", progress=None, engine: str | None = None,
               expert_parallel=None) -> Transformer:
    """Load a checkpoint directory into a Transformer in eval mode, run by `engine`.

    dtype: activations and plain weights (default: the checkpoint's own dtype); fp32, fp16 or bf16, or "auto":
        the rule of auto_dtype below (the command line's default).
    AWQ linears keep their int4 tensors as stored (scales stay fp16), whatever `dtype` is.
    progress: optional callable(done, total) called as tensors are placed (the CLI draws a bar with it).
    engine: which engine runs it (minimoe/engines: "reference", "native", "compile", "cuda-graph" or "auto");
        default $MINIMOE_ENGINE, else "auto". `print(model)` shows it.
    expert_parallel: a minimoe.parallel.ExpertParallel (from parallel.init()): this rank builds and loads only
        its own experts' tensors (minimoe/parallel). Runs on the reference or native engine ("auto" = native).
    """
    name = engines.check_name(engine)  # a typo fails before minutes of loading, not after
    if expert_parallel is not None:
        if name in ("compile", "cuda-graph"):
            raise ValueError(f"engine {name!r} cannot run expert parallelism (its collectives cannot be captured "
                             "in a graph): use 'native' or 'reference'")
        engine = "reference" if name == "reference" else "native"
    checkpoint = Checkpoint(path)
    config = checkpoint.config
    if dtype == "auto":
        dtype = auto_dtype(config, device)
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, found {dtype!r}")
        dtype = DTYPES[dtype]
    dtype = dtype or config.torch_dtype
    if dtype not in DTYPES.values():
        raise ValueError(f"dtype must be float32, float16 or bfloat16, found {dtype}")
    device = torch.device(device)

    with torch.device("meta"):
        model = Transformer(config, dtype=dtype)
    model.rotary.inv_freq = RotaryEmbedding(config.head_dim, config.rope_theta).inv_freq  # recompute off meta

    plain = plain_tensor_specs(config)
    linears = linear_names(config)
    if expert_parallel is not None:  # other ranks' experts leave the module tree before they hold a byte
        from minimoe.parallel import shard_model

        shard_model(model, expert_parallel)
        linears = {p: shape for p, shape in linears.items() if expert_parallel.holds(p, config.num_local_experts)}
    total, done = len(plain) + len(linears), 0
    for name in plain:
        tensor = checkpoint.tensor(name)
        keep = _keep_stored(name, tensor.dtype, dtype, device, config.tie_word_embeddings)
        _assign(model, name, tensor.to(device=device, dtype=tensor.dtype if keep else dtype))
        done += 1
        if progress:
            progress(done, total)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    for prefix, (n, k) in linears.items():
        tensors = checkpoint.linear(prefix)   # in the format the files hold it: minimoe/formats
        parent_name, _, attr = prefix.rpartition(".")
        parent = model.get_submodule(parent_name)
        module = checkpoint.format_of(prefix).build(tensors, checkpoint.group_size(prefix), dtype, device, prefix)
        setattr(parent, attr, module)
        done += 1
        if progress:
            progress(done, total)
    model.rotary.to(device)
    model.eval()
    leftover = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.is_meta]
    if leftover:
        raise RuntimeError(f"internal error: tensors left unloaded: {leftover[:5]}")
    model.expert_parallel = expert_parallel  # generate() reads it: every rank continues with rank 0's tokens
    return engines.use(model, engine)


def _keep_stored(name: str, stored: torch.dtype, dtype: torch.dtype, device: torch.device, tied: bool) -> bool:
    """Keep this tensor in the checkpoint's dtype instead of converting it to the activations' dtype?

    Only where nothing changes but memory and speed: the embedding table (a looked-up row converts exactly as
    the table would), and the lm_head where `ops.linear_stored` has a kernel (the CPU extension), which computes
    F.linear(x, W.to(x.dtype)) from the stored weights. Never when the stored dtype is the wider one.
    Confinus-2x7B in bf16 or fp32 on the CPU: 524 MB less memory; in fp32, half the lm_head bytes per token.
    """
    if stored == dtype or not stored.is_floating_point or stored.itemsize > dtype.itemsize:
        return False
    kernel = ops.can_keep_stored(device.type, dtype, stored)
    if name == "model.embed_tokens.weight":
        return kernel or not tied  # a tied table is the lm_head's weight too
    return name == "lm_head.weight" and kernel


def _assign(model: nn.Module, name: str, value: torch.Tensor) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name), attr, nn.Parameter(value, requires_grad=False))


def check_tokenizer(config, tokenizer, where: str) -> None:
    """The model and its tokenizer must agree: every id the tokenizer can produce needs an embedding row (a
    larger model vocabulary is fine: releases pad it); where config.json and the tokenizer name different
    special tokens, minimoe uses the tokenizer's and says so."""
    import warnings

    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"{where}: the tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is "
                         f"{config.vocab_size}: ids {config.vocab_size}..{tokenizer.vocab_size - 1} have no embedding "
                         "(wrong tokenizer for this checkpoint?)")
    for key, tok_id, use in (("bos_token_id", tokenizer.bos_id, "prompts start with"),
                             ("eos_token_id", tokenizer.eos_id, "generation stops at")):
        cfg_id = getattr(config, key)
        if cfg_id is not None and tok_id is not None and cfg_id != tok_id:
            warnings.warn(f"{where}: config.json's {key} is {cfg_id} but the tokenizer's is {tok_id}; "
                          f"{use} the tokenizer's ({tok_id})", stacklevel=2)
