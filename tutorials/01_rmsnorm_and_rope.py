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
# # 01 · RMSNorm and RoPE from scratch
#
# Two small pieces sit in every layer of Mixtral: **RMSNorm** (before attention and before the experts) and
# **rotary position embeddings** (applied to queries and keys). We write both in a few lines of plain
# PyTorch, check them against `minimoe.model`, and look at the two properties that explain the design:
# why the norm's statistics are computed in fp32, and why RoPE makes attention depend on *relative* position.
#
# Run it as a script (`python tutorials/01_rmsnorm_and_rope.py`) or open it as a notebook with jupytext.
# The page that goes with it: docs/rmsnorm.md and docs/rope.md.

# %%
import os

import torch

from minimoe.model import RMSNorm, RotaryEmbedding, apply_rope, rotate_half

torch.manual_seed(0)
PLOTS = os.environ.get("MINIMOE_TUTORIAL_PLOTS")  # a folder: figures are saved there, never shown

# %% [markdown]
# ## RMSNorm
#
# $$ \mathrm{RMSNorm}(x) = \frac{x}{\sqrt{\frac{1}{C}\sum_i x_i^2 + \epsilon}} \odot w $$
#
# No mean subtraction and no bias (unlike LayerNorm): only the scale of the vector is normalised.
# The reference implementation computes the statistics in fp32, casts back to the input dtype, and only then
# multiplies by the weight. We do exactly that.

# %%
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    mean_square = (x32 * x32).mean(dim=-1, keepdim=True)      # (..., 1)
    normed = x32 / torch.sqrt(mean_square + eps)
    return weight * normed.to(x.dtype)


C, eps = 4096, 1e-5                                            # Confinus-2x7B's hidden size and eps
x = torch.randn(2, 5, C, dtype=torch.float16) * 3              # (B, T, C) activations
weight = (1 + 0.1 * torch.randn(C)).to(torch.float16)

norm = RMSNorm(C, eps, dtype=torch.float16)
norm.weight.copy_(weight)
# Equal up to fp16 rounding: our sum of squares, our division and (with the compiled extension) the module's
# fused C++ op each round the fp32 statistics a little differently in the last bit, and then two roundings to
# fp16 (x * r, then weight * that) can land a few outputs one or two fp16 steps apart (2^-10 relative each).
torch.testing.assert_close(rms_norm(x, weight, eps), norm(x), rtol=2**-9, atol=0)
print("RMSNorm matches minimoe.model.RMSNorm (fp16 in, fp16 out) to fp16 rounding")

# %% [markdown]
# **Why fp32 statistics?** fp16 tops out at 65504. Hidden states of a real model have outliers of a few
# hundred, and the *square* of 300 is already 90000: it overflows fp16 to `inf`, the mean of the squares is
# `inf`, and an all-fp16 norm divides by infinity. In fp32 nothing happens.

# %%
big = torch.full((1, C), 300.0, dtype=torch.float16)          # an outlier-sized activation
print(f"300^2 in fp16: {(big * big)[0, 0].item()}  (fp16 max is {torch.finfo(torch.float16).max:.0f}),"
      f" in fp32: {(big.float() ** 2)[0, 0].item():.0f}")
naive = big / torch.sqrt((big * big).mean(-1, keepdim=True) + eps)
print(f"all-fp16 RMSNorm of it: {naive[0, :3].tolist()} ...   minimoe: {norm(big)[0, :3].tolist()} ...")
assert (naive == 0).all() and torch.isfinite(norm(big)).all()

# %% [markdown]
# ## RoPE: rotary position embeddings
#
# Split each head vector of dimension $D$ into pairs. Pair $j$ (dimensions $j$ and $j + D/2$ in the
# "split-half" layout of Hugging Face checkpoints) is rotated by the angle $p\,\theta^{-2j/D}$ at position $p$:
#
# $$ \begin{pmatrix} x'_j \\ x'_{j+D/2} \end{pmatrix} =
#    \begin{pmatrix} \cos p\omega_j & -\sin p\omega_j \\ \sin p\omega_j & \cos p\omega_j \end{pmatrix}
#    \begin{pmatrix} x_j \\ x_{j+D/2} \end{pmatrix}, \qquad \omega_j = \theta^{-2j/D} $$
#
# Written on whole vectors: `x * cos + rotate_half(x) * sin`, with `rotate_half(x1, x2) = (-x2, x1)`.
# Angles are computed in fp32: position 32767 is not even representable in fp16.

# %%
def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype,
                 compute: torch.dtype = torch.float32):
    j = torch.arange(head_dim // 2, dtype=compute)
    inv_freq = theta ** (-2 * j / head_dim)                   # (D/2,) omega_j
    angles = positions.to(compute)[..., None] * inv_freq      # (B, T, D/2), in fp32 like the reference
    angles = torch.cat([angles, angles], dim=-1)              # (B, T, D): both members of a pair share it
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, heads, T, D), cos/sin (B, T, D)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    rotated = torch.cat([-x2, x1], dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


D, theta = 128, 10000.0                                        # Confinus: head_dim 128, rope_theta 1e4
positions = torch.arange(7)[None]                              # (B=1, T=7)
q = torch.randn(1, 4, 7, D)                                    # (B, heads, T, D)

cos, sin = rope_cos_sin(positions, D, theta, torch.float32)
cos_ref, sin_ref = RotaryEmbedding(D, theta)(positions, torch.float32)
torch.testing.assert_close(cos, cos_ref)
torch.testing.assert_close(sin, sin_ref)
torch.testing.assert_close(rope(q, cos, sin), apply_rope(q, cos_ref, sin_ref))
torch.testing.assert_close(torch.cat([-q[..., D // 2:], q[..., :D // 2]], -1), rotate_half(q))
print("RoPE matches minimoe.model.RotaryEmbedding + apply_rope")

# %% [markdown]
# ### What to look at: the score depends only on the distance
#
# A rotation keeps lengths, and rotating $q$ by angle $a$ and $k$ by angle $b$ changes their dot product
# only through $a - b$. So $\langle \mathrm{rope}(q, m), \mathrm{rope}(k, n) \rangle$ is a function of $m - n$:
# attention scores see *relative* positions, and a KV cache can store keys already rotated.

# %%
qv, kv = torch.randn(D, dtype=torch.float64), torch.randn(D, dtype=torch.float64)


def score(m: int, n: int, compute: torch.dtype = torch.float64) -> float:
    pos = torch.tensor([[m, n]])
    c, s = rope_cos_sin(pos, D, theta, torch.float64, compute)
    both = torch.stack([qv, kv])[None, None]                   # (1, 1, 2, D): q at position m, k at n
    rq, rk = rope(both, c, s)[0, 0]
    return float(rq @ rk)


for m, n in [(5, 2), (105, 102), (30005, 30002)]:
    print(f"q at {m:>5}, k at {n:>5} (distance {m - n}): score {score(m, n):+.6f}")
assert abs(score(5, 2) - score(30005, 30002)) < 1e-9
print(f"with fp32 angles, as the model computes them: {score(5, 2, torch.float32):+.6f} at 5 vs "
      f"{score(30005, 30002, torch.float32):+.6f} at 30005 (an fp32 angle near 30000 is off by ~1e-3 rad)")
print(f"distance 0: {score(9, 9):+.6f} = plain q.k {float(qv @ kv):+.6f}")

# %% [markdown]
# Each pair turns at its own speed: pair 0 once per ~6 tokens, the last pair once per ~50,000 tokens.
# Fast pairs resolve nearby positions, slow pairs tell far-apart ones apart.

# %%
j = torch.arange(D // 2, dtype=torch.float64)
wavelength = 2 * torch.pi * theta ** (2 * j / D)
print("wavelength in tokens of pairs 0, 16, 32, 48, 63:",
      [round(float(wavelength[i]), 1) for i in (0, 16, 32, 48, 63)])

if PLOTS:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(PLOTS, exist_ok=True)
    distances = list(range(0, 200))
    plt.figure(figsize=(6, 3))
    plt.plot(distances, [score(d, 0) for d in distances])
    plt.xlabel("distance m - n")
    plt.ylabel("<rope(q, m), rope(k, n)>")
    plt.tight_layout()
    plt.savefig(os.path.join(PLOTS, "01_rope_score_vs_distance.png"))
    print("saved", os.path.join(PLOTS, "01_rope_score_vs_distance.png"))
