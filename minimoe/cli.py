"""The `minimoe` command line (also `python -m minimoe`). Thin: parse arguments, call the library, print.

    minimoe info        how the native extension was built and which backend runs the int4 op per device
    minimoe demo        what `make demo` runs
"""

from __future__ import annotations

import argparse
import json
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minimoe", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="how the extension was built and which kernels run")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.set_defaults(func=cmd_info)
    demo = sub.add_parser("demo", help="what `make demo` runs")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
