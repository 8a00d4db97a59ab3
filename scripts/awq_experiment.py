"""RTN vs AWQ on the trained built-in model: held-out perplexity at several group sizes and bit widths.

    python scripts/awq_experiment.py [--fp16 runs/shakespeare/fp16] [--data data/shakespeare]
                                     [--out benchmarks/results/awq_default_model.json] [--figures docs/figures]

Needs the fp16 built-in model (scripts/train_default_model.py writes it) and the Shakespeare corpus
(scripts/prepare_shakespeare.py). Calibration: the first `--samples` windows of `--seq-len` tokens of the
training plays; evaluation: the two held-out plays, minimoe.train.perplexity with windows of 256 tokens.
Every variant is searched on the same calibration tokens and scored on the same held-out tokens, in fp32
(bit widths other than 4 are simulated: the AWQ GEMM file format stores 4-bit codes only).
Writes the table as JSON and, with --figures, two PNGs: activation magnitudes per channel, error vs alpha.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

import minimoe  # noqa: E402
from minimoe import train as T  # noqa: E402
from minimoe.quantize import awq_search as A  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--fp16", default=os.path.join(HERE, "..", "runs", "shakespeare", "fp16"))
    p.add_argument("--data", default=os.path.join(HERE, "..", "data", "shakespeare"))
    p.add_argument("--out", default=os.path.join(HERE, "..", "benchmarks", "results", "awq_default_model.json"))
    p.add_argument("--figures", default=None, help="folder for the PNG figures (e.g. docs/figures)")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--val-tokens", type=int, default=0, help="score only this many held-out tokens (0: all)")
    p.add_argument("--plot-only", action="store_true", help="redraw the figures from --out's JSON")
    p.add_argument("--outliers", type=int, default=0,
                   help="give every model this many outlier channels (x30, function unchanged: "
                        "awq_search.add_outlier_channels) and run the main variants only")
    args = p.parse_args()
    if args.outliers and args.out == p.get_default("out"):
        args.out = args.out.replace(".json", "_outliers.json")
    if args.plot_only:
        with open(args.out) as f:
            plot(json.load(f), args.figures or os.path.join(HERE, "..", "docs", "figures"))
        return 0

    tok = minimoe.load_tokenizer(args.fp16)
    train_ids = T.encode_documents(tok, T.read_documents(os.path.join(args.data, "train")))
    val_ids = T.encode_documents(tok, T.read_documents(os.path.join(args.data, "val")))
    if args.val_tokens:
        val_ids = val_ids[: args.val_tokens]
    windows = A.calibration_windows(train_ids, args.samples, args.seq_len)

    def load():
        model = minimoe.load_model(args.fp16, dtype="float32", engine="reference")
        if args.outliers:
            A.add_outlier_channels(model, channels=args.outliers, factor=30.0)
        return model

    def ppl(model):
        return T.perplexity(model, val_ids, 256)[0]

    rows, curves = [], {}
    fp = ppl(load())
    print(f"fp16 weights: {fp:.3f} over {val_ids.numel() - 1} tokens", flush=True)
    variants = [(128, 4, {}), (64, 4, {}), (32, 4, {}), (128, 3, {}), (128, 3, {"duo_scaling": True}),
                (128, 4, {"clip": False}), (128, 4, {"inputs": "fp"}), (128, 4, {"duo_scaling": True})]
    if args.outliers:
        variants = [(128, 4, {}), (64, 4, {}), (128, 3, {})]
    rtn_cache: dict[tuple[int, int], float] = {}
    for G, bits, extra in variants:
        if (G, bits) not in rtn_cache:
            rtn_cache[G, bits] = ppl(A.round_to_nearest_model(load(), G, bits))
        rtn = rtn_cache[G, bits]
        model, start = load(), time.perf_counter()
        keep = G == 128 and bits == 4 and not extra
        summary = A.quantize_model(model, windows, A.Settings(group_size=G, bits=bits, **extra), keep_stats=keep)
        seconds = time.perf_counter() - start
        awq = ppl(model)
        closed = (rtn - awq) / (rtn - fp) if rtn != fp else float("nan")
        row = dict(group_size=G, bits=bits, variant=extra or "default", fp16=fp, rtn=rtn, awq=awq,
                   gap_closed=closed, search_seconds=seconds,
                   layers=[{k: r[k] for k in ("index", "alpha", "rtn_error", "awq_error", "routes_changed_rtn",
                                              "routes_changed_awq", "expert_tokens", "fallback_experts")}
                           for r in summary["layers"]])
        rows.append(row)
        if keep:
            curves = {"errors": [r["errors"] for r in summary["layers"]],
                      "stats": [r["stats"] for r in summary["layers"]], "alphas": A.Settings().alphas}
        print(f"w{bits} G{G} {extra or ''}: RTN {rtn:.3f}  AWQ {awq:.3f}  gap closed {100 * closed:.0f}%  "
              f"(search {seconds:.0f} s)", flush=True)
    result = {"model": "minimoe built-in (trained, fp16)", "outlier_channels": args.outliers, "calibration_tokens": windows.numel(),
              "val_tokens": val_ids.numel() - 1, "context": 256, "threads": torch.get_num_threads(),
              "rows": rows, "curves": curves}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")
    if args.figures:
        plot(result, args.figures)
    return 0


def plot(result: dict, folder: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = result["curves"]
    groups = ["qkv", "v->o", "ffn_in", "expert0.w3->w2"]
    titles = {"qkv": "input_layernorm -> q,k,v", "v->o": "v_proj -> o_proj", "ffn_in": "norm -> router + w1,w3",
              "expert0.w3->w2": "expert 0: w3 -> w2"}

    def sorted_magnitudes(stats):
        values = sorted(stats, reverse=True)
        return range(len(values)), [v / (sum(values) / len(values)) for v in values]

    def relative_errors(errors):
        return curves["alphas"], [v / errors[0] for v in errors]

    figures = [("awq_activation_magnitudes.png", "stats", sorted_magnitudes, "channel (sorted)",
                "mean |x| / average over channels", True),
               ("awq_error_vs_alpha.png", "errors", relative_errors, "alpha", "block output MSE / RTN's (alpha = 0)",
                False)]
    for file, key, series, xlabel, ylabel, log in figures:
        fig, axes = plt.subplots(1, len(groups), figsize=(14, 3.2))
        for ax, g in zip(axes, groups):
            for i, per_layer in enumerate(curves[key]):
                ax.plot(*series(per_layer[g]), marker=None if log else ".", label=f"layer {i}")
            if log:
                ax.set_yscale("log")
            else:
                ax.axhline(1.0, color="grey", lw=0.5)
            ax.set_title(titles[g], fontsize=9)
            ax.set_xlabel(xlabel)
        axes[0].set_ylabel(ylabel)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(folder, file), dpi=72)
        plt.close(fig)

if __name__ == "__main__":
    sys.exit(main())
