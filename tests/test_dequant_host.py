"""The shared CUDA helpers, tested on the host: csrc/dequant.h and csrc/cuda/awq_plan.h against minimoe.awq.

The GPU kernels dequantize with `awq_magic_pair` (the 0x6400 / 0x4300 magic-number trick) and pick their kernel
and grid with awq_plan.h. Both are plain C++ (`__host__ __device__`), so this test compiles them with g++ into a
small shared library (tests/dequant_host_shim.cpp, no torch headers, about a second), calls it through ctypes
on numpy arrays and compares with the pure-PyTorch spec. It runs everywhere, GPU or not.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch

from minimoe import awq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FP16_MAGIC2, BF16_MAGIC2 = 0x64006400, 0x43004300
KERNEL_SIMPLE, KERNEL_GEMV, KERNEL_MMA = 0, 1, 2


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler (g++/c++) on PATH to build the host shim")
    out = tmp_path_factory.mktemp("dequant_host") / "libdequant_host.so"
    cmd = [compiler, "-std=c++17", "-O2", "-shared", "-fPIC", "-Wall", "-Werror", "-I", os.path.join(ROOT, "csrc"),
           os.path.join(ROOT, "tests", "dequant_host_shim.cpp"), "-o", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, f"g++ failed:\n{' '.join(cmd)}\n{result.stderr}"
    return ctypes.CDLL(str(out))


def ptr(array: np.ndarray) -> ctypes.c_void_p:
    assert array.flags["C_CONTIGUOUS"]
    return ctypes.c_void_p(array.ctypes.data)


def random_words(n: int, seed: int) -> np.ndarray:
    """Random 32-bit words, including ones with the top bit set (negative as int32)."""
    rng = np.random.default_rng(seed)
    words = rng.integers(0, 2**32, size=n, dtype=np.uint64).astype(np.uint32)
    words[:4] = [0, 0xFFFFFFFF, 0x80000000, 0x76543210]
    return words


def as_int32_tensor(words: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(words.view(np.int32).copy())


def magic_pairs(lib, words: np.ndarray, magic2: int) -> np.ndarray:
    out = np.zeros(words.size * 4, dtype=np.uint32)
    lib.shim_magic_pairs(ptr(words), ctypes.c_int64(words.size), ctypes.c_uint32(magic2), ptr(out))
    return out.reshape(words.size, 4)


def split_halves(pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """32-bit pair words -> (low 16 bits, high 16 bits) as uint16."""
    return (pairs & 0xFFFF).astype(np.uint16), (pairs >> 16).astype(np.uint16)


def pairs_in_channel_order(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """[n, 4] low / high halves of pairs 0..3 -> [n, 8] in channel order (pair p = channels 2p, 2p+1)."""
    out = np.empty((low.shape[0], 8), dtype=low.dtype)
    out[:, 0::2], out[:, 1::2] = low, high
    return out


def test_unpack_word_matches_spec(lib):
    words = random_words(4096, seed=1)
    codes = np.zeros(words.size * 8, dtype=np.uint8)
    lib.shim_unpack_words(ptr(words), ctypes.c_int64(words.size), ptr(codes))
    expected = awq.unpack(as_int32_tensor(words).reshape(1, -1)).numpy().reshape(-1)
    np.testing.assert_array_equal(codes, expected)


def test_nibble_order_each_channel_alone(lib):
    """Put code 1..15 into exactly one channel via awq.pack and check every helper finds it in that channel."""
    for channel in range(8):
        for code in range(1, 16):
            codes = torch.zeros(1, 8, dtype=torch.uint8)
            codes[0, channel] = code
            word = awq.pack(codes).numpy().view(np.uint32).copy()
            unpacked = np.zeros(8, dtype=np.uint8)
            lib.shim_unpack_words(ptr(word), ctypes.c_int64(1), ptr(unpacked))
            assert unpacked.tolist() == codes[0].tolist()
            low, high = split_halves(magic_pairs(lib, word, FP16_MAGIC2))
            got = pairs_in_channel_order(low, high)[0].astype(np.int64) - 0x6400
            assert got.tolist() == codes[0].tolist(), (channel, code)


def test_pair_channels_are_2p_and_2p_plus_1(lib):
    low, high = ctypes.c_int(), ctypes.c_int()
    for p in range(4):
        lib.shim_pair_channels(p, ctypes.byref(low), ctypes.byref(high))
        assert (low.value, high.value) == (2 * p, 2 * p + 1)
        # ... which is what AWQ's order says: nibbles p and p + 4 hold channels ORDER[p] and ORDER[p + 4].
        assert (awq.ORDER[p], awq.ORDER[p + 4]) == (2 * p, 2 * p + 1)


@pytest.mark.parametrize("magic2, magic_value, to_float", [
    (FP16_MAGIC2, 1024.0, "shim_fp16_bits_to_float"),
    (BF16_MAGIC2, 128.0, "shim_bf16_bits_to_float"),
])
def test_magic_number_gives_every_code_exactly(lib, magic2, magic_value, to_float):
    """For all 16 codes in every channel: the 16-bit float (magic | code) is exactly magic + code."""
    # Word with code q in every nibble, for each q: every channel of every pair sees every code.
    words = np.array([q * 0x11111111 for q in range(16)], dtype=np.uint32)
    low, high = split_halves(magic_pairs(lib, words, magic2))
    bits = pairs_in_channel_order(low, high)  # [16, 8]
    values = np.zeros(bits.size, dtype=np.float32)
    flat = np.ascontiguousarray(bits.reshape(-1))
    getattr(lib, to_float)(ptr(flat), ctypes.c_int64(flat.size), ptr(values))
    expected = magic_value + np.repeat(np.arange(16, dtype=np.float32), 8)
    np.testing.assert_array_equal(values, expected)
    # And the independent decoder agrees: numpy for fp16, torch for bf16.
    if magic2 == FP16_MAGIC2:
        np.testing.assert_array_equal(flat.view(np.float16).astype(np.float32), expected)
    else:
        as_bf16 = torch.from_numpy(flat.view(np.int16).copy()).view(torch.bfloat16).float().numpy()
        np.testing.assert_array_equal(as_bf16, expected)


def test_magic_pairs_random_words_match_unpack(lib):
    words = random_words(8192, seed=2)
    codes = awq.unpack(as_int32_tensor(words).reshape(1, -1)).numpy().reshape(-1, 8).astype(np.int64)
    for magic2, base in ((FP16_MAGIC2, 0x6400), (BF16_MAGIC2, 0x4300)):
        low, high = split_halves(magic_pairs(lib, words, magic2))
        got = pairs_in_channel_order(low, high).astype(np.int64) - base
        np.testing.assert_array_equal(got, codes)


def test_fp16_bits_to_float_all_normal_and_subnormal_patterns(lib):
    bits = np.arange(0, 0x10000, dtype=np.uint32).astype(np.uint16)
    exponent = (bits >> 10) & 0x1F
    bits = np.ascontiguousarray(bits[exponent != 0x1F])  # inf / NaN patterns are out of scope
    out = np.zeros(bits.size, dtype=np.float32)
    lib.shim_fp16_bits_to_float(ptr(bits), ctypes.c_int64(bits.size), ptr(out))
    np.testing.assert_array_equal(out, bits.view(np.float16).astype(np.float32))


@pytest.mark.parametrize("group_size, K, N", [(128, 256, 64), (32, 96, 24), (8, 8, 8)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kernel_dequant_pipeline_reproduces_spec_bitwise(lib, group_size, K, N, dtype):
    """The kernels' dequantization: (magic|q) - (magic|z) exactly, then one rounding multiply by the scale.

    Rebuilt here step by step from the helper's bit patterns, it must equal awq.dequantize(dtype=...) bitwise.
    """
    torch.manual_seed(K * N + group_size)
    weight = torch.randn(N, K) * 0.05
    qweight, qzeros, scales = awq.quantize(weight, group_size)
    magic2, base = (FP16_MAGIC2, 0x6400) if dtype == torch.float16 else (BF16_MAGIC2, 0x4300)
    groups, words_per_row = qzeros.shape

    def magic_values(packed: torch.Tensor) -> torch.Tensor:  # [R, W] int32 -> [R, 8W] magic + code, float32
        words = np.ascontiguousarray(packed.numpy().view(np.uint32).reshape(-1))
        low, high = split_halves(magic_pairs(lib, words, magic2))
        bits = np.ascontiguousarray(pairs_in_channel_order(low, high).reshape(-1))
        values = np.zeros(bits.size, dtype=np.float32)
        decode = lib.shim_fp16_bits_to_float if dtype == torch.float16 else lib.shim_bf16_bits_to_float
        decode(ptr(bits), ctypes.c_int64(bits.size), ptr(values))
        return torch.from_numpy(values).reshape(packed.shape[0], 8 * packed.shape[1])

    q = magic_values(qweight).reshape(groups, group_size, N)
    z = magic_values(qzeros).unsqueeze(1)
    difference = q - z  # exact: both are magic + small integer
    assert torch.equal(difference, (q - base_value(base)) - (z - base_value(base)))
    # The product of a 16-bit float scale and an integer of magnitude <= 15 is exact in fp32; one rounding to
    # the 16-bit type afterwards is then exactly the kernel's __hmul2.
    s = scales.to(dtype).float().unsqueeze(1)
    kernel = (difference * s).to(dtype).reshape(K, N)
    spec = awq.dequantize(qweight, qzeros, scales, group_size, dtype=dtype)
    assert torch.equal(kernel.view(torch.int16), spec.view(torch.int16))


def base_value(bits16: int) -> float:
    return 1024.0 if bits16 == 0x6400 else 128.0


def test_fp32_dequant_helper_matches_spec(lib):
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 16, 1000, dtype=np.uint8)
    zeros = rng.integers(0, 16, 1000, dtype=np.uint8)
    scales = rng.random(1000, dtype=np.float32).astype(np.float16).astype(np.float32)
    out = np.zeros(1000, dtype=np.float32)
    lib.shim_dequant(ptr(codes), ptr(zeros), ptr(scales), ctypes.c_int64(1000), ptr(out))
    np.testing.assert_array_equal(out, (codes.astype(np.float32) - zeros.astype(np.float32)) * scales)


# ------------------------------------------------------------------------------------------ dispatch plan


def gemv_config(lib, rows, W):
    m_tile, words = ctypes.c_int(), ctypes.c_int()
    lib.shim_gemv_config(rows, W, ctypes.byref(m_tile), ctypes.byref(words))
    return m_tile.value, words.value


@pytest.mark.parametrize("W", [1, 2, 3, 4, 5, 8, 512, 1792, 1793])
def test_gemv_config_covers_rows_and_divides_W(lib, W):
    for rows in range(1, lib.shim_gemv_max_rows() + 1):
        m_tile, words = gemv_config(lib, rows, W)
        assert m_tile >= rows and m_tile in (1, 2, 4, 8)
        assert words in (1, 2, 4) and W % words == 0
        assert m_tile * 8 * words <= 64, "accumulators per thread are capped at 64 fp32 registers"
    assert gemv_config(lib, 1, 512) == (1, 4), "M = 1 on a real layer must use 16-byte loads"


@pytest.mark.parametrize("K, N, G, sms", [(4096, 14336, 128, 132), (14336, 4096, 128, 132), (128, 8, 128, 108),
                                          (96, 24, 32, 1), (4096, 4096, 32, 132), (40, 8, 40, 132)])
def test_gemv_split_k_covers_every_group_once(lib, K, N, G, sms):
    groups, W = K // G, N // 8
    for rows in (1, 3, 8):
        _, words = gemv_config(lib, rows, W)
        blocks_n = lib.shim_gemv_blocks_n(W, words)
        assert blocks_n * 32 * words >= W > (blocks_n - 1) * 32 * words
        gps = lib.shim_gemv_groups_per_split(blocks_n, groups, sms)
        splits = lib.shim_gemv_splits(groups, gps)
        assert 1 <= gps <= groups and 1 <= splits <= groups
        covered = sorted(g for s in range(splits) for g in range(s * gps, min((s + 1) * gps, groups)))
        assert covered == list(range(groups)), "each group must belong to exactly one split"
        assert (splits - 1) * gps < groups, "no empty split"


def test_choose_kernel_rule(lib):
    choose = lib.shim_choose_kernel
    assert choose(1, 4096, 14336, 128, 1, 1) == KERNEL_GEMV
    assert choose(8, 4096, 14336, 128, 1, 1) == KERNEL_GEMV
    assert choose(9, 4096, 14336, 128, 1, 1) == KERNEL_MMA
    assert choose(2048, 14336, 4096, 128, 1, 1) == KERNEL_MMA
    assert choose(2048, 40, 8, 40, 1, 1) == KERNEL_GEMV, "odd G/N: GEMV in chunks of 8 rows"
    assert choose(2048, 64, 40, 32, 1, 1) == KERNEL_GEMV, "N % 32 != 0: no mma"
    assert choose(1, 4096, 4096, 128, 0, 1) == KERNEL_SIMPLE, "fp32 or mixed dtypes: simple kernel"
    assert choose(2048, 4096, 4096, 128, 1, 0) == KERNEL_SIMPLE, "unaligned pointers: simple kernel"
