"""The library's modules import each other without cycles (at import time and inside functions)."""

from __future__ import annotations

import ast
from pathlib import Path

import imagegpt

ROOT = Path(imagegpt.__file__).parent


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in ROOT.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("imagegpt."):
                deps.add(node.module.split(".")[1])
        graph[path.stem] = deps - {path.stem}
    return graph


def test_no_import_cycles():
    graph, cycles = _graph(), []

    def visit(module, stack):
        if module in stack:
            cycles.append(stack[stack.index(module):] + [module])
            return
        for dep in graph.get(module, ()):
            visit(dep, stack + [module])

    for module in ("checkpoint", "model", "config", "heads", "generation", "hooks", "processor", "auto"):
        visit(module, [])
    assert not cycles, cycles
