"""Assignment 2 tests: against masks written out by hand and a per-head float64 loop (kv head = h // G)."""

import math

import pytest
import torch

from assignments.a2_attention import adapters
from assignments.framework import task
from minimoe.config import ModelConfig

T_, F_ = True, False


def naive_attention(q, k, v, allowed, scale):
    """Per (batch, head) in float64: softmax(q k^T * scale over the allowed keys) v, query head h reading kv
    head h // G (the grouping `k.repeat_interleave(G, dim=1)` gives)."""
    B, H, T, D = q.shape
    G = H // k.shape[1]
    out = torch.empty(B, H, T, D, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            scores = q[b, h].double() @ k[b, h // G].double().T * scale
            scores = scores.masked_fill(~allowed[b], float("-inf"))
            out[b, h] = torch.softmax(scores, dim=-1) @ v[b, h // G].double()
    return out


def causal(B, T, L):
    """Queries are the last T of L slots; each sees every key up to its own slot."""
    q_slot = torch.arange(L - T, L)[:, None]
    return (torch.arange(L)[None, :] <= q_slot).expand(B, T, L)


# ---- 2.1 grouped-query attention ----------------------------------------------------------------------------

@task("2.1")
def test_grouped_attention_matches_a_per_head_loop():
    g = torch.Generator().manual_seed(0)
    B, H, Hkv, T, L, D = 2, 4, 2, 3, 5, 8
    q, k, v = (torch.randn(B, H, T, D, generator=g), torch.randn(B, Hkv, L, D, generator=g),
               torch.randn(B, Hkv, L, D, generator=g))
    mask = causal(B, T, L)
    got = adapters.run_grouped_attention(q, k, v, mask, D ** -0.5)
    assert got.shape == (B, H, T, D) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), naive_attention(q, k, v, mask, D ** -0.5), rtol=1e-5, atol=1e-5)


@task("2.1")
def test_each_query_head_reads_the_kv_head_of_its_group():
    # 6 query heads, 2 kv heads: heads 0-2 share kv head 0, heads 3-5 kv head 1 (not 0, 2, 4 / 1, 3, 5).
    B, H, Hkv, T, D = 1, 6, 2, 2, 4
    q, k = torch.randn(B, H, T, D), torch.randn(B, Hkv, T, D)
    v = torch.stack([torch.full((T, D), 10.0), torch.full((T, D), 20.0)])[None]     # kv head j holds 10(j+1)
    got = adapters.run_grouped_attention(q, k, v, causal(B, T, T), D ** -0.5)
    expected = torch.tensor([[10.0, 10.0]] * 3 + [[20.0, 20.0]] * 3)
    torch.testing.assert_close(got[0, :, :, 0], expected, rtol=1e-6, atol=1e-5)


@task("2.1")
def test_scores_are_scaled_by_one_over_root_d():
    # two keys: k0 = 0 (score 0), k1 = q (score q.q = 4, times 1/sqrt(4) = 2); values 0 and 1.
    q = torch.ones(1, 1, 1, 4)
    k = torch.stack([torch.zeros(4), torch.ones(4)])[None, None]
    v = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])[None, None]
    got = adapters.run_grouped_attention(q, k, v, torch.ones(1, 1, 2, dtype=torch.bool), 0.5)
    assert got[0, 0, 0, 0].item() == pytest.approx(math.exp(2) / (1 + math.exp(2)), rel=1e-6)


# ---- 2.2 the mask -------------------------------------------------------------------------------------------

@task("2.2")
def test_causal_mask_by_hand():
    got = adapters.run_attention_mask(torch.arange(4), torch.ones(1, 4, dtype=torch.bool), None)
    assert got.tolist() == [[[T_, F_, F_, F_], [T_, T_, F_, F_], [T_, T_, T_, F_], [T_, T_, T_, T_]]]


@task("2.2")
def test_decode_step_mask_hides_left_padding():
    # one new token in slot 3; row 0 was left-padded by one token, row 1 not at all
    key_real = torch.tensor([[F_, T_, T_, T_], [T_, T_, T_, T_]])
    got = adapters.run_attention_mask(torch.tensor([3]), key_real, None)
    assert got.tolist() == [[[F_, T_, T_, T_]], [[T_, T_, T_, T_]]]


@task("2.2")
def test_sliding_window_mask_by_hand():
    got = adapters.run_attention_mask(torch.arange(4), torch.ones(1, 4, dtype=torch.bool), 2)
    assert got.tolist() == [[[T_, F_, F_, F_], [T_, T_, F_, F_], [F_, T_, T_, F_], [F_, F_, T_, T_]]]


@task("2.2")
def test_a_padding_query_sees_itself_so_no_row_is_empty():
    got = adapters.run_attention_mask(torch.arange(3), torch.tensor([[F_, F_, T_]]), None)
    assert got.tolist() == [[[T_, F_, F_], [F_, T_, F_], [F_, F_, T_]]]


# ---- 2.3 KVCache.update -------------------------------------------------------------------------------------

@task("2.3")
def test_update_appends_each_forwards_keys_and_values_in_order():
    g = torch.Generator().manual_seed(1)
    cache = adapters.new_kv_cache(1)
    seen_k, seen_v = [], []
    for t in (3, 1, 2, 1):                       # a prompt, then decode steps and a chunk
        k, v = torch.randn(2, 2, t, 4, generator=g), torch.randn(2, 2, t, 4, generator=g)
        cache.begin(torch.ones(2, t, dtype=torch.bool))
        keys, values = cache.update(0, k, v)
        cache.commit()
        seen_k.append(k)
        seen_v.append(v)
        assert torch.equal(keys, torch.cat(seen_k, dim=2)) and torch.equal(values, torch.cat(seen_v, dim=2))


@task("2.3")
def test_each_layer_has_its_own_keys():
    cache = adapters.new_kv_cache(2)
    for step in range(2):
        cache.begin(torch.ones(1, 1, dtype=torch.bool))
        k0, _ = cache.update(0, torch.full((1, 1, 1, 2), float(step)), torch.zeros(1, 1, 1, 2))
        k1, _ = cache.update(1, torch.full((1, 1, 1, 2), 10.0 + step), torch.zeros(1, 1, 1, 2))
        cache.commit()
    assert k0[0, 0, :, 0].tolist() == [0.0, 1.0] and k1[0, 0, :, 0].tolist() == [10.0, 11.0]


# ---- 2.4 Attention.forward ----------------------------------------------------------------------------------

CONFIG = ModelConfig(model_type="mixtral", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-5,
                     rope_theta=10000.0, max_position_embeddings=64, num_local_experts=2, num_experts_per_tok=2)


def weights_and_inputs(seed=2, B=2, T=5):
    g = torch.Generator().manual_seed(seed)
    C, H, Hkv, D = CONFIG.hidden_size, 4, 2, 8
    weights = {"q_proj": torch.randn(H * D, C, generator=g) * 0.2, "k_proj": torch.randn(Hkv * D, C, generator=g) * 0.2,
               "v_proj": torch.randn(Hkv * D, C, generator=g) * 0.2, "o_proj": torch.randn(C, H * D, generator=g) * 0.2}
    x = torch.randn(B, T, C, generator=g)
    j = torch.arange(D, dtype=torch.float64) % (D // 2)
    angle = torch.arange(T, dtype=torch.float64)[:, None] * 10000.0 ** (-2 * j / D)       # (T, D), split-half
    return weights, x, angle.cos().float().expand(B, T, D), angle.sin().float().expand(B, T, D)


def naive_forward(weights, x, cos, sin):
    B, T, _ = x.shape
    H, Hkv, D = 4, 2, 8

    def heads(w, n):
        return (x.double() @ w.double().T).view(B, T, n, D).transpose(1, 2)

    def rope(t):
        t1, t2 = t[..., :D // 2], t[..., D // 2:]
        c, s = cos.double()[:, None], sin.double()[:, None]
        return t * c + torch.cat((-t2, t1), dim=-1) * s

    q, k, v = rope(heads(weights["q_proj"], H)), rope(heads(weights["k_proj"], Hkv)), heads(weights["v_proj"], Hkv)
    out = naive_attention(q, k, v, causal(B, T, T), D ** -0.5)
    return out.transpose(1, 2).reshape(B, T, H * D) @ weights["o_proj"].double().T


@task("2.4")
def test_attention_forward_matches_the_naive_computation():
    weights, x, cos, sin = weights_and_inputs()
    attention = adapters.new_attention(CONFIG, weights)
    got = attention(x, cos, sin, causal(2, 5, 5), None)
    torch.testing.assert_close(got.double(), naive_forward(weights, x, cos, sin), rtol=1e-4, atol=1e-5)


@task("2.4")
def test_prefill_then_decode_equals_one_full_forward():
    weights, x, cos, sin = weights_and_inputs(seed=3)
    attention = adapters.new_attention(CONFIG, weights)
    cache = adapters.new_kv_cache(1)
    outs, start = [], 0
    for t in (3, 1, 1):                               # a 3-token prompt, then two decode steps
        cache.begin(torch.ones(2, t, dtype=torch.bool))
        L = start + t
        outs.append(attention(x[:, start:L], cos[:, start:L], sin[:, start:L], causal(2, t, L), cache))
        cache.commit()
        start = L
    torch.testing.assert_close(torch.cat(outs, dim=1).double(), naive_forward(weights, x, cos, sin),
                               rtol=1e-4, atol=1e-5)
