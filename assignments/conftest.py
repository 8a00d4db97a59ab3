"""pytest plumbing for the assignments: the `task` marker, a time limit per test, and the grader's results file.

$MINIMOE_GRADE_RESULTS (set by assignments/grade.py): every test's start and outcome are appended to this file as
JSON lines as they happen, so a crash of the whole process (a segfault in a student's C++) still leaves the
record of everything before it, and the grader knows which test was running.
$MINIMOE_TEST_TIMEOUT (seconds, default 120): a test running longer fails with a TimeoutError (SIGALRM; a C++
loop that never returns to Python is stopped by the grader's own timeout instead).
$MINIMOE_GRADE_SKIP: test ids (comma-separated) the grader already has an outcome for: deselected.
"""

import json
import os
import signal
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def pytest_configure(config):
    config.addinivalue_line("markers", "task(id): the assignment task (e.g. '2.1') this test grades")


def pytest_collection_modifyitems(config, items):
    skip = set(filter(None, os.environ.get("MINIMOE_GRADE_SKIP", "").split(",")))
    if skip:
        kept = [item for item in items if item.nodeid not in skip]
        config.hook.pytest_deselected(items=[item for item in items if item.nodeid in skip])
        items[:] = kept


def _record(event: dict) -> None:
    path = os.environ.get("MINIMOE_GRADE_RESULTS")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")


def _task_of(item) -> str | None:
    marker = item.get_closest_marker("task")
    return marker.args[0] if marker else None


def _on_alarm(signum, frame):
    raise TimeoutError(f"the test ran longer than {os.environ.get('MINIMOE_TEST_TIMEOUT', '120')} s")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _record({"event": "start", "test": item.nodeid, "task": _task_of(item)})
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    limit = int(float(os.environ.get("MINIMOE_TEST_TIMEOUT", "120")))
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(limit)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" or (report.when == "setup" and not report.passed):
        message = ""
        if not report.passed and call.excinfo is not None:
            message = f"{call.excinfo.typename}: {str(call.excinfo.value).strip().splitlines()[0][:300]}" \
                if str(call.excinfo.value).strip() else call.excinfo.typename
        _record({"event": "result", "test": item.nodeid, "task": _task_of(item),
                 "outcome": "passed" if report.passed else ("skipped" if report.skipped else "failed"),
                 "message": message})
