"""How the tests find the code they grade, and how a test says which task it belongs to.

- `implementation(folder)`: the module the adapters call. With $MINIMOE_SOLUTION set (the grader's --solution),
  the student's file from that directory, imported on first use, so a syntax error or a missing name fails the
  tests that need it and nothing else; without it, minimoe itself (each name looked up in the minimoe module the
  assignment's piece comes from): the reference solution.
- `@task("2.1")`: the test counts for task 2.1 (points in assignments/catalog.py). Registered by
  assignments/conftest.py together with a per-test time limit and a results file the grader reads.
- `build_cpp(folder)`: the assignment's C++ file, compiled once per content (torch.utils.cpp_extension.load).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import os
import sys

import pytest

from assignments.catalog import ASSIGNMENTS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOLUTION_ENV = "MINIMOE_SOLUTION"


def task(task_id: str):
    """Mark a test as part of task `task_id` (e.g. "1.1")."""
    return pytest.mark.task(task_id)


class _Lazy:
    """Attribute access imports the implementation the first time, and re-raises its import error every time."""

    def __init__(self, folder: str):
        self._folder, self._module, self._error = folder, None, None

    def _load(self):
        if self._module is None and self._error is None:
            try:
                self._module = _load(self._folder)
            except Exception as error:   # a student's syntax error, an import that fails...
                self._error = error
        if self._error is not None:
            raise ImportError(f"could not import the solution for {self._folder}: "
                              f"{type(self._error).__name__}: {self._error}") from self._error
        return self._module

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        module = self._load()
        try:
            return getattr(module, name)
        except AttributeError:
            raise NotImplementedError(f"{name} is missing from the solution of {self._folder}") from None


class _Reference:
    """minimoe itself, in the layout of the student file: each name from the module its piece comes from."""

    def __init__(self, folder: str):
        self.__dict__["_modules"] = {}
        for path, qualname in ASSIGNMENTS[folder].pieces:
            self._modules[qualname.split(".")[0]] = importlib.import_module(path[:-3].replace("/", "."))

    def __getattr__(self, name):
        module = self._modules.get(name)
        if module is None:
            raise AttributeError(f"the reference of this assignment has no {name!r}")
        return getattr(module, name)


def _load(folder: str):
    directory = os.environ[SOLUTION_ENV]
    path = os.path.join(directory, ASSIGNMENTS[folder].student_file)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist")
    name = f"student_{folder}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def implementation(folder: str):
    """The solution under test for assignment `folder`: the student's ($MINIMOE_SOLUTION) or minimoe's."""
    if os.environ.get(SOLUTION_ENV):
        return _Lazy(folder)
    return _Reference(folder)


def student_module(impl):
    """The student's module object behind `impl` (None for the reference, which is minimoe's own modules)."""
    load = getattr(impl, "_load", None)
    return load() if load is not None else None


@contextlib.contextmanager
def swapped(module, **functions):
    """Within the block, `module`'s functions named here are replaced (None: nothing to replace): how an adapter
    grades one task with the reference in place of the student's other tasks."""
    if module is None:
        yield
        return
    saved = {name: getattr(module, name) for name in functions}
    for name, function in functions.items():
        setattr(module, name, function)
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(module, name, function)


def is_reference() -> bool:
    return not os.environ.get(SOLUTION_ENV)


_BUILT: dict[str, object] = {}


def build_cpp(folder: str):
    """Compile the assignment's C++ file (the student's, or minimoe's csrc/dev one) and return torch.ops of it.

    The extension's name carries a hash of the source, so an unchanged file is compiled once (cached under
    $TORCH_EXTENSIONS_DIR) and an edited one never meets a stale build."""
    import torch
    from torch.utils.cpp_extension import load

    assignment = ASSIGNMENTS[folder]
    if is_reference():
        path = os.path.join(ROOT, assignment.cpp)
    else:
        path = os.path.join(os.environ[SOLUTION_ENV], "int4_gemv.cpp")
    if not os.path.exists(path):
        raise NotImplementedError(f"{path} does not exist")
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    if digest not in _BUILT:
        if _BUILT:
            raise RuntimeError("one C++ solution per process: the op name torch.ops.minimoe_a4 is taken")
        load(name=f"minimoe_a4_{digest}", sources=[path], extra_cflags=["-O3"], is_python_module=False,
             verbose=False)
        _BUILT[digest] = torch.ops.minimoe_a4
    return _BUILT[digest]
