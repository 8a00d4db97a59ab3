"""Greedy generation gives the same tokens with 1 and 2 threads, on every default CPU path of the built-in model.

Each thread count runs in its own interpreter (torch's thread pool is sized once per process). The paths: the
engines a CPU user gets (native: minimoe's kernels; reference: the plain PyTorch spec) in each activation
dtype. Greedy decoding turns any numerical difference between thread counts into a different token sooner or
later, so 48 tokens from a real prompt is a sensitive check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = r"""
import json, sys, torch
torch.set_num_threads(int(sys.argv[1]))
import minimoe
from minimoe.generate import SamplingConfig, generate_ids
model = minimoe.load_model(sys.argv[4], dtype=sys.argv[2], engine=sys.argv[3])
tok = minimoe.load_tokenizer(sys.argv[4])
prompts = [tok.encode("ORSINO.\nIf music be the food of love, play on;", bos=True), tok.encode("Now is the", bos=True)]
out = generate_ids(model, prompts, SamplingConfig(max_new_tokens=48, temperature=0.0), eos_id=None)
print(json.dumps(out.tokens))
"""
DEFAULT_MODEL = os.path.join(ROOT, "minimoe", "default_model")


def tokens(threads: int, dtype: str, engine: str) -> list[list[int]]:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS=str(threads))
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(threads), dtype, engine, DEFAULT_MODEL],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("engine", ["native", "reference"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_greedy_tokens_do_not_depend_on_the_thread_count(dtype, engine):
    one, two = tokens(1, dtype, engine), tokens(2, dtype, engine)
    assert all(len(row) == 48 for row in one)
    assert one == two
