"""The documentation site builds with `mkdocs build --strict`: no broken links, nav entries or API references.

Needs the docs extra (mkdocs-material, mkdocstrings[python]); without it the build test skips with the reason.
The figure checks run everywhere.
"""

import glob
import importlib.util
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
MAX_FIGURE_BYTES = 100_000


def _missing_docs_packages() -> list[str]:
    modules = {"mkdocs": "mkdocs", "material": "mkdocs-material", "mkdocstrings": "mkdocstrings[python]",
               "mkdocstrings_handlers.python": "mkdocstrings[python]", "pymdownx": "pymdown-extensions"}
    missing = []
    for module, package in modules.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a missing parent package
            found = False
        if not found and package not in missing:
            missing.append(package)
    return missing


def test_mkdocs_build_strict(tmp_path):
    missing = _missing_docs_packages()
    if missing:
        pytest.skip(f"docs packages not installed ({', '.join(missing)}); pip install -e '.[docs]'")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")  # mkdocs-material's end-of-life banner, not a problem
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    assert os.path.isfile(tmp_path / "site" / "index.html")


def test_every_page_is_in_the_nav():
    with open(os.path.join(ROOT, "mkdocs.yml"), encoding="utf-8") as f:
        nav_text = f.read().split("\nnav:", 1)[1]
    pages = sorted(os.path.relpath(p, DOCS) for p in glob.glob(os.path.join(DOCS, "**", "*.md"), recursive=True))
    absent = [page for page in pages if page not in nav_text]
    assert not absent, f"pages missing from mkdocs.yml's nav: {absent}"


def test_figures_are_small_and_referenced():
    figures = sorted(glob.glob(os.path.join(DOCS, "figures", "*")))
    assert figures, "docs/figures/ is empty: run python scripts/make_figures.py"
    text = ""
    for page in glob.glob(os.path.join(DOCS, "**", "*.md"), recursive=True):
        with open(page, encoding="utf-8") as f:
            text += f.read()
    for figure in figures:
        size = os.path.getsize(figure)
        assert size <= MAX_FIGURE_BYTES, f"{figure} is {size} bytes; keep figures under {MAX_FIGURE_BYTES}"
        name = os.path.basename(figure)
        assert re.search(r"figures/" + re.escape(name), text), f"{name} is not used by any page"
