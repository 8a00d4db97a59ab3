"""Expert parallelism at Confinus-2x7B's real shape on the CPU: memory per rank, speed, and what the tokens cost.

    python benchmarks/expert_parallel.py [--checkpoint DIR] [--out benchmarks/results/expert_parallel.json]

Uses the real-shape random AWQ checkpoint of benchmarks/e2e.py (32 layers, hidden 4096, two 14336-wide experts,
top-2, G = 128; written once, ~7 GB). Three runs, each in fresh processes started with torchrun's environment:
    one process     minimoe.load_model as usual, all cores (the baseline)
    2 ranks         expert parallel, dispatch all_reduce (auto's choice for top-2 of 2), one core each
    2 ranks         expert parallel, dispatch all_to_all (the general path), one core each
Each process loads, prefills --prompt-tokens, decodes --decode-tokens greedily, and reports the bytes it holds,
its resident memory (VmRSS) and peak (ru_maxrss), and its tokens/s. The two-rank runs also time the collective
a decode step uses (all_reduce of one token's hidden state, fp16) in the same processes.

The target (the expert-parallel issue): resident memory per rank within 1.1x of (replicated bytes + half the
expert bytes), from the safetensors headers. Generated tokens must equal the one-process run's. "before load" is
what the process holds once torch and the extension are imported (torch's own libraries; ~0.5 GB for a CUDA
build of torch, even on a machine without a GPU): it counts against the target too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import minimoe  # noqa: E402
from minimoe import parallel  # noqa: E402
from minimoe.checkpoint import Checkpoint  # noqa: E402
from minimoe.generate import SamplingConfig, generate_ids  # noqa: E402
from report import write_json  # noqa: E402  (benchmarks/report.py)


def resident_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def worker(args) -> None:
    """One process of one run: writes its measurements to args.worker_out."""
    from minimoe import ops

    ops.awq_backend("cpu")                # the extension loaded: what every process holds before any weight
    before_load = resident_bytes()
    ep = parallel.init(dispatch=args.dispatch) if "RANK" in os.environ else None
    t0 = time.perf_counter()
    model = minimoe.load_model(args.checkpoint, expert_parallel=ep)
    load_s = time.perf_counter() - t0
    if ep is not None:
        ep.barrier("after loading")
    prompt = torch.randint(3, model.config.vocab_size, (args.prompt_tokens,),
                           generator=torch.Generator().manual_seed(0)).tolist()
    result = generate_ids(model, [prompt], SamplingConfig(max_new_tokens=args.decode_tokens + 1))
    report = {"rank": ep.rank if ep else 0, "world": ep.world if ep else 1, "threads": torch.get_num_threads(),
              "load_s": load_s, "loaded_bytes": parallel.loaded_bytes(model), "resident_bytes": resident_bytes(),
              "resident_before_load_bytes": before_load,
              "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
              "prefill_tokens_per_s": result.prefill_tokens_per_s, "decode_tokens_per_s": result.decode_tokens_per_s,
              "tokens": result.tokens[0]}
    if ep is not None:
        hidden = torch.randn(1, model.config.hidden_size, dtype=model.dtype)
        for _ in range(20):
            ep.all_reduce(hidden, "warm-up")
        ep.barrier("before timing")
        t0 = time.perf_counter()
        for _ in range(args.collective_repeats):
            ep.all_reduce(hidden, "timing")
        report["all_reduce_one_token_us"] = (time.perf_counter() - t0) / args.collective_repeats * 1e6
        report["dispatch"] = model.model.layers[0].block_sparse_moe.dispatch
    with open(args.worker_out, "w") as f:
        json.dump(report, f)
    parallel.shutdown()


def launch(args, world: int, dispatch: str, out_dir: str) -> list[dict]:
    """Start `world` processes (world 1: a plain process, all cores) and collect their reports."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs, outs = [], []
    for rank in range(world):
        out = os.path.join(out_dir, f"w{world}_{dispatch}_{rank}.json")
        env = dict(os.environ)
        if world > 1:
            env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(port), OMP_NUM_THREADS=str(max(1, os.cpu_count() // world)))
        command = [sys.executable, os.path.abspath(__file__), "--worker-out", out, "--checkpoint", args.checkpoint,
                   "--dispatch", dispatch, "--prompt-tokens", str(args.prompt_tokens),
                   "--decode-tokens", str(args.decode_tokens), "--collective-repeats", str(args.collective_repeats)]
        procs.append(subprocess.Popen(command, env=env))
        outs.append(out)
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"a process of the {world}-process run failed: exit codes {codes}")
    reports = []
    for out in outs:
        with open(out) as f:
            reports.append(json.load(f))
    return reports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=os.path.join(tempfile.gettempdir(), "minimoe-confinus-shape-awq"))
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--decode-tokens", type=int, default=8)
    parser.add_argument("--collective-repeats", type=int, default=500)
    parser.add_argument("--dispatch", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "expert_parallel.json"))
    args = parser.parse_args()
    if args.worker_out:
        return worker(args)

    from e2e import ensure_real_checkpoint  # the same cached checkpoint as benchmarks/e2e.py

    written_s = ensure_real_checkpoint(args.checkpoint)
    checkpoint = Checkpoint(args.checkpoint)
    split = parallel.split_bytes(checkpoint, 2)
    config = checkpoint.config
    with tempfile.TemporaryDirectory() as out_dir:
        runs = {"one process": launch(args, 1, "auto", out_dir),
                "2 ranks, all_reduce": launch(args, 2, "all_reduce", out_dir),
                "2 ranks, all_to_all": launch(args, 2, "all_to_all", out_dir)}
    baseline = runs["one process"][0]
    gb = 1e9
    print(f"\nConfinus-2x7B shape, random AWQ weights; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores; prompt {args.prompt_tokens}, decode {args.decode_tokens} tokens (fp16)\n")
    print(f"{'run':<22} {'rank':>4} {'experts':>8} {'target GB':>10} {'loaded GB':>10} {'before load':>12} "
          f"{'resident GB':>12} {'peak GB':>8} {'resident/target':>16}")
    rows = []
    for name, reports in runs.items():
        for report in reports:
            if report["world"] == 1:
                target = checkpoint.bytes_on_disk()
                experts = "all"
            else:
                target = split[report["rank"]]["total_bytes"]
                experts = str(split[report["rank"]]["experts"])
            ratio = report["resident_bytes"] / target
            rows.append({"run": name, **{k: v for k, v in report.items() if k != "tokens"}, "target_bytes": target,
                         "resident_over_target": ratio, "same_tokens_as_one_process":
                         report["tokens"] == baseline["tokens"]})
            print(f"{name:<22} {report['rank']:>4} {experts:>8} {target / gb:>10.2f} {report['loaded_bytes'] / gb:>10.2f} "
                  f"{report['resident_before_load_bytes'] / gb:>12.2f} {report['resident_bytes'] / gb:>12.2f} {report['peak_rss_bytes'] / gb:>8.2f} {ratio:>16.3f}")
    print(f"\n{'run':<22} {'prefill tok/s':>14} {'decode tok/s':>13} {'x one process':>14} {'same tokens':>12}")
    for name, reports in runs.items():
        r = reports[0]
        print(f"{name:<22} {r['prefill_tokens_per_s']:>14.2f} {r['decode_tokens_per_s']:>13.2f} "
              f"{r['decode_tokens_per_s'] / baseline['decode_tokens_per_s']:>14.2f} "
              f"{str(all(x['tokens'] == baseline['tokens'] for x in reports)):>12}")
    layers = config.num_hidden_layers
    one_token = config.hidden_size * 2
    step_us = 1e6 / runs["2 ranks, all_reduce"][0]["decode_tokens_per_s"]
    collective_us = runs["2 ranks, all_reduce"][0]["all_reduce_one_token_us"]
    print(f"\ncommunication per decoded token, 2 ranks, all_reduce: {layers} all_reduces of {one_token} bytes "
          f"({layers * one_token / 1024:.0f} KiB per rank each way); one all_reduce measured at {collective_us:.0f} us "
          f"-> {layers * collective_us / 1e3:.1f} ms of a {step_us / 1e3:.0f} ms step "
          f"({layers * collective_us / step_us:.1%})")
    write_json(args.out, {
        "benchmark": "expert_parallel", "machine": {"cpu": platform.processor() or platform.machine(),
                                                    "cores": os.cpu_count(), "torch": torch.__version__},
        "checkpoint": {"path": args.checkpoint, "bytes_on_disk": checkpoint.bytes_on_disk(), "written_s": written_s,
                       "split_2_ranks": split},
        "prompt_tokens": args.prompt_tokens, "decode_tokens": args.decode_tokens, "rows": rows,
        "communication": {"layers": layers, "bytes_per_all_reduce": one_token, "all_reduce_us": collective_us,
                          "decode_step_us": step_us, "share_of_step": layers * collective_us / step_us},
    })
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
