"""Does a failed argument check in minimoe's ops raise a Python RuntimeError, or crash the process?

On the first H200 run (2026-11-28) the CUDA op's first failing TORCH_CHECK killed pytest with a segmentation
fault. This runs each kind of failing call in its own subprocess and prints how each one ended, so one run
tells whether the crash is in our CUDA translation unit, in every op of the extension, or in torch's error
path on that machine. With --gdb it also prints the native backtrace of the first crashing case (cuda-gdb,
which debugs host code too).

    python scripts/probe_error_path.py [--gdb]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SETUP = """
import torch, minimoe.ops
from minimoe import awq
w = torch.randn(64, 256)
qweight, qzeros, scales = awq.quantize(w, 128)
x = torch.randn(2, 256)
"""

CASES = {
    "cpu op, bad group_size": "torch.ops.minimoe.awq_gemm(x, qweight, qzeros, scales, 96)",
    "torch's own CUDA error": "torch.mm(torch.zeros(2, 3, device='cuda'), torch.zeros(4, 5, device='cuda'))",
    "cuda op, bad group_size": "torch.ops.minimoe.awq_gemm(x.cuda().half(), qweight.cuda(), qzeros.cuda(), "
                               "scales.cuda(), 96)",
    "cuda op, bad kernel name": "torch.ops.minimoe.awq_gemm_cuda_kernel(x.cuda().half(), qweight.cuda(), "
                                "qzeros.cuda(), scales.cuda(), 128, 'fastest')",
    "cuda unpack, 1-D input": "torch.ops.minimoe.awq_unpack(torch.zeros(8, dtype=torch.int32, device='cuda'))",
    "cpu unpack, 1-D input": "torch.ops.minimoe.awq_unpack(torch.zeros(8, dtype=torch.int32))",
}


def program(call: str) -> str:
    return SETUP + f"""
try:
    {call}
    print("NO ERROR RAISED")
except RuntimeError as error:
    print("RuntimeError:", str(error).splitlines()[0][:160])
"""


def main() -> int:
    import torch

    env = dict(os.environ, PYTHONPATH=ROOT)
    crashed = []
    cases = CASES
    if not torch.cuda.is_available():
        cases = {name: call for name, call in CASES.items() if "cuda" not in name.lower()}
        print(f"no CUDA device: the {len(CASES) - len(cases)} CUDA cases are skipped")
    for name, call in cases.items():
        run = subprocess.run([sys.executable, "-c", program(call)], capture_output=True, text=True, env=env,
                             timeout=120)
        last = (run.stdout.strip().splitlines() or ["(no output)"])[-1]
        print(f"{name:<28} exit {run.returncode:>4}  {last}")
        if run.returncode != 0 or not last.startswith("RuntimeError"):
            crashed.append(name)
            print("    stderr:", " | ".join(run.stderr.strip().splitlines()[-3:])[:400])
    if crashed and "--gdb" in sys.argv[1:] and shutil.which("cuda-gdb"):
        name = crashed[0]
        print(f"\nnative backtrace of '{name}' (cuda-gdb):")
        script = os.path.join("/tmp", "minimoe_probe_case.py")
        with open(script, "w") as f:
            f.write(program(CASES[name]))
        run = subprocess.run(["cuda-gdb", "-batch", "-ex", "set pagination off", "-ex", "run", "-ex", "bt 30",
                              "--args", sys.executable, script], capture_output=True, text=True, env=env,
                             timeout=150)
        lines = [ln for ln in run.stdout.splitlines() if ln.startswith("#") or "SIG" in ln]
        print("\n".join(lines[-40:]) or run.stdout[-3000:] + run.stderr[-2000:])
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
