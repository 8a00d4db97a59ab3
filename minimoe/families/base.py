"""What a model family is: how its config.json maps to the model's blocks.

Every family minimoe runs is a decoder-only transformer with RMSNorm, RoPE and grouped-query attention
(minimoe/model.py); families differ in two places, and a family file says exactly those two things:

    read_config(reader)   its own config.json keys -> ModelConfig fields (experts, top-k, biases, options)
    feed_forward(config, layer_index, dtype) -> (name, module)
                          each layer's feed-forward block and the name it has in the checkpoint
                          ("block_sparse_moe" in Mixtral, "mlp" in Mistral and Qwen2-MoE)

Which tensors a checkpoint must hold is not written anywhere else: minimoe/checkpoint.py builds the model on
the meta device (no memory, no time) and reads the names and shapes off its module tree.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch.nn as nn


@dataclasses.dataclass(frozen=True)
class Family:
    model_type: str                 # config.json's "model_type"
    name: str                       # for people: "Mixtral", "Qwen2-MoE"
    architecture: str               # transformers' class, the reference it is tested against
    summary: str                    # one line: what its layers are
    read_config: Callable           # (config.ConfigReader) -> dict of ModelConfig fields
    feed_forward: Callable[..., tuple[str, nn.Module]]   # (config, layer_index, dtype) -> (name, module)
