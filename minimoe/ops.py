"""The one door to minimoe's native extension (`minimoe._C`).

Everything that may run a compiled kernel goes through this module. The int4 ops and linear_stored still
work without the extension (they fall back to the pure-PyTorch spec in `minimoe.awq` / `F.linear`); the three
fused decode ops (rms_norm, decode_attention, decode_layer) have no fallback: their callers (the `native`
engine, minimoe/engines/native.py) ask `has_fused_ops` / `has_fused_layer` first and otherwise run the Python.

    awq_gemm(x, qweight, qzeros, scales, group_size)   y = x @ W  for an AWQ int4 weight (the hot op)
    awq_gemm_many(xs, weights)                          several of those in one kernel call
    awq_unpack(packed)                                  packed int32 words -> uint8 codes
    rms_norm(x, weight, eps)                            RMSNorm in one call (CPU decode; model.RMSNorm is the spec)
    decode_attention(q, k, v, cos, sin, ...)            one new token's RoPE + cache write + attention in one call
    decode_layer(x, cos, sin, mask, ...)                a whole decoder layer's decode step in one call (CPU)
    awq_backend(device)                                 "cuda" | "cpu" | "reference": who runs awq_gemm there
    kernels(device)                                     {op: True/False}: which ops have a kernel there
    build_info()                                        how the extension was built, or why it did not load

The kernels are registered with the torch dispatcher (`torch.ops.minimoe.*`), so one op name reaches the
CPU or the CUDA kernel depending on the tensors' device; shape-only "fake" implementations are registered
below so that the ops also trace under torch.compile.
"""

from __future__ import annotations

import warnings

import torch

from minimoe import awq

try:  # The extension is optional: a failed build must never make the package unusable.
    from minimoe import _C  # noqa: F401  (importing it registers torch.ops.minimoe.*)

    _IMPORT_ERROR: str | None = None
except ImportError as error:
    _C = None
    _IMPORT_ERROR = f"{type(error).__name__}: {error}"
    warnings.warn(
        f"minimoe: native extension not loaded ({_IMPORT_ERROR}); using the pure-PyTorch reference kernels.",
        RuntimeWarning,
        stacklevel=2,
    )

_KERNELS: dict[str, list[str]] = dict(_C.build_info()["kernels"]) if _C is not None else {}


def _has_kernel(op: str, device_type: str) -> bool:
    return device_type in _KERNELS.get(op, ())


def awq_backend(device: str | torch.device = "cpu") -> str:
    """Name what runs the int4 product `awq_gemm` on `device`: "cuda" or "cpu" (a compiled kernel) or
    "reference" (PyTorch). For every op at once, see `kernels`; for what runs a model, `print(model)`."""
    device_type = torch.device(device).type
    return device_type if _has_kernel("awq_gemm", device_type) else "reference"


def kernels(device: str | torch.device = "cpu") -> dict[str, bool]:
    """{op name: whether the extension has a kernel for it on `device`} for every op of this module."""
    device_type = torch.device(device).type
    names = ("awq_unpack", "awq_gemm", "awq_gemm_many", "linear_stored", "rms_norm", "decode_attention",
             "decode_layer")
    return {name: _has_kernel(name, device_type) for name in names}


def build_info() -> dict:
    """How the native extension was built, or why it is not there. Safe to call without the extension."""
    info = {
        "extension_loaded": _C is not None,
        "import_error": _IMPORT_ERROR,
        "cuda_compiled": False,
        "cuda_archs": [],
        "kernels": {},
        "cpu_isa": None,
        "cpu_amx": False,
        "torch_version": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
    }
    if _C is not None:
        native = _C.build_info()
        info["cuda_compiled"] = bool(native["cuda_compiled"])
        info["cuda_archs"] = [a for a in str(native["cuda_archs"]).replace(",", ";").split(";") if a]
        info["kernels"] = {name: list(devices) for name, devices in native["kernels"].items()}
        info["compiled_with_torch"] = native["compiled_with_torch"]
        info["cpu_isa"] = str(native["cpu_isa"])  # avx512 | avx2 | neon | scalar: the CPU kernels' tier here
        info["cpu_amx"] = bool(native["cpu_amx"])  # bf16 prefill on AMX tiles
    info["awq_backend"] = {"cpu": awq_backend("cpu"), "cuda": awq_backend("cuda")}
    return info


def awq_unpack(packed: torch.Tensor) -> torch.Tensor:
    """Packed AWQ int32 words [R, N/8] -> codes uint8 [R, N] in natural channel order."""
    if _has_kernel("awq_unpack", packed.device.type):
        return torch.ops.minimoe.awq_unpack(packed)
    return awq.unpack(packed)


def awq_gemm(
    x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int
) -> torch.Tensor:
    """y = x @ dequantize(qweight, qzeros, scales): x [..., K] -> y [..., N] in x's dtype.

    Runs the compiled kernel for x's device when there is one (see `backend`), else the reference.
    """
    if not _has_kernel("awq_gemm", x.device.type):
        return awq.awq_linear_reference(x, qweight, qzeros, scales, group_size)
    if x.dim() == 0:
        raise ValueError("awq_gemm: x must have a last dimension of size K, found a 0-d tensor")
    lead = x.shape[:-1]
    y = torch.ops.minimoe.awq_gemm(x.reshape(-1, x.shape[-1]), qweight, qzeros, scales, int(group_size))
    return y.reshape(*lead, y.shape[-1])


def awq_gemm_many(xs: list[torch.Tensor], weights: list[tuple]) -> list[torch.Tensor]:
    """[awq_gemm(x, *w) for x, w in zip(xs, weights)], w = (qweight, qzeros, scales, group_size).

    Same results, bit for bit. Where the kernel exists (the CPU extension), one call runs them all: a decode
    step's small products (a layer's q, k and v; both experts' w1 and w3) then share one parallel region
    instead of paying one each, and threads are not left idle at the end of each small product.
    """
    if len(xs) != len(weights):
        raise ValueError(f"awq_gemm_many: {len(xs)} inputs but {len(weights)} weights")
    if not xs:
        return []
    device_type = xs[0].device.type
    if not _has_kernel("awq_gemm_many", device_type) or any(x.device.type != device_type for x in xs):
        return [awq_gemm(x, *w) for x, w in zip(xs, weights)]
    for x in xs:
        if x.dim() == 0:
            raise ValueError("awq_gemm_many: each x must have a last dimension of size K, found a 0-d tensor")
    ys = torch.ops.minimoe.awq_gemm_many([x if x.dim() == 2 else x.reshape(-1, x.shape[-1]) for x in xs],
                                         [w[0] for w in weights], [w[1] for w in weights], [w[2] for w in weights],
                                         [int(w[3]) for w in weights])
    return [y if x.dim() == 2 else y.reshape(*x.shape[:-1], y.shape[-1]) for x, y in zip(xs, ys)]


def linear_stored(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """F.linear(x, weight.to(x.dtype)) without converting weight: x [..., K], weight [N, K] in fp16/bf16.

    The weight stays in the dtype it was stored in (for the lm_head: 262 MB of fp16 instead of a 524 MB fp32
    copy); the CPU kernel converts each weight in registers. Without a kernel for x's device and dtypes, this
    converts the weight per call (correct, slow; the loader only keeps weights stored where the kernel exists).
    """
    if not can_keep_stored(x.device.type, x.dtype, weight.dtype):
        return torch.nn.functional.linear(x, weight.to(x.dtype))
    lead = x.shape[:-1]
    y = torch.ops.minimoe.linear_stored(x.reshape(-1, x.shape[-1]), weight)
    return y.reshape(*lead, y.shape[-1])


def has_fused_ops(device_type: str) -> bool:
    """True when `rms_norm` and `decode_attention` have a kernel on this device (the CPU extension).

    The model uses them there (decode_attention for single-token steps only); everywhere else its plain
    PyTorch code runs, which is also their spec (tests/test_rmsnorm_attention.py)."""
    return _has_kernel("rms_norm", device_type) and _has_kernel("decode_attention", device_type)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * x / rms(x) over the last dimension, statistics in fp32: `model.RMSNorm.forward` in one call
    (the CPU kernel; no fallback: see has_fused_ops). weight has x's dtype."""
    return torch.ops.minimoe.rms_norm(x, weight, float(eps))


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                     key_cache: torch.Tensor, value_cache: torch.Tensor, slot: int, mask: torch.Tensor,
                     scale: float) -> torch.Tensor:
    """Attention of one new token per row, in one call (the CPU kernel; no fallback: see has_fused_ops).

    q [B, H, D], k/v [B, Hkv, D]: the new token's projections, before RoPE. cos/sin [B, D]: its angles.
    key_cache/value_cache [B, Hkv, slots, D]: the cache buffers; the rotated k and v are written at `slot`.
    mask [B, slot + 1] bool: which slots the new token may see. Returns [B, H, D] in q's dtype: the same values
    as model.Attention's PyTorch code (RoPE, cache update, softmax(q k^T * scale) v), to fp32 rounding.
    """
    return torch.ops.minimoe.decode_attention(q, k, v, cos, sin, key_cache, value_cache, int(slot), mask,
                                              float(scale))


def has_fused_layer(device_type: str) -> bool:
    """True when `decode_layer` has a kernel on this device (the CPU extension), along with every op it calls."""
    return (has_fused_ops(device_type) and _has_kernel("decode_layer", device_type)
            and _has_kernel("awq_gemm_many", device_type) and _has_kernel("awq_gemm", device_type))


def decode_layer(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor, key_cache: torch.Tensor,
                 value_cache: torch.Tensor, slot: int, norms: list, attention: list, attention_groups: list,
                 router: torch.Tensor | None, ffn: list, ffn_groups: list, awq: bool, heads: int, kv_heads: int,
                 top_k: int, scale: float, eps: float):
    """One decoder layer's decode step in one call (the CPU kernel; no fallback: see has_fused_layer).

    The ops `model.DecoderLayer.forward` runs for x [B, 1, C], in the same order, called from C++: the same result
    bit for bit. norms: the two RMSNorm weights. attention: the linears q, k, v, o; ffn: each expert's w1, w3, w2
    (router: the gate's [E, C] weight) or a dense MLP's gate, up, down (router None). With awq, each linear is
    (qweight, qzeros, scales), flattened, with its group size in attention_groups / ffn_groups; without, each is
    one weight [N, K] in x's dtype and the group lists are empty. key_cache/value_cache [B, Hkv, slots, D]: the
    layer's buffers; the new token's key and value are written at `slot`. mask [B, 1, slot + 1], cos/sin [B, 1, D]
    as the layer gets them. Returns (out [B, 1, C], router logits, chosen experts, their weights), the last three
    None without a router.
    """
    return torch.ops.minimoe.decode_layer(x, cos, sin, mask, key_cache, value_cache, int(slot), norms, attention,
                                          attention_groups, router, ffn, ffn_groups, bool(awq), int(heads),
                                          int(kv_heads), int(top_k), float(scale), float(eps))


def can_keep_stored(device_type: str, activation_dtype: torch.dtype, stored_dtype: torch.dtype) -> bool:
    """True when `linear_stored` has a kernel for these dtypes on this device (the CPU extension)."""
    return (_has_kernel("linear_stored", device_type) and activation_dtype in (torch.float32, torch.bfloat16)
            and stored_dtype in (torch.float16, torch.bfloat16) and stored_dtype != activation_dtype)


if _C is not None:
    # Fake (meta) implementations: output shape and dtype only, for torch.compile and FakeTensor tracing.
    @torch.library.register_fake("minimoe::awq_unpack")
    def _awq_unpack_fake(packed):
        return packed.new_empty((packed.shape[0], packed.shape[1] * 8), dtype=torch.uint8)

    if _has_kernel("linear_stored", "cpu"):
        @torch.library.register_fake("minimoe::linear_stored")
        def _linear_stored_fake(x, weight):
            return x.new_empty((x.shape[0], weight.shape[0]))

    if "rms_norm" in _KERNELS:
        @torch.library.register_fake("minimoe::rms_norm")
        def _rms_norm_fake(x, weight, eps):
            return torch.empty_like(x)

        @torch.library.register_fake("minimoe::decode_attention")
        def _decode_attention_fake(q, k, v, cos, sin, key_cache, value_cache, slot, mask, scale):
            return torch.empty_like(q)

    if "decode_layer" in _KERNELS:
        @torch.library.register_fake("minimoe::decode_layer")
        def _decode_layer_fake(x, cos, sin, mask, key_cache, value_cache, slot, norms, attention, attention_groups,
                               router, ffn, ffn_groups, awq, heads, kv_heads, top_k, scale, eps):
            if router is None:
                return torch.empty_like(x), None, None, None
            tokens = x.shape[0] * x.shape[1]
            return (torch.empty_like(x), x.new_empty((tokens, router.shape[0])),
                    x.new_empty((tokens, top_k), dtype=torch.long), x.new_empty((tokens, top_k), dtype=torch.float32))

    @torch.library.register_fake("minimoe::awq_gemm")
    def _awq_gemm_fake(x, qweight, qzeros, scales, group_size):
        return x.new_empty((x.shape[0], scales.shape[1]))

    if "awq_gemm_many" in _KERNELS:
        @torch.library.register_fake("minimoe::awq_gemm_many")
        def _awq_gemm_many_fake(x, qweight, qzeros, scales, group_size):
            return [xi.new_empty((xi.shape[0], s.shape[1])) for xi, s in zip(x, scales)]
