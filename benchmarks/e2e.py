"""End-to-end speed and memory: can minimoe run Confinus-2x7B-AWQ, how much memory, how fast?

    python benchmarks/e2e.py --checkpoint /path/to/cache/confinus-shape-awq      # CPU, everything
    python benchmarks/e2e.py --skip-real                                         # only the mid-size comparison
    python benchmarks/e2e.py --device cuda                                       # GPU mode (fp16 activations)

Part 1, real shape (CPU): a random AWQ checkpoint with Confinus-2x7B's exact shapes (32 layers, hidden 4096,
two 14336-wide experts, top-2, G = 128, fp16 embeddings/lm_head/router; ~7 GB in 4 shards) is written once
with minimoe.testing.make_tiny_checkpoint and cached at --checkpoint. A fresh subprocess loads it (load time,
peak RSS against the bytes on disk), prefills a 128-token prompt and decodes 32 tokens, --real-rounds times.
Baselines measured in that same process:
    decode floor    bytes a decoded token must read / read bandwidth (a sum over a 1 GB tensor), measured
                    right after each decode round; the fraction reported is the median of the rounds' fractions
    prefill floor   torch's own bf16 matmul time for every linear layer at M = 128 (AMX via oneDNN here)
Part 2, mid-size (CPU): a Mixtral that transformers can hold in fp32 (hidden 1024, 8 layers, 2 experts):
decode and prefill tokens/s of transformers (fp32, KV cache), minimoe fp32, and minimoe AWQ (C++ kernel), all
loaded at once and measured in interleaved rounds (--rounds, median reported).
GPU mode: random AWQ weights are generated directly on the GPU (no 7 GB file to write), fp16 activations,
batch 1. Decode tokens/s through generate_ids with decode steps replayed from a CUDA graph (the cuda-graph
engine, minimoe.engines.decoders) and without (the native engine, eager), in interleaved rounds, against the
bandwidth ceiling (bytes per token / measured device copy bandwidth). Also one replayed step's GPU time with no host in the loop, and the int4 products' share of it.

Prints tables, writes JSON (--out). Numbers drift between runs on shared machines: compare the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import minimoe  # noqa: E402
from minimoe import ops  # noqa: E402
from minimoe.checkpoint import Checkpoint, linear_names  # noqa: E402
from minimoe.generate import SamplingConfig, generate_ids  # noqa: E402
from minimoe.testing import CONFINUS_SHAPE, make_tiny_checkpoint  # noqa: E402
from floors import copy_bandwidth, read_bandwidth  # noqa: E402  (benchmarks/floors.py)
from report import write_json  # noqa: E402  (benchmarks/report.py)

MID_CONFIG = dict(vocab_size=32000, hidden_size=1024, intermediate_size=3584, num_hidden_layers=8,
                  num_attention_heads=16, num_key_value_heads=4, num_local_experts=2, num_experts_per_tok=2,
                  max_position_embeddings=4096, rope_theta=10000.0)


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timed(fn, repeats: int = 1):
    best, value = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - t0)
    return best, value


# ---------------------------------------------------------------------------------------------------------------
# Part 1: the real shape
# ---------------------------------------------------------------------------------------------------------------

def ensure_real_checkpoint(path: str) -> float:
    """Write the real-shape checkpoint once; returns seconds spent (0 when cached)."""
    marker = os.path.join(path, ".complete")
    if os.path.isfile(marker):
        return 0.0
    print(f"writing a real-shape random AWQ checkpoint to {path} (once; ~7 GB, several minutes)...", flush=True)
    t0 = time.perf_counter()
    make_tiny_checkpoint(path, seed=0, **CONFINUS_SHAPE)
    seconds = time.perf_counter() - t0
    with open(marker, "w") as f:
        f.write(f"{seconds:.1f}\n")
    return seconds


def prefill_floor_seconds(config, prompt_tokens: int, dtype=torch.bfloat16) -> float:
    """torch's own matmul time (same dtype, pre-dequantized weights) for every linear layer at M = prompt."""
    shapes: dict[tuple[int, int], int] = {}
    per_layer = {k: v for k, v in linear_names(config).items() if k.startswith("model.layers.0.")}
    for n, k in per_layer.values():
        shapes[(k, n)] = shapes.get((k, n), 0) + 1
    total = 0.0
    for (k, n), count in shapes.items():
        x = torch.randn(prompt_tokens, k, dtype=dtype)
        w = torch.randn(k, n, dtype=dtype)
        torch.matmul(x, w)  # warm-up
        seconds, _ = timed(lambda: torch.matmul(x, w), repeats=3)
        total += seconds * count * config.num_hidden_layers
    return total


def run_real(path: str, prompt_tokens: int, decode_tokens: int, dtype_name: str, rounds: int = 3) -> dict:
    """Runs in a fresh process, so peak RSS means this load and nothing else.

    Decode runs `rounds` times, each round followed by its own read-bandwidth measurement (best of 5 sums):
    this machine's bandwidth drifts by 20-30% from minute to minute, so each round is compared with the floor
    measured next to it, and the fraction reported is the median of the rounds' fractions (every round is kept
    in the JSON). Decode tokens/s and the floor are reported as medians too."""
    dtype = getattr(torch, dtype_name)
    checkpoint = Checkpoint(path)
    stats = checkpoint.stats()
    rss_before = peak_rss()
    load_s, model = timed(lambda: minimoe.load_model(path, dtype=dtype))
    config = model.config
    prompt = torch.randint(3, config.vocab_size, (prompt_tokens,), generator=torch.Generator().manual_seed(0))
    prefill_s, _ = timed(lambda: model(prompt[None], cache=model.new_cache(), last_token_only=True))
    decode_rounds, bandwidth_rounds, peak = [], [], None
    for _ in range(rounds):
        result = generate_ids(model, [prompt.tolist()], SamplingConfig(max_new_tokens=decode_tokens + 1))
        decode_rounds.append(result.decode_tokens_per_s)
        if peak is None:  # before the bandwidth probe's 1 GB tensor exists
            peak = peak_rss()
        bandwidth_rounds.append(read_bandwidth("cpu", gigabytes=1.0))
    floor_prefill_s = prefill_floor_seconds(config, prompt_tokens)
    bandwidth = statistics.median(bandwidth_rounds)
    decode_tps = statistics.median(decode_rounds)
    per_token = stats["bytes_read_per_token"]
    floor_tps = bandwidth / per_token
    fractions = [d * per_token / b for d, b in zip(decode_rounds, bandwidth_rounds)]  # each round's own floor
    return {
        "dtype": dtype_name,
        "backend": ops.awq_backend("cpu"),
        "bytes_on_disk": stats["bytes_on_disk"],
        "bytes_read_per_token": per_token,
        "load_seconds": load_s,
        "peak_rss_bytes": peak,
        "rss_before_load_bytes": rss_before,
        "peak_rss_over_disk": peak / stats["bytes_on_disk"],
        "prefill_tokens": prompt_tokens,
        "prefill_seconds": prefill_s,
        "prefill_tokens_per_s": prompt_tokens / prefill_s,
        "prefill_floor_seconds": floor_prefill_s,
        "prefill_fraction_of_torch_matmul": floor_prefill_s / prefill_s,
        "decode_tokens": result.decode_steps,
        "decode_tokens_per_s": decode_tps,
        "decode_tokens_per_s_rounds": decode_rounds,
        "read_bandwidth_bytes_per_s": bandwidth,
        "read_bandwidth_bytes_per_s_rounds": bandwidth_rounds,
        "decode_floor_tokens_per_s": floor_tps,
        "decode_fraction_of_floor": statistics.median(fractions),
        "decode_fraction_of_floor_rounds": fractions,
    }


# ---------------------------------------------------------------------------------------------------------------
# Part 2: mid-size, side by side with transformers
# ---------------------------------------------------------------------------------------------------------------

def transformers_decode(model, prompt: torch.Tensor, decode_tokens: int) -> tuple[float, float]:
    """(prefill tokens/s, decode tokens/s) of transformers with its KV cache, greedy."""
    with torch.no_grad():
        t0 = time.perf_counter()
        out = model(prompt[None], use_cache=True)
        prefill_s = time.perf_counter() - t0
        past = out.past_key_values
        token = out.logits[:, -1:].argmax(-1)
        t0 = time.perf_counter()
        for _ in range(decode_tokens):
            out = model(token, past_key_values=past, use_cache=True)
            past = out.past_key_values
            token = out.logits[:, -1:].argmax(-1)
        decode_s = time.perf_counter() - t0
    return prompt.numel() / prefill_s, decode_tokens / decode_s


def minimoe_decode(model, prompt: torch.Tensor, decode_tokens: int) -> tuple[float, float]:
    """Prefill and decode tokens/s of `model` with whatever engine it was loaded with."""
    prefill_s, _ = timed(lambda: model(prompt[None], cache=model.new_cache(), last_token_only=True))
    result = generate_ids(model, [prompt.tolist()], SamplingConfig(max_new_tokens=decode_tokens + 1))
    return prompt.numel() / prefill_s, result.decode_tokens_per_s


def run_mid(prompt_tokens: int, decode_tokens: int, rounds: int, compile: bool = True) -> list[dict]:
    """All engines loaded side by side, then measured in `rounds` interleaved rounds (each engine prefills and
    decodes once per round), reporting each engine's median: this machine's speed drifts by tens of percent
    within a minute, and measuring the engines one after another put that drift into their ratios.
    compile: also the fp32 AWQ model with its decode steps through torch.compile (compiled during warm-up)."""
    import transformers

    engines = []  # (name, callable(prompt, decode_tokens) -> (prefill tok/s, decode tok/s))
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        hf_config = transformers.MixtralConfig(**MID_CONFIG)
        hf = transformers.MixtralForCausalLM(hf_config).eval()
        hf.config._attn_implementation = "eager"
        engines.append(("transformers fp32", lambda p, n: transformers_decode(hf, p, n)))
        fp_path = os.path.join(tmp, "fp32")
        hf.save_pretrained(fp_path)
        fp32 = minimoe.load_model(fp_path, dtype=torch.float32)
        engines.append(("minimoe fp32", lambda p, n: minimoe_decode(fp32, p, n)))
        awq_path = os.path.join(tmp, "awq")
        make_tiny_checkpoint(awq_path, quantized=True, group_size=128, dtype="float16", **MID_CONFIG)
        for dtype in (torch.float32, torch.bfloat16):
            model = minimoe.load_model(awq_path, dtype=dtype)
            name = f"minimoe AWQ int4 ({ops.awq_backend('cpu')}), {str(dtype).replace('torch.', '')} activations"
            engines.append((name, lambda p, n, model=model: minimoe_decode(model, p, n)))
            if compile and dtype == torch.float32:  # the same weights, decode steps through torch.compile
                compiled = minimoe.load_model(awq_path, dtype=dtype, engine="compile")
                engines.append((name + ", compile engine",
                                lambda p, n, model=compiled: minimoe_decode(model, p, n)))
    prompt = torch.randint(3, MID_CONFIG["vocab_size"], (prompt_tokens,))
    warmup = {}
    for name, run in engines:  # the whole prompt: the compiled engine compiles for the rounds' cache capacity here
        warmup[name], _ = timed(lambda: run(prompt, 2))
    measured: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in engines}
    for _ in range(rounds):
        for name, run in engines:
            measured[name].append(run(prompt, decode_tokens))
    rows = []
    for name, runs in measured.items():
        rows.append({"engine": name, "prefill_tokens_per_s": statistics.median(p for p, _ in runs),
                     "decode_tokens_per_s": statistics.median(d for _, d in runs),
                     "decode_tokens_per_s_rounds": [d for _, d in runs],
                     "warmup_seconds": warmup[name]})  # includes the compilation for torch.compile
    base = rows[0]
    for row in rows:
        row["decode_vs_transformers"] = row["decode_tokens_per_s"] / base["decode_tokens_per_s"]
        row["prefill_vs_transformers"] = row["prefill_tokens_per_s"] / base["prefill_tokens_per_s"]
        row["decode_vs_transformers_rounds"] = [d / b for d, b in zip(row["decode_tokens_per_s_rounds"],
                                                                      base["decode_tokens_per_s_rounds"])]
    return rows


# ---------------------------------------------------------------------------------------------------------------
# GPU mode
# ---------------------------------------------------------------------------------------------------------------

def random_awq_model_on(device: str, dtype: torch.dtype, layers: int):
    """The real-shape model built directly on the device with random int4 codes (no file, no quantize step)."""
    from minimoe import engines
    from minimoe.config import ModelConfig, QuantConfig
    from minimoe.linear import AWQLinear
    from minimoe.model import RotaryEmbedding, Transformer

    shape = {k: v for k, v in CONFINUS_SHAPE.items() if k not in ("group_size", "shards")}
    shape["num_hidden_layers"] = layers
    config = ModelConfig(model_type="mixtral", head_dim=128, rms_norm_eps=1e-5, rope_theta=1e4, dtype="float16",
                         quantization=QuantConfig(group_size=128), **shape)
    with torch.device("meta"):
        model = Transformer(config, dtype=dtype)
    g = torch.Generator(device=device).manual_seed(0)
    for prefix, (n, k) in linear_names(config).items():
        parent, _, attr = prefix.rpartition(".")
        qweight = torch.randint(-2**31, 2**31 - 1, (k, n // 8), dtype=torch.int32, device=device, generator=g)
        qzeros = torch.randint(-2**31, 2**31 - 1, (k // 128, n // 8), dtype=torch.int32, device=device, generator=g)
        scales = (torch.rand(k // 128, n, device=device, generator=g) * 0.002).to(torch.float16)
        setattr(model.get_submodule(parent), attr, AWQLinear(qweight, qzeros, scales, 128, name=prefix))
    # what is left on meta: embeddings, norms, routers, lm_head
    for name, p in list(model.named_parameters()):
        parent, _, attr = name.rpartition(".")
        value = (torch.randn(p.shape, device=device, generator=g, dtype=torch.float32) * 0.02).to(dtype)
        if attr == "weight" and p.dim() == 1:
            value = torch.ones(p.shape, device=device, dtype=dtype)
        setattr(model.get_submodule(parent), attr, torch.nn.Parameter(value, requires_grad=False))
    model.rotary = RotaryEmbedding(config.head_dim, config.rope_theta).to(device)
    return engines.use(model.eval(), "native")  # int4 kernels on; the rounds pick native or cuda-graph per call


def replay_seconds(graph, repeats: int) -> float:
    """GPU time of one replay of `graph`, from CUDA events around `repeats` back-to-back replays."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    graph.replay()
    start.record()
    for _ in range(repeats):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / repeats


def int4_products_seconds(model) -> float:
    """GPU time of one token's int4 products alone (every AWQLinear at M = 1), captured in one graph."""
    from minimoe.linear import AWQLinear

    layers = [m for m in model.modules() if isinstance(m, AWQLinear)]
    inputs = {k: torch.randn(1, k, device="cuda", dtype=torch.float16) for k in {m.qweight.shape[0] for m in layers}}
    with torch.inference_mode():
        for m in layers:  # warm-up outside the capture
            m(inputs[m.qweight.shape[0]])
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for m in layers:
                m(inputs[m.qweight.shape[0]])
    return replay_seconds(graph, 20)


def run_gpu(prompt_tokens: int, decode_tokens: int, layers: int, rounds: int) -> dict:
    from minimoe.engines.decoders import GraphDecoder

    device = "cuda"
    model = random_awq_model_on(device, torch.float16, layers)
    per_layer = sum(b.numel() * b.element_size() for n, b in model.named_buffers() if ".layers.0." in n)
    plain = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if ".layers." not in n)
    row_bytes = model.config.hidden_size * 2
    bytes_per_token = per_layer * layers + plain - model.model.embed_tokens.weight.numel() * 2 + row_bytes
    prompt = torch.randint(3, model.config.vocab_size, (prompt_tokens,))
    cfg = SamplingConfig(max_new_tokens=decode_tokens + 1, stop_on_eos=False)
    for graphed in (False, True):  # warm-up: kernels' first launches, cuBLAS handles, the allocator
        generate_ids(model, [prompt[:8].tolist()], SamplingConfig(max_new_tokens=4),
                     engine="cuda-graph" if graphed else "native")
    sync(device)

    prefill = []
    for _ in range(3):
        t0 = time.perf_counter()
        model(prompt[None].to(device), cache=model.new_cache(), last_token_only=True)
        sync(device)
        prefill.append(time.perf_counter() - t0)
    eager, graph, capture = [], [], []
    for _ in range(rounds):  # interleaved, so drift hits both alike
        eager.append(generate_ids(model, [prompt.tolist()], cfg, engine="native").decode_tokens_per_s)
        result = generate_ids(model, [prompt.tolist()], cfg, engine="cuda-graph")
        graph.append(result.decode_tokens_per_s)
        capture.append(result.graph_seconds)

    # The GPU's own time per decode step: the captured step replayed back to back, no host work in between.
    cache = model.new_cache()
    model(prompt[None].to(device), cache=cache, last_token_only=True)
    decoder = GraphDecoder(model, 1, capacity=prompt_tokens + 64)
    decoder.start(cache)
    step_gpu_s = replay_seconds(decoder.graph, 32)
    int4_s = int4_products_seconds(model)
    copy_bw, read_bw = copy_bandwidth(device), read_bandwidth(device, gigabytes=2.0)
    # The bandwidth ceiling as docs/facts.md#bandwidth states it (~4.3 TB/s measured device copy, counting read +
    # write bytes, -> ~630 tokens/s): HBM sustains about that rate for pure reads too.
    ceiling = copy_bw / bytes_per_token
    decode = statistics.median(graph)
    return {
        "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "driver": driver_version(), "layers": layers, "backend": ops.awq_backend("cuda"),
        "bytes_read_per_token": bytes_per_token, "prompt_tokens": prompt_tokens, "decode_tokens": decode_tokens,
        "prefill_tokens_per_s": prompt_tokens / statistics.median(prefill),
        "decode_tokens_per_s": decode, "decode_tokens_per_s_rounds": graph,
        "decode_eager_tokens_per_s": statistics.median(eager), "decode_eager_tokens_per_s_rounds": eager,
        "graph_capture_seconds": statistics.median(capture),
        "step_gpu_seconds": step_gpu_s, "step_gpu_tokens_per_s": 1 / step_gpu_s,
        "int4_products_gpu_seconds": int4_s, "int4_products_bytes_per_s": per_layer * layers / int4_s,
        "copy_bandwidth_bytes_per_s": copy_bw, "read_bandwidth_bytes_per_s": read_bw,
        "decode_ceiling_tokens_per_s": ceiling, "decode_fraction_of_ceiling": decode / ceiling,
    }


def driver_version() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def print_gpu(g: dict) -> None:
    print(f"\nReal shape ({g['layers']} layers, random AWQ weights), {g['gpu']}, fp16 activations, batch 1; "
          f"torch {g['torch']}, CUDA {g['cuda']}, driver {g['driver']}")
    print(f"  bytes read per token        {g['bytes_read_per_token'] / 1e9:8.2f} GB")
    print(f"  device copy bandwidth       {g['copy_bandwidth_bytes_per_s'] / 1e12:8.2f} TB/s (read + write); "
          f"read {g['read_bandwidth_bytes_per_s'] / 1e12:.2f} TB/s")
    print(f"  decode ceiling              {g['decode_ceiling_tokens_per_s']:8.0f} tok/s (copy bandwidth / bytes)")
    print(f"  decode, CUDA graph          {g['decode_tokens_per_s']:8.1f} tok/s  "
          f"({g['decode_fraction_of_ceiling']:.0%} of ceiling; target >= 50%)")
    print(f"  decode, eager               {g['decode_eager_tokens_per_s']:8.1f} tok/s")
    print(f"  one step's GPU time         {g['step_gpu_seconds'] * 1e3:8.2f} ms  "
          f"(= {g['step_gpu_tokens_per_s']:.0f} tok/s with no host in the loop)")
    print(f"  its int4 products alone     {g['int4_products_gpu_seconds'] * 1e3:8.2f} ms  "
          f"({g['int4_products_bytes_per_s'] / 1e12:.2f} TB/s of packed weights)")
    print(f"  graph capture (once)        {g['graph_capture_seconds'] * 1e3:8.1f} ms")
    print(f"  prefill {g['prompt_tokens']} tokens          {g['prefill_tokens_per_s']:8.0f} tok/s")


# ---------------------------------------------------------------------------------------------------------------

def machine() -> dict:
    return {"date": time.strftime("%Y-%m-%d"), "machine": platform.machine(), "processor": platform.processor(),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "backend_cpu": ops.awq_backend("cpu")}


def print_real(r: dict) -> None:
    print("\nReal shape (Confinus-2x7B-AWQ shapes, random weights), CPU")
    print(f"  checkpoint on disk          {r['bytes_on_disk'] / 1e9:8.2f} GB")
    print(f"  load time                   {r['load_seconds']:8.1f} s")
    print(f"  peak RSS                    {r['peak_rss_bytes'] / 1e9:8.2f} GB  ({r['peak_rss_over_disk']:.2f} x disk;"
          f" target <= 1.15)")
    print(f"  prefill {r['prefill_tokens']} tokens ({r['dtype']})  {r['prefill_tokens_per_s']:8.1f} tok/s  "
          f"({r['prefill_fraction_of_torch_matmul']:.0%} of torch bf16 matmul on the same shapes; target >= 40%)")
    print(f"  decode                      {r['decode_tokens_per_s']:8.2f} tok/s  "
          f"(floor {r['decode_floor_tokens_per_s']:.2f} tok/s = {r['read_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s / "
          f"{r['bytes_read_per_token'] / 1e9:.2f} GB per token; {r['decode_fraction_of_floor']:.0%} of floor, median "
          f"of rounds; target >= 50%)")
    per_round = ", ".join(f"{d:.2f} tok/s / {b / 1e9:.1f} GB/s = {f:.0%}" for d, b, f in
                          zip(r["decode_tokens_per_s_rounds"], r["read_bandwidth_bytes_per_s_rounds"],
                              r["decode_fraction_of_floor_rounds"]))
    print(f"  decode rounds, each against the bandwidth measured next to it (medians above): {per_round}")


def print_mid(rows: list[dict]) -> None:
    rounds = len(rows[0]["decode_tokens_per_s_rounds"])
    print(f"\nMid-size Mixtral (hidden 1024, 8 layers, 2 experts top-2), CPU, 128-token prompt; median of {rounds} "
          f"interleaved rounds")
    print(f"  {'engine':<66} {'prefill tok/s':>14} {'decode tok/s':>13} {'decode vs HF':>13}  per round")
    for r in rows:
        per_round = " ".join(f"{v:.2f}" for v in r["decode_vs_transformers_rounds"])
        print(f"  {r['engine']:<66} {r['prefill_tokens_per_s']:>14.1f} {r['decode_tokens_per_s']:>13.2f} "
              f"{r['decode_vs_transformers']:>12.2f}x  {per_round}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=os.path.join(tempfile.gettempdir(), "minimoe-confinus-shape-awq"),
                        help="where the real-shape checkpoint is cached (written once, ~7 GB)")
    parser.add_argument("--skip-real", action="store_true", help="skip the real-shape part")
    parser.add_argument("--skip-mid", action="store_true", help="skip the mid-size comparison")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="bfloat16", help="activation dtype for the real-shape CPU run")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the mid-size comparison")
    parser.add_argument("--real-rounds", type=int, default=3,
                        help="decode rounds at the real shape, each after its own bandwidth measurement")
    parser.add_argument("--no-compile", action="store_true",
                        help="leave out the mid-size engine whose decode steps run through torch.compile")
    parser.add_argument("--gpu-layers", type=int, default=32, help="layers of the GPU model (32 = real)")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "e2e.json"))
    parser.add_argument("--phase-real", action="store_true", help=argparse.SUPPRESS)  # the measuring subprocess
    args = parser.parse_args()
    for name in ("rounds", "real_rounds", "decode_tokens"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, found {getattr(args, name)}")

    if args.phase_real:
        print(json.dumps(run_real(args.checkpoint, args.prompt_tokens, args.decode_tokens, args.dtype,
                                  args.real_rounds)))
        return 0
    report = {"machine": machine()}
    if args.device == "cuda":
        report["gpu"] = run_gpu(args.prompt_tokens, args.decode_tokens, args.gpu_layers, args.rounds)
        print_gpu(report["gpu"])
    else:
        if not args.skip_real:
            report["write_seconds"] = ensure_real_checkpoint(args.checkpoint)
            child = subprocess.run([sys.executable, __file__, "--phase-real", "--checkpoint", args.checkpoint,
                                    "--prompt-tokens", str(args.prompt_tokens), "--decode-tokens",
                                    str(args.decode_tokens), "--dtype", args.dtype, "--real-rounds",
                                    str(args.real_rounds)],
                                   capture_output=True, text=True)
            if child.returncode != 0:
                print(child.stderr, file=sys.stderr)
                return child.returncode
            report["real"] = json.loads(child.stdout.strip().splitlines()[-1])
            print_real(report["real"])
        if not args.skip_mid:
            report["mid"] = run_mid(args.prompt_tokens, args.decode_tokens, args.rounds, not args.no_compile)
            print_mid(report["mid"])
    print()
    write_json(args.out, report, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
