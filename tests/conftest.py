"""Shared test configuration: Hypothesis profiles and the `cuda` marker.

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


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False on this machine")
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip)


def devices():
    """The devices every kernel test runs on: the CPU always, CUDA as a skipped case when there is no GPU."""
    return ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


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
