"""Every tutorial runs to the end as a plain script on the CPU (its own asserts check it against minimoe).

Each runs in a fresh interpreter, as a reader would run it, with MINIMOE_TUTORIAL_PLOTS unset (no plotting
library needed). All nine together take about two minutes on 2 cores.
"""

import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUTORIALS = sorted(glob.glob(os.path.join(ROOT, "tutorials", "[0-9][0-9]_*.py")))
TIMEOUT_S = 120


def test_the_nine_tutorials_are_there():
    names = [os.path.basename(path)[:2] for path in TUTORIALS]
    assert names == ["01", "02", "03", "04", "05", "06", "07", "08", "09"], f"tutorials found: {TUTORIALS}"


@pytest.mark.parametrize("path", TUTORIALS, ids=[os.path.basename(p) for p in TUTORIALS])
def test_tutorial_is_jupytext_percent_format(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    assert "#   jupytext:" in text and "formats: py:percent" in text, f"{path}: no jupytext header"
    assert text.count("# %% [markdown]") >= 3, f"{path}: expected markdown cells (# %% [markdown])"
    assert "plt.show(" not in text, f"{path}: never plt.show(); save to $MINIMOE_TUTORIAL_PLOTS instead"


@pytest.mark.parametrize("path", TUTORIALS, ids=[os.path.basename(p) for p in TUTORIALS])
def test_tutorial_runs(path, tmp_path):
    env = dict(os.environ)
    env.pop("MINIMOE_TUTORIAL_PLOTS", None)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    try:
        done = subprocess.run([sys.executable, path], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"{os.path.basename(path)} did not finish within {TIMEOUT_S} s; output so far:\n"
                    f"{error.stdout or ''}{error.stderr or ''}")
    assert done.returncode == 0, (f"{os.path.basename(path)} exited with {done.returncode}\n"
                                  f"--- stdout ---\n{done.stdout}\n--- stderr ---\n{done.stderr}")
    assert done.stdout.strip(), f"{os.path.basename(path)} printed nothing for the reader to look at"
