"""minimoe.quantize (RTN): the written checkpoint has AutoAWQ's layout, holds the RTN codes of the source weights,
leaves everything else as plain fp16, loads, and computes the fake-quantized reference model's logits."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import minimoe
from minimoe import awq
from minimoe.checkpoint import INDEX_FILE, Checkpoint, linear_names
from minimoe.quantize import quantize_checkpoint
from minimoe.testing import make_tiny_checkpoint


@pytest.fixture(scope="module")
def fp16_dir(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("q") / "fp16", quantized=False, dtype="float16",
                                hidden_size=64, intermediate_size=128, seed=3)


@pytest.mark.parametrize("group_size", [32, 64])
def test_rtn_checkpoint_layout_and_codes(fp16_dir, tmp_path, group_size):
    dst = str(tmp_path / "awq")
    summary = quantize_checkpoint(fp16_dir, dst, group_size=group_size)
    with open(os.path.join(dst, "config.json")) as f:
        q = json.load(f)["quantization_config"]
    assert q == {"quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": True, "version": "gemm",
                 "modules_to_not_convert": None}
    with open(os.path.join(dst, "quant_config.json")) as f:
        assert json.load(f) == {"zero_point": True, "q_group_size": group_size, "w_bit": 4, "version": "GEMM"}
    src, out = Checkpoint(fp16_dir), Checkpoint(dst)
    prefixes = linear_names(src.config)
    assert set(summary["layers"]) == set(prefixes)
    for prefix in prefixes:
        assert out.is_quantized(prefix)
        expected = awq.quantize(src.tensor(f"{prefix}.weight"), group_size=group_size)
        got = out.linear(prefix)
        assert torch.equal(got["qweight"], expected.qweight) and torch.equal(got["qzeros"], expected.qzeros)
        assert torch.equal(got["scales"], expected.scales)
        assert 0 < summary["layers"][prefix]["relative_error"] < 0.2
    plain = [n for n in src.tensors if not any(n == f"{p}.weight" for p in prefixes)]
    assert any("gate.weight" in n for n in plain) and "lm_head.weight" in plain
    for name in plain:                                       # router, norms, embeddings, lm_head: untouched
        assert torch.equal(out.tensor(name), src.tensor(name).half()), name


def test_rtn_model_equals_the_fake_quantized_reference(fp16_dir, tmp_path):
    dst = str(tmp_path / "awq")
    quantize_checkpoint(fp16_dir, dst, group_size=32)
    quantized = minimoe.load_model(dst, dtype=torch.float32, engine="reference")
    reference = minimoe.load_model(fp16_dir, dtype=torch.float32, engine="reference")
    with torch.no_grad():          # the reference with each weight replaced by dequantize(quantize(weight))
        for prefix in linear_names(reference.config):
            module = reference.get_submodule(prefix)
            q = awq.quantize(module.weight, group_size=32)
            module.weight.copy_(awq.dequantize(q.qweight, q.qzeros, q.scales, 32, torch.float32).t())
        ids = torch.randint(0, reference.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
        expected, got = reference(ids), quantized(ids)
    assert torch.isfinite(got).all()
    assert torch.allclose(got, expected, atol=1e-4 * expected.abs().max().item(), rtol=0)


def test_sharded_source_gives_sharded_output(tmp_path):
    src = make_tiny_checkpoint(tmp_path / "fp16", quantized=False, dtype="float16", shards=3, seed=4)
    dst = str(tmp_path / "awq")
    quantize_checkpoint(src, dst, group_size=32)
    with open(os.path.join(dst, INDEX_FILE)) as f:
        index = json.load(f)
    assert len(set(index["weight_map"].values())) == 3
    assert minimoe.load_model(dst, engine="reference").config.quantization.group_size == 32


def test_bad_requests_say_what_was_expected(fp16_dir, tmp_path):
    with pytest.raises(ValueError, match="available: rtn, awq"):
        quantize_checkpoint(fp16_dir, str(tmp_path / "a"), method="gptq")
    with pytest.raises(ValueError, match="not a multiple of group size"):
        quantize_checkpoint(fp16_dir, str(tmp_path / "b"), group_size=256)
    awq_dir = str(tmp_path / "c")
    quantize_checkpoint(fp16_dir, awq_dir, group_size=32)
    with pytest.raises(ValueError, match="already quantized"):
        quantize_checkpoint(awq_dir, str(tmp_path / "d"))
    with pytest.raises(ValueError, match="not empty"):
        quantize_checkpoint(fp16_dir, awq_dir, group_size=32)


def test_cli_quantize(fp16_dir, tmp_path):
    dst = str(tmp_path / "awq")
    result = subprocess.run([sys.executable, "-m", "minimoe", "quantize", fp16_dir, dst, "--group-size", "32"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "w1" in result.stdout and "relative error" in result.stdout
    assert Checkpoint(dst).config.quantization.group_size == 32
