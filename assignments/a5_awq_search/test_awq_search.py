"""Assignment 5 tests: scales by hand, the grid search against an independent recomputation of its objective,
folding against the unfolded function, and the whole search against round-to-nearest on the built-in model."""

import math
import os

import pytest
import torch
import torch.nn.functional as F

import minimoe
from assignments.a5_awq_search import adapters
from assignments.framework import task
from minimoe.linear import AWQLinear, Linear
from minimoe.model import RMSNorm
from minimoe.quantize import awq_search as spec
from minimoe import train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILT_IN = os.path.join(ROOT, "minimoe", "default_model")
TEXT = os.path.join(ROOT, "tests", "data", "shakespeare_validation_sample.txt")


# ---- 5.1 scales ---------------------------------------------------------------------------------------------

@task("5.1")
def test_scales_by_hand():
    stat = torch.tensor([1.0, 4.0])
    # alpha 0.5: s = (1, 2), divided by sqrt(max * min) = sqrt(2)
    assert adapters.run_scales_for(stat, 0.5).tolist() == pytest.approx([1 / math.sqrt(2), math.sqrt(2)], rel=1e-6)
    assert adapters.run_scales_for(stat, 1.0).tolist() == pytest.approx([0.5, 2.0], rel=1e-6)
    assert adapters.run_scales_for(stat, 0.0).tolist() == [1.0, 1.0]        # alpha = 0 is RTN, exactly


@task("5.1")
def test_a_dead_channel_gets_a_small_positive_scale():
    s = adapters.run_scales_for(torch.tensor([0.0, 4.0]), 1.0)   # clamp to 1e-4, then / sqrt(1e-4 * 4) = 0.02
    assert s.tolist() == pytest.approx([0.005, 200.0], rel=1e-5)


@task("5.1")
def test_duo_scaling_divides_by_the_weight_statistic():
    s = adapters.run_scales_for(torch.tensor([1.0, 4.0]), 0.5, torch.tensor([4.0, 1.0]))
    raw = [1 / (2 + 1e-4), 2 / (1 + 1e-4)]
    norm = math.sqrt(max(raw) * min(raw))
    assert s.tolist() == pytest.approx([raw[0] / norm, raw[1] / norm], rel=1e-5)


# ---- 5.2 the grid search ------------------------------------------------------------------------------------

def search_case(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 64, generator=g)
    x[:, [3, 17, 40]] *= 25.0                                   # three outlier input channels
    layers = []
    for _ in range(2):                                          # two linears reading the same input (like q, k)
        layer = Linear(64, 32, dtype=torch.float32)
        layer.weight = torch.nn.Parameter(torch.randn(32, 64, generator=g) * 0.1, requires_grad=False)
        layers.append(layer)
    return x, layers


@task("5.2")
def test_search_minimises_the_output_error_over_the_grid():
    x, layers = search_case()
    originals = [layer.weight.clone() for layer in layers]
    settings = spec.Settings(group_size=32, bits=4, grid=11)
    stat = x.abs().mean(0)

    def run():
        return torch.cat([F.linear(x, layer.weight) for layer in layers], dim=-1)

    choice = adapters.run_search_scale(run, layers, stat, settings)
    reference = run()
    expected = []
    for alpha in settings.alphas:         # the objective, recomputed here from its definition
        s = spec.scales_for(stat, alpha)
        outs = [F.linear(x, spec.fake_quantize(w * s, 32, 4) / s) for w in originals]
        expected.append((torch.cat(outs, dim=-1) - reference).pow(2).mean().item())
    assert choice.errors == pytest.approx(expected, rel=1e-4)
    assert choice.rtn_error == pytest.approx(expected[0], rel=1e-4)
    best = min(range(len(expected)), key=expected.__getitem__)
    assert choice.alpha == settings.alphas[best]
    torch.testing.assert_close(choice.scales, spec.scales_for(stat, settings.alphas[best]))
    assert choice.errors[best] < 0.9 * choice.rtn_error           # the outliers make scaling pay
    for layer, w in zip(layers, originals):
        assert torch.equal(layer.weight, w), "the search must leave the weights as it found them"


@task("5.2")
def test_a_grid_of_one_is_round_to_nearest():
    x, layers = search_case(seed=1)
    choice = adapters.run_search_scale(lambda: F.linear(x, layers[0].weight), layers[:1], x.abs().mean(0),
                                       spec.Settings(group_size=32, bits=4, grid=1))
    assert choice.alpha == 0.0 and torch.equal(choice.scales, torch.ones(64))


# ---- 5.3 folding --------------------------------------------------------------------------------------------

@task("5.3")
def test_folding_leaves_the_function_unchanged():
    g = torch.Generator().manual_seed(2)
    norm = RMSNorm(16, 1e-5, dtype=torch.float32)
    norm.weight = torch.nn.Parameter(torch.rand(16, generator=g) + 0.5, requires_grad=False)
    layers = [Linear(16, 8, dtype=torch.float32) for _ in range(3)]
    for layer in layers:
        layer.weight = torch.nn.Parameter(torch.randn(8, 16, generator=g), requires_grad=False)
    x = torch.randn(5, 16, generator=g)
    before = [layer(norm(x)) for layer in layers]
    s = torch.rand(16, generator=g) * 4 + 0.25
    adapters.run_fold_into_norm(norm, layers, s)
    for layer, want in zip(layers, before):
        torch.testing.assert_close(layer(norm(x)), want, rtol=1e-5, atol=1e-5)


@task("5.3")
def test_folding_by_hand():
    norm = RMSNorm(2, 1e-5, dtype=torch.float32)
    norm.weight = torch.nn.Parameter(torch.tensor([1.0, 2.0]), requires_grad=False)
    layer = Linear(2, 1, dtype=torch.float32)
    layer.weight = torch.nn.Parameter(torch.tensor([[3.0, 5.0]]), requires_grad=False)
    adapters.run_fold_into_norm(norm, [layer], torch.tensor([2.0, 4.0]))
    assert norm.weight.tolist() == [0.5, 0.5] and layer.weight.tolist() == [[6.0, 20.0]]


# ---- 5.4 the whole search on the built-in model -------------------------------------------------------------

def fp_model_with_outliers():
    """The built-in model in fp32, plain weights, given 4 outlier channels (its function unchanged)."""
    model = minimoe.load_model(BUILT_IN, dtype="float32", engine="reference")
    for name, module in list(model.named_modules()):
        if isinstance(module, AWQLinear):
            plain = Linear(module.in_features, module.out_features, dtype=torch.float32)
            plain.weight = torch.nn.Parameter(module.dequantized_weight(torch.float32), requires_grad=False)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, plain)
    spec.add_outlier_channels(model, channels=4, factor=30.0)
    return model


@task("5.4")
def test_awq_beats_round_to_nearest_perplexity():
    tokenizer = minimoe.load_tokenizer(BUILT_IN)
    with open(TEXT, encoding="utf-8") as f:
        ids = torch.tensor(tokenizer.encode(f.read(), bos=True))
    calib, held_out = spec.calibration_windows(ids[:2048], 16, 128), ids[2048:4096]

    def ppl(model):
        return train.perplexity(model, held_out, 256)[0]

    fp = ppl(fp_model_with_outliers())
    rtn = ppl(spec.round_to_nearest_model(fp_model_with_outliers(), 128, 3))
    model = fp_model_with_outliers()
    adapters.run_quantize_model(model, calib, spec.Settings(group_size=128, bits=3, grid=10, clip=False))
    awq = ppl(model)
    assert math.isfinite(awq)
    closed = (rtn - awq) / (rtn - fp)
    assert closed >= 0.5, f"3-bit perplexity: fp {fp:.2f}, RTN {rtn:.2f}, yours {awq:.2f}: closes {closed:.0%} " \
                          "of RTN's gap (at least 50% needed)"
