"""Weight formats, by quantization_config's quant_method. Adding one = its own file here + one line in FORMATS.

    key     file          one linear layer [N out, K in] in the files                 module
    plain   plain.py      .weight [N, K] fp32/fp16/bf16                                minimoe.linear.Linear
    awq     awq_gemm.py   .qweight [K, N/8] i32, .qzeros [K/G, N/8] i32, .scales f16   minimoe.linear.AWQLinear

Which format a linear layer is in is decided by what the files hold for it (a checkpoint may leave layers
plain: modules_to_not_convert), never by a list in the config. What a format owns is in base.py; the walk-
through is docs/extending.md.
"""

from __future__ import annotations

from minimoe.formats import awq_gemm, plain
from minimoe.formats.base import Format

FORMATS: dict[str, Format] = {fmt.key: fmt for fmt in (
    plain.FORMAT,
    awq_gemm.FORMAT,
)}
PLAIN = FORMATS["plain"]


def for_method(method: str, where: str) -> Format:
    """The quantized format named by quant_method, or one clear error listing those minimoe reads."""
    fmt = FORMATS.get(method)
    if fmt is None or fmt is PLAIN:
        from minimoe.config import ConfigError

        known = ", ".join(f"{k} ({f.summary})" for k, f in FORMATS.items() if f is not PLAIN)
        raise ConfigError(f"{where}: quantization method {method!r} is not supported; minimoe reads {known}")
    return fmt


def held_by(tensor_names, prefix: str) -> Format:
    """The format the files hold linear `prefix` in: the quantized one whose first tensor is there, else plain."""
    for fmt in FORMATS.values():
        if fmt is not PLAIN and f"{prefix}.{fmt.suffixes[0]}" in tensor_names:
            return fmt
    return PLAIN
