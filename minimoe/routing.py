"""Routing analysis: which experts each token chose in each layer, and summary statistics.

    report = route(model, tokenizer, "The quick brown fox")
    print(format_table(report)); print(format_summary(report)); plot_heatmap(report, "routing.png")

Statistics per MoE layer (all computed from what the model exposes: router logits and the top-k choice):
    tokens per expert      how many of the T tokens put the expert among their top-k
    mean weight            the expert's mean renormalised weight over the tokens that chose it
    entropy                mean over tokens of the entropy (bits) of the full softmax over E experts:
                           0 = always certain, log2(E) = uniform
    top-1 switch rate      (between layer l and l+1) fraction of tokens whose best expert changes
With top-2 of 2 (Confinus-2x7B) every token uses both experts; what varies is the weight split, so the heatmap
shows the weight each token gives each expert.
"""

from __future__ import annotations

import dataclasses
import math

import torch


@dataclasses.dataclass
class RoutingReport:
    tokens: list[str]               # the T token pieces (as the tokenizer spells them)
    experts: torch.Tensor           # (layers, T, k) chosen experts, best first
    weights: torch.Tensor           # (layers, T, k) their renormalised weights
    probs: torch.Tensor             # (layers, T, E) full softmax over experts (fp32)

    @property
    def num_layers(self) -> int:
        return self.experts.shape[0]

    @property
    def num_experts(self) -> int:
        return self.probs.shape[-1]

    def dense_weights(self) -> torch.Tensor:
        """(layers, T, E): the weight each token gives each expert (0 where not chosen)."""
        dense = torch.zeros_like(self.probs)
        return dense.scatter(-1, self.experts, self.weights)

    def summary(self) -> dict:
        L, E = self.num_layers, self.num_experts
        chosen = torch.zeros(L, E)
        weight_sum = torch.zeros(L, E)
        for e in range(E):
            hit = self.experts == e                                        # (L, T, k)
            chosen[:, e] = hit.sum(dim=(1, 2)).float()
            weight_sum[:, e] = (self.weights * hit).sum(dim=(1, 2))
        mean_weight = torch.where(chosen > 0, weight_sum / chosen.clamp(min=1), torch.zeros_like(chosen))
        p = self.probs.clamp(min=1e-12)
        entropy = -(p * p.log2()).sum(-1).mean(-1)                         # (L,) bits
        top1 = self.experts[..., 0]                                        # (L, T)
        switches = (top1[1:] != top1[:-1]).float().mean(-1) if L > 1 else torch.zeros(0)
        return {
            "tokens_per_expert": chosen.long().tolist(),
            "mean_weight": mean_weight.tolist(),
            "entropy_bits": entropy.tolist(),
            "max_entropy_bits": math.log2(E),
            "top1_switch_rate": switches.tolist(),
        }


def route(model, tokenizer, text: str) -> RoutingReport:
    """Run `text` through the model once and collect every MoE layer's decisions."""
    if not model.config.is_moe:
        raise ValueError("this checkpoint is dense (model_type 'mistral'): it has no router to analyse")
    ids = tokenizer.encode(text, bos=True)
    if len(ids) > model.config.max_position_embeddings:
        raise ValueError(f"the text has {len(ids)} tokens, longer than the model's context of "
                         f"{model.config.max_position_embeddings}")
    _, routes = model(torch.tensor([ids], device=model.device), output_router_logits=True, last_token_only=True)
    return RoutingReport(
        tokens=[tokenizer.id_to_piece(i) for i in ids],
        experts=torch.stack([r.experts for r in routes]).cpu(),
        weights=torch.stack([r.weights for r in routes]).float().cpu(),
        probs=torch.stack([torch.softmax(r.logits.float(), -1) for r in routes]).cpu(),
    )


def format_table(report: RoutingReport, max_tokens: int = 64) -> str:
    """One line per token: for each layer, the chosen experts with their weights, e.g. `0:0.62 1:0.38`.

    Every column is as wide as its widest entry (header included), so the bars line up for any number of
    experts, any top-k and any token piece."""
    tokens = report.tokens[:max_tokens]
    width = min(16, max([len("token")] + [len(t) for t in tokens]))
    columns = []
    for l in range(report.num_layers):
        cells = [" ".join(f"{int(e)}:{float(w):.2f}" for e, w in zip(report.experts[l, t], report.weights[l, t]))
                 for t in range(len(tokens))]
        label = f"layer {l}"
        columns.append((label, cells, max([len(label)] + [len(c) for c in cells])))
    lines = ["token".ljust(width) + "".join(f" | {label:<{w}}" for label, _, w in columns).rstrip()]
    for t, piece in enumerate(tokens):
        lines.append(piece[:width].ljust(width) + "".join(f" | {cells[t]:<{w}}" for _, cells, w in columns).rstrip())
    if len(report.tokens) > max_tokens:
        lines.append(f"... {len(report.tokens) - max_tokens} more tokens")
    return "\n".join(lines)


def format_summary(report: RoutingReport) -> str:
    """Per layer: tokens and mean weight per expert, entropy, and how often the top-1 expert changes."""
    s = report.summary()
    E, L = report.num_experts, report.num_layers
    count_labels = [f"tokens e{e}" for e in range(E)]
    weight_labels = [f"mean w e{e}" for e in range(E)]
    entropy_label = f"entropy (max {s['max_entropy_bits']:.2f} bits)"

    def row(layer, counts, weights, entropy, switch):
        return (f"{layer:>5} | " + " ".join(f"{c:>{len(lab)}}" for c, lab in zip(counts, count_labels)) + " | "
                + " ".join(f"{w:>{len(lab)}}" for w, lab in zip(weights, weight_labels))
                + f" | {entropy:>{len(entropy_label)}} | {switch}")

    lines = [row("layer", count_labels, weight_labels, entropy_label, "top-1 switch to next layer")]
    for l in range(L):
        switch = f"{s['top1_switch_rate'][l]:.2f}" if l < L - 1 else "-"
        lines.append(row(l, [str(n) for n in s["tokens_per_expert"][l]],
                         [f"{w:.3f}" for w in s["mean_weight"][l]], f"{s['entropy_bits'][l]:.3f}", switch))
    return "\n".join(lines)


def plot_heatmap(report: RoutingReport, path: str) -> None:
    """Token x layer heatmap of routing weights, one panel per expert. Needs matplotlib (pip install minimoe[plot])."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install matplotlib (or minimoe[plot])") from None
    dense = report.dense_weights()                                          # (L, T, E)
    E, T = report.num_experts, len(report.tokens)
    fig, axes = plt.subplots(1, E, figsize=(2 + 0.35 * report.num_layers * E, 1.5 + 0.22 * T), squeeze=False)
    for e in range(E):
        ax = axes[0, e]
        image = ax.imshow(dense[:, :, e].T.numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_title(f"expert {e}")
        ax.set_xlabel("layer")
        ax.set_xticks(range(report.num_layers))
        ax.set_yticks(range(T))
        ax.set_yticklabels(report.tokens if e == 0 else [""] * T, fontsize=7)
    fig.colorbar(image, ax=axes[0, -1], label="routing weight")
    fig.suptitle("routing weight per token and layer")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
