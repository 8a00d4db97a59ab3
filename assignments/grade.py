"""The grader: run one assignment's tests against a solution, print a score table per task, write JSON.

    python -m assignments.grade a1_norm_rope                          # minimoe itself: the reference, 100%
    python -m assignments.grade a1_norm_rope --solution ~/my_work     # the student's norm_rope.py in ~/my_work
    minimoe grade assignments/a1_norm_rope --solution ~/my_work --json score.json

Each task's points are shared equally by its tests. A student's crash, hang or missing function costs the
tests it happens in, never the run: the tests run in a child process that records every test's start and
outcome as it goes (assignments/conftest.py); when the child dies (a segfault in C++) or overruns its time
limit, the test it was running is scored as failed ("crashed" / "timed out") and a new child runs the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from assignments.catalog import ASSIGNMENTS, find

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _events(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def run_tests(folder: str, solution: str | None, timeout_s: float | None = None,
              test_timeout_s: float | None = None) -> tuple[dict[str, dict], list[str]]:
    """{test id: {"task", "outcome", "message"}} for every test of the assignment, and notes on the run."""
    assignment = ASSIGNMENTS[folder]
    timeout_s = timeout_s or assignment.timeout_s
    test_timeout_s = test_timeout_s or assignment.test_timeout_s
    results: dict[str, dict] = {}
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as scratch:
        log = os.path.join(scratch, "events.jsonl")
        for attempt in range(50):                      # each attempt gets past at least one test
            env = dict(os.environ, MINIMOE_GRADE_RESULTS=log, MINIMOE_TEST_TIMEOUT=str(test_timeout_s),
                       MINIMOE_GRADE_SKIP=",".join(results), PYTHONPATH=ROOT + os.pathsep +
                       os.environ.get("PYTHONPATH", ""))
            env.pop("MINIMOE_SOLUTION", None)
            if solution:
                env["MINIMOE_SOLUTION"] = os.path.abspath(solution)
            command = [sys.executable, "-m", "pytest", os.path.join("assignments", folder), "-q",
                       "-p", "no:cacheprovider", "--rootdir", ROOT, "-o", "addopts="]
            started = time.perf_counter()
            try:
                done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
                code, how = done.returncode, None
            except subprocess.TimeoutExpired:
                code, how, done = None, f"timed out (the run passed {timeout_s:g} s)", None
            events = _events(log)
            running = None
            for event in events:
                if event["test"] in results:
                    continue
                if event["event"] == "start":
                    running = event
                else:
                    results[event["test"]] = {"task": event["task"], "outcome": event["outcome"],
                                              "message": event["message"]}
                    running = None
            if code in (0, 1, 5) and running is None:
                break                                    # a normal end: every collected test has an outcome
            if running is None:
                tail = (done.stdout + done.stderr)[-1500:] if done is not None else ""
                notes.append(f"the test run ended with exit code {code} before any test started:\n{tail}")
                break
            if how is None:
                how = f"crashed (the process ended with exit code {code})"
            results[running["test"]] = {"task": running["task"], "outcome": "failed", "message": how}
            notes.append(f"{running['test']}: {how} after {time.perf_counter() - started:.0f} s; the rest rerun")
    return results, notes


def score(folder: str, results: dict[str, dict]) -> dict:
    assignment = ASSIGNMENTS[folder]
    tasks = []
    for task_id, task in assignment.tasks.items():
        tests = {t: r for t, r in results.items() if r["task"] == task_id}
        passed = sum(r["outcome"] == "passed" for r in tests.values())
        earned = task.points * passed / len(tests) if tests else 0.0
        tasks.append({"task": task_id, "title": task.title, "points": task.points, "earned": round(earned, 2),
                      "passed": passed, "tests": len(tests),
                      "failures": {t: r["message"] for t, r in tests.items() if r["outcome"] != "passed"}})
    unmarked = sorted(t for t, r in results.items() if r["task"] not in assignment.tasks)
    total = sum(t["earned"] for t in tasks)
    maximum = sum(t["points"] for t in tasks)
    return {"assignment": folder, "title": assignment.title, "tasks": tasks, "earned": round(total, 2),
            "points": maximum, "unmarked_tests": unmarked}


def grade(folder: str, solution: str | None = None, timeout_s: float | None = None) -> dict:
    results, notes = run_tests(folder, solution, timeout_s)
    report = score(folder, results)
    report["solution"] = os.path.abspath(solution) if solution else "minimoe (the reference)"
    report["notes"] = notes
    return report


def print_table(report: dict) -> None:
    print(f"{report['assignment']}: {report['title']}  --  solution: {report['solution']}")
    print(f"  {'task':<5} {'title':<62} {'tests':>7} {'points':>11}")
    for t in report["tasks"]:
        print(f"  {t['task']:<5} {t['title'][:62]:<62} {t['passed']:>3}/{t['tests']:<3} "
              f"{t['earned']:>5.1f} / {t['points']:<3}")
        for test, message in t["failures"].items():
            print(f"        x {test.split('::')[-1]}: {message[:110]}")
    print(f"  {'total':<5} {'':<62} {'':>7} {report['earned']:>5.1f} / {report['points']}")
    for note in report["notes"]:
        print(f"  note: {note}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("assignment", help="e.g. a1_norm_rope, assignments/a1_norm_rope or 1")
    parser.add_argument("--solution", help="a directory with the student's files (default: minimoe itself)")
    parser.add_argument("--json", help="also write the report as JSON to this file")
    parser.add_argument("--gradescope", help="also write Gradescope's results.json format to this file")
    parser.add_argument("--timeout", type=float, default=None, help="seconds for the whole run (default: per "
                                                                    "assignment, 300-600)")
    args = parser.parse_args(argv)
    assignment = find(args.assignment)
    if args.solution and not os.path.isdir(args.solution):
        raise SystemExit(f"--solution {args.solution}: not a directory (expected one holding "
                         f"{assignment.student_file})")
    report = grade(assignment.folder, args.solution, args.timeout)
    print_table(report)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
    if args.gradescope:
        with open(args.gradescope, "w", encoding="utf-8") as f:
            json.dump(gradescope(report), f, indent=1)
    return 0


def gradescope(report: dict) -> dict:
    """The report in the results.json layout Gradescope's autograder reads: one entry per task."""
    return {"score": report["earned"], "tests": [
        {"name": f"{t['task']} {t['title']}", "score": t["earned"], "max_score": t["points"],
         "output": "\n".join(f"{test}: {message}" for test, message in t["failures"].items())}
        for t in report["tasks"]]}


if __name__ == "__main__":
    sys.exit(main())
