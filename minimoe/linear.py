"""The two kinds of linear layer a checkpoint can hold; the model code cannot tell them apart.

    Linear      y = x W^T (+ b) with W [out, in] in the model's dtype         (fp16/bf16/fp32 checkpoints)
    AWQLinear   y = x @ dequant(qweight, qzeros, scales) (+ b), int4 weights  (AWQ checkpoints)

This is the only place where model code meets the kernels: AWQLinear calls `minimoe.ops.awq_gemm`, which
runs the compiled CPU/CUDA kernel for the tensors' device when the extension has one, else the pure-PyTorch
reference in `minimoe.awq`. Weights are buffers/parameters without gradients: minimoe is an inference engine,
but nothing here stops a reader from making them trainable.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from minimoe import awq, ops


class Linear(nn.Module):
    """nn.Linear without the random initialisation (a 7B model's init would take minutes, then be overwritten)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, *, dtype=None, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype, device=device),
                                   requires_grad=False)
        self.bias = (nn.Parameter(torch.empty(out_features, dtype=dtype, device=device), requires_grad=False)
                     if bias else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.dtype == x.dtype:
            return F.linear(x, self.weight, self.bias)
        # A weight kept in its stored dtype (the loader does this for an fp16 lm_head on the CPU): the
        # result is F.linear(x, weight.to(x.dtype)), without the converted copy.
        y = ops.linear_stored(x, self.weight)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        stored = f", stored={str(self.weight.dtype).replace('torch.', '')}"
        return f"in={self.in_features}, out={self.out_features}, bias={self.bias is not None}{stored}"


class AWQLinear(nn.Module):
    """An AWQ int4 linear layer, holding the checkpoint's tensors as they are (no dequantized copy, ever).

    qweight [K, N/8] int32, qzeros [K/G, N/8] int32, scales [K/G, N] fp16, bias [N] or None.
    Activations keep their dtype: the kernel accumulates in fp32 and returns x's dtype.
    """

    def __init__(self, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int,
                 bias: torch.Tensor | None = None, *, name: str = ""):
        super().__init__()
        self.in_features, self.out_features = awq.check_awq_tensors(qweight, qzeros, scales, group_size,
                                                                    bias=bias, name=name)
        self.group_size = group_size
        self.register_buffer("qweight", qweight)
        self.register_buffer("qzeros", qzeros)
        self.register_buffer("scales", scales)
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = ops.awq_gemm(x, self.qweight, self.qzeros, self.scales, self.group_size)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """W [N, K] as an nn.Linear would hold it (for tests and analysis; the forward never builds this)."""
        return awq.dequantize(self.qweight, self.qzeros, self.scales, self.group_size, dtype=dtype).T.contiguous()

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, group_size={self.group_size}, "
                f"bias={self.bias is not None}, backend={ops.backend(self.qweight.device)}")
