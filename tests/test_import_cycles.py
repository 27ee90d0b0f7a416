"""The worker's modules import each other without cycles, lazy imports included (a cycle
works only as long as nobody changes which side imports first)."""

import ast
from pathlib import Path

from harness import REPO

PACKAGE = REPO / "hiscrm"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The hiscrm modules ``path`` imports, at any level of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # "from a.b import c": c may be a module of its own, or a name in a.b
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        found |= {name for name in names if name in modules}
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imports_of(path, set(files)) - {name} for name, path in files.items()}


def cycles_through(graph: dict[str, set[str]], prefix: str) -> list[list[str]]:
    """Import cycles that pass through a module under ``prefix`` (one per module)."""
    found = []
    for start in sorted(m for m in graph if m.startswith(prefix)):
        stack = [(start, [start])]
        seen: set[str] = set()
        while stack:
            node, path = stack.pop()
            for target in sorted(graph[node]):
                if target == start:
                    found.append([*path, start])
                    stack.clear()
                    break
                if target not in seen:
                    seen.add(target)
                    stack.append((target, [*path, target]))
    return found


def test_the_worker_package_has_no_import_cycle() -> None:
    graph = import_graph()
    assert "hiscrm.worker.runtime" in graph["hiscrm.worker.bootstrap"]  # lazy imports count
    assert cycles_through(graph, "hiscrm.worker") == []


def test_a_cycle_would_be_found() -> None:
    graph = {"hiscrm.worker.a": {"hiscrm.b"}, "hiscrm.b": {"hiscrm.worker.a"}}
    assert cycles_through(graph, "hiscrm.worker") == [
        ["hiscrm.worker.a", "hiscrm.b", "hiscrm.worker.a"]
    ]
