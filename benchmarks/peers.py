"""minimoe next to its peers on the same CPU, in one run: llama.cpp (Q4_0), transformers (fp32), minimoe (AWQ int4).

    .venv/bin/python benchmarks/peers.py                      # mid-size model, 5 interleaved rounds
    .venv/bin/python benchmarks/peers.py --rounds 9 --threads 2
    .venv/bin/python benchmarks/peers.py --llama-isa avx2     # a second llama.cpp build without AVX-512

The model: the mid-size Mixtral of benchmarks/e2e.py (hidden 1024, 8 layers, 2 experts top-2, vocab 32000), random
weights (seed 0). The same weights reach every engine:
    transformers   MixtralForCausalLM in fp32, eager attention, its KV cache, greedy;
    llama.cpp      the fp16 checkpoint converted by llama.cpp's own convert_hf_to_gguf.py, quantized to Q4_0 by
                   llama-quantize, timed by llama-bench (-p prompt -n decode -t threads -r 1 per round);
    minimoe        the fp16 checkpoint quantized by `minimoe quantize --method rtn --group-size 128` (AWQ GEMM int4
                   layout), loaded at its default dtype (the checkpoint's, fp16) and at fp32 and bf16.
Prefill = a prompt of --prompt-tokens tokens; decode = --decode-tokens tokens after it. llama-bench draws its own
random prompt of that length (token values do not change its speed); the others share one random prompt.

Rounds are interleaved (each engine prefills and decodes once per round, in turn) and the table shows medians:
this machine's speed drifts by tens of percent within a minute. The JSON keeps every round, the llama.cpp version
(the llama-cpp-python source distribution's version and llama.cpp's build number and commit as llama-bench reports
them), its cmake flags and the CPU's ISA flags.

llama.cpp comes from the llama-cpp-python source distribution on PyPI (its vendored llama.cpp), downloaded by pip
and built with cmake once into --cache (default ~/.cache/minimoe/peers): about 5-10 minutes on 2 cores the first
time. Needs cmake, a C++ compiler, network access for that first download, and the dev extras (transformers,
sentencepiece). Not part of `make test`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import minimoe  # noqa: E402
from minimoe import ops  # noqa: E402
from e2e import MID_CONFIG, minimoe_decode, transformers_decode  # noqa: E402  (benchmarks/e2e.py)
from ab import cpu_name  # noqa: E402  (benchmarks/ab.py: the CPU's model name from /proc/cpuinfo)
from report import write_json  # noqa: E402  (benchmarks/report.py)

LLAMA_CPP_PYTHON = "0.3.36"  # the source distribution whose vendored llama.cpp is built (pinned: reproducible)
TARGETS = ["llama-bench", "llama-quantize"]
# cmake flags per --llama-isa. native: what this CPU has (-march=native). avx2: AVX2 + FMA + F16C only, for a
# like-for-like comparison with minimoe's AVX2 tier on a CPU that also has AVX-512.
CMAKE_ISA = {
    "native": ["-DGGML_NATIVE=ON"],
    "avx2": ["-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON",
             "-DGGML_AVX512=OFF", "-DGGML_AVX512_VNNI=OFF", "-DGGML_AVX512_BF16=OFF", "-DGGML_AVX_VNNI=OFF"],
}
CMAKE_COMMON = ["-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF"]


def run(cmd: list[str], log: str | None = None, **kwargs) -> None:
    """Run a build step; on failure, say which and show the end of its output."""
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"$ {' '.join(cmd)}\n{result.stdout}\n{result.stderr}\n")
    if result.returncode != 0:
        tail = (result.stdout + result.stderr)[-3000:]
        raise SystemExit(f"peers.py: this step failed (exit {result.returncode}): {' '.join(cmd)}\n{tail}")


def llama_source(cache: str) -> str:
    """The vendored llama.cpp of llama-cpp-python==LLAMA_CPP_PYTHON, downloaded and unpacked once."""
    root = os.path.join(cache, f"llama-cpp-python-{LLAMA_CPP_PYTHON}")
    source = os.path.join(root, "vendor", "llama.cpp")
    if os.path.isfile(os.path.join(source, "CMakeLists.txt")):
        return source
    os.makedirs(cache, exist_ok=True)
    print(f"downloading the llama-cpp-python {LLAMA_CPP_PYTHON} source distribution (once)...", flush=True)
    run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
         f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", cache])
    archive = os.path.join(cache, f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(cache, filter="data")
    os.replace(os.path.join(cache, f"llama_cpp_python-{LLAMA_CPP_PYTHON}"), root)
    return source


def llama_build(source: str, isa: str) -> tuple[str, list[str]]:
    """Build llama-bench and llama-quantize (cached per ISA choice); returns (bin directory, cmake flags)."""
    build = os.path.join(source, f"build-{isa}")
    flags = CMAKE_COMMON + CMAKE_ISA[isa]
    bins = os.path.join(build, "bin")
    if all(os.path.isfile(os.path.join(bins, t)) for t in TARGETS):
        return bins, flags
    print(f"building llama.cpp ({isa}) once into {build}: several minutes...", flush=True)
    log = os.path.join(source, f"build-{isa}.log")
    run(["cmake", "-S", source, "-B", build, *flags], log=log)
    run(["cmake", "--build", build, "--target", *TARGETS, "-j", str(os.cpu_count() or 2)], log=log)
    return bins, flags


def make_models(tmp: str, bins: str, source: str):
    """The random mid-size model three ways: transformers module, Q4_0 GGUF, minimoe AWQ checkpoint."""
    import transformers

    torch.manual_seed(0)
    hf = transformers.MixtralForCausalLM(transformers.MixtralConfig(**MID_CONFIG)).eval()
    hf.config._attn_implementation = "eager"
    fp16 = os.path.join(tmp, "fp16")
    hf.to(torch.float16).save_pretrained(fp16)
    hf.to(torch.float32)
    # convert_hf_to_gguf needs a tokenizer: minimoe's built-in SentencePiece model (2048 pieces; the converter
    # pads the vocabulary to the config's 32000). Token values do not change any engine's speed.
    with open(os.path.join(os.path.dirname(minimoe.__file__), "default_model", "tokenizer.model"), "rb") as src:
        with open(os.path.join(fp16, "tokenizer.model"), "wb") as dst:
            dst.write(src.read())
    f16_gguf, q4_gguf = os.path.join(tmp, "mid-f16.gguf"), os.path.join(tmp, "mid-q4_0.gguf")
    env = dict(os.environ, PYTHONPATH=os.path.join(source, "gguf-py") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run([sys.executable, os.path.join(source, "convert_hf_to_gguf.py"), fp16, "--outtype", "f16", "--outfile", f16_gguf],
        env=env)
    run([os.path.join(bins, "llama-quantize"), f16_gguf, q4_gguf, "Q4_0"])
    awq = os.path.join(tmp, "awq")
    run([sys.executable, "-m", "minimoe", "quantize", fp16, awq, "--method", "rtn", "--group-size", "128"])
    return hf, q4_gguf, awq


def llama_round(bins: str, gguf: str, prompt: int, decode: int, threads: int) -> tuple[float, float, dict]:
    """One llama-bench run: (prefill tok/s, decode tok/s, its first JSON record)."""
    out = subprocess.run([os.path.join(bins, "llama-bench"), "-m", gguf, "-p", str(prompt), "-n", str(decode),
                          "-t", str(threads), "-r", "1", "-o", "json"], capture_output=True, text=True, check=True)
    records = json.loads(out.stdout)
    pp = next(r for r in records if r["n_prompt"] == prompt and r["n_gen"] == 0)
    tg = next(r for r in records if r["n_gen"] == decode and r["n_prompt"] == 0)
    return pp["avg_ts"], tg["avg_ts"], pp


def cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    wanted = ("avx", "fma", "f16c", "amx", "neon", "asimd", "sve", "dotprod", "i8mm")
                    return sorted({w for w in line.split(":", 1)[1].split() if w.startswith(wanted)})
    except OSError:
        pass
    return []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="threads for every engine (default: torch's)")
    parser.add_argument("--llama-isa", choices=sorted(CMAKE_ISA), default="native")
    parser.add_argument("--cache", default=os.path.join(os.path.expanduser("~"), ".cache", "minimoe", "peers"))
    parser.add_argument("--out", default=os.path.join(HERE, "results", "peers.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()

    source = llama_source(args.cache)
    bins, flags = llama_build(source, args.llama_isa)
    engines = []  # (name, callable() -> (prefill tok/s, decode tok/s))
    with tempfile.TemporaryDirectory() as tmp:
        hf, gguf, awq = make_models(tmp, bins, source)
        prompt = torch.randint(3, MID_CONFIG["vocab_size"], (args.prompt_tokens,), generator=torch.Generator().manual_seed(1))
        llama_info = {}

        def llama():
            pp, tg, record = llama_round(bins, gguf, args.prompt_tokens, args.decode_tokens, threads)
            llama_info.update(record)
            return pp, tg

        engines.append((f"llama.cpp Q4_0 ({args.llama_isa} build)", llama))
        engines.append(("transformers fp32", lambda: transformers_decode(hf, prompt, args.decode_tokens)))
        for dtype in (None, torch.float32, torch.bfloat16):
            model = minimoe.load_model(awq, dtype=dtype)
            label = "default dtype: " + str(model.dtype).replace("torch.", "") if dtype is None else \
                str(dtype).replace("torch.", "")
            engines.append((f"minimoe AWQ int4, {label}",
                            lambda model=model: minimoe_decode(model, prompt, args.decode_tokens)))
        for _, fn in engines:  # warm-up: first touch of the weights, llama-bench's first load
            fn()
        measured: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in engines}
        for r in range(args.rounds):
            for name, fn in engines:
                measured[name].append(fn())
            print(f"round {r + 1}/{args.rounds} done", flush=True)

    llama_name = engines[0][0]
    base_pp = statistics.median(p for p, _ in measured[llama_name])
    base_tg = statistics.median(t for _, t in measured[llama_name])
    rows = []
    header = f"{'engine':44s} {'prefill tok/s':>14s} {'x llama.cpp':>11s} {'decode tok/s':>13s} {'x llama.cpp':>11s}"
    print(f"\n{cpu_name()}, {threads} threads, prompt {args.prompt_tokens}, "
          f"decode {args.decode_tokens}, medians of {args.rounds} interleaved rounds\n{header}\n{'-' * len(header)}")
    for name, values in measured.items():
        pp = statistics.median(p for p, _ in values)
        tg = statistics.median(t for _, t in values)
        rows.append({"engine": name, "prefill_tok_s": pp, "decode_tok_s": tg, "prefill_vs_llama": pp / base_pp,
                     "decode_vs_llama": tg / base_tg, "rounds": values})
        print(f"{name:44s} {pp:14.1f} {pp / base_pp:11.2f} {tg:13.1f} {tg / base_tg:11.2f}")
    write_json(args.out, {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_name(), "logical_cpus": os.cpu_count(),
                    "threads": threads, "cpu_flags": cpu_flags(), "torch": torch.__version__,
                    "minimoe_cpu_isa": ops.build_info().get("cpu_isa") if hasattr(ops, "build_info") else None,
                    "MINIMOE_CPU_ISA": os.environ.get("MINIMOE_CPU_ISA")},
        "model": MID_CONFIG, "prompt_tokens": args.prompt_tokens, "decode_tokens": args.decode_tokens,
        "llama_cpp": {"llama_cpp_python_sdist": LLAMA_CPP_PYTHON, "cmake_flags": flags, "isa": args.llama_isa,
                      # (llama-bench's build_number/build_commit are not kept: the sdist's llama.cpp is not a git
                      # checkout, so they describe whatever repository encloses the cache, if any)
                      "cpu_info": llama_info.get("cpu_info"), "model_size_bytes": llama_info.get("model_size"),
                      "model_type": llama_info.get("model_type")},
        "rows": rows,
    })


if __name__ == "__main__":
    main()
