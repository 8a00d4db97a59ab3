"""Write minimoe's built-in default model: minimoe/default_model/ (shipped inside the package, < 5 MB).

    python scripts/make_default_model.py            # needs mistral_common (a dev dependency) for the tokenizer

What it is: a 2-layer Mixtral-architecture model in the exact Hugging Face + AWQ layout (config.json with a
quantization_config, quant_config.json, model.safetensors with int4 qweight/qzeros/scales, tied fp16
embeddings), with Mistral-7B's real SentencePiece tokenizer (32000 pieces). Its weights are RANDOM
(seeded, deterministic): it exists so `minimoe generate "..."` runs offline on a fresh install and exercises
every code path a real checkpoint does. Its output is gibberish, and everything that uses it says so.
"""

import hashlib
import os
import shutil

from minimoe.testing import make_tiny_checkpoint

HERE = os.path.dirname(os.path.abspath(__file__))
TARGET = os.path.join(HERE, "..", "minimoe", "default_model")
TOKENIZER_SHA256 = "dadfd56d766715c61d2ef780a525ab43b8e6da4de6865bda3d95fdef5e134055"

SETTINGS = dict(
    vocab_size=32000,          # Mistral's tokenizer
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,     # head_dim 8
    num_key_value_heads=2,     # grouped-query attention, 2 query heads per kv head
    num_local_experts=2,
    num_experts_per_tok=2,     # top-2 of 2, like Confinus-2x7B
    max_position_embeddings=2048,
    rope_theta=10000.0,
    tie_word_embeddings=False,  # two 32000 x 32 fp16 tables, 2 MB each (tied tables make a random model
                                # echo its input token forever: logit(t) = |e_t|^2 dominates)
    dtype="float16",
    group_size=32,
)

README = """# minimoe's built-in default model

A 2-layer, 2-expert (top-2), hidden-size-32 Mixtral-architecture checkpoint in the Hugging Face + AWQ int4 layout,
written by `scripts/make_default_model.py`. **Its weights are random**: generated text is gibberish. It
exists so that `minimoe generate`, `minimoe route` and `minimoe chat` run offline on a fresh install.

tokenizer.model is Mistral-7B v0.1's SentencePiece model (Apache-2.0, Mistral AI), as shipped in the
`mistral_common` package (sha256 {sha}).
"""


def main() -> None:
    import mistral_common

    source = os.path.join(os.path.dirname(mistral_common.__file__), "data", "tokenizer.model.v1")
    digest = hashlib.sha256(open(source, "rb").read()).hexdigest()
    if digest != TOKENIZER_SHA256:
        raise SystemExit(f"{source}: sha256 {digest} is not Mistral-7B v0.1's tokenizer ({TOKENIZER_SHA256})")
    if os.path.isdir(TARGET):
        shutil.rmtree(TARGET)
    make_tiny_checkpoint(TARGET, quantized=True, seed=20261128, **SETTINGS)
    shutil.copyfile(source, os.path.join(TARGET, "tokenizer.model"))
    with open(os.path.join(TARGET, "README.md"), "w") as f:
        f.write(README.format(sha=TOKENIZER_SHA256))
    total = sum(os.path.getsize(os.path.join(TARGET, f)) for f in os.listdir(TARGET))
    print(f"wrote {TARGET}: {sorted(os.listdir(TARGET))}, {total / 1e6:.2f} MB")
    if total > 5e6:
        raise SystemExit("the default model must stay under 5 MB")


if __name__ == "__main__":
    main()
