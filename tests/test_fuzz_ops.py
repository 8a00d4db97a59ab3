"""Fuzzing the compiled CPU ops with wrong and odd arguments, in a child process so that a crash is a failure.

Each torch.ops.minimoe op among awq_gemm, awq_gemm_many, awq_unpack, linear_stored, rms_norm, decode_attention and
decode_layer is called with random shapes
(matching or not), dtypes (including ints and float64), layouts (transposed, strided slices, flipped copies
made non-contiguous) and empty sizes. Every call must either return the spec's answer (minimoe.awq /
the formula, within the dtype's tolerance) or raise a RuntimeError from the argument checks. The child prints
each case before making it; a segfault or abort shows up as a negative exit status with the last case named.
decode_attention is fuzzed from a valid fp32 call with one argument damaged (dtype, rank, one size, layout,
the slot); decode_layer from a real layer's valid call with one argument damaged (a tensor of any of its lists, or
an integer: the slot, the head counts, top_k, a group size)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r'''
import os, sys, torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st, HealthCheck
import minimoe.ops as ops
from minimoe import awq

if not ops._has_kernel("awq_gemm", "cpu"):
    print("SKIP no compiled CPU kernel"); sys.exit(0)
N_EXAMPLES = int(sys.argv[1])
FLOATS = [torch.float32, torch.float16, torch.bfloat16]
ODD = [torch.float64, torch.int32, torch.int64, torch.uint8]


def layout(t, how):
    if how == "t" and t.dim() == 2:
        return t.t().contiguous().t()          # same values, column-major strides
    if how == "slice" and t.dim() >= 1 and t.shape[-1] >= 2:
        return torch.stack([t, t], -1)[..., 0]  # same values, stride 2 in the last dimension
    if how == "flip" and t.dim() >= 1:
        return t.flip(0).flip(0)               # a copy (flip copies): contiguous again
    return t


def tolerance(dtype):
    return 1e-4 if dtype == torch.float32 else 3e-2


def check(name, call, expected):
    print(name, flush=True)
    try:
        got = call()
    except RuntimeError:
        return
    want = expected()
    assert got.shape == want.shape and got.dtype == want.dtype, (name, got.shape, want.shape, got.dtype, want.dtype)
    if got.numel():
        scale = max(1.0, want.float().abs().max().item())
        diff = (got.float() - want.float()).abs().max().item()
        assert diff <= tolerance(want.dtype) * scale or not got.is_floating_point() and diff == 0, (name, diff)


common = dict(max_examples=N_EXAMPLES, deadline=None, derandomize=False,
              suppress_health_check=list(HealthCheck), database=None)


awq_args = dict(M=st.sampled_from([0, 1, 3]), K=st.sampled_from([32, 64, 96]), N8=st.sampled_from([1, 2, 3]),
                G=st.sampled_from([32, 64, 0, -1, 48]), dx=st.sampled_from(FLOATS + ODD),
                ds=st.sampled_from(FLOATS + [torch.int16]), kx=st.integers(-1, 1),
                lx=st.sampled_from(["", "t", "slice", "flip"]), lq=st.sampled_from(["", "t", "slice"]),
                qdtype=st.sampled_from([torch.int32, torch.int32, torch.int64, torch.float32]), seed=st.integers(0, 99))


def awq_case(M, K, N8, G, dx, ds, kx, lx, lq, qdtype, seed):
    g = torch.Generator().manual_seed(seed)
    N = 8 * N8
    groups = K // G if G > 0 and K % G == 0 else 1
    x = layout((torch.randn(M, K + kx, generator=g) * 3).to(dx) if dx.is_floating_point
               else torch.randint(0, 5, (M, K + kx), generator=g).to(dx), lx)
    qweight = layout(torch.randint(-2**31, 2**31 - 1, (K, N8), generator=g, dtype=torch.int64).to(torch.int32).to(qdtype), lq)
    qzeros = torch.randint(-2**31, 2**31 - 1, (groups, N8), generator=g, dtype=torch.int64).to(torch.int32)
    scales = (torch.rand(groups, N, generator=g) * 0.1).to(ds)
    name = f"x{list(x.shape)} {dx} {lx} q {qdtype} {lq} K{K} N{N} G{G} scales {ds}"
    return name, (x, qweight, qzeros, scales, G)


@settings(**common)
@given(**awq_args)
def fuzz_awq_gemm(**kw):
    name, args = awq_case(**kw)
    check(f"awq_gemm {name}", lambda: torch.ops.minimoe.awq_gemm(*args), lambda: awq.awq_linear_reference(*args))


@settings(**common)
@given(cases=st.lists(st.fixed_dictionaries(awq_args), min_size=1, max_size=3), drop=st.integers(-1, 4))
def fuzz_awq_gemm_many(cases, drop):
    built = [awq_case(**kw) for kw in cases]
    lists = [[args[i] for _, args in built] for i in range(5)]
    if 0 <= drop < 5 and len(built) > 1:
        lists[drop] = lists[drop][:-1]          # one list shorter than the others
    names = "; ".join(name for name, _ in built)
    print(f"awq_gemm_many [{names}] drop {drop}", flush=True)
    try:
        got = torch.ops.minimoe.awq_gemm_many(*lists)
    except RuntimeError:
        return
    assert len(got) == len(built) and all(len(l) == len(built) for l in lists), "accepted lists of unequal length"
    for (name, args), y in zip(built, got):
        want = awq.awq_linear_reference(*args)
        assert y.shape == want.shape and y.dtype == want.dtype, name
        if y.numel():
            scale = max(1.0, want.float().abs().max().item())
            assert (y.float() - want.float()).abs().max().item() <= tolerance(want.dtype) * scale, name


@settings(**common)
@given(R=st.sampled_from([0, 1, 5]), C=st.sampled_from([0, 1, 3]), dtype=st.sampled_from([torch.int32, torch.int64, torch.float32]),
       how=st.sampled_from(["", "t", "slice"]), seed=st.integers(0, 99))
def fuzz_awq_unpack(R, C, dtype, how, seed):
    g = torch.Generator().manual_seed(seed)
    packed = layout(torch.randint(-2**31, 2**31 - 1, (R, C), generator=g, dtype=torch.int64).to(torch.int32).to(dtype), how)
    check(f"awq_unpack {list(packed.shape)} {dtype} {how}", lambda: torch.ops.minimoe.awq_unpack(packed),
          lambda: awq.unpack(packed))


@settings(**common)
@given(M=st.sampled_from([0, 1, 4]), K=st.sampled_from([8, 16, 33]), N=st.sampled_from([1, 8, 17]), kx=st.integers(-1, 1),
       dx=st.sampled_from(FLOATS + ODD), dw=st.sampled_from(FLOATS + ODD), lx=st.sampled_from(["", "t", "slice"]),
       lw=st.sampled_from(["", "t", "slice"]), seed=st.integers(0, 99))
def fuzz_linear_stored(M, K, N, kx, dx, dw, lx, lw, seed):
    g = torch.Generator().manual_seed(seed)
    x = layout(torch.randn(M, K + kx, generator=g).to(dx), lx)
    w = layout(torch.randn(N, K, generator=g).to(dw), lw)
    check(f"linear_stored x{list(x.shape)} {dx} {lx} w{list(w.shape)} {dw} {lw}",
          lambda: torch.ops.minimoe.linear_stored(x, w), lambda: F.linear(x, w.to(x.dtype)))


def rms_reference(x, w, eps):
    x32 = x.float()
    return w * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


@settings(**common)
@given(shape=st.sampled_from([(0, 8), (1, 8), (3, 16), (2, 3, 16), (5,)]), C=st.sampled_from([8, 16, 7]),
       dx=st.sampled_from(FLOATS + ODD), dw=st.sampled_from(FLOATS + [torch.float64]), lx=st.sampled_from(["", "t", "slice"]),
       eps=st.sampled_from([1e-5, 0.0, 1.0]), seed=st.integers(0, 99))
def fuzz_rms_norm(shape, C, dx, dw, lx, eps, seed):
    g = torch.Generator().manual_seed(seed)
    x = layout(torch.randn(*shape, generator=g).to(dx), lx)
    w = torch.randn(C, generator=g).to(dw)
    check(f"rms_norm x{list(x.shape)} {dx} {lx} w{C} {dw} eps{eps}", lambda: torch.ops.minimoe.rms_norm(x, w, eps),
          lambda: rms_reference(x, w, eps))


from tests.test_rmsnorm_attention import attention_case, attention_spec


@settings(**common)
@given(B=st.integers(1, 2), heads=st.sampled_from([(4, 2), (4, 1), (2, 2)]), D=st.sampled_from([8, 16]),
       slot=st.integers(0, 6), extra=st.integers(0, 2), seed=st.integers(0, 99),
       target=st.sampled_from(["q", "k", "v", "cos", "sin", "key_cache", "value_cache", "mask", "slot", "none"]),
       change=st.sampled_from(["dtype", "float64", "rank", "dim", "layout"]), dim=st.integers(0, 3),
       delta=st.sampled_from([-1, 1, 5]))
def fuzz_decode_attention(B, heads, D, slot, extra, seed, target, change, dim, delta):
    H, Hkv = heads
    args = dict(zip(["q", "k", "v", "cos", "sin", "key_cache", "value_cache", "mask"],
                    attention_case(B, H, Hkv, D, slot + 1 + extra, slot, torch.float32, seed)))
    args["slot"], args["scale"] = slot, D ** -0.5
    if target == "slot":
        args["slot"] = slot + delta
    elif target != "none":
        t = args[target]
        if change == "dtype":
            t = t.to(torch.int32 if t.dtype == torch.bool else torch.bfloat16)
        elif change == "float64":
            t = t.double()
        elif change == "rank":
            t = t.unsqueeze(0)
        elif change == "dim":
            d = dim % t.dim()
            size = max(0, t.shape[d] + delta)
            t = torch.zeros(*t.shape[:d], size, *t.shape[d + 1:], dtype=t.dtype)
        else:
            t = layout(t, "slice")
        args[target] = t
    reference = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    name = f"decode_attention B{B} H{H}/{Hkv} D{D} slot{slot}+{extra}: {target} {change} d{dim} {delta:+d}"

    def expected():
        return attention_spec(**reference)[0].to(torch.float32)
    check(name, lambda: torch.ops.minimoe.decode_attention(**args), expected)


# decode_layer: a valid call built from a real layer (AWQ or plain weights, 2 experts, top-2), then one argument
# damaged: a tensor of any of its lists or its own tensors (dtype, float64, rank, one size, layout) or an integer
# (slot, heads, kv_heads, top_k, a group size). It must raise, or return a finite answer of the right shape, the
# valid call's answer when only the layout changed.
import tempfile
from minimoe.cache import KVCache
from minimoe.testing import make_tiny_checkpoint
import minimoe

LAYERS = {}
for quantized in (True, False):
    path = make_tiny_checkpoint(tempfile.mkdtemp(), quantized=quantized, dtype="float32")
    LAYERS[quantized] = minimoe.load_model(path, dtype="float32", engine="native")


def layer_call(model):
    c = model.config
    layer = model.model.layers[0]
    x = torch.randn(1, 1, c.hidden_size, generator=torch.Generator().manual_seed(0))
    cache = KVCache(c.num_hidden_layers)
    cache.length = 2
    keys, values, slot = cache.reserve(0, x.new_empty(1, c.num_key_value_heads, 1, c.head_dim))
    keys.zero_(), values.zero_()
    cos, sin = model.rotary(torch.tensor([[slot]]), x.dtype)
    return dict(x=x, cos=cos, sin=sin, mask=torch.ones(1, 1, slot + 1, dtype=torch.bool), key_cache=keys,
                value_cache=values, slot=slot, heads=c.num_attention_heads, kv_heads=c.num_key_value_heads,
                scale=c.head_dim ** -0.5, **layer._gather_decode_weights(x))  # fresh lists, not the kept ones


def damage(t, change, dim, delta):
    if change == "dtype":
        return t.to(torch.int32 if not t.is_floating_point() else torch.bfloat16)
    if change == "float64":
        return t.double()
    if change == "rank":
        return t.unsqueeze(0)
    if change == "dim":
        d = dim % t.dim()
        return torch.zeros(*t.shape[:d], max(0, t.shape[d] + delta), *t.shape[d + 1:], dtype=t.dtype)
    return layout(t, "slice")


@settings(**common)
@given(quantized=st.booleans(), target=st.sampled_from(["x", "cos", "sin", "mask", "key_cache", "value_cache",
                                                        "router", "norms", "attention", "ffn", "slot", "heads",
                                                        "kv_heads", "top_k", "attention_groups", "ffn_groups"]),
       index=st.integers(0, 30), change=st.sampled_from(["dtype", "float64", "rank", "dim", "layout"]),
       dim=st.integers(0, 3), delta=st.sampled_from([-1, 1, 3]))
def fuzz_decode_layer(quantized, target, index, change, dim, delta):
    model = LAYERS[quantized]
    want = ops.decode_layer(**layer_call(model))[0]
    args = layer_call(model)
    value = args[target]
    if isinstance(value, int):
        args[target] = value + delta
    elif isinstance(value, list):
        if not value:
            return
        i = index % len(value)
        if isinstance(value[i], int):
            value[i] = value[i] + delta
        else:
            value[i] = damage(value[i], change, dim, delta)
    else:
        args[target] = damage(value, change, dim, delta)
    name = f"decode_layer {'awq' if quantized else 'plain'}: {target}[{index}] {change} d{dim} {delta:+d}"
    print(name, flush=True)
    try:
        got = ops.decode_layer(**args)[0]
    except RuntimeError:
        return
    assert got.shape == want.shape, (name, got.shape)
    assert torch.isfinite(got).all(), name
    if change == "layout" and target not in ("slot", "heads", "kv_heads", "top_k") and "groups" not in target:
        # the same values in another layout: the same answer. (An accepted dtype, such as a bf16 router weight, is
        # another valid input with its own answer; test_decode_layer.py covers the dtypes against the Python.)
        assert (got.float() - want).abs().max().item() <= tolerance(got.dtype) * max(1.0, want.abs().max().item()), name


for fuzz in (fuzz_awq_gemm, fuzz_awq_gemm_many, fuzz_awq_unpack, fuzz_linear_stored, fuzz_rms_norm, fuzz_decode_attention,
             fuzz_decode_layer):
    fuzz()
print("DONE", flush=True)
'''


def test_ops_survive_fuzzed_arguments():
    examples = 500 if os.environ.get("MINIMOE_HYPOTHESIS_PROFILE") == "thorough" else 60
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", CHILD, str(examples)], capture_output=True, text=True, env=env,
                          timeout=600)
    if "SKIP" in done.stdout:
        pytest.skip("the compiled CPU extension is not built")
    last = done.stdout.strip().splitlines()[-1:] or ["(nothing)"]
    assert done.returncode >= 0, f"the op process died with signal {-done.returncode} at: {last[0]}"
    assert done.returncode == 0 and "DONE" in done.stdout, f"{last[0]}\n{done.stderr[-3000:]}"
