"""Two Python threads generating on the same loaded model at once get the tokens each gets alone, and leave
Python's cycle collector as it was (generate_ids pauses it while decoding; overlapping pauses must not leave it
off)."""

from __future__ import annotations

import gc
import os
import threading

import pytest

import minimoe
from minimoe.generate import SamplingConfig, generate_ids

DEFAULT_MODEL = os.path.join(os.path.dirname(minimoe.__file__), "default_model")


@pytest.mark.parametrize("engine", ["native", "reference"])
def test_two_threads_on_one_model(engine):
    model = minimoe.load_model(DEFAULT_MODEL, dtype="float32", engine=engine)
    tok = minimoe.load_tokenizer(DEFAULT_MODEL)
    jobs = {"a": [tok.encode("ORSINO.\nIf music be the food of love, play on;", bos=True)],
            "b": [tok.encode("Now is the winter", bos=True), tok.encode("To be", bos=True)]}
    cfg = SamplingConfig(max_new_tokens=48, temperature=0.0)
    alone = {name: generate_ids(model, prompts, cfg, eos_id=None).tokens for name, prompts in jobs.items()}
    assert gc.isenabled()
    results: dict[str, list] = {name: [] for name in jobs}
    errors: list[BaseException] = []
    start = threading.Barrier(len(jobs))

    def work(name):
        try:
            start.wait()
            for _ in range(3):
                results[name].append(generate_ids(model, jobs[name], cfg, eos_id=None).tokens)
        except BaseException as error:  # noqa: BLE001 - reported below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(name,)) for name in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    for name in jobs:
        assert results[name] == [alone[name]] * 3, f"thread {name} got other tokens than alone"
    assert gc.isenabled(), "overlapping generations left the cycle collector off"


def test_overlapping_pauses_restore_the_collector():
    from minimoe.generate import cycle_collection

    first, second = cycle_collection(False), cycle_collection(False)
    first.__enter__()
    second.__enter__()          # as when a second thread starts decoding during the first
    first.__exit__(None, None, None)
    assert not gc.isenabled()   # the second is still decoding
    second.__exit__(None, None, None)
    assert gc.isenabled()
