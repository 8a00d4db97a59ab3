"""The GPU-machine scripts, as far as a machine without a GPU can check them.

scripts/gpu_check.sh and scripts/probe_error_path.py run where device time is short and every failed start
costs minutes: a syntax error or a crash in the probe's own logic must show up here, not there.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from minimoe import ops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_script_parses():
    result = subprocess.run(["bash", "-n", os.path.join(ROOT, "scripts", "gpu_check.sh")], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(not ops.build_info()["extension_loaded"], reason="the probe calls the compiled ops")
def test_error_probe_sees_every_cpu_check_raise():
    # Each failing argument check runs in its own process; each must end in a RuntimeError naming the problem
    # (on the H200 a crash in message formatting once turned them all into segfaults).
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "probe_error_path.py")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "group_size 96 must divide K = 256, found remainder 64" in result.stdout
    assert "packed must be 2-D [R, N/8], found 1-D with shape [8]" in result.stdout


def test_e2e_real_shape_part_compares_each_decode_round_with_its_own_bandwidth(tmp_path, monkeypatch):
    # benchmarks/e2e.py's real-shape phase on a tiny checkpoint (the real one is 7 GB). The decode speeds and the
    # bandwidth probes are scripted so that the median of the rounds' own fractions (what the script must report)
    # differs from the ratio of the medians: rounds of (1, 2, 3) tok/s against probes worth floors of (40, 10, 20)
    # tok/s are fractions (0.025, 0.2, 0.15), median 0.15; the medians' ratio would be 2 / 20 = 0.1.
    import importlib
    import types

    from minimoe.checkpoint import Checkpoint
    from minimoe.testing import make_tiny_checkpoint

    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    e2e = importlib.import_module("e2e")
    path = str(make_tiny_checkpoint(tmp_path / "ckpt", quantized=True))
    per_token = Checkpoint(path).stats()["bytes_read_per_token"]
    speeds, bandwidths = iter([1.0, 2.0, 3.0]), iter([floor * per_token for floor in (40.0, 10.0, 20.0)])
    real_generate = e2e.generate_ids

    def scripted_generate(*args, **kwargs):  # the real generation, reporting the next scripted speed
        result = real_generate(*args, **kwargs)
        return types.SimpleNamespace(decode_tokens_per_s=next(speeds), decode_steps=result.decode_steps)

    monkeypatch.setattr(e2e, "generate_ids", scripted_generate)
    monkeypatch.setattr(e2e, "read_bandwidth", lambda *a, **k: next(bandwidths))
    report = e2e.run_real(path, prompt_tokens=8, decode_tokens=3, dtype_name="float32", rounds=3)
    assert report["decode_tokens_per_s_rounds"] == [1.0, 2.0, 3.0]
    assert report["decode_fraction_of_floor_rounds"] == pytest.approx([0.025, 0.2, 0.15], rel=1e-12)
    assert report["decode_fraction_of_floor"] == pytest.approx(0.15, rel=1e-12)
    assert report["decode_tokens_per_s"] == 2.0
    assert report["decode_tokens"] == 3
    assert report["peak_rss_bytes"] >= report["rss_before_load_bytes"] > 0


def test_e2e_refuses_zero_rounds():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "e2e.py"), "--real-rounds", "0"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--real-rounds must be at least 1, found 0" in result.stderr


@pytest.mark.skipif(not ops.has_fused_ops("cpu"), reason="the benchmark times the compiled decode_attention")
def test_attention_benchmark_runs_and_reports_against_its_baseline_and_floor(tmp_path):
    # benchmarks/attention_cpu.py at its smallest: it checks that the op and the PyTorch code agree before timing
    # them, and its table's ratios must be the ratios of its own measurements.
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import attention_cpu
    finally:
        sys.path.remove(os.path.join(ROOT, "benchmarks"))
    out = tmp_path / "attention.json"
    assert attention_cpu.main(["--quick", "--seconds", "0.01", "--cold-mb", "4", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [row["cached_tokens"] for row in report["rows"]] == [160, 1000]
    for row in report["rows"]:
        assert row["ours_us"] > 0 and row["torch_us"] > 0
        assert row["speedup_vs_torch"] == pytest.approx(row["torch_us"] / row["ours_us"])
        assert row["bytes_read"] == 2 * row["kv_heads"] * row["cached_tokens"] * row["head_dim"] * 2  # bf16
        assert row["floor_us"] == pytest.approx(row["bytes_read"] / report["read_bandwidth_bytes_per_s"] * 1e6)
        assert row["fraction_of_floor"] == pytest.approx(row["floor_us"] / row["ours_us"])
