"""The `minimoe` command line (also `python -m minimoe`). Thin: parse arguments, call the library, print.

    minimoe generate [--model DIR] "prompt"   stream a continuation (default: the built-in model)
    torchrun --nproc-per-node N -m minimoe generate --expert-parallel "prompt"   ... each rank holding 1/N experts
    minimoe chat [--model DIR]                an interactive loop (the checkpoint's chat template if it has one)
    minimoe route [--model DIR] "text"        which experts each token chose, per layer, with statistics
    minimoe train --data DIR --out DIR        train a Mixtral from scratch on a folder of .txt documents
    minimoe eval ppl --model DIR --text FILE  held-out perplexity (sliding window), with tokens/s
    minimoe eval harness --tasks T [--include-path DIR]   EleutherAI's lm-evaluation-harness on minimoe
    minimoe quantize SRC DST --method rtn     an fp16 checkpoint -> AWQ int4 GEMM (AutoAWQ's layout)
    minimoe quantize SRC DST --method awq --calib FILE   ... with AWQ's activation-aware search
    minimoe inspect DIR   architecture, parameter counts, quantization, bytes on disk and read per token
    minimoe info          how the native extension was built and which backend runs the int4 op per device
    minimoe grade assignments/a1_norm_rope [--solution DIR]   grade a course assignment, a score per task

Errors a user can cause (a bad path, a corrupt checkpoint, a prompt too long...) print one sentence and exit
non-zero; --debug shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def cmd_info(args) -> int:
    from minimoe import ops

    info = ops.build_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    from minimoe import engines

    rows = [("torch", f"{info['torch_version']} (CUDA {info['torch_cuda']}, GPU available: {info['cuda_available']})"),
            ("extension loaded", f"{info['extension_loaded']}" + (f"  ({info['import_error']})"
                                                                   if info["import_error"] else "")),
            ("CUDA compiled", f"{info['cuda_compiled']}  archs: {', '.join(info['cuda_archs']) or '-'}")]
    rows += [(f"kernel {op}", ", ".join(devices) or "-") for op, devices in info["kernels"].items()]
    rows.append(("awq_gemm backend", f"cpu: {info['awq_backend']['cpu']}, cuda: {info['awq_backend']['cuda']}"))
    rows.append(("engine", f"{engines.default_name()}: cpu runs {engines.resolve(None, 'cpu')}, cuda runs "
                           f"{engines.resolve(None, 'cuda') if engines.default_name() != 'cuda-graph' else 'cuda-graph'}"))
    if info["cpu_isa"]:
        rows.append(("CPU kernels", info["cpu_isa"] + (", bf16 prefill on AMX" if info["cpu_amx"] else "")))
    rows.append(("CPU dtype (auto, AWQ)", "bfloat16: int4 prefill on AMX" if info["cpu_amx"] else
                 "float32: no AMX here; the int4 kernels compute in fp32 for every dtype"))
    width = max(len(label) for label, _ in rows) + 2     # one column for the values, whatever the kernel names
    for label, value in rows:
        print(f"{label:<{width}}{value}")
    return 0


DEFAULT_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default_model")  # AWQ int4


def resolve_device(name: str):
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; expected cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} is not available: this machine has no usable CUDA GPU "
                             "(torch.cuda.is_available() is False)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} does not exist: {torch.cuda.device_count()} CUDA device(s) found")
    elif device.type != "cpu":
        raise ValueError(f"device {name!r} is not supported; expected cpu, cuda or cuda:N")
    return device


def resolve_dtype(name: str | None, device):
    import torch

    if name is None:
        return None
    if name == "auto":
        return "auto"  # load_model's rule (minimoe.loading.auto_dtype), once the checkpoint's config is read
    from minimoe.config import DTYPES

    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {', '.join(sorted(DTYPES))}")
    dtype = DTYPES[name]
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ValueError(f"{torch.cuda.get_device_name(device)} cannot run bfloat16; use --dtype float16")
    return dtype


class ProgressBar:
    """A one-line bar on stderr while a checkpoint loads (only when stderr is a terminal)."""

    def __init__(self, label: str):
        self.label, self.enabled = label, sys.stderr.isatty()

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        filled = int(30 * done / max(1, total))
        sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def load(args, expert_parallel=None):
    """Model + tokenizer from --model (or the built-in default), on --device in --dtype.

    expert_parallel: this rank's minimoe.parallel.ExpertParallel (its experts only; only rank 0 talks)."""
    import minimoe

    path = args.model or DEFAULT_MODEL
    device = resolve_device(args.device) if expert_parallel is None else resolve_device(expert_parallel.device)
    dtype = resolve_dtype(args.dtype, device)
    talk = expert_parallel is None or expert_parallel.rank == 0
    if not os.path.isdir(path):
        raise ValueError(f"{path}: not a directory (expected a checkpoint directory with config.json)")
    if not args.model and talk:
        print("minimoe: using the built-in model (a tiny Mixtral trained on Shakespeare, AWQ int4; "
              "docs/training.md)", file=sys.stderr)
    model = minimoe.load_model(path, dtype=dtype, device=device, engine=args.engine, expert_parallel=expert_parallel,
                               progress=ProgressBar(f"loading {path}") if talk else None)
    tokenizer = minimoe.load_tokenizer(path)
    from minimoe.loading import check_tokenizer

    check_tokenizer(model.config, tokenizer, path)
    return model, tokenizer


def peak_memory(device) -> str:
    import resource

    import torch

    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 1e9:.2f} GB GPU"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB RSS"


def sampling_from(args):
    from minimoe.generate import SamplingConfig

    return SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=args.seed,
                          stop=tuple(args.stop or ()))


def cmd_generate(args) -> int:
    sampling = sampling_from(args)
    sampling.check()                     # a bad option is one error line, before anything loads or prints
    if not args.expert_parallel:
        return _generate(args, sampling, None)
    from minimoe import parallel

    ep = parallel.init(resolve_device(args.device), dispatch=args.dispatch)
    try:
        return _generate(args, sampling, ep)
    finally:
        parallel.shutdown()


def _generate(args, sampling, ep) -> int:
    from minimoe import ops
    from minimoe.generate import generate

    model, tokenizer = load(args, expert_parallel=ep)
    talk = ep is None or ep.rank == 0
    if ep is not None:
        _report_shard(model, ep)

    def stream(row: int, text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    if talk:
        sys.stdout.write(args.prompt)
    result = generate(model, tokenizer, args.prompt, sampling, on_token=stream if talk else None)
    memory = peak_memory(model.device)
    if ep is not None:
        memory = _gather_peaks(model, ep)
    if not talk:
        return 0
    sys.stdout.write("\n")
    kind = "torch.compile, compiled" if model.engine == "compile" else "CUDA graph, captured"
    graph = f" ({kind} in {result.graph_seconds * 1e3:.0f} ms)" if result.graph_seconds else ""
    print(f"[{len(result.tokens[0])} tokens, {result.finish_reasons[0]}; prefill {result.prompt_tokens[0]} tokens "
          f"at {result.prefill_tokens_per_s:.1f} tok/s, decode {result.decode_tokens_per_s:.1f} tok/s{graph}; "
          f"engine {model.engine}, {str(model.dtype).replace('torch.', '')}, int4 kernel {ops.awq_backend(model.device)}; "
          f"peak memory {memory}]", file=sys.stderr)
    return 0


def _report_shard(model, ep) -> None:
    """One stderr line per rank: which experts it holds and the bytes it loaded."""
    from minimoe import parallel

    block = model.model.layers[0].block_sparse_moe
    held = [int(e) for e in block.experts]
    print(f"minimoe: expert-parallel rank {ep.rank} of {ep.world}: experts {held} of each layer's "
          f"{block.num_experts}, {_human_bytes(parallel.loaded_bytes(model))} loaded, dispatch {block.dispatch}",
          file=sys.stderr, flush=True)


def _gather_peaks(model, ep) -> str:
    """Every rank's peak memory, gathered to one line (a float tensor, not pickled objects)."""
    import resource

    import torch

    if model.device.type == "cuda":
        mine = torch.cuda.max_memory_allocated(model.device) / 1e9
    else:
        mine = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    every = ep.all_gather_rows(torch.tensor([[mine]], device=model.device), [1] * ep.world, "peak memory")
    unit = "GB GPU" if model.device.type == "cuda" else "GB RSS"
    return ", ".join(f"rank {r} {value:.2f} {unit}" for r, value in enumerate(every[:, 0].tolist()))


def render_chat(tokenizer_dir: str, messages: list[dict]) -> tuple[str, tuple[str, ...]]:
    """The prompt for a conversation, and stop strings: the checkpoint's Jinja chat template if it ships one
    (tokenizer_config.json "chat_template"), else a plain "User:/Assistant:" completion transcript."""
    config_path = os.path.join(tokenizer_dir, "tokenizer_config.json")
    template = None
    if os.path.isfile(config_path):
        with open(config_path, encoding="utf-8") as f:
            tokenizer_config = json.load(f)
        template = tokenizer_config.get("chat_template")
        if isinstance(template, list):  # several named templates: take the default one
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
    if template:
        try:
            import jinja2
            import jinja2.sandbox
        except ImportError:
            raise RuntimeError("this checkpoint's chat template is Jinja: pip install jinja2") from None
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

        def raise_exception(message):
            raise ValueError(f"chat template: {message}")

        env.globals["raise_exception"] = raise_exception
        text = env.from_string(template).render(
            messages=messages, add_generation_prompt=True, bos_token="", eos_token="</s>")
        return text, ()
    transcript = "".join(f"{'User' if m['role'] == 'user' else 'Assistant'}: {m['content']}\n" for m in messages)
    return transcript + "Assistant:", ("\nUser:",)


def cmd_chat(args) -> int:
    from minimoe.generate import generate

    sampling_from(args).check()
    model, tokenizer = load(args)
    path = args.model or DEFAULT_MODEL
    messages: list[dict] = []
    print("minimoe chat: type a message, an empty line or Ctrl-D to quit.", file=sys.stderr)
    while True:
        if sys.stdin.isatty():
            sys.stderr.write("you> ")
            sys.stderr.flush()
        line = sys.stdin.readline()
        if not line or not line.strip():
            return 0
        messages.append({"role": "user", "content": line.strip()})
        prompt, stops = render_chat(path, messages)
        cfg = sampling_from(args)
        cfg.stop = tuple(cfg.stop) + stops
        sys.stdout.write("assistant> ")
        result = generate(model, tokenizer, prompt, cfg,
                          on_token=lambda row, text: (sys.stdout.write(text), sys.stdout.flush()))
        sys.stdout.write("\n")
        sys.stdout.flush()
        messages.append({"role": "assistant", "content": result.texts[0].strip()})


def cmd_route(args) -> int:
    from minimoe import routing

    model, tokenizer = load(args)
    report = routing.route(model, tokenizer, args.text)
    if args.json:
        print(json.dumps({"tokens": report.tokens, "experts": report.experts.tolist(),
                          "weights": report.weights.tolist(), **report.summary()}, indent=1))
    else:
        print(routing.format_table(report, max_tokens=args.max_tokens))
        print()
        print(routing.format_summary(report))
    if args.plot:
        routing.plot_heatmap(report, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} TB"


def _human_count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


def _tokenizer_problems(checkpoint) -> list[str]:
    """The tokenizer beside the checkpoint, if any, against its config (warnings are left to the caller)."""
    import minimoe
    from minimoe.loading import check_tokenizer

    if not any(os.path.isfile(os.path.join(checkpoint.path, f)) for f in ("tokenizer.model", "tokenizer.json")):
        return []
    try:
        check_tokenizer(checkpoint.config, minimoe.load_tokenizer(checkpoint.path), checkpoint.path)
    except ValueError as error:
        return [str(error)]
    return []


def cmd_inspect(args) -> int:
    from minimoe.checkpoint import Checkpoint, CheckpointError

    import warnings

    checkpoint = Checkpoint(args.model, validate=False)
    problems = []
    with warnings.catch_warnings(record=True) as caught:   # every warning loading would give, reported
        warnings.simplefilter("always")
        try:
            checkpoint.validate()
        except CheckpointError as error:
            problems = str(error).split("\n  - ")[1:] or [str(error)]
        problems += _tokenizer_problems(checkpoint)
    c = checkpoint.config
    report = {"path": checkpoint.path, "config": c.to_dict(), "files": [os.path.basename(f) for f in checkpoint.files],
              "problems": problems, "warnings": [str(w.message) for w in caught]}
    if not problems:
        report.update(checkpoint.stats())
        if args.expert_parallel:
            from minimoe.parallel import split_bytes

            report["expert_parallel"] = split_bytes(checkpoint, args.expert_parallel)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 1 if problems else 0
    q = c.quantization
    rows = [
        ("architecture", f"{c.model_type} ({'sparse MoE, top-%d of %d experts' % (c.num_experts_per_tok, c.num_local_experts) if c.is_moe else 'dense MLP'})"),
        ("layers / hidden / ffn", f"{c.num_hidden_layers} / {c.hidden_size} / {c.intermediate_size}"),
        ("heads / kv heads / head_dim", f"{c.num_attention_heads} / {c.num_key_value_heads} / {c.head_dim}"),
        ("vocab / context", f"{c.vocab_size} / {c.max_position_embeddings}"),
        ("rope_theta / sliding_window", f"{c.rope_theta:g} / {c.sliding_window}"),
        ("dtype", c.dtype),
        ("quantization", f"AWQ int4 GEMM, group {q.group_size}" if q else "none"),
        ("files", f"{len(checkpoint.files)} safetensors"),
    ]
    if not problems:
        s = report
        rows += [
            ("parameters", _human_count(s["params_total"])),
            ("parameters per expert", _human_count(s["params_per_expert"]) if c.is_moe else "-"),
            ("active per token", _human_count(s["params_active_per_token"])),
            ("quantized linears", f"{s['linears_quantized']} of {s['linears_total']}"),
            ("bytes on disk", _human_bytes(s["bytes_on_disk"])),
            ("bytes read per token", _human_bytes(s["bytes_read_per_token"])),
        ]
    width = max(len(k) for k, _ in rows)
    print(checkpoint.path)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    if report["warnings"]:
        print(f"\n{len(report['warnings'])} warning(s):")
        for w in report["warnings"]:
            print(f"  - {w}")
    if report.get("expert_parallel"):
        print(f"\n  expert parallel over {args.expert_parallel} ranks (each loads the replicated part and its experts):")
        for row in report["expert_parallel"]:
            held = row["experts"]
            span = f"{held[0]}-{held[-1]}" if len(held) > 1 else f"{held[0]}"
            print(f"    rank {row['rank']}  experts {span} of {c.num_local_experts}  "
                  f"{_human_bytes(row['replicated_bytes'])} replicated + {_human_bytes(row['expert_bytes'])} experts "
                  f"= {_human_bytes(row['total_bytes'])}")
    if problems:
        print(f"\n{len(problems)} problem(s):")
        for p in problems:
            print(f"  - {p}")
        return 1
    print("\n  validation: ok" + (" (with the warnings above)" if report["warnings"] else ""))
    return 0


def cmd_grade(args) -> int:
    """Hand over to the grader of the assignments folder named (assignments/grade.py, next to that folder)."""
    folder = os.path.abspath(args.assignment)
    root = os.path.dirname(os.path.dirname(folder))
    if not os.path.isfile(os.path.join(root, "assignments", "grade.py")):
        raise ValueError(f"{args.assignment}: not an assignment folder (expected assignments/<name>/ of a minimoe "
                         "checkout, e.g. assignments/a1_norm_rope)")
    sys.path.insert(0, root)
    from assignments.grade import main as grade_main

    forwarded = [args.assignment] + (["--solution", args.solution] if args.solution else [])
    forwarded += (["--json", args.json] if args.json else []) + (["--gradescope", args.gradescope] if args.gradescope else [])
    forwarded += ["--timeout", str(args.timeout)] if args.timeout else []
    return grade_main(forwarded)


def cmd_train(args) -> int:
    import torch

    from minimoe import train as T
    from minimoe.config import ModelConfig
    from minimoe.tokenizer import load_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer_dir = os.path.dirname(os.path.abspath(args.tokenizer)) if args.tokenizer else args.data
    tokenizer = load_tokenizer(tokenizer_dir)
    train_ids = T.encode_documents(tokenizer, T.read_documents(os.path.join(args.data, "train")))
    val_dir = os.path.join(args.data, "val")
    val_ids = T.encode_documents(tokenizer, T.read_documents(val_dir)) if os.path.isdir(val_dir) else None
    config = ModelConfig(model_type="mixtral", vocab_size=tokenizer.vocab_size, hidden_size=args.hidden,
                         intermediate_size=args.ffn, num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.kv_heads, head_dim=args.hidden // args.heads, rms_norm_eps=1e-5,
                         rope_theta=10000.0, max_position_embeddings=max(1024, args.seq_len),
                         num_local_experts=args.experts, num_experts_per_tok=args.top_k)
    cfg = T.TrainConfig(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                        min_lr=args.lr / 10, warmup=min(100, args.steps // 10), eval_every=args.eval_every,
                        seed=args.seed)
    model = T.new_model(config, seed=args.seed)
    print(f"training {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters on "
          f"{train_ids.numel()} tokens ({torch.get_num_threads()} threads)", file=sys.stderr)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "log.jsonl"), "w") as log:
        T.train(model, train_ids, val_ids, cfg, on_log=lambda e: (log.write(json.dumps(e) + "\n"), log.flush()))
    tokenizer_file = os.path.join(tokenizer_dir, "tokenizer.model")
    T.save_checkpoint(model, args.out, tokenizer=tokenizer_file if os.path.exists(tokenizer_file) else None)
    print(f"wrote {args.out} (fp16; `minimoe quantize {args.out} DIR` makes an AWQ int4 copy)", file=sys.stderr)
    return 0


def cmd_eval_ppl(args) -> int:
    import time

    import torch

    import minimoe
    from minimoe.train import perplexity

    path = args.model or DEFAULT_MODEL
    model = minimoe.load_model(path, device=args.device, dtype=args.dtype, engine=args.engine)
    tokenizer = minimoe.load_tokenizer(path)
    with open(args.text, encoding="utf-8") as f:
        ids = tokenizer.encode(f.read(), bos=True)
    context = args.context or min(model.config.max_position_embeddings, 1024)
    bar = None
    try:
        from tqdm import tqdm
        bar = tqdm(total=len(ids) - 1, unit="tok", dynamic_ncols=True, file=sys.stderr)
    except ImportError:
        pass

    def progress(done, total):
        if bar is not None:
            bar.n = done
            bar.refresh()

    start = time.perf_counter()
    with torch.inference_mode():
        ppl, scored = perplexity(model, ids, context, args.stride, progress=progress)
    seconds = time.perf_counter() - start
    if bar is not None:
        bar.close()
    result = {"model": path, "text": args.text, "perplexity": ppl, "tokens": scored, "context": context,
              "stride": args.stride or context // 2, "tokens_per_s": scored / seconds, "engine": model.engine}
    print(json.dumps(result, indent=1) if args.json else
          f"perplexity {ppl:.3f} over {scored} tokens (context {context}, {scored / seconds:.0f} tok/s, "
          f"engine {model.engine})")
    return 0


def cmd_eval_harness(args) -> int:
    import tempfile

    from minimoe import eval as evaluation

    evaluation.register()            # one clear error when lm-eval is not installed
    from lm_eval.utils import make_table

    include = args.include_path
    with tempfile.TemporaryDirectory() as scratch:
        if args.local_tasks:
            evaluation.local_tasks(scratch)
            if include:   # both folders: copy the user's YAML next to minimoe's
                import shutil

                for name in os.listdir(include):
                    if name.endswith((".yaml", ".yml")):
                        shutil.copy(os.path.join(include, name), scratch)
            include = scratch
        results = evaluation.evaluate(args.model or DEFAULT_MODEL, [t for t in args.tasks.split(",") if t],
                                      include_path=include, num_fewshot=args.num_fewshot, limit=args.limit,
                                      batch_size=args.batch_size, engine=args.engine, dtype=args.dtype,
                                      device=args.device)
    print(make_table(results))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump({"results": results["results"], "config": results.get("config"),
                       "versions": results.get("versions")}, f, indent=1, default=str)
    return 0


def cmd_quantize(args) -> int:
    from minimoe.quantize import quantize_checkpoint

    if args.method == "rtn":
        if args.calib:
            raise ValueError("--calib is for --method awq (rtn looks at the weights only)")
        bar = ProgressBar(f"quantizing {args.src}")
        summary = quantize_checkpoint(args.src, args.dst, method="rtn", group_size=args.group_size,
                                      progress=lambda name, done, total: bar(done, total))
    else:
        summary = _quantize_awq(args)
    if args.summary:
        with open(args.summary, "w") as f:
            json.dump(summary, f, indent=1)
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    if args.method == "awq":
        _print_awq_table(summary)
        return 0
    errors = summary["layers"]
    print(f"wrote {args.dst}: {len(errors)} linear layers, rtn, group size {args.group_size}, "
          f"{summary['seconds']:.1f} s", file=sys.stderr)
    kinds: dict[str, list[float]] = {}
    for prefix, row in errors.items():
        kinds.setdefault(prefix.rsplit(".", 1)[-1], []).append(row["relative_error"])
    print(f"{'linear':<10} {'layers':>6}  relative error ||W - Q(W)|| / ||W||: mean  max")
    for kind, values in kinds.items():
        print(f"{kind:<10} {len(values):>6}  {sum(values) / len(values):>37.4f}  {max(values):.4f}")
    return 0


def _quantize_awq(args) -> dict:
    import resource

    import minimoe
    from minimoe.config import load_config
    from minimoe.quantize import awq_search, quantize_checkpoint

    if not args.calib:
        raise ValueError("--method awq needs calibration text: --calib FILE (a UTF-8 text file; text like the "
                         "model's use, e.g. held-out training data)")
    settings = awq_search.Settings(group_size=args.group_size, grid=args.grid, clip=not args.no_clip,
                                   duo_scaling=args.duo_scaling, inputs=args.inputs)
    settings.check()
    with open(args.calib, encoding="utf-8") as f:
        text = f.read()
    config = load_config(args.src)   # only the context length is needed here; quantize_checkpoint validates
    seq_len = args.seq_len or min(512, config.max_position_embeddings)
    ids = minimoe.load_tokenizer(args.src).encode(text, bos=True)
    windows = awq_search.calibration_windows(ids, args.samples, seq_len)
    print(f"AWQ search on {windows.numel()} calibration tokens ({args.samples} x {seq_len}) from {args.calib}",
          file=sys.stderr)
    summary = quantize_checkpoint(args.src, args.dst, method="awq", group_size=args.group_size,
                                  calibration=windows, settings=settings,
                                  progress=lambda line, done, total: print(f"[{done}/{total}] {line}",
                                                                           file=sys.stderr, flush=True))
    summary["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"wrote {args.dst}: AWQ int4, group size {args.group_size}, {summary['seconds']:.1f} s, "
          f"peak RSS {summary['peak_rss_gb']:.2f} GB", file=sys.stderr)
    return summary


def _print_awq_table(summary: dict) -> None:
    """The per-layer summary: chosen alphas, layer output error RTN vs AWQ, routing changes."""
    print(f"{'layer':>5} {'a qkv':>6} {'a v->o':>6} {'a ffn':>6} {'a w3->w2':>8} {'err RTN':>8} {'err AWQ':>8} "
          f"{'ratio':>6} {'top-k chg RTN':>13} {'AWQ':>6}  experts on all tokens")
    for r in summary["layers"]:
        a = r["alpha"]
        experts = [v for k, v in a.items() if k.startswith("expert")]
        chg = ("-", "-") if r["routes_changed_rtn"] is None else \
            (f"{100 * r['routes_changed_rtn']:.1f}%", f"{100 * r['routes_changed_awq']:.1f}%")
        print(f"{r['index']:>5} {a['qkv']:>6.2f} {a['v->o']:>6.2f} {a['ffn_in']:>6.2f} "
              f"{sum(experts) / len(experts):>8.2f} {r['rtn_error']:>8.4f} {r['awq_error']:>8.4f} "
              f"{r['awq_error'] / max(r['rtn_error'], 1e-30):>6.3f} {chg[0]:>13} {chg[1]:>6}  "
              f"{r.get('fallback_experts') or '-'}")
    print("err: ||layer_q(x) - layer(x)|| / ||layer(x) - x|| on the calibration tokens (x: the quantized "
          "model's input to that layer); top-k chg: tokens whose set of experts differs from the fp model's")


ENGINE_NAMES = ("reference", "native", "compile", "cuda-graph", "auto")  # minimoe.engines.NAMES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minimoe", description=__doc__.split("\n")[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="how the extension was built and which kernels run")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.set_defaults(func=cmd_info)
    def model_options(p, device=True):
        p.add_argument("--model", help="checkpoint directory (default: the built-in model, trained on Shakespeare)")
        p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
        p.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], default="auto",
                       help="activation dtype (default auto: on a CPU, an AWQ checkpoint runs in bfloat16 where its "
                            "prefill runs on AMX, else float32; otherwise the checkpoint's dtype)")
        p.add_argument("--engine", choices=list(ENGINE_NAMES), default=None,
                       help="what runs model.py: reference (the Python as written), native (C++/CUDA fast "
                            "paths), compile (torch.compile of the decode step), cuda-graph (GPU), auto (default, "
                            "or $MINIMOE_ENGINE: the fastest for the device)")

    def sampling_options(p):
        p.add_argument("--max-new-tokens", type=int, default=64)
        p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
        p.add_argument("--top-k", type=int, default=0)
        p.add_argument("--top-p", type=float, default=1.0)
        p.add_argument("--repetition-penalty", type=float, default=1.0)
        p.add_argument("--seed", type=int, default=None)
        p.add_argument("--stop", action="append", help="a stop string (repeatable)")

    generate = sub.add_parser("generate", help="generate a continuation of a prompt")
    generate.add_argument("prompt")
    model_options(generate)
    sampling_options(generate)
    generate.add_argument("--expert-parallel", action="store_true",
                          help="run as one rank of several started by torchrun, holding only its share of each "
                               "layer's experts (docs/expert-parallel.md)")
    generate.add_argument("--dispatch", choices=["auto", "all_reduce", "all_to_all"], default="auto",
                          help="expert parallel: how tokens reach their experts (default auto: the collective "
                               "that moves fewer bytes)")
    generate.set_defaults(func=cmd_generate)
    chat = sub.add_parser("chat", help="an interactive chat loop on stdin")
    model_options(chat)
    sampling_options(chat)
    chat.set_defaults(func=cmd_chat)
    route = sub.add_parser("route", help="show which experts each token chose in each layer")
    route.add_argument("text")
    model_options(route)
    route.add_argument("--plot", metavar="PNG", help="also draw a token x layer heatmap (needs matplotlib)")
    route.add_argument("--json", action="store_true", help="print JSON instead of tables")
    route.add_argument("--max-tokens", type=int, default=64, help="rows shown in the per-token table")
    route.set_defaults(func=cmd_route)
    train = sub.add_parser("train", help="train a Mixtral from scratch on a folder of documents")
    train.add_argument("--data", required=True, help="a folder with train/*.txt (and val/*.txt) documents, and "
                                                    "tokenizer.model unless --tokenizer")
    train.add_argument("--tokenizer", help="a sentencepiece tokenizer.model (default: DATA/tokenizer.model)")
    train.add_argument("--out", required=True, help="the checkpoint directory to write")
    train.add_argument("--steps", type=int, default=1000)
    train.add_argument("--batch-size", type=int, default=16)
    train.add_argument("--seq-len", type=int, default=256)
    train.add_argument("--lr", type=float, default=2e-3)
    train.add_argument("--hidden", type=int, default=256)
    train.add_argument("--ffn", type=int, default=256, help="each expert's intermediate size")
    train.add_argument("--layers", type=int, default=4)
    train.add_argument("--heads", type=int, default=4)
    train.add_argument("--kv-heads", type=int, default=2)
    train.add_argument("--experts", type=int, default=4)
    train.add_argument("--top-k", type=int, default=2)
    train.add_argument("--eval-every", type=int, default=100)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--threads", type=int, default=None)
    train.set_defaults(func=cmd_train)
    evaluate = sub.add_parser("eval", help="evaluate a model")
    eval_sub = evaluate.add_subparsers(dest="what", required=True)
    ppl = eval_sub.add_parser("ppl", help="perplexity of a text file (sliding window)")
    ppl.add_argument("--text", required=True, help="a UTF-8 text file")
    ppl.add_argument("--context", type=int, default=None, help="window length (default: min(context, 1024))")
    ppl.add_argument("--stride", type=int, default=None, help="window step (default: context / 2)")
    ppl.add_argument("--json", action="store_true")
    model_options(ppl)
    ppl.set_defaults(func=cmd_eval_ppl)
    harness = eval_sub.add_parser("harness", help="EleutherAI's lm-evaluation-harness on minimoe (the eval extra)")
    harness.add_argument("--tasks", required=True, help="comma-separated task names (the harness's, or local ones)")
    harness.add_argument("--include-path", help="a folder of task YAML files (local tasks over local data)")
    harness.add_argument("--local-tasks", action="store_true",
                         help="also offer minimoe's three local tasks: minimoe_next_word, minimoe_cue, minimoe_passages")
    harness.add_argument("--num-fewshot", type=int, default=None)
    harness.add_argument("--limit", type=float, default=None, help="at most this many examples per task")
    harness.add_argument("--batch-size", type=int, default=1)
    harness.add_argument("--output", help="write the harness's results as JSON to this file")
    model_options(harness)
    harness.set_defaults(func=cmd_eval_harness)
    quantize = sub.add_parser("quantize", help="quantize an fp16/bf16/fp32 checkpoint to AWQ int4 GEMM")
    quantize.add_argument("src", help="the source checkpoint directory")
    quantize.add_argument("dst", help="the new directory to write")
    quantize.add_argument("--method", choices=["rtn", "awq"], default="rtn",
                          help="rtn: round to nearest per group; awq: activation-aware scales and clipping "
                               "searched on --calib text, then rounded (docs: AWQ from scratch)")
    quantize.add_argument("--group-size", type=int, default=128)
    quantize.add_argument("--calib", help="awq: calibration text file (UTF-8)")
    quantize.add_argument("--samples", type=int, default=64, help="awq: calibration windows (default 64)")
    quantize.add_argument("--seq-len", type=int, default=None,
                          help="awq: tokens per window (default min(512, the model's context))")
    quantize.add_argument("--grid", type=int, default=20, help="awq: alphas searched in [0, 1] (default 20)")
    quantize.add_argument("--no-clip", action="store_true", help="awq: skip the clipping search")
    quantize.add_argument("--duo-scaling", action="store_true",
                          help="awq: s = mean|x|^a / mean|w|^(1-a) (AutoAWQ's variant) instead of mean|x|^a")
    quantize.add_argument("--inputs", choices=["quantized", "fp"], default="quantized",
                          help="awq: each layer calibrated on the quantized (default) or fp earlier layers' output")
    quantize.add_argument("--summary", help="write the summary as JSON to this file")
    quantize.add_argument("--json", action="store_true", help="print the summary as JSON")
    quantize.set_defaults(func=cmd_quantize)
    grade = sub.add_parser("grade", help="grade a course assignment (assignments/): a score table per task")
    grade.add_argument("assignment", help="the assignment folder, e.g. assignments/a1_norm_rope")
    grade.add_argument("--solution", help="the directory holding the student's files (default: minimoe itself)")
    grade.add_argument("--json", help="also write the report as JSON")
    grade.add_argument("--gradescope", help="also write Gradescope's results.json")
    grade.add_argument("--timeout", type=float, default=None, help="seconds for the whole run")
    grade.set_defaults(func=cmd_grade)
    inspect = sub.add_parser("inspect", help="describe and validate a checkpoint directory")
    inspect.add_argument("model", help="checkpoint directory (config.json + *.safetensors)")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    inspect.add_argument("--expert-parallel", type=int, metavar="N",
                         help="also show how expert parallelism over N ranks would split it (bytes per rank)")
    inspect.set_defaults(func=cmd_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.debug:
        return args.func(args)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("minimoe: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError) as error:  # ConfigError/CheckpointError are ValueErrors
        print(f"minimoe: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
