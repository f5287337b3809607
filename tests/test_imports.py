"""The library's modules import each other without cycles (at import time and inside functions), counting
``import imagegpt`` and ``from imagegpt import name`` (the package's ``__init__``, or the module ``name``)."""

from __future__ import annotations

import ast
from pathlib import Path

import imagegpt

ROOT = Path(imagegpt.__file__).parent


def _deps(path: Path) -> set[str]:
    deps = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("imagegpt."):
            deps.add(node.module.split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.module == "imagegpt":
            deps.update(a.name if (ROOT / f"{a.name}.py").is_file() else "__init__" for a in node.names)
        elif isinstance(node, ast.Import):
            deps.update("__init__" if a.name == "imagegpt" else a.name.split(".")[1] for a in node.names
                        if a.name == "imagegpt" or a.name.startswith("imagegpt."))  # fmt: skip
    return deps - {path.stem}


def _graph() -> dict[str, set[str]]:
    return {path.stem: _deps(path) for path in ROOT.glob("*.py")}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, done = [], set()

    def visit(module, stack):
        if module in stack:
            cycles.append(stack[stack.index(module):] + [module])
            return
        if module in done:
            return
        for dep in sorted(graph.get(module, ())):
            visit(dep, stack + [module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    return cycles


def test_no_import_cycles():
    graph = _graph()
    assert {"checkpoint", "model", "config", "heads", "auto", "__init__"} <= set(graph)
    assert not _cycles(graph), _cycles(graph)
    assert "model" not in graph["checkpoint"] and "checkpoint" not in graph["config"]  # issue 14's cycle


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []
    assert "__init__" in _deps(ROOT / "cli.py")  # `from imagegpt import ...` counts
