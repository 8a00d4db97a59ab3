"""Training minimoe's own model classes: a small, readable loop for a tiny Mixtral, from scratch.

The model trained is the reference (minimoe/model.py) itself, made trainable: weights initialised the way
transformers initialises Mixtral (normal(0, initializer_range) for every linear layer, the router and the
embeddings; ones for the norms) and `requires_grad` switched on. No engine runs during training: every op is
the Python you read.

One step (train_step):
    loss = cross-entropy(next token)  +  aux_coef * load-balancing loss of the routers
    AdamW on it (weight decay on matrices only), gradients clipped to a global norm, a learning rate from a
    linear warm-up then a cosine decay to min_lr (lr_at).

The load-balancing loss is the Switch Transformer's (Fedus et al., 2021, arXiv:2101.03961, eq. 4), as
transformers computes it for Mixtral (its `load_balancing_loss_func`; docs/facts.md): over all tokens of all
MoE layers, with f[j, e] the fraction of tokens whose j-th choice is expert e and P[e] the mean router
probability of e,
    aux = E * sum_j sum_e f[j, e] * P[e]
It is k when routing is perfectly uniform, up to k * E when every token goes to the same experts. Mixtral's
config calls its coefficient router_aux_loss_coef (0.02 in Mixtral-8x7B's and here).

Checkpoints are written in the Hugging Face layout (config.json + model.safetensors [+ tokenizer.model]),
loadable by minimoe.load_model and by transformers' MixtralForCausalLM; `minimoe quantize` (minimoe.quantize)
turns one into an AWQ int4 GEMM checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from minimoe.config import ModelConfig
from minimoe.model import RouterOutput, Transformer
from minimoe.testing import config_json


@dataclasses.dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 16              # sequences per step
    seq_len: int = 256                # tokens per sequence (the model sees seq_len, predicts seq_len)
    lr: float = 3e-3                  # peak learning rate
    min_lr: float = 3e-4              # the cosine ends here
    warmup: int = 100                 # steps of linear warm-up from 0
    weight_decay: float = 0.1         # AdamW, on matrices only (not norms)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0            # global gradient norm; 0: off
    aux_coef: float = 0.02            # load-balancing loss coefficient (router_aux_loss_coef)
    eval_every: int = 100             # steps between validation losses; 0: only at the end
    eval_tokens: int = 32768          # validation tokens per evaluation (the first ones of the split)
    seed: int = 0

    def check(self) -> None:
        for name in ("steps", "batch_size", "seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, found {getattr(self, name)}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"need 0 <= min_lr <= lr, found min_lr={self.min_lr}, lr={self.lr}")


def init_weights(model: Transformer, std: float = 0.02, seed: int = 0) -> Transformer:
    """transformers' Mixtral init: normal(0, std) for linear layers, the router and the embeddings; norms = 1.

    Fills the tensors in a fixed order from one seeded generator, so the same seed gives the same model."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def new_model(config: ModelConfig, seed: int = 0) -> Transformer:
    """A freshly initialised, trainable fp32 model of this shape."""
    model = Transformer(config, dtype=torch.float32)
    init_weights(model, seed=seed)
    model.requires_grad_(True)
    return model.train()


def load_balancing_loss(routes: list[RouterOutput], num_experts: int) -> torch.Tensor:
    """The Switch/Mixtral auxiliary loss over every MoE layer's routing (see the module docstring)."""
    # [task 3.4]
    logits = torch.cat([r.logits for r in routes]).float()                         # (layers*N, E)
    experts = torch.cat([r.experts for r in routes])                               # (layers*N, k)
    probs = torch.softmax(logits, dim=-1)
    chosen = F.one_hot(experts, num_experts).float()                               # (layers*N, k, E)
    fraction = chosen.mean(dim=0)                                                  # f[j, e]: not differentiable
    mean_prob = probs.mean(dim=0)                                                  # P[e]: carries the gradient
    return num_experts * (fraction * mean_prob[None]).sum()
    # [/task 3.4]


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.lr over cfg.warmup steps, then cosine decay to cfg.min_lr at cfg.steps."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on the matrices (linear layers, router, embeddings), none on the norms."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, foreach=True)


def losses(model: Transformer, batch: torch.Tensor, aux_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """batch (B, T+1) token ids -> (next-token cross-entropy, load-balancing loss) of the model on it."""
    inputs, targets = batch[:, :-1], batch[:, 1:]
    logits, routes = model(inputs, output_router_logits=True)
    ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
    aux = load_balancing_loss(routes, model.config.num_local_experts) if routes else ce.new_zeros(())
    return ce, aux


def train_step(model, optimizer, batch: torch.Tensor, cfg: TrainConfig, step: int) -> dict:
    """One optimiser step on one batch; returns what happened (losses, gradient norm, learning rate)."""
    lr = lr_at(step, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr
    ce, aux = losses(model, batch, cfg.aux_coef)
    loss = ce + cfg.aux_coef * aux
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
    optimizer.step()
    return {"step": step, "loss": ce.item(), "aux": aux.item(), "grad_norm": norm.item(), "lr": lr}


def random_windows(ids: torch.Tensor, batch_size: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """batch_size windows of `length` consecutive ids, at uniformly random offsets into the token stream."""
    if ids.numel() < length + 1:
        raise ValueError(f"the training split has {ids.numel()} tokens, fewer than one window of {length + 1}")
    starts = torch.randint(0, ids.numel() - length + 1, (batch_size,), generator=generator)
    return torch.stack([ids[s:s + length] for s in starts.tolist()])


@torch.no_grad()
def validation_loss(model: Transformer, ids: torch.Tensor, seq_len: int, max_tokens: int) -> float:
    """Mean next-token cross-entropy over consecutive, non-overlapping windows of the first max_tokens ids."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    ids = ids[:max_tokens + 1]
    for start in range(0, ids.numel() - 1, seq_len):
        window = ids[start:start + seq_len + 1][None]
        if window.shape[1] < 2:
            break
        logits = model(window[:, :-1])
        total += F.cross_entropy(logits.float()[0], window[0, 1:], reduction="sum").item()
        count += window.shape[1] - 1
    model.train(was_training)
    return total / count


@torch.no_grad()
def perplexity(model: Transformer, ids: list[int] | torch.Tensor, context: int, stride: int | None = None,
               progress: Callable[[int, int], None] | None = None) -> tuple[float, int]:
    """exp(mean negative log-likelihood) of ids[1:], each token predicted from up to `context` tokens before it.

    Sliding window (transformers' recipe): windows of `context` tokens, `stride` apart (default context // 2);
    each window scores only the tokens no earlier window scored, so every token after the first is counted
    once, with at least context - stride tokens of history once the text is longer than one window.
    Returns (perplexity, tokens scored)."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    n = ids.numel()
    if n < 2:
        raise ValueError(f"perplexity needs at least 2 tokens, found {n}")
    stride = stride or max(1, context // 2)
    if not 0 < stride <= context:
        raise ValueError(f"stride must be in 1..context ({context}), found {stride}")
    nll, scored, end_prev = 0.0, 0, 1          # tokens [1, end_prev) are already scored
    start = 0
    while end_prev < n:
        end = min(start + context, n)
        window = ids[start:end][None].to(model.device)
        logits = model(window).float()[0]                       # position i predicts window[i + 1]
        first = end_prev - start                                # the first not-yet-scored token, window index
        targets = window[0, first:]
        nll += F.cross_entropy(logits[first - 1:-1], targets, reduction="sum").item()
        scored += targets.numel()
        end_prev = end
        if progress:
            progress(scored, n - 1)
        start += stride
        if start + context > n:                                 # the last window ends at the text's end
            start = max(0, n - context)
    return math.exp(nll / scored), scored


def save_checkpoint(model: Transformer, out: str, *, tokenizer: str | None = None,
                    dtype: torch.dtype = torch.float16, extra_files: dict[str, str] | None = None) -> str:
    """Write the model as a Hugging Face checkpoint directory: config.json + model.safetensors (+ tokenizer).

    dtype: the stored dtype of every tensor (fp16 by default, as Mixtral releases). For an AWQ int4 version,
    quantize what this wrote: minimoe.quantize.quantize_checkpoint(out, awq_dir) (`minimoe quantize`)."""
    from safetensors.torch import save_file

    c = model.config
    settings = dict(model_type=c.model_type, vocab_size=c.vocab_size, hidden_size=c.hidden_size,
                    intermediate_size=c.intermediate_size, num_hidden_layers=c.num_hidden_layers,
                    num_attention_heads=c.num_attention_heads, num_key_value_heads=c.num_key_value_heads,
                    rms_norm_eps=c.rms_norm_eps, max_position_embeddings=c.max_position_embeddings,
                    sliding_window=c.sliding_window, tie_word_embeddings=c.tie_word_embeddings,
                    rope_theta=c.rope_theta, dtype=str(dtype).replace("torch.", ""),
                    num_local_experts=c.num_local_experts, num_experts_per_tok=c.num_experts_per_tok)
    if c.head_dim != c.hidden_size // c.num_attention_heads:
        settings["head_dim"] = c.head_dim
    raw = config_json(settings, quantized=False, style="legacy")
    raw["bos_token_id"], raw["eos_token_id"] = c.bos_token_id, c.eos_token_id
    tensors = {name: p.detach().cpu().to(dtype).contiguous() for name, p in model.state_dict().items()}
    os.makedirs(out, exist_ok=True)
    save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(raw, f, indent=2)
    if tokenizer:
        shutil.copyfile(tokenizer, os.path.join(out, "tokenizer.model"))
    for name, text in (extra_files or {}).items():
        with open(os.path.join(out, name), "w") as f:
            f.write(text)
    return out


def train(model: Transformer, train_ids: torch.Tensor, val_ids: torch.Tensor | None, cfg: TrainConfig, *,
          on_log: Callable[[dict], None] | None = None, progress: bool = True) -> list[dict]:
    """The loop: cfg.steps optimiser steps on random windows of train_ids, validation every cfg.eval_every.

    Deterministic for a fixed cfg.seed and thread count (torch's CPU kernels are). Returns the log: one dict per
    step (loss, aux, grad_norm, lr, tokens_per_s) plus "val_loss" on the steps that evaluated."""
    cfg.check()
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = make_optimizer(model, cfg)
    model.train()
    log: list[dict] = []
    bar = _progress_bar(cfg.steps) if progress else None
    for step in range(cfg.steps):
        t0 = time.perf_counter()
        batch = random_windows(train_ids, cfg.batch_size, cfg.seq_len + 1, generator)
        entry = train_step(model, optimizer, batch, cfg, step)
        entry["tokens_per_s"] = cfg.batch_size * cfg.seq_len / (time.perf_counter() - t0)
        last = step == cfg.steps - 1
        if val_ids is not None and (last or (cfg.eval_every and step % cfg.eval_every == 0)):
            entry["val_loss"] = validation_loss(model, val_ids, cfg.seq_len, cfg.eval_tokens)
        log.append(entry)
        if on_log:
            on_log(entry)
        if bar is not None:
            shown = {"loss": f"{entry['loss']:.3f}", "tok/s": f"{entry['tokens_per_s']:.0f}"}
            val = [e["val_loss"] for e in log if "val_loss" in e]
            if val:
                shown["val"] = f"{val[-1]:.3f}"
            bar.set_postfix(shown, refresh=False)
            bar.update(1)
    if bar is not None:
        bar.close()
    model.eval()
    return log


def _progress_bar(total: int):
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency; without it, train quietly
        return None
    return tqdm(total=total, unit="step", dynamic_ncols=True)


def read_documents(folder: str) -> list[tuple[str, str]]:
    """Every *.txt file of a folder, sorted by name: [(name, text)]."""
    names = sorted(n for n in os.listdir(folder) if n.endswith(".txt"))
    if not names:
        raise ValueError(f"no .txt documents found in {folder}")
    out = []
    for n in names:
        with open(os.path.join(folder, n), encoding="utf-8") as f:
            out.append((n, f.read()))
    return out


def encode_documents(tokenizer, documents: list[tuple[str, str]]) -> torch.Tensor:
    """One token stream: <s> document </s> <s> document </s> ... (each document encoded as a whole)."""
    ids: list[int] = []
    for _, text in documents:
        ids.extend(tokenizer.encode(text, bos=True, eos=True))
    return torch.tensor(ids, dtype=torch.long)


def iterate_log(path: str) -> Iterator[dict]:
    """The entries of a training log written by `minimoe train` (one JSON object per line)."""
    with open(path) as f:
        for line in f:
            if line.strip():
                yield json.loads(line)
