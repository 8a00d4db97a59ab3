"""Draw a training log's loss curves: train loss (a running mean) and validation loss against tokens seen.

    python scripts/plot_training.py runs/shakespeare/log.jsonl docs/figures/training_loss.png
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from minimoe.train import iterate_log  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log")
    parser.add_argument("png")
    parser.add_argument("--tokens-per-step", type=int, default=None,
                        help="default: batch_size * seq_len from results.json next to the log, else 4096")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_step = args.tokens_per_step
    results = os.path.join(os.path.dirname(args.log), "results.json")
    if per_step is None and os.path.exists(results):
        with open(results) as f:
            t = json.load(f)["train"]
        per_step = t["batch_size"] * t["seq_len"]
    per_step = per_step or 4096
    log = list(iterate_log(args.log))
    steps = [e["step"] for e in log]
    window, smooth = 20, []
    for i in range(len(log)):
        chunk = log[max(0, i - window + 1): i + 1]
        smooth.append(sum(e["loss"] for e in chunk) / len(chunk))
    val = [(e["step"], e["val_loss"]) for e in log if "val_loss" in e]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot([s * per_step / 1e6 for s in steps], smooth, label=f"train (mean of {window} steps)")
    ax.plot([s * per_step / 1e6 for s, _ in val], [v for _, v in val], "o-", label="validation (held-out plays)")
    ax.set_xlabel("tokens seen (millions)")
    ax.set_ylabel("cross-entropy (nats per token)")
    ax.set_ylim(bottom=min(v for _, v in val) - 0.3, top=min(8.0, max(smooth) + 0.2))
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("minimoe's built-in model: training on Shakespeare")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.png)), exist_ok=True)
    fig.savefig(args.png)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
