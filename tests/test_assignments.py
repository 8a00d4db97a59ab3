"""The course assignments (assignments/): the reference scores 100%, every skeleton exactly 0, every planted bug
is caught by a named test while the unrelated tasks keep their points, and the skeletons are what minimoe's
source gives (no drift). Each grade runs the assignment's tests in a child process, as an instructor would.
"""

import json
import os
import subprocess
import sys

import pytest

from assignments import mutants, skeletons
from assignments.catalog import ASSIGNMENTS
from assignments.grade import grade

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDERS = list(ASSIGNMENTS)


def test_skeletons_are_generated_from_minimoe_and_up_to_date():
    assert skeletons.main(["--check"]) == 0


def test_every_task_region_in_minimoe_belongs_to_a_catalogued_task():
    import re

    marked = set()
    for path in {p for a in ASSIGNMENTS.values() for p, _ in a.pieces} | {a.cpp for a in ASSIGNMENTS.values() if a.cpp}:
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            marked |= set(re.findall(r"\[task (\d+\.\d+)\]", f.read()))
    catalogued = {t for a in ASSIGNMENTS.values() for t in a.tasks}
    assert marked <= catalogued
    assert catalogued - marked == {"5.4"}          # the one task that is only a test (end to end)


@pytest.mark.parametrize("folder", FOLDERS)
def test_the_reference_scores_full_points(folder):
    report = grade(folder)
    assert report["notes"] == [] and report["unmarked_tests"] == []
    for t in report["tasks"]:
        assert t["tests"] >= 1, f"task {t['task']} has no tests"
        assert t["earned"] == t["points"], f"task {t['task']}: {t['failures']}"


@pytest.mark.parametrize("folder", FOLDERS)
def test_the_skeleton_scores_zero_and_nothing_crashes(folder):
    report = grade(folder, os.path.join(ROOT, "assignments", folder, "skeleton"))
    assert report["notes"] == [], report["notes"]
    assert report["earned"] == 0, [t for t in report["tasks"] if t["earned"]]
    for t in report["tasks"]:
        assert t["tests"] >= 1
        for test, message in t["failures"].items():
            assert "NotImplementedError" in message, f"{test}: {message}"


@pytest.mark.parametrize("mutant", mutants.MUTANTS, ids=[m.name for m in mutants.MUTANTS])
def test_every_planted_bug_fails_its_named_tests_and_spares_the_unrelated_tasks(mutant):
    caught, report = mutants.check(mutant)
    assert caught, json.dumps(report["tasks"], indent=1)


def test_a_crash_costs_only_the_test_it_happens_in(tmp_path):
    # a solution whose RMSNorm kills the process and whose rotate_half never returns to Python quickly enough
    files = skeletons.render(ASSIGNMENTS["a1_norm_rope"], stub=False)
    text = files["norm_rope.py"].replace(
        "        x32 = x.float()\n",
        "        if x.dtype == torch.float16:\n            import os\n            os._exit(7)\n        x32 = x.float()\n")
    files["norm_rope.py"] = text.replace('    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension."""\n',
                                         '    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension."""\n'
                                         '    if x.dim() == 1:\n        import time\n        time.sleep(60)\n')
    skeletons.write(str(tmp_path), files)
    from assignments.grade import run_tests, score

    results, notes = run_tests("a1_norm_rope", str(tmp_path), test_timeout_s=3)
    report = score("a1_norm_rope", results)
    by_name = {test.split("::")[-1]: r for test, r in results.items()}
    assert "crashed" in by_name["test_rms_norm_of_fp16_activations_does_not_overflow"]["message"]
    assert "TimeoutError" in by_name["test_rotate_half_by_hand"]["message"]
    assert [t["passed"] for t in report["tasks"]] == [2, 2, 3]       # everything else still graded
    assert len(notes) == 1


def test_a_syntax_error_costs_the_tests_that_import_it_and_the_grade_command_writes_json(tmp_path):
    (tmp_path / "norm_rope.py").write_text("def rms_norm(:\n")
    out = tmp_path / "score.json"
    done = subprocess.run([sys.executable, "-m", "minimoe", "grade", os.path.join(ROOT, "assignments", "a1_norm_rope"),
                           "--solution", str(tmp_path), "--json", str(out), "--gradescope", str(tmp_path / "gs.json")],
                          capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["earned"] == 0 and all("SyntaxError" in m for t in report["tasks"] for m in t["failures"].values())
    assert "total" in done.stdout and "0.0 / 13" in done.stdout
    gradescope = json.loads((tmp_path / "gs.json").read_text())
    assert gradescope["score"] == 0 and len(gradescope["tests"]) == 3
    assert sum(t["max_score"] for t in gradescope["tests"]) == 13
