"""minimoe.ops.decode_layer (csrc/cpu/decode_layer.cpp): a decoder layer's decode step in one call.

Its spec is the model's PyTorch code (`DecoderLayer.forward` and everything it calls), and the op calls the very
same torch and minimoe ops from C++, so the contract is equality, bit for bit: the logits, the routing decisions
and the keys and values written to the cache, over several decode steps of a left-padded batch, for dense and
sparse routing (top-E of E, top-k of E), a dense Mistral MLP, a sliding window, AWQ int4 and plain linear layers,
and fp32/bf16/fp16 activations.
The reference is the same model with the op switched off (`ops.has_fused_layer` says no), which runs the Python.
NaN never passes: torch.equal is False for NaN, and the logits are checked finite.
"""

import contextlib
import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import minimoe
from minimoe import engines, ops
from minimoe.linear import AWQLinear, Linear
from minimoe.cache import KVCache
from minimoe.testing import make_tiny_checkpoint
from tests.conftest import left_padded

needs_kernel = pytest.mark.skipif(not ops.has_fused_layer("cpu"),
                                  reason="the compiled CPU extension (decode_layer) is not built")

CONFIGS = {  # name: (AWQ int4 linears or plain fp16 ones in the checkpoint, the config's settings)
    "top-2 of 2 (dense routing)": (True, dict()),
    "top-2 of 4 (sparse routing)": (True, dict(num_local_experts=4, num_experts_per_tok=2)),
    "top-1 of 3, sliding window 5": (True, dict(num_local_experts=3, num_experts_per_tok=1, sliding_window=5)),
    "dense Mistral MLP": (True, dict(model_type="mistral")),
    "plain weights, top-2 of 4": (False, dict(num_local_experts=4, num_experts_per_tok=2)),
    "plain weights, dense Mistral MLP": (False, dict(model_type="mistral")),
}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
_models = {}


def tiny_model(config: str, dtype: torch.dtype, tmp_path_factory):
    """A tiny checkpoint of the given config, loaded once per (config, dtype)."""
    if (config, dtype) not in _models:
        quantized, settings = CONFIGS[config]
        path = make_tiny_checkpoint(tmp_path_factory.mktemp("decode_layer"), quantized=quantized, seed=3, **settings)
        _models[config, dtype] = minimoe.load_model(path, dtype=dtype)
    return _models[config, dtype]


@contextlib.contextmanager
def layer_op(enabled: bool):
    """Within the block the model uses ops.decode_layer where it applies (enabled) or never (the Python)."""
    original = ops.has_fused_layer
    if not enabled:
        ops.has_fused_layer = lambda device_type: False
    try:
        yield
    finally:
        ops.has_fused_layer = original


def decode(model, prompts, steps: int, fused: bool):
    """Prefill a left-padded batch, then `steps` single-token steps: [(logits, routes, keys, values)] per step.
    Fused, every decode step of every layer must have gone through ops.decode_layer; else none."""
    calls = []
    original = ops.decode_layer

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    ops.decode_layer = counted
    try:
        out = _decode(model, prompts, steps, fused)
    finally:
        ops.decode_layer = original
    single_token_forwards = steps + (max(len(p) for p in prompts) == 1)  # a 1-token prompt is one too
    assert len(calls) == (single_token_forwards * model.config.num_hidden_layers if fused else 0)
    return out


def _decode(model, prompts, steps: int, fused: bool):
    with layer_op(fused):
        ids, mask = left_padded(prompts)
        cache = model.new_cache()
        logits = model(ids, attention_mask=mask, cache=cache, last_token_only=True)
        out = []
        for step in range(steps):
            token = (logits[:, -1].argmax(-1, keepdim=True) + 7 * step) % model.config.vocab_size
            logits, routes = model(token, cache=cache, output_router_logits=True)
            out.append((logits, routes, [k[:, :, :cache.length].clone() for k in cache.keys],
                        [v[:, :, :cache.length].clone() for v in cache.values]))
        return out


@needs_kernel
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("config", list(CONFIGS))
@given(prompts=st.lists(st.lists(st.integers(0, 255), min_size=1, max_size=9), min_size=1, max_size=3),
       steps=st.integers(1, 7))
def test_decode_steps_equal_the_pytorch_code_bit_for_bit(config, dtype, prompts, steps, tmp_path_factory):
    model = tiny_model(config, dtype, tmp_path_factory)
    fused = decode(model, prompts, steps, True)
    plain = decode(model, prompts, steps, False)
    for (logits, routes, keys, values), (logits0, routes0, keys0, values0) in zip(fused, plain):
        assert torch.isfinite(logits).all()
        assert torch.equal(logits, logits0)
        if "Mistral" in config:
            assert routes == [] and routes0 == []
        assert len(routes) == len(routes0)
        for route, route0 in zip(routes, routes0):
            assert torch.equal(route.logits, route0.logits)
            assert torch.equal(route.experts, route0.experts)
            assert torch.equal(route.weights, route0.weights)
        for mine, theirs in zip(keys + values, keys0 + values0):
            assert torch.equal(mine, theirs)


@needs_kernel
def test_used_for_decode_steps_only_and_where_every_linear_has_one_form(tmp_path_factory, monkeypatch):
    calls = []
    original = ops.decode_layer
    monkeypatch.setattr(ops, "decode_layer", lambda *a, **k: calls.append(a[0].shape) or original(*a, **k))
    model = tiny_model("top-2 of 2 (dense routing)", torch.float32, tmp_path_factory)
    cache = model.new_cache()
    model(torch.tensor([[1, 2, 3]]), cache=cache)
    assert calls == []                                        # a prompt of several tokens: the PyTorch code
    model(torch.tensor([[4]]), cache=cache)
    assert calls == [(1, 1, model.config.hidden_size)] * model.config.num_hidden_layers
    model(torch.tensor([[4]]))                                # no cache: the PyTorch code
    engines.use(model, "reference")                          # the reference engine: the PyTorch code
    try:
        model(torch.tensor([[5]]), cache=cache)
    finally:
        engines.use(model, "native")
    assert len(calls) == model.config.num_hidden_layers

    calls.clear()
    plain = tiny_model("plain weights, top-2 of 4", torch.float32, tmp_path_factory)
    cache = plain.new_cache()
    plain(torch.tensor([[1, 2]]), cache=cache)
    plain(torch.tensor([[3]]), cache=cache)
    assert len(calls) == plain.config.num_hidden_layers      # plain linears in x's dtype: the op too

    # One layer mixing an AWQ projection with plain ones: that layer runs the PyTorch code, the others the op.
    path = make_tiny_checkpoint(tmp_path_factory.mktemp("mixed"), quantized=True, seed=2)
    mixed = minimoe.load_model(path, dtype=torch.float32)
    attn = mixed.model.layers[0].self_attn
    plain_q = Linear(attn.q_proj.in_features, attn.q_proj.out_features, dtype=torch.float32)
    plain_q.weight.copy_(attn.q_proj.dequantized_weight())
    attn.q_proj = plain_q
    calls.clear()
    cache = mixed.new_cache()
    mixed(torch.tensor([[1, 2]]), cache=cache)
    mixed(torch.tensor([[3]]), cache=cache)
    assert len(calls) == mixed.config.num_hidden_layers - 1


@needs_kernel
def test_a_module_swapped_in_runs_its_own_forward(tmp_path_factory):
    # A router that always picks expert 0 with all the weight, in layer 1 only: that layer must run it (the op
    # mirrors the original Router only), so the result differs from the unmodified model's in the decode steps.
    from minimoe.model import Router, RouterOutput

    class Expert0Router(Router):
        def forward(self, x):
            experts = torch.zeros(x.shape[0], self.top_k, dtype=torch.long)
            experts[:, 1:] = 1
            weights = torch.zeros(x.shape[0], self.top_k)
            weights[:, 0] = 1
            return RouterOutput(self.weight.new_zeros(x.shape[0], self.weight.shape[0]), experts, weights)

    path = make_tiny_checkpoint(tmp_path_factory.mktemp("swap"), quantized=True, seed=4)
    model = minimoe.load_model(path, dtype=torch.float32)
    original = _decode(model, [[7, 8, 9]], 2, True)
    gate = model.model.layers[1].block_sparse_moe.gate
    swapped = Expert0Router(model.config.hidden_size, model.config.num_local_experts, gate.top_k)
    swapped.weight = gate.weight
    model.model.layers[1].block_sparse_moe.gate = swapped
    x = torch.zeros(1, 1, model.config.hidden_size)
    assert model.model.layers[0]._decode_weights(x) is not None
    assert model.model.layers[1]._decode_weights(x) is None
    fused = _decode(model, [[7, 8, 9]], 2, True)
    plain = _decode(model, [[7, 8, 9]], 2, False)
    for (logits, routes, *_), (logits0, routes0, *_), (logits1, *_) in zip(fused, plain, original):
        assert torch.equal(logits, logits0)
        assert torch.equal(routes[1].weights, routes0[1].weights) and (routes[1].weights[:, 0] == 1).all()
        assert not torch.equal(logits, logits1)


@needs_kernel
def test_norm_weights_in_another_dtype_run_the_pytorch_code(tmp_path_factory):
    model = tiny_model("top-2 of 2 (dense routing)", torch.float32, tmp_path_factory)
    layer = model.model.layers[0]
    x = torch.zeros(1, 1, model.config.hidden_size)
    assert layer._decode_weights(x) is not None
    assert layer._decode_weights(x.to(torch.bfloat16)) is None   # x not in the norms' dtype
    original = layer.post_attention_layernorm.eps
    layer.post_attention_layernorm.eps = original * 2
    try:
        assert layer._decode_weights(x) is None                  # the op takes one eps for both norms
    finally:
        layer.post_attention_layernorm.eps = original


@needs_kernel
def test_a_layer_with_a_bias_runs_the_pytorch_code(tmp_path_factory):
    path = make_tiny_checkpoint(tmp_path_factory.mktemp("bias"), quantized=True, seed=5)
    model = minimoe.load_model(path, dtype=torch.float32)
    q_proj = model.model.layers[1].self_attn.q_proj
    q_proj.bias = torch.linspace(-1, 1, q_proj.out_features)
    x = torch.zeros(1, 1, model.config.hidden_size)
    assert model.model.layers[0]._decode_weights(x) is not None
    assert model.model.layers[1]._decode_weights(x) is None
    fused = _decode(model, [[3, 4, 5]], 3, True)   # layer 0 through the op, layer 1 through the Python
    plain = _decode(model, [[3, 4, 5]], 3, False)
    for (logits, *_), (logits0, *_) in zip(fused, plain):
        assert torch.equal(logits, logits0)


def layer_arguments(model, layer_index: int = 0, length: int = 4):
    """Valid arguments of ops.decode_layer for one step of `model`'s layer, after `length - 1` cached tokens."""
    c = model.config
    layer = model.model.layers[layer_index]
    x = torch.randn(1, 1, c.hidden_size).to(model.dtype)
    cache = KVCache(c.num_hidden_layers)
    cache.length = length - 1
    keys, values, slot = cache.reserve(layer_index, x.new_empty(1, c.num_key_value_heads, 1, c.head_dim))
    keys.zero_()
    values.zero_()
    cos, sin = model.rotary(torch.tensor([[slot]]), x.dtype)
    args = dict(x=x, cos=cos, sin=sin, mask=torch.ones(1, 1, slot + 1, dtype=torch.bool), key_cache=keys,
                value_cache=values, slot=slot, heads=c.num_attention_heads, kv_heads=c.num_key_value_heads,
                scale=c.head_dim ** -0.5, **layer._gather_decode_weights(x))  # fresh lists, not the kept ones
    return args


@needs_kernel
@pytest.mark.parametrize("change, message", [
    (lambda a: a.update(x=a["x"][0]), "x must be [B, 1, C]"),
    (lambda a: a.update(x=a["x"].expand(1, 2, -1)), "x must be [B, 1, C]"),
    (lambda a: a.update(norms=a["norms"][:1]), "norms must be the 2 RMSNorm weights"),
    (lambda a: a.update(attention=a["attention"][:11]), "attention must be q, k, v, o, each (qweight, qzeros, scales) "
                                                        "with a group size (12 tensors, 4 group sizes), found 11"),
    (lambda a: a.update(attention_groups=a["attention_groups"][:3]), "4 group sizes"),
    (lambda a: a.update(ffn=a["ffn"][:-3]), "ffn must be w1, w3, w2 of each of the 2 experts, each (qweight, qzeros, "
                                            "scales) with a group size (18 tensors, 6 group sizes), found 15 tensors"),
    (lambda a: a.update(top_k=0), "top_k must be in 1..2, found 0"),
    (lambda a: a.update(top_k=3), "top_k must be in 1..2, found 3"),
    (lambda a: a.update(router=a["router"][:, :-1]), "the router weight must be [E, C]"),
    (lambda a: a.update(router=None), "ffn must be gate, up, down (no router), each (qweight, qzeros, scales) with a "
                                      "group size (9 tensors, 3 group sizes), found 18 tensors"),
    (lambda a: a.update(heads=3), "heads must be a positive multiple of kv_heads"),
    (lambda a: a.update(cos=a["cos"][:, 0]), "cos and sin must be [B, 1, D]"),
    (lambda a: a.update(mask=a["mask"][:, 0]), "mask must be [B, 1, slots seen]"),
    (lambda a: a.update(key_cache=a["key_cache"][0]), "key_cache must be [B, Hkv, slots, D]"),
    # what the ops it calls check, with their own messages
    (lambda a: a.update(x=a["x"].to(torch.float64)), "rms_norm"),
    (lambda a: a.update(mask=a["mask"][:, :, :-1]), "mask must be [B, slot + 1]"),
    (lambda a: a.update(attention=a["attention"][3:6] + a["attention"][3:]), "q_proj must map 64 inputs to 64 outputs"),
    (lambda a: a.update(attention=a["attention"][:9] + a["attention"][3:6]), "o_proj must map 64 inputs to 64 outputs"),
    (lambda a: a.update(ffn=a["ffn"][:6] + a["ffn"][:3] + a["ffn"][9:]), "expert 0 w2 must map 128 inputs to 64"),
    (lambda a: a.update(cos=a["cos"].expand(2, 1, -1)), "cos and sin must be [B, 1, D] = [1, 1, D]"),
    (lambda a: a.update(mask=a["mask"].expand(2, 1, -1)), "mask must be [B, 1, slots seen] = [1, 1, slots seen]"),
    (lambda a: a.update(key_cache=a["key_cache"][:, :1]), "key_cache must be [B, Hkv, slots, D] = [1, 2, slots, D]"),
    (lambda a: a.update(router=a["router"].to(torch.int32)), "the router weight must be a floating-point CPU tensor"),
    (lambda a: a.update(awq=False), "attention must be q, k, v, o, each one weight and no group size (4 tensors, "
                                    "0 group sizes), found 12 tensors and 4 group sizes"),
])
def test_checks_its_arguments(change, message, tmp_path_factory):
    model = tiny_model("top-2 of 2 (dense routing)", torch.float32, tmp_path_factory)
    args = layer_arguments(model)
    ops.decode_layer(**args)  # valid as built
    args = layer_arguments(model)
    change(args)
    with pytest.raises(RuntimeError, match=re.escape(message)):
        ops.decode_layer(**args)


@needs_kernel
@pytest.mark.parametrize("config", ["top-2 of 4 (sparse routing)", "dense Mistral MLP", "plain weights, top-2 of 4"])
def test_fake_implementation_gives_the_real_shapes_and_dtypes(config, tmp_path_factory):
    # What torch.compile traces with: the registered fake must describe what the kernel returns.
    from torch._subclasses.fake_tensor import FakeTensorMode

    model = tiny_model(config, torch.bfloat16, tmp_path_factory)
    args = layer_arguments(model)
    real = ops.decode_layer(**args)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = ops.decode_layer(**{k: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v
                                   for k, v in args.items()})
    assert len(fake) == len(real) == 4
    for f, r in zip(fake, real):
        assert (f is None) == (r is None)
        if r is not None:
            assert f.shape == r.shape and f.dtype == r.dtype


@needs_kernel
def test_what_a_layer_keeps_for_the_op_follows_every_change(tmp_path_factory):
    """_decode_weights is kept between steps (gathering it is ~30 us a layer); each change that makes the op
    inapplicable must still be seen at the very next step, after the kept answer was used."""
    path = make_tiny_checkpoint(tmp_path_factory.mktemp("kept"), quantized=True, seed=6)
    x = torch.zeros(1, 1, 64)

    def fresh():
        model = minimoe.load_model(path, dtype=torch.float32)
        _decode(model, [[3, 4, 5]], 2, True)              # the kept answers are in use
        layer = model.model.layers[1]
        assert layer._decode_weights(x) is layer._decode_weights(x)   # kept, not gathered again
        return model, layer

    model, layer = fresh()
    layer.self_attn.q_proj.bias = torch.linspace(-1, 1, layer.self_attn.q_proj.out_features)   # a buffer hook
    assert layer._decode_weights(x) is None
    model, layer = fresh()
    layer.self_attn.k_proj.kernel = False                  # a plain attribute: checked at every step
    assert layer._decode_weights(x) is None
    model, layer = fresh()
    layer.input_layernorm.eps *= 2                         # likewise
    assert layer._decode_weights(x) is None
    model, layer = fresh()
    layer.block_sparse_moe.gate.top_k = 1                  # read again at every step
    assert layer._decode_weights(x)["top_k"] == 1
    model, layer = fresh()
    layer.block_sparse_moe.experts[0].w1.__class__ = type("EditedAWQ", (AWQLinear,), {})   # no hook fires
    assert layer._decode_weights(x) is None
    model, layer = fresh()
    kept = layer._decode_weights(x)
    engines.use(model, "native")                           # an engine swaps classes without a hook: it says so
    assert layer._decode_weights(x) is not kept and layer._decode_weights(x) is not None
    assert layer._decode_weights(x.double()) is None       # another dtype: gathered again
