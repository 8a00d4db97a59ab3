"""Fuzzing the safetensors reader (Hypothesis; the "ci" profile runs 20 examples per test, "thorough" 500).

A valid tiny checkpoint's model.safetensors is damaged (truncated at any byte; any header byte overwritten; the
header's JSON edited: dtypes, shapes, offsets, names, types; garbage headers; duplicate names) and loaded.
The property: load_model either raises a CheckpointError naming the file, or succeeds and loads exactly the
original tensors (a change that does not alter what is loaded, such as a space in the JSON). Never another
exception type, never a crash, never a silently different model. Changes to the tensor *bytes* are outside
this: safetensors carries no checksum, so a flipped weight bit cannot be told from a real weight.
"""

from __future__ import annotations

import json
import os
import shutil
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import minimoe
from minimoe.checkpoint import CheckpointError
from minimoe.testing import make_tiny_checkpoint


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    path = make_tiny_checkpoint(tmp_path_factory.mktemp("fuzz") / "ok", quantized=True, seed=1,
                                hidden_size=32, intermediate_size=64, num_hidden_layers=1, vocab_size=64)
    with open(os.path.join(path, "model.safetensors"), "rb") as f:
        blob = f.read()
    model = minimoe.load_model(path, dtype=torch.float32, engine="reference")
    return path, blob, {k: v.clone() for k, v in model.state_dict().items()}


def load_damaged(original, tmp_path_factory, blob: bytes) -> None:
    path, _, state = original
    folder = tmp_path_factory.mktemp("damaged")
    shutil.copyfile(os.path.join(path, "config.json"), folder / "config.json")
    shutil.copyfile(os.path.join(path, "quant_config.json"), folder / "quant_config.json")
    target = str(folder / "model.safetensors")
    with open(target, "wb") as f:
        f.write(blob)
    try:
        model = minimoe.load_model(str(folder), dtype=torch.float32, engine="reference")
    except CheckpointError as error:
        assert target in str(error) or str(folder) in str(error), f"the error does not name the file: {error}"
        return
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    for name, value in state.items():    # accepted: then it must be the same model, bit for bit
        assert torch.equal(loaded[name], value), f"{name} changed but the damaged file was accepted"


def split(blob: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def join(header_text: str, data: bytes) -> bytes:
    raw = header_text.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw + data


fuzz = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], deadline=None)


@fuzz
@given(cut=st.integers(0, 10**9))
def test_truncated_anywhere(original, tmp_path_factory, cut):
    blob = original[1]
    load_damaged(original, tmp_path_factory, blob[: cut % len(blob)])


@fuzz
@given(data=st.data())
def test_header_bytes_overwritten(original, tmp_path_factory, data):
    blob = bytearray(original[1])
    (n,) = struct.unpack("<Q", blob[:8])
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, 8 + n - 1))
        blob[i] = data.draw(st.integers(0, 255))
    load_damaged(original, tmp_path_factory, bytes(blob))


json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                          max_size=3), max_leaves=8)


@fuzz
@given(data=st.data())
def test_header_fields_edited(original, tmp_path_factory, data):
    header, payload = split(original[1])
    names = sorted(k for k in header if k != "__metadata__")
    name = data.draw(st.sampled_from(names))
    entry = header[name]
    # (Not among them: exchanging two same-shape entries. That makes another *valid* file, with the two tensors'
    # bytes under each other's names, which no reader can tell from a checkpoint that really holds those values,
    # just like changed tensor bytes; the fuzzer found it at once.)
    action = data.draw(st.sampled_from(["dtype", "shape", "offsets", "value", "drop", "rename", "extra"]))
    if action == "dtype":
        entry["dtype"] = data.draw(st.sampled_from(["F16", "BF16", "F32", "F64", "I32", "I64", "U8", "I8", "BOOL",
                                                    "F8_E4M3", "Q4", "f16", ""]))
    elif action == "shape":
        entry["shape"] = data.draw(st.lists(st.integers(-1, 300), max_size=4))
    elif action == "offsets":
        a, b = entry["data_offsets"]
        delta = data.draw(st.integers(-64, 64))
        entry["data_offsets"] = data.draw(st.sampled_from([[a + delta, b + delta], [a, b + delta], [a + delta, b]]))
    elif action == "value":
        header[name] = data.draw(json_values)
    elif action == "drop":
        del header[name]
    elif action == "rename":
        header[name + data.draw(st.sampled_from(["x", ".weight", "_"]))] = header.pop(name)
    else:
        header[data.draw(st.text(min_size=1, max_size=8))] = data.draw(json_values)
    load_damaged(original, tmp_path_factory, join(json.dumps(header), payload))


@fuzz
@given(garbage=st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_garbage_header(original, tmp_path_factory, garbage):
    _, payload = split(original[1])
    load_damaged(original, tmp_path_factory, struct.pack("<Q", len(garbage)) + garbage + payload)


def test_duplicate_tensor_name_is_an_error(original, tmp_path_factory):
    header, payload = split(original[1])
    names = sorted(k for k in header if k != "__metadata__")
    a, b = names[0], names[1]
    text = json.dumps(header)
    # the same name twice, the second entry pointing at another tensor's bytes: json.loads would keep it
    duplicate = text[:-1] + ", " + json.dumps(a) + ": " + json.dumps(header[b]) + "}"
    with pytest.raises(CheckpointError, match="twice"):
        load_damaged_strict(original, tmp_path_factory, join(duplicate, payload))


def load_damaged_strict(original, tmp_path_factory, blob):
    path = original[0]
    folder = tmp_path_factory.mktemp("dup")
    for name in ("config.json", "quant_config.json"):
        shutil.copyfile(os.path.join(path, name), folder / name)
    with open(folder / "model.safetensors", "wb") as f:
        f.write(blob)
    minimoe.load_model(str(folder), dtype=torch.float32, engine="reference")


# ------------------------------------------------------------------------------------------ config.json values

def perturbed(value):
    """Values a damaged or hand-edited config.json might hold in place of `value`."""
    generic = st.none() | st.booleans() | st.text(max_size=6) | st.lists(st.integers(-3, 3), max_size=2) | \
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
    if isinstance(value, bool):
        return st.sampled_from([not value, "true", "false", 0, 1]) | generic
    if isinstance(value, int):
        return st.sampled_from([0, -1, 1, value + 1, value - 1, 2 * value, value // 2, 2**31, 2**62, 10**12,
                                float(value), str(value)]) | generic
    if isinstance(value, float):
        return st.sampled_from([0.0, -value, value * 1e6, float("inf"), float("nan"), str(value)]) | \
            st.floats(allow_nan=True) | generic
    if isinstance(value, dict):
        return generic | st.just({})
    return generic


@fuzz
@given(data=st.data())
def test_config_values_edited(original, tmp_path_factory, data):
    """A config.json value changed: a clear error (ValueError, CheckpointError included), or a model that loads
    and computes finite logits; never another exception type, never a hang."""
    import time

    path = original[0]
    with open(os.path.join(path, "config.json")) as f:
        raw = json.load(f)
    key = data.draw(st.sampled_from(sorted(raw)))
    raw[key] = data.draw(perturbed(raw[key]))
    folder = tmp_path_factory.mktemp("config")
    shutil.copyfile(os.path.join(path, "model.safetensors"), folder / "model.safetensors")
    shutil.copyfile(os.path.join(path, "quant_config.json"), folder / "quant_config.json")
    (folder / "config.json").write_text(json.dumps(raw))
    start = time.perf_counter()
    try:
        model = minimoe.load_model(str(folder), dtype=torch.float32, engine="reference")
    except ValueError as error:
        assert str(error).strip(), "an error without a message"
        return
    finally:
        assert time.perf_counter() - start < 20, f"{key} = {raw[key]!r} took over 20 s to load or fail"
    with torch.no_grad():
        logits = model(torch.zeros(1, 1, dtype=torch.long))
    assert torch.isfinite(logits).all(), f"{key} = {raw[key]!r} was accepted and gives non-finite logits"
