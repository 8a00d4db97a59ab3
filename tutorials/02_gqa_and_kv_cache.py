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
# # 02 · Grouped-query attention with a KV cache
#
# Confinus-2x7B has 32 query heads but only 8 key/value heads: every group of 4 query heads shares one
# key and one value head (**grouped-query attention**, GQA). During generation the keys and values of past
# tokens are kept in a **KV cache**, so each new token attends over the cache instead of recomputing it.
#
# We write causal GQA from scratch the obvious way (copy each kv head 4 times), check it against
# `minimoe.model.Attention` (which broadcasts instead of copying), then decode token by token with a cache
# and check that it gives exactly what one big forward gives. The page: docs/attention.md.

# %%
import torch

from minimoe.config import ModelConfig
from minimoe.cache import KVCache, StaticKVCache
from minimoe.model import Attention, RotaryEmbedding

torch.manual_seed(0)

# A small attention layer with Confinus' proportions: 4 query heads per kv head.
config = ModelConfig(model_type="mixtral", vocab_size=256, hidden_size=256, intermediate_size=512,
                     num_hidden_layers=1, num_attention_heads=8, num_key_value_heads=2, head_dim=32,
                     rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=512,
                     num_local_experts=2, num_experts_per_tok=2)
C, H, Hkv, D = config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim

attn = Attention(config, layer_index=0, dtype=torch.float32)
for linear in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj):   # minimoe's Linear starts uninitialised
    linear.weight.copy_(torch.randn_like(linear.weight) * linear.in_features ** -0.5)
rotary = RotaryEmbedding(D, config.rope_theta)

# %% [markdown]
# ## Attention from scratch
#
# $$ \mathrm{softmax}\!\left(\frac{QK^\top}{\sqrt{D}} + M\right) V, \qquad M_{tj} = -\infty \text{ if } j > t $$
#
# Shapes: x (B, T, C) → q (B, H, T, D), k and v (B, Hkv, T, D). `repeat_interleave` turns the Hkv heads into
# H heads (head h uses kv head h // 4). The softmax runs in fp32.

# %%
def rope(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos[:, None] + torch.cat([-x[..., half:], x[..., :half]], -1) * sin[:, None]


def gqa_attention(x, positions, past_k=None, past_v=None):
    """x (B, T, C) -> (out (B, T, C), k, v (B, Hkv, L, D)). past_k/past_v: the cache so far, or None."""
    B, T, _ = x.shape
    q = (x @ attn.q_proj.weight.T).view(B, T, H, D).transpose(1, 2)      # (B, H, T, D)
    k = (x @ attn.k_proj.weight.T).view(B, T, Hkv, D).transpose(1, 2)    # (B, Hkv, T, D)
    v = (x @ attn.v_proj.weight.T).view(B, T, Hkv, D).transpose(1, 2)
    cos, sin = rotary(positions, x.dtype)
    q, k = rope(q, cos, sin), rope(k, cos, sin)                          # keys are cached *after* RoPE
    if past_k is not None:
        k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)   # (B, Hkv, L, D)
    L = k.shape[2]
    k_all = k.repeat_interleave(H // Hkv, dim=1)                         # (B, H, L, D): a copy per query head
    v_all = v.repeat_interleave(H // Hkv, dim=1)
    scores = q @ k_all.transpose(-1, -2) / D ** 0.5                      # (B, H, T, L)
    causal = torch.ones(T, L, dtype=torch.bool).tril(diagonal=L - T)     # query t sits at slot L - T + t
    scores = scores.masked_fill(~causal, float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).to(x.dtype)
    out = (probs @ v_all).transpose(1, 2).reshape(B, T, H * D)
    return out @ attn.o_proj.weight.T, k, v


B, T = 2, 12
x = torch.randn(B, T, C)
positions = torch.arange(T).expand(B, T)
ours, _, _ = gqa_attention(x, positions)

cos, sin = rotary(positions, x.dtype)
mask = torch.ones(T, T, dtype=torch.bool).tril()[None].expand(B, T, T)  # (B, T, L): may query t see key j?
theirs = attn(x, cos, sin, mask, cache=None)
torch.testing.assert_close(ours, theirs)
print("full-sequence GQA matches minimoe.model.Attention")

# %% [markdown]
# ## Decoding with a KV cache
#
# Feed the first 8 tokens at once (the *prefill*), then the other 4 one at a time (*decode*). Each step
# computes q, k, v for the new token only, appends k and v to the cache and attends over all of it.
# The outputs must equal the rows of the full forward above.

# %%
prefill = 8
out, k_cache, v_cache = gqa_attention(x[:, :prefill], positions[:, :prefill])
steps = [out]
for t in range(prefill, T):
    out, k_cache, v_cache = gqa_attention(x[:, t:t + 1], positions[:, t:t + 1], k_cache, v_cache)
    steps.append(out)
torch.testing.assert_close(torch.cat(steps, dim=1), ours)
print(f"our cache: prefill {prefill} + {T - prefill} decode steps == one forward of {T} tokens;"
      f" cache holds k {tuple(k_cache.shape)}")

# minimoe's KVCache does the same with preallocated, doubling storage; the mask is (B, T_new, L).
cache = KVCache(num_layers=1)
minimoe_steps = []
for start, stop in [(0, prefill)] + [(t, t + 1) for t in range(prefill, T)]:
    cos, sin = rotary(positions[:, start:stop], x.dtype)
    mask = torch.ones(stop - start, stop, dtype=torch.bool).tril(diagonal=start)[None].expand(B, -1, -1)
    minimoe_steps.append(attn(x[:, start:stop], cos, sin, mask, cache))
    cache.length = stop                      # Transformer.forward advances this after all layers have run
torch.testing.assert_close(torch.cat(minimoe_steps, dim=1), ours)
print(f"minimoe KVCache: same result; its buffer has room for {cache.keys[0].shape[2]} positions")

# %% [markdown]
# ## A cache of fixed shape, for CUDA graphs
#
# `KVCache` returns exactly the L keys written so far, so every decode step has different shapes. A CUDA graph
# (docs/generation.md) replays one recorded step with the same shapes every time. `StaticKVCache` keeps
# `capacity` slots and writes each new key at a slot held in a *tensor*; attention then reads all slots and the
# mask hides the ones not written yet. Same numbers, fixed shapes:

# %%
static = StaticKVCache(config, batch=B, capacity=32, dtype=x.dtype, device="cpu")
prompt_cache = KVCache(num_layers=1)
cos, sin = rotary(positions[:, :prefill], x.dtype)
causal = torch.ones(prefill, prefill, dtype=torch.bool).tril()[None].expand(B, -1, -1)
static_steps = [attn(x[:, :prefill], cos, sin, causal, prompt_cache)]   # the prompt: ordinary cache
prompt_cache.length, prompt_cache.key_mask = prefill, torch.ones(B, prefill, dtype=torch.bool)
prompt_cache.next_position = torch.full((B,), prefill)
static.load(prompt_cache)                                                # then copy it into the fixed buffers
for t in range(prefill, T):
    cos, sin = rotary(positions[:, t:t + 1], x.dtype)
    visible = (torch.arange(static.capacity) <= static.slot)[None, None, :].expand(B, 1, -1)  # slots written so far, and this one
    static_steps.append(attn(x[:, t:t + 1], cos, sin, visible, static))
    static.slot += 1                          # the model's forward does this (static.commit()) after its layers
torch.testing.assert_close(torch.cat(static_steps, dim=1), ours)
print(f"StaticKVCache: same result; every step read all {static.keys[0].shape[2]} slots (the unwritten ones masked)")

# %% [markdown]
# ## What to look at: the size of the cache
#
# Per token and layer the cache holds one key and one value per **kv** head. For Confinus-2x7B in fp16:

# %%
layers, kv_heads, head_dim, fp16 = 32, 8, 128, 2
per_token = 2 * layers * kv_heads * head_dim * fp16                     # k and v
print(f"Confinus-2x7B KV cache: {per_token // 1024} KiB per token")
for tokens in (1_000, 4_096, 32_768):
    print(f"  {tokens:>6} tokens: {per_token * tokens / 2**30:5.2f} GiB with GQA,"
          f" {4 * per_token * tokens / 2**30:5.2f} GiB if all 32 heads had their own k and v")

# And the work per decoded token grows with the context: one dot product per cached position and head.
print(f"attention FLOPs per decoded token at L = 4096: {2 * 2 * layers * 32 * head_dim * 4096 / 1e9:.2f} GFLOP"
      " (QK^T and PV), small next to the ~26 GFLOP of the linears")
