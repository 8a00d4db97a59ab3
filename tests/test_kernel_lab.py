"""The kernel lab (minimoe/bench/kernels.py, csrc/dev/cpu/): every CPU stage is correct against the spec, the
Triton variant too (in Triton's interpreter), the registry matches the files, and the docs table is the one the
committed results JSON gives."""

import json
import os
import subprocess
import sys

import pytest
import torch

from minimoe import awq
from minimoe.bench import kernels as lab

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRIES = lab.load_registry()
STAGES = [e for e in ENTRIES if e["kind"] == "stage"]


def test_the_registry_lists_every_stage_file_and_nothing_else():
    on_disk = sorted(f for f in os.listdir(lab.CPU_DIR) if f.endswith(".cpp"))
    assert sorted(e["file"] for e in STAGES) == on_disk
    ids = [e["id"] for e in ENTRIES]
    assert len(ids) == len(set(ids))
    for e in STAGES:
        assert e["file"].startswith(e["id"] + "_"), e
        with open(os.path.join(lab.CPU_DIR, e["file"]), encoding="utf-8") as f:
            head = f.read(400)
        assert head.startswith(f"// {e['id']} · "), f"{e['file']} must open with what it is"
        if e["id"] != "01":
            assert "What changed from" in head, f"{e['file']} must say what changed and why"
    assert {e["kind"] for e in ENTRIES} == {"torch", "stage", "triton", "production"}


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e["kind"] in ("stage", "torch", "production")],
                         ids=lambda e: e["id"])
def test_every_variant_matches_the_spec_with_nan_poisoned_outputs(entry):
    if not lab.cpu_has(entry["isa"]):
        pytest.skip(f"this CPU lacks {entry['isa']}")
    run = lab.runner(entry, threads=2)
    if run is None:
        pytest.skip("the extension is not built")
    assert lab.check(run) < 1e-5


def test_the_check_catches_a_kernel_that_forgets_outputs_and_one_that_is_wrong():
    def forgets(x, qweight, qzeros, scales, G):
        y = x.double() @ awq.dequantize(qweight, qzeros, scales, G, torch.float64)
        y = y.float()
        y[:, -1] = float("nan")                      # the last column never written
        return y

    def nibble_order_sequential(x, qweight, qzeros, scales, G):
        words = qweight.view(torch.int32)
        codes = torch.stack([(words >> (4 * i)) & 0xF for i in range(8)], dim=-1).reshape(words.shape[0], -1)
        w = (codes.double() - awq.unpack(qzeros).double().repeat_interleave(G, 0)) * \
            scales.double().repeat_interleave(G, 0)
        return (x.double() @ w).float()

    with pytest.raises(AssertionError, match="NaN"):
        lab.check(forgets)
    assert lab.check(nibble_order_sequential) > 1e-2


def test_the_triton_variant_matches_the_spec_in_the_interpreter():
    pytest.importorskip("triton")
    done = subprocess.run([sys.executable, "-m", "minimoe.bench.kernels", "--check-only", "--variant", "triton"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env=dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=ROOT))
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert "triton: correct" in done.stdout, done.stdout


def committed_and_documented(results_path: str, docs_path: str, begin: str, end: str) -> tuple[dict, str]:
    """(the committed results JSON, the table its docs page holds between the markers)."""
    with open(results_path, encoding="utf-8") as f:
        results = json.load(f)
    with open(docs_path, encoding="utf-8") as f:
        text = f.read()
    return results, text.split(begin, 1)[1].split(end, 1)[0].strip()


def test_the_docs_table_is_the_committed_results():
    results, table = committed_and_documented(lab.RESULTS, lab.DOCS, lab.BEGIN, lab.END)
    assert table == lab.render_table(results).strip(), "run python -m minimoe.bench.kernels --update-docs"
    assert [row["id"] for row in results["variants"]] == [e["id"] for e in ENTRIES]


def test_the_cuda_docs_table_is_the_last_gpu_runs_results():
    # The CUDA ladder is timed only on a GPU; its table in the docs is rendered from the committed JSON of the last
    # run, so it can be checked (and regenerated) anywhere.
    results, table = committed_and_documented(lab.CUDA_RESULTS, lab.CUDA_DOCS, lab.CUDA_BEGIN, lab.CUDA_END)
    assert table == lab.render_cuda_table(results).strip(), "run python -m minimoe.bench.kernels --device cuda --update-docs"
    assert len(results["rows"]) > 0 and table.count("\n| ") == len(results["rows"]) + 1
