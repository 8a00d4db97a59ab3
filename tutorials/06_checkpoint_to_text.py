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
# # 06 · From a checkpoint to generated text
#
# The whole path in one file: write a (tiny, random) Mixtral checkpoint in the exact Hugging Face + AWQ
# layout, load it with `minimoe.load_model`, run one forward *by hand* layer by layer, then generate text
# with a greedy decoding loop written right here: prefill the prompt, then one token at a time through the
# KV cache, streaming the text as it forms. The weights are random, so the text is gibberish; the machinery
# is exactly what runs Confinus-2x7B-AWQ. The page: docs/generation.md.

# %%
import atexit
import json
import os
import shutil
import tempfile

import torch

import minimoe
from minimoe.checkpoint import Checkpoint
from minimoe.testing import make_tiny_checkpoint

torch.manual_seed(0)
folder = tempfile.mkdtemp(prefix="minimoe-tutorial-06-")
atexit.register(shutil.rmtree, folder, ignore_errors=True)          # tidy up when the script ends

# %% [markdown]
# ## The checkpoint
#
# A tiny Mixtral (2 layers, 2 experts, top-2, hidden size 64) but with Mistral's real vocabulary of 32000
# ids, so that a real tokenizer can drive it. Linears are AWQ int4 (`qweight`, `qzeros`, `scales`); the
# embeddings, norms, router and lm_head stay fp16, as in a real AWQ release.

# %%
make_tiny_checkpoint(folder, vocab_size=32000, seed=0)
print("files:", sorted(os.listdir(folder)))
with open(os.path.join(folder, "config.json")) as f:
    config = json.load(f)
print("config:", {k: config[k] for k in ("model_type", "hidden_size", "num_hidden_layers", "num_local_experts",
                                          "num_experts_per_tok", "vocab_size", "quantization_config")})
checkpoint = Checkpoint(folder)
for name in sorted(checkpoint)[:8]:
    info = checkpoint.tensors[name]
    print(f"  {name:<58} {str(info.dtype):<8} {list(info.shape)}")
print(f"  ... {len(list(checkpoint))} tensors in all")

# %% [markdown]
# ## Loading, and one forward by hand
#
# `load_model` builds the module tree (names = checkpoint names) and drops each tensor in place. We load in
# fp32 so that every comparison below can be exact. Then we re-run the forward ourselves:
# embed → for each layer: norm, attention, residual, norm, MoE, residual → final norm → lm_head.

# %%
model = minimoe.load_model(folder, dtype=torch.float32)
ids = torch.tensor([[1, 415, 5565, 302, 4843, 349]])               # <s> and five ids (a made-up prompt)
T = ids.shape[1]

x = model.model.embed_tokens(ids)                                  # (1, T, C)
cos, sin = model.rotary(torch.arange(T)[None], x.dtype)
causal = torch.ones(T, T, dtype=torch.bool).tril()[None]           # (1, T, T)
for layer in model.model.layers:
    h = x + layer.self_attn(layer.input_layernorm(x), cos, sin, causal, None)
    moe_out, route = layer.block_sparse_moe(layer.post_attention_layernorm(h))
    x = h + moe_out
by_hand = model.lm_head(model.model.norm(x))                       # (1, T, vocab)
torch.testing.assert_close(by_hand, model(ids))
print(f"forward by hand == model(ids): logits {tuple(by_hand.shape)}; last layer's router sent token 0 to"
      f" experts {route.experts[0].tolist()} with weights {[round(w, 3) for w in route.weights[0].tolist()]}")

# %% [markdown]
# ## The greedy decoding loop
#
# 1. **Prefill**: one forward over the whole prompt fills the KV cache; the last position's logits give the
#    first new token.
# 2. **Decode**: feed only the newest token; the cache supplies everything before it. Stop at `</s>` (id 2)
#    or after `max_new_tokens`.
#
# Greedy means argmax. The text is streamed with the tokenizer's stream decoder, which holds back bytes until
# they form a whole character. We prime it with the prompt's ids, so that the first generated piece
# (say `▁time`) prints with its space.

# %%
def greedy(model, prompt_ids: list[int], max_new_tokens: int, eos_id: int = 2, on_token=None) -> list[int]:
    cache = model.new_cache()
    feed = torch.tensor([prompt_ids])                              # prefill: the whole prompt
    new: list[int] = []
    for _ in range(max_new_tokens):
        logits = model(feed, cache=cache, last_token_only=True)    # (1, 1, vocab)
        token = int(logits[0, -1].argmax())
        if token == eos_id:
            break
        new.append(token)
        if on_token:
            on_token(token)
        feed = torch.tensor([[token]])                             # decode: only the newest token
    return new


def greedy_without_cache(model, prompt_ids: list[int], max_new_tokens: int, eos_id: int = 2) -> list[int]:
    """The same answer the slow way: recompute the whole sequence at every step."""
    seq = list(prompt_ids)
    for _ in range(max_new_tokens):
        token = int(model(torch.tensor([seq]))[0, -1].argmax())
        if token == eos_id:
            break
        seq.append(token)
    return seq[len(prompt_ids):]


prompt_ids = ids[0].tolist()
fast = greedy(model, prompt_ids, max_new_tokens=8)
slow = greedy_without_cache(model, prompt_ids, max_new_tokens=8)
assert fast == slow, (fast, slow)
print(f"greedy with the KV cache == without it: {fast}")

# %% [markdown]
# ## With Mistral's tokenizer
#
# `mistral_common` ships Mistral-7B's `tokenizer.model` (the one Confinus-2x7B uses); minimoe's own
# SentencePiece implementation reads it.

# %%
try:
    import mistral_common

    tokenizer_path = os.path.join(os.path.dirname(mistral_common.__file__), "data", "tokenizer.model.v1")
except ImportError:
    tokenizer_path = None

if tokenizer_path is None or not os.path.isfile(tokenizer_path):
    print("mistral_common is not installed (pip install mistral_common): skipping the text part")
else:
    tokenizer = minimoe.load_tokenizer(tokenizer_path)
    prompt = "Once upon a time"
    prompt_ids = tokenizer.encode(prompt, bos=True)
    print(f"prompt {prompt!r} -> ids {prompt_ids} -> pieces {[tokenizer.id_to_piece(i) for i in prompt_ids]}")

    stream = tokenizer.stream_decoder()
    for i in prompt_ids:                                           # prime: we continue an existing text
        stream.push(i)
    pieces: list[str] = []
    new_ids = greedy(model, prompt_ids, max_new_tokens=12, eos_id=tokenizer.eos_id,
                     on_token=lambda t: pieces.append(stream.push(t)))
    pieces.append(stream.flush())
    text = "".join(pieces)
    print(f"generated ids {new_ids}")
    print(f"streamed text: {prompt}|{text}   (random weights: gibberish is the right answer)")
    assert text == tokenizer.decode(prompt_ids + new_ids)[len(tokenizer.decode(prompt_ids)):]

    # minimoe.generate does the same (plus batching, sampling and timings); greedy is temperature 0.
    try:
        from minimoe.generate import generate
    except ImportError:
        print("minimoe.generate is not available in this checkout: nothing to compare with")
    else:
        result = generate(model, tokenizer, prompt, max_new_tokens=12, temperature=0.0)
        assert result.tokens[0] == new_ids, (result.tokens[0], new_ids)
        assert result.texts[0] == text, (result.texts[0], text)
        print(f"minimoe.generate agrees: same {len(new_ids)} ids and the same text"
              f" (finish reason {result.finish_reasons[0]!r})")
