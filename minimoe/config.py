"""ModelConfig: what the model needs to know, read from a Hugging Face config.json (+ quant_config.json).

The keys every family shares (sizes, heads, RoPE, dtype, special tokens) are read here; each family's own keys
(experts, top-k, biases, shared experts) by its file in minimoe/families, which is also the list of the
model_types minimoe runs (mixtral, mistral, qwen2_moe).

config.json has been written by several generations of tooling, so a few keys have two spellings:
    torch_dtype (older)            | dtype (transformers 5.x)
    rope_theta (older)             | rope_parameters: {rope_type: "default", rope_theta: ...} (newer)
    quant_config.json (AutoAWQ)    | quantization_config inside config.json (transformers)
and AutoAWQ's quant_config.json says w_bit/q_group_size where transformers says bits/group_size.

Nothing is guessed: rope_theta is 1e4 in Confinus-2x7B and 1e6 in Mixtral-8x7B, so a missing theta is an
error, not a default. Every error names the file, the key, what was expected and what was found.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ConfigError(ValueError):
    """config.json (or quant_config.json) is missing, malformed, or describes something minimoe can't run."""


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """AWQ int4 "GEMM" layout (see minimoe/awq.py). group_size -1 means one group per input column (G = K)."""

    method: str = "awq"
    bits: int = 4
    group_size: int = 128
    zero_point: bool = True
    version: str = "gemm"
    modules_to_not_convert: tuple[str, ...] = ()

    def group_size_for(self, in_features: int) -> int:
        return in_features if self.group_size == -1 else self.group_size


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    model_type: str                     # a key of minimoe.families.FAMILIES: "mixtral", "mistral", "qwen2_moe"
    vocab_size: int
    hidden_size: int                    # d_model
    intermediate_size: int              # per expert (mixtral), of the MLP (mistral, qwen2_moe's dense layers)
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int            # < num_attention_heads: grouped-query attention
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    sliding_window: int | None = None   # None: full causal attention
    num_local_experts: int = 0          # MoE families: E
    num_experts_per_tok: int = 0        # MoE families: k (0: a dense model)
    attention_bias: bool = False        # biases on q/k/v (qwen2_moe)
    tie_word_embeddings: bool = False
    dtype: str = "float32"              # the checkpoint's activation dtype (a key of DTYPES)
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    quantization: QuantConfig | None = None
    options: Any = None                 # the family's own settings (a frozen dataclass of its file), or None

    @property
    def is_moe(self) -> bool:
        return self.num_experts_per_tok > 0

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def kv_groups(self) -> int:
        """How many query heads share one key/value head."""
        return self.num_attention_heads // self.num_key_value_heads

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config.json", quant_raw: dict | None = None,
                  quant_source: str = "quant_config.json") -> "ModelConfig":
        return _parse(raw, source, quant_raw, quant_source)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_config(path: str | os.PathLike) -> ModelConfig:
    """Read `path`/config.json (and `path`/quant_config.json when present); `path` may also be the json file."""
    path = os.fspath(path)
    config_path = path if path.endswith(".json") else os.path.join(path, "config.json")
    raw = _read_json(config_path)
    quant_path = os.path.join(os.path.dirname(config_path), "quant_config.json")
    quant_raw = _read_json(quant_path) if os.path.isfile(quant_path) else None
    return _parse(raw, config_path, quant_raw, quant_path)


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: file not found (a checkpoint directory needs a config.json)")
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a JSON object at the top level, found {type(raw).__name__}")
    return raw


class ConfigReader:
    """config.json's keys, read with one clear error each: what the family files use for their own keys."""

    def __init__(self, raw: dict, source: str):
        self.raw, self.source = raw, source

    def fail(self, message: str):
        raise ConfigError(f"{self.source}: {message}")

    def typed(self, value, kind, key: str):
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            self.fail(f"{key!r} must be an integer, found {value!r}")
        if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not math.isfinite(value)):
            self.fail(f"{key!r} must be a finite number, found {value!r}")
        return kind(value)

    def need(self, key: str, kind=int):
        if self.raw.get(key) is None:
            self.fail(f"missing required key {key!r}")
        return self.typed(self.raw[key], kind, key)

    def positive(self, key: str, default: int | None = None) -> int:
        """An integer > 0; required unless a default is given."""
        value = self.need(key) if default is None or self.raw.get(key) is not None else default
        if value <= 0:
            self.fail(f"{key!r} must be positive, found {value}")
        return value

    def flag(self, key: str, default: bool) -> bool:
        return _boolean(self.raw.get(key, default), key, self.source)

    def int_list(self, key: str, default: list) -> list[int]:
        value = self.raw.get(key, default)
        if value is None:
            return list(default)
        if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
            self.fail(f"{key!r} must be a list of integers, found {value!r}")
        return value


def _parse(raw: dict, source: str, quant_raw: dict | None, quant_source: str) -> ModelConfig:
    from minimoe.families import FAMILIES   # the family files build on model.py, which imports this file

    reader = ConfigReader(raw, source)
    need, _typed = reader.need, reader.typed
    model_type = raw.get("model_type")
    if not isinstance(model_type, str) or model_type not in FAMILIES:
        arch = raw.get("architectures")
        raise ConfigError(
            f"{source}: unsupported model_type {model_type!r} (architectures {arch!r}); "
            f"minimoe runs {', '.join(FAMILIES)} checkpoints (minimoe/families)"
        )

    hidden = need("hidden_size")
    heads = need("num_attention_heads")
    kv_heads = need("num_key_value_heads")
    for key, value in (("hidden_size", hidden), ("num_attention_heads", heads), ("num_key_value_heads", kv_heads)):
        if value <= 0:  # checked here too: head_dim below divides by the head count
            raise ConfigError(f"{source}: {key!r} must be positive, found {value}")
    head_dim = raw.get("head_dim")
    head_dim = hidden // heads if head_dim is None else _typed(head_dim, int, "head_dim")

    # rope_theta: older configs at the top level, newer ones inside rope_parameters. Never a default.
    rope = raw.get("rope_parameters") or {}
    if not isinstance(rope, dict):
        raise ConfigError(f"{source}: 'rope_parameters' must be an object, found {rope!r}")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default" or raw.get("rope_scaling"):
        raise ConfigError(f"{source}: RoPE scaling {rope_type!r}/{raw.get('rope_scaling')!r} is not supported; "
                          "minimoe implements plain RoPE (rope_type 'default')")
    if "rope_theta" in rope:
        theta = _typed(rope["rope_theta"], float, "rope_parameters.rope_theta")
    elif raw.get("rope_theta") is not None:
        theta = _typed(raw["rope_theta"], float, "rope_theta")
    else:
        raise ConfigError(f"{source}: no rope_theta (nor rope_parameters.rope_theta); minimoe will not guess it "
                          "(Confinus-2x7B uses 1e4, Mixtral-8x7B 1e6)")

    dtype = raw.get("dtype", raw.get("torch_dtype")) or "float32"
    if isinstance(dtype, str):
        dtype = dtype.removeprefix("torch.")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ConfigError(f"{source}: dtype {dtype!r} is not supported; expected one of {sorted(DTYPES)}")

    sliding = raw.get("sliding_window")
    sliding = None if sliding is None else _typed(sliding, int, "sliding_window")

    fields = dict(
        model_type=model_type,
        vocab_size=need("vocab_size"),
        hidden_size=hidden,
        intermediate_size=need("intermediate_size"),
        num_hidden_layers=need("num_hidden_layers"),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        rms_norm_eps=need("rms_norm_eps", float),
        rope_theta=theta,
        max_position_embeddings=need("max_position_embeddings"),
        sliding_window=sliding,
        tie_word_embeddings=_boolean(raw.get("tie_word_embeddings", False), "tie_word_embeddings", source),
        dtype=dtype,
        bos_token_id=_token_id(raw.get("bos_token_id", 1), "bos_token_id", source),
        eos_token_id=_token_id(_first(raw.get("eos_token_id", 2)), "eos_token_id", source),
        quantization=_parse_quant(raw, source, quant_raw, quant_source),
    )
    fields.update(FAMILIES[model_type].read_config(reader))   # experts, top-k, biases, the family's options
    config = ModelConfig(**fields)
    _check_consistent(config, source)
    return config


def _boolean(value, key: str, source: str) -> bool:
    """JSON true/false only: the string "false" is truthy in Python, and a tied embedding by accident is a
    silently different model."""
    if not isinstance(value, bool):
        raise ConfigError(f"{source}: {key!r} must be true or false, found {value!r}")
    return value


def _token_id(value, key: str, source: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{source}: {key!r} must be an integer token id (or null), found {value!r}")
    return value


def _first(value):
    """eos_token_id may be a list in newer configs; generation stops on the first one listed here."""
    return value[0] if isinstance(value, list) and value else value


def _check_consistent(c: ModelConfig, source: str) -> None:
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "max_position_embeddings"):
        if getattr(c, key) <= 0:
            raise ConfigError(f"{source}: {key!r} must be positive, found {getattr(c, key)}")
    if c.num_attention_heads % c.num_key_value_heads:
        raise ConfigError(f"{source}: num_attention_heads ({c.num_attention_heads}) must be a multiple of "
                          f"num_key_value_heads ({c.num_key_value_heads})")
    if c.head_dim % 2:
        raise ConfigError(f"{source}: head_dim must be even for RoPE, found {c.head_dim}")
    if c.is_moe and not 1 <= c.num_experts_per_tok <= c.num_local_experts:
        raise ConfigError(f"{source}: num_experts_per_tok must be in 1..num_local_experts "
                          f"({c.num_local_experts}), found {c.num_experts_per_tok}")
    if c.sliding_window is not None and c.sliding_window <= 0:
        raise ConfigError(f"{source}: sliding_window must be positive or null, found {c.sliding_window}")
    for key in ("bos_token_id", "eos_token_id"):
        value = getattr(c, key)
        if value is not None and not 0 <= value < c.vocab_size:
            raise ConfigError(f"{source}: {key!r} must be a token id in 0..{c.vocab_size - 1} (vocab_size), "
                              f"found {value}")
    if c.rms_norm_eps <= 0 or c.rope_theta <= 0:
        raise ConfigError(f"{source}: rms_norm_eps and rope_theta must be positive, found "
                          f"{c.rms_norm_eps} and {c.rope_theta}")
    if c.rope_theta < 1:  # frequencies theta^(-2j/D) then grow with j, and a tiny theta overflows them to inf
        raise ConfigError(f"{source}: rope_theta must be at least 1 (released models use 1e4 to 1e6), "
                          f"found {c.rope_theta}")


def _check_same_quantization(q: dict, where: str, other: dict, other_source: str) -> None:
    """config.json's quantization_config and AutoAWQ's quant_config.json state the same facts in two spellings;
    when both are there they must agree (which one "won" would otherwise be a silent choice)."""
    for ours, theirs in (("group_size", "q_group_size"), ("bits", "w_bit"), ("zero_point", "zero_point")):
        a = q.get(ours, q.get(theirs))
        b = other.get(theirs, other.get(ours))
        if a is not None and b is not None and a != b:
            raise ConfigError(f"{where} says {ours} = {a!r} but {other_source} says {theirs} = {b!r}; "
                              f"expected the two files to agree")
    a, b = q.get("version"), other.get("version")
    if a is not None and b is not None and str(a).lower() != str(b).lower():
        raise ConfigError(f"{where} says version {a!r} but {other_source} says {b!r}; expected them to agree")


def _parse_quant(raw: dict, source: str, quant_raw: dict | None, quant_source: str) -> QuantConfig | None:
    """Quantization settings from config.json's quantization_config, else from AutoAWQ's quant_config.json."""
    if raw.get("quantization_config") is not None:
        q, where = raw["quantization_config"], f"{source} (quantization_config)"
    elif quant_raw is not None:
        q, where = quant_raw, quant_source
    else:
        return None
    if not isinstance(q, dict):
        raise ConfigError(f"{where}: expected an object, found {q!r}")
    from minimoe import formats   # each format checks its own settings (minimoe/formats)

    quant = formats.for_method(str(q.get("quant_method", "awq")).lower(), where).parse(q, where)
    if q is not quant_raw and isinstance(quant_raw, dict):   # what is unsupported is said first, then disagreement
        _check_same_quantization(q, where, quant_raw, quant_source)
    return quant
