"""Plain-Python GPU check of minimoe's CUDA awq_gemm kernels: needs only torch and this checkout.

scripts/gpu_check.sh runs this when pytest or hypothesis is not importable on the GPU machine. It runs the same
comparisons as tests/test_cuda_kernels.py on a fixed list of shapes, every kernel, fp16 and bf16, and prints
one line per failure and a summary; exit status 1 on any failure.

    python scripts/check_cuda_op.py            # every shape
    python scripts/check_cuda_op.py --quick    # the small shapes only: for runs under compute-sanitizer, which
                                               # slows every kernel down many times
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from minimoe import awq, ops  # noqa: E402
from minimoe.testing import awq_gemm_check  # noqa: E402

SHAPES = [(1, 128, 8, 128), (3, 256, 64, 128), (8, 4096, 4096, 128), (9, 4096, 4096, 128), (257, 512, 160, 32),
          (130, 4096, 14336, 128), (5, 96, 24, 32), (2, 40, 16, 8), (64, 14336, 4096, 128)]


def main() -> int:
    info = ops.build_info()
    print("build_info:", {k: info[k] for k in ("extension_loaded", "cuda_compiled", "cuda_archs", "kernels")})
    if not torch.cuda.is_available() or "cuda" not in info["kernels"].get("awq_gemm", []):
        print("FAIL: no CUDA device or minimoe._C has no CUDA awq_gemm kernel", info.get("import_error"))
        return 1
    torch.backends.cuda.matmul.allow_tf32 = False
    failures = total = 0
    shapes = [s for s in SHAPES if s[1] * s[2] <= 1 << 20] if "--quick" in sys.argv[1:] else SHAPES
    for M, K, N, G in shapes:
        generator = torch.Generator().manual_seed(M * 131 + N)
        qweight, qzeros, scales = [t.cuda() for t in awq.quantize(torch.randn(N, K, generator=generator) * 0.05, G)]
        for dtype in (torch.float16, torch.bfloat16):
            x = torch.randn(M, K, generator=generator).to(dtype).cuda()
            for kernel in ("auto", "gemv", "mma", "simple"):
                if kernel == "mma" and (G % 32 or N % 32):
                    continue
                total += 1
                try:
                    y = torch.ops.minimoe.awq_gemm_cuda_kernel(x, qweight, qzeros, scales, G, kernel)
                    torch.cuda.synchronize()
                    bad, _ = awq_gemm_check(y, x, qweight, qzeros, scales, G)
                    if bad.any():
                        failures += 1
                        print(f"FAIL {kernel} {dtype} M,K,N,G={M},{K},{N},{G}: {int(bad.sum())}/{bad.numel()} wrong")
                except Exception as error:  # noqa: BLE001 - report every failing case, then exit 1
                    failures += 1
                    print(f"FAIL {kernel} {dtype} M,K,N,G={M},{K},{N},{G}: {type(error).__name__}: {error}")
    print(f"check_cuda_op: {total - failures}/{total} cases ok")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
