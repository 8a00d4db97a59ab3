"""Shared test configuration: Hypothesis profiles, the `cuda` marker, the --engine option, a tiny fp32 model.

--engine NAME (pytest --engine reference, for instance): every model the tests load is run by that engine
(it sets $MINIMOE_ENGINE, load_model's default), so an instructor can grade a student's model.py as written
with `pytest --engine reference`, or check that the fast engines still agree with it.

Profiles (choose with MINIMOE_HYPOTHESIS_PROFILE):
    ci        (default) a bounded number of examples per property, so `make test` fits ~20 min on 2 cores
    thorough  many more examples, for a kernel hacker's machine
Fresh random data every run: no derandomize, no example database replay as a substitute for new examples.
"""

import os
import sys

import pytest
import torch
from hypothesis import HealthCheck, settings

# Run the tests against this checkout even without an install (PYTHONPATH-free `pytest` from the root).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

settings.register_profile(
    "ci", max_examples=20, deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("thorough", max_examples=500, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("MINIMOE_HYPOTHESIS_PROFILE", "ci"))

HAS_CUDA = torch.cuda.is_available()


def pytest_addoption(parser):
    parser.addoption("--engine", default=None,
                     choices=["reference", "native", "compile", "cuda-graph", "auto"],
                     help="the engine every loaded model runs with (sets $MINIMOE_ENGINE; default: auto)")


def pytest_configure(config):
    engine = config.getoption("--engine")
    if engine:
        os.environ["MINIMOE_ENGINE"] = engine


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False on this machine")
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip)


def devices():
    """The devices every kernel test runs on: the CPU always, CUDA as a skipped case when there is no GPU."""
    return ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def left_padded(prompts):
    """A batch of id lists as (ids, attention_mask), both (B, longest), padded on the left as generate_ids pads."""
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):], mask[row, width - len(p):] = torch.tensor(p), 1
    return ids, mask


def at_thread_counts(fn, counts=(1, 2, 1)):
    """[fn() run with torch.set_num_threads(n) for n in counts]; the caller's thread count is restored after."""
    before = torch.get_num_threads()
    try:
        outputs = []
        for threads in counts:
            torch.set_num_threads(threads)
            outputs.append(fn())
        return outputs
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def fp32_model(tmp_path_factory):
    """A tiny fp32 Mixtral (3 experts, top-2) with a sliding window of 6, for the cache and decode-step tests."""
    import minimoe
    from minimoe.testing import make_tiny_checkpoint

    path = make_tiny_checkpoint(tmp_path_factory.mktemp("fp32"), quantized=False, seed=5, dtype="float32",
                                sliding_window=6, num_local_experts=3, num_experts_per_tok=2)
    return minimoe.load_model(path)
