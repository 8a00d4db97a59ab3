"""The reference: a Mixtral-style sparse Mixture-of-Experts transformer (and its dense Mistral sibling).

Other families (minimoe/families: Qwen2-MoE) reuse these blocks and add their own in their own file.

This file is the spec, in plain PyTorch, read top to bottom in build order:
    RMSNorm -> RotaryEmbedding -> Attention -> Router -> Expert -> SparseMoeBlock (| MLP)
    -> DecoderLayer -> Transformer

Each forward is the formula it names, and nothing else runs in its place unless an engine says so (see
minimoe/engines: `print(model)` shows every module an engine swapped in, and an engine whose fast path mirrors
a function of this file checks that the function is still the one it was verified against, or warns and runs
yours). The one kernel this file reaches is the int4 product inside the linear layers (minimoe/linear.py,
visibly: their `kernel` flag). The KV caches live in minimoe/cache.py, checkpoint loading in minimoe/loading.py.

Module names are the checkpoint's tensor names (`self_attn.q_proj`, `block_sparse_moe.gate`,
`experts.{e}.w1` ...), so loading is one obvious mapping. The semantics follow the reference implementation in
transformers exactly (docs/facts.md): fp32 RMSNorm statistics, split-half RoPE computed in fp32, an fp32
softmax in attention and in the router, top-k experts with renormalised weights.

Lines between `# [task N.M]` and `# [/task N.M]` are what the course assignments (assignments/) ask a student
to write: their skeletons are generated from this file, so they never drift from it.

Shapes: B batch, T new tokens, L cached + new tokens, H query heads, Hkv key/value heads, D head_dim,
C hidden size (d_model), E experts, k experts per token, N = B*T tokens.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from minimoe.cache import KVCache, StaticKVCache
from minimoe.config import ModelConfig
from minimoe.linear import Linear


class RMSNorm(nn.Module):
    """x / rms(x) * weight. Statistics in fp32 even for half inputs: a sum of 4096 squares overflows fp16."""

    def __init__(self, hidden_size: int, eps: float, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=dtype), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [task 1.1]
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)  # cast back *before* the weight, as the reference does
        # [/task 1.1]


class RotaryEmbedding(nn.Module):
    """RoPE (Su et al., 2021, arXiv:2104.09864), split-half convention as in HF checkpoints.

    Pair (j, j + D/2) of each head is rotated by the angle position * theta^(-2j/D). Angles are computed in fp32
    (positions reach 32768: fp16 could not even represent them) and only cos/sin are cast to the activations'
    dtype.
    """

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        # D/2 numbers, made on the CPU even when the model is built on the meta device (load_model does): there,
        # `theta ** exponent` would import torch's symbolic-shape machinery, 155 MB of RSS for nothing.
        exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim
        self.register_buffer("inv_freq", 1.0 / (theta ** exponent), persistent=False)  # (D/2,)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        # [task 1.2]
        angles = positions.float()[..., None] * self.inv_freq.float()  # (B, T, D/2)
        angles = torch.cat((angles, angles), dim=-1)                    # (B, T, D): both halves of a pair
        return angles.cos().to(dtype), angles.sin().to(dtype)
        # [/task 1.2]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension."""
    # [task 1.3]
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)
    # [/task 1.3]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, heads, T, D); cos/sin (B, T, D)."""
    # [task 1.3]
    cos, sin = cos[:, None], sin[:, None]  # broadcast over heads
    return x * cos + rotate_half(x) * sin
    # [/task 1.3]


class Attention(nn.Module):
    """Grouped-query causal self-attention (Ainslie et al., 2023, arXiv:2305.13245), optional sliding window.

    H query heads share Hkv key/value heads in groups of H/Hkv: the KV cache is H/Hkv times smaller than in
    multi-head attention.
    """

    def __init__(self, config: ModelConfig, layer_index: int, dtype=None):
        super().__init__()
        c = config
        self.layer_index = layer_index
        self.num_heads, self.num_kv_heads, self.head_dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.scale = self.head_dim ** -0.5
        bias = c.attention_bias  # Qwen2-MoE: biases on q, k, v (never on o)
        self.q_proj = Linear(c.hidden_size, self.num_heads * self.head_dim, bias=bias, dtype=dtype)
        self.k_proj = Linear(c.hidden_size, self.num_kv_heads * self.head_dim, bias=bias, dtype=dtype)
        self.v_proj = Linear(c.hidden_size, self.num_kv_heads * self.head_dim, bias=bias, dtype=dtype)
        self.o_proj = Linear(self.num_heads * self.head_dim, c.hidden_size, dtype=dtype)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor,
                cache: KVCache | StaticKVCache | None) -> torch.Tensor:
        # [task 2.4]
        B, T, _ = x.shape
        H, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
        q = self.q_proj(x).view(B, T, H, D).transpose(1, 2)     # (B, H, T, D)
        k = self.k_proj(x).view(B, T, Hkv, D).transpose(1, 2)   # (B, Hkv, T, D)
        v = self.v_proj(x).view(B, T, Hkv, D).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_index, k, v)          # (B, Hkv, L, D): the cached tokens and these
        out = grouped_attention(q, k, v, mask, self.scale)       # (B, H, T, D)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, H * D))
        # [/task 2.4]


def grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                      scale: float) -> torch.Tensor:
    """softmax(q k^T * scale, hidden keys at -inf) v for grouped-query heads, after RoPE and the cache update.

    q (B, H, T, D); k, v (B, Hkv, L, D), H a multiple of Hkv; mask (B, T, L) bool -> (B, H, T, D) in q's dtype.
    """
    # [task 2.1]
    B, H, T, D = q.shape
    Hkv, L = k.shape[1], k.shape[2]
    G = H // Hkv
    # Query heads grouped by their kv head: rows (g, t) of one (G*T, D) matrix per kv head, so each kv head
    # broadcasts over its group. k and v are used as they sit in the cache (a strided view): no repeated or
    # copied K and V, which would cost O(L) bytes per layer per decoded token.
    q = q.reshape(B, Hkv, G * T, D)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale                   # (B, Hkv, G*T, L)
    scores = scores.view(B, Hkv, G, T, L).masked_fill(~mask[:, None, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(probs.view(B, Hkv, G * T, L), v).view(B, H, T, D)   # (B, Hkv, G*T, D) as (B, H, T, D)
    # [/task 2.1]


@dataclasses.dataclass
class RouterOutput:
    """What one MoE layer decided, per token (rows = B*T flattened tokens)."""

    logits: torch.Tensor    # (B*T, E) router logits, in the model's dtype
    experts: torch.Tensor   # (B*T, k) chosen expert indices, best first
    weights: torch.Tensor   # (B*T, k) their renormalised weights (sum to 1), fp32


class Router(nn.Module):
    """The gate: a plain (never quantized) linear C -> E, softmax in fp32, top-k, renormalise.

    Softmax over all E then renormalising the top k equals a softmax over the k chosen logits (the shared
    normaliser cancels), which is how Mixtral is often written.
    """

    def __init__(self, hidden_size: int, num_experts: int, top_k: int, dtype=None):
        super().__init__()
        self.top_k = top_k
        self.weight = nn.Parameter(torch.empty(num_experts, hidden_size, dtype=dtype), requires_grad=False)

    def forward(self, x: torch.Tensor) -> RouterOutput:
        # [task 3.1]
        # transformers computes the logits in x's dtype: an fp32-accumulated product rounded once to that dtype,
        # which is what this line says in so many words.
        logits = F.linear(x.float(), self.weight.float()).to(x.dtype)   # (N, E)
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        weights, experts = torch.topk(probs, self.top_k, dim=-1)        # (N, k)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        return RouterOutput(logits, experts, weights)
        # [/task 3.1]


class Expert(nn.Module):
    """One expert: a SwiGLU feed-forward network (Shazeer, 2020, arXiv:2002.05202)."""

    def __init__(self, hidden_size: int, intermediate_size: int, dtype=None):
        super().__init__()
        self.w1 = Linear(hidden_size, intermediate_size, dtype=dtype)  # gate projection
        self.w2 = Linear(intermediate_size, hidden_size, dtype=dtype)  # down projection
        self.w3 = Linear(hidden_size, intermediate_size, dtype=dtype)  # up projection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [task 3.2]
        return self.w2(F.silu(self.w1(x)) * self.w3(x))
        # [/task 3.2]


class SparseMoeBlock(nn.Module):
    """Top-k of E experts per token (Shazeer et al., 2017; Mixtral: Jiang et al., 2024, arXiv:2401.04088).

    Each expert runs only on the tokens routed to it: find the tokens that chose it, run the expert once on
    that gathered batch, add its weighted output back into their rows. Compute scales with k/E, not with E.
    """

    def __init__(self, config: ModelConfig, dtype=None):
        super().__init__()
        c = config
        self.gate = Router(c.hidden_size, c.num_local_experts, c.num_experts_per_tok, dtype=dtype)
        self.experts = nn.ModuleList(Expert(c.hidden_size, c.intermediate_size, dtype=dtype)
                                     for _ in range(c.num_local_experts))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RouterOutput]:
        # [task 3.3]
        B, T, C = x.shape
        tokens = x.reshape(B * T, C)
        route = self.gate(tokens)
        weights = route.weights.to(x.dtype)
        out = torch.zeros_like(tokens)
        for e, expert in enumerate(self.experts):
            token_index, slot = torch.where(route.experts == e)   # which tokens chose e, in which of their k slots
            if token_index.numel():
                y = expert(tokens[token_index])
                out.index_add_(0, token_index, y * weights[token_index, slot, None])
        return out.view(B, T, C), route
        # [/task 3.3]


class MLP(nn.Module):
    """The dense SwiGLU MLP of Mistral checkpoints (gate_proj/up_proj/down_proj = an expert's w1/w3/w2)."""

    def __init__(self, config: ModelConfig, dtype=None):
        super().__init__()
        c = config
        self.gate_proj = Linear(c.hidden_size, c.intermediate_size, dtype=dtype)
        self.up_proj = Linear(c.hidden_size, c.intermediate_size, dtype=dtype)
        self.down_proj = Linear(c.intermediate_size, c.hidden_size, dtype=dtype)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x)), None


class DecoderLayer(nn.Module):
    """h = x + attn(norm1(x)); out = h + ffn(norm2(h)) (pre-norm residual block).

    The feed-forward block is the family's (minimoe/families): Mixtral's SparseMoeBlock as `block_sparse_moe`,
    Mistral's MLP as `mlp`, Qwen2-MoE's shared-expert block (or a dense MLP) as `mlp`.
    """

    def __init__(self, config: ModelConfig, layer_index: int, dtype=None):
        super().__init__()
        from minimoe.families import family_of   # the families are built from this file's blocks

        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype=dtype)
        self.self_attn = Attention(config, layer_index, dtype=dtype)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype=dtype)
        name, ffn = family_of(config.model_type).feed_forward(config, layer_index, dtype)
        self.add_module(name, ffn)

    def forward(self, x, cos, sin, mask, cache):
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        ffn = self.block_sparse_moe if hasattr(self, "block_sparse_moe") else self.mlp
        out, route = ffn(self.post_attention_layernorm(h))
        return h + out, route


class Embedding(nn.Module):
    """Token id -> row of the embedding table, returned in the activations' dtype.

    The table may stay in the dtype it was stored in (the loader keeps a fp16 table as it is when the model runs
    in bf16 or fp32): converting the few rows looked up gives exactly what converting the whole table would,
    without a second 262 MB copy of Confinus-2x7B's table.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype=None):
        super().__init__()
        self.out_dtype = dtype or torch.get_default_dtype()
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim, dtype=dtype), requires_grad=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.weight).to(self.out_dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, {self.weight.shape[1]}, stored={str(self.weight.dtype).replace('torch.', '')}"


class Backbone(nn.Module):
    """`model.*` in the checkpoint: embeddings, the layers, the final norm."""

    def __init__(self, config: ModelConfig, dtype=None):
        super().__init__()
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size, dtype=dtype)
        self.layers = nn.ModuleList(DecoderLayer(config, i, dtype=dtype) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype=dtype)


class Transformer(nn.Module):
    """The whole model: token ids -> logits over the vocabulary."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype | None = None):
        super().__init__()
        self.config = config
        self.model = Backbone(config, dtype=dtype)
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, dtype=dtype)
        self.engine = "reference"  # which engine runs this model: minimoe.engines.use(model, name) changes it

    @property
    def dtype(self) -> torch.dtype:
        """The activations' dtype (some weights may be stored in another: see minimoe.loading)."""
        return self.model.embed_tokens.out_dtype

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    def new_cache(self) -> KVCache:
        return KVCache(self.config.num_hidden_layers)

    def extra_repr(self) -> str:
        return f"engine={self.engine}"

    def forward(self, input_ids: torch.Tensor, *, cache: KVCache | StaticKVCache | None = None,
                attention_mask: torch.Tensor | None = None, output_router_logits: bool = False,
                last_token_only: bool = False):
        """input_ids (B, T) -> logits (B, T, vocab), or (B, 1, vocab) with last_token_only.

        cache: a KVCache to read from and append to (model.new_cache() for a fresh one), or a StaticKVCache
            for one-token decode steps of fixed shape (minimoe/cache.py).
        attention_mask: (B, T), 1 for real tokens and 0 for padding, for the new tokens only. Pad on the
            left, so every row's last token is real; padded positions never influence real ones.
        output_router_logits: also return a list (one per MoE layer) of RouterOutput.
        No gradients are needed to run it: wrap calls in torch.inference_mode() (minimoe.generate does).
        """
        real = self._check_inputs(input_ids, cache, attention_mask)            # (B, T) True = a real token
        if cache is None:
            positions = (real.long().cumsum(-1) - 1).clamp(min=0)               # count real tokens only
            q_slots, key_real = torch.arange(real.shape[1], device=real.device), real
        else:
            positions, q_slots, key_real = cache.begin(real)
        mask = self._attention_mask(q_slots, key_real)                           # (B, T, L)

        x = self.model.embed_tokens(input_ids)                                   # (B, T, C)
        cos, sin = self.rotary(positions, x.dtype)
        routes = []
        for layer in self.model.layers:
            x, route = layer(x, cos, sin, mask, cache)
            if route is not None:
                routes.append(route)
        if cache is not None:
            cache.commit()
        if last_token_only:
            x = x[:, -1:]
        logits = self.lm_head(self.model.norm(x))
        return (logits, routes) if output_router_logits else logits

    def _check_inputs(self, input_ids, cache, attention_mask) -> torch.Tensor:
        """One clear error for bad input; returns the real-token mask (B, T) bool."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, tokens), found shape {tuple(input_ids.shape)}")
        B, T = input_ids.shape
        c = self.config
        if cache is not None:
            cache.room_for(T, c.max_position_embeddings)
        elif T > c.max_position_embeddings:
            raise ValueError(f"{T} tokens exceed the model's context of {c.max_position_embeddings} "
                             f"(max_position_embeddings)")
        # Checking ids reads them back to the host: free on the CPU, a device sync on a GPU. So a GPU checks
        # prompts (T > 1) but not single decode steps, whose ids the model itself just produced; nor does a
        # compiled step (a read-back would split the compiled graph), whose caller checks.
        check_ids = (input_ids.device.type == "cpu" or T > 1) and not torch.compiler.is_compiling()
        if check_ids and input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= c.vocab_size):
            raise ValueError(f"token ids must be in 0..{c.vocab_size - 1}, found "
                             f"{int(input_ids.min())}..{int(input_ids.max())}")
        if attention_mask is None:
            return torch.ones(B, T, dtype=torch.bool, device=input_ids.device)
        if tuple(attention_mask.shape) != (B, T):
            raise ValueError(f"attention_mask must have shape {(B, T)} like input_ids, "
                             f"found {tuple(attention_mask.shape)}")
        return attention_mask.to(device=input_ids.device, dtype=torch.bool)

    def _attention_mask(self, q_slots: torch.Tensor, key_real: torch.Tensor) -> torch.Tensor:
        """(B, T, L) bool: query t may see key j iff j is real, j <= t in time, and inside the sliding window.

        q_slots (T,): the cache slots of the new tokens, as a tensor, so a CUDA graph can replay the rule with a
        slot the StaticKVCache advances itself. key_real (B, L): which cached slots hold real tokens.
        A padding query sees at least itself, so its softmax row is never all -inf (no NaN anywhere).
        """
        # [task 2.2]
        L = key_real.shape[1]
        q_index = q_slots[:, None]                                                    # (T, 1) cache slots
        k_index = torch.arange(L, device=key_real.device)[None, :]                    # (1, L)
        allowed = k_index <= q_index
        if self.config.sliding_window is not None:
            allowed = allowed & (q_index - k_index < self.config.sliding_window)
        mask = allowed[None] & key_real[:, None, :]
        return mask | (k_index == q_index)[None]
        # [/task 2.2]

