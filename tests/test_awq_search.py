"""AWQ's search (minimoe/quantize/awq_search.py): folding is exact, the search never loses to RTN on what it
minimises, alpha = 0 is RTN bit for bit, the written checkpoint is AutoAWQ's GEMM layout and computes the
fake-quantized model, and experts are calibrated on their routed tokens (or all of them, by the stated rule).

References are independent of the code under test: RTN is minimoe.awq.quantize/dequantize (the format spec,
itself tested against hand-packed vectors), the fp model is the reference model of the source checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings as hsettings, strategies as st

import minimoe
from minimoe import awq
from minimoe.checkpoint import Checkpoint, linear_names
from minimoe.model import RouterOutput
from minimoe.quantize import quantize_checkpoint
from minimoe.quantize import awq_search as A
from minimoe.testing import make_tiny_checkpoint

DEFAULT_MODEL = os.path.join(os.path.dirname(minimoe.__file__), "default_model")


@pytest.fixture(scope="module")
def fp16_dir(tmp_path_factory):
    # GQA (4 query heads, 2 kv heads) so that v -> o folding goes through the shared-scale path
    return make_tiny_checkpoint(tmp_path_factory.mktemp("awq") / "fp16", quantized=False, dtype="float16",
                                hidden_size=64, intermediate_size=128, num_local_experts=3, seed=5)


def load_fp32(path):
    return minimoe.load_model(path, dtype=torch.float32, engine="reference")


def windows(vocab, samples=4, seq_len=24, seed=0):
    ids = torch.randint(0, vocab, (samples * seq_len,), generator=torch.Generator().manual_seed(seed))
    return A.calibration_windows(ids, samples, seq_len)


@given(n=st.sampled_from([8, 16, 24]), groups=st.integers(1, 3), g=st.sampled_from([32, 64]),
       seed=st.integers(0, 2**16), spread=st.floats(1e-3, 10.0))
@hsettings(deadline=None)
def test_fake_quantize_is_the_formats_rtn_bit_for_bit(n, groups, g, seed, spread):
    w = torch.randn(n, groups * g, generator=torch.Generator().manual_seed(seed)) * spread
    q = awq.quantize(w, group_size=g)
    expected = awq.dequantize(q.qweight, q.qzeros, q.scales, g, torch.float32).t()
    assert torch.equal(A.fake_quantize(w, g, 4), expected)


def test_fewer_bits_mean_fewer_levels():
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(1))
    for bits in (2, 3, 4):
        q = A.fake_quantize(w, 32, bits).view(8, 2, 32)
        assert all(len(torch.unique(row)) <= 2**bits for row in q.reshape(16, 32))


@torch.no_grad()
def test_folding_any_scales_leaves_the_fp32_model_unchanged(fp16_dir):
    model = load_fp32(fp16_dir)
    ids = windows(model.config.vocab_size, 2, 16)
    before = model(ids)
    g = torch.Generator().manual_seed(7)
    for layer in model.model.layers:
        attn, moe = layer.self_attn, layer.block_sparse_moe
        C = model.config.hidden_size

        def rand(n):
            return torch.rand(n, generator=g) * 3 + 0.2
        A.fold_into_norm(layer.input_layernorm, [attn.q_proj, attn.k_proj, attn.v_proj], rand(C))
        share = A.SharedKV(attn.num_heads, attn.num_kv_heads, attn.head_dim)
        A.fold_into_linear(attn.v_proj, attn.o_proj, rand(attn.num_kv_heads * attn.head_dim), share)
        ins = [w for e in moe.experts for w in (e.w1, e.w3)]
        A.fold_into_norm(layer.post_attention_layernorm, ins + [moe.gate], rand(C))
        for e in moe.experts:
            A.fold_into_linear(e.w3, e.w2, rand(model.config.intermediate_size))
    after = model(ids)
    assert torch.isfinite(after).all()
    assert torch.allclose(after, before, atol=1e-4 * before.abs().max().item(), rtol=0)


@torch.no_grad()
def test_search_never_loses_to_rtn_and_alpha_zero_is_rtn(fp16_dir):
    model = load_fp32(fp16_dir)
    layer, G = model.model.layers[0], 32
    x = model.model.embed_tokens(windows(model.config.vocab_size))
    cos, sin = model.rotary(torch.arange(x.shape[1])[None].expand(x.shape[0], -1), x.dtype)
    mask = model._attention_mask(torch.arange(x.shape[1]), torch.ones(x.shape[:2], dtype=torch.bool))
    attn = layer.self_attn
    a = layer.input_layernorm(x)
    qkv = [attn.q_proj, attn.k_proj, attn.v_proj]
    reference = attn(a, cos, sin, mask, None)
    choice = A.search_scale(lambda: attn(a, cos, sin, mask, None), qkv, A.mean_abs(a), A.Settings(group_size=G))
    assert torch.equal(attn(a, cos, sin, mask, None), reference)           # the search put the weights back
    saved = [m.weight.clone() for m in qkv]
    for m in qkv:                                                          # RTN, by the format's own functions
        q = awq.quantize(m.weight, group_size=G)
        m.weight.copy_(awq.dequantize(q.qweight, q.qzeros, q.scales, G, torch.float32).t())
    rtn = (attn(a, cos, sin, mask, None) - reference).pow(2).mean().item()
    for m, w in zip(qkv, saved):
        m.weight.copy_(w)
    assert choice.errors[0] == pytest.approx(rtn, rel=1e-6)
    assert min(choice.errors) <= choice.errors[0] and choice.errors[choice_index(choice)] == min(choice.errors)
    assert len(choice.errors) == 20 and choice.alpha in A.Settings().alphas


def choice_index(choice):
    return A.Settings().alphas.index(choice.alpha)


def test_clip_search_never_raises_the_group_error():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(16, 64, generator=g)
    w[:, 5] *= 8                                          # an outlier weight column widens its groups
    x = torch.randn(200, 64, generator=g)
    s = A.Settings(group_size=32)
    m = A.search_clip(w, x, s)

    def group_error(weight):
        d = (A.fake_quantize(weight, 32) - w).view(16, 2, 32)
        return torch.einsum("tgk,ngk->ntg", x.view(200, 2, 32), d).pow(2).mean(1)
    clipped = torch.maximum(torch.minimum(w.view(16, 2, 32), m), -m).view(16, 64)
    assert (group_error(clipped) <= group_error(w) + 1e-12).all()
    assert (m <= w.view(16, 2, 32).abs().amax(-1, keepdim=True)).all()


def test_alpha_zero_without_clipping_writes_rtn_bit_for_bit(fp16_dir, tmp_path):
    dst = str(tmp_path / "awq")
    ids = windows(256)
    quantize_checkpoint(fp16_dir, dst, method="awq", group_size=32, calibration=ids,
                        settings=A.Settings(grid=1, clip=False))
    src, out = Checkpoint(fp16_dir), Checkpoint(dst)
    for prefix in linear_names(src.config):
        expected = awq.quantize(src.tensor(f"{prefix}.weight"), group_size=32)
        got = out.linear(prefix)
        assert torch.equal(got["qweight"], expected.qweight) and torch.equal(got["qzeros"], expected.qzeros)
        assert torch.equal(got["scales"], expected.scales)
    for name in src.tensors:                              # s = 1: norms and routers come back as they were
        if name.endswith("layernorm.weight") or name.endswith("gate.weight"):
            assert torch.equal(out.tensor(name), src.tensor(name)), name


def test_round_trip_writes_autoawq_gemm_and_computes_the_fake_quantized_model(fp16_dir, tmp_path):
    dst = str(tmp_path / "awq")
    ids = windows(256, samples=6)
    summary = quantize_checkpoint(fp16_dir, dst, method="awq", group_size=32, calibration=ids)
    with open(os.path.join(dst, "config.json")) as f:
        assert json.load(f)["quantization_config"] == {"quant_method": "awq", "bits": 4, "group_size": 32,
                                                       "zero_point": True, "version": "gemm",
                                                       "modules_to_not_convert": None}
    with open(os.path.join(dst, "quant_config.json")) as f:
        assert json.load(f) == {"zero_point": True, "q_group_size": 32, "w_bit": 4, "version": "GEMM"}
    out = Checkpoint(dst)                                 # minimoe's own checks of names, shapes and dtypes
    assert all(out.is_quantized(p) for p in linear_names(out.config))
    assert not any(n.startswith("model.layers.") and n.endswith("gate.qweight") for n in out.tensors)

    # the same search in memory: a model whose weights are the quantized values, norms and routers folded
    expected_model = load_fp32(fp16_dir)
    A.quantize_model(expected_model, ids, A.Settings(group_size=32))
    with torch.no_grad():                                 # ... and what was stored in fp16, rounded to fp16
        for name, p in expected_model.named_parameters():
            if not any(name.startswith(f"{q}.") for q in linear_names(expected_model.config)):
                p.copy_(p.half().float())
    loaded = load_fp32(dst)
    test_ids = windows(256, 2, 20, seed=9)
    with torch.no_grad():
        expected, got = expected_model(test_ids), loaded(test_ids)
    assert torch.isfinite(got).all()
    assert torch.allclose(got, expected, atol=1e-4 * expected.abs().max().item(), rtol=0)
    # and it is a better model of the fp16 one than RTN on its own calibration objective, layer by layer
    assert len(summary["layers"]) == 2
    for r in summary["layers"]:
        assert r["awq_error"] < r["rtn_error"]
        assert 0 <= r["routes_changed_awq"] <= 1 and sum(r["expert_tokens"]) == ids.numel() * 2


def test_expert_with_no_routed_tokens_is_calibrated_on_all_tokens(tmp_path):
    src = make_tiny_checkpoint(tmp_path / "top1", quantized=False, dtype="float16", hidden_size=64,
                               intermediate_size=64, num_local_experts=2, num_experts_per_tok=1, seed=2)
    model = load_fp32(src)

    def everything_to_expert_0(x):                        # a router that never picks expert 1
        n = x.shape[0]
        return RouterOutput(torch.zeros(n, 2, dtype=x.dtype), torch.zeros(n, 1, dtype=torch.long),
                            torch.ones(n, 1))
    for layer in model.model.layers:
        layer.block_sparse_moe.gate.forward = everything_to_expert_0
    ids = windows(256, 3, 16)
    idle = model.model.layers[0].block_sparse_moe.experts[1]
    before = idle.w2.weight.clone()
    summary = A.quantize_model(model, ids, A.Settings(group_size=32, min_expert_tokens=16))
    for r in summary["layers"]:
        assert r["expert_tokens"] == [48, 0] and r["fallback_experts"] == [1]
        assert r["routes_changed_awq"] == 0.0
    # the idle expert was still searched and rounded (on all tokens), not left in fp32
    assert not torch.equal(idle.w2.weight, before)
    w = idle.w2.weight
    assert all(len(torch.unique(row)) <= 16 for row in w.view(-1, 32))


def test_routed_counts_add_up_to_k_per_token(fp16_dir):
    model = load_fp32(fp16_dir)
    ids = windows(256, 2, 16)
    summary = A.quantize_model(model, ids, A.Settings(group_size=32, grid=3, clip=False))
    for r in summary["layers"]:
        assert sum(r["expert_tokens"]) == 32 * model.config.num_experts_per_tok


def test_dense_mistral_quantizes_too(tmp_path):
    src = make_tiny_checkpoint(tmp_path / "mistral", quantized=False, dtype="float16", model_type="mistral",
                               hidden_size=64, intermediate_size=128, seed=6)
    dst = str(tmp_path / "awq")
    summary = quantize_checkpoint(src, dst, method="awq", group_size=32, calibration=windows(256),
                                  settings=A.Settings(grid=4))
    assert all(r["routes_changed_awq"] is None for r in summary["layers"])
    assert torch.isfinite(load_fp32(dst)(windows(256, 1, 8))).all()


def test_bad_requests_say_what_was_expected(fp16_dir, tmp_path):
    with pytest.raises(ValueError, match="needs calibration tokens"):
        quantize_checkpoint(fp16_dir, str(tmp_path / "a"), method="awq", group_size=32)
    with pytest.raises(ValueError, match="rtn looks at the weights only"):
        quantize_checkpoint(fp16_dir, str(tmp_path / "b"), method="rtn", group_size=32, calibration=windows(256))
    with pytest.raises(ValueError, match="has 10 tokens, 2 samples of 8 need 16"):
        A.calibration_windows(list(range(10)), 2, 8)
    with pytest.raises(ValueError, match="stores 4-bit codes"):
        quantize_checkpoint(fp16_dir, str(tmp_path / "c"), method="awq", group_size=32, calibration=windows(256),
                            settings=A.Settings(bits=3))
    with pytest.raises(ValueError, match="exceed the model's context"):
        model = load_fp32(fp16_dir)
        A.quantize_model(model, torch.zeros(1, 600, dtype=torch.long))
    with pytest.raises(ValueError, match="fp32 model"):
        A.quantize_model(minimoe.load_model(fp16_dir, dtype=torch.float16, engine="reference"), windows(256))


def test_cli_awq_on_a_checkpoint_with_a_tokenizer(tmp_path):
    src = make_tiny_checkpoint(tmp_path / "src", quantized=False, dtype="float16", vocab_size=2048,
                               hidden_size=64, intermediate_size=64, seed=8)
    with open(os.path.join(DEFAULT_MODEL, "tokenizer.model"), "rb") as f, \
            open(os.path.join(src, "tokenizer.model"), "wb") as g:
        g.write(f.read())
    text = tmp_path / "calib.txt"
    text.write_text("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 8)
    dst, summary = str(tmp_path / "dst"), str(tmp_path / "summary.json")
    cmd = [sys.executable, "-m", "minimoe", "quantize", src, dst, "--method", "awq", "--group-size", "32",
           "--calib", str(text), "--samples", "4", "--seq-len", "32", "--grid", "5", "--summary", summary]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "[2/2] layer 1: alpha qkv" in run.stderr and "err RTN" in run.stdout
    with open(summary) as f:
        assert len(json.load(f)["layers"]) == 2
    assert os.path.isfile(os.path.join(dst, "tokenizer.model"))
    bad = subprocess.run([sys.executable, "-m", "minimoe", "quantize", src, str(tmp_path / "dst2"), "--method",
                          "awq"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "needs calibration text" in bad.stderr


@torch.no_grad()
def test_outlier_channels_keep_the_function_and_are_outliers(fp16_dir):
    model = load_fp32(fp16_dir)
    ids = windows(model.config.vocab_size, 2, 16)
    before = model(ids)
    channels = A.add_outlier_channels(model, channels=3, factor=30.0)
    after = model(ids)
    assert torch.allclose(after, before, atol=1e-4 * before.abs().max().item(), rtol=0)
    layer = model.model.layers[1]
    stat = A.mean_abs(layer.input_layernorm(model.model.embed_tokens(ids)))
    others = [c for c in range(model.config.hidden_size) if c not in channels]
    assert stat[channels].min() > 10 * stat[others].median()


def test_transformers_computes_the_same_model_from_the_written_tensors(fp16_dir, tmp_path):
    """Another reader of the layout: the AWQ checkpoint's int4 linears dequantized by the format spec, with its
    folded norms and routers as written, loaded by transformers, give minimoe's logits."""
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import save_file

    dst = str(tmp_path / "awq")
    quantize_checkpoint(fp16_dir, dst, method="awq", group_size=32, calibration=windows(256, samples=6))
    ckpt = Checkpoint(dst)
    prefixes = linear_names(ckpt.config)
    tensors = {n: ckpt.tensor(n).float() for n in ckpt.tensors
               if not any(n.startswith(f"{p}.") for p in prefixes)}
    for p in prefixes:
        q = ckpt.linear(p)
        tensors[f"{p}.weight"] = awq.dequantize(q["qweight"], q["qzeros"], q["scales"], 32, torch.float32).t().contiguous()
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    with open(os.path.join(dst, "config.json")) as f:
        raw = json.load(f)
    raw.pop("quantization_config")
    raw["torch_dtype"] = "float32"
    (hf_dir / "config.json").write_text(json.dumps(raw))
    save_file(tensors, str(hf_dir / "model.safetensors"), metadata={"format": "pt"})
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32,
                                                           attn_implementation="eager").eval()
    ids = windows(256, 2, 20, seed=4)
    with torch.no_grad():
        ref, ours = hf(ids).logits, load_fp32(dst)(ids)
    assert torch.isfinite(ours).all()
    assert torch.allclose(ours, ref, atol=1e-4 * ref.abs().max().item(), rtol=0)
