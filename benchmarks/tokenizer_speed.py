"""Encode about 1 MB of mixed text with minimoe's pure-Python tokenizer and with sentencepiece (C++), same run.

    python benchmarks/tokenizer_speed.py [--model PATH] [--out benchmarks/results/tokenizer_speed.json]

The text is built deterministically from what every Python install has, so two machines time the same bytes:
  prose         the Python reference manual shipped as pydoc_data/topics.py (English, with code examples)
  code          standard-library sources (a fixed list of modules)
  multilingual  synthetic text: Cyrillic, Greek, Arabic, Devanagari words drawn Zipf-like from fixed word
                lists, CJK sentences without spaces, emoji; seeded, so it is the same bytes on every run
It is cut into documents of about 2 KB (a long prompt) and each tokenizer encodes every document.

minimoe is timed three ways: "cold" (a fresh tokenizer, its chunk cache filling up as it goes: the number to
quote), "warm" (the same documents again, nearly every chunk already cached) and "no cache" (every chunk
BPE-merged from scratch: the raw cost of the merge loop). The ratio column is minimoe / sentencepiece.
Prints a table and writes the numbers as JSON (for plots and docs/tokenizer.md).
"""

import argparse
import os
import platform
import random
import sys
import sysconfig
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from minimoe.tokenizer import load_tokenizer  # noqa: E402
from report import write_json  # noqa: E402  (benchmarks/report.py)

CODE_MODULES = [
    "heapq.py", "bisect.py", "textwrap.py", "string.py", "fractions.py", "statistics.py", "json/decoder.py",
    "json/encoder.py", "argparse.py", "dataclasses.py", "functools.py", "collections/__init__.py",
    "pathlib.py", "tokenize.py", "difflib.py", "shutil.py", "inspect.py", "typing.py",
]


def default_model() -> str:
    import mistral_common

    return os.path.join(os.path.dirname(mistral_common.__file__), "data", "tokenizer.model.v1")


def multilingual_text(size: int, seed: int = 0) -> str:
    rng = random.Random(seed)

    def lexicon(lo: int, hi: int, n: int) -> list[str]:
        return ["".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(2, 9))) for _ in range(n)]

    scripts = [lexicon(0x430, 0x44F, 400), lexicon(0x3B1, 0x3C9, 300), lexicon(0x627, 0x64A, 300),
               lexicon(0x915, 0x939, 300)]
    cjk_pool = [chr(rng.randint(0x4E00, 0x9FA5)) for _ in range(2500)] + [chr(c) for c in range(0x3041, 0x3094)]
    emoji = ["🙂", "👍", "🚀", "🤖", "❤️", "👨‍👩‍👧", "🇯🇵", "☕"]
    weights = [1 / (k + 1) for k in range(400)]  # Zipf: a few words are very common, most are rare
    parts = []
    total = 0
    while total < size:
        kind = rng.random()
        if kind < 0.6:
            words = rng.choice(scripts)
            s = " ".join(rng.choices(words, weights=weights[: len(words)], k=rng.randint(5, 25))) + ". "
        elif kind < 0.9:
            s = "".join(rng.choices(cjk_pool, k=rng.randint(10, 60))) + "。"
        else:
            s = " ".join(rng.choice(emoji) for _ in range(rng.randint(1, 5))) + "\n"
        parts.append(s)
        total += len(s.encode("utf-8"))
    return "".join(parts)


def build_corpus(doc_bytes: int = 2048) -> dict[str, list[str]]:
    """Category -> list of documents (each about doc_bytes of UTF-8)."""
    import pydoc_data.topics

    stdlib = sysconfig.get_paths()["stdlib"]
    prose = "\n\n".join(pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics))
    code = ""
    for name in CODE_MODULES:
        with open(os.path.join(stdlib, name), encoding="utf-8") as f:
            code += f.read()
    texts = {"prose": prose[:600_000], "code": code[:420_000], "multilingual": multilingual_text(120_000)}

    def documents(text: str) -> list[str]:
        docs, start = [], 0
        while start < len(text):
            end = min(len(text), start + doc_bytes)
            cut = text.rfind("\n", start + doc_bytes // 2, end)  # end a document at a line break if one is near
            end = cut + 1 if cut > 0 and end < len(text) else end
            docs.append(text[start:end])
            start = end
        return docs

    return {name: documents(text) for name, text in texts.items()}


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="tokenizer.model (default: Mistral-7B's, from mistral_common)")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "tokenizer_speed.json"))
    parser.add_argument("--repeats", type=int, default=3, help="timings per cell; the best is kept")
    args = parser.parse_args()

    import sentencepiece as spm

    model = args.model or default_model()
    corpus = build_corpus()
    sp = spm.SentencePieceProcessor(model_file=model)

    rows = []
    for name, docs in list(corpus.items()) + [("all", [d for docs in corpus.values() for d in docs])]:
        size = sum(len(d.encode("utf-8")) for d in docs)
        # every tokenizer must give the same ids before its time means anything
        ours = load_tokenizer(model)
        ids = [ours.encode(d) for d in docs]
        assert ids == sp.encode(docs, add_bos=True), f"{name}: minimoe and sentencepiece disagree"
        n_tokens = sum(len(x) for x in ids)

        def cold():
            tok = load_tokenizer(model)
            t0 = time.perf_counter()
            for d in docs:
                tok.encode(d)
            return time.perf_counter() - t0

        t_cold = min(cold() for _ in range(args.repeats))
        warm = load_tokenizer(model)
        for d in docs:
            warm.encode(d)
        t_warm = best_of(args.repeats, lambda: [warm.encode(d) for d in docs])
        nocache = load_tokenizer(model)
        nocache.chunked = False  # one BPE over each whole document
        t_nocache = best_of(min(2, args.repeats), lambda: [nocache.encode(d) for d in docs])
        t_sp = best_of(args.repeats, lambda: [sp.encode(d, add_bos=True) for d in docs])
        rows.append({
            "text": name, "documents": len(docs), "bytes": size, "tokens": n_tokens,
            "sentencepiece_s": t_sp, "minimoe_cold_s": t_cold, "minimoe_warm_s": t_warm,
            "minimoe_nocache_s": t_nocache, "ratio_cold": t_cold / t_sp, "ratio_warm": t_warm / t_sp,
            "ratio_nocache": t_nocache / t_sp,
        })

    header = f"{'text':<13}{'KB':>7}{'tokens':>9}{'spm ms':>9}{'cold ms':>9}{'warm ms':>9}{'nocache ms':>11}" \
             f"{'cold x':>8}{'warm x':>8}{'nocache x':>10}{'cold MB/s':>10}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['text']:<13}{r['bytes'] / 1000:>7.0f}{r['tokens']:>9}{r['sentencepiece_s'] * 1e3:>9.0f}"
              f"{r['minimoe_cold_s'] * 1e3:>9.0f}{r['minimoe_warm_s'] * 1e3:>9.0f}{r['minimoe_nocache_s'] * 1e3:>11.0f}"
              f"{r['ratio_cold']:>8.1f}{r['ratio_warm']:>8.1f}{r['ratio_nocache']:>10.1f}"
              f"{r['bytes'] / r['minimoe_cold_s'] / 1e6:>10.2f}")
    result = {
        "benchmark": "tokenizer_speed", "model": os.path.basename(model), "python": platform.python_version(),
        "sentencepiece": spm.__version__, "machine": platform.machine(), "processor": platform.processor(),
        "rows": rows,
    }
    write_json(args.out, result, indent=2)


if __name__ == "__main__":
    main()
