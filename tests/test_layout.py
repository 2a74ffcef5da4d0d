"""The package reads as the pipeline: no import circles, the product never imports `bench`,
few modules sit directly in `curation/`, and pages use only the library's public names.

Imports are read from the source (lazy imports inside functions count too), so a circle
hidden behind a function-level import still fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "curation"
MAX_TOP_LEVEL = 12


def module_name(path: Path, base: Path = REPO) -> str:
    name = ".".join(path.relative_to(base).with_suffix("").parts)
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


def imported(path: Path, name: str) -> set[str]:
    """Every dotted name an import statement in ``path`` names (modules and module.attr)."""
    out: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}
    return out


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the project modules (files, not package re-exports) it imports."""
    mods = {module_name(p, root.parent): p for p in root.rglob("*.py") if "migrations" not in p.parts}
    files = {m for m, p in mods.items() if p.name != "__init__.py"}
    return {m: {d for d in imported(p, m) if d in files and d != m} for m, p in mods.items() if m in files}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_circle_finder_finds_a_planted_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert circles(graph) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_lazy_imports_count(tmp_path):
    pkg = tmp_path / "curation"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "x.py").write_text("from curation.y import f\n")
    (pkg / "y.py").write_text("def f():\n    from curation import x\n    return x\n")
    assert circles(import_graph(pkg)) == [["curation.x", "curation.y"]]


def test_no_import_circles():
    assert circles(import_graph()) == []


def test_product_never_imports_bench():
    users = sorted(m for m, deps in import_graph().items()
                   if not m.startswith("curation.bench") and any(d.startswith("curation.bench") for d in deps))
    assert users == []


def test_few_modules_directly_in_the_package():
    top = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert len(top) <= MAX_TOP_LEVEL, top


@pytest.mark.parametrize("sub", sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py")))
def test_every_subpackage_says_what_it_owns(sub):
    doc = ast.get_docstring(ast.parse((PACKAGE / sub / "__init__.py").read_text()))
    assert doc and len(doc) > 40, f"curation/{sub}/__init__.py needs a docstring saying what it owns"


def test_pages_use_only_public_library_names():
    private = []
    for page in [REPO / "app.py", *sorted((REPO / "pages").glob("*.py"))]:
        for node in ast.walk(ast.parse(page.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("curation"):
                parts = node.module.split(".") + [a.name for a in node.names]
                private += [f"{page.name}: {node.module}.{p}" for p in parts if p.startswith("_")]
    assert private == []
