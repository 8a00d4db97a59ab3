"""The GPU-machine scripts, as far as a machine without a GPU can check them.

scripts/gpu_check.sh and scripts/probe_error_path.py run where device time is short and every failed start
costs minutes: a syntax error or a crash in the probe's own logic must show up here, not there.
"""

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
