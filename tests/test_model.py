"""The model against the reference implementation (transformers), and its own invariants.

Reference: transformers' MixtralForCausalLM / MistralForCausalLM, fp32, eager attention, saved with
save_pretrained and loaded back by minimoe. Nothing here compares minimoe with itself except where the
property is an identity (cache vs no cache, padded vs unpadded, AWQ vs its own dequantized weights).
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import minimoe
from minimoe import ops
from minimoe.linear import AWQLinear, Linear
from minimoe.testing import make_tiny_checkpoint

transformers = pytest.importorskip("transformers")


def randomise_(model: torch.nn.Module, seed: int) -> None:
    """HF's init (std 0.02) makes near-uniform logits and routers; use O(1) activations so a bug shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # norm weights
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif "gate.weight" in name or "embed" in name:  # routers decisive, embeddings O(1)
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * p.shape[-1] ** -0.5)


def hf_model(kind: str, seed: int, **cfg):
    torch.manual_seed(seed)
    if kind == "mixtral":
        config = transformers.MixtralConfig(**cfg)
        model = transformers.MixtralForCausalLM(config)
    else:
        config = transformers.MistralConfig(**cfg)
        model = transformers.MistralForCausalLM(config)
    config._attn_implementation = "eager"
    randomise_(model, seed)
    return model.eval()


def assert_logits_close(ours: torch.Tensor, ref: torch.Tensor, rel: float = 1e-4) -> None:
    assert torch.isfinite(ours).all() and torch.isfinite(ref).all()
    scale = ref.abs().max().item()
    diff = (ours.float() - ref.float()).abs().max().item()
    assert diff <= rel * max(scale, 1.0), f"max |diff| {diff:.3e} vs logit scale {scale:.3e}"


config_strategy = st.fixed_dictionaries({
    "heads_kv": st.sampled_from([(4, 4), (4, 2), (4, 1), (8, 2)]),
    "head_dim": st.sampled_from([8, 16]),
    "layers": st.integers(1, 3),
    "experts_topk": st.sampled_from([(2, 1), (2, 2), (3, 2), (4, 1), (8, 2)]),
    "theta": st.sampled_from([10000.0, 1e6, 500.0]),
    "window": st.sampled_from([None, None, 5]),
    "seed": st.integers(0, 2**16),
})


@settings(max_examples=8)
@given(spec=config_strategy)
def test_mixtral_logits_and_router_match_transformers(tmp_path_factory, spec):
    heads, kv = spec["heads_kv"]
    experts, top_k = spec["experts_topk"]
    hf = hf_model("mixtral", spec["seed"], vocab_size=96, hidden_size=heads * spec["head_dim"],
                  intermediate_size=40, num_hidden_layers=spec["layers"], num_attention_heads=heads,
                  num_key_value_heads=kv, num_local_experts=experts, num_experts_per_tok=top_k,
                  rope_theta=spec["theta"], sliding_window=spec["window"], max_position_embeddings=256)
    path = tmp_path_factory.mktemp("hf_mixtral")
    hf.save_pretrained(path)
    ours = minimoe.load_model(path, dtype=torch.float32)
    assert ours.config.rope_theta == spec["theta"]

    ids = torch.randint(0, 96, (2, 11), generator=torch.Generator().manual_seed(spec["seed"]))
    with torch.no_grad():
        ref = hf(ids, output_router_logits=True)
    logits, routes = ours(ids, output_router_logits=True)
    assert_logits_close(logits, ref.logits)
    assert len(routes) == len(ref.router_logits) == spec["layers"]
    for ours_route, ref_router in zip(routes, ref.router_logits):
        torch.testing.assert_close(ours_route.logits, ref_router.reshape(ours_route.logits.shape),
                                   rtol=1e-4, atol=1e-4)
        # The chosen experts are the top-k of the reference router's own logits.
        ref_top = torch.topk(ref_router.reshape(-1, experts), top_k, dim=-1).indices
        assert torch.equal(ours_route.experts.sort(-1).values, ref_top.sort(-1).values)
        assert torch.allclose(ours_route.weights.sum(-1), torch.ones(ids.numel()))


@settings(max_examples=4)
@given(spec=config_strategy)
def test_mistral_dense_logits_match_transformers(tmp_path_factory, spec):
    heads, kv = spec["heads_kv"]
    hf = hf_model("mistral", spec["seed"], vocab_size=80, hidden_size=heads * spec["head_dim"],
                  intermediate_size=40, num_hidden_layers=spec["layers"], num_attention_heads=heads,
                  num_key_value_heads=kv, rope_theta=spec["theta"], sliding_window=spec["window"],
                  max_position_embeddings=256, head_dim=spec["head_dim"])
    path = tmp_path_factory.mktemp("hf_mistral")
    hf.save_pretrained(path)
    ours = minimoe.load_model(path, dtype=torch.float32)
    ids = torch.randint(0, 80, (2, 9))
    with torch.no_grad():
        ref = hf(ids).logits
    assert_logits_close(ours(ids), ref)


@pytest.fixture(scope="module")
def awq_checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("awq"), quantized=True, seed=3, num_local_experts=4,
                                num_experts_per_tok=2)


def dequantized_copy(model):
    """The same model with every AWQLinear replaced by a plain fp32 Linear holding its dequantized weight
    (and its bias)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, AWQLinear):
            plain = Linear(module.in_features, module.out_features, bias=module.bias is not None, dtype=torch.float32)
            plain.weight.data = module.dequantized_weight(torch.float32)
            if module.bias is not None:
                plain.bias.data = module.bias.float()
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, plain)
    return model


@pytest.mark.parametrize("engine", ["reference", "native"])
def test_awq_model_equals_its_dequantized_fp32_twin(awq_checkpoint, engine):
    if engine == "native" and ops.awq_backend("cpu") != "cpu":
        pytest.skip("the C++ CPU kernel for awq_gemm is not built in this extension")
    quantized = minimoe.load_model(awq_checkpoint, dtype=torch.float32, engine=engine)
    twin = dequantized_copy(minimoe.load_model(awq_checkpoint, dtype=torch.float32, engine="reference"))
    awq_layers = [m for m in quantized.modules() if isinstance(m, AWQLinear)]
    assert awq_layers and all(m.kernel == (engine != "reference") for m in awq_layers)
    ids = torch.randint(0, 256, (3, 13))
    assert_logits_close(quantized(ids), twin(ids))


def test_awq_load_keeps_packed_int32_weights(awq_checkpoint):
    model = minimoe.load_model(awq_checkpoint)
    awq_modules = [m for m in model.modules() if isinstance(m, AWQLinear)]
    assert len(awq_modules) == 2 * (4 + 3 * 4)
    for m in awq_modules:
        assert m.qweight.dtype == torch.int32 and m.scales.dtype == torch.float16
    assert not any(isinstance(m, Linear) and m.out_features == 128 for m in model.modules()), \
        "no dequantized expert weights may exist"


def test_cache_token_by_token_equals_full_sequence(fp32_model):
    ids = torch.randint(0, 256, (2, 15))
    full = fp32_model(ids)
    cache = fp32_model.new_cache()
    # a prefill of 4 tokens, then one token at a time
    steps = [fp32_model(ids[:, :4], cache=cache)] + [fp32_model(ids[:, t:t + 1], cache=cache) for t in range(4, 15)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-5)
    assert cache.length == 15


def greedy(model, ids, steps, use_cache):
    out = ids
    cache = model.new_cache() if use_cache else None
    feed = ids
    for _ in range(steps):
        logits = model(feed if use_cache else out, cache=cache)
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        out = torch.cat((out, nxt), dim=1)
        feed = nxt
    return out


def test_greedy_continuation_same_with_and_without_cache(fp32_model):
    ids = torch.randint(0, 256, (1, 5))
    assert torch.equal(greedy(fp32_model, ids, 32, True), greedy(fp32_model, ids, 32, False))


def test_padded_batch_equals_unpadded_single_runs(fp32_model):
    prompts = [torch.randint(0, 256, (n,)) for n in (7, 3, 5)]
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, p in enumerate(prompts):  # left padding
        ids[row, width - len(p):] = p
        mask[row, width - len(p):] = 1
    cache = fp32_model.new_cache()
    batch_logits = fp32_model(ids, attention_mask=mask, cache=cache)
    nxt = batch_logits[:, -1].argmax(-1, keepdim=True)
    step = fp32_model(nxt, cache=cache)  # one decode step for the whole batch
    for row, p in enumerate(prompts):
        single_cache = fp32_model.new_cache()
        single = fp32_model(p[None], cache=single_cache)
        torch.testing.assert_close(batch_logits[row, width - len(p):], single[0], rtol=0, atol=1e-5)
        single_step = fp32_model(nxt[row:row + 1], cache=single_cache)
        torch.testing.assert_close(step[row], single_step[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 3e-2), (torch.bfloat16, 1e-1)])
def test_half_precision_close_to_fp32_and_finite(tmp_path_factory, dtype, tol):
    path = make_tiny_checkpoint(tmp_path_factory.mktemp("half"), quantized=True, seed=7)
    ids = torch.randint(0, 256, (2, 12))
    ref = minimoe.load_model(path, dtype=torch.float32)(ids)
    half = minimoe.load_model(path, dtype=dtype)(ids)
    assert half.dtype == dtype and torch.isfinite(half).all()
    err = (half.float() - ref).abs().max().item() / ref.abs().max().item()
    assert err < tol, f"{dtype}: relative error {err:.3e}"


@pytest.mark.cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 3e-2), (torch.bfloat16, 1e-1), (torch.float32, 1e-4)])
def test_model_on_the_gpu_close_to_fp32_on_the_cpu(tmp_path_factory, dtype, tol):
    # The whole model on the GPU (CUDA int4 kernels, cuBLAS attention) against the CPU fp32 model, itself
    # checked against transformers above; prefill and cached decode steps both.
    path = make_tiny_checkpoint(tmp_path_factory.mktemp("gpu"), quantized=True, seed=7)
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(3))
    ref = minimoe.load_model(path, dtype=torch.float32)(ids)
    model = minimoe.load_model(path, dtype=dtype, device="cuda")
    cache = model.new_cache()
    steps = [model(ids[:, :8].cuda(), cache=cache)] + [model(ids[:, t:t + 1].cuda(), cache=cache) for t in range(8, 12)]
    got = torch.cat(steps, dim=1).float().cpu()
    assert got.shape == ref.shape and torch.isfinite(got).all()
    err = (got - ref).abs().max().item() / ref.abs().max().item()
    assert err < tol, f"{dtype}: relative error {err:.3e}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_decode_steps_match_the_full_sequence(tmp_path_factory, dtype):
    # Under the default engine a half-precision decode step on the CPU runs the fused decode attention (fp32
    # inside, one rounding); the full sequence uses torch's half matmul. Same values up to summation order: the
    # logits agree to a few ulps of the dtype, relative to their scale.
    path = make_tiny_checkpoint(tmp_path_factory.mktemp("halfcache"), quantized=True, seed=9)
    model = minimoe.load_model(path, dtype=dtype)
    ids = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(2))
    full = model(ids)
    cache = model.new_cache()
    steps = [model(ids[:, :3], cache=cache)] + [model(ids[:, t:t + 1], cache=cache) for t in range(3, 10)]
    got = torch.cat(steps, dim=1)
    assert torch.isfinite(got).all()
    ulp = 2.0**-7 if dtype == torch.bfloat16 else 2.0**-10
    err = (got.float() - full.float()).abs().max().item() / full.float().abs().max().item()
    assert err < 8 * ulp, f"{dtype}: relative error {err:.3e}"


def test_too_long_prompt_and_bad_ids_are_clear_errors(fp32_model):
    limit = fp32_model.config.max_position_embeddings
    with pytest.raises(ValueError, match=f"exceed the model's context of {limit}"):
        fp32_model(torch.zeros(1, limit + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="token ids must be in 0..255"):
        fp32_model(torch.tensor([[3, 256]]))


def test_rope_inv_freq_matches_the_formula():
    from minimoe.model import RotaryEmbedding

    rope = RotaryEmbedding(8, 10000.0)
    expected = [10000.0 ** (-2 * j / 8) for j in range(4)]
    assert all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(rope.inv_freq.tolist(), expected))
