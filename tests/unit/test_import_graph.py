"""The top-level packages import each other without a cycle, the modules of each package too,
and the job stays below the CLI and the dev stack.

Every ``import`` and ``from ... import`` of every ``.py`` file counts, wherever it stands
(inside functions and ``TYPE_CHECKING`` blocks too): a function-level import is a cycle all
the same, only a later one.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The packages of the project, lowest first: each may import only those before it (the
# benchmarks reuse the tests' harnesses).
LAYERS = ("schemas", "online_models", "freshrec_common", "flink_jobs", "devstack", "freshrec",
          "tests", "bench")
PACKAGES = frozenset(LAYERS)


def imported_packages(source: str) -> Iterator[str]:
    """The top-level packages a module's source imports (absolute imports only: the project
    uses no relative ones).

    >>> sorted(set(imported_packages("import a.b\\ndef f():\\n    from c.d import e")))
    ['a', 'c']
    """
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module.split(".")[0]


def import_graph() -> dict[str, dict[str, list[str]]]:
    """package -> imported package -> the files (relative to the repository) importing it."""
    graph: dict[str, dict[str, list[str]]] = {p: {} for p in PACKAGES}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            for target in set(imported_packages(path.read_text("utf-8"))):
                if target in PACKAGES and target != package:
                    graph[package].setdefault(target, []).append(rel)
    return graph


def module_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (``a.b`` for ``a/b.py``; a ``from a import
    b`` of a module ``a.b`` counts as importing it; a package's ``__init__`` is left out:
    it only re-exports, lazily)."""
    paths = {".".join(path.relative_to(ROOT).with_suffix("").parts): path
             for package in PACKAGES for path in (ROOT / package).rglob("*.py")
             if path.name != "__init__.py"}
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets.add(node.module)
                targets.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[module] = (targets & paths.keys()) - {module}
    return graph


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of a directed graph as a path ``[a, b, ..., a]``, or None.

    >>> find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    True
    >>> find_cycle({"a": {"b"}, "b": {"a"}})
    ['a', 'b', 'a']
    """
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node):], node]
        if node in done:
            return None
        for nxt in sorted(edges.get(node, ())):
            found = visit(nxt, [*path, node])
            if found:
                return found
        done.add(node)
        return None

    for start in sorted(edges):
        found = visit(start, [])
        if found:
            return found
    return None


def test_every_package_is_scanned() -> None:
    for package in PACKAGES:
        assert (ROOT / package / "__init__.py").is_file(), package
    top = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert top == PACKAGES, "a new top-level package needs its place in LAYERS"


def test_no_import_cycle_between_top_level_packages() -> None:
    graph = import_graph()
    cycle = find_cycle({p: set(targets) for p, targets in graph.items()})
    assert cycle is None, "import cycle: " + " -> ".join(
        f"{a} ({graph[a][b][0]})" for a, b in pairwise(cycle)) + f" -> {cycle[-1]}"


def test_no_import_cycle_between_modules() -> None:
    # A cycle hidden in a function-level import still ties the modules together: each can
    # only be understood, moved or tested with the other.
    cycle = find_cycle(module_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_each_package_imports_only_lower_layers() -> None:
    graph = import_graph()
    upward = [f"{package} imports {target} ({', '.join(files)})"
              for package, targets in graph.items() for target, files in targets.items()
              if LAYERS.index(target) > LAYERS.index(package)]
    assert upward == []


def test_the_job_imports_neither_the_cli_nor_the_dev_stack() -> None:
    graph = import_graph()
    assert set(graph["flink_jobs"]) <= {"freshrec_common", "online_models", "schemas"}
    assert set(graph["freshrec_common"]) <= {"online_models", "schemas"}


def test_no_module_imports_a_test_module() -> None:
    # Shared test helpers live in modules of their own (fixtures, harnesses), so running one
    # test file never collects another's tests and a helper has one home.
    offenders = []
    for path in sorted(ROOT.glob("*/**/*.py")):
        if ".venv" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if (isinstance(node, ast.ImportFrom) and node.module
                    and node.module.split(".")[-1].startswith("test_")):
                offenders.append(f"{path.relative_to(ROOT)} imports {node.module}")
    assert offenders == []
