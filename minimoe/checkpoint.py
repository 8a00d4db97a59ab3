"""Open a Hugging Face checkpoint directory: config, safetensors shards, AWQ or plain tensors, validation.

A checkpoint directory (e.g. Confinus-2x7B-AWQ) holds
    config.json [+ quant_config.json]               -> minimoe.config.ModelConfig
    model.safetensors                               one file, or
    model-0000X-of-0000N.safetensors + model.safetensors.index.json   (index: tensor name -> shard file)

A safetensors file is: 8 bytes little-endian header length n | n bytes of JSON header | raw tensor bytes.
The header maps each name to {dtype, shape, data_offsets: [begin, end]} (offsets into the data section).
We read and check every header ourselves first (it's tiny), so that a truncated, empty or corrupt file gets
one clear sentence naming the file, and then let the safetensors library memory-map the data: a tensor's
bytes are read from disk only when the model touches them, and never copied twice (int4 weights stay int32
packed, no fp16 copy of them exists at any point).

Which tensors a checkpoint must hold is read off the model itself (built on the meta device: minimoe/families
says what each family's layers are), so no list of names here can drift from the modules.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import struct
import warnings
from typing import Iterator

import torch

from minimoe import formats
from minimoe.config import ModelConfig, load_config

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors format's own limit; a bigger length field is corrupt

# safetensors dtype strings -> (torch dtype, bytes per element)
SAFETENSORS_DTYPES = {
    "F64": (torch.float64, 8), "F32": (torch.float32, 4), "F16": (torch.float16, 2), "BF16": (torch.bfloat16, 2),
    "I64": (torch.int64, 8), "I32": (torch.int32, 4), "I16": (torch.int16, 2), "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1), "BOOL": (torch.bool, 1),
}
FLOAT_DTYPES = ("F32", "F16", "BF16")


class CheckpointError(ValueError):
    """A checkpoint file or directory is missing, corrupt, or does not match its config."""


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    file: str               # path of the safetensors file that holds it
    dtype: str              # safetensors dtype string, e.g. "F16", "I32"
    shape: tuple[int, ...]
    nbytes: int


class _DuplicateName(Exception):
    pass


def _no_duplicate_names(pairs: list[tuple[str, object]]) -> dict:
    out = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateName(key)
        out[key] = value
    return out


def read_safetensors_header(path: str) -> dict[str, TensorInfo]:
    """Parse and check one safetensors header without reading any tensor data."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: {size} bytes is too short to be a safetensors file "
                                      "(it must start with an 8-byte header length)")
            (header_len,) = struct.unpack("<Q", head)
            if header_len == 0 or header_len > MAX_HEADER_BYTES or header_len > size - 8:
                raise CheckpointError(
                    f"{path}: header length field says {header_len} bytes but the file has {size - 8} bytes after "
                    "it (limit 100 MiB): the file is truncated or not a safetensors file")
            raw = f.read(header_len)
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read ({error.strerror or error})") from None
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_names)
    except _DuplicateName as error:
        raise CheckpointError(f"{path}: the safetensors header names tensor {error.args[0]!r} twice; which one "
                              "is meant cannot be known (json would silently keep the last)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: the safetensors header is not valid JSON ({error}); "
                              "the file is corrupt or not a safetensors file") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header must be a JSON object, found {type(header).__name__}")

    data_size = size - 8 - header_len
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        where = f"{path}: tensor {name!r}"
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
            raise CheckpointError(f"{where}: header entry must have dtype, shape and data_offsets, found {entry!r}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in SAFETENSORS_DTYPES:
            raise CheckpointError(f"{where}: unsupported dtype {dtype!r}; expected one of {sorted(SAFETENSORS_DTYPES)}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise CheckpointError(f"{where}: shape must be a list of non-negative integers, found {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and o >= 0 for o in offsets) or offsets[0] > offsets[1]):
            raise CheckpointError(f"{where}: data_offsets must be [begin, end] with 0 <= begin <= end, found {offsets!r}")
        nbytes = math.prod(shape) * SAFETENSORS_DTYPES[dtype][1]
        if offsets[1] - offsets[0] != nbytes:
            raise CheckpointError(f"{where}: {dtype}{shape} needs {nbytes} bytes but data_offsets {offsets} span "
                                  f"{offsets[1] - offsets[0]}: the header is corrupt")
        if offsets[1] > data_size:
            raise CheckpointError(f"{where}: needs bytes up to {offsets[1]} of the data section, but the file holds "
                                  f"only {data_size}: the file is truncated")
        tensors[name] = TensorInfo(path, dtype, tuple(shape), nbytes)
    return tensors


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """What the config says a tensor must look like."""

    shape: tuple[int, ...]
    dtypes: tuple[str, ...]


def linear_names(config: ModelConfig) -> dict[str, tuple[int, int]]:
    """Every linear layer's checkpoint prefix -> (out_features N, in_features K), in model order.

    These are the decoder layers' products: what a quantization format may replace. The embedding, the norms,
    the routers and the lm_head are plain tensors (plain_tensor_specs)."""
    return dict(_module_tree(config)[0])


def linear_biases(config: ModelConfig) -> frozenset[str]:
    """The linear layers whose module has a bias (Qwen2-MoE's q/k/v): their `.bias` must be in the files."""
    return _module_tree(config)[1]


def plain_tensor_specs(config: ModelConfig) -> dict[str, TensorSpec]:
    """Tensors that are never quantized: embeddings, norms, the routers (and gates), lm_head."""
    return {name: TensorSpec(shape, FLOAT_DTYPES) for name, shape in _module_tree(config)[2]}


@functools.lru_cache(maxsize=16)
def _module_tree(config: ModelConfig):
    """The expected tensors, read off the model itself: built on the meta device (no memory, milliseconds),
    so a family's file is the only place that says what its checkpoint holds."""
    from minimoe.linear import Linear
    from minimoe.model import Transformer

    with torch.device("meta"):
        model = Transformer(config)
    linears, biased, in_linear = [], set(), set()
    for name, module in model.model.layers.named_modules(prefix="model.layers"):
        if isinstance(module, Linear):
            linears.append((name, (module.out_features, module.in_features)))
            in_linear.update((f"{name}.weight", f"{name}.bias"))
            if module.bias is not None:
                biased.add(name)
    plain = [(name, tuple(p.shape)) for name, p in model.named_parameters(remove_duplicate=False)
             if name not in in_linear and not (name == "lm_head.weight" and config.tie_word_embeddings)]
    return tuple(linears), frozenset(biased), tuple(plain)


class Checkpoint:
    """A validated, memory-mapped view of a checkpoint directory.

        ckpt = Checkpoint("Confinus-2x7B-AWQ")     # reads config + headers, validates, reads no tensor data
        ckpt.tensor("model.norm.weight")          # memory-mapped torch.Tensor
        ckpt.linear("model.layers.0.self_attn.q_proj")   # {"weight": ...} or {"qweight", "qzeros", "scales"}
    """

    def __init__(self, path: str | os.PathLike, *, validate: bool = True):
        self.path = os.fspath(path)
        if not os.path.isdir(self.path):
            raise CheckpointError(f"{self.path}: not a directory (expected a checkpoint directory with config.json "
                                  "and *.safetensors)")
        self.config: ModelConfig = load_config(self.path)
        self.files, self.tensors = self._read_headers()
        self._handles: dict[str, object] = {}
        if validate:
            self.validate()

    # ---- files ------------------------------------------------------------------------------------------
    def _read_headers(self) -> tuple[list[str], dict[str, TensorInfo]]:
        index_path = os.path.join(self.path, INDEX_FILE)
        if os.path.isfile(index_path):
            return self._read_index(index_path)
        single = os.path.join(self.path, SINGLE_FILE)
        files = [single] if os.path.isfile(single) else sorted(
            os.path.join(self.path, f) for f in os.listdir(self.path) if f.endswith(".safetensors"))
        if not files:
            raise CheckpointError(f"{self.path}: no {SINGLE_FILE}, no {INDEX_FILE} and no *.safetensors file; "
                                  "minimoe reads safetensors checkpoints only (never pickled .bin files)")
        tensors: dict[str, TensorInfo] = {}
        for file in files:
            for name, info in read_safetensors_header(file).items():
                if name in tensors:
                    raise CheckpointError(f"{file}: tensor {name!r} also appears in {tensors[name].file}")
                tensors[name] = info
        return files, tensors

    def _read_index(self, index_path: str) -> tuple[list[str], dict[str, TensorInfo]]:
        try:
            with open(index_path, encoding="utf-8") as f:
                index = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CheckpointError(f"{index_path}: cannot read the shard index ({error})") from None
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index_path}: expected an object with a 'weight_map' of tensor name -> file name")
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not os.path.isfile(os.path.join(self.path, f))]
        if missing:
            raise CheckpointError(f"{index_path}: shard file(s) listed in the index are missing: {', '.join(missing)}")
        headers = {f: read_safetensors_header(os.path.join(self.path, f)) for f in files}
        tensors: dict[str, TensorInfo] = {}
        for name, file in weight_map.items():
            if name not in headers[file]:
                raise CheckpointError(f"{index_path}: says {name!r} is in {file}, but that file does not hold it")
            tensors[name] = headers[file][name]
        for file, header in headers.items():
            extra = sorted(set(header) - set(weight_map))
            if extra:
                warnings.warn(f"{os.path.join(self.path, file)}: {len(extra)} tensor(s) not listed in {INDEX_FILE} "
                              f"are ignored, e.g. {extra[0]!r}", stacklevel=3)
        return [os.path.join(self.path, f) for f in files], tensors

    # ---- what the config expects ----------------------------------------------------------------------------
    def format_of(self, prefix: str):
        """The weight format (minimoe/formats) linear `prefix` is stored in: decided by what the files hold
        for it, not by lists in the config."""
        return formats.held_by(self.tensors, prefix)

    def is_quantized(self, prefix: str) -> bool:
        return self.format_of(prefix) is not formats.PLAIN

    def expected_specs(self) -> dict[str, TensorSpec]:
        specs = plain_tensor_specs(self.config)
        quant = self.config.quantization
        biased = linear_biases(self.config)
        for prefix, (n, k) in linear_names(self.config).items():
            # What the file holds decides; a linear missing altogether is reported in the config's format.
            fmt = self.format_of(prefix)
            if fmt is formats.PLAIN and quant is not None and f"{prefix}.weight" not in self.tensors:
                fmt = formats.FORMATS[quant.method]
            group = quant.group_size_for(k) if quant else self._infer_group_size(prefix, k)
            specs.update(fmt.tensor_specs(prefix, n, k, group))
            if prefix in biased or f"{prefix}.bias" in self.tensors:   # the family's, or one the file adds
                specs[f"{prefix}.bias"] = TensorSpec((n,), FLOAT_DTYPES)
        return specs

    def _check_layer_count(self) -> None:
        """The files' decoder layers must be exactly 0..num_hidden_layers-1: checked on the names first, so a
        wrong count fails at once (a config asking for 10^9 layers would otherwise build 10^9 expectations)."""
        found = set()
        for name in self.tensors:
            if name.startswith("model.layers."):
                index = name.split(".", 3)[2]
                if index.isdigit():
                    found.add(int(index))
        want = self.config.num_hidden_layers
        if found and (max(found) + 1 != want or len(found) != want):
            holes = sorted(set(range(max(found) + 1)) - found)
            detail = f" (layers {', '.join(map(str, holes[:8]))} missing)" if holes else ""
            raise CheckpointError(f"{self.path}: config.json says num_hidden_layers = {want}, but the files hold "
                                  f"layers 0..{max(found)} ({len(found)} layers){detail}")
        if self.config.is_moe:  # the same for the experts: 10^9 of them would build 10^9 x 3 expectations
            experts = {int(parts[5]) for parts in (n.split(".") for n in self.tensors)   # <layer>.<block>.experts.e
                       if len(parts) > 5 and parts[4] == "experts" and parts[5].isdigit()}
            E = self.config.num_local_experts
            if experts and (max(experts) + 1 != E or len(experts) != E):
                raise CheckpointError(f"{self.path}: config.json says num_local_experts = {E}, but the files hold "
                                      f"experts 0..{max(experts)} ({len(experts)} experts)")

    def _infer_group_size(self, prefix: str, in_features: int) -> int:
        scales = self.tensors.get(f"{prefix}.scales")
        if scales is None or len(scales.shape) != 2 or scales.shape[0] == 0:
            return -1
        return in_features // scales.shape[0] if in_features % scales.shape[0] == 0 else -1

    def group_size(self, prefix: str) -> int:
        k = linear_names(self.config)[prefix][1]
        quant = self.config.quantization
        return quant.group_size_for(k) if quant else self._infer_group_size(prefix, k)

    def validate(self) -> None:
        """Raise one CheckpointError listing every problem; warn about tensors the model will not use."""
        self._check_layer_count()
        specs = self.expected_specs()
        missing = [name for name in specs if name not in self.tensors]
        problems = []
        if missing:
            shown = ", ".join(missing[:12]) + (f", ... ({len(missing) - 12} more)" if len(missing) > 12 else "")
            problems.append(f"{len(missing)} expected tensor(s) missing: {shown}")
        for name, spec in specs.items():
            info = self.tensors.get(name)
            if info is None:
                continue
            if info.shape != spec.shape:
                problems.append(f"{name} in {os.path.basename(info.file)}: expected shape {list(spec.shape)}, "
                                f"found {list(info.shape)}")
            if info.dtype not in spec.dtypes:
                problems.append(f"{name} in {os.path.basename(info.file)}: expected dtype {'/'.join(spec.dtypes)}, "
                                f"found {info.dtype}")
        prefixes = linear_names(self.config)
        if self.config.quantization is not None and not any(self.is_quantized(p) for p in prefixes):
            problems.append("config.json (or quant_config.json) declares AWQ int4 quantization, but every linear "
                            "layer in the files is a plain .weight tensor; remove the quantization settings or "
                            "quantize the checkpoint (minimoe quantize)")
        if self.config.quantization is None and any(n.endswith(".qweight") for n in self.tensors):
            problems.append("the files hold AWQ tensors (.qweight) but config.json has no quantization_config "
                            "and there is no quant_config.json")
        halves = {}
        for name in specs:
            info = self.tensors.get(name)
            if info is not None and info.dtype in ("F16", "BF16"):
                halves.setdefault(info.dtype, name)
        if len(halves) == 2:  # both are 2 bytes per value: a mislabeled dtype changes every value, not the size
            problems.append(f"tensors in both 16-bit float formats, e.g. {halves['F16']} (F16) and "
                            f"{halves['BF16']} (BF16); a checkpoint is written in one of them, so one label is wrong")
        if problems:
            raise CheckpointError(f"{self.path}: checkpoint does not match its config.json:\n  - "
                                  + "\n  - ".join(problems))
        extra = sorted(set(self.tensors) - set(specs))
        if extra:
            warnings.warn(f"{self.path}: {len(extra)} unexpected tensor(s) will be ignored, e.g. {extra[0]!r}",
                          stacklevel=2)

    # ---- reading tensors --------------------------------------------------------------------------------------
    def tensor(self, name: str) -> torch.Tensor:
        """The tensor `name`, memory-mapped from its file (bytes are read on first touch)."""
        info = self.tensors.get(name)
        if info is None:
            raise CheckpointError(f"{self.path}: no tensor named {name!r}")
        from safetensors import SafetensorError, safe_open

        try:
            handle = self._handles.get(info.file)
            if handle is None:
                handle = self._handles[info.file] = safe_open(info.file, framework="pt")
            return handle.get_tensor(name)
        except (SafetensorError, OSError) as error:
            raise CheckpointError(f"{info.file}: cannot read tensor {name!r} ({error})") from None

    def linear(self, prefix: str) -> dict[str, torch.Tensor]:
        """One linear layer's tensors by suffix, in its format: {"weight"} or {"qweight", "qzeros", "scales"},
        plus "bias" if present."""
        out = {n: self.tensor(f"{prefix}.{n}") for n in self.format_of(prefix).suffixes}
        if f"{prefix}.bias" in self.tensors:
            out["bias"] = self.tensor(f"{prefix}.bias")
        return out

    def close(self) -> None:
        self._handles.clear()

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    # ---- accounting (for `minimoe inspect` and the bandwidth floor) ----------------------------------------------
    def bytes_on_disk(self) -> int:
        return sum(os.path.getsize(f) for f in self.files)

    def stats(self) -> dict:
        """Parameter counts and bytes: total, per expert, active and read per decoded token."""
        c = self.config
        linears = linear_names(c)

        def linear_bytes(prefix: str) -> int:
            return sum(info.nbytes for name, info in self.tensors.items() if name.startswith(prefix + "."))

        params = {name: math.prod(info.shape) for name, info in self.tensors.items()}
        total = 0
        for name, info in self.tensors.items():
            if name.endswith(".qweight"):
                total += math.prod(info.shape) * 8   # 8 int4 weights per int32
            elif not name.endswith((".qzeros", ".scales")):
                total += params[name]
        # ONE expert, over all layers (all experts of a layer have equal shapes): expert 0's linear layers.
        expert_zero = [(p, nk) for p, nk in linears.items() if ".experts.0." in p]
        per_expert_params = sum(n * k for _, (n, k) in expert_zero)
        expert_bytes = sum(linear_bytes(p) for p, _ in expert_zero)
        inactive_experts = c.num_local_experts - c.num_experts_per_tok if c.is_moe else 0
        active = total - inactive_experts * per_expert_params
        # Bytes a decoded token must read: all of it except the embedding table (one row is read) and the
        # experts the router did not pick. This is the bandwidth floor's numerator.
        embed = self.tensors["model.embed_tokens.weight"]
        row_bytes = embed.nbytes // max(1, embed.shape[0])
        all_bytes = sum(info.nbytes for info in self.tensors.values())
        read = all_bytes - embed.nbytes + row_bytes - inactive_experts * expert_bytes
        if c.tie_word_embeddings:
            read += embed.nbytes - row_bytes  # the tied table is also the lm_head: read whole
        quantized = sum(1 for p in linears if self.is_quantized(p))
        return {
            "model_type": c.model_type,
            "params_total": total,
            "params_per_expert": per_expert_params,
            "params_active_per_token": active,
            "linears_quantized": quantized,
            "linears_total": len(linears),
            "bytes_on_disk": self.bytes_on_disk(),
            "bytes_tensors": all_bytes,
            "bytes_read_per_token": read,
        }
