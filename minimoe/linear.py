"""The two kinds of linear layer a checkpoint can hold; the model code cannot tell them apart.

    Linear      y = x W^T (+ b) with W [out, in] in the model's dtype         (fp16/bf16/fp32 checkpoints)
    AWQLinear   y = x @ dequant(qweight, qzeros, scales) (+ b), int4 weights  (AWQ checkpoints)

    linear_many([x1, x2, ...], [layer1, layer2, ...]) = [layer1(x1), layer2(x2), ...] in fewer kernel calls

This is the only place where the reference model meets a kernel, and it says so: each layer has a `kernel` flag
(shown by `print(model)`). kernel=False computes the product in plain PyTorch (`minimoe.awq.awq_linear_reference`
for int4, `F.linear` of the converted weight for a weight kept in its stored dtype); kernel=True calls
`minimoe.ops.awq_gemm` / `minimoe.ops.linear_stored`, which run the compiled CPU/CUDA kernel for the tensors'
device when the extension has one (else the same PyTorch). The engine sets the flag (minimoe/engines): the
`reference` engine turns it off, every other engine on. linear_many (for the native engine) hands a list of
AWQLinear products to `minimoe.ops.awq_gemm_many`.
Weights are buffers/parameters without gradients: minimoe is an inference engine, but nothing here stops a
reader from making them trainable.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from minimoe import awq, ops


class Linear(nn.Module):
    """nn.Linear without the random initialisation (a 7B model's init would take minutes, then be overwritten)."""

    kernel = False  # the plain PyTorch product until an engine turns the kernel on (minimoe/engines)

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
        # result is F.linear(x, weight.to(x.dtype)); the kernel computes it without the converted copy.
        y = ops.linear_stored(x, self.weight) if self.kernel else F.linear(x, self.weight.to(x.dtype))
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        stored = f", stored={str(self.weight.dtype).replace('torch.', '')}"
        # kernel only matters for a weight kept in a dtype other than the input's (then: ops.linear_stored)
        return f"in={self.in_features}, out={self.out_features}, bias={self.bias is not None}{stored}, kernel={self.kernel}"


class AWQLinear(nn.Module):
    """An AWQ int4 linear layer, holding the checkpoint's tensors as they are (no dequantized copy, ever).

    qweight [K, N/8] int32, qzeros [K/G, N/8] int32, scales [K/G, N] fp16, bias [N] or None.
    Activations keep their dtype: the kernel accumulates in fp32 and returns x's dtype.
    """

    kernel = False  # the plain PyTorch product until an engine turns the kernel on (minimoe/engines)

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
        if self.kernel:
            return self.add_bias(ops.awq_gemm(x, *self.awq_weight))   # the compiled kernel, where one exists
        return self.add_bias(awq.awq_linear_reference(x, *self.awq_weight))  # dequantize, then x @ W

    @property
    def awq_weight(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """(qweight, qzeros, scales, group_size): what `ops.awq_gemm` and `ops.awq_gemm_many` take."""
        # Read from the buffer dict itself: `self.qweight` goes through nn.Module.__getattr__, about 1 us per
        # name, and a CPU decode step asks ~80 layers for their weights (measured 8 us -> 1 us for three layers).
        buffers = self._buffers
        return buffers["qweight"], buffers["qzeros"], buffers["scales"], self.group_size

    def add_bias(self, y: torch.Tensor) -> torch.Tensor:
        """The kernel's x @ W plus this layer's bias, if it has one."""
        bias = self._buffers["bias"]  # as in awq_weight
        return y if bias is None else y + bias.to(y.dtype)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """W [N, K] as an nn.Linear would hold it (for tests and analysis; the forward never builds this)."""
        return awq.dequantize(self.qweight, self.qzeros, self.scales, self.group_size, dtype=dtype).T.contiguous()

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, group_size={self.group_size}, "
                f"bias={self.bias is not None}, "
                f"kernel={ops.awq_backend(self.qweight.device) if self.kernel else 'off (PyTorch reference)'}")


def linear_many(xs: torch.Tensor | list[torch.Tensor], layers) -> list[torch.Tensor]:
    """[layer(x) for x, layer in zip(xs, layers)]; xs may be one tensor that every layer takes.

    The same values, bit for bit. Only the number of kernel calls changes: the AWQLinear layers among them go
    to the kernel together (`ops.awq_gemm_many`), which on the CPU runs a decode step's small products in one
    parallel region. A layer's q/k/v projections, or both experts' w1 and w3, are each a few hundred KB of
    int4 at the mid-size shapes, too little to keep two cores busy one call at a time.
    """
    layers = list(layers)
    if isinstance(xs, torch.Tensor):
        if xs.dim() > 2:  # one input for all: flatten it to the kernels' [M, K] once, not once per layer
            return [y.view(*xs.shape[:-1], y.shape[-1]) for y in linear_many(xs.reshape(-1, xs.shape[-1]), layers)]
        xs = [xs] * len(layers)
    xs = list(xs)
    # Only layers whose forward is AWQLinear.forward with the kernel on (a subclass or an edit runs its own)
    quantized = [i for i, layer in enumerate(layers) if type(layer).forward is AWQLinear.forward and layer.kernel]
    ys: list[torch.Tensor | None] = [None] * len(layers)
    if len(quantized) > 1:
        products = ops.awq_gemm_many([xs[i] for i in quantized], [layers[i].awq_weight for i in quantized])
        for i, y in zip(quantized, products):
            ys[i] = layers[i].add_bias(y)
    return [y if y is not None else layer(x) for x, layer, y in zip(xs, layers, ys)]
