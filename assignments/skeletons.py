"""Generate each assignment's student files from minimoe's own source, so they can never drift from it.

    python -m assignments.skeletons            # (re)write assignments/*/skeleton/
    python -m assignments.skeletons --check    # exit 1 if a committed skeleton differs from what minimoe gives

For each piece of an assignment (assignments/catalog.py) the source is copied as it is, and each region between
`# [task N.M]` and `# [/task N.M]` is replaced by `raise NotImplementedError(...)` (C++: a TORCH_CHECK that
fails); the markers stay, to show where to write. The imports the copied code needs are written at the top:
the source file's own import lines for modules (torch, nn, F ...), and `from minimoe.X import name` for
anything else it uses that the student file does not define.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import os
import re
import sys

from assignments.catalog import ASSIGNMENTS, Assignment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_BEGIN = re.compile(r"^(\s*)(#|//) \[task (\d+\.\d+)\]\s*$")
_END = re.compile(r"^\s*(#|//) \[/task (\d+\.\d+)\]\s*$")


def _stub_regions(lines: list[str], assignment: Assignment, cpp: bool) -> list[str]:
    out, inside = [], None
    for line in lines:
        begin, end = _BEGIN.match(line), _END.match(line)
        if begin:
            indent, _, task = begin.groups()
            title = assignment.tasks[task].title
            out.append(line)
            if cpp:
                out.append(f'{indent}TORCH_CHECK(false, "NotImplementedError: task {task} ({title}) is not written yet");')
            else:
                out.append(f'{indent}raise NotImplementedError("task {task}: {title}")')
            inside = task
        elif end:
            inside = None
            out.append(line)
        elif inside is None:
            out.append(line)
    return out


def _module_name(path: str) -> str:
    return path[:-3].replace("/", ".")


def _find(tree: ast.Module, qualname: str):
    node, parents = tree, []
    for part in qualname.split("."):
        parents.append(node)
        node = next((n for n in node.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == part),
                    None)
        if node is None:
            raise ValueError(f"no {qualname!r} in the source")
    return node, parents[-1]


def _segment(lines: list[str], node) -> list[str]:
    start = min([node.lineno] + [d.lineno for d in node.decorator_list])
    return lines[start - 1:node.end_lineno]


def _bindings(tree: ast.Module, lines: list[str]) -> dict[str, str]:
    """name -> the import line of the source file that binds it."""
    bound = {}
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)) and not (
                isinstance(node, ast.ImportFrom) and node.module == "__future__"):
            text = " ".join(line.strip() for line in lines[node.lineno - 1:node.end_lineno])
            for alias in node.names:
                bound[(alias.asname or alias.name).split(".")[0]] = text
    return bound


def render(assignment: Assignment, stub: bool = True) -> dict[str, str]:
    """{file name: text} of the assignment's student files: the skeleton (stub=True) or the full solution."""
    sources: dict[str, tuple[ast.Module, list[str]]] = {}
    blocks, defined = [], set()
    for path, qualname in assignment.pieces:
        if path not in sources:
            with open(os.path.join(ROOT, path), encoding="utf-8") as f:
                text = f.read()
            sources[path] = (ast.parse(text), text.split("\n"))
        tree, lines = sources[path]
        node, parent = _find(tree, qualname)
        body = _segment(lines, node)
        if parent is not tree:   # a method: written inside a shell of its class
            body = [f"class {parent.name}:",
                    f"    \"\"\"Only what this assignment needs of {_module_name(path)}.{parent.name}.\"\"\"",
                    ""] + body
            defined.add(parent.name)
        else:
            defined.add(node.name)
        blocks.append((path, qualname, body))
    code = "\n\n\n".join("\n".join(body) for _, _, body in blocks)
    used = {n.id for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Name)}
    needed = sorted(used - defined - set(dir(builtins)) - {"self", "cls"})
    module_imports, from_minimoe = [], {}
    for name in needed:
        for path, (tree, lines) in sources.items():
            bound = _bindings(tree, lines)
            if name in bound:
                line = bound[name]
                if line.startswith("from minimoe") or line.startswith("from ."):
                    module = line.split()[1]
                    from_minimoe.setdefault(module, []).append(name)
                elif line not in module_imports:
                    module_imports.append(line)
                break
            if any(isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.Assign, ast.AnnAssign)) and name in
                   _top_names(n) for n in tree.body):
                from_minimoe.setdefault(_module_name(path), []).append(name)
                break
    a = assignment
    header = [f'"""Assignment {a.folder[1]}: {a.title}. Your file: fill in every region between the task markers.',
              "",
              "Generated by `python -m assignments.skeletons` from minimoe's own source (" +
              ", ".join(sorted({p for p, _ in a.pieces})) + ").",
              "Keep every name and signature: the tests reach your code through assignments/"
              f"{a.folder}/adapters.py.",
              "Tasks: " + "; ".join(f"{t} {task.title} ({task.points} points)" for t, task in a.tasks.items()) + ".",
              '"""' if stub else "(This copy is the reference solution, in the skeleton's layout.)\n\"\"\"",
              "", "from __future__ import annotations", ""]
    header += sorted(module_imports, key=lambda s: (s.startswith("from"), s))
    header += [f"from {module} import {', '.join(sorted(names))}" for module, names in sorted(from_minimoe.items())]
    text = "\n".join(header) + "\n\n\n" + "\n\n\n".join(
        "\n".join(_stub_regions(body, a, cpp=False) if stub else body) for _, _, body in blocks) + "\n"
    files = {a.student_file: text}
    if a.cpp:
        with open(os.path.join(ROOT, a.cpp), encoding="utf-8") as f:
            cpp_lines = f.read().rstrip("\n").split("\n")
        files["int4_gemv.cpp"] = "\n".join(_stub_regions(cpp_lines, a, cpp=True) if stub else cpp_lines) + "\n"
    return files


def _top_names(node) -> set[str]:
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
        return {node.name}
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
    return {t.id for t in targets if isinstance(t, ast.Name)}


def write(directory: str, files: dict[str, str]) -> None:
    os.makedirs(directory, exist_ok=True)
    for name, text in files.items():
        with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
            f.write(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 on any difference")
    args = parser.parse_args(argv)
    stale = []
    for folder, assignment in ASSIGNMENTS.items():
        directory = os.path.join(ROOT, "assignments", folder, "skeleton")
        for name, text in render(assignment).items():
            path = os.path.join(directory, name)
            current = open(path, encoding="utf-8").read() if os.path.exists(path) else None
            if current != text:
                stale.append(os.path.relpath(path, ROOT))
        if not args.check:
            write(directory, render(assignment))
    if args.check:
        if stale:
            print("out of date (run `python -m assignments.skeletons`): " + ", ".join(stale))
            return 1
        print("every skeleton is what minimoe's source gives")
        return 0
    print(f"wrote {len(ASSIGNMENTS)} skeletons" + (f" ({len(stale)} files changed)" if stale else " (no change)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
