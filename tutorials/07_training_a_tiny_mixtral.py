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
# # 07 · Training a tiny Mixtral
#
# minimoe's reference model (minimoe/model.py) is ordinary PyTorch, so it trains: switch `requires_grad` on,
# add a loss, step an optimiser. This tutorial trains a very small Mixtral for a few dozen steps on a toy
# corpus, in seconds, and checks what matters: the loss falls, every expert and the router receive gradients,
# the router's load-balancing loss is what transformers computes, and the result is a checkpoint that both
# minimoe and transformers load. The built-in model was trained the same way, longer and on Shakespeare
# (`scripts/train_default_model.py`). The page: docs/training.md.

# %%
import atexit
import math
import shutil
import tempfile

import torch
import torch.nn.functional as F

import minimoe
from minimoe import train as T
from minimoe.generate import SamplingConfig, generate_ids
from minimoe.config import ModelConfig

torch.manual_seed(0)
folder = tempfile.mkdtemp(prefix="minimoe-tutorial-07-")
atexit.register(shutil.rmtree, folder, ignore_errors=True)

# %% [markdown]
# ## A corpus and a model
#
# The corpus is a stream of token ids; here a fixed random "sentence" of 40 ids repeated, which a model can
# learn to continue perfectly once it has seen it. The model: 2 layers, 4 experts, top-2, hidden size 32,
# initialised as transformers initialises Mixtral (normal(0, 0.02) weights, norms at 1).

# %%
vocab = 96
sentence = torch.randint(3, vocab, (40,), generator=torch.Generator().manual_seed(0))
stream = sentence.repeat(100)
config = ModelConfig(model_type="mixtral", vocab_size=vocab, hidden_size=32, intermediate_size=64,
                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                     rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=256,
                     num_local_experts=4, num_experts_per_tok=2)
model = T.new_model(config, seed=0)
print(f"{sum(p.numel() for p in model.parameters())} parameters")

# %% [markdown]
# ## One step, by hand
#
# Next-token cross-entropy, plus the routers' load-balancing loss times 0.02 (Mixtral's `router_aux_loss_coef`).
# Without the auxiliary loss nothing stops the routers from sending every token to the same two experts.

# %%
batch = T.random_windows(stream, 8, 33, torch.Generator().manual_seed(1))   # 8 sequences of 32 + 1 tokens
logits, routes = model(batch[:, :-1], output_router_logits=True)
ce = F.cross_entropy(logits.reshape(-1, vocab), batch[:, 1:].reshape(-1))
aux = T.load_balancing_loss(routes, config.num_local_experts)
print(f"cross-entropy {ce.item():.3f} (a uniform guess: ln {vocab} = {math.log(vocab):.3f}), aux {aux.item():.3f}")
assert abs(ce.item() - math.log(vocab)) < 0.5       # an untrained model is close to a uniform guess

from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func  # noqa: E402

theirs = load_balancing_loss_func(tuple(r.logits for r in routes), config.num_local_experts, 2)
assert abs(aux.item() - theirs.item()) < 1e-5 * aux.item()
(ce + 0.02 * aux).backward()
for e, expert in enumerate(model.model.layers[0].block_sparse_moe.experts):
    assert expert.w1.weight.grad.abs().sum() > 0, f"expert {e} got no gradient"
assert model.model.layers[0].block_sparse_moe.gate.weight.grad.abs().sum() > 0
model.zero_grad()

# %% [markdown]
# ## The loop
#
# `minimoe.train.train` repeats that step with AdamW, a warm-up then cosine learning rate, and gradient
# clipping, and measures the validation loss as it goes.

# %%
cfg = T.TrainConfig(steps=60, batch_size=8, seq_len=32, lr=1e-2, min_lr=1e-3, warmup=5, eval_every=20,
                    eval_tokens=512)
log = T.train(model, stream, stream, cfg, progress=False)
for entry in log:
    if "val_loss" in entry:
        print(f"step {entry['step']:3d}  train {entry['loss']:.3f}  validation {entry['val_loss']:.3f}")
assert log[-1]["loss"] < 0.3 * log[0]["loss"], "the loss should fall a lot on a repeated sentence"

# %% [markdown]
# ## A checkpoint, and what it says
#
# Saved in the Hugging Face layout it loads like any downloaded model; given the first ids of the sentence,
# greedy decoding should continue it.

# %%
path = T.save_checkpoint(model, f"{folder}/tiny")
loaded = minimoe.load_model(path, dtype=torch.float32)
prompt = sentence[:8].tolist()
result = generate_ids(loaded, [prompt], SamplingConfig(max_new_tokens=16, stop_on_eos=False))
print("expected:", sentence[8:24].tolist())
print("got:     ", result.tokens[0])
right = sum(a == b for a, b in zip(result.tokens[0], sentence[8:24].tolist()))
print(f"{right} of 16 continued correctly")
assert right >= 12
