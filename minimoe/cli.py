"""The `minimoe` command line (also `python -m minimoe`). Thin: parse arguments, call the library, print.

    minimoe inspect DIR   architecture, parameter counts, quantization, bytes on disk and read per token
    minimoe info          how the native extension was built and which backend runs the int4 op per device
    minimoe demo          what `make demo` runs

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
    print(f"torch              {info['torch_version']} (CUDA {info['torch_cuda']}, GPU available: {info['cuda_available']})")
    print(f"extension loaded   {info['extension_loaded']}" + (f"  ({info['import_error']})" if info["import_error"] else ""))
    print(f"CUDA compiled      {info['cuda_compiled']}  archs: {', '.join(info['cuda_archs']) or '-'}")
    for op, devices in info["kernels"].items():
        print(f"kernel {op:<12}{', '.join(devices) or '-'}")
    print(f"awq_gemm backend   cpu: {info['backend']['cpu']}, cuda: {info['backend']['cuda']}")
    return 0


def cmd_demo(args) -> int:
    import torch

    from minimoe import awq, ops

    cmd_info(argparse.Namespace(json=False))
    torch.manual_seed(0)
    weight = torch.randn(64, 128)
    qweight, qzeros, scales = awq.quantize(weight, group_size=32)
    x = torch.randn(3, 128)
    y = ops.awq_gemm(x, qweight, qzeros, scales, 32)
    print(f"\nint4 linear 128 -> 64 on 3 tokens via '{ops.backend('cpu')}': max |y - x W^T| = "
          f"{(y - x @ weight.T).abs().max():.4f} (quantization error), |y| max {y.abs().max():.3f}")
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


def cmd_inspect(args) -> int:
    from minimoe.checkpoint import Checkpoint, CheckpointError

    checkpoint = Checkpoint(args.model, validate=False)
    problems = []
    try:
        checkpoint.validate()
    except CheckpointError as error:
        problems = str(error).split("\n  - ")[1:] or [str(error)]
    c = checkpoint.config
    report = {"path": checkpoint.path, "config": c.to_dict(), "files": [os.path.basename(f) for f in checkpoint.files],
              "problems": problems}
    if not problems:
        report.update(checkpoint.stats())
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
    if problems:
        print(f"\n{len(problems)} problem(s):")
        for p in problems:
            print(f"  - {p}")
        return 1
    print("\n  validation: ok")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minimoe", description=__doc__.split("\n")[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="how the extension was built and which kernels run")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.set_defaults(func=cmd_info)
    inspect = sub.add_parser("inspect", help="describe and validate a checkpoint directory")
    inspect.add_argument("model", help="checkpoint directory (config.json + *.safetensors)")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    inspect.set_defaults(func=cmd_inspect)
    demo = sub.add_parser("demo", help="what `make demo` runs")
    demo.set_defaults(func=cmd_demo)
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
