"""minimoe.train: the loop learns, gradients reach every expert and the router, checkpoints round-trip through
minimoe and transformers, the auxiliary loss equals transformers', perplexity is the hand-computed one."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import minimoe
from minimoe import awq
from minimoe import train as T
from minimoe.cli import DEFAULT_MODEL
from minimoe.config import ModelConfig

TINY = dict(model_type="mixtral", vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-5, rope_theta=10000.0,
            max_position_embeddings=128, num_local_experts=4, num_experts_per_tok=2)


def tiny_model(seed=0, **overrides):
    return T.new_model(ModelConfig(**{**TINY, **overrides}), seed=seed)


def pattern_ids(n=4000, vocab=64, seed=0):
    """A learnable stream: a fixed random sequence of 50 ids repeated."""
    g = torch.Generator().manual_seed(seed)
    period = torch.randint(3, vocab, (50,), generator=g)
    return period.repeat(n // 50 + 1)[:n]


def test_load_balancing_loss_equals_transformers():
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    model = tiny_model()
    ids = torch.randint(0, 64, (3, 10), generator=torch.Generator().manual_seed(1))
    _, routes = model(ids, output_router_logits=True)
    ours = T.load_balancing_loss(routes, 4)
    theirs = load_balancing_loss_func(tuple(r.logits for r in routes), 4, 2)
    assert torch.isfinite(ours)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)


def test_load_balancing_loss_by_hand():
    # 2 tokens, E = 2, k = 1; token 0 -> expert 0 (p = 0.8), token 1 -> expert 0 (p = 0.6)
    # f = [1, 0], P = [0.7, 0.3] -> E * sum f P = 2 * 0.7 = 1.4
    logits = torch.log(torch.tensor([[0.8, 0.2], [0.6, 0.4]]))
    route = minimoe.model.RouterOutput(logits, torch.tensor([[0], [0]]), torch.ones(2, 1))
    assert T.load_balancing_loss([route], 2).item() == pytest.approx(1.4, rel=1e-6)


def test_lr_schedule():
    cfg = T.TrainConfig(steps=110, warmup=10, lr=1.0, min_lr=0.1)
    assert T.lr_at(0, cfg) == pytest.approx(0.1)
    assert T.lr_at(9, cfg) == pytest.approx(1.0)
    assert T.lr_at(10, cfg) == pytest.approx(1.0)
    assert T.lr_at(60, cfg) == pytest.approx(0.55)       # half way: the mean of lr and min_lr
    assert T.lr_at(110, cfg) == pytest.approx(0.1)


def test_gradients_reach_every_expert_and_the_router():
    torch.manual_seed(0)
    model = tiny_model()
    batch = torch.randint(0, 64, (4, 33), generator=torch.Generator().manual_seed(2))
    ce, aux = T.losses(model, batch, 0.02)
    assert aux.item() > 0 and aux.requires_grad
    (ce + 0.02 * aux).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name                 # every expert got tokens, the router a gradient
    # the auxiliary loss alone moves the router (and nothing else but what feeds it)
    model.zero_grad()
    _, aux = T.losses(model, batch, 0.02)
    aux.backward()
    assert model.model.layers[0].block_sparse_moe.gate.weight.grad.abs().sum() > 0


def test_training_lowers_the_loss_and_is_deterministic():
    ids = pattern_ids()
    cfg = T.TrainConfig(steps=40, batch_size=8, seq_len=32, lr=1e-2, min_lr=1e-3, warmup=5, eval_every=0,
                        eval_tokens=256)
    logs = []
    for _ in range(2):
        torch.set_num_threads(torch.get_num_threads())
        model = tiny_model()
        logs.append(T.train(model, ids, ids, cfg, progress=False))
    first, last = logs[0][0]["loss"], logs[0][-1]["loss"]
    assert math.isfinite(last)
    assert last < 0.5 * first, (first, last)
    assert logs[0][-1]["val_loss"] < 0.5 * math.log(64)
    assert [e["loss"] for e in logs[0]] == [e["loss"] for e in logs[1]]    # same seed, same threads


def _trained(steps=5):
    model = tiny_model()
    cfg = T.TrainConfig(steps=steps, batch_size=4, seq_len=32, warmup=1, eval_every=0)
    T.train(model, pattern_ids(), None, cfg, progress=False)
    return model


def test_checkpoint_round_trip_minimoe_and_transformers(tmp_path):
    import transformers

    model = _trained()
    path = T.save_checkpoint(model, str(tmp_path / "fp16"))
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(3))
    # the same weights rounded to fp16, in a model of our own: what the file must hold
    expected_model = tiny_model()
    with torch.no_grad():
        for (name, p), q in zip(expected_model.named_parameters(), model.parameters()):
            p.copy_(q.half().float())
        expected = expected_model(ids)
    ours = minimoe.load_model(path, dtype=torch.float32, engine="reference")
    hf = transformers.MixtralForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        got = ours(ids)
        theirs = hf(ids).logits
    assert torch.equal(got, expected)
    assert torch.allclose(theirs, expected, atol=1e-4, rtol=1e-4), (theirs - expected).abs().max()


def test_awq_checkpoint_holds_the_rtn_codes(tmp_path):
    from minimoe.quantize import quantize_checkpoint

    model = _trained()
    path = str(tmp_path / "awq")
    quantize_checkpoint(T.save_checkpoint(model, str(tmp_path / "fp16")), path, group_size=16)
    loaded = minimoe.load_model(path, dtype=torch.float32, engine="reference")
    with open(os.path.join(path, "config.json")) as f:
        assert json.load(f)["quantization_config"]["group_size"] == 16
    trained = dict(model.named_parameters())
    q_proj = loaded.model.layers[1].self_attn.q_proj
    w = trained["model.layers.1.self_attn.q_proj.weight"].detach().half()   # quantized from the fp16 file
    reference = awq.quantize(w, group_size=16)
    assert torch.equal(q_proj.qweight, reference.qweight)
    deq = awq.dequantize(q_proj.qweight, q_proj.qzeros, q_proj.scales, 16, torch.float32)   # W^T [K, N]
    step = q_proj.scales.float().repeat_interleave(16, dim=0)                              # each weight's s
    assert ((deq - w.float().t()).abs() <= 0.5 * step * 1.01 + 1e-6).all()    # RTN: within half a step of the weight
    # router, norms and embeddings stay plain fp16
    gate = loaded.model.layers[0].block_sparse_moe.gate.weight
    assert torch.equal(gate, trained["model.layers.0.block_sparse_moe.gate.weight"].detach().half().float())


def _nll_by_hand(model, ids, start, end, first):
    """Sum of -log p(ids[i] | ids[start:i]) for i in first..end-1, one forward per token (no windows)."""
    total = 0.0
    for i in range(first, end):
        logits = model(ids[start:i][None])[0, -1].float()
        total -= F.log_softmax(logits, -1)[ids[i]].item()
    return total


@torch.no_grad()
def test_perplexity_by_hand():
    model = tiny_model().eval()
    ids = torch.randint(0, 64, (30,), generator=torch.Generator().manual_seed(4))
    # shorter than the context: one window, every token after the first
    ppl, scored = T.perplexity(model, ids, context=64)
    assert scored == 29
    assert ppl == pytest.approx(math.exp(_nll_by_hand(model, ids, 0, 30, 1) / 29), rel=1e-5)
    # windows of 12, stride 8: [0,12) scores 1..11, [8,20) scores 12..19, [16,28) 20..27, [18,30) 28..29
    ppl, scored = T.perplexity(model, ids, context=12, stride=8)
    assert scored == 29
    nll = (_nll_by_hand(model, ids, 0, 12, 1) + _nll_by_hand(model, ids, 8, 20, 12)
           + _nll_by_hand(model, ids, 16, 28, 20) + _nll_by_hand(model, ids, 18, 30, 28))
    assert ppl == pytest.approx(math.exp(nll / 29), rel=1e-5)
    with pytest.raises(ValueError, match="stride"):
        T.perplexity(model, ids, context=12, stride=13)


def test_cli_train_then_eval_ppl(tmp_path):
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    (data / "val").mkdir()
    line = "The quick brown fox jumps over the lazy dog. "
    (data / "train" / "a.txt").write_text(line * 60)
    (data / "val" / "b.txt").write_text(line * 10)
    out = tmp_path / "model"
    env = dict(os.environ, MINIMOE_ENGINE="reference")
    subprocess.run([sys.executable, "-m", "minimoe", "train", "--data", str(data), "--tokenizer",
                    os.path.join(DEFAULT_MODEL, "tokenizer.model"), "--out", str(out), "--steps", "30",
                    "--batch-size", "4", "--seq-len", "32", "--hidden", "32", "--ffn", "32", "--layers", "1",
                    "--heads", "4", "--kv-heads", "2", "--lr", "1e-2", "--eval-every", "10"],
                   check=True, env=env, capture_output=True, text=True)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[-1]["val_loss"] < log[0]["val_loss"]
    result = subprocess.run([sys.executable, "-m", "minimoe", "eval", "ppl", "--model", str(out), "--text",
                             str(data / "val" / "b.txt"), "--json"], check=True, env=env, capture_output=True,
                            text=True)
    report = json.loads(result.stdout)
    assert math.isfinite(report["perplexity"]) and report["perplexity"] < 32000
    # the number the command printed is the library's
    model = minimoe.load_model(str(out), engine="reference")
    ids = minimoe.load_tokenizer(str(out)).encode((data / "val" / "b.txt").read_text(), bos=True)
    assert report["perplexity"] == pytest.approx(T.perplexity(model, ids, report["context"])[0], rel=1e-6)
