"""The house's layering, read from the source: the report renders only, the library never imports its edges."""

from __future__ import annotations

import ast
from pathlib import Path

import precedents

ROOT = Path(precedents.__file__).parent
#: the edges: the command line, the demos, and the computing half of their reports
EDGES = ("precedents.cli", "precedents.demos", "precedents.pipeline")


def _imports(path: Path) -> set[str]:
    """Absolute names of the precedents modules a file imports (top level or inside functions)."""
    package = ".".join(path.relative_to(ROOT.parent).parent.parts)     # what a relative import starts from
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found |= {name} | {f"{name}.{a.name}" for a in node.names}
    return {n for n in found if n.startswith("precedents")}


def _files(*parts: str) -> list[Path]:
    return sorted((ROOT.joinpath(*parts)).rglob("*.py")) if parts else sorted(ROOT.rglob("*.py"))


def test_report_reads_results_only():
    """report/ imports nothing but itself and the result type: no estimator, evaluation or feature code."""
    for path in _files("report"):
        outside = {n for n in _imports(path) if not n.startswith(("precedents.report", "precedents.attribution"))}
        assert not outside, f"{path.name} imports {outside}"


def test_library_core_never_imports_the_edges():
    for path in _files():
        rel = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
        if rel.startswith(EDGES):
            continue
        edges = {n for n in _imports(path) if n.startswith(EDGES)}
        assert not edges, f"{rel} imports {edges}"


def test_only_the_demo_command_names_the_demos():
    """The demos are reached from the command line only through ``precedents demo`` (by name, lazily)."""
    for path in _files("cli"):
        assert not {n for n in _imports(path) if n.startswith("precedents.demos")}, path.name
    assert "precedents.demos." in (ROOT / "cli" / "demo.py").read_text(encoding="utf-8")
