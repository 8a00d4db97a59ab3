"""Do the built-in model's experts specialise? Routing on held-out text, by token category, per layer.

    python scripts/routing_analysis.py [--model DIR] [--text FILE] [--out JSON]

For every token of the text (default: tests/data/shakespeare_validation_sample.txt, a play the model never
saw) and every MoE layer: the expert ranked first. Tokens fall into categories by their piece: newline, other
punctuation, a word start in capitals (speaker names, "I"), a word start in lower case, a word continuation
(no leading space). Reported per layer:
    usage       share of tokens whose first choice is each expert (uniform: 1/E each)
    entropy     of that usage, in bits (log2 E when uniform)
    MI          mutual information between a token's category and its first expert, in bits: 0 when the
                choice ignores the category, up to the category entropy when the category decides it
and per category, the usage across experts. The same for a model of the same shape before training.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

import minimoe  # noqa: E402
from minimoe import train as T  # noqa: E402
from minimoe.cli import DEFAULT_MODEL  # noqa: E402

CATEGORIES = ("newline", "punctuation", "Capitalised word", "lower-case word", "continuation")


def category(piece: str) -> str:
    if piece == "<0x0A>":
        return "newline"
    word = piece.lstrip("\u2581")
    if not word or not any(ch.isalnum() for ch in word):
        return "punctuation"
    if piece.startswith("\u2581"):
        return "Capitalised word" if word[0].isupper() else "lower-case word"
    return "continuation"


def entropy(counts) -> float:
    total = sum(counts)
    return -sum(c / total * math.log2(c / total) for c in counts if c)


def analyse(model, ids, pieces, num_experts):
    with torch.inference_mode():
        _, routes = model(torch.tensor([ids]), output_router_logits=True)
    cats = [category(p) for p in pieces]
    layers = []
    for route in routes:
        first = route.experts[:, 0].tolist()
        usage = collections.Counter(first)
        joint = collections.Counter(zip(cats, first))
        by_cat = collections.Counter(cats)
        h_expert = entropy([usage[e] for e in range(num_experts)])
        h_given = sum(by_cat[c] / len(cats) * entropy([joint[c, e] for e in range(num_experts)]) for c in by_cat)
        layers.append({
            "usage": [usage[e] / len(first) for e in range(num_experts)],
            "entropy_bits": h_expert,
            "mutual_information_bits": h_expert - h_given,
            "by_category": {c: [joint[c, e] / by_cat[c] for e in range(num_experts)] for c in CATEGORIES if by_cat[c]},
        })
    return layers, {c: cats.count(c) for c in CATEGORIES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--text", default=os.path.join(HERE, "..", "tests", "data", "shakespeare_validation_sample.txt"))
    parser.add_argument("--tokens", type=int, default=1024, help="the first N tokens of the text (one forward)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    model = minimoe.load_model(args.model, dtype=torch.float32, engine="reference")
    tokenizer = minimoe.load_tokenizer(args.model)
    with open(args.text, encoding="utf-8") as f:
        ids = tokenizer.encode(f.read(), bos=False)[: args.tokens]
    pieces = [tokenizer.id_to_piece(i) for i in ids]
    E = model.config.num_local_experts
    report = {"model": args.model, "tokens": len(ids)}
    for name, m in (("trained", model), ("untrained", T.new_model(model.config, seed=0).eval())):
        report[name], report["categories"] = analyse(m, ids, pieces, E)
    print(f"{len(ids)} tokens: " + ", ".join(f"{c} {n}" for c, n in report["categories"].items()))
    cat_entropy = entropy(list(report["categories"].values()))
    print(f"category entropy {cat_entropy:.2f} bits; uniform routing entropy {math.log2(E):.2f} bits")
    print(f"{'layer':>5} | {'trained: entropy  MI':>20} | {'untrained: entropy  MI':>22} | first-choice share per expert (trained)")
    for i, (a, b) in enumerate(zip(report["trained"], report["untrained"])):
        print(f"{i:>5} | {a['entropy_bits']:>11.2f} {a['mutual_information_bits']:>8.3f} | "
              f"{b['entropy_bits']:>13.2f} {b['mutual_information_bits']:>8.3f} | "
              + " ".join(f"{u:.2f}" for u in a["usage"]))
    for i, layer in enumerate(report["trained"]):
        print(f"layer {i}: " + "; ".join(f"{c}: " + " ".join(f"{u:.2f}" for u in shares)
                                         for c, shares in layer["by_category"].items()))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
