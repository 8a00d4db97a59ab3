"""Assignment 3 tests: routing decisions derived by hand, and the MoE block against a token-by-token loop."""

import math

import pytest
import torch

from assignments.a3_moe import adapters
from assignments.framework import task
from minimoe.config import ModelConfig
from minimoe.model import RouterOutput


def swiglu64(x, w1, w2, w3):
    a, b = x.double() @ w1.double().T, x.double() @ w3.double().T
    return (a * torch.sigmoid(a) * b) @ w2.double().T


# ---- 3.1 the router -----------------------------------------------------------------------------------------

@task("3.1")
def test_router_by_hand():
    # x picks one column of the router weight per token: token 0's logits are (1, 2, 0.5), token 1's (0, -1, 3)
    weight = torch.tensor([[1.0, 0.0, 0.0], [2.0, -1.0, 0.0], [0.5, 3.0, 0.0]])
    x = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    route = adapters.run_router(x, weight, top_k=2)
    assert route.experts.tolist() == [[1, 0], [2, 0]]
    e = math.e
    expected = [[e ** 2 / (e ** 2 + e), e / (e ** 2 + e)], [e ** 3 / (e ** 3 + 1), 1 / (e ** 3 + 1)]]
    for row, want in zip(route.weights.tolist(), expected):
        assert row == pytest.approx(want, rel=1e-6)
    assert route.logits.tolist() == [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]


@task("3.1")
def test_router_weights_are_the_softmax_over_the_chosen_logits():
    g = torch.Generator().manual_seed(0)
    x, weight = torch.randn(10, 8, generator=g), torch.randn(4, 8, generator=g)
    route = adapters.run_router(x, weight, top_k=2)
    logits = (x.double() @ weight.double().T)
    best = logits.topk(2, dim=-1).indices
    assert torch.equal(route.experts, best)
    expected = torch.softmax(logits.gather(1, best), dim=-1)
    torch.testing.assert_close(route.weights.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(route.weights.sum(-1).double(), torch.ones(10, dtype=torch.float64))


@task("3.1")
def test_router_keeps_the_logits_in_the_activation_dtype_and_weights_in_fp32():
    x, weight = torch.randn(3, 8, dtype=torch.bfloat16), torch.randn(2, 8, dtype=torch.bfloat16)
    route = adapters.run_router(x, weight, top_k=1)
    assert route.logits.dtype == torch.bfloat16 and route.weights.dtype == torch.float32
    assert route.weights.tolist() == [[1.0]] * 3       # top-1: the one chosen expert gets all the weight


# ---- 3.2 an expert ------------------------------------------------------------------------------------------

@task("3.2")
def test_expert_is_swiglu():
    g = torch.Generator().manual_seed(1)
    C, F = 8, 16
    x = torch.randn(5, C, generator=g)
    w1, w2, w3 = torch.randn(F, C, generator=g), torch.randn(C, F, generator=g), torch.randn(F, C, generator=g)
    got = adapters.run_expert(x, w1, w2, w3)
    torch.testing.assert_close(got.double(), swiglu64(x, w1, w2, w3), rtol=1e-5, atol=1e-5)


# ---- 3.3 the sparse MoE block -------------------------------------------------------------------------------

def config(experts, top_k):
    return ModelConfig(model_type="mixtral", vocab_size=64, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=4, rms_norm_eps=1e-5,
                       rope_theta=1e4, max_position_embeddings=64, num_local_experts=experts,
                       num_experts_per_tok=top_k)


def moe_case(experts, top_k, seed, idle=None):
    g = torch.Generator().manual_seed(seed)
    c = config(experts, top_k)
    x = torch.randn(2, 5, c.hidden_size, generator=g)
    gate = torch.randn(experts, c.hidden_size, generator=g)
    if idle is not None:            # an expert no token chooses: channel 0 is 5 everywhere, its gate row -100 x that
        x[..., 0] = 5.0
        gate[idle] = 0.0
        gate[idle, 0] = -100.0
    weights = [(torch.randn(16, 8, generator=g), torch.randn(8, 16, generator=g), torch.randn(16, 8, generator=g))
               for _ in range(experts)]
    return c, x, gate, weights


def token_by_token(x, gate, weights, top_k):
    out = torch.zeros(x.shape, dtype=torch.float64)
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            logits = x[b, t].double() @ gate.double().T
            chosen = logits.topk(top_k).indices
            mix = torch.softmax(logits[chosen], dim=-1)
            for e, w in zip(chosen.tolist(), mix.tolist()):
                out[b, t] += w * swiglu64(x[b, t][None], *weights[e])[0]
    return out


@task("3.3")
@pytest.mark.parametrize("experts,top_k", [(4, 2), (3, 1), (2, 2)])
def test_moe_block_equals_a_token_by_token_loop(experts, top_k):
    c, x, gate, weights = moe_case(experts, top_k, seed=experts * 10 + top_k)
    out, route = adapters.run_moe_block(x, c, gate, weights)
    assert out.shape == x.shape and route.experts.shape == (10, top_k)
    torch.testing.assert_close(out.double(), token_by_token(x, gate, weights, top_k), rtol=1e-4, atol=1e-5)


@task("3.3")
def test_an_expert_no_token_chose_changes_nothing():
    c, x, gate, weights = moe_case(4, 2, seed=7, idle=3)
    out, route = adapters.run_moe_block(x, c, gate, weights)
    assert (route.experts != 3).all()
    torch.testing.assert_close(out.double(), token_by_token(x, gate, weights, 2), rtol=1e-4, atol=1e-5)


# ---- 3.4 the load-balancing loss ----------------------------------------------------------------------------

def route_of(logits, experts):
    logits, experts = torch.tensor(logits), torch.tensor(experts)
    return RouterOutput(logits, experts, torch.ones(experts.shape))


@task("3.4")
def test_load_balancing_loss_by_hand():
    # two tokens, two experts, top-1. Probabilities (0.5, 0.5) and (0.75, 0.25): P = (0.625, 0.375).
    # Both chose expert 0: f = (1, 0). Loss = E * sum_e f_e P_e = 2 * 0.625.
    route = route_of([[0.0, 0.0], [math.log(3.0), 0.0]], [[0], [0]])
    assert adapters.run_load_balancing_loss([route], 2).item() == pytest.approx(1.25, rel=1e-6)


@task("3.4")
def test_perfectly_balanced_routing_gives_k():
    # four experts, top-2, uniform probabilities, every expert chosen equally often in every slot
    route = route_of([[0.0] * 4] * 4, [[0, 1], [2, 3], [1, 0], [3, 2]])
    assert adapters.run_load_balancing_loss([route], 4).item() == pytest.approx(2.0, rel=1e-6)


@task("3.4")
def test_the_loss_pools_the_tokens_of_every_layer():
    a = route_of([[0.0, 0.0], [math.log(3.0), 0.0]], [[0], [0]])
    b = route_of([[0.0, math.log(3.0)], [0.0, 0.0]], [[1], [1]])
    pooled = route_of([[0.0, 0.0], [math.log(3.0), 0.0], [0.0, math.log(3.0)], [0.0, 0.0]], [[0], [0], [1], [1]])
    assert adapters.run_load_balancing_loss([a, b], 2).item() == pytest.approx(
        adapters.run_load_balancing_loss([pooled], 2).item(), rel=1e-6)
    # f = (0.5, 0.5), P = (0.5, 0.5): 2 * (0.25 + 0.25)
    assert adapters.run_load_balancing_loss([a, b], 2).item() == pytest.approx(1.0, rel=1e-6)
