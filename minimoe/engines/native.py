"""The `native` engine's modules: subclasses of the reference modules whose forward takes a fast path.

Each one is swapped in by changing a module's class (`module.__class__ = NativeRMSNorm`), so `print(model)` shows
exactly which modules run native code, and each falls back to the reference forward (`super().forward`) wherever
its fast path does not apply: no kernel on that device, another dtype, another cache, or an edited reference
(minimoe/engines/mirror.py). What each fast path stands in for is listed in its `mirror`.

    NativeRMSNorm        ops.rms_norm: the three lines of RMSNorm.forward in one call (CPU)
    NativeAttention      a decode step's q/k/v in one kernel call (ops.awq_gemm_many), then RoPE, the cache
                         write and attention in one call (ops.decode_attention, CPU)
    NativeSparseMoeBlock the experts' products batched into two kernel calls; with top-E of E (every token uses
                         every expert) no gather/scatter at all
    NativeMLP            gate and up projections in one kernel call
    NativeDecoderLayer   a whole layer's decode step in one call of the extension (ops.decode_layer, CPU)
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from minimoe import ops
from minimoe.cache import KVCache
from minimoe.engines.mirror import Mirror
from minimoe.linear import AWQLinear, Linear, linear_many
from minimoe.model import (MLP, Attention, DecoderLayer, Expert, RMSNorm, Router, RouterOutput,
                           SparseMoeBlock)

_LINEAR = "minimoe.linear.AWQLinear.forward"  # linear_many stands in for the AWQ layers' own forward

# How many times a module, parameter or buffer has been assigned anywhere (torch's global registration hooks),
# plus each engine change: NativeDecoderLayer keeps what it gathered for ops.decode_layer until this moves.
_STRUCTURE = [0]


def structure_changed(*_) -> None:
    _STRUCTURE[0] += 1


for _register in (nn.modules.module.register_module_module_registration_hook,
                  nn.modules.module.register_module_parameter_registration_hook,
                  nn.modules.module.register_module_buffer_registration_hook):
    _register(structure_changed)


class NativeRMSNorm(RMSNorm):
    mirror = Mirror("minimoe.model.RMSNorm.forward")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self._parameters["weight"]
        if (weight.dtype == x.dtype and ops.has_fused_ops(x.device.type)
                and self.mirror.intact("NativeRMSNorm")):
            return ops.rms_norm(x, weight, self.eps)
        return super().forward(x)


class NativeAttention(Attention):
    mirror = Mirror("minimoe.model.Attention.forward", "minimoe.model.apply_rope", "minimoe.model.rotate_half",
                    "minimoe.model.grouped_attention", "minimoe.cache.KVCache.update", _LINEAR)

    def forward(self, x, cos, sin, mask, cache):
        B, T, _ = x.shape
        if not (T == 1 and type(cache) is KVCache and ops.has_fused_ops(x.device.type)
                and self.mirror.intact("NativeAttention")):
            return super().forward(x, cos, sin, mask, cache)
        # A decode step on the CPU: the ~30 small torch ops of the reference cost more than their arithmetic.
        H, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
        modules = self._modules
        q, k, v = linear_many(x, (modules["q_proj"], modules["k_proj"], modules["v_proj"]))
        keys, values, slot = cache.reserve(self.layer_index, k.view(B, Hkv, 1, D))
        out = ops.decode_attention(q.view(B, H, D), k.view(B, Hkv, D), v.view(B, Hkv, D), cos[:, 0], sin[:, 0],
                                   keys, values, slot, mask[:, 0], self.scale)
        return modules["o_proj"](out.view(B, 1, H * D))


def run_experts(experts: list[Expert], xs: list[torch.Tensor]) -> list[torch.Tensor]:
    """[expert(x) for expert, x in zip(experts, xs)], batching the kernel calls across experts: all w1 and w3
    in one linear_many call, then all w2 in another (a decode step with two experts: 2 calls instead of 6)."""
    gates_and_ups = linear_many([x for x in xs for _ in (0, 1)], [w for e in experts for w in (e.w1, e.w3)])
    hidden = [F.silu(gate, inplace=True).mul_(up) for gate, up in zip(gates_and_ups[0::2], gates_and_ups[1::2])]
    return linear_many(hidden, [e.w2 for e in experts])


class NativeSparseMoeBlock(SparseMoeBlock):
    mirror = Mirror("minimoe.model.SparseMoeBlock.forward", "minimoe.model.Expert.forward", _LINEAR)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RouterOutput]:
        experts = list(self._modules["experts"])
        if not (all(type(e) is Expert for e in experts) and self.mirror.intact("NativeSparseMoeBlock")):
            return super().forward(x)
        B, T, C = x.shape
        tokens = x.reshape(B * T, C)
        route = self._modules["gate"](tokens)
        if route.experts.shape[1] == len(experts):
            # top-E of E (Confinus-2x7B: top-2 of 2): every token uses every expert, so there is nothing to
            # group: weight each expert's output by its column of dense weights, summed in expert order, which
            # is exactly what the reference's index_add_ does from its zero start. No data-dependent shapes
            # either, so a CUDA graph can capture it.
            dense = torch.zeros_like(route.weights).scatter(1, route.experts, route.weights).to(x.dtype)
            ys = run_experts(experts, [tokens] * len(experts))
            out = ys[0] * dense[:, :1]
            for e in range(1, len(ys)):
                out += ys[e] * dense[:, e:e + 1]
            return out.view(B, T, C), route
        weights = route.weights.to(x.dtype)
        out = torch.zeros_like(tokens)
        chosen = []  # (expert, which tokens chose it, in which of their k slots)
        for e, expert in enumerate(experts):
            token_index, slot = torch.where(route.experts == e)
            if token_index.numel():
                chosen.append((expert, token_index, slot))
        ys = run_experts([expert for expert, _, _ in chosen], [tokens[token_index] for _, token_index, _ in chosen])
        for (_, token_index, slot), y in zip(chosen, ys):
            out.index_add_(0, token_index, y * weights[token_index, slot, None])
        return out.view(B, T, C), route


class NativeMLP(MLP):
    mirror = Mirror("minimoe.model.MLP.forward", _LINEAR)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        if not self.mirror.intact("NativeMLP"):
            return super().forward(x)
        modules = self._modules
        gate, up = linear_many(x, (modules["gate_proj"], modules["up_proj"]))
        return modules["down_proj"](F.silu(gate) * up), None


class NativeDecoderLayer(DecoderLayer):
    mirror = Mirror("minimoe.model.DecoderLayer.forward", "minimoe.model.RMSNorm.forward",
                    "minimoe.model.Attention.forward", "minimoe.model.apply_rope", "minimoe.model.rotate_half",
                    "minimoe.model.grouped_attention", "minimoe.model.Router.forward",
                    "minimoe.model.SparseMoeBlock.forward", "minimoe.model.Expert.forward",
                    "minimoe.model.MLP.forward", "minimoe.cache.KVCache.update", _LINEAR,
                    "minimoe.linear.Linear.forward")

    def forward(self, x, cos, sin, mask, cache):
        if x.shape[1] == 1 and type(cache) is KVCache:
            weights = self._decode_weights(x)
            if weights is not None and self.mirror.intact("NativeDecoderLayer"):
                # The reference's three lines, with everything they call, run as the very same torch and minimoe
                # ops from C++ (csrc/cpu/decode_layer.cpp): the same result bit for bit, without the interpreter.
                return self._decode_in_one_call(x, cos, sin, mask, cache, weights)
        return super().forward(x, cos, sin, mask, cache)

    def _decode_weights(self, x: torch.Tensor) -> dict | None:
        """What ops.decode_layer needs of this layer, or None where it does not apply: no kernel on x's device, a
        module that is not the class the op mirrors (or its native twin), a linear layer with a bias or with its
        kernel off, linear layers not all AWQ int4 nor all plain weights in x's dtype, or a norm whose weight is
        not in x's dtype, or norms with two different eps.

        Gathering it touches ~40 names per layer (~30 us, 5% of a decode step of the built-in model), so the
        answer is kept until something could change it: any module, parameter or buffer assigned anywhere
        (counted by torch's global registration hooks: `layer.self_attn.q_proj = ...`, `norm.weight = ...`,
        `linear.bias = ...`), an engine applied, or another dtype or device of x. What a plain attribute can
        change without a hook is checked again at every step: whether the op is there, each module's class (the
        linear layers' too), the int4 layers' `kernel` flags, the norms' eps and the router's top_k."""
        memo = self.__dict__.get("_decode_memo")
        if memo is not None and memo[0] == (_STRUCTURE[0], x.dtype, x.device) and ops.has_fused_layer(x.device.type):
            _, weights, linears, linear_class, norms, gate, mirrored = memo
            if (all(type(layer) is linear_class for layer in linears)
                    and (linear_class is Linear or all(layer.kernel for layer in linears))
                    and norms[0].eps == norms[1].eps
                    and all(type(m) is cls or type(m) is NATIVE.get(cls) for m, cls in mirrored)):
                weights["eps"] = norms[0].eps
                if gate is not None:
                    weights["top_k"] = gate.top_k
                return weights
        return self._gather_decode_weights(x)

    def _gather_decode_weights(self, x: torch.Tensor) -> dict | None:
        """_decode_weights, gathered afresh. It reads the `_modules`/`_parameters` dicts directly:
        `module.name` goes through nn.Module.__getattr__, ~1 us a name (49 us a layer that way, 17-27 us so)."""
        if not ops.has_fused_layer(x.device.type):
            return None
        modules = self._modules
        attn = modules["self_attn"]._modules
        attention = [attn["q_proj"], attn["k_proj"], attn["v_proj"], attn["o_proj"]]
        norms = [modules["input_layernorm"], modules["post_attention_layernorm"]]
        moe = modules.get("block_sparse_moe")
        if moe is not None and type(moe) is not SparseMoeBlock and type(moe) is not NativeSparseMoeBlock:
            return None  # e.g. minimoe/parallel's block, whose experts live on several ranks
        if moe is not None:
            ffn = [e._modules[name] for e in moe._modules["experts"] for name in ("w1", "w3", "w2")]
        elif type(modules["mlp"]) is not MLP and type(modules["mlp"]) is not NativeMLP:
            return None  # another family's block (Qwen2-MoE's shared-expert MoE): the op mirrors Mixtral's
        else:
            mlp = modules["mlp"]._modules
            ffn = [mlp["gate_proj"], mlp["up_proj"], mlp["down_proj"]]
        mirrored = ([(modules["self_attn"], Attention)] + [(norm, RMSNorm) for norm in norms]
                    + ([(moe, SparseMoeBlock), (moe._modules["gate"], Router)]
                       + [(e, Expert) for e in moe._modules["experts"]] if moe is not None
                       else [(modules["mlp"], MLP)]))
        if any(type(module) is not cls and type(module) is not NATIVE.get(cls) for module, cls in mirrored):
            return None
        linears = attention + ffn
        if all(type(layer) is AWQLinear and layer.kernel and layer._buffers["bias"] is None for layer in linears):
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
        gate = moe._modules["gate"] if moe is not None else None
        weights = {"norms": norm_weights, "attention": attention, "attention_groups": attention_groups,
                   "router": gate._parameters["weight"] if gate is not None else None,
                   "ffn": ffn, "ffn_groups": ffn_groups, "awq": awq,
                   "top_k": gate.top_k if gate is not None else 0, "eps": norms[0].eps}
        self.__dict__["_decode_memo"] = ((_STRUCTURE[0], x.dtype, x.device), weights, linears,
                                         AWQLinear if awq else Linear, norms, gate, mirrored)
        return weights

    def _decode_in_one_call(self, x, cos, sin, mask, cache, weights):
        attn = self._modules["self_attn"]
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


# reference class -> its native twin
NATIVE = {RMSNorm: NativeRMSNorm, Attention: NativeAttention, SparseMoeBlock: NativeSparseMoeBlock, MLP: NativeMLP,
          DecoderLayer: NativeDecoderLayer}


def all_mirrored_names() -> list[str]:
    return sorted({name for twin in NATIVE.values() for name in twin.mirror.names})
