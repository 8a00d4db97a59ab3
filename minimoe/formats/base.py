"""What a weight format is: how one linear layer's product is stored in a checkpoint and run.

A format owns four things, and nothing outside its file knows them:

    parse(q, where)              config.json's quantization_config (or quant_config.json) -> QuantConfig,
                                 refusing what the format cannot read, with one clear sentence
    tensor_specs(prefix, N, K, group_size) -> {name: TensorSpec}
                                 the tensors one linear layer [N out, K in] has in the files
    build(tensors, group_size, dtype, device, name) -> nn.Module
                                 the module that computes the product from them (its forward is the format's
                                 reference in plain PyTorch; an engine may turn its kernel on)
    suffixes                     the tensor names' endings (".qweight", ...) by which a file is recognised

The registry (minimoe/formats/__init__.py) is keyed by quantization_config's `quant_method`; "plain" is the
unquantized weight, which every format's checkpoint may still hold for some layers.
"""

from __future__ import annotations

import dataclasses
from typing import Callable


@dataclasses.dataclass(frozen=True)
class Format:
    key: str                            # quant_method ("awq"), or "plain"
    summary: str
    suffixes: tuple[str, ...]           # one linear's tensors: f"{prefix}.{suffix}"; the first one identifies it
    parse: Callable | None              # (q: dict, where: str) -> QuantConfig; None for plain
    tensor_specs: Callable              # (prefix, out_features, in_features, group_size) -> {name: TensorSpec}
    build: Callable                     # (tensors: {suffix: Tensor}, group_size, dtype, device, name) -> nn.Module
