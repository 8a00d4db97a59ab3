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
# # 09 · Expert parallelism: when a model outgrows one device
#
# A Mixture-of-Experts model is mostly experts: at Confinus-2x7B's shape 83% of the bytes are the 64 expert
# MLPs (2 per layer), and a token uses only some of them. So the natural way to spread it over several devices
# is to give each device some of the experts and send every token to the devices holding the experts its router
# chose. This tutorial measures what that means on the built-in model (trained on Shakespeare), simulates the
# exchange by hand, and then runs it for real: two processes, each holding half the experts, talking over
# `torch.distributed` (gloo on CPUs). The page: docs/expert-parallel.md.
#
# Three ways to split a model over N devices, and what travels between them:
#
# | | each device holds | what travels, per layer |
# |---|---|---|
# | data parallel | the whole model, different requests | nothing (at inference) |
# | tensor parallel | a slice of every weight matrix (columns of q/k/v/w1/w3, rows of o/w2) | an all_reduce of every token's hidden state, twice a layer |
# | expert parallel | all of attention, E/N of the experts | each token to the devices holding its experts, and the outputs back |

# %%
import json
import os
import subprocess
import sys

import torch

import minimoe
from minimoe import parallel
from minimoe.checkpoint import Checkpoint

HERE = os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else os.getcwd()
ROOT = os.path.join(HERE, "..")
BUILT_IN = os.path.join(os.path.dirname(minimoe.__file__), "default_model")
TEXT = os.path.join(ROOT, "tests", "data", "shakespeare_validation_sample.txt")

# %% [markdown]
# ## 1. Who holds what
#
# minimoe's rule (`parallel.shard_experts`): contiguous blocks of experts, the first E mod N ranks one more.
# Everything that is not an expert (embedding, attention, norms, the routers, the lm_head) is replicated.

# %%
for experts, ranks in ((2, 2), (4, 2), (3, 2), (8, 3)):
    print(f"E = {experts}, N = {ranks}: " + ", ".join(f"rank {r}: {list(held)}" for r, held in
                                                       enumerate(parallel.shard_experts(experts, ranks))))

checkpoint = Checkpoint(BUILT_IN)
for row in parallel.split_bytes(checkpoint, 2):
    print(f"built-in model, rank {row['rank']}: experts {row['experts']}, {row['replicated_bytes'] / 1e6:.2f} MB "
          f"replicated + {row['expert_bytes'] / 1e6:.2f} MB experts")
every_expert = sum(info.nbytes for name, info in checkpoint.tensors.items() if ".experts." in name)
rows = parallel.split_bytes(checkpoint, 2)
assert sum(r["expert_bytes"] for r in rows) == every_expert                   # each expert on exactly one rank
assert rows[0]["replicated_bytes"] + every_expert == sum(i.nbytes for i in checkpoint.tensors.values())

# %% [markdown]
# ## 2. Load imbalance, measured on real text
#
# A rank's work in a layer is the number of (token, chosen expert) pairs that land on its experts. With a
# uniform router each of N ranks would get 1/N of them. A trained router is not uniform: the built-in model's
# experts specialise (newlines to one expert, punctuation to another; scripts/routing_analysis.py), so with
# contiguous blocks one rank gets more than its share of a layer's expert work, and the other waits for it at
# the collective: the layer takes as long as its busiest rank.

# %%
model = minimoe.load_model(BUILT_IN, dtype="float32", engine="reference")
tok = minimoe.load_tokenizer(BUILT_IN)
with open(TEXT, encoding="utf-8") as f:
    ids = torch.tensor([tok.encode(f.read(), bos=True)[:1024]])
with torch.inference_mode():
    _, routes = model(ids, output_router_logits=True)

E, k, N = model.config.num_local_experts, model.config.num_experts_per_tok, 2
shards = parallel.shard_experts(E, N)
print(f"{ids.shape[1]} tokens of a play the model never saw, top-{k} of {E}, {N} ranks {[list(s) for s in shards]}")
print(f"{'layer':>5} {'pairs per expert':>26} {'pairs per rank':>16} {'max / mean':>11} {'best pairing':>13}")
imbalance = []
for layer, route in enumerate(routes):
    per_expert = torch.bincount(route.experts.flatten(), minlength=E)
    assert per_expert.sum() == ids.shape[1] * k
    per_rank = torch.stack([per_expert[list(s)].sum() for s in shards])
    ratio = (per_rank.max() / per_rank.float().mean()).item()
    # the best any placement of two experts per rank could do (3 ways to pair 4 experts)
    pairings = [((0, 1), (2, 3)), ((0, 2), (1, 3)), ((0, 3), (1, 2))] if E == 4 else []
    best = min((max(per_expert[list(a)].sum(), per_expert[list(b)].sum()) / per_rank.float().mean()).item()
               for a, b in pairings) if pairings else ratio
    imbalance.append(ratio)
    print(f"{layer:>5} {str(per_expert.tolist()):>26} {str(per_rank.tolist()):>16} {ratio:>11.2f} {best:>13.2f}")
print(f"the slowest rank does {max(imbalance):.2f}x its fair share in the worst layer "
      f"(1.00 = perfectly balanced, {N:.2f} = one rank does everything)")

# %% [markdown]
# Placement matters: pairing a busy expert with a quiet one balances most layers better than contiguous
# blocks (the last column: the best of the three ways to put two experts on each rank). Production systems place experts by measured load, or add a load-balancing loss
# in training (Mixtral's router_aux_loss_coef) so that no expert is starved or flooded. Confinus-2x7B is the
# easy case: top-2 of 2, every token visits every expert, so the load is perfectly balanced by construction.

# %% [markdown]
# ## 3. The exchange, by hand
#
# Say each rank owns a contiguous slice of the tokens. In the general dispatch (`all_to_all`), rank r sends each
# of its (token, expert) pairs to the rank holding that expert. It first tells every rank how many pairs to
# expect: that **counts exchange** is an all_to_all of N numbers, and it is what lets every receiver size its
# buffer before the tokens arrive. Here is the N x N matrix of counts for layer 0 (row = sender, column =
# receiver), computed from the routes above:

# %%
owner = torch.empty(E, dtype=torch.long)
for r, held in enumerate(shards):
    owner[list(held)] = r
route = routes[0]
slices = torch.arange(ids.shape[1]).tensor_split(N)
counts = torch.stack([torch.bincount(owner[route.experts[s]].flatten(), minlength=N) for s in slices])
print("pairs sent, row = from rank, column = to rank:\n", counts)
assert counts.sum() == ids.shape[1] * k
hidden = model.config.hidden_size
moved = (counts.sum() - counts.diag().sum()).item()
print(f"{moved} of {counts.sum().item()} pairs cross ranks: {moved * hidden * 4 / 1e3:.0f} KB out and the same back "
      f"(fp32 hidden size {hidden}), then an all_gather so every rank has every token's output again")

# %% [markdown]
# In minimoe every rank runs attention on every token (it is replicated), so every rank already *has* every
# token: nothing needs sending at all if each rank simply runs its own experts on the tokens that chose them
# and the ranks then **sum** their partial outputs with one `all_reduce`. That moves 2 (N-1)/N of the hidden
# states per rank (ring all_reduce) against (N-1)/N (2k/N + 1) for the all_to_all plus the all_gather, so the
# all_reduce is cheaper whenever 2k >= N (here: 2 x 2 >= 2) and is what `dispatch="auto"` picks. The all_to_all
# wins when ranks own *different* tokens (data-parallel attention, as in DeepSpeed-MoE) or k is small and N
# large. minimoe has both; `parallel.choose_dispatch` is the rule.

# %%
print(f"top-{k} of {E} on {N} ranks: auto dispatch = {parallel.choose_dispatch(k, N)}")
for name, (k_, n_) in {"Confinus-2x7B, 2 GPUs": (2, 2), "Mixtral-8x7B, 8 GPUs": (2, 8),
                       "a top-1 model, 4 GPUs": (1, 4)}.items():
    reduce_cost, a2a_cost = 2 * (n_ - 1) / n_, (n_ - 1) / n_ * (2 * k_ / n_ + 1)
    print(f"{name:<24} all_reduce {reduce_cost:.2f} S, all_to_all + all_gather {a2a_cost:.2f} S "
          f"-> {parallel.choose_dispatch(k_, n_)}")

# %% [markdown]
# ## 4. For real: two processes, each holding half the experts
#
# `torchrun` starts one process per rank and tells each its rank; `minimoe generate --expert-parallel` joins
# them, loads only its own experts' tensors from the safetensors files, and prints one line per rank saying
# what it holds. The text must be exactly what one process generates.

# %%
env = dict(os.environ, PYTHONPATH=os.path.abspath(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           MINIMOE_DIST_TIMEOUT="60")
args = ["generate", "ROMEO:", "--max-new-tokens", "24"]
one = subprocess.run([sys.executable, "-m", "minimoe", *args], capture_output=True, text=True, env=env, check=True)
two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
                      "-m", "minimoe", *args, "--expert-parallel"], capture_output=True, text=True, env=env)
assert two.returncode == 0, two.stderr[-2000:]
print("one process:\n" + one.stdout)
print("two ranks:\n" + two.stdout)
print("\n".join(line for line in two.stderr.splitlines() if "expert-parallel rank" in line))
assert two.stdout == one.stdout

# %% [markdown]
# ## 5. What it costs at Confinus-2x7B's shape
#
# Per decoded token and layer, the all_reduce carries one hidden state: 4096 x 2 bytes (fp16) = 8 KiB, 32 times
# a token. Against the ~3.9 GB of weights a token reads that is nothing in bandwidth; what counts is latency,
# one collective per layer. benchmarks/expert_parallel.py measures it, with the memory per rank, on a
# real-shape random checkpoint; its last results:

# %%
results = os.path.join(ROOT, "benchmarks", "results", "expert_parallel.json")
if os.path.exists(results):
    with open(results) as f:
        bench = json.load(f)
    for row in bench["rows"]:
        print(f"{row['run']:<22} rank {row['rank']}: resident {row['resident_bytes'] / 1e9:.2f} GB, target "
              f"{row['target_bytes'] / 1e9:.2f} GB ({row['resident_over_target']:.2f}x), "
              f"decode {row['decode_tokens_per_s']:.2f} tok/s")
    comm = bench["communication"]
    print(f"one all_reduce of a token's hidden state: {comm['all_reduce_us']:.0f} us; "
          f"{comm['layers']} a token = {comm['share_of_step']:.1%} of a decode step")
