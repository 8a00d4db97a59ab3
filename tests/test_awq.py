"""Tests for minimoe.awq, the AWQ int4 GEMM format spec.

Every property is checked against something independent of the code under test: words and codes derived by
hand from the order table, a deliberately naive loop over Python ints, or a float64 matmul. Hypothesis draws
shapes and a seed; each seed gives fresh random tensors, so every run sees new data.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minimoe import awq

# The order table, typed in again from docs/facts.md#awq-packing-order rather than imported, so a wrong table in awq.py fails here:
# nibble i of a word (bits 4i..4i+3) holds output channel 8c + AWQ_ORDER[i].
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)

seeds = st.integers(min_value=0, max_value=2**32 - 1)
real_group_sizes = st.sampled_from([32, 64, 128])


def examples(count):
    """Hypothesis settings for `count` examples under the default "ci" profile (20 examples, see conftest.py);
    other profiles scale every count by the same factor, so "thorough" runs each property 25x as often."""
    scale = settings.default.max_examples / 20
    return settings(max_examples=max(1, round(count * scale)), deadline=None)


def generator(seed):
    return torch.Generator().manual_seed(seed)


def random_codes(rows, cols, seed):
    return torch.randint(0, 16, (rows, cols), generator=generator(seed), dtype=torch.int64)


def int32(word):
    """An unsigned 32-bit literal as the signed int32 value a tensor stores (bit 31 is the sign)."""
    return word - 2**32 if word >= 2**31 else word


def random_awq(K, N, G, seed, scale_dtype=torch.float16):
    """Random but valid packed tensors: arbitrary codes, zeros and positive scales."""
    g = generator(seed)
    qweight = awq.pack(torch.randint(0, 16, (K, N), generator=g))
    qzeros = awq.pack(torch.randint(0, 16, (K // G, N), generator=g))
    scales = (torch.rand(K // G, N, generator=g) * 0.02 + 1e-3).to(scale_dtype)
    return qweight, qzeros, scales


# ------------------------------------------------------------------------------------- hand-derived vectors


def test_hand_derived_negative_word():
    # Word 0xFEDCBA98 (bit 31 set, so as int32 it is negative). Reading nibbles from bit 0 upward:
    #   nibble 0 = 0x8 -> channel ORDER[0] = 0 gets 8
    #   nibble 1 = 0x9 -> channel ORDER[1] = 2 gets 9
    #   nibble 2 = 0xA -> channel ORDER[2] = 4 gets 10
    #   nibble 3 = 0xB -> channel ORDER[3] = 6 gets 11
    #   nibble 4 = 0xC -> channel ORDER[4] = 1 gets 12
    #   nibble 5 = 0xD -> channel ORDER[5] = 3 gets 13
    #   nibble 6 = 0xE -> channel ORDER[6] = 5 gets 14
    #   nibble 7 = 0xF -> channel ORDER[7] = 7 gets 15
    # so channels 0..7 read [8, 12, 9, 13, 10, 14, 11, 15].
    # A second column, word 0x76543210 (positive), gives channels 8..15 the codes nibble i = i, so channel
    # 8 + ORDER[i] gets i: channels 8..15 read [0, 4, 1, 5, 2, 6, 3, 7].
    words = torch.tensor([[int32(0xFEDCBA98), 0x76543210]], dtype=torch.int32)
    expected = [8, 12, 9, 13, 10, 14, 11, 15, 0, 4, 1, 5, 2, 6, 3, 7]
    codes = awq.unpack(words)
    assert codes.dtype == torch.uint8
    assert codes.tolist() == [expected]
    assert torch.equal(awq.pack(torch.tensor([expected])), words)


def test_hand_derived_channel_index_word():
    # Codes equal to their channel index, 0..7. Nibble i holds channel ORDER[i], so the nibbles from bit 0
    # upward are 0, 2, 4, 6, 1, 3, 5, 7; written most significant first that is 0x75316420.
    assert awq.pack(torch.arange(8).reshape(1, 8)).tolist() == [[0x75316420]]
    # Same for codes 8..15 (channel j gets 8 + j): nibbles 8, A, C, E, 9, B, D, F -> 0xFDB9ECA8, negative.
    assert awq.pack(torch.arange(8, 16).reshape(1, 8)).tolist() == [[int32(0xFDB9ECA8)]]


def test_docs_worked_example():
    # The worked example of docs/awq-format.md, so the page cannot drift from the code.
    # qweight word 0x1F7A3C05, nibbles from bit 0: 5, 0, C, 3, A, 7, F, 1 -> channels 0, 2, 4, 6, 1, 3, 5, 7,
    # so channels 0..7 hold [5, 10, 0, 7, 12, 15, 3, 1]. Zero word 0x88888888: every channel's zero is 8.
    # Scale 2^-6 = 0.015625 for all eight channels; W^T[0, n] = (q - 8) / 64.
    qweight = torch.tensor([[0x1F7A3C05]], dtype=torch.int32)
    qzeros = torch.tensor([[int32(0x88888888)]], dtype=torch.int32)
    scales = torch.full((1, 8), 0.015625, dtype=torch.float16)
    assert awq.unpack(qweight).tolist() == [[5, 10, 0, 7, 12, 15, 3, 1]]
    assert awq.unpack(qzeros).tolist() == [[8] * 8]
    expected = [-0.046875, 0.03125, -0.125, -0.015625, 0.0625, 0.109375, -0.078125, -0.109375]
    assert awq.dequantize(qweight, qzeros, scales, group_size=1, dtype=torch.float32).tolist() == [expected]


def test_docs_rtn_example():
    # The quantization example of docs/awq-format.md: one group of G = 4 weights (copied to all 8 channels).
    # s = 0.5 / 15 = 0.03333.. rounds to fp16 0.0333251953125; z = -round(-0.3 / s) = -round(-9.002) = 9;
    # w / s = -9.002, -3.001, 1.500(4), 6.001 round to -9, -3, 2, 6, plus z gives codes 0, 6, 11, 15.
    weight = torch.tensor([[-0.30, -0.10, 0.05, 0.20]] * 8)
    qweight, qzeros, scales = awq.quantize(weight, group_size=4)
    assert scales[0, 0].item() == 0.0333251953125
    assert awq.unpack(qzeros).tolist() == [[9] * 8]
    assert qzeros.tolist() == [[int32(0x99999999)]]
    assert awq.unpack(qweight)[:, 0].tolist() == [0, 6, 11, 15]
    assert awq.dequantize(qweight, qzeros, scales, 4, dtype=torch.float32)[:, 0].tolist() == [
        -0.2999267578125, -0.0999755859375, 0.066650390625, 0.199951171875]
    assert awq.reconstruction_error(weight, qweight, qzeros, scales, 4) == pytest.approx(0.01665, abs=1e-5)


def test_tables():
    assert awq.ORDER == AWQ_ORDER
    assert awq.REVERSE == (0, 4, 1, 5, 2, 6, 3, 7)
    assert awq.SUPPORTED_BITS == 4


# ------------------------------------------------------------------------------------------- pack / unpack


@examples(40)
@given(rows=st.integers(0, 9), words=st.integers(1, 6), seed=seeds,
       dtype=st.sampled_from([torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64]))
def test_pack_unpack_round_trip(rows, words, seed, dtype):
    codes = random_codes(rows, 8 * words, seed).to(dtype)
    packed = awq.pack(codes)
    assert packed.dtype == torch.int32 and packed.shape == (rows, words)
    unpacked = awq.unpack(packed)
    assert unpacked.dtype == torch.uint8 and unpacked.shape == (rows, 8 * words)
    assert torch.equal(unpacked.to(torch.int64), codes.to(torch.int64))


@examples(40)
@given(rows=st.integers(1, 9), words=st.integers(1, 6), seed=seeds)
def test_unpack_pack_round_trip_on_any_int32(rows, words, seed):
    # Every int32 is a valid word, negative ones included; force the extremes in as well.
    packed = torch.randint(-(2**31), 2**31, (rows, words), generator=generator(seed), dtype=torch.int64)
    packed[0, 0] = -(2**31)
    packed[-1, -1] = -1
    packed = packed.to(torch.int32)
    assert torch.equal(awq.pack(awq.unpack(packed)), packed)


@examples(25)
@given(rows=st.integers(1, 4), words=st.integers(1, 3), seed=seeds)
def test_unpack_matches_naive_bit_reading(rows, words, seed):
    packed = torch.randint(-(2**31), 2**31, (rows, words), generator=generator(seed), dtype=torch.int64)
    codes = awq.unpack(packed.to(torch.int32))
    for r in range(rows):
        for c in range(words):
            unsigned = int(packed[r, c]) & 0xFFFFFFFF  # Python ints have no sign bit trouble
            for i in range(8):
                assert codes[r, 8 * c + AWQ_ORDER[i]] == (unsigned >> (4 * i)) & 0xF


# ------------------------------------------------------------------------------------------------ quantize


def random_weight(N, K, seed, dtype):
    g = generator(seed)
    magnitude = 10.0 ** (torch.rand((), generator=g).item() * 5 - 4)  # 1e-4 .. 10
    return (torch.randn(N, K, generator=g) * magnitude).to(dtype)


def error_bound(weight, scales, G):
    """Per-element bound: half a step, plus what rounding the scale to fp16 can add (15 steps' worth).

    s32 is the exact formula's scale (in float64, independently of the code), s16 the stored one.
    """
    N, K = weight.shape
    w = weight.double().reshape(N, K // G, G)
    s32 = (w.amax(-1) - w.amin(-1)).clamp(min=1e-5) / 15  # [N, K/G]
    s16 = scales.double().t()  # [N, K/G]
    bound = s16 / 2 + 15 * (s32 - s16).abs() + 1e-6 * s16  # slack for fp32 arithmetic inside quantize
    return bound.repeat_interleave(G, dim=1)  # [N, K]


def assert_within_bound(weight, qweight, qzeros, scales, G):
    dq = awq.dequantize(qweight, qzeros, scales, G, dtype=torch.float32).double().t()  # [N, K]
    err = (dq - weight.double()).abs()
    bound = error_bound(weight, scales, G)
    assert torch.isfinite(err).all()
    assert (err <= bound).all(), f"max excess {(err - bound).max().item():.3g}"
    return err


@examples(30)
@given(N=st.sampled_from([8, 16, 40]), G=real_group_sizes, groups=st.integers(1, 3), seed=seeds,
       dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]), one_group=st.booleans())
def test_quantize_error_within_half_step(N, G, groups, seed, dtype, one_group):
    K = G * groups
    G = K if one_group else G  # G = K: one group per column
    weight = random_weight(N, K, seed, dtype)
    # The half-step bound holds for groups that contain 0 (the zero point is clamped to 0..15, so the grid
    # always contains 0); with randn and G >= 32 a one-signed group is vanishingly rare, but make sure.
    weight[:, ::G] = 0
    qweight, qzeros, scales = awq.quantize(weight, G)
    assert qweight.shape == (K, N // 8) and qweight.dtype == torch.int32
    assert qzeros.shape == (K // G, N // 8) and qzeros.dtype == torch.int32
    assert scales.shape == (K // G, N) and scales.dtype == torch.float16
    assert (scales > 0).all() and torch.isfinite(scales).all()
    assert_within_bound(weight, qweight, qzeros, scales, G)
    err = awq.reconstruction_error(weight, qweight, qzeros, scales, G)
    assert math.isfinite(err) and err <= error_bound(weight, scales, G).max().item()


def naive_quantize(weight, G):
    """The docs/facts.md#awq-zero-point formulas one (channel, group) at a time, in fp32, against the fp16-rounded scale."""
    N, K = weight.shape
    codes = torch.zeros(K, N, dtype=torch.int64)
    zeros = torch.zeros(K // G, N, dtype=torch.int64)
    scales = torch.zeros(K // G, N, dtype=torch.float16)
    for n in range(N):
        for g in range(K // G):
            group = weight[n, g * G:(g + 1) * G].float()
            s = (torch.clamp(group.max() - group.min(), min=1e-5) / 15).half()
            z = torch.clamp(-torch.round(group.min() / s.float()), 0, 15)
            q = torch.clamp(torch.round(group / s.float()) + z, 0, 15)
            codes[g * G:(g + 1) * G, n] = q.long()
            zeros[g, n] = int(z)
            scales[g, n] = s
    return codes, zeros, scales


@examples(15)
@given(N=st.sampled_from([8, 16]), G=st.sampled_from([32, 64]), groups=st.integers(1, 2), seed=seeds,
       dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
def test_quantize_matches_formulas_group_by_group(N, G, groups, seed, dtype):
    weight = random_weight(N, G * groups, seed, dtype)
    qweight, qzeros, scales = awq.quantize(weight, G)
    codes, zeros, expected_scales = naive_quantize(weight, G)
    assert torch.equal(awq.unpack(qweight).long(), codes)
    assert torch.equal(awq.unpack(qzeros).long(), zeros)
    assert torch.equal(scales, expected_scales)


def test_constant_rows():
    G, K = 32, 64
    weight = torch.randn(24, K)
    weight[0:8] = 0.0  # the most common constant row
    weight[8] = -4e-6  # constant, within the 1e-5 floor on the range
    weight[9] = 3e-6
    qweight, qzeros, scales = awq.quantize(weight, G)
    floor_scale = torch.tensor(1e-5 / 15, dtype=torch.float32).half()  # range 0 -> the clamp decides s
    assert torch.equal(scales[:, :10], floor_scale.expand(K // G, 10))
    dq = awq.dequantize(qweight, qzeros, scales, G, dtype=torch.float32).t()  # [N, K]
    assert torch.equal(dq[0:8], torch.zeros(8, K))  # zero is on the grid exactly
    assert_within_bound(weight, qweight, qzeros, scales, G)  # rows 8 and 9 too: |c| is inside the grid
    # Rows 10.. are random and must not be affected by their constant neighbours (scales are per channel).
    q2 = awq.quantize(weight[8:], G)
    assert torch.equal(awq.dequantize(*q2, G, dtype=torch.float32).t()[2:], dq[10:])


def test_constant_rows_away_from_zero_clip():
    # The grid always contains 0 (z is clamped to 0..15), so a constant row c > 15 * s lands on the grid's
    # top, 15 * s, where s = fp16(1e-5 / 15); c < 0 lands on -15 * s. This is the reference tooling's behaviour,
    # pinned here so that no kernel or quantizer "fixes" it silently.
    weight = torch.zeros(16, 32)
    weight[:8] = 0.5
    weight[8:] = -0.5
    qweight, qzeros, scales = awq.quantize(weight, 32)
    s = float(torch.tensor(1e-5 / 15).half())
    assert awq.unpack(qzeros)[0].tolist() == [0] * 8 + [15] * 8
    assert awq.unpack(qweight)[:, :8].unique().tolist() == [15]
    assert awq.unpack(qweight)[:, 8:].unique().tolist() == [0]
    dq = awq.dequantize(qweight, qzeros, scales, 32, dtype=torch.float64).t()
    assert torch.equal(dq[:8], torch.full((8, 32), 15 * s, dtype=torch.float64))
    assert torch.equal(dq[8:], torch.full((8, 32), -15 * s, dtype=torch.float64))


@examples(20)
@given(seed=seeds, G=real_group_sizes, center=st.sampled_from([0.0, 2e-6, -3e-6]))
def test_tiny_range_uses_the_floor(seed, G, center):
    # Rows whose range is far below 1e-5: s = max(range, 1e-5) / 15 takes the floor. In fp16 that scale is a
    # subnormal (about 6.6e-7), rounded by several percent, which the bound's second term accounts for.
    weight = center + torch.randn(8, 2 * G, generator=generator(seed)) * 1e-8
    weight[:, ::G] = 0.0
    qweight, qzeros, scales = awq.quantize(weight, G)
    assert torch.equal(scales, torch.tensor(1e-5 / 15).half().expand(2, 8))
    assert_within_bound(weight, qweight, qzeros, scales, G)


@examples(20)
@given(seed=seeds, G=real_group_sizes, kind=st.sampled_from(["positive", "negative", "huge", "spiky"]))
def test_codes_always_in_range(seed, G, kind):
    # Awkward groups: one-signed (the zero point clamps), ranges near fp16's limit, single outliers.
    g = generator(seed)
    weight = torch.randn(16, 2 * G, generator=g)
    if kind == "positive":
        weight = weight.abs() + 1.0
    elif kind == "negative":
        weight = -weight.abs() - 1.0
    elif kind == "huge":
        weight = weight * 1e5
    else:
        weight[torch.rand(weight.shape, generator=g) < 0.02] = 1e3
    qweight, qzeros, scales = awq.quantize(weight, G)  # pack would raise on a code outside 0..15
    for packed in (qweight, qzeros):
        codes = awq.unpack(packed)
        assert int(codes.min()) >= 0 and int(codes.max()) <= 15
    assert torch.isfinite(scales).all() and (scales > 0).all()


# ---------------------------------------------------------------------------------------------- dequantize


def naive_dequantize(qweight, qzeros, scales, G):
    """W^T[k][n] as Python floats, reading bits with Python ints: nothing shared with awq.unpack."""
    K, words = qweight.shape
    N = 8 * words

    def code(word, n):
        nibble = AWQ_ORDER.index(n % 8)
        return ((int(word) & 0xFFFFFFFF) >> (4 * nibble)) & 0xF

    return [[(code(qweight[k, n // 8], n) - code(qzeros[k // G, n // 8], n)) * float(scales[k // G, n])
             for n in range(N)] for k in range(K)]


@examples(20)
@given(words=st.integers(1, 3), G=st.sampled_from([1, 2, 4, 8]), groups=st.integers(1, 3), seed=seeds,
       scale_dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32]))
def test_dequantize_matches_naive_loop(words, G, groups, seed, scale_dtype):
    K, N = G * groups, 8 * words
    qweight, qzeros, scales = random_awq(K, N, G, seed, scale_dtype)
    expected = torch.tensor(naive_dequantize(qweight, qzeros, scales, G), dtype=torch.float64)
    # A 16-bit scale (8 or 11 significant bits) times an integer in -15..15 needs at most 15 significant bits,
    # so float32 holds it exactly; a float32 scale's product is exact only in float64.
    exact_dtypes = (torch.float64,) if scale_dtype == torch.float32 else (torch.float32, torch.float64)
    for dtype in exact_dtypes:
        got = awq.dequantize(qweight, qzeros, scales, G, dtype=dtype)
        assert got.dtype == dtype and got.shape == (K, N)
        torch.testing.assert_close(got.double(), expected, rtol=0, atol=0)
    # Default dtype is the scales' dtype, rounded once from the exact value.
    got = awq.dequantize(qweight, qzeros, scales, G)
    assert got.dtype == scale_dtype
    torch.testing.assert_close(got, expected.to(scale_dtype), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------- reference linear

UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}


@examples(30)
@given(lead=st.lists(st.integers(0, 3), min_size=0, max_size=3), words=st.integers(1, 4),
       G=real_group_sizes, groups=st.integers(1, 2), one_group=st.booleans(), with_bias=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]), seed=seeds)
def test_awq_linear_reference_vs_float64(lead, words, G, groups, one_group, with_bias, dtype, seed):
    K, N = G * groups, 8 * words
    G = K if one_group else G
    qweight, qzeros, scales = random_awq(K, N, G, seed)
    g = generator(seed + 1)
    x = torch.randn(*lead, K, generator=g).to(dtype)
    bias = (torch.randn(N, generator=g) * 0.1).half() if with_bias else None

    y = awq.awq_linear_reference(x, qweight, qzeros, scales, G, bias=bias)
    assert y.dtype == dtype and y.shape == (*lead, N)

    w_t = awq.dequantize(qweight, qzeros, scales, G, dtype=torch.float64)  # exact
    expected = x.double() @ w_t + (bias.double() if with_bias else 0.0)
    # Error budget: fp32 accumulation over K terms, then one rounding to x's dtype.
    magnitude = x.double().abs() @ w_t.abs() + (bias.double().abs() if with_bias else 0.0)
    bound = K * 2.0**-24 * magnitude + UNIT_ROUNDOFF[dtype] * expected.abs() + 1e-7
    err = (y.double() - expected).abs()
    assert torch.isfinite(y).all()
    assert (err <= bound).all(), f"max excess {(err - bound).max().item():.3g}"


def test_awq_linear_reference_float64_stays_float64():
    qweight, qzeros, scales = random_awq(64, 16, 32, seed=0)
    x = torch.randn(3, 64, dtype=torch.float64)
    y = awq.awq_linear_reference(x, qweight, qzeros, scales, 32)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, x @ awq.dequantize(qweight, qzeros, scales, 32, dtype=torch.float64))


@pytest.mark.cuda
def test_cuda_matches_cpu():
    qweight, qzeros, scales = random_awq(256, 64, 128, seed=1)
    x = torch.randn(5, 256).half()
    moved = [t.cuda() for t in (qweight, qzeros, scales)]
    assert torch.equal(awq.unpack(moved[0]).cpu(), awq.unpack(qweight))
    assert torch.equal(awq.dequantize(*moved, 128).cpu(), awq.dequantize(qweight, qzeros, scales, 128))
    torch.testing.assert_close(awq.awq_linear_reference(x.cuda(), *moved, 128).cpu(),
                               awq.awq_linear_reference(x, qweight, qzeros, scales, 128))
    w = torch.randn(64, 256)
    for got, want in zip(awq.quantize(w.cuda(), 128), awq.quantize(w, 128)):
        assert torch.equal(got.cpu(), want)


# -------------------------------------------------------------------------------------------- validation


def good_tensors(K=64, N=16, G=32):
    return random_awq(K, N, G, seed=0)


def test_check_awq_tensors_accepts_and_returns_shape():
    qweight, qzeros, scales = good_tensors()
    assert awq.check_awq_tensors(qweight, qzeros, scales, 32) == (64, 16)
    assert awq.check_awq_tensors(*good_tensors(K=64, N=8, G=64), 64) == (64, 8)  # G = K: one group
    assert awq.check_awq_tensors(qweight, qzeros, scales, 32, bias=torch.zeros(16).half()) == (64, 16)


@pytest.mark.parametrize("mutate, pattern", [
    (lambda q, z, s: (q.to(torch.int64), z, s), r"qweight must be torch\.int32.*found torch\.int64"),
    (lambda q, z, s: (q.to(torch.uint8), z, s), r"only AWQ 4-bit GEMM layout"),
    (lambda q, z, s: (q[None], z, s), r"qweight must be 2-D, found shape \(1, 64, 2\)"),
    (lambda q, z, s: (q, z.to(torch.int16), s), r"qzeros must be torch\.int32.*found torch\.int16"),
    (lambda q, z, s: (q, z, s.to(torch.int32)), r"scales must be a float tensor.*found torch\.int32"),
    (lambda q, z, s: (q, z, s[0]), r"scales must be 2-D, found shape \(16,\)"),
    (lambda q, z, s: (q, z, s.to("meta")), r"one device.*qweight cpu.*scales meta"),
    (lambda q, z, s: (q, z[:1], s), r"qzeros must be \[K/G, N/8\] = \[2, 2\], found shape \(1, 2\)"),
    (lambda q, z, s: (q, z, s[:1]), r"scales must have K/G = 64/32 = 2 rows.*would fit group_size 64"),
    (lambda q, z, s: (q[:48], z, s), r"scales must have K/G = 48/32|group_size 32 must divide K .* 48"),
    (lambda q, z, s: (q[:, :0], z, s), r"K >= 1 rows and N/8 >= 1 columns"),
    (lambda q, z, s: (q, z, s[:, :12]), r"N = 8 \* qweight\.shape\[1\] = 16 columns"),
])
def test_check_awq_tensors_errors(mutate, pattern):
    qweight, qzeros, scales = mutate(*good_tensors())
    with pytest.raises(ValueError, match=pattern):
        awq.check_awq_tensors(qweight, qzeros, scales, 32)


def test_gemv_layout_rejected():
    # GEMV layout of a [N=64, K=256] linear, G=128: qweight [N, K/8], qzeros [N, K/G/8 rounded up], scales [N, K/G].
    qweight = torch.zeros(64, 32, dtype=torch.int32)
    qzeros = torch.zeros(64, 1, dtype=torch.int32)
    scales = torch.ones(64, 2, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"look like the AWQ GEMV layout.*only AWQ 4-bit GEMM layout is supported"):
        awq.check_awq_tensors(qweight, qzeros, scales, 128)


def test_other_bit_widths_rejected():
    # 8-bit packing: 4 codes per int32, so qweight [K, N/4] next to scales [K/G, N].
    qweight = torch.zeros(128, 16, dtype=torch.int32)
    qzeros = torch.zeros(1, 16, dtype=torch.int32)
    scales = torch.ones(1, 64, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"8-bit packing.*only AWQ 4-bit GEMM layout is supported"):
        awq.check_awq_tensors(qweight, qzeros, scales, 128)
    # Unpacked codes, one per int32: qweight [K, N].
    with pytest.raises(ValueError, match=r"looks unpacked.*GPTQ.*only AWQ 4-bit GEMM layout"):
        awq.check_awq_tensors(torch.zeros(128, 64, dtype=torch.int32), qzeros, scales, 128)


@pytest.mark.parametrize("group_size, pattern", [
    (0, r"group_size must be a positive int, found 0"),
    (-1, r"found -1 .*group_size = in_features K"),
    (True, r"group_size must be a positive int, found True \(bool\)"),
    (32.0, r"found 32\.0 \(float\)"),
    (48, r"group_size 48 must divide K = qweight\.shape\[0\] = 64, found remainder 16"),
])
def test_bad_group_size(group_size, pattern):
    with pytest.raises(ValueError, match=pattern):
        awq.check_awq_tensors(*good_tensors(), group_size)


def test_bias_errors_and_name_prefix():
    qweight, qzeros, scales = good_tensors()
    name = "model.layers.3.block_sparse_moe.experts.1.w2"
    message = r"^model\.layers\.3\.block_sparse_moe\.experts\.1\.w2: bias must be \[N\] = \[16\], found shape \(8,\)"
    with pytest.raises(ValueError, match=message):
        awq.check_awq_tensors(qweight, qzeros, scales, 32, bias=torch.zeros(8), name=name)
    with pytest.raises(ValueError, match=r"bias must be a float tensor, found torch\.int64"):
        awq.check_awq_tensors(qweight, qzeros, scales, 32, bias=torch.zeros(16, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"bias must be None or a torch\.Tensor, found list"):
        awq.check_awq_tensors(qweight, qzeros, scales, 32, bias=[0.0] * 16)
    with pytest.raises(ValueError, match=r"one device.*bias meta"):
        awq.check_awq_tensors(qweight, qzeros, scales, 32, bias=torch.zeros(16, device="meta"))


@pytest.mark.parametrize("codes, pattern", [
    (torch.zeros(2, 8), r"codes must have an integer dtype, found torch\.float32"),
    (torch.zeros(2, 8, dtype=torch.bool), r"integer dtype, found torch\.bool"),
    (torch.zeros(8, dtype=torch.int64), r"codes must be 2-D \[R, N\], found shape \(8,\)"),
    (torch.zeros(2, 12, dtype=torch.int64), r"N = 12 columns must be a multiple of 8"),
    (torch.full((2, 8), 16), r"codes must lie in 0\.\.15, found values in 16\.\.16"),
    (torch.full((2, 8), -1), r"found values in -1\.\.-1"),
])
def test_pack_errors(codes, pattern):
    with pytest.raises(ValueError, match=pattern):
        awq.pack(codes)


def test_unpack_errors():
    with pytest.raises(ValueError, match=r"packed must be torch\.int32, found torch\.int64"):
        awq.unpack(torch.zeros(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"packed must be 2-D \[R, N/8\], found shape \(4,\)"):
        awq.unpack(torch.zeros(4, dtype=torch.int32))


@pytest.mark.parametrize("weight, group_size, pattern", [
    (torch.zeros(16), 8, r"weight must be 2-D \[N, K\].*found shape \(16,\)"),
    (torch.zeros(16, 64, dtype=torch.int32), 32, r"weight must be a float tensor, found torch\.int32"),
    (torch.zeros(12, 64), 32, r"N = out_features = 12 must be a multiple of 8"),
    (torch.zeros(16, 96), 64, r"group_size 64 must divide weight's K = in_features = 96, found remainder 32"),
    (torch.zeros(16, 64), -1, r"group_size must be a positive int, found -1"),
    (torch.full((16, 64), float("nan")), 32, r"weight must be finite, found NaN or inf"),
    (torch.tensor([[-6e5, 6e5] * 16] * 8), 32, r"widest group range 1\.2e\+06.*float16"),
])
def test_quantize_errors(weight, group_size, pattern):
    with pytest.raises(ValueError, match=pattern):
        awq.quantize(weight, group_size)


def test_dequantize_and_linear_errors():
    qweight, qzeros, scales = good_tensors()
    with pytest.raises(ValueError, match=r"dtype must be a float torch\.dtype, found torch\.int32"):
        awq.dequantize(qweight, qzeros, scales, 32, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"x must be \[\.\.\., K\] with K = in_features = 64, found shape \(2, 32\)"):
        awq.awq_linear_reference(torch.zeros(2, 32), qweight, qzeros, scales, 32)
    with pytest.raises(ValueError, match=r"x must be a float tensor \[\.\.\., K\], found torch\.int64"):
        awq.awq_linear_reference(torch.zeros(2, 64, dtype=torch.int64), qweight, qzeros, scales, 32)
    with pytest.raises(ValueError, match=r"x must be on the weight's device cpu, found meta"):
        awq.awq_linear_reference(torch.zeros(2, 64, device="meta"), qweight, qzeros, scales, 32)
    with pytest.raises(ValueError, match=r"weight must be \[N, K\] = \[16, 64\].*found shape \(64, 16\)"):
        awq.reconstruction_error(torch.zeros(64, 16), qweight, qzeros, scales, 32)
