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
# # 08 · AWQ from scratch
#
# Round-to-nearest (RTN, tutorial 04) treats every weight alike. AWQ (Lin et al., 2023, arXiv:2306.00978)
# starts from one observation: the weights that multiply the *large* activations matter most, and a scale
# per input channel, folded into the op before, protects them at no run-time cost. This tutorial reproduces
# the paper's argument on the built-in model, one step at a time, then runs the whole algorithm
# (minimoe/quantize/awq_search.py) and compares perplexities. The page: docs/awq-algorithm.md.
#
# The "full-precision" model here is the shipped built-in model with its int4 weights dequantized to fp32
# (so the tutorial runs anywhere: the fp16 original is not shipped). We quantize it afresh to **3 bits**,
# group 128, where rounding costs enough to see; at 4 bits the same code writes a checkpoint (last section).

# %%
import atexit
import os
import shutil
import tempfile

import torch
import torch.nn as nn

import minimoe
from minimoe import train as T
from minimoe.linear import AWQLinear, Linear
from minimoe.quantize import awq_search as A
from minimoe.quantize import quantize_checkpoint

torch.manual_seed(0)
HERE = os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else os.getcwd()
BUILT_IN = os.path.join(os.path.dirname(minimoe.__file__), "default_model")
TEXT = os.path.join(HERE, "..", "tests", "data", "shakespeare_validation_sample.txt")
folder = tempfile.mkdtemp(prefix="minimoe-tutorial-08-")
atexit.register(shutil.rmtree, folder, ignore_errors=True)


def fp_model() -> minimoe.model.Transformer:
    """The built-in model in fp32 with every AWQLinear replaced by a Linear holding its dequantized weight."""
    model = minimoe.load_model(BUILT_IN, dtype="float32", engine="reference")
    for name, module in list(model.named_modules()):
        if isinstance(module, AWQLinear):
            plain = Linear(module.in_features, module.out_features, dtype=torch.float32)
            plain.weight.data.copy_(module.dequantized_weight(torch.float32))
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, plain)
    return model


tok = minimoe.load_tokenizer(BUILT_IN)
with open(TEXT, encoding="utf-8") as f:
    ids = torch.tensor(tok.encode(f.read(), bos=True))
calib = A.calibration_windows(ids[:2048], 16, 128)      # the first 2048 tokens calibrate ...
held_out = ids[2048:]                                    # ... the rest (~3000 tokens) measure
print(f"{ids.numel()} tokens of Twelfth Night: {calib.numel()} for calibration, {held_out.numel()} held out")

# %% [markdown]
# ## 1. Activations are not alike
#
# The input of layer 0's q/k/v projections (after `input_layernorm`), on the calibration tokens: the mean
# |x| of each of the 256 channels. A few channels are several times the typical one.

# %%
model = fp_model()
layer = model.model.layers[0]
with torch.no_grad():
    x = model.model.embed_tokens(calib)
    a = layer.input_layernorm(x).reshape(-1, 256)          # (tokens, channels)
stat = A.mean_abs(a)
order = stat.argsort(descending=True)
print("largest mean|x| / median:", [round((stat[i] / stat.median()).item(), 1) for i in order[:5]])
print("smallest mean|x| / median:", round((stat[order[-1]] / stat.median()).item(), 2))

# %% [markdown]
# ## 2. Keeping 1% of the weights in full precision helps, if they are the right 1%
#
# The paper's Table 1: quantize q_proj's weight W to 3 bits, but keep the input channels of the top 1% of
# activations (2 of 256 channels) in fp32. The output error ||x Q(W)^T - x W^T|| falls much more than
# keeping 2 channels chosen at random. (Mixed precision is what the observation suggests, but no int4 kernel
# wants it: hence the scaling trick of part 3.)

# %%
W = layer.self_attn.q_proj.weight.detach().clone()
G, BITS = 128, 3


def out_error(Wq):
    return ((a @ Wq.T - a @ W.T).norm() / (a @ W.T).norm()).item()


def keep_channels(channels):
    Wq = A.fake_quantize(W, G, BITS)
    Wq[:, channels] = W[:, channels]
    return Wq


rtn_error = out_error(A.fake_quantize(W, G, BITS))
salient_error = out_error(keep_channels(order[:2]))
random_errors = [out_error(keep_channels(torch.randperm(256)[:2])) for _ in range(20)]
print(f"RTN {rtn_error:.4f} | keep 1% salient {salient_error:.4f} | keep 1% random "
      f"{sum(random_errors) / 20:.4f} (mean of 20)")
assert salient_error < sum(random_errors) / 20 < rtn_error * 1.01

# %% [markdown]
# ## 3. Scaling instead of keeping: s = mean|x|^alpha
#
# Multiply input channel k of W by s_k and divide x_k by s_k: the product is unchanged, but Q(W * s) rounds a
# scaled-up channel on a grid that is relatively finer for it. The error as a function of alpha (alpha = 0
# is RTN; too large an alpha crushes the other channels of each group):

# %%
errors = []
for alpha in A.Settings().alphas:
    s = A.scales_for(stat, alpha)
    errors.append(out_error(A.fake_quantize(W * s, G, BITS) / s))
best = min(range(len(errors)), key=errors.__getitem__)
print("alpha :", " ".join(f"{al:.2f}" for al in A.Settings().alphas[::3]))
print("error :", " ".join(f"{e:.4f}" for e in errors[::3]))
print(f"best alpha {A.Settings().alphas[best]:.2f}: error {errors[best]:.4f} vs RTN {errors[0]:.4f}")
assert errors[best] < errors[0]
if os.environ.get("MINIMOE_TUTORIAL_PLOTS"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.plot(A.Settings().alphas, errors, marker=".")
    plt.xlabel("alpha")
    plt.ylabel("relative output error of q_proj")
    plt.savefig(os.path.join(os.environ["MINIMOE_TUTORIAL_PLOTS"], "08_error_vs_alpha.png"))

# %% [markdown]
# ## 4. Folding the scale away
#
# At run time nobody divides x by s: `input_layernorm`'s weight is divided by s instead, and q, k and v
# (which share that input) are multiplied by s. The function does not change, before rounding:

# %%
probe = calib[:2, :64]
with torch.no_grad():
    before = model(probe)
    s = A.scales_for(stat, 0.5)
    A.fold_into_norm(layer.input_layernorm, [layer.self_attn.q_proj, layer.self_attn.k_proj,
                                             layer.self_attn.v_proj], s)
    after = model(probe)
print("max |logits after folding - before|:", (after - before).abs().max().item())
assert torch.allclose(after, before, atol=1e-4 * before.abs().max().item(), rtol=0)

# %% [markdown]
# ## 5. The whole algorithm, layer by layer: RTN vs AWQ perplexity
#
# `quantize_model` runs the search for every group of linears (q/k/v, v -> o, the router + experts' w1/w3,
# each expert's w3 -> w2) against the *block's* output error, then the clipping search, then rounds; each
# expert is calibrated on the tokens its router sends it. Held-out perplexity:

# %%
def ppl(m):
    return T.perplexity(m, held_out, 256)[0]


def compare(make, label):
    fp = ppl(make())
    rtn = ppl(A.round_to_nearest_model(make(), G, BITS))
    awq_model = make()
    summary = A.quantize_model(awq_model, calib, A.Settings(group_size=G, bits=BITS))
    awq = ppl(awq_model)
    print(f"{label}: fp {fp:.2f} | RTN {rtn:.2f} | AWQ {awq:.2f} (AWQ closes {100 * (rtn - awq) / (rtn - fp):.0f}% "
          "of RTN's gap)")
    for r in summary["layers"]:
        print(f"  layer {r['index']}: alpha qkv {r['alpha']['qkv']:.2f} ffn {r['alpha']['ffn_in']:.2f}; layer error "
              f"RTN {r['rtn_error']:.3f} -> AWQ {r['awq_error']:.3f}; top-2 sets changed "
              f"RTN {100 * r['routes_changed_rtn']:.1f}% AWQ {100 * r['routes_changed_awq']:.1f}%")
    return fp, rtn, awq


fp, rtn, awq = compare(fp_model, "3-bit, G = 128, the built-in model")
assert awq < rtn

# %% [markdown]
# On these 3,000 tokens AWQ recovers most of RTN's 3-bit loss. Do not read too much into it: on the fp16
# original of this model, scored on two whole held-out plays (92,617 tokens), AWQ is within noise of RTN at
# 4 bits and closes only 5% of the gap at 3 bits (docs/awq-algorithm.md). Part 1 showed why: this small
# model's activations have no real outlier channels (in layer 0 the largest mean |x| is under twice the median), so
# there is little to protect. Large language models are different: a handful of hidden channels carry
# activations tens of times the rest, in every layer (Dettmers et al., 2022, arXiv:2208.07339). We can give
# our model exactly that *without changing its function*: multiply 4 channels of every RMSNorm weight by 30
# and divide the matching weight columns by 30
# (`add_outlier_channels`). The fp model computes the same logits; RTN now rounds those columns' tiny weights
# to nearly nothing, while their activations are 30 times larger. This is the case AWQ was made for:

# %%
def with_outliers():
    model = fp_model()
    A.add_outlier_channels(model, channels=4, factor=30.0)
    return model


fp_o, rtn_o, awq_o = compare(with_outliers, "3-bit, G = 128, the same model with 4 outlier channels")
assert abs(fp_o - fp) < 1e-3 * fp                       # the same function
assert rtn_o > rtn and (rtn_o - awq_o) > 0.75 * (rtn_o - fp_o)   # RTN suffers, AWQ recovers most of it

# %% [markdown]
# ## 6. A real AWQ checkpoint
#
# At 4 bits the same search writes AutoAWQ's GEMM layout, which minimoe (and AutoAWQ's readers) load. The
# source must be a plain checkpoint, so write the fp model first.

# %%
src = T.save_checkpoint(fp_model(), os.path.join(folder, "fp"), tokenizer=os.path.join(BUILT_IN, "tokenizer.model"),
                        dtype=torch.float32)
dst = os.path.join(folder, "awq")
quantize_checkpoint(src, dst, method="awq", group_size=64, calibration=calib)
loaded = minimoe.load_model(dst, dtype="float32")
print("written:", sorted(os.listdir(dst))[:3], "...")
print(f"4-bit AWQ checkpoint, G = 64: held-out perplexity {ppl(loaded):.2f} (fp {fp:.2f})")
assert ppl(loaded) < 1.05 * fp
