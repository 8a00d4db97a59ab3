"""Interleaved A/B of two minimoe checkouts: is the new code slower than the old, on the same machine, today?

    git worktree add /tmp/old <commit>              # the old code (copy or build its minimoe/_C*.so there)
    python benchmarks/ab.py --a /tmp/old --b .      # each at its default settings
    python benchmarks/ab.py --a . --b . --b-engine reference   # or one checkout, two engines

Each checkout runs in its own Python process (its own `import minimoe`), both alive for the whole run and
asked in turn, so a round measures A and B within a second of each other: this machine's speed drifts by tens
of percent within a minute, and one-after-the-other runs put that drift into the ratio. Per model and dtype,
each round prefills a --prompt-tokens prompt and decodes --decode-tokens greedily (minimoe.generate_ids, the
same call in every version); the table shows the medians of the rounds and the median of the per-round B/A
ratios, which is the number to read.

Models (written once, into a temporary directory, by this checkout's minimoe.testing):
    mid-awq     hidden 1024, 8 layers, 2 experts top-2, AWQ int4 (G = 128): the mid-size model of e2e.py
    mid-fp      the same shape with plain fp16 weights (each linear a torch matmul)
    builtin     the built-in model shipped in minimoe/default_model (tiny: per-step overhead dominates)

Prints a table, writes JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from e2e import MID_CONFIG  # noqa: E402  (benchmarks/e2e.py: the same mid-size model)
from report import write_json  # noqa: E402  (benchmarks/report.py)

# The worker: one per checkout, started with that checkout first on sys.path. It reads one JSON request per
# line and answers one JSON line. Only API that every minimoe version has is used (load_model, generate_ids,
# SamplingConfig), plus load_model's engine= when a request names one.
WORKER = r"""
import json, sys, torch
import minimoe
from minimoe.generate import SamplingConfig, generate_ids
models = {}
print(json.dumps({"minimoe": minimoe.__file__, "backend": getattr(minimoe.ops, "awq_backend", lambda d: "?")("cpu")}),
      flush=True)
for line in sys.stdin:
    req = json.loads(line)
    key = (req["path"], req["dtype"], req.get("engine"))
    if key not in models:
        kwargs = {"dtype": getattr(torch, req["dtype"])}
        if req.get("engine"):
            kwargs["engine"] = req["engine"]
        models[key] = minimoe.load_model(req["path"], **kwargs)
    model = models[key]
    g = torch.Generator().manual_seed(req["seed"])
    prompt = torch.randint(3, model.config.vocab_size, (req["prompt_tokens"],), generator=g).tolist()
    cfg = SamplingConfig(max_new_tokens=req["decode_tokens"] + 1, stop_on_eos=False)
    r = generate_ids(model, [prompt], cfg)
    print(json.dumps({"prefill": r.prefill_tokens_per_s, "decode": r.decode_tokens_per_s, "tokens": r.tokens[0]}),
          flush=True)
"""


class Worker:
    def __init__(self, checkout: str, engine: str | None):
        self.checkout, self.engine = os.path.abspath(checkout), engine
        env = dict(os.environ, PYTHONPATH=self.checkout)
        env.pop("MINIMOE_ENGINE", None)
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER], cwd=self.checkout, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.info = self._read()
        expected = os.path.join(self.checkout, "minimoe")
        if not self.info["minimoe"].startswith(expected):
            raise SystemExit(f"ab.py: the worker for {checkout} imported {self.info['minimoe']}, "
                             f"expected a minimoe under {expected}")

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"ab.py: the worker for {self.checkout} exited (code {self.proc.wait()})")
        return json.loads(line)

    def run(self, **request) -> dict:
        if self.engine:
            request["engine"] = self.engine
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def commit_of(checkout: str) -> str:
    try:
        out = subprocess.run(["git", "-C", checkout, "describe", "--always", "--dirty"], capture_output=True,
                             text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_models(tmp: str, names: list[str]) -> dict[str, str]:
    from minimoe.testing import make_tiny_checkpoint

    paths = {}
    for name in names:
        if name == "builtin":
            paths[name] = os.path.join(ROOT, "minimoe", "default_model")
        elif name in ("mid-awq", "mid-fp"):
            paths[name] = make_tiny_checkpoint(os.path.join(tmp, name), quantized=name == "mid-awq",
                                               group_size=128, dtype="float16", **MID_CONFIG)
        else:
            raise SystemExit(f"ab.py: unknown model {name!r}; known: mid-awq, mid-fp, builtin")
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", required=True, help="checkout A (the baseline), a directory holding minimoe/")
    parser.add_argument("--b", required=True, help="checkout B")
    parser.add_argument("--a-engine", default=None, help="engine= for A's load_model (default: its default)")
    parser.add_argument("--b-engine", default=None, help="engine= for B's load_model (default: its default)")
    parser.add_argument("--models", default="mid-awq,mid-fp,builtin")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "ab.json"))
    args = parser.parse_args()

    import torch

    names = args.models.split(",")
    dtypes = args.dtypes.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_models(tmp, names)
        a, b = Worker(args.a, args.a_engine), Worker(args.b, args.b_engine)
        rows = []
        try:
            for name in names:
                for dtype in dtypes:
                    req = dict(path=paths[name], dtype=dtype, prompt_tokens=args.prompt_tokens,
                               decode_tokens=args.decode_tokens, seed=0)
                    a.run(**req)  # load and warm up both
                    b.run(**req)
                    runs = {"a": [], "b": []}
                    for r in range(args.rounds):
                        first, second = (a, b) if r % 2 == 0 else (b, a)  # alternate who goes first
                        for w in (first, second):
                            runs["a" if w is a else "b"].append(w.run(**req))
                    same = runs["a"][-1]["tokens"] == runs["b"][-1]["tokens"]
                    row = {"model": name, "dtype": dtype, "same_tokens": same}
                    for phase in ("prefill", "decode"):
                        av = [x[phase] for x in runs["a"]]
                        bv = [x[phase] for x in runs["b"]]
                        row[f"{phase}_a"], row[f"{phase}_b"] = statistics.median(av), statistics.median(bv)
                        row[f"{phase}_a_rounds"], row[f"{phase}_b_rounds"] = av, bv
                        row[f"{phase}_ratio"] = statistics.median(y / x for x, y in zip(av, bv))
                    rows.append(row)
                    print(f"{name:8s} {dtype:9s} prefill {row['prefill_a']:8.1f} -> {row['prefill_b']:8.1f} "
                          f"tok/s (B/A {row['prefill_ratio']:.3f})   decode {row['decode_a']:7.1f} -> "
                          f"{row['decode_b']:7.1f} tok/s (B/A {row['decode_ratio']:.3f})"
                          f"{'' if same else '   (different tokens!)'}", flush=True)
        finally:
            a.close()
            b.close()
    report = {"a": {"checkout": os.path.abspath(args.a), "commit": commit_of(args.a), "engine": args.a_engine,
                    **a.info},
              "b": {"checkout": os.path.abspath(args.b), "commit": commit_of(args.b), "engine": args.b_engine,
                    **b.info},
              "rounds": args.rounds, "prompt_tokens": args.prompt_tokens, "decode_tokens": args.decode_tokens,
              "machine": {"cpu": cpu_name(), "threads": torch.get_num_threads(),
                          "torch": torch.__version__},
              "rows": rows}
    write_json(args.out, report)


if __name__ == "__main__":
    main()
