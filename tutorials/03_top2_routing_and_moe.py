# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · Top-2 routing and the sparse MoE block
#
# In a Mixtral layer the feed-forward network is replaced by E **experts** (each a SwiGLU MLP) and a tiny
# **router** that, for every token, picks the k best experts and mixes their outputs. We build the router and
# the block from scratch, the slow obvious way (a Python loop over tokens), and check them against
# `minimoe.model.SparseMoeBlock`, which groups tokens by expert instead. Then we count what routing means
# for the cost: with Mixtral-8x7B's 8 experts a token touches 2 of them, with Confinus-2x7B's 2 experts it
# touches both. The page: docs/moe.md.

# %%
import os

import torch
import torch.nn.functional as F

from minimoe.config import ModelConfig
from minimoe.model import Router, SparseMoeBlock

torch.manual_seed(0)
PLOTS = os.environ.get("MINIMOE_TUTORIAL_PLOTS")


def make_block(experts: int, top_k: int) -> SparseMoeBlock:
    config = ModelConfig(model_type="mixtral", vocab_size=256, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=512,
                         num_local_experts=experts, num_experts_per_tok=top_k)
    block = SparseMoeBlock(config, dtype=torch.float32)
    for p in block.parameters():                       # minimoe's modules start uninitialised
        p.copy_(torch.randn_like(p) * p.shape[-1] ** -0.5)
    return block


# %% [markdown]
# ## The router
#
# $$ \ell = W_g x, \quad p = \mathrm{softmax}(\ell), \quad (w, e) = \mathrm{topk}(p, k), \quad
#    w \leftarrow w / \textstyle\sum w $$
#
# The router is a plain linear C → E that is never quantized (E is 2 or 8: far too few columns for int4).
# The softmax runs in fp32.

# %%
def route(x: torch.Tensor, gate_weight: torch.Tensor, k: int):
    """x (N, C) -> (weights (N, k) fp32 summing to 1, experts (N, k) best first)."""
    logits = x @ gate_weight.T                                   # (N, E)
    probs = torch.softmax(logits.float(), dim=-1)
    weights, experts = probs.topk(k, dim=-1)
    return weights / weights.sum(-1, keepdim=True), experts


block = make_block(experts=8, top_k=2)                           # Mixtral-8x7B's routing
tokens = torch.randn(10, 64)                                      # N = 10 tokens, C = 64
weights, experts = route(tokens, block.gate.weight, k=2)
theirs = block.gate(tokens)
torch.testing.assert_close(weights, theirs.weights)
assert torch.equal(experts, theirs.experts)
print("router matches minimoe.model.Router; token 0 goes to experts", experts[0].tolist(),
      "with weights", [round(w, 3) for w in weights[0].tolist()])

# %% [markdown]
# Two ways of writing the same function: softmax over all E then renormalise the top k, or top k on the
# logits then softmax over those k. The shared normaliser $\sum_{e} e^{\ell_e}$ cancels.

# %%
top_logits, top_experts = (tokens @ block.gate.weight.T).topk(2, dim=-1)
assert torch.equal(top_experts, experts)
torch.testing.assert_close(torch.softmax(top_logits, dim=-1), weights)
print("softmax-then-top-k-then-renormalise == top-k-then-softmax")

# %% [markdown]
# ## The experts and the block
#
# Each expert is a SwiGLU MLP, $\mathrm{expert}(x) = W_2\,(\mathrm{silu}(W_1 x) \odot W_3 x)$, with
# $W_1, W_3$: C → 14336 and $W_2$: 14336 → C in Confinus. The block's output for token $x$ is
# $\sum_{i=1}^{k} w_i\, \mathrm{expert}_{e_i}(x)$. Token by token:

# %%
def expert_forward(expert, x):
    return F.silu(x @ expert.w1.weight.T) * (x @ expert.w3.weight.T) @ expert.w2.weight.T


def moe_token_by_token(block, x, k):
    weights, experts = route(x, block.gate.weight, k)
    out = torch.zeros_like(x)
    for n in range(x.shape[0]):                                    # every token ...
        for slot in range(k):                                      # ... through each of its k experts
            e = int(experts[n, slot])
            out[n] += weights[n, slot] * expert_forward(block.experts[e], x[n])
    return out


x = torch.randn(1, 10, 64)                                         # (B, T, C)
ours = moe_token_by_token(block, x[0], k=2)
theirs, _ = block(x)
torch.testing.assert_close(ours, theirs[0])
print("token-by-token MoE matches minimoe.model.SparseMoeBlock (which runs each expert once on its tokens)")

# %% [markdown]
# ## What to look at: how many tokens each expert gets
#
# minimoe's block runs expert e once, on the batch of tokens routed to it (`torch.where(experts == e)`).
# With 8 experts and top-2, each expert sees about a quarter of the tokens, so the FLOPs are a quarter of a
# dense layer of 8 experts. With Confinus' 2 experts and top-2, every expert sees every token: the
# "sparse" block is as dense as it gets, and the router only chooses the *mix*.

# %%
many = torch.randn(4096, 64)
for E, k in [(8, 2), (2, 2)]:
    b = make_block(E, k)
    _, chosen = route(many, b.gate.weight, k)
    counts = torch.bincount(chosen.flatten(), minlength=E)
    print(f"E={E}, k={k}: tokens per expert {counts.tolist()}  (fraction of all tokens:"
          f" {[round(c / len(many), 2) for c in counts.tolist()]})")

confinus = make_block(2, 2)
# With k = E minimoe skips the grouping (every expert sees every token); same answer as token by token:
torch.testing.assert_close(moe_token_by_token(confinus, x[0], k=2), confinus(x)[0][0])
w, e = route(many, confinus.gate.weight, 2)
print(f"Confinus-like router: mean weight of the better expert {w[:, 0].mean():.3f}"
      " (random weights here; a trained router's confidence varies from token to token)")
assert torch.allclose(w.sum(-1), torch.ones(len(many)))

# %% [markdown]
# Bytes matter more than FLOPs at batch 1: a decoded token must read the weights of every expert it uses.
# For Confinus-2x7B in AWQ int4 that is both experts in all 32 layers.

# %%
hidden, inter, layers, g = 4096, 14336, 32, 128
expert_bytes = 3 * hidden * inter * (0.5 + 2.5 / g)               # int4 codes + fp16 scale and int4 zero per group
print(f"one expert, one layer: {expert_bytes / 1e6:.1f} MB; both experts, all layers: "
      f"{2 * layers * expert_bytes / 1e9:.2f} GB read per token")

if PLOTS:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(PLOTS, exist_ok=True)
    probs = torch.softmax(block.gate(x[0]).logits.float(), dim=-1)
    plt.figure(figsize=(6, 3))
    plt.imshow(probs.T, aspect="auto", cmap="Blues")
    plt.xlabel("token")
    plt.ylabel("expert")
    plt.colorbar(label="router probability")
    plt.tight_layout()
    plt.savefig(os.path.join(PLOTS, "03_router_probabilities.png"))
    print("saved", os.path.join(PLOTS, "03_router_probabilities.png"))
