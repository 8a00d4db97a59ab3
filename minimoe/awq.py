"""The AWQ int4 "GEMM" format, written as plain PyTorch: the executable spec every kernel is tested against.

An AWQ checkpoint replaces each quantized nn.Linear's `weight` [N, K] (N = out_features, K = in_features) by
three tensors, with G = group_size (128 in Confinus-2x7B-AWQ):

    qweight  int32    [K,   N/8]   4-bit codes q[k, n] in 0..15, eight per int32, packed along N
    qzeros   int32    [K/G, N/8]   4-bit zero points z[g, n], packed the same way
    scales   float16  [K/G, N]     scales s[g, n]

    W^T[k, n] = (q[k, n] - z[k // G, n]) * s[k // G, n]        y = x @ W^T  (+ bias)

Two things surprise first-time readers: the matrix is stored transposed (input-major, W^T [K, N]) unlike
nn.Linear, and the eight codes inside one int32 are *not* in channel order (see the drawing below).
docs/awq-format.md walks through one word by hand.

Everything here works on CPU and CUDA tensors alike and favours clarity over speed: it is the yardstick for
the kernels, not a kernel. This module imports nothing from minimoe on purpose; read it first.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

# Only 4-bit AWQ is supported: 8 codes per int32 word.
SUPPORTED_BITS = 4
CODES_PER_WORD = 32 // SUPPORTED_BITS  # 8

# -----------------------------------------------------------------------------------------------------------
# The nibble layout of one int32 word: column c of qweight (or qzeros) holds output channels 8c .. 8c+7.
#
#   bit:    31    28 27    24 23    20 19    16 15    12 11     8 7      4 3      0
#         +--------+--------+--------+--------+--------+--------+--------+--------+
#  nibble |   7    |   6    |   5    |   4    |   3    |   2    |   1    |   0    |
#         +--------+--------+--------+--------+--------+--------+--------+--------+
#  channel|  8c+7  |  8c+5  |  8c+3  |  8c+1  |  8c+6  |  8c+4  |  8c+2  |  8c+0  |
#         +--------+--------+--------+--------+--------+--------+--------+--------+
#          \_______ odd channels, high half ______/ \______ even channels, low half ______/
#
#   ORDER[i]   = channel held by nibble i      (read a word:  nibble i -> channel 8c + ORDER[i])
#   REVERSE[j] = nibble that holds channel j   (write a word: channel 8c + j -> nibble REVERSE[j])
#
# Why so odd: a GPU kernel turns nibbles into fp16 two at a time. Masking a word with 0x000F000F picks nibbles
# 0 and 4 (bits 0..3 and 16..19), which land in the low and high fp16 halves of a 32-bit register: with this
# order that pair is channels (0, 1), already adjacent as the output needs them. Shifting by 4, 8, 12 gives the
# pairs (2, 3), (4, 5), (6, 7). So the order is a kernel's convenience frozen into the file format.
#
# The top nibble makes the word negative whenever its code is >= 8 (bit 31 is the int32 sign bit). Shifting a
# negative int32 right is arithmetic (copies of the sign bit come in from the left), so every read masks with
# `& 0xF` after the shift; the mask keeps exactly the four bits that were shifted down, so the sign is harmless.
# -----------------------------------------------------------------------------------------------------------
ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
REVERSE = (0, 4, 1, 5, 2, 6, 3, 7)
assert all(ORDER[REVERSE[j]] == j for j in range(CODES_PER_WORD))  # the two tables are inverses

# The RTN quantizer's floor on a group's range, so a constant group gets a small but nonzero scale.
MIN_RANGE = 1e-5
MAX_CODE = 2**SUPPORTED_BITS - 1  # 15

_FP16_MAX = torch.finfo(torch.float16).max  # 65504: a scale above it cannot be stored


class AWQTensors(NamedTuple):
    """What `quantize` returns; unpacks as `qweight, qzeros, scales = quantize(w, 128)`."""

    qweight: torch.Tensor  # int32   [K,   N/8]
    qzeros: torch.Tensor  # int32   [K/G, N/8]
    scales: torch.Tensor  # float16 [K/G, N]


# ----------------------------------------------------------------------------------------------- validation
# Errors are part of the interface: each names the argument, what was expected and what was found.


def _fail(name: str, message: str) -> None:
    prefix = f"{name}: " if name else ""
    raise ValueError(prefix + message)


def _check_group_size(group_size, name: str = "") -> None:
    # bool is an int subclass in Python; True as a group size is always a mistake.
    if isinstance(group_size, bool) or not isinstance(group_size, int):
        _fail(name, f"group_size must be a positive int, found {group_size!r} ({type(group_size).__name__})")
    if group_size <= 0:
        # AutoAWQ configs write -1 for "one group per column"; the spec wants that spelled out as K.
        _fail(name, f"group_size must be a positive int, found {group_size} "
                    "(for one group over all inputs pass group_size = in_features K, which a config's -1 means)")


def check_awq_tensors(qweight, qzeros, scales, group_size, *, bias=None, name: str = "") -> tuple[int, int]:
    """Validate one AWQ 4-bit GEMM linear; return (K, N) = (in_features, out_features).

    Rules: qweight int32 [K, N/8] and qzeros int32 [K/G, N/8], scales a float tensor [K/G, N] (float16 in
    checkpoints), bias None or a float tensor [N], all on one device. group_size is any positive int that divides
    K; real checkpoints use 32, 64, 128, or K itself (one group per column). Kernels may accept fewer sizes and
    say so themselves. `name` (e.g. "model.layers.0.self_attn.q_proj") prefixes every message.
    Raises ValueError naming the argument, the expected and the found value.
    """
    _check_group_size(group_size, name)
    for arg, tensor in (("qweight", qweight), ("qzeros", qzeros), ("scales", scales)):
        if not isinstance(tensor, torch.Tensor):
            _fail(name, f"{arg} must be a torch.Tensor, found {type(tensor).__name__}")
        if tensor.dim() != 2:
            _fail(name, f"{arg} must be 2-D, found shape {tuple(tensor.shape)}")
    for arg, tensor in (("qweight", qweight), ("qzeros", qzeros)):
        if tensor.dtype != torch.int32:
            _fail(name, f"{arg} must be torch.int32 (8 packed 4-bit codes per word), found {tensor.dtype}; "
                        f"only AWQ {SUPPORTED_BITS}-bit GEMM layout is supported")
    if not scales.dtype.is_floating_point:
        _fail(name, f"scales must be a float tensor (float16 in AWQ checkpoints), found {scales.dtype}")
    if bias is not None and not isinstance(bias, torch.Tensor):
        _fail(name, f"bias must be None or a torch.Tensor, found {type(bias).__name__}")
    devices = {qweight.device, qzeros.device, scales.device} | ({bias.device} if bias is not None else set())
    if len(devices) > 1:
        found = f"qweight {qweight.device}, qzeros {qzeros.device}, scales {scales.device}"
        found += f", bias {bias.device}" if bias is not None else ""
        _fail(name, f"all tensors must be on one device, found {found}")

    K, words = qweight.shape
    if K == 0 or words == 0:
        _fail(name, f"qweight must have K >= 1 rows and N/8 >= 1 columns, found shape {tuple(qweight.shape)}")
    N = words * CODES_PER_WORD

    # N: scales must have 8 columns per packed qweight column. When they do not, try to say which other layout
    # the tensors look like, because "wrong shape" alone sends people hunting in the wrong place.
    if scales.shape[1] != N:
        gemv_like = group_size > 1 and qweight.shape[0] == scales.shape[0]
        if gemv_like:
            # GEMV layout: qweight [N, K/8] and scales [N, ~K/G]: both start with the N output rows.
            _fail(name, f"qweight {tuple(qweight.shape)} and scales {tuple(scales.shape)} look like the AWQ GEMV "
                        "layout (qweight [N, K/8], scales [N, K/G]); only AWQ 4-bit GEMM layout is supported "
                        "(qweight [K, N/8], scales [K/G, N]); convert it or re-export with version 'gemm'")
        if scales.shape[1] == words:
            _fail(name, f"qweight has as many columns ({words}) as scales: it looks unpacked (one code per int32) "
                        "or packed along K like GPTQ (qweight [K/8, N]); only AWQ 4-bit GEMM layout is supported "
                        "(qweight [K, N/8], 8 codes per int32 along N, see awq.pack)")
        if scales.shape[1] % words == 0 and scales.shape[1] // words in (2, 4, 16, 32):
            codes_per_word = scales.shape[1] // words
            _fail(name, f"scales has {scales.shape[1]} columns = {codes_per_word} x qweight's {words}: that is "
                        f"{32 // codes_per_word}-bit packing ({codes_per_word} codes per int32); only AWQ "
                        f"{SUPPORTED_BITS}-bit GEMM layout is supported (8 codes per int32)")
        _fail(name, f"scales must be [K/G, N] with N = 8 * qweight.shape[1] = {N} columns, found shape "
                    f"{tuple(scales.shape)}; only AWQ {SUPPORTED_BITS}-bit GEMM layout is supported")

    # K and the groups: G consecutive inputs (rows of qweight) share one scale and zero point.
    if K % group_size != 0:
        _fail(name, f"group_size {group_size} must divide K = qweight.shape[0] = {K}, "
                    f"found remainder {K % group_size}")
    groups = K // group_size
    if scales.shape[0] != groups:
        hint = (f" (scales' {scales.shape[0]} rows would fit group_size {K // scales.shape[0]})"
                if scales.shape[0] > 0 and K % scales.shape[0] == 0 else "")
        _fail(name, f"scales must have K/G = {K}/{group_size} = {groups} rows, found shape "
                    f"{tuple(scales.shape)}{hint}")
    if tuple(qzeros.shape) != (groups, words):
        _fail(name, f"qzeros must be [K/G, N/8] = [{groups}, {words}], found shape {tuple(qzeros.shape)}")

    if bias is not None:
        if not bias.dtype.is_floating_point:
            _fail(name, f"bias must be a float tensor, found {bias.dtype}")
        if tuple(bias.shape) != (N,):
            _fail(name, f"bias must be [N] = [{N}], found shape {tuple(bias.shape)}")
    return K, N


# ------------------------------------------------------------------------------------------- pack / unpack


def pack(codes: torch.Tensor) -> torch.Tensor:
    """Integer codes [R, N] in 0..15 (any integer dtype) -> int32 words [R, N/8] in AWQ nibble order.

    Used for qweight (R = K) and qzeros (R = K/G) alike: channel 8c + j goes to nibble REVERSE[j] of word c.
    """
    if not isinstance(codes, torch.Tensor):
        raise ValueError(f"codes must be a torch.Tensor, found {type(codes).__name__}")
    if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
        raise ValueError(f"codes must have an integer dtype, found {codes.dtype}")
    if codes.dim() != 2:
        raise ValueError(f"codes must be 2-D [R, N], found shape {tuple(codes.shape)}")
    R, N = codes.shape
    if N % CODES_PER_WORD != 0:
        raise ValueError(f"codes' N = {N} columns must be a multiple of {CODES_PER_WORD} (8 codes per int32)")
    if codes.numel() > 0:
        low, high = int(codes.min()), int(codes.max())
        if low < 0 or high > MAX_CODE:
            raise ValueError(f"codes must lie in 0..{MAX_CODE}, found values in {low}..{high}")

    # int64 arithmetic: code << 28 can reach 15 * 2^28 > 2^31 - 1, which would overflow an int32.
    by_word = codes.to(torch.int64).reshape(R, N // CODES_PER_WORD, CODES_PER_WORD)  # [R, N/8, 8] channel j
    words = torch.zeros(R, N // CODES_PER_WORD, dtype=torch.int64, device=codes.device)
    for nibble, channel in enumerate(ORDER):
        words |= by_word[..., channel] << (4 * nibble)
    # Now 0 <= words < 2^32. Reinterpret the top bit as the int32 sign bit explicitly (two's complement),
    # rather than relying on how a narrowing cast treats out-of-range values.
    words = torch.where(words >= 2**31, words - 2**32, words)
    return words.to(torch.int32)


def unpack(packed: torch.Tensor) -> torch.Tensor:
    """int32 words [R, C] -> codes [R, 8C] as torch.uint8 in 0..15, channel order restored.

    Correct for negative words (top nibble >= 8): each nibble is shifted down and masked with 0xF.
    """
    # [task 4.1]
    if not isinstance(packed, torch.Tensor):
        raise ValueError(f"packed must be a torch.Tensor, found {type(packed).__name__}")
    if packed.dtype != torch.int32:
        raise ValueError(f"packed must be torch.int32, found {packed.dtype}")
    if packed.dim() != 2:
        raise ValueError(f"packed must be 2-D [R, N/8], found shape {tuple(packed.shape)}")
    R, C = packed.shape
    # Shift amount per output channel j: channel j lives in nibble REVERSE[j], i.e. bits 4*REVERSE[j] and up.
    shifts = torch.tensor([4 * nibble for nibble in REVERSE], dtype=torch.int32, device=packed.device)
    codes = (packed.unsqueeze(-1) >> shifts) & 0xF  # [R, C, 8]: codes[r, c, j] = channel 8c + j
    return codes.reshape(R, C * CODES_PER_WORD).to(torch.uint8)
    # [/task 4.1]


# ------------------------------------------------------------------------------------------------ quantize


def quantize(weight: torch.Tensor, group_size: int = 128) -> AWQTensors:
    """nn.Linear weight [N, K] (any float dtype) -> AWQTensors(qweight, qzeros, scales) by round-to-nearest.

    Per output channel n and group g of G consecutive inputs, with min/max over the group's G weights:

        s = max(max - min, 1e-5) / 15         (computed in fp32, then rounded to fp16: the stored scale)
        z = clamp(-round(min / s), 0, 15)
        q = clamp(round(w / s) + z, 0, 15)

    z and q are computed against the *fp16-rounded* s, the scale that dequantization will really use. That is
    what AutoAWQ does too: it casts the layer to fp16 before quantizing, so its scales are fp16 values from the
    start and its codes are rounded against them. (Codes rounded against an unrounded scale could sit one step
    off the nearest point of the grid that is actually stored.) Unlike AutoAWQ the divisions run in fp32, not fp16.

    Rounding is half-to-even (torch.round). The zero point is clamped to 0..15, so the grid always contains 0:
    a group whose weights all have one sign clips at the far end (a constant row of 0.5 comes back as about 1e-5).
    Real weight groups straddle zero; `reconstruction_error` shows what quantizing cost.
    This is plain RTN: AWQ's activation-aware scaling and clipping search happen before this step.
    """
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"weight must be a torch.Tensor, found {type(weight).__name__}")
    if not weight.dtype.is_floating_point:
        raise ValueError(f"weight must be a float tensor, found {weight.dtype}")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [N, K] (nn.Linear layout), found shape {tuple(weight.shape)}")
    _check_group_size(group_size)
    N, K = weight.shape
    if N == 0 or K == 0:
        raise ValueError(f"weight must have N >= 1 and K >= 1, found shape {tuple(weight.shape)}")
    if N % CODES_PER_WORD != 0:
        raise ValueError(f"weight's N = out_features = {N} must be a multiple of {CODES_PER_WORD} "
                         "(8 codes per int32)")
    if K % group_size != 0:
        raise ValueError(f"group_size {group_size} must divide weight's K = in_features = {K}, "
                         f"found remainder {K % group_size}")
    if not torch.isfinite(weight).all():
        raise ValueError("weight must be finite, found NaN or inf")

    w = weight.to(torch.float32).reshape(N, K // group_size, group_size)  # [N, K/G, G]
    w_max = w.amax(dim=-1)  # [N, K/G]
    w_min = w.amin(dim=-1)
    scale_fp32 = (w_max - w_min).clamp(min=MIN_RANGE) / MAX_CODE
    scale_fp16 = scale_fp32.to(torch.float16)
    if not torch.isfinite(scale_fp16).all():
        widest = float((w_max - w_min).max())
        raise ValueError(f"weight's widest group range {widest:.6g} gives a scale above float16's max "
                         f"{_FP16_MAX:g}; AWQ stores scales as float16")
    s = scale_fp16.to(torch.float32)  # exactly the value dequantize will use, back in fp32 for the arithmetic

    zero = (-torch.round(w_min / s)).clamp(0, MAX_CODE)  # [N, K/G]
    codes = (torch.round(w / s[..., None]) + zero[..., None]).clamp(0, MAX_CODE)  # [N, K/G, G]

    # Into the file layout: transpose to input-major, [K, N] codes and [K/G, N] zeros and scales.
    qweight = pack(codes.reshape(N, K).t().to(torch.uint8))  # [K, N/8]
    qzeros = pack(zero.t().to(torch.uint8))  # [K/G, N/8]
    scales = scale_fp16.t().contiguous()  # [K/G, N]
    return AWQTensors(qweight, qzeros, scales)


# ---------------------------------------------------------------------------------------------- dequantize


def dequantize(qweight, qzeros, scales, group_size: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """-> W^T [K, N] = (q - z) * s in `dtype` (default: scales.dtype), input-major like the file.

    s is converted to `dtype` first, then multiplied by (q - z), a small integer in -15..15 that every float
    dtype holds exactly. In float32 or float64 the product of a float16 scale and such an integer is exact;
    in float16 or bfloat16 it is rounded once, as a kernel dequantizing into half precision would round it.
    """
    # [task 4.2]
    K, N = check_awq_tensors(qweight, qzeros, scales, group_size)
    dtype = scales.dtype if dtype is None else dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a float torch.dtype, found {dtype!r}")
    groups = K // group_size
    q = unpack(qweight).to(dtype).reshape(groups, group_size, N)  # [K/G, G, N]
    z = unpack(qzeros).to(dtype).unsqueeze(1)  # [K/G, 1, N]: one zero per group, broadcast over its G rows
    s = scales.to(dtype).unsqueeze(1)  # [K/G, 1, N]
    return ((q - z) * s).reshape(K, N)
    # [/task 4.2]


def reconstruction_error(weight, qweight, qzeros, scales, group_size: int) -> float:
    """Max |dequantize(...) - weight| over all elements: what quantizing `weight` [N, K] cost.

        qweight, qzeros, scales = quantize(w, 128)
        print(reconstruction_error(w, qweight, qzeros, scales, 128))
    """
    K, N = check_awq_tensors(qweight, qzeros, scales, group_size)
    if not isinstance(weight, torch.Tensor) or not weight.dtype.is_floating_point:
        found = weight.dtype if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"weight must be a float tensor [N, K], found {found}")
    if tuple(weight.shape) != (N, K):
        raise ValueError(f"weight must be [N, K] = [{N}, {K}] (nn.Linear layout) to match the packed tensors, "
                         f"found shape {tuple(weight.shape)}")
    # fp32 dequantization of fp16 scales is exact (see dequantize): the error measured is the quantizer's alone.
    w_t = dequantize(qweight, qzeros, scales, group_size, dtype=torch.float32)
    return float((w_t - weight.to(device=w_t.device, dtype=torch.float32).t()).abs().max())


# ---------------------------------------------------------------------------------------- reference linear


def awq_linear_reference(x, qweight, qzeros, scales, group_size: int, bias=None) -> torch.Tensor:
    """y [..., N] = x [..., K] @ dequantize(...) (+ bias), returned in x's dtype: the answer kernels must match.

    Computed in float32 for float16/bfloat16/float32 inputs (float64 stays float64): the weight is
    dequantized exactly in float32, the matmul accumulates in float32, bias is added in float32, and the
    result is rounded to x's dtype once at the end. A kernel that dequantizes into fp16 first rounds each
    weight to fp16 and so may differ from this by about an fp16 ulp of each weight's contribution.
    On CUDA, keep torch.backends.cuda.matmul.allow_tf32 off when using this as a reference.
    """
    K, N = check_awq_tensors(qweight, qzeros, scales, group_size, bias=bias)
    if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point:
        found = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a float tensor [..., K], found {found}")
    if x.dim() == 0 or x.shape[-1] != K:
        raise ValueError(f"x must be [..., K] with K = in_features = {K}, found shape {tuple(x.shape)}")
    if x.device != qweight.device:
        raise ValueError(f"x must be on the weight's device {qweight.device}, found {x.device}")

    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    w_t = dequantize(qweight, qzeros, scales, group_size, dtype=compute)  # [K, N]
    y = x.to(compute).reshape(-1, K) @ w_t  # [M, N], M = product of the leading dims
    if bias is not None:
        y = y + bias.to(compute)
    return y.to(x.dtype).reshape(*x.shape[:-1], N)
