"""Checkpoint loading: config spellings, shards, AWQ tensors, and one clear error for each kind of bad input.

Independent references: safetensors' own `load_file` for tensor contents, transformers' `save_pretrained` for
a real config.json, hand-written JSON for the legacy spellings. Bad inputs run in a subprocess through the
CLI, so a crash (segfault, abort) would be caught, not just a Python exception.
"""

import json
import os
import struct
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import minimoe
from minimoe.checkpoint import Checkpoint, CheckpointError
from minimoe.config import ConfigError, load_config
from minimoe.testing import make_tiny_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("quantized", [True, False])
@pytest.mark.parametrize("shards", [1, 3])
def test_round_trip_every_tensor_bitwise_equal(tmp_path, quantized, shards):
    path = make_tiny_checkpoint(tmp_path, quantized=quantized, shards=shards, seed=11)
    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    assert len(files) == shards
    assert os.path.isfile(os.path.join(path, "model.safetensors.index.json")) == (shards > 1)
    written = {}
    for f in files:
        written.update(load_file(os.path.join(path, f)))
    checkpoint = Checkpoint(path)
    assert set(checkpoint.tensors) == set(written)
    for name, value in written.items():
        ours = checkpoint.tensor(name)
        assert ours.dtype == value.dtype and torch.equal(ours, value), name
    assert any(n.endswith(".qweight") for n in written) == quantized

    # ...and the loaded model holds exactly those tensors (no conversion when the dtype is the file's).
    model = minimoe.load_model(path)
    state = dict(model.named_parameters()) | dict(model.named_buffers())
    for name, value in written.items():
        assert torch.equal(state[name], value), name


def test_transformers_v5_config_loads_with_its_theta_and_dtype(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.MixtralConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                        num_attention_heads=4, num_key_value_heads=2, num_local_experts=2,
                                        rope_theta=1234.5, max_position_embeddings=64)
    transformers.MixtralForCausalLM(config).to(torch.bfloat16).save_pretrained(tmp_path)
    raw = json.load(open(tmp_path / "config.json"))
    assert "rope_parameters" in raw and "rope_theta" not in raw  # the new spelling is what we test
    ours = load_config(tmp_path)
    assert ours.rope_theta == 1234.5 and ours.dtype == "bfloat16" and ours.head_dim == 8
    assert minimoe.load_model(tmp_path).dtype == torch.bfloat16


def test_legacy_config_spelling_loads(tmp_path):
    path = make_tiny_checkpoint(tmp_path, config_style="legacy", rope_theta=777.0, dtype="bfloat16")
    raw = json.load(open(os.path.join(path, "config.json")))
    assert raw["torch_dtype"] == "bfloat16" and raw["rope_theta"] == 777.0 and "dtype" not in raw
    config = load_config(path)
    assert config.rope_theta == 777.0 and config.dtype == "bfloat16"
    assert config.quantization.group_size == 32


def test_quant_config_json_alone_is_read(tmp_path):
    path = make_tiny_checkpoint(tmp_path, quantized=True, group_size=16)
    raw = json.load(open(os.path.join(path, "config.json")))
    del raw["quantization_config"]  # an older AutoAWQ release: only quant_config.json (w_bit, q_group_size)
    json.dump(raw, open(os.path.join(path, "config.json"), "w"))
    assert load_config(path).quantization.group_size == 16
    Checkpoint(path)  # validates


def test_missing_theta_is_an_error_not_a_default(tmp_path):
    path = make_tiny_checkpoint(tmp_path)
    raw = json.load(open(os.path.join(path, "config.json")))
    del raw["rope_theta"]
    json.dump(raw, open(os.path.join(path, "config.json"), "w"))
    with pytest.raises(ConfigError, match="no rope_theta"):
        load_config(path)


def run_inspect(path):
    return subprocess.run([sys.executable, "-m", "minimoe", "inspect", str(path)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def edit_config(path, **changes):
    raw = json.load(open(os.path.join(path, "config.json")))
    for key, value in changes.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    json.dump(raw, open(os.path.join(path, "config.json"), "w"))


def first_shard(path):
    return os.path.join(path, sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))[0])


def corrupt_random_bytes(path):
    with open(first_shard(path), "wb") as f:
        f.write(os.urandom(3000))


def truncate(path):
    shard = first_shard(path)
    size = os.path.getsize(shard)
    with open(shard, "r+b") as f:
        f.truncate(size - 100)


def empty(path):
    open(first_shard(path), "wb").close()


def absurd_header(path):
    shard = first_shard(path)
    data = bytearray(open(shard, "rb").read())
    data[:8] = struct.pack("<Q", 2**60)
    open(shard, "wb").write(bytes(data))


def header_not_json(path):
    shard = first_shard(path)
    data = bytearray(open(shard, "rb").read())
    data[8:12] = b"\xff\xfe{["
    open(shard, "wb").write(bytes(data))


def missing_shard(path):
    os.remove(first_shard(path))


def missing_tensors(path):
    shard = first_shard(path)
    tensors = load_file(shard)
    gone = [n for n in tensors if "layers.0.self_attn" in n]
    for name in gone:
        del tensors[name]
    save_file(tensors, shard)
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):  # a consistent index that simply lacks them, as a broken export would write
        raw = json.load(open(index))
        raw["weight_map"] = {k: v for k, v in raw["weight_map"].items() if k not in gone}
        json.dump(raw, open(index, "w"))


def wrong_shape(path):
    shard = first_shard(path)
    tensors = load_file(shard)
    tensors["model.embed_tokens.weight"] = tensors["model.embed_tokens.weight"][:, :-1].contiguous()
    save_file(tensors, shard)


def index_points_to_wrong_file(path):
    index = os.path.join(path, "model.safetensors.index.json")
    raw = json.load(open(index))
    raw["weight_map"]["model.norm.weight"] = "model-00001-of-00002.safetensors"
    json.dump(raw, open(index, "w"))


BAD_INPUTS = {
    "index disagrees with files": (index_points_to_wrong_file, "says 'model.norm.weight' is in "
                                                               "model-00001-of-00002.safetensors, but that file"),
    "random bytes": (corrupt_random_bytes, "safetensors"),
    "truncated file": (truncate, "truncated"),
    "empty file": (empty, "too short to be a safetensors file"),
    "absurd header length": (absurd_header, "header length field says"),
    "header not JSON": (header_not_json, "not valid JSON"),
    "missing shard": (missing_shard, "shard file(s) listed in the index are missing"),
    "missing tensors": (missing_tensors, "expected tensor(s) missing: model.layers.0.self_attn.q_proj.qweight"),
    "wrong shape": (wrong_shape, "model.embed_tokens.weight in model-00001-of-00002.safetensors: expected shape "
                                 "[256, 64], found [256, 63]"),
    "config not JSON": (lambda p: open(os.path.join(p, "config.json"), "w").write("{not json"), "not valid JSON"),
    "no config": (lambda p: os.remove(os.path.join(p, "config.json")), "config.json: file not found"),
    "other architecture": (lambda p: edit_config(p, model_type="llama", architectures=["LlamaForCausalLM"]),
                           "unsupported model_type 'llama'"),
    "gptq": (lambda p: edit_config(p, quantization_config={"quant_method": "gptq", "bits": 4}),
             "quantization method 'gptq' is not supported"),
    "8-bit": (lambda p: edit_config(p, quantization_config={"quant_method": "awq", "bits": 8, "group_size": 32}),
              "8-bit AWQ is not supported"),
    "gemv layout": (lambda p: edit_config(p, quantization_config={"quant_method": "awq", "bits": 4, "group_size": 32,
                                                                  "version": "gemv"}),
                    "AWQ version 'gemv' is not supported"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gives_one_clear_error(tmp_path, case):
    damage, message = BAD_INPUTS[case]
    path = make_tiny_checkpoint(tmp_path / "ckpt", shards=2)
    damage(path)
    result = run_inspect(path)
    assert result.returncode in (1, 2), (result.returncode, result.stderr)  # not a crash signal (negative)
    output = result.stdout + result.stderr
    assert message in output, output
    assert "Traceback" not in output


def test_not_a_checkpoint_directory(tmp_path):
    result = run_inspect(tmp_path)
    assert result.returncode == 2 and "config.json: file not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_inspect_reports_counts_and_bytes(tmp_path):
    path = make_tiny_checkpoint(tmp_path, shards=2)
    result = subprocess.run([sys.executable, "-m", "minimoe", "inspect", path, "--json"], capture_output=True,
                            text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    # Hand count for the tiny config (C=64, I=128, 2 layers, 4 heads x 16, 2 kv heads, 2 experts, vocab 256):
    attn = 64 * 64 + 2 * (64 * 32) + 64 * 64          # q, k, v, o
    experts = 2 * 3 * 64 * 128                         # 2 experts x (w1, w2, w3)
    per_layer = attn + experts + 2 * 64 + 2 * 64       # + router (2 x 64) + 2 norms
    total = 2 * per_layer + 2 * 256 * 64 + 64          # + embed, lm_head, final norm
    assert report["params_total"] == total
    assert report["params_per_expert"] == 2 * 3 * 64 * 128
    assert report["params_active_per_token"] == total  # top-2 of 2: every expert is active
    assert report["bytes_on_disk"] == sum(os.path.getsize(os.path.join(path, f)) for f in report["files"])
    assert report["problems"] == []


def test_unexpected_extra_tensor_warns(tmp_path):
    path = make_tiny_checkpoint(tmp_path)
    shard = first_shard(path)
    tensors = load_file(shard)
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    save_file(tensors, shard)
    with pytest.warns(UserWarning, match="unexpected tensor"):
        Checkpoint(path)


def test_checkpoint_error_lists_all_missing_at_once(tmp_path):
    path = make_tiny_checkpoint(tmp_path)
    missing_tensors(path)
    with pytest.raises(CheckpointError) as info:
        Checkpoint(path)
    text = str(info.value)
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert f"model.layers.0.self_attn.{proj}.qweight" in text


LOAD_RSS = """
import resource, sys, torch, minimoe
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
model = minimoe.load_model(sys.argv[1])
model(torch.tensor([[1, 2, 3]]))     # touch every weight once
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(peak - before)
"""


@pytest.mark.slow
def test_loading_peak_memory_stays_close_to_checkpoint_size(tmp_path):
    # ~200 MB of fp16 weights: loaded at the file's dtype, tensors are memory-mapped, never copied.
    path = make_tiny_checkpoint(tmp_path, quantized=False, hidden_size=1024, intermediate_size=2048,
                                num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=2,
                                vocab_size=4096, shards=2)
    size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".safetensors"))
    assert size > 150e6
    result = subprocess.run([sys.executable, "-c", LOAD_RSS, path], capture_output=True, text=True, cwd=ROOT,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    growth = int(result.stdout.strip().splitlines()[-1])
    assert growth <= 1.15 * size, f"peak RSS grew by {growth / 1e6:.0f} MB for a {size / 1e6:.0f} MB checkpoint"
