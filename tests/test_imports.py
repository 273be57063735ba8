"""qbench (the folder worker/) has no import cycles, at import time or at run time.

A cycle at import time makes import order matter (a half-initialised module raises ImportError
or AttributeError depending on which side a caller imports first). A cycle through imports
placed inside functions runs later, yet it still ties the two modules into one: neither can be
understood, tested or moved without the other. Both count; only `if TYPE_CHECKING:` imports
(never run) are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "worker"


def module_name(path: Path) -> str:
    """The import name of a file of worker/ (the package is installed as `qbench`)."""
    parts = ["qbench", *path.relative_to(PACKAGE).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _top_level_imports(body: list[ast.stmt]):
    """Import statements run at import time: module body, try/if/with blocks, not functions,
    classes' methods or `if TYPE_CHECKING:`."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _top_level_imports(node.body)
            yield from _top_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody,
                          *(h.body for h in node.handlers)):
                yield from _top_level_imports(block)
        elif isinstance(node, (ast.With, ast.ClassDef)):
            yield from _top_level_imports(node.body)


def _run_time_imports(body: list[ast.stmt]):
    """Every import statement that can run: module level and inside functions and methods;
    not `if TYPE_CHECKING:`."""
    for node in body:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _run_time_imports(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        for field in ("body", "orelse", "finalbody", "handlers"):
            block = getattr(node, field, None)
            if isinstance(block, list):
                yield from _run_time_imports(block)


def imports_of(path: Path, known: set[str], run_time: bool = False) -> set[str]:
    """worker modules `path` imports at module level (a package's __init__ included); with
    run_time, also those imported inside its functions."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    walk = _run_time_imports if run_time else _top_level_imports
    for node in walk(tree.body):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import mod` imports the submodule; `from mod import name` the module.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        for target in targets:
            if run_time:
                # The module itself; the package __init__s an import runs on the way are left
                # out (their re-exports would tie every submodule of a package to all the rest).
                if target in known and target != name:
                    found.add(target)
                continue
            # Importing a.b.c runs a/__init__ and a/b/__init__ first, except packages that
            # hold the importer: those are already being initialised when it runs.
            pieces = target.split(".")
            for i in range(1, len(pieces) + 1):
                candidate = ".".join(pieces[:i])
                enclosing = name.startswith(candidate + ".") and candidate != target
                if candidate in known and candidate != name and not enclosing:
                    found.add(candidate)
    return found


def import_graph(run_time: bool = False) -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, known, run_time) for p in paths}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_sees_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_graph_sees_module_level_imports_only():
    graph = import_graph()
    assert "qbench.service.app" in graph["qbench.service.submit"]
    # `from qbench.models.base import X` also runs worker/models/__init__.py.
    assert {"qbench.models", "qbench.models.base"} <= graph["qbench.quantize.torch_result"]
    # registry imports LoadedModel under TYPE_CHECKING and ModelError inside a function.
    assert "qbench.models.base" not in graph["qbench.quantize.registry"]


def test_no_import_cycles_in_worker():
    found = cycles(import_graph())
    assert not found, "import cycles in worker/: " + "; ".join(" <-> ".join(c) for c in found)


def test_graph_at_run_time_sees_imports_inside_functions():
    graph = import_graph(run_time=True)
    # pipeline imports the evaluation entry point inside run_unit.
    assert "qbench.evaluate.run" in graph["qbench.pipeline"]
    assert "qbench.evaluate.run" not in import_graph()["qbench.pipeline"]
    # TYPE_CHECKING imports never run.
    assert "qbench.models.base" not in graph["qbench.quantize.registry"]


def test_no_import_cycles_at_run_time():
    found = cycles(import_graph(run_time=True))
    assert not found, ("import cycles in worker/ through imports inside functions: "
                       + "; ".join(" <-> ".join(c) for c in found))


def _all_imports(path: Path) -> set[str]:
    """Every module named by an import anywhere in the file, function bodies included."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_submit_sends_tasks_by_name():
    # nightly -> submit -> tasks -> nightly was a cycle at run time, through a function-level
    # import in tasks.py; submit reaches the tasks through the app by their names instead.
    assert "qbench.service.tasks" not in _all_imports(PACKAGE / "service" / "submit.py")
