"""Engines (minimoe/engines): every engine computes what the reference, minimoe/model.py, computes.

The reference is the same checkpoint loaded with engine="reference" (the Python of model.py, the int4 product
dequantized in PyTorch too). Each fast engine must give the same logits, the same routing decisions and the same
keys and values in the cache, for a left-padded prompt batch and decode steps after it, on the model families the
engines handle: dense top-E-of-E routing, sparse top-k routing, a sliding window with one kv head, a dense
Mistral MLP, plain (unquantized) weights with no head grouping; fp32, bf16 and fp16 activations.

"The same" is within a tolerance and tie-aware: the kernels sum in another order, so logits agree to a few
units in the last place of the activation dtype, scaled by the logits' size; a token whose top-k choice is a
near tie in the reference's router logits may legitimately pick the other expert, so such examples are skipped
(rare: Hypothesis reports them as filtered). NaN never passes (the logits are checked finite).

Then the promise that makes model.py safe to edit: a reference function changed at run time (a notebook, a
monkeypatch) is what runs, under every engine, with an EngineFallbackWarning saying the fast path stepped aside;
one changed before the engine is applied is not swapped at all, which `print(model)` shows.
"""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import minimoe
from minimoe import engines, ops
from minimoe.cache import KVCache
from minimoe.engines import EngineFallbackWarning
from minimoe.engines import native as native_engine
from minimoe.engines.mirror import _owner_and_attribute, fingerprint
from minimoe.engines.verified import VERIFIED
from minimoe.generate import SamplingConfig, generate_ids
from minimoe.model import RouterOutput
from minimoe.testing import make_tiny_checkpoint
from tests.conftest import left_padded

needs_kernels = pytest.mark.skipif(not ops.has_fused_ops("cpu"), reason="the compiled CPU extension is not built")

CONFIGS = {  # name: (AWQ int4 linears, or plain ones in the checkpoint; the config's settings)
    "top-2 of 2, AWQ": (True, dict()),
    "top-2 of 4, AWQ": (True, dict(num_local_experts=4, num_experts_per_tok=2)),
    "top-1 of 3, window 5, one kv head, AWQ": (True, dict(num_local_experts=3, num_experts_per_tok=1,
                                                            sliding_window=5, num_key_value_heads=1)),
    "dense Mistral, AWQ": (True, dict(model_type="mistral")),
    "plain weights, no grouping, top-2 of 4": (False, dict(num_key_value_heads=4, num_local_experts=4,
                                                              num_experts_per_tok=2)),
}
# logits tolerance, relative to the largest |logit| of the reference: about 4 units in the last place of the
# dtype (measured over ~400 examples per dtype: at most 6.1e-6 fp32, 1.3e-2 bf16, 1.1e-3 fp16)
TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 3e-2, torch.float16: 4e-3}
_paths: dict = {}
_models: dict = {}


def checkpoint(config: str, tmp_path_factory) -> str:
    if config not in _paths:
        quantized, overrides = CONFIGS[config]
        _paths[config] = make_tiny_checkpoint(tmp_path_factory.mktemp("engines"), quantized=quantized, seed=7,
                                              **overrides)
    return _paths[config]


def model_for(config: str, dtype: torch.dtype, engine: str, tmp_path_factory):
    """One model per (config, dtype, engine), loaded once; engine re-applied each time (another test may have
    switched it)."""
    key = config, dtype, engine
    if key not in _models:
        _models[key] = minimoe.load_model(checkpoint(config, tmp_path_factory), dtype=dtype, engine=engine)
    return engines.use(_models[key], engine)


def run(model, prompts, tokens):
    """Prefill the left-padded batch, then one decode step per column of `tokens` (B, steps):
    [(logits (B, vocab) in fp32, routes, keys, values)] for the prompt's last position and every step."""
    ids, mask = left_padded(prompts)
    cache = model.new_cache()
    out = []
    with torch.inference_mode():
        logits, routes = model(ids, attention_mask=mask, cache=cache, output_router_logits=True)
        for step in range(tokens.shape[1] + 1):
            if step:
                logits, routes = model(tokens[:, step - 1:step], cache=cache, output_router_logits=True)
            out.append((logits[:, -1].float(), routes, [k[:, :, :cache.length].float() for k in cache.keys],
                        [v[:, :, :cache.length].float() for v in cache.values]))
    return out


def near_tie(route: RouterOutput, real: torch.Tensor, tolerance: float) -> bool:
    """Does any real token's k-th best router logit lie within `tolerance` (relative to the logits' size) of
    its (k+1)-th?"""
    logits = route.logits.float()[real.reshape(-1)]
    margin = tolerance * max(logits.abs().max().item() if logits.numel() else 1.0, 1.0)
    k, experts = route.experts.shape[1], route.logits.shape[1]
    if k == experts or logits.numel() == 0:
        return False
    top = logits.topk(k + 1, dim=-1).values
    return bool((top[:, k - 1] - top[:, k] < margin).any())


def assert_same(mine, theirs, dtype, prompts):
    """mine (a fast engine's run) equals theirs (the reference's) within the dtype's tolerance, tie-aware."""
    ids, mask = left_padded(prompts)
    real_rows = [mask.bool()] + [torch.ones(len(prompts), 1, dtype=torch.bool)] * (len(theirs) - 1)
    for step, ((logits, routes, keys, values), (logits0, routes0, keys0, values0), real) in enumerate(
            zip(mine, theirs, real_rows)):
        scale = logits0.abs().max().item()
        assume(not any(near_tie(r, real, 4 * TOLERANCE[dtype]) for r in routes0))
        assert torch.isfinite(logits).all(), f"step {step}: non-finite logits"
        err = (logits - logits0).abs().max().item() / scale
        assert err <= TOLERANCE[dtype], f"step {step}: logits differ by {err:.2e} of their size"
        assert len(routes) == len(routes0)
        for layer, (route, route0) in enumerate(zip(routes, routes0)):
            flat = real.reshape(-1)
            chosen = route.experts[flat].sort(-1).values
            chosen0 = route0.experts[flat].sort(-1).values
            assert torch.equal(chosen, chosen0), f"step {step}, layer {layer}: other experts chosen"
        for mine_kv, theirs_kv in zip(keys + values, keys0 + values0):
            size = theirs_kv.abs().max().item()
            assert (mine_kv - theirs_kv).abs().max().item() <= TOLERANCE[dtype] * max(size, 1)


prompt_batches = st.lists(st.lists(st.integers(0, 255), min_size=1, max_size=8), min_size=1, max_size=3)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("config", list(CONFIGS))
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much])
@given(prompts=prompt_batches, data=st.data())
def test_native_engine_equals_the_reference(config, dtype, prompts, data, tmp_path_factory):
    steps = data.draw(st.integers(1, 6), label="steps")
    tokens = torch.tensor(data.draw(st.lists(st.lists(st.integers(0, 255), min_size=steps, max_size=steps),
                                             min_size=len(prompts), max_size=len(prompts)), label="tokens"))
    fast = model_for(config, dtype, "native", tmp_path_factory)
    reference = model_for(config, dtype, "reference", tmp_path_factory)
    assert_same(run(fast, prompts, tokens), run(reference, prompts, tokens), dtype, prompts)


def test_print_model_shows_the_engine_and_its_modules(tmp_path_factory):
    path = checkpoint("top-2 of 2, AWQ", tmp_path_factory)
    reference = str(minimoe.load_model(path, dtype=torch.float32, engine="reference"))
    assert "engine=reference" in reference and "Native" not in reference
    assert "kernel=off (PyTorch reference)" in reference and "kernel=True" not in reference
    if ops.has_fused_ops("cpu"):
        fast = str(minimoe.load_model(path, dtype=torch.float32, engine="native"))
        assert "engine=native" in fast and "kernel=off" not in fast and "kernel=False" not in fast
        for twin in ("NativeRMSNorm", "NativeAttention", "NativeSparseMoeBlock", "NativeDecoderLayer"):
            assert twin in fast


def test_engine_names_are_checked_and_auto_is_the_default(tmp_path_factory, monkeypatch):
    path = checkpoint("top-2 of 2, AWQ", tmp_path_factory)
    with pytest.raises(ValueError, match=r"engine must be one of reference, native, compile, cuda-graph, auto; "
                                         r"found 'fast'"):
        minimoe.load_model(path, dtype=torch.float32, engine="fast")
    with pytest.raises(ValueError, match="engine 'cuda-graph' needs the model on a CUDA device, found it on cpu"):
        minimoe.load_model(path, dtype=torch.float32, engine="cuda-graph")
    monkeypatch.delenv("MINIMOE_ENGINE", raising=False)
    assert minimoe.load_model(path, dtype=torch.float32).engine == "native"       # auto on a CPU
    monkeypatch.setenv("MINIMOE_ENGINE", "reference")
    assert minimoe.load_model(path, dtype=torch.float32).engine == "reference"
    model = minimoe.load_model(path, dtype=torch.float32, engine="native")       # an argument beats the default
    assert model.engine == "native"
    assert engines.use(model, "reference").engine == "reference"                # and engines can be switched
    assert not any(type(m).__name__.startswith("Native") for m in model.modules())


def test_the_recorded_fingerprints_are_the_current_code():
    # A mirrored reference function changed without re-verifying its fast path makes that fast path step aside
    # for everyone (a warning per run). Changing one on purpose: change the kernel too, run this file, then
    # record `python -m minimoe.engines fingerprints` in minimoe/engines/verified.py.
    names = native_engine.all_mirrored_names()
    assert sorted(VERIFIED) == names
    current = {name: fingerprint(getattr(*_owner_and_attribute(name))) for name in names}
    assert current == VERIFIED


def test_fingerprints_ignore_comments_and_docstrings_but_not_code(tmp_path, monkeypatch):
    import importlib

    versions = {
        "original": 'def f(x):\n    """Doc."""\n    return x * 2  # a comment\n',
        "reworded": 'def f(x):\n    """Another doc,\n    longer."""\n    # a comment of its own\n    return (x*2)\n',
        "changed": 'def f(x):\n    """Doc."""\n    return x * 3  # a comment\n',
    }
    monkeypatch.syspath_prepend(str(tmp_path))
    prints = {}
    for name, source in versions.items():
        (tmp_path / f"engine_fp_{name}.py").write_text(source)
        prints[name] = fingerprint(importlib.import_module(f"engine_fp_{name}").f)
    assert prints["original"] == prints["reworded"] != prints["changed"]
    assert fingerprint(len) == "unknown"      # no Python source: never matches a record


# ---- edits to the reference run, under every engine --------------------------------------------------------

def _edits():
    """name -> (owner, attribute, a function that changes the result); each wraps the original."""
    from minimoe import cache, linear, model

    def wrap(owner, attribute, make):
        return owner, attribute, make(getattr(owner, attribute))

    return {
        "RMSNorm.forward": wrap(model.RMSNorm, "forward", lambda f: lambda self, x: f(self, x) * 2),
        "apply_rope": wrap(model, "apply_rope", lambda f: lambda x, cos, sin: f(x, cos, -sin)),
        "grouped_attention": wrap(model, "grouped_attention",
                                  lambda f: lambda q, k, v, mask, scale: f(q, k, v, mask, scale * 3)),
        "Router.forward": wrap(model.Router, "forward", lambda f: lambda self, x: RouterOutput(
            f(self, x).logits, f(self, x).experts.flip(-1), f(self, x).weights)),
        "Expert.forward": wrap(model.Expert, "forward", lambda f: lambda self, x: f(self, x) * 0.5),
        "SparseMoeBlock.forward": wrap(model.SparseMoeBlock, "forward",
                                       lambda f: lambda self, x: (f(self, x)[0] * 0.5, f(self, x)[1])),
        "DecoderLayer.forward": wrap(model.DecoderLayer, "forward", lambda f: lambda self, *a: (
            f(self, *a)[0] * 0.9, f(self, *a)[1])),
        "KVCache.update": wrap(cache.KVCache, "update",
                               lambda f: lambda self, layer, k, v: f(self, layer, k * 0.5, v)),
        "AWQLinear.forward": wrap(linear.AWQLinear, "forward", lambda f: lambda self, x: f(self, x) * 1.5),
    }


EDITS = list(_edits())


@pytest.fixture(autouse=True)
def _fresh_warnings():
    """Each twin warns once per set of changes per process; start every test from "not warned yet"."""
    for twin in native_engine.NATIVE.values():
        twin.mirror._warned.clear()
    yield


def _decode_logits(model, steps: int = 3):
    """Logits of a padded prompt batch and `steps` single-token steps after it (B, steps + 1, vocab), fp32."""
    out = run(model, [[3, 1, 4, 1, 5], [9, 2]], torch.tensor([[6, 5, 3][:steps], [5, 8, 9][:steps]]))
    return torch.stack([logits for logits, *_ in out], dim=1)


@needs_kernels
@pytest.mark.parametrize("edit", EDITS)
def test_an_edit_at_run_time_runs_under_the_native_engine(edit, tmp_path_factory, monkeypatch):
    config = "top-2 of 2, AWQ"
    fast = model_for(config, torch.float32, "native", tmp_path_factory)
    reference = model_for(config, torch.float32, "reference", tmp_path_factory)
    before = _decode_logits(reference)
    owner, attribute, edited = _edits()[edit]
    monkeypatch.setattr(owner, attribute, edited)
    with pytest.warns(EngineFallbackWarning, match=re.escape(edit) + ".*changed since the fast path was verified"):
        mine = _decode_logits(fast)
    theirs = _decode_logits(reference)
    assert not torch.allclose(theirs, before, rtol=0, atol=1e-3)        # the edit changes what the model computes
    torch.testing.assert_close(mine, theirs, rtol=0, atol=TOLERANCE[torch.float32] * theirs.abs().max().item())
    monkeypatch.undo()                                                  # edit undone: the fast path is back
    with warnings.catch_warnings():
        warnings.simplefilter("error", EngineFallbackWarning)
        torch.testing.assert_close(_decode_logits(fast), before, rtol=0, atol=2e-5 * before.abs().max().item())


@needs_kernels
def test_an_edit_of_the_dense_mlp_runs_under_the_native_engine(tmp_path_factory, monkeypatch):
    from minimoe import model as reference_module

    config = "dense Mistral, AWQ"
    fast = model_for(config, torch.float32, "native", tmp_path_factory)
    reference = model_for(config, torch.float32, "reference", tmp_path_factory)
    before = _decode_logits(reference)
    original = reference_module.MLP.forward
    monkeypatch.setattr(reference_module.MLP, "forward", lambda self, x: (original(self, x)[0] * 0.5, None))
    with pytest.warns(EngineFallbackWarning, match="MLP.forward"):
        mine = _decode_logits(fast)
    theirs = _decode_logits(reference)
    assert not torch.allclose(theirs, before, rtol=0, atol=1e-3)
    torch.testing.assert_close(mine, theirs, rtol=0, atol=2e-5 * theirs.abs().max().item())


@needs_kernels
def test_an_edit_before_the_engine_is_applied_keeps_the_reference_modules(tmp_path_factory, monkeypatch):
    from minimoe import model as reference_module

    path = checkpoint("top-2 of 2, AWQ", tmp_path_factory)
    original = reference_module.RMSNorm.forward
    monkeypatch.setattr(reference_module.RMSNorm, "forward", lambda self, x: original(self, x) * 2)
    with pytest.warns(EngineFallbackWarning, match="NativeRMSNorm.*RMSNorm.forward"):
        model = minimoe.load_model(path, dtype=torch.float32, engine="native")
    shown = str(model)
    assert "NativeRMSNorm" not in shown and "NativeDecoderLayer" not in shown     # they mirror RMSNorm.forward
    assert "NativeAttention" in shown and "NativeSparseMoeBlock" in shown          # they do not
    reference = minimoe.load_model(path, dtype=torch.float32, engine="reference")
    theirs = _decode_logits(reference)
    torch.testing.assert_close(_decode_logits(model), theirs, rtol=0, atol=2e-5 * theirs.abs().max().item())


@needs_kernels
def test_an_edit_after_compilation_runs_under_the_compile_engine(tmp_path_factory, monkeypatch):
    # torch.compile of a decode step takes tens of seconds on 2 cores: one config, one decoder, one generation.
    from minimoe import model as reference_module
    from minimoe.engines.decoders import CompiledDecoder

    path = checkpoint("top-2 of 2, AWQ", tmp_path_factory)
    compiled = minimoe.load_model(path, dtype=torch.float32, engine="compile")
    reference = model_for("top-2 of 2, AWQ", torch.float32, "reference", tmp_path_factory)
    prompt = torch.tensor([[4, 4, 2]])
    cache, cache0 = compiled.new_cache(), reference.new_cache()
    compiled(prompt, cache=cache)
    reference(prompt, cache=cache0)
    decoder = CompiledDecoder(compiled, batch=1, capacity=64)       # compiles the step now
    decoder.start(cache)
    atol = 1e-4
    for token in (7, 8):                                            # compiled steps = the reference's
        theirs = reference(torch.tensor([[token]]), cache=cache0)[:, -1]
        torch.testing.assert_close(decoder.step(torch.tensor([token])), theirs, rtol=0,
                                   atol=atol * theirs.abs().max().item())
    original = reference_module.RMSNorm.forward
    monkeypatch.setattr(reference_module.RMSNorm, "forward", lambda self, x: original(self, x) * 2)
    with pytest.warns(EngineFallbackWarning, match="changed since its decode step was captured/compiled"):
        mine = decoder.step(torch.tensor([9])).clone()
    theirs = reference(torch.tensor([[9]]), cache=cache0)[:, -1]
    torch.testing.assert_close(mine, theirs, rtol=0, atol=atol * theirs.abs().max().item())
    # A generation started after the edit runs the edited Python from its first step (compiled afresh).
    cfg = SamplingConfig(max_new_tokens=8, stop_on_eos=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EngineFallbackWarning)     # the eager prefill's native modules say so
        mine = generate_ids(compiled, [[4, 4, 2]], cfg)
    assert mine.graph_seconds > 0                                   # it did go through the compiled decoder
    assert mine.tokens == generate_ids(reference, [[4, 4, 2]], cfg).tokens


def test_the_reference_engine_runs_no_compiled_code(tmp_path_factory, monkeypatch):
    # Every kernel entry point raises: a model under the reference engine must not notice.
    path = checkpoint("top-2 of 2, AWQ", tmp_path_factory)
    model = minimoe.load_model(path, dtype=torch.float32, engine="reference")
    expected = _decode_logits(model)

    def refuse(*args, **kwargs):
        raise AssertionError("a compiled kernel ran under the reference engine")

    for name in ("awq_gemm", "awq_gemm_many", "linear_stored", "rms_norm", "decode_attention", "decode_layer"):
        monkeypatch.setattr(ops, name, refuse)
    assert torch.equal(_decode_logits(model), expected)
    assert isinstance(model.new_cache(), KVCache)
