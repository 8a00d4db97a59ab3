"""The fixed-shape decode step (Transformer.forward over a StaticKVCache) and its decoders (CUDA graph, compile).

The reference is the model's ordinary forward with its growing KVCache, itself checked against transformers in
test_model.py. The static step must give the same logits for every step: it reads all `capacity` cache slots
with the unwritten ones masked, instead of exactly the written ones. On the CPU that is checked without a graph
(the step is plain PyTorch); the CUDA cases capture and replay it.
"""

import pytest
import torch

import minimoe
from minimoe.generate import SamplingConfig, generate_ids
from minimoe.cache import StaticKVCache
from minimoe.testing import make_tiny_checkpoint
from tests.conftest import left_padded


def decode_both_ways(model, prompts, steps, capacity, device="cpu"):
    """Greedy decode with the ordinary cache and with the static step, feeding both the ordinary path's tokens."""
    ids, mask = (t.to(device) for t in left_padded(prompts))
    cache = model.new_cache()
    first = model(ids, cache=cache, attention_mask=mask, last_token_only=True)[:, -1]
    static = StaticKVCache(model.config, len(prompts), capacity, model.dtype, device)
    assert static.load(cache) == ids.shape[1]
    token = first.argmax(-1)
    ordinary, stepped = [], []
    for _ in range(steps):
        ordinary.append(model(token[:, None], cache=cache, last_token_only=True)[:, -1])
        stepped.append(model(token[:, None], cache=static)[:, -1])
        token = ordinary[-1].argmax(-1)
    return torch.stack(ordinary), torch.stack(stepped), static


def test_static_step_equals_the_ordinary_cache(fp32_model):
    # left padding in the batch; fp32_model's sliding window (6) is shorter than the 21 tokens, so the window
    # part of the mask is exercised
    prompts = [[5, 9, 33, 2, 7, 100, 41], [12, 3, 250], [7, 7, 7, 7, 8]]
    ordinary, stepped, static = decode_both_ways(fp32_model, prompts, steps=14, capacity=24)
    assert torch.isfinite(stepped).all()
    torch.testing.assert_close(stepped, ordinary, rtol=0, atol=1e-5)
    assert int(static.slot) == 7 + 14
    assert static.next_position.tolist() == [7 + 14, 3 + 14, 5 + 14]


def test_static_step_equals_the_ordinary_cache_without_a_window(tmp_path):
    path = make_tiny_checkpoint(tmp_path, quantized=True, seed=4, dtype="float32")
    model = minimoe.load_model(path, dtype=torch.float32)
    assert model.config.sliding_window is None
    ordinary, stepped, _ = decode_both_ways(model, [[1, 2, 3, 4]], steps=6, capacity=10)
    torch.testing.assert_close(stepped, ordinary, rtol=0, atol=1e-5)


def test_static_cache_bad_sizes_are_clear_errors(fp32_model):
    c = fp32_model.config
    with pytest.raises(ValueError, match="capacity must be in 1.."):
        StaticKVCache(c, 1, c.max_position_embeddings + 1, torch.float32, "cpu")
    static = StaticKVCache(c, 1, 4, torch.float32, "cpu")
    cache = fp32_model.new_cache()
    fp32_model(torch.tensor([[1, 2, 3, 4]]), cache=cache)
    with pytest.raises(ValueError, match="holds 4 tokens, the capacity is 4"):
        static.load(cache)


def test_graph_decoder_refuses_a_cpu_model(fp32_model):
    from minimoe.engines.decoders import GraphDecoder

    with pytest.raises(ValueError, match="CUDA device, found it on cpu"):
        GraphDecoder(fp32_model, 1, 8)
    with pytest.raises(ValueError, match="engine 'cuda-graph' needs the model on a CUDA device"):
        generate_ids(fp32_model, [[1, 2]], SamplingConfig(max_new_tokens=3), engine="cuda-graph")
    assert fp32_model.engine != "cuda-graph"


def test_decoder_bookkeeping_without_a_graph(fp32_model):
    # GraphDecoder(graph=False) runs the very steps a graph would replay, eagerly: start from a prefilled cache,
    # feed tokens from outside inference mode (as generate_ids does), stop at the capacity.
    from minimoe.engines.decoders import GraphDecoder

    ids, mask = left_padded([[4, 8, 15, 16], [23, 42]])
    cache = fp32_model.new_cache()
    fp32_model(ids, cache=cache, attention_mask=mask)
    decoder = GraphDecoder(fp32_model, 2, capacity=9, graph=False)
    decoder.start(cache)
    for token in ([1, 2], [3, 4], [5, 6], [7, 8], [9, 10]):
        fed = torch.tensor(token)
        want = fp32_model(fed[:, None], cache=cache)[:, -1]
        torch.testing.assert_close(decoder.step(fed), want, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="cache is full"):
        decoder.step(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="expected 2 ids, found 3"):
        GraphDecoder(fp32_model, 2, capacity=9, graph=False).step(torch.tensor([1, 2, 3]))


def test_a_failed_capture_falls_back_to_eager_decoding(fp32_model, monkeypatch):
    # The cuda-graph engine must never make generation fail where eager decoding works: a capture that this
    # torch or driver refuses gives a warning and the same tokens. Simulated on the CPU: the engine is told to
    # want a graph, and the decoder's construction raises as a refused capture does.
    from minimoe import engines
    from minimoe.engines import decoders

    cfg = SamplingConfig(max_new_tokens=6, stop_on_eos=False)
    eager = generate_ids(fp32_model, [[5, 6, 7]], cfg)

    def refused(*args, **kwargs):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(engines, "decode_mode", lambda model: "cuda-graph")
    monkeypatch.setattr(decoders, "GraphDecoder", refused)
    with pytest.warns(RuntimeWarning, match="CUDA graph capture failed.*not permitted when stream is capturing"):
        fallback = generate_ids(fp32_model, [[5, 6, 7]], cfg)
    assert fallback.tokens == eager.tokens and fallback.graph_seconds == 0


# ------------------------------------------------------------------------------------------- torch.compile


def test_compiled_decode_steps_equal_the_ordinary_cache_and_generation(tmp_path):
    # One compilation (same batch and capacity throughout): the compiled static step against the ordinary
    # forward step by step, on an AWQ model (the C++ int4 kernels inside the compiled step) with a padded batch,
    # then generate_ids(engine="compile") against eager generation, token for token.
    from minimoe.engines.decoders import CompiledDecoder

    path = make_tiny_checkpoint(tmp_path, quantized=True, seed=8, dtype="float32", sliding_window=6)
    model = minimoe.load_model(path, dtype=torch.float32)
    prompts = [[5, 9, 33, 2, 7], [12, 3]]
    ids, mask = left_padded(prompts)
    cache = model.new_cache()
    token = model(ids, cache=cache, attention_mask=mask, last_token_only=True)[:, -1].argmax(-1)
    decoder = CompiledDecoder(model, batch=2, capacity=64)
    decoder.start(cache)
    for _ in range(8):
        expected = model(token[:, None], cache=cache, last_token_only=True)[:, -1]
        got = decoder.step(token)
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-4 * max(1.0, expected.abs().max().item()))
        token = expected.argmax(-1)

    cfg = SamplingConfig(max_new_tokens=10, stop_on_eos=False)  # capacity bucket: 5 + 10 -> 64, as above
    eager = generate_ids(model, prompts, cfg, engine="native")
    compiled = generate_ids(model, prompts, cfg, engine="compile")
    assert compiled.tokens == eager.tokens
    assert compiled.graph_seconds > 0 and compiled.decode_steps == eager.decode_steps


def test_capacity_buckets():
    from minimoe.generate import _capacity_bucket

    assert [_capacity_bucket(n, 4096) for n in (1, 64, 65, 148, 256, 257)] == [64, 64, 128, 256, 256, 512]
    assert _capacity_bucket(3000, 2048) == 2048  # never beyond the context


# ----------------------------------------------------------------------------------------------------- CUDA


@pytest.fixture(scope="module")
def cuda_checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("graphs_cuda"), quantized=True, seed=6)


@pytest.fixture(scope="module")
def cuda_awq_model(cuda_checkpoint):
    return minimoe.load_model(cuda_checkpoint, dtype=torch.float16, device="cuda")


@pytest.mark.cuda
def test_cuda_static_step_equals_the_ordinary_cache(cuda_awq_model):
    ordinary, stepped, _ = decode_both_ways(cuda_awq_model, [[3, 1, 4, 1, 5], [9, 2, 6]], steps=8, capacity=16,
                                            device="cuda")
    assert torch.isfinite(stepped).all()
    scale = ordinary.float().abs().max().item()
    assert (stepped.float() - ordinary.float()).abs().max().item() <= 8 * 2.0**-10 * scale


@pytest.mark.cuda
def test_cuda_graph_generation_equals_eager_generation(cuda_checkpoint):
    # fp32 (the int4 products then run the CUDA "simple" kernel), so that the two paths' different summation
    # orders cannot flip a greedy choice; fp16 is covered by the logits tests around this one
    model = minimoe.load_model(cuda_checkpoint, dtype=torch.float32, device="cuda")
    prompts = [[3, 1, 4, 1, 5, 9, 2], [6, 5, 3]]
    cfg = SamplingConfig(max_new_tokens=12, stop_on_eos=False)
    eager = generate_ids(model, prompts, cfg, engine="native")
    graphed = generate_ids(model, prompts, cfg, engine="cuda-graph")
    assert graphed.graph_seconds > 0 and eager.graph_seconds == 0
    assert graphed.tokens == eager.tokens


@pytest.mark.cuda
def test_cuda_graph_replays_follow_the_fed_tokens(cuda_awq_model):
    # Logits of each replay against the ordinary forward fed the same tokens: the graph really reads its input
    # tensor and really advances its cache (a graph stuck on its capture-time state would fail from step 2).
    from minimoe.engines.decoders import GraphDecoder

    ids = torch.tensor([[8, 6, 7, 5, 3]], device="cuda")
    cache = cuda_awq_model.new_cache()
    cuda_awq_model(ids, cache=cache)
    decoder = GraphDecoder(cuda_awq_model, 1, capacity=12)
    decoder.start(cache)
    feed = torch.tensor([0, 9, 17, 2, 250, 31], device="cuda")
    for i in range(len(feed)):
        want = cuda_awq_model(feed[i].view(1, 1), cache=cache)[:, -1].float()
        got = decoder.step(feed[i].view(1)).float()
        assert torch.isfinite(got).all()
        assert (got - want).abs().max().item() <= 8 * 2.0**-10 * want.abs().max().item(), f"step {i}"
    for _ in range(12 - 5 - len(feed)):
        decoder.step(feed[:1])
    with pytest.raises(ValueError, match="cache is full"):
        decoder.step(feed[:1])
