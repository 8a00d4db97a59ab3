"""The one way every benchmark writes its results: a JSON file under benchmarks/results/ (folders created)."""

from __future__ import annotations

import json
import os


def write_json(path: str, data: dict, indent: int = 1) -> None:
    """Write `data` to `path` as JSON, creating the folder, and say where it went."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=indent)
    print(f"wrote {path}")
