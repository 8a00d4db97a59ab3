# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · AWQ packing by hand
#
# An AWQ checkpoint stores each linear layer as 4-bit codes, eight to an int32, plus a scale and a zero point
# per group of 128 inputs. This tutorial does everything by hand with Python integers first (one word, bit by
# bit), then with tensors, and checks each step against `minimoe.awq`, the executable spec:
# `pack`, `unpack`, `quantize`, `dequantize`, `awq_linear_reference`. The page: docs/awq-format.md.

# %%
import torch

from minimoe import awq, ops

torch.manual_seed(0)

# %% [markdown]
# ## One word, with Python integers
#
# Word column c holds output channels 8c .. 8c+7, but not in order: nibble i (bits 4i..4i+3) holds channel
# `8c + ORDER[i]` with `ORDER = [0, 2, 4, 6, 1, 3, 5, 7]`: the even channels in the low 16 bits, the odd
# ones in the high 16 bits.

# %%
ORDER = [0, 2, 4, 6, 1, 3, 5, 7]
codes = [5, 10, 0, 7, 12, 15, 3, 1]           # the codes of channels 8c+0 .. 8c+7 (docs/awq-format.md)

word = 0
for nibble, channel in enumerate(ORDER):
    word |= codes[channel] << (4 * nibble)
print(f"packed by hand: 0x{word:08X}")

as_int32 = word - 2**32 if word >= 2**31 else word    # bit 31 is the int32 sign bit
packed = awq.pack(torch.tensor([codes]))
assert packed.item() == as_int32 == 0x1F7A3C05
print(f"awq.pack agrees: {packed.item()} = 0x{packed.item() & 0xFFFFFFFF:08X}")

# %% [markdown]
# Reading it back: shift nibble i down and mask with `0xF`. The mask matters when the word is negative
# (top nibble ≥ 8), because shifting a negative int32 right drags copies of the sign bit in from the left.

# %%
negative = awq.pack(torch.tensor([[0, 0, 0, 0, 0, 0, 0, 9]]))   # channel 7 lives in the top nibble
print(f"a word whose top nibble is 9: {negative.item()} (negative as int32)")
print("  arithmetic shift by 28 without the mask:", (negative >> 28).item(), "  with & 0xF:",
      ((negative >> 28) & 0xF).item())

unpacked_by_hand = [0] * 8
for nibble, channel in enumerate(ORDER):
    unpacked_by_hand[channel] = (as_int32 >> (4 * nibble)) & 0xF   # Python ints shift arithmetically too
assert unpacked_by_hand == codes == awq.unpack(packed)[0].tolist()
print("unpacked by hand == codes == awq.unpack")

# %% [markdown]
# ## Quantizing a weight matrix (round to nearest, with a zero point)
#
# For each output channel n and group g of G consecutive inputs:
#
# $$ s = \frac{\max(w_{\max} - w_{\min},\ 10^{-5})}{15}, \qquad z = \mathrm{clamp}(-\mathrm{round}(w_{\min}/s), 0, 15),
#    \qquad q = \mathrm{clamp}(\mathrm{round}(w/s) + z, 0, 15) $$
#
# s is stored as fp16, and z and q are rounded against that stored value. Then everything is laid out
# input-major: qweight is `[K, N/8]`, the transpose of nn.Linear's `[N, K]`.

# %%
N, K, G = 16, 64, 32
w = torch.randn(N, K) * 0.05                                       # nn.Linear layout [out, in]

groups = w.reshape(N, K // G, G)                                   # [N, K/G, G]
w_min, w_max = groups.amin(-1), groups.amax(-1)
s = ((w_max - w_min).clamp(min=1e-5) / 15).half()                  # [N, K/G], what the file stores
z = (-torch.round(w_min / s.float())).clamp(0, 15)
q = (torch.round(groups / s.float()[..., None]) + z[..., None]).clamp(0, 15)

my_qweight = awq.pack(q.reshape(N, K).T.to(torch.uint8))           # [K, N/8]
my_qzeros = awq.pack(z.T.to(torch.uint8))                          # [K/G, N/8]
my_scales = s.T.contiguous()                                       # [K/G, N]

qweight, qzeros, scales = awq.quantize(w, group_size=G)
assert torch.equal(my_qweight, qweight) and torch.equal(my_qzeros, qzeros) and torch.equal(my_scales, scales)
print(f"quantized by hand == awq.quantize: qweight {tuple(qweight.shape)} int32, qzeros {tuple(qzeros.shape)},"
      f" scales {tuple(scales.shape)} fp16")

# %% [markdown]
# ## Dequantizing, and the linear layer
#
# $$ W^\top[k, n] = (q[k, n] - z[k // G, n]) \cdot s[k // G, n], \qquad y = x\,W^\top $$

# %%
codes_kn = awq.unpack(qweight).float()                             # [K, N]
zeros_kn = awq.unpack(qzeros).float().repeat_interleave(G, dim=0)  # [K, N]: one zero per group of G rows
scales_kn = scales.float().repeat_interleave(G, dim=0)
w_t = (codes_kn - zeros_kn) * scales_kn
torch.testing.assert_close(w_t, awq.dequantize(qweight, qzeros, scales, G, dtype=torch.float32),
                           rtol=0, atol=0)

x = torch.randn(3, K)
torch.testing.assert_close(x @ w_t, awq.awq_linear_reference(x, qweight, qzeros, scales, G))
torch.testing.assert_close(x @ w_t, ops.awq_gemm(x, qweight, qzeros, scales, G), rtol=1e-5, atol=1e-5)
print(f"dequantize and awq_linear_reference agree with the hand version; ops.awq_gemm runs on"
      f" '{ops.awq_backend('cpu')}' and agrees too")

# %% [markdown]
# ## What to look at: the error, and the bits per weight
#
# When a group straddles zero every weight comes back within half a step, s/2, give or take what rounding
# s to fp16 moved the ends of the grid: up to 15 |s_fp32 - s_fp16| (docs/awq-format.md).

# %%
error = (w_t.T - w).abs().reshape(N, K // G, G).amax(-1)          # worst weight per (channel, group)
s_fp32 = (w_max - w_min).clamp(min=1e-5) / 15
bound = s.float() / 2 + 15 * (s_fp32 - s.float()).abs()
print(f"max |dequantized - w| = {error.max():.5f}; largest half step s/2 = {s.float().max() / 2:.5f}")
print(f"worst error / bound over all groups: {(error / bound).max():.3f} (<= 1)")
assert (error <= bound + 1e-7).all()

bits = (qweight.numel() * 32 + qzeros.numel() * 32 + scales.numel() * 16) / (N * K)
print(f"storage: {bits:.2f} bits per weight here (G = {G}); at G = 128: {4 + 4 / 128 + 16 / 128:.3f}")
