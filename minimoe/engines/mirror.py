"""How a fast path proves it still computes what the reference says, or steps aside.

A native module (minimoe/engines/native.py) replaces the Python of some reference functions with a kernel that
computes the same thing. It lists those functions by dotted name (its `mirrors`). Each name has a fingerprint
recorded in minimoe/engines/verified.py when the mirror was last checked against it (the engine test compares
the two paths on random models). The fingerprint is a hash of the function's source with comments, docstring
and formatting removed (`ast.unparse`), so a reworded comment changes nothing and a changed line changes it.

Two moments catch an edit:
- when an engine is applied (`minimoe.engines.use`): a module whose mirrored functions differ from the record
  (you edited model.py and ran again) is not swapped at all; the reference class stays, and a warning says why;
- at every call: the functions are looked up again and compared by identity with the ones verified (cheap); a
  function replaced at run time (a notebook, a monkeypatch) is fingerprinted, and if it differs, the native
  module warns once and runs the reference Python, which is now yours.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import inspect
import textwrap
import warnings


class EngineFallbackWarning(UserWarning):
    """An engine's fast path does not run because the reference it mirrors was changed: your Python runs."""


def fingerprint(function) -> str:
    """A short hash of `function`'s code, blind to comments, docstring and layout; "unknown" without source."""
    try:
        source = textwrap.dedent(inspect.getsource(function))
        node = ast.parse(source).body[0]
    except (OSError, TypeError, SyntaxError, IndexError):
        return "unknown"
    body = getattr(node, "body", None)
    if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
        node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.unparse(node).encode()).hexdigest()[:16]


def _owner_and_attribute(name: str):
    """"minimoe.model.RMSNorm.forward" -> (the class RMSNorm, "forward"); "minimoe.model.apply_rope" -> (module, ..)."""
    parts = name.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            owner = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for part in parts[split:-1]:
            owner = getattr(owner, part)
        return owner, parts[-1]
    raise ValueError(f"cannot resolve {name!r}")


class Mirror:
    """The reference functions one fast path stands in for, and whether they are still the verified ones."""

    def __init__(self, *names: str):
        self.names = names
        self._targets = None     # [(owner, attribute)], resolved on first use (no import cycles at class creation)
        self._verified = None    # the function objects last found equal to the record
        self._warned: set = set()

    def current(self) -> tuple:
        if self._targets is None:
            self._targets = [_owner_and_attribute(name) for name in self.names]
        return tuple(getattr(owner, attribute) for owner, attribute in self._targets)

    def changed(self) -> list[str]:
        """The mirrored functions whose code differs from what was verified (empty: the fast path may run)."""
        from minimoe.engines.verified import VERIFIED

        current = self.current()
        if self._verified is not None and all(a is b for a, b in zip(current, self._verified)):
            return []
        stale = [name for name, function in zip(self.names, current) if fingerprint(function) != VERIFIED.get(name)]
        if not stale:
            self._verified = current
        return stale

    def intact(self, who: str) -> bool:
        """changed() is empty; else warn (once per set of changes) that `who` runs the reference instead."""
        stale = self.changed()
        if stale and tuple(stale) not in self._warned:
            self._warned.add(tuple(stale))
            warnings.warn(explain(who, stale), EngineFallbackWarning, stacklevel=3)
        return not stale


def explain(who: str, stale: list[str]) -> str:
    return (f"minimoe: {who} does not use its fast path: {', '.join(stale)} changed since the fast path was "
            f"verified against it, so your Python runs instead (slower, and exactly what you wrote). To make "
            f"the fast path match again, change its kernel too and record the new fingerprints: "
            f"python -m minimoe.engines fingerprints")
