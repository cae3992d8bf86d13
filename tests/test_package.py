"""The package as shipped: typed, and type-correct."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import nbparallel

PACKAGE = Path(nbparallel.__file__).parent


def test_package_ships_py_typed():
    assert (PACKAGE / "py.typed").is_file()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_mypy_finds_no_errors_in_the_package():
    result = subprocess.run(
        [sys.executable, "-m", "mypy", str(PACKAGE)],
        capture_output=True,
        text=True,
        timeout=230,
        cwd=PACKAGE.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _module_imports() -> dict[str, set[str]]:
    """Each module of the package and the package modules it imports when it is imported
    (imports inside functions, and under TYPE_CHECKING, run later or never)."""
    import ast

    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found = graph.setdefault(name, set())
        for node in ast.parse(path.read_text()).body:  # module level only
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
                found.add(target)
                found.update(f"{target}.{alias.name}" for alias in node.names)
    modules = set(graph)
    return {
        name: {t for t in targets if t in modules and t != name} for name, targets in graph.items()
    }


def test_the_package_has_no_import_cycles():
    graph = _module_imports()
    visiting: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> None:
        if module in done:
            return
        assert module not in visiting, f"import cycle: {' -> '.join([*visiting, module])}"
        visiting.append(module)
        for imported in sorted(graph[module]):
            if not (
                module.startswith(imported + ".") and imported in graph
            ):  # a package's own __init__
                visit(imported)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def test_no_module_of_the_package_is_much_over_350_lines():
    sizes = {path.name: len(path.read_text().splitlines()) for path in PACKAGE.rglob("*.py")}
    assert {name: lines for name, lines in sizes.items() if lines > 380} == {}
