"""minimoe.ops.rms_norm and minimoe.ops.decode_attention (csrc/cpu/rmsnorm_attention.cpp) against their spec.

The spec is the model's plain PyTorch code: `RMSNorm.forward` and the lines of `Attention.forward` from RoPE to
the weighted sum of values. References here are computed independently of the kernels: RoPE with the model's
`apply_rope` (the cache write must equal it bit for bit), attention in float64 from the same rounded inputs
(fp32), or with torch ops in the dtype that round where the documented semantics round (bf16, fp16).
Then the model itself: a decode step with the fused ops equals one through the PyTorch code. NaN never passes.
"""

import contextlib
import os

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import minimoe
from minimoe import ops
from minimoe.model import RMSNorm, RotaryEmbedding, apply_rope
from minimoe.testing import make_tiny_checkpoint
from tests.conftest import at_thread_counts, left_padded
from tests.test_kernels import examples

needs_kernel = pytest.mark.skipif(not ops.has_fused_ops("cpu"),
                                  reason="the compiled CPU extension (rms_norm, decode_attention) is not built")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
ULP = {torch.float32: 2.0**-23, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}


def with_isa(isa, fn):
    """fn() with MINIMOE_CPU_ISA set (the kernels read it on every call); "auto" picks the best tier."""
    previous = os.environ.get("MINIMOE_CPU_ISA")
    os.environ["MINIMOE_CPU_ISA"] = isa
    try:
        return fn()
    finally:
        if previous is None:
            del os.environ["MINIMOE_CPU_ISA"]
        else:
            os.environ["MINIMOE_CPU_ISA"] = previous


# ---- rms_norm --------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def fused_ops_off():
    """The model's own PyTorch code for the block: ops.has_fused_ops says no, then is restored."""
    original = ops.has_fused_ops
    ops.has_fused_ops = lambda device_type: False
    try:
        yield
    finally:
        ops.has_fused_ops = original


def rms_norm_spec(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm.forward's own PyTorch lines (the module, with the fused op switched off)."""
    norm = RMSNorm(x.shape[-1], eps, dtype=x.dtype)
    norm.weight.data.copy_(weight)
    with fused_ops_off():
        return norm(x)


@needs_kernel
@examples(20)
@given(rows=st.integers(1, 5), C=st.integers(1, 300), dtype=st.sampled_from(DTYPES), eps=st.sampled_from([1e-5, 1e-6]),
       seed=st.integers(0, 2**31 - 1))
def test_rms_norm_matches_the_module(rows, C, dtype, eps, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(rows, C, generator=g) * 3).to(dtype)
    weight = (1 + 0.3 * torch.randn(C, generator=g)).to(dtype)
    got, ref = ops.rms_norm(x, weight, eps), rms_norm_spec(x, weight, eps)
    assert got.dtype == dtype and got.shape == x.shape and torch.isfinite(got).all()
    # Only the order of the sum of squares differs: the fp32 statistics agree to a few fp32 ulps, then the two
    # roundings to the dtype (x * r, then weight * that) may each land one ulp apart.
    err = (got.double() - ref.double()).abs()
    limit = (2 * ULP[dtype] + 8 * 2.0**-23) * ref.double().abs() + 1e-30
    assert (err <= limit).all(), f"max error {err.max():.3g}"


@needs_kernel
def test_rms_norm_leading_dims_and_errors():
    x = torch.randn(2, 3, 16)
    weight = torch.rand(16) + 0.5
    torch.testing.assert_close(ops.rms_norm(x, weight, 1e-6), rms_norm_spec(x, weight, 1e-6), rtol=1e-6, atol=0)
    with pytest.raises(RuntimeError, match="weight must have x's dtype"):
        ops.rms_norm(x, weight.double(), 1e-6)
    with pytest.raises(RuntimeError, match=r"weight must be \[C\] = \[16\], found shape \[15\]"):
        ops.rms_norm(x, weight[:15], 1e-6)
    with pytest.raises(RuntimeError, match="x must be float32, bfloat16 or float16"):
        ops.rms_norm(x.double(), weight.double(), 1e-6)


# ---- decode_attention ------------------------------------------------------------------------------------------

def attention_case(B, H, Hkv, D, S, slot, dtype, seed, window=None, padding=0):
    """Random inputs for one decode step: slots 0..slot-1 hold earlier keys/values, slot is the new token's.
    Slots after `slot` and masked ones hold NaN: the op must never read them into a result."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, D, generator=g).to(dtype)
    k = torch.randn(B, Hkv, D, generator=g).to(dtype)
    v = torch.randn(B, Hkv, D, generator=g).to(dtype)
    positions = torch.randint(0, 4000, (B, 1), generator=g)
    cos, sin = RotaryEmbedding(D, 10000.0)(positions, dtype)                  # (B, 1, D), as the model makes them
    key_cache = torch.full((B, Hkv, S, D), float("nan"), dtype=dtype)
    value_cache = torch.full((B, Hkv, S, D), float("nan"), dtype=dtype)
    key_cache[:, :, :slot] = torch.randn(B, Hkv, slot, D, generator=g).to(dtype)
    value_cache[:, :, :slot] = torch.randn(B, Hkv, slot, D, generator=g).to(dtype)
    mask = torch.ones(B, slot + 1, dtype=torch.bool)
    for b in range(B):
        mask[b, :min(padding * b, slot)] = False                               # row b: left padding
    if window is not None:
        mask[:, :max(0, slot + 1 - window)] = False                           # the sliding window
    hidden = ~mask[:, :, None].expand(B, slot + 1, D)
    for cache in (key_cache, value_cache):                                     # hidden slots hold NaN too
        cache[:, :, :slot + 1].masked_fill_(hidden[:, None], float("nan"))
    return q, k, v, cos[:, 0], sin[:, 0], key_cache, value_cache, mask


def attention_spec(q, k, v, cos, sin, key_cache, value_cache, slot, mask, scale):
    """The documented semantics with torch ops. fp32: the sums in float64 (an independent reference). bf16/fp16:
    rounded to the dtype exactly where the op (and the model's PyTorch code) rounds."""
    dtype = q.dtype
    B, H, D = q.shape
    group = H // k.shape[1]
    q_rot = apply_rope(q[:, :, None], cos[:, None], sin[:, None])[:, :, 0]
    k_rot = apply_rope(k[:, :, None], cos[:, None], sin[:, None])[:, :, 0]
    keys = key_cache[:, :, :slot + 1].clone()
    values = value_cache[:, :, :slot + 1].clone()
    keys[:, :, slot], values[:, :, slot] = k_rot, v
    keys = keys.repeat_interleave(group, dim=1).masked_fill(~mask[:, None, :, None], 0)
    values = values.repeat_interleave(group, dim=1).masked_fill(~mask[:, None, :, None], 0)
    wide = torch.float64 if dtype == torch.float32 else torch.float32
    dots = torch.einsum("bhd,bhjd->bhj", q_rot.to(wide), keys.to(wide))
    scores = (dots.to(dtype) * scale).to(dtype) if dtype != torch.float32 else dots * scale
    scores = scores.to(wide).masked_fill(~mask[:, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(dtype).to(wide)
    return torch.einsum("bhj,bhjd->bhd", probs, values.to(wide)), k_rot, values.abs().amax(dim=(2, 3))


@needs_kernel
@examples(25)
@given(B=st.integers(1, 3), heads=st.sampled_from([(4, 4), (4, 2), (8, 2), (4, 1), (6, 2), (5, 1), (8, 1)]),
       D=st.sampled_from([8, 16, 24, 64, 128]),
       slot=st.integers(0, 70), extra=st.integers(0, 5), dtype=st.sampled_from(DTYPES),
       window=st.sampled_from([None, None, 5]), padding=st.integers(0, 3), isa=st.sampled_from(["auto", "scalar"]),
       seed=st.integers(0, 2**31 - 1))
def test_decode_attention_matches_the_spec(B, heads, D, slot, extra, dtype, window, padding, isa, seed):
    H, Hkv = heads
    S = slot + 1 + extra
    case = attention_case(B, H, Hkv, D, S, slot, dtype, seed, window, padding)
    q, k, v, cos, sin, key_cache, value_cache, mask = case
    before_keys, before_values = key_cache.clone(), value_cache.clone()
    scale = D ** -0.5
    out = with_isa(isa, lambda: ops.decode_attention(q, k, v, cos, sin, key_cache, value_cache, slot, mask, scale))
    ref, k_rot, vmax = attention_spec(q, k, v, cos, sin, before_keys, before_values, slot, mask, scale)

    # The cache: the new key rotated exactly as the model's apply_rope does, the value as is, nothing else touched.
    assert torch.equal(key_cache[:, :, slot], k_rot) and torch.equal(value_cache[:, :, slot], v)
    others = [s for s in range(S) if s != slot]
    assert torch.equal(key_cache[:, :, others].nan_to_num(7.0), before_keys[:, :, others].nan_to_num(7.0))
    assert torch.equal(value_cache[:, :, others].nan_to_num(7.0), before_values[:, :, others].nan_to_num(7.0))

    assert out.dtype == dtype and out.shape == (B, H, D) and torch.isfinite(out).all()
    err = (out.double() - ref.double()).abs()
    if dtype == torch.float32:
        limit = 1e-5 * vmax.double()[:, :, None] + 1e-30
    else:
        # A score may round to the neighbouring value of the dtype when the fp32 dot's sum order differs: its
        # probability then moves by up to ~|score| * ulp, and the output by that times |v|. Plus the output's
        # own rounding. Scores here are O(1) to O(10).
        limit = (24 * ULP[dtype]) * vmax.double()[:, :, None] + 1e-30
    assert (err <= limit).all(), f"max error {err.max():.3g} (limit {limit.flatten()[err.argmax()]:.3g})"


@needs_kernel
@pytest.mark.parametrize("G", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("L", [15, 16, 17, 33])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_decode_attention_every_group_size_and_block_tail(G, D, L, dtype):
    # Fixed cases for what random draws may miss: the value sums of 1-4 heads at a time (G = 5 and 8 take two
    # passes), the dots 16 keys at a time (D = 64, 128) with a partial last block or none, and NaN in hidden
    # slots inside full blocks (row 1's 3 padding slots).
    slot = L - 1
    case = attention_case(2, 2 * G, 2, D, L + 3, slot, dtype, seed=L * D + G, padding=3)
    q, k, v, cos, sin, key_cache, value_cache, mask = case
    before_keys, before_values = key_cache.clone(), value_cache.clone()
    out = ops.decode_attention(q, k, v, cos, sin, key_cache, value_cache, slot, mask, D ** -0.5)
    ref, _, vmax = attention_spec(q, k, v, cos, sin, before_keys, before_values, slot, mask, D ** -0.5)
    assert torch.isfinite(out).all()
    limit = (1e-5 if dtype == torch.float32 else 24 * ULP[dtype]) * vmax.double()[:, :, None]
    assert ((out.double() - ref.double()).abs() <= limit).all()


@needs_kernel
@pytest.mark.parametrize("heads", [(8, 2), (4, 4), (4, 2)])
def test_decode_attention_same_bits_for_any_thread_count(heads):
    # Large enough (B * H * L * D >= 2^14) that the kv heads are split between threads; groups of 4, 1 and 2.
    H, Hkv = heads
    case = attention_case(2, H, Hkv, 64, 640, 600, torch.float32, seed=4)
    q, k, v, cos, sin, key_cache, value_cache, mask = case

    def run():
        keys, values = key_cache.clone(), value_cache.clone()
        return ops.decode_attention(q, k, v, cos, sin, keys, values, 600, mask, 0.125)

    one, two, again = at_thread_counts(run)
    assert torch.equal(one, two) and torch.equal(one, again)


@needs_kernel
@pytest.mark.parametrize("change, message", [
    (lambda a: a.update(q=a["q"].double()), "q must be float32, bfloat16 or float16"),
    (lambda a: a.update(k=a["k"].half()), "k must have q's dtype"),
    (lambda a: a.update(q=a["q"][0]), r"q must be \[B, H, D\]"),
    (lambda a: a.update(k=a["k"][:, :, :6]), r"k must be \[B, Hkv, D\] = \[2, Hkv, 8\]"),
    (lambda a: a.update(k=torch.randn(2, 3, 8), v=torch.randn(2, 3, 8)), "must be a multiple of the kv heads"),
    (lambda a: a.update(v=a["v"][:, :1]), "v must have k's shape"),
    (lambda a: a.update(cos=a["cos"][:1]), r"cos must be \[B, D\] = \[2, 8\]"),
    (lambda a: a.update(key_cache=a["key_cache"][:, :, :, :4]), r"key_cache must be \[B, Hkv, slots, D\]"),
    (lambda a: a.update(value_cache=a["value_cache"].transpose(2, 3).contiguous().transpose(2, 3)),
     "value_cache must be contiguous"),
    (lambda a: a.update(slot=10), r"slot must be in 0..9"),
    (lambda a: a.update(slot=-1), r"slot must be in 0..9"),
    (lambda a: a.update(mask=a["mask"][:, :4]), r"mask must be \[B, slot \+ 1\] = \[2, 6\]"),
    (lambda a: a.update(mask=a["mask"].long()), "mask must be bool"),
    (lambda a: a["mask"][1].fill_(False), "row 1 allows none"),
])
def test_decode_attention_checks_arguments(change, message):
    q, k, v, cos, sin, key_cache, value_cache, mask = attention_case(2, 4, 2, 8, 10, 5, torch.float32, seed=1)
    args = dict(q=q, k=k, v=v, cos=cos, sin=sin, key_cache=key_cache, value_cache=value_cache, slot=5, mask=mask,
                scale=0.3)
    change(args)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.minimoe.decode_attention(**args)


# ---- the model: fused decode steps equal the PyTorch ones ------------------------------------------------------

def decode_logits(model, prompts, steps, fused):
    """Prefill a left-padded batch, then `steps` single-token steps; the logits of every step."""
    with contextlib.nullcontext() if fused else fused_ops_off():
        ids, mask = left_padded(prompts)
        cache = model.new_cache()
        logits = model(ids, attention_mask=mask, cache=cache, last_token_only=True)
        out = []
        for step in range(steps):
            token = (logits[:, -1].argmax(-1, keepdim=True) + step) % model.config.vocab_size
            logits = model(token, cache=cache)
            out.append(logits.float())
        return torch.cat(out, dim=1)


@needs_kernel
def test_model_decode_steps_with_fused_ops_equal_the_pytorch_code(fp32_model):
    # The fixture has a sliding window of 6, 3 experts top-2; a padded batch; 9 steps cross the window.
    prompts = [[5, 9, 2, 77, 31], [8, 1], [200, 3, 3, 14, 15, 92, 65]]
    fused, plain = decode_logits(fp32_model, prompts, 9, True), decode_logits(fp32_model, prompts, 9, False)
    assert torch.isfinite(fused).all()
    torch.testing.assert_close(fused, plain, rtol=0, atol=2e-5)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_decode_with_fused_ops_close_to_the_pytorch_code(tmp_path_factory, dtype):
    path = make_tiny_checkpoint(tmp_path_factory.mktemp("fused"), quantized=True, seed=11)
    model = minimoe.load_model(path, dtype=dtype)
    prompts = [[5, 9, 2, 77, 31, 6], [8, 1, 4]]
    fused, plain = decode_logits(model, prompts, 6, True), decode_logits(model, prompts, 6, False)
    assert torch.isfinite(fused).all()
    err = (fused - plain).abs().max().item() / plain.abs().max().item()
    assert err < 8 * ULP[dtype], f"{dtype}: relative error {err:.3e}"


@needs_kernel
def test_the_model_uses_the_fused_ops_for_decode_steps_only(fp32_model, monkeypatch):
    # The Python layer's own use of the op (a whole layer in one call, ops.decode_layer, reaches the op from C++
    # and is switched off here; tests/test_decode_layer.py checks it).
    monkeypatch.setattr(ops, "has_fused_layer", lambda device_type: False)
    calls = []
    original = ops.decode_attention
    monkeypatch.setattr(ops, "decode_attention", lambda *a: calls.append(a[0].shape) or original(*a))
    cache = fp32_model.new_cache()
    fp32_model(torch.tensor([[1, 2, 3]]), cache=cache)
    assert calls == []                                    # a prompt of several tokens: the PyTorch code
    fp32_model(torch.tensor([[4]]), cache=cache)
    assert len(calls) == fp32_model.config.num_hidden_layers
