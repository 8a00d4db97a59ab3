"""Inputs that used to be accepted silently: each is now one clear error naming what was expected and found."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

import minimoe
from minimoe.testing import make_tiny_checkpoint


def edit_config(path, **changes):
    file = os.path.join(path, "config.json")
    with open(file) as f:
        raw = json.load(f)
    raw.update(changes)
    with open(file, "w") as f:
        json.dump(raw, f)


@pytest.fixture
def awq_dir(tmp_path):
    return make_tiny_checkpoint(tmp_path / "awq", quantized=True, seed=1)


@pytest.fixture
def plain_dir(tmp_path):
    return make_tiny_checkpoint(tmp_path / "plain", quantized=False, seed=1)


@pytest.mark.parametrize("key, value, message", [
    ("eos_token_id", "x", r"'eos_token_id' must be an integer token id \(or null\), found 'x'"),
    ("bos_token_id", 999999, r"'bos_token_id' must be a token id in 0\.\.\d+ \(vocab_size\), found 999999"),
    ("eos_token_id", [-1], r"'eos_token_id' must be a token id in"),
    ("tie_word_embeddings", "false", r"'tie_word_embeddings' must be true or false, found 'false'"),
    # found by tests/test_fuzz_checkpoint.py::test_config_values_edited
    ("torch_dtype", [0], r"dtype \[0\] is not supported"),                 # was a TypeError
    ("num_attention_heads", 0, r"'num_attention_heads' must be positive, found 0"),   # was a ZeroDivisionError
    ("rms_norm_eps", float("nan"), r"'rms_norm_eps' must be a finite number, found nan"),  # was NaN logits
    ("rope_theta", 1e-181, r"rope_theta must be at least 1"),                # was inf angles, NaN logits
    ("num_local_experts", 10**12, r"num_local_experts = 1000000000000, but the files hold experts 0\.\.1"),
])
def test_config_values_are_type_and_range_checked(plain_dir, key, value, message):
    edit_config(plain_dir, **{key: value})
    with pytest.raises(ValueError, match=message):
        minimoe.load_model(plain_dir)


def test_two_quantization_files_that_disagree(awq_dir):
    with open(os.path.join(awq_dir, "config.json")) as f:
        q = json.load(f)["quantization_config"]
    with open(os.path.join(awq_dir, "quant_config.json"), "w") as f:
        json.dump({"zero_point": True, "q_group_size": q["group_size"] * 2, "w_bit": 4, "version": "GEMM"}, f)
    with pytest.raises(ValueError, match=r"says group_size = \d+ but .*quant_config.json says q_group_size = \d+"):
        minimoe.load_model(awq_dir)


def test_quantization_config_on_plain_weights(plain_dir):
    edit_config(plain_dir, quantization_config={"quant_method": "awq", "bits": 4, "group_size": 32,
                                                "zero_point": True, "version": "gemm"})
    with pytest.raises(ValueError, match="declares AWQ int4 quantization, but every linear layer"):
        minimoe.load_model(plain_dir)


def test_bf16_scales_are_refused(awq_dir):
    file = os.path.join(awq_dir, "model.safetensors")
    tensors = load_file(file)
    name = next(n for n in tensors if n.endswith(".scales"))
    tensors[name] = tensors[name].to(torch.bfloat16)
    save_file(tensors, file, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"{name} in model.safetensors: expected dtype F16, found BF16"):
        minimoe.load_model(awq_dir)


def test_too_many_layers_fails_at_once(plain_dir):
    edit_config(plain_dir, num_hidden_layers=1_000_000_000)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"num_hidden_layers = 1000000000, but the files hold layers 0\.\.1"):
        minimoe.load_model(plain_dir)
    assert time.perf_counter() - start < 10
    result = subprocess.run([sys.executable, "-m", "minimoe", "inspect", plain_dir], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0 and "num_hidden_layers" in result.stdout + result.stderr


def test_too_few_layers_is_an_error_not_a_truncated_model(plain_dir):
    edit_config(plain_dir, num_hidden_layers=1)
    with pytest.raises(ValueError, match=r"num_hidden_layers = 1, but the files hold layers 0\.\.1 \(2 layers\)"):
        minimoe.load_model(plain_dir)


def _with_tokenizer(path):
    default = os.path.join(os.path.dirname(minimoe.__file__), "default_model", "tokenizer.model")
    with open(default, "rb") as f, open(os.path.join(path, "tokenizer.model"), "wb") as g:
        g.write(f.read())
    return path


def _minimoe(*args):
    return subprocess.run([sys.executable, "-m", "minimoe", *args], capture_output=True, text=True, timeout=300)


def test_tokenizer_larger_than_the_embedding_is_an_error(tmp_path):
    path = _with_tokenizer(make_tiny_checkpoint(tmp_path / "small_vocab", quantized=False, vocab_size=1024, seed=1))
    run = _minimoe("generate", "--model", path, "Hello", "--max-new-tokens", "2")
    assert run.returncode == 2 and run.stdout == ""
    assert "the tokenizer has 2048 tokens but the model's vocab_size is 1024" in run.stderr
    inspect = _minimoe("inspect", path)
    assert inspect.returncode == 1 and "the tokenizer has 2048 tokens" in inspect.stdout


def test_special_tokens_that_disagree_warn_and_inspect_reports_it(tmp_path):
    path = _with_tokenizer(make_tiny_checkpoint(tmp_path / "bos", quantized=False, vocab_size=2048, seed=1))
    edit_config(path, bos_token_id=5)
    run = _minimoe("generate", "--model", path, "Hello", "--max-new-tokens", "2")
    assert run.returncode == 0, run.stderr
    assert "config.json's bos_token_id is 5 but the tokenizer's is 1; prompts start with the tokenizer's" in run.stderr
    inspect = _minimoe("inspect", path)
    assert inspect.returncode == 0
    assert "1 warning(s):" in inspect.stdout and "bos_token_id is 5" in inspect.stdout
    assert "validation: ok (with the warnings above)" in inspect.stdout
