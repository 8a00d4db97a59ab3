"""The second MoE family (Qwen2-MoE) against transformers, and the family registry's seams.

Reference: transformers' Qwen2MoeForCausalLM, fp32, eager attention, saved with save_pretrained (which writes
the per-expert tensor names released checkpoints use) and loaded back by minimoe.
"""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import minimoe
from minimoe.checkpoint import CheckpointError, linear_biases, linear_names, plain_tensor_specs
from minimoe.config import ConfigError, load_config
from minimoe.families import FAMILIES
from minimoe.families.qwen2_moe import SharedExpertMoeBlock
from minimoe.generate import SamplingConfig, generate_ids
from tests.test_model import assert_logits_close, dequantized_copy, randomise_

transformers = pytest.importorskip("transformers")

VOCAB = 96


def qwen_checkpoint(path, seed: int, **overrides):
    settings_ = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
                     shared_expert_intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, max_position_embeddings=128,
                     rope_theta=10000.0, tie_word_embeddings=False)
    settings_.update(overrides)
    torch.manual_seed(seed)
    config = transformers.Qwen2MoeConfig(**settings_)
    config._attn_implementation = "eager"
    hf = transformers.Qwen2MoeForCausalLM(config)
    randomise_(hf, seed)
    hf.eval()
    hf.save_pretrained(path)
    return hf


family_strategy = st.fixed_dictionaries({
    "heads_kv": st.sampled_from([(4, 4), (4, 2), (4, 1)]),
    "head_dim": st.sampled_from([8, 16]),
    "layers": st.integers(1, 3),
    "experts_topk": st.sampled_from([(4, 2), (8, 4), (3, 1), (6, 6)]),
    "norm_topk_prob": st.booleans(),
    "qkv_bias": st.booleans(),
    "sparse_step": st.sampled_from([1, 1, 2]),
    "dense_first": st.booleans(),
    "seed": st.integers(0, 2**16),
})


@settings(max_examples=8, deadline=None)
@given(spec=family_strategy)
def test_qwen2_moe_logits_and_router_match_transformers(tmp_path_factory, spec):
    heads, kv = spec["heads_kv"]
    experts, top_k = spec["experts_topk"]
    path = tmp_path_factory.mktemp("qwen2_moe")
    hf = qwen_checkpoint(path, spec["seed"], hidden_size=heads * spec["head_dim"], num_hidden_layers=spec["layers"],
                         num_attention_heads=heads, num_key_value_heads=kv, num_experts=experts,
                         num_experts_per_tok=top_k, norm_topk_prob=spec["norm_topk_prob"], qkv_bias=spec["qkv_bias"],
                         decoder_sparse_step=spec["sparse_step"], mlp_only_layers=[0] if spec["dense_first"] else [])
    sparse = [i not in ([0] if spec["dense_first"] else []) and (i + 1) % spec["sparse_step"] == 0
              for i in range(spec["layers"])]
    ids = torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(spec["seed"]))
    with torch.no_grad():  # (transformers' aux loss fails on a model without one sparse layer: not asked then)
        ref = hf(ids, output_router_logits=any(sparse))
    for engine in ("reference", "native"):
        ours = minimoe.load_model(path, dtype=torch.float32, engine=engine)
        assert [isinstance(layer.mlp, SharedExpertMoeBlock) for layer in ours.model.layers] == sparse
        logits, routes = ours(ids, output_router_logits=True)
        assert_logits_close(logits, ref.logits)
        ref_routers = [r for r in (ref.router_logits or ()) if r is not None] if any(sparse) else []
        assert len(routes) == len(ref_routers) == sum(sparse)
        for route, ref_router in zip(routes, ref_routers):
            torch.testing.assert_close(route.logits, ref_router.reshape(route.logits.shape), rtol=1e-4, atol=1e-4)
            probs = torch.softmax(ref_router.reshape(-1, experts).float(), -1)
            top = torch.topk(probs, top_k, dim=-1)
            assert torch.equal(route.experts.sort(-1).values, top.indices.sort(-1).values)
            # Not renormalised unless the config says so: the k largest softmax values, summing to <= 1.
            want = top.values / top.values.sum(-1, keepdim=True) if spec["norm_topk_prob"] else top.values
            torch.testing.assert_close(route.weights.sort(-1).values, want.sort(-1).values, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen_fixed")
    hf = qwen_checkpoint(path, seed=5, num_hidden_layers=3, mlp_only_layers=[1])
    return path, hf


def test_cached_greedy_generation_matches_transformers(qwen_dir):
    path, hf = qwen_dir
    prompt = torch.randint(0, VOCAB, (1, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf.generate(prompt, max_new_tokens=12, do_sample=False, min_new_tokens=12, pad_token_id=0)
    for engine in ("reference", "native"):
        model = minimoe.load_model(path, dtype=torch.float32, engine=engine)
        got = generate_ids(model, [prompt[0].tolist()], SamplingConfig(max_new_tokens=12, stop_on_eos=False))
        assert got.tokens[0] == want[0, 6:].tolist(), engine


def test_expected_tensors_come_from_the_module_tree(qwen_dir):
    path, _ = qwen_dir
    config = load_config(path)
    linears, plain = linear_names(config), plain_tensor_specs(config)
    assert "model.layers.0.mlp.experts.3.gate_proj" in linears and "model.layers.0.mlp.shared_expert.down_proj" in linears
    assert "model.layers.1.mlp.gate_proj" in linears and "model.layers.1.mlp.experts.0.gate_proj" not in linears
    # the router and the shared expert's gate are plain tensors: never quantized
    assert plain["model.layers.0.mlp.gate.weight"].shape == (4, 64)
    assert plain["model.layers.2.mlp.shared_expert_gate.weight"].shape == (1, 64)
    assert linear_biases(config) == {f"model.layers.{i}.self_attn.{p}_proj" for i in range(3) for p in "qkv"}
    from safetensors import safe_open
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        on_disk = set(f.keys())
    expected = set(plain) | {f"{p}.weight" for p in linears} | {f"{p}.bias" for p in linear_biases(config)}
    assert expected == on_disk


@pytest.mark.parametrize("drop", ["model.layers.0.mlp.shared_expert_gate.weight", "model.layers.2.self_attn.k_proj.bias",
                                  "model.layers.0.mlp.experts.2.up_proj.weight"])
def test_a_missing_tensor_of_the_family_is_named(qwen_dir, tmp_path, drop):
    from safetensors.torch import load_file, save_file

    path, _ = qwen_dir
    tensors = load_file(str(path / "model.safetensors"))
    del tensors[drop]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    with pytest.raises(CheckpointError, match=drop.replace(".", r"\.")):
        minimoe.load_model(tmp_path)


def test_awq_int4_qwen2_moe_equals_its_dequantized_twin(qwen_dir, tmp_path):
    from minimoe.quantize import quantize_checkpoint

    path, _ = qwen_dir
    quantize_checkpoint(str(path), str(tmp_path / "awq"), method="rtn", group_size=32)
    ids = torch.randint(0, VOCAB, (2, 9))
    twin = dequantized_copy(minimoe.load_model(tmp_path / "awq", dtype=torch.float32, engine="reference"))
    for engine in ("reference", "native"):
        quantized = minimoe.load_model(tmp_path / "awq", dtype=torch.float32, engine=engine)
        assert quantized.model.layers[0].self_attn.q_proj.bias is not None
        assert_logits_close(quantized(ids), twin(ids))
    with pytest.raises(ValueError, match="quantize it with --method rtn"):
        quantize_checkpoint(str(path), str(tmp_path / "awq2"), method="awq", group_size=32,
                            calibration=torch.zeros(1, 8, dtype=torch.long))


def edited_config(path, tmp_path, **changes):
    raw = json.loads((path / "config.json").read_text())
    raw.update(changes)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    return tmp_path


@pytest.mark.parametrize("changes,message", [
    ({"use_sliding_window": True}, "use_sliding_window is true"),
    ({"mlp_only_layers": [7]}, r"mlp_only_layers must name layers in 0\.\.2, found \[7\]"),
    ({"hidden_act": "gelu"}, "hidden_act must be 'silu'"),
    ({"norm_topk_prob": "false"}, "'norm_topk_prob' must be true or false"),
    ({"decoder_sparse_step": 0}, "'decoder_sparse_step' must be positive"),
    ({"num_experts": None}, "missing required key 'num_experts'"),
])
def test_bad_family_keys_are_one_clear_error(qwen_dir, tmp_path, changes, message):
    path, _ = qwen_dir
    with pytest.raises(ConfigError, match=message):
        load_config(edited_config(path, tmp_path, **changes))


def test_registry_names_every_family_in_the_unsupported_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "olmoe"}))
    with pytest.raises(ConfigError, match="unsupported model_type 'olmoe'.*mixtral, mistral, qwen2_moe"):
        load_config(tmp_path)
    assert set(FAMILIES) == {"mixtral", "mistral", "qwen2_moe"}
    for family in FAMILIES.values():
        assert hasattr(transformers, family.architecture), family   # the reference each is tested against


def test_expert_parallel_refuses_other_families_clearly(qwen_dir):
    from minimoe.checkpoint import Checkpoint
    from minimoe.parallel.experts import split_bytes

    path, _ = qwen_dir
    with pytest.raises(ValueError, match="mixtral family only, found model_type 'qwen2_moe'"):
        split_bytes(Checkpoint(path), 2)


def test_generate_and_route_from_the_command_line(tmp_path):
    """The CLI end to end on a Qwen2-MoE checkpoint with a real tokenizer (the built-in model's, 2048 pieces)."""
    import contextlib
    import io
    import os
    import shutil

    from minimoe.cli import main

    qwen_checkpoint(tmp_path, seed=2, vocab_size=2048, num_hidden_layers=2, bos_token_id=1, eos_token_id=2)
    shutil.copy(os.path.join(os.path.dirname(minimoe.__file__), "default_model", "tokenizer.model"), tmp_path)
    assert main(["generate", "My lord", "--model", str(tmp_path), "--max-new-tokens", "5"]) == 0
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["route", "Now is the winter of our discontent", "--model", str(tmp_path), "--json"]) == 0
    report = json.loads(buffer.getvalue())
    assert len(report["experts"]) == 2 and all(len(row[0]) == 2 for row in report["experts"])   # 2 layers, top-2
    weights = torch.tensor(report["weights"])
    sums = weights.sum(-1)                   # Qwen2-MoE does not renormalise the top-k weights
    assert (sums <= 1 + 1e-6).all() and (sums < 0.999).any()
