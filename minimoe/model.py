"""A Mixtral-style sparse Mixture-of-Experts transformer (and its dense Mistral sibling) in plain PyTorch.

Read top to bottom, in build order:
    RMSNorm -> RotaryEmbedding -> KVCache -> Attention -> Router -> Expert -> SparseMoeBlock (| MLP)
    -> DecoderLayer -> Transformer -> load_model

Module names are the checkpoint's tensor names (`self_attn.q_proj`, `block_sparse_moe.gate`,
`experts.{e}.w1` ...), so loading is one obvious mapping. The semantics follow the reference implementation
in transformers exactly (../shared/FACTS.md): fp32 RMSNorm statistics, split-half RoPE computed in fp32, an
fp32 softmax in attention and in the router, top-k experts with renormalised weights.

Shapes: B batch, T new tokens, L cached + new tokens, H query heads, Hkv key/value heads, D head_dim,
C hidden size (d_model), E experts, k experts per token.
"""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from minimoe import ops
from minimoe.config import DTYPES, ModelConfig
from minimoe.linear import AWQLinear, Linear, linear_many


class RMSNorm(nn.Module):
    """x / rms(x) * weight. Statistics in fp32 even for half inputs: a sum of 4096 squares overflows fp16."""

    def __init__(self, hidden_size: int, eps: float, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=dtype), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.dtype == x.dtype and ops.has_fused_ops(x.device.type):
            return ops.rms_norm(x, self.weight, self.eps)  # the three lines below in one call (CPU extension)
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)  # cast back *before* the weight, as the reference does


class RotaryEmbedding(nn.Module):
    """RoPE (Su et al., 2021, arXiv:2104.09864), split-half convention as in HF checkpoints.

    Pair (j, j + D/2) of each head is rotated by the angle position * theta^(-2j/D). Angles are computed in fp32
    (positions reach 32768: fp16 could not even represent them) and only cos/sin are cast to the activations'
    dtype.
    """

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        exponent = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
        self.register_buffer("inv_freq", 1.0 / (theta ** exponent), persistent=False)  # (D/2,)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        angles = positions.float()[..., None] * self.inv_freq.float()  # (B, T, D/2)
        angles = torch.cat((angles, angles), dim=-1)                    # (B, T, D): both halves of a pair
        return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, heads, T, D); cos/sin (B, T, D)."""
    cos, sin = cos[:, None], sin[:, None]  # broadcast over heads
    return x * cos + rotate_half(x) * sin


class KVCache:
    """Keys and values of every layer for the tokens seen so far, so each new token costs O(L), not O(L^2).

    Storage grows by doubling (no 32k-token preallocation for a 10-token prompt). It also remembers which
    cached positions are padding (`key_mask`) and how many real tokens each row has (`next_position`), so a
    batch of prompts of different lengths keeps decoding correctly.
    """

    def __init__(self, num_layers: int):
        self.keys: list[torch.Tensor | None] = [None] * num_layers    # (B, Hkv, capacity, D)
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.length = 0                                               # L before the current forward
        self.key_mask: torch.Tensor | None = None                     # (B, L) True = a real token
        self.next_position: torch.Tensor | None = None                # (B,) RoPE position of the next token

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this forward's k/v (B, Hkv, T, D) at positions length..length+T; return all L of them."""
        keys, values, start = self.reserve(layer, k)
        t = k.shape[2]
        keys[:, :, start:start + t] = k
        values[:, :, start:start + t] = v
        return keys[:, :, :start + t], values[:, :, :start + t]

    def reserve(self, layer: int, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Make room in `layer` for the T new tokens of k (B, Hkv, T, D): (keys, values, start), the whole
        buffers (B, Hkv, capacity, D) and the slot the first new token goes to. `update` then writes them; the
        CPU's fused decode attention (ops.decode_attention) writes them itself."""
        start, t = self.length, k.shape[2]
        buffer = self.keys[layer]
        if buffer is None or buffer.shape[2] < start + t:
            capacity = max(16, 2 * (start + t))
            grown_k = k.new_empty(k.shape[0], k.shape[1], capacity, k.shape[3])
            grown_v = k.new_empty(grown_k.shape)
            if buffer is not None:
                grown_k[:, :, :start] = buffer[:, :, :start]
                grown_v[:, :, :start] = self.values[layer][:, :, :start]
            self.keys[layer], self.values[layer] = grown_k, grown_v
        return self.keys[layer], self.values[layer], start


class StaticKVCache:
    """A KV cache of fixed capacity whose write position is a tensor: what one captured CUDA graph can replay.

    `KVCache` slices its buffers by a Python int that changes every step, so each step is a different program.
    Here every step has the same shapes: keys/values are (B, Hkv, capacity, D) and attention always reads all
    `capacity` slots, the mask hiding the ones not written yet. The slot the next token goes to (`slot`), the
    next RoPE position of each row (`next_position`) and which slots hold real tokens (`key_mask`) live on the
    device and are advanced by `Transformer.decode_step` itself, so a replay needs no host work at all.

    The buffers start at zero, not uninitialised: a masked slot gets probability exactly 0, and 0 * v must be 0,
    which it would not be for a NaN left in fresh memory.
    """

    def __init__(self, config: ModelConfig, batch: int, capacity: int, dtype: torch.dtype, device):
        if capacity < 1 or capacity > config.max_position_embeddings:
            raise ValueError(f"StaticKVCache: capacity must be in 1..{config.max_position_embeddings} "
                             f"(max_position_embeddings), found {capacity}")
        shape = (batch, config.num_key_value_heads, capacity, config.head_dim)
        layers = config.num_hidden_layers
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.capacity = capacity
        self.slot = torch.zeros(1, dtype=torch.long, device=device)        # where the next token's k/v go
        self.key_mask = torch.zeros(batch, capacity, dtype=torch.bool, device=device)   # True = a real token
        self.next_position = torch.zeros(batch, dtype=torch.long, device=device)

    def load(self, cache: KVCache) -> int:
        """Take over a prefilled `KVCache` (same batch): copy its keys, values, mask and positions in.

        Returns the number of slots now used (the prompt's length, padding included)."""
        n = cache.length
        if n >= self.capacity:
            raise ValueError(f"StaticKVCache: the prefilled cache holds {n} tokens, the capacity is {self.capacity}; "
                             f"no room left to decode")
        for mine, theirs in ((self.keys, cache.keys), (self.values, cache.values)):
            for layer, buffer in enumerate(theirs):
                mine[layer][:, :, :n].copy_(buffer[:, :, :n])
        self.key_mask.zero_()
        self.key_mask[:, :n] = cache.key_mask
        self.next_position.copy_(cache.next_position)
        self.slot.fill_(n)
        return n

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one step's k/v (B, Hkv, 1, D) at `slot`; return the whole buffers (B, Hkv, capacity, D)."""
        self.keys[layer].index_copy_(2, self.slot, k)
        self.values[layer].index_copy_(2, self.slot, v)
        return self.keys[layer], self.values[layer]


class Attention(nn.Module):
    """Grouped-query causal self-attention (Ainslie et al., 2023, arXiv:2305.13245), optional sliding window.

    H query heads share Hkv key/value heads in groups of H/Hkv: the KV cache is H/Hkv times smaller than in
    multi-head attention. Queries are viewed as (B, Hkv, H/Hkv, T, D) so each kv head broadcasts over its group
    (no repeated copies of K and V).
    """

    def __init__(self, config: ModelConfig, layer_index: int, dtype=None):
        super().__init__()
        c = config
        self.layer_index = layer_index
        self.num_heads, self.num_kv_heads, self.head_dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.scale = self.head_dim ** -0.5
        self.q_proj = Linear(c.hidden_size, self.num_heads * self.head_dim, dtype=dtype)
        self.k_proj = Linear(c.hidden_size, self.num_kv_heads * self.head_dim, dtype=dtype)
        self.v_proj = Linear(c.hidden_size, self.num_kv_heads * self.head_dim, dtype=dtype)
        self.o_proj = Linear(self.num_heads * self.head_dim, c.hidden_size, dtype=dtype)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor,
                cache: KVCache | None) -> torch.Tensor:
        B, T, _ = x.shape
        H, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
        q, k, v = linear_many(x, (self.q_proj, self.k_proj, self.v_proj))  # one kernel call for all three
        if T == 1 and isinstance(cache, KVCache) and ops.has_fused_ops(x.device.type):
            # A decode step on the CPU: everything from here to o_proj below, in one call of the extension
            # (csrc/cpu/decode_ops.cpp). The ~30 small torch ops it replaces cost more than their arithmetic.
            keys, values, slot = cache.reserve(self.layer_index, k.view(B, Hkv, 1, D))
            out = ops.decode_attention(q.view(B, H, D), k.view(B, Hkv, D), v.view(B, Hkv, D), cos[:, 0], sin[:, 0],
                                       keys, values, slot, mask[:, 0], self.scale)
            return self.o_proj(out.view(B, 1, H * D))
        q = q.view(B, T, H, D).transpose(1, 2)     # (B, H, T, D)
        k = k.view(B, T, Hkv, D).transpose(1, 2)   # (B, Hkv, T, D)
        v = v.view(B, T, Hkv, D).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_index, k, v)          # (B, Hkv, L, D)
        out = grouped_attention(q, k, v, mask, self.scale)       # (B, H, T, D)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, H * D))


def grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                      scale: float) -> torch.Tensor:
    """softmax(q k^T * scale, hidden keys at -inf) v for grouped-query heads, after RoPE and the cache update.

    q (B, H, T, D); k, v (B, Hkv, L, D), H a multiple of Hkv; mask (B, T, L) bool -> (B, H, T, D) in q's dtype.
    """
    B, H, T, D = q.shape
    Hkv, L = k.shape[1], k.shape[2]
    G = H // Hkv
    # Query heads grouped by their kv head: rows (g, t) of one (G*T, D) matrix per kv head. k and v are
    # used as they sit in the cache (a strided view): one batched matmul per kv head, no copy of the
    # cache, which would cost O(L) bytes per layer per decoded token.
    q = q.reshape(B, Hkv, G * T, D)
    # A decode step on the CPU in bf16/fp16 multiplies in fp32 and rounds once to the activations' dtype:
    # the same values as the half-precision matmul (fp32 accumulation, one rounding), but torch's bf16
    # batched matmul costs 50-250 us per call at these tiny shapes (measured), the fp32 route 30-50 us.
    matmul = _matmul_in_fp32 if T == 1 and q.device.type == "cpu" and q.dtype != torch.float32 else torch.matmul
    scores = matmul(q, k.transpose(-1, -2)) * scale                         # (B, Hkv, G*T, L)
    scores = scores.view(B, Hkv, G, T, L).masked_fill(~mask[:, None, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return matmul(probs.view(B, Hkv, G * T, L), v).view(B, H, T, D)          # (B, Hkv, G*T, D) as (B, H, T, D)


def _matmul_in_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """torch.matmul(a, b) for half-precision inputs, computed in fp32 and rounded once to a's dtype."""
    return torch.matmul(a.float(), b.float()).to(a.dtype)


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
        # The reference computes the logits in x's dtype (fp32 accumulation, one rounding). So do we, but through
        # an fp32 GEMM rounded once to x's dtype: the same numbers, and for a [1, 4096] x [4096, 2] product on the
        # CPU several times faster than a bf16 GEMM call (measured 16 vs 48 us per layer per decoded token).
        logits = F.linear(x.float(), self.weight.float()).to(x.dtype)   # (N, E)
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        weights, experts = torch.topk(probs, self.top_k, dim=-1)        # (N, k)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        return RouterOutput(logits, experts, weights)


class Expert(nn.Module):
    """One expert: a SwiGLU feed-forward network, w2(silu(w1 x) * w3 x) (Shazeer, 2020, arXiv:2002.05202)."""

    def __init__(self, hidden_size: int, intermediate_size: int, dtype=None):
        super().__init__()
        self.w1 = Linear(hidden_size, intermediate_size, dtype=dtype)  # gate projection
        self.w2 = Linear(intermediate_size, hidden_size, dtype=dtype)  # down projection
        self.w3 = Linear(hidden_size, intermediate_size, dtype=dtype)  # up projection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_experts([self], [x])[0]


def run_experts(experts: list[Expert], xs: list[torch.Tensor]) -> list[torch.Tensor]:
    """[expert(x) for expert, x in zip(experts, xs)], batching the kernel calls across experts: all w1 and w3
    in one linear_many call, then all w2 in another (a decode step with two experts: 2 calls instead of 6)."""
    gates_and_ups = linear_many([x for x in xs for _ in (0, 1)], [w for e in experts for w in (e.w1, e.w3)])
    hidden = [F.silu(gate, inplace=True).mul_(up) for gate, up in zip(gates_and_ups[0::2], gates_and_ups[1::2])]
    return linear_many(hidden, [e.w2 for e in experts])


class SparseMoeBlock(nn.Module):
    """Top-k of E experts per token (Shazeer et al., 2017; Mixtral: Jiang et al., 2024, arXiv:2401.04088).

    Each expert runs only on the tokens routed to it: group token indices by expert, run the expert once on
    that gathered batch, scatter-add its weighted output back. Compute scales with k/E, not with E.
    """

    def __init__(self, config: ModelConfig, dtype=None):
        super().__init__()
        c = config
        self.gate = Router(c.hidden_size, c.num_local_experts, c.num_experts_per_tok, dtype=dtype)
        self.experts = nn.ModuleList(Expert(c.hidden_size, c.intermediate_size, dtype=dtype)
                                     for _ in range(c.num_local_experts))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RouterOutput]:
        B, T, C = x.shape
        tokens = x.reshape(B * T, C)
        route = self.gate(tokens)
        if route.experts.shape[1] == len(self.experts):
            # top-E of E (Confinus-2x7B: top-2 of 2): every token uses every expert, so there is nothing to
            # group; skip the gather/scatter and weight each expert's output by its column of dense weights.
            # (Summed in expert order, exactly as the index_add_ below would from a zero start.)
            dense = torch.zeros_like(route.weights).scatter(1, route.experts, route.weights).to(x.dtype)
            ys = run_experts(list(self.experts), [tokens] * len(self.experts))
            out = ys[0] * dense[:, :1]
            for e in range(1, len(ys)):
                out += ys[e] * dense[:, e:e + 1]
            return out.view(B, T, C), route
        weights = route.weights.to(x.dtype)
        out = torch.zeros_like(tokens)
        chosen = []  # (expert, which tokens chose it, in which of their k slots)
        for e, expert in enumerate(self.experts):
            token_index, slot = torch.where(route.experts == e)
            if token_index.numel():
                chosen.append((expert, token_index, slot))
        ys = run_experts([expert for expert, _, _ in chosen], [tokens[token_index] for _, token_index, _ in chosen])
        for (_, token_index, slot), y in zip(chosen, ys):
            out.index_add_(0, token_index, y * weights[token_index, slot, None])
        return out.view(B, T, C), route


class MLP(nn.Module):
    """The dense SwiGLU MLP of Mistral checkpoints (gate_proj/up_proj/down_proj = an expert's w1/w3/w2)."""

    def __init__(self, config: ModelConfig, dtype=None):
        super().__init__()
        c = config
        self.gate_proj = Linear(c.hidden_size, c.intermediate_size, dtype=dtype)
        self.up_proj = Linear(c.hidden_size, c.intermediate_size, dtype=dtype)
        self.down_proj = Linear(c.intermediate_size, c.hidden_size, dtype=dtype)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        gate, up = linear_many(x, (self.gate_proj, self.up_proj))
        return self.down_proj(F.silu(gate) * up), None


class DecoderLayer(nn.Module):
    """h = x + attn(norm1(x)); out = h + moe(norm2(h)) (pre-norm residual block)."""

    def __init__(self, config: ModelConfig, layer_index: int, dtype=None):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype=dtype)
        self.self_attn = Attention(config, layer_index, dtype=dtype)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype=dtype)
        if config.is_moe:
            self.block_sparse_moe = SparseMoeBlock(config, dtype=dtype)
        else:
            self.mlp = MLP(config, dtype=dtype)

    def forward(self, x, cos, sin, mask, cache):
        if x.shape[1] == 1 and isinstance(cache, KVCache):
            weights = self._decode_weights(x)
            if weights is not None:
                # A decode step on the CPU: the three lines below, with everything they call, run as the very same
                # torch and minimoe ops from C++ (csrc/cpu/decode_layer.cpp), the same result bit for bit, without
                # the interpreter between them (measured: a mid-size AWQ token 10-15% sooner).
                return self._decode_in_one_call(x, cos, sin, mask, cache, weights)
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        ffn = self.block_sparse_moe if hasattr(self, "block_sparse_moe") else self.mlp
        out, route = ffn(self.post_attention_layernorm(h))
        return h + out, route

    def _decode_weights(self, x: torch.Tensor) -> dict | None:
        """What ops.decode_layer needs of this layer, or None where it does not apply: no kernel on x's device, a
        module that is not exactly the class the op mirrors (a subclass or a stand-in runs its own forward), a
        linear layer with a bias, linear layers not all AWQ int4 nor all plain weights in x's dtype, or a norm
        whose weight is not in x's dtype. (Editing these classes' Python in place is not seen: run the model
        under `ops.reference_only()` to be sure your code is what runs.)

        Gathered afresh at every step (so a module swapped in later is never missed), which is why it reads the
        `_modules`/`_parameters` dicts directly: `module.name` goes through nn.Module.__getattr__, ~1 us a name,
        and this touches ~40 names per layer (measured: 49 us a layer through the attributes, 17-27 us so)."""
        if not ops.has_fused_layer(x.device.type):
            return None
        modules = self._modules
        attn = modules["self_attn"]._modules
        attention = [attn["q_proj"], attn["k_proj"], attn["v_proj"], attn["o_proj"]]
        norms = [modules["input_layernorm"], modules["post_attention_layernorm"]]
        moe = modules.get("block_sparse_moe")
        if moe is not None:
            ffn = [e._modules[name] for e in moe._modules["experts"] for name in ("w1", "w3", "w2")]
        else:
            mlp = modules["mlp"]._modules
            ffn = [mlp["gate_proj"], mlp["up_proj"], mlp["down_proj"]]
        mirrored = ([(modules["self_attn"], Attention)] + [(norm, RMSNorm) for norm in norms]
                    + ([(moe, SparseMoeBlock), (moe._modules["gate"], Router)]
                       + [(e, Expert) for e in moe._modules["experts"]] if moe is not None
                       else [(modules["mlp"], MLP)]))
        if any(type(module) is not cls for module, cls in mirrored):
            return None
        linears = attention + ffn
        if all(type(layer) is AWQLinear and layer._buffers["bias"] is None for layer in linears):
            awq = True
        elif all(type(layer) is Linear and layer._parameters.get("bias") is None
                 and layer._parameters["weight"].dtype == x.dtype for layer in linears):
            awq = False
        else:
            return None
        norm_weights = [norm._parameters["weight"] for norm in norms]
        if any(w.dtype != x.dtype for w in norm_weights) or norms[0].eps != norms[1].eps:
            return None
        (attention, attention_groups), (ffn, ffn_groups) = _linear_tensors(attention, awq), _linear_tensors(ffn, awq)
        return {"norms": norm_weights, "attention": attention, "attention_groups": attention_groups,
                "router": moe._modules["gate"]._parameters["weight"] if moe is not None else None,
                "ffn": ffn, "ffn_groups": ffn_groups, "awq": awq,
                "top_k": moe._modules["gate"].top_k if moe is not None else 0, "eps": norms[0].eps}

    def _decode_in_one_call(self, x, cos, sin, mask, cache, weights):
        attn = self.self_attn
        new_key = x.new_empty(x.shape[0], attn.num_kv_heads, 1, attn.head_dim)  # its shape tells reserve the room
        keys, values, slot = cache.reserve(attn.layer_index, new_key)
        out, logits, experts, route_weights = ops.decode_layer(
            x, cos, sin, mask, keys, values, slot, heads=attn.num_heads, kv_heads=attn.num_kv_heads,
            scale=attn.scale, **weights)
        return out, (RouterOutput(logits, experts, route_weights) if logits is not None else None)


def _linear_tensors(layers, awq: bool) -> tuple[list, list]:
    """ops.decode_layer's form of these linear layers: their tensors, flattened, and their group sizes."""
    if awq:
        return [t for layer in layers for t in layer.awq_weight[:3]], [layer.group_size for layer in layers]
    return [layer._parameters["weight"] for layer in layers], []


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

    @property
    def dtype(self) -> torch.dtype:
        """The activations' dtype (some weights may be stored in another: see load_model)."""
        return self.model.embed_tokens.out_dtype

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    def new_cache(self) -> KVCache:
        return KVCache(self.config.num_hidden_layers)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, *, cache: KVCache | None = None,
                attention_mask: torch.Tensor | None = None, output_router_logits: bool = False,
                last_token_only: bool = False):
        """input_ids (B, T) -> logits (B, T, vocab), or (B, 1, vocab) with last_token_only.

        cache: a KVCache to read from and append to (model.new_cache() for a fresh one).
        attention_mask: (B, T), 1 for real tokens and 0 for padding, for the new tokens only. Pad on the
            left, so every row's last token is real; padded positions never influence real ones.
        output_router_logits: also return a list (one per MoE layer) of RouterOutput.
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, tokens), found shape {tuple(input_ids.shape)}")
        B, T = input_ids.shape
        c = self.config
        past = cache.length if cache is not None else 0
        if past + T > c.max_position_embeddings:
            raise ValueError(f"{past + T} tokens exceed the model's context of {c.max_position_embeddings} "
                             f"(max_position_embeddings)")
        # Checking ids reads them back to the host: free on the CPU, a device sync on a GPU. So a GPU checks
        # prompts (T > 1) but not single decode steps, whose ids the model itself just produced.
        check_ids = input_ids.device.type == "cpu" or T > 1
        if check_ids and input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= c.vocab_size):
            raise ValueError(f"token ids must be in 0..{c.vocab_size - 1}, found "
                             f"{int(input_ids.min())}..{int(input_ids.max())}")
        device = input_ids.device
        real = (torch.ones(B, T, dtype=torch.bool, device=device) if attention_mask is None
                else attention_mask.to(device=device, dtype=torch.bool))
        if real.shape != (B, T):
            raise ValueError(f"attention_mask must have shape {(B, T)} like input_ids, found {tuple(real.shape)}")

        # Positions count real tokens only, so a left-padded row gets the same RoPE angles as unpadded.
        start = (cache.next_position if cache is not None and cache.next_position is not None
                 else torch.zeros(B, dtype=torch.long, device=device))
        positions = (start[:, None] + real.long().cumsum(-1) - 1).clamp(min=0)       # (B, T)
        key_real = real if cache is None or cache.key_mask is None else torch.cat((cache.key_mask, real), dim=1)
        mask = self._attention_mask(torch.arange(past, past + T, device=device), key_real)

        x, routes = self._layers(input_ids, positions, mask, cache)                  # (B, T, C)
        if cache is not None:
            cache.length = past + T
            cache.key_mask = key_real
            cache.next_position = start + real.long().sum(-1)
        if last_token_only:
            x = x[:, -1:]
        logits = self.lm_head(self.model.norm(x))
        return (logits, routes) if output_router_logits else logits

    @torch.inference_mode()
    def decode_step(self, input_ids: torch.Tensor, cache: StaticKVCache) -> torch.Tensor:
        """One decode step through a StaticKVCache: input_ids (B, 1) -> logits (B, 1, vocab).

        The same computation as `forward(input_ids, cache=...)` for one new token, written so that nothing
        depends on the step number on the host: no Python int positions, no shapes that grow, no reads back
        from the device. That makes it the body of a CUDA graph (minimoe.graphs.GraphDecoder). It checks
        neither the ids nor the room left: the caller does, on the host, before each step.
        """
        cache.key_mask.index_fill_(1, cache.slot, True)
        mask = self._attention_mask(cache.slot, cache.key_mask)                      # (B, 1, capacity)
        x, _ = self._layers(input_ids, cache.next_position[:, None], mask, cache)
        cache.slot += 1
        cache.next_position += 1
        return self.lm_head(self.model.norm(x))

    def _layers(self, input_ids, positions, mask, cache):
        """Embedding and every decoder layer: the part `forward` and `decode_step` share. -> (x, routes)."""
        x = self.model.embed_tokens(input_ids)
        cos, sin = self.rotary(positions, x.dtype)
        routes = []
        for layer in self.model.layers:
            x, route = layer(x, cos, sin, mask, cache)
            if route is not None:
                routes.append(route)
        return x, routes

    def _attention_mask(self, q_slots: torch.Tensor, key_real: torch.Tensor) -> torch.Tensor:
        """(B, T, L) bool: query t may see key j iff j is real, j <= t in time, and inside the sliding window.

        q_slots (T,): the cache slots of the new tokens, as a tensor, so a CUDA graph can replay the rule with a
        slot it advances itself. key_real (B, L): which cached slots hold real tokens.
        A padding query sees at least itself, so its softmax row is never all -inf (no NaN anywhere).
        """
        L = key_real.shape[1]
        q_index = q_slots[:, None]                                                    # (T, 1) cache slots
        k_index = torch.arange(L, device=key_real.device)[None, :]                    # (1, L)
        allowed = k_index <= q_index
        if self.config.sliding_window is not None:
            allowed = allowed & (q_index - k_index < self.config.sliding_window)
        mask = allowed[None] & key_real[:, None, :]
        return mask | (k_index == q_index)[None]


# ---------------------------------------------------------------------------------------------------------------
# Loading: build the module tree on the meta device (free), then put each checkpoint tensor in its place.
# ---------------------------------------------------------------------------------------------------------------

def load_model(path: str | os.PathLike, dtype: torch.dtype | str | None = None,
               device: str | torch.device = "cpu", progress=None) -> Transformer:
    """Load a checkpoint directory into a Transformer in eval mode.

    dtype: activations and plain weights (default: the checkpoint's own dtype); fp32, fp16 or bf16.
    AWQ linears keep their int4 tensors as stored (scales stay fp16), whatever `dtype` is.
    progress: optional callable(done, total) called as tensors are placed (the CLI draws a bar with it).
    """
    from minimoe.checkpoint import Checkpoint, linear_names, plain_tensor_specs

    checkpoint = Checkpoint(path)
    config = checkpoint.config
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
        tensors = checkpoint.linear(prefix)
        parent_name, _, attr = prefix.rpartition(".")
        parent = model.get_submodule(parent_name)
        if "qweight" in tensors:
            module = AWQLinear(*(tensors[t].to(device) for t in ("qweight", "qzeros", "scales")),
                               group_size=checkpoint.group_size(prefix),
                               bias=tensors["bias"].to(device=device, dtype=dtype) if "bias" in tensors else None,
                               name=prefix)
        else:
            module = Linear(k, n, bias="bias" in tensors, dtype=dtype, device="meta")
            module.weight = nn.Parameter(tensors["weight"].to(device=device, dtype=dtype), requires_grad=False)
            if "bias" in tensors:
                module.bias = nn.Parameter(tensors["bias"].to(device=device, dtype=dtype), requires_grad=False)
        setattr(parent, attr, module)
        done += 1
        if progress:
            progress(done, total)
    model.rotary.to(device)
    model.eval()
    leftover = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.is_meta]
    if leftover:
        raise RuntimeError(f"internal error: tensors left unloaded: {leftover[:5]}")
    return model


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
