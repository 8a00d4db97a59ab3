"""Assignment 1 tests: each against numbers derived by hand or computed independently in float64."""

import math

import pytest
import torch

from assignments.a1_norm_rope import adapters
from assignments.framework import task


def rms_norm_float64(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x64 = x.double()
    return x64 / torch.sqrt((x64 * x64).mean(-1, keepdim=True) + eps) * weight.double()


# ---- 1.1 RMSNorm ---------------------------------------------------------------------------------------------

@task("1.1")
def test_rms_norm_is_x_over_its_root_mean_square_times_weight():
    g = torch.Generator().manual_seed(0)
    x, weight = torch.randn(2, 3, 16, generator=g), torch.rand(16, generator=g) + 0.5
    got = adapters.run_rms_norm(x, weight, 1e-5)
    assert got.dtype == torch.float32 and got.shape == x.shape
    torch.testing.assert_close(got.double(), rms_norm_float64(x, weight, 1e-5), rtol=1e-5, atol=1e-6)


@task("1.1")
def test_rms_norm_by_hand():
    # x = (3, 4): mean of squares 12.5, so x / sqrt(12.5) = (0.8485..., 1.1313...)
    got = adapters.run_rms_norm(torch.tensor([[3.0, 4.0]]), torch.tensor([1.0, 2.0]), 0.0)
    expected = [3 / math.sqrt(12.5), 2 * 4 / math.sqrt(12.5)]
    assert got[0].tolist() == pytest.approx(expected, rel=1e-6)


@task("1.1")
def test_rms_norm_of_fp16_activations_does_not_overflow():
    # 300^2 = 90,000 is above float16's largest value (65,504): squares summed in fp16 become inf.
    x = torch.full((1, 64), 300.0, dtype=torch.float16)
    x[0, ::2] = -250.0
    weight = torch.ones(64, dtype=torch.float16)
    got = adapters.run_rms_norm(x, weight, 1e-5)
    assert got.dtype == torch.float16
    assert torch.isfinite(got).all(), "inf or NaN: were the statistics computed in fp16?"
    torch.testing.assert_close(got.double(), rms_norm_float64(x, weight, 1e-5), rtol=2e-3, atol=2e-3)


# ---- 1.2 RoPE angles -----------------------------------------------------------------------------------------

@task("1.2")
def test_rope_cos_sin_by_hand_split_half_layout():
    D, theta = 8, 10000.0
    positions = torch.tensor([[0, 1, 2, 7]])
    cos, sin = adapters.run_rope_cos_sin(positions, D, theta, torch.float32)
    assert cos.shape == (1, 4, D) and sin.shape == (1, 4, D)
    for t, p in enumerate(positions[0].tolist()):
        for j in range(D):
            angle = p * theta ** (-2 * (j % (D // 2)) / D)   # channel j and j + D/2 share a frequency
            assert cos[0, t, j].item() == pytest.approx(math.cos(angle), abs=1e-5)
            assert sin[0, t, j].item() == pytest.approx(math.sin(angle), abs=1e-5)


@task("1.2")
def test_rope_angles_are_computed_in_fp32_even_for_fp16_output():
    # position 30,000 is not even representable in fp16 (spacing 16 there): the angle must be fp32.
    D = 4
    cos, sin = adapters.run_rope_cos_sin(torch.tensor([[30001]]), D, 10000.0, torch.float16)
    assert cos.dtype == torch.float16
    assert cos[0, 0, 0].item() == pytest.approx(math.cos(30001.0), abs=2e-3)
    assert sin[0, 0, 0].item() == pytest.approx(math.sin(30001.0), abs=2e-3)


# ---- 1.3 rotate_half, apply_rope -----------------------------------------------------------------------------

@task("1.3")
def test_rotate_half_by_hand():
    got = adapters.run_rotate_half(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))
    assert got.tolist() == [-4.0, -5.0, -6.0, 1.0, 2.0, 3.0]


@task("1.3")
def test_apply_rope_rotates_channel_j_with_channel_j_plus_half():
    # D = 4: the pairs are (0, 2) and (1, 3) (split-half), not (0, 1) and (2, 3) (interleaved).
    angle = 0.3
    x = torch.tensor([1.0, 0.0, 0.0, 0.0]).view(1, 1, 1, 4)
    cos = torch.full((1, 1, 4), math.cos(angle))
    sin = torch.full((1, 1, 4), math.sin(angle))
    got = adapters.run_apply_rope(x, cos, sin).flatten().tolist()
    assert got == pytest.approx([math.cos(angle), 0.0, math.sin(angle), 0.0], abs=1e-6)


@task("1.3")
def test_query_key_score_depends_only_on_the_distance():
    g = torch.Generator().manual_seed(1)
    D, theta = 16, 10000.0
    q, k = torch.randn(1, 1, 1, D, generator=g, dtype=torch.float64), torch.randn(1, 1, 1, D, generator=g,
                                                                                  dtype=torch.float64)

    def rotated(x, position):
        j = torch.arange(D, dtype=torch.float64) % (D // 2)
        angle = position * theta ** (-2 * j / D)
        return adapters.run_apply_rope(x, angle.cos().view(1, 1, D), angle.sin().view(1, 1, D))

    scores = [(rotated(q, m) * rotated(k, n)).sum().item() for m, n in ((5, 2), (13, 10), (103, 100))]
    assert scores[0] == pytest.approx(scores[1], rel=1e-9) and scores[0] == pytest.approx(scores[2], rel=1e-9)
    assert (rotated(q, 5) * rotated(k, 2)).sum().item() != pytest.approx((q * k).sum().item(), rel=1e-3)


@task("1.3")
def test_apply_rope_broadcasts_over_heads():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 5, 8, generator=g)                  # (B, H, T, D)
    angle = torch.rand(2, 5, 8, generator=g)
    got = adapters.run_apply_rope(x, angle.cos(), angle.sin())
    x1, x2 = x[..., :4], x[..., 4:]
    c, s = angle.cos()[:, None], angle.sin()[:, None]
    expected = torch.cat((x1 * c[..., :4] - x2 * s[..., :4], x2 * c[..., 4:] + x1 * s[..., 4:]), dim=-1)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
