"""AWQ int4, AutoAWQ's "GEMM" layout (Lin et al., 2023, arXiv:2306.00978): what Confinus-2x7B-AWQ holds.

Per linear layer [N out, K in], group size G (docs/awq-format.md, minimoe/awq.py for the bit layout):
    qweight [K, N/8] int32   eight 4-bit codes per int32, in AWQ's interleaved order
    qzeros  [K/G, N/8] int32 the zero point of each group, packed the same way
    scales  [K/G, N] fp16    w = (code - zero) * scale
The module is minimoe.linear.AWQLinear; its reference product is minimoe.awq.awq_linear_reference.
"""

from __future__ import annotations

from minimoe.formats.base import Format


def parse(q: dict, where: str):
    from minimoe.config import ConfigError, QuantConfig

    bits = q.get("bits", q.get("w_bit"))
    if bits != 4:
        raise ConfigError(f"{where}: {bits!r}-bit AWQ is not supported; expected bits/w_bit = 4")
    version = str(q.get("version", "gemm")).lower()
    if version != "gemm":
        raise ConfigError(f"{where}: AWQ version {version!r} is not supported; minimoe reads the 'gemm' layout "
                          "(qweight [K, N/8]); convert gemv/gemv_fast/marlin/exllama checkpoints first")
    group = q.get("group_size", q.get("q_group_size"))
    if isinstance(group, bool) or not isinstance(group, int) or not (group > 0 or group == -1):
        raise ConfigError(f"{where}: group_size/q_group_size must be a positive integer or -1, found {group!r}")
    zero_point = q.get("zero_point", True)
    if zero_point is not True:
        raise ConfigError(f"{where}: zero_point={zero_point!r} is not supported; AWQ GEMM checkpoints use zero points")
    skip = q.get("modules_to_not_convert") or ()
    return QuantConfig(group_size=group, modules_to_not_convert=tuple(skip))


def tensor_specs(prefix: str, out_features: int, in_features: int, group_size: int) -> dict:
    from minimoe.checkpoint import TensorSpec

    groups = in_features // group_size if group_size > 0 and in_features % group_size == 0 else -1
    return {
        f"{prefix}.qweight": TensorSpec((in_features, out_features // 8), ("I32",)),
        f"{prefix}.qzeros": TensorSpec((groups, out_features // 8), ("I32",)),
        f"{prefix}.scales": TensorSpec((groups, out_features), ("F16",)),   # AutoAWQ writes fp16 scales
    }


def build(tensors: dict, group_size: int, dtype, device, name: str):
    from minimoe.linear import AWQLinear

    bias = tensors["bias"].to(device=device, dtype=dtype) if "bias" in tensors else None
    return AWQLinear(*(tensors[t].to(device) for t in ("qweight", "qzeros", "scales")), group_size=group_size,
                     bias=bias, name=name)


FORMAT = Format("awq", "AWQ int4, GEMM layout: qweight/qzeros [., N/8] int32, scales fp16",
                ("qweight", "qzeros", "scales"), parse, tensor_specs, build)
