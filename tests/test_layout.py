"""The package's layout is its architecture: these tests read every module's imports (annotations
and function-level imports included) and hold the rules docs/architecture.md states."""
from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "t2p"

# what each concern may import from t2p (beyond itself): the arrows of docs/architecture.md
ALLOWED = {
    "config": set(),
    "notation": set(),
    "pose": {"config"},
    "cluster": set(),
    "model": {"config", "notation", "pose"},
    "data": {"config", "notation", "pose", "cluster"},
    "generation": {"config", "notation", "pose", "model"},
    "evaluation": {"config", "notation", "pose", "model", "data", "generation"},
    "serving": {"config", "notation", "pose", "model", "generation"},
    "training": {"config", "notation", "pose", "model", "data", "generation", "evaluation", "cluster"},
    "cli": {"config", "notation", "pose", "cluster", "model", "data", "generation", "evaluation", "serving",
            "training"},
}
# the modules that may import pose-format itself (the rest take its `Pose` type from t2p.pose)
POSE_FORMAT_USERS = {"t2p.pose", "t2p.evaluation.render"}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _imports(path: Path, module: str) -> list[tuple[str, list[str], int]]:
    """(imported module, names, line) for every import in the file, wherever it is (top level,
    functions, `if TYPE_CHECKING:` blocks)."""
    found = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.append((base, [alias.name for alias in node.names], node.lineno))
    return found


def _concern(module: str) -> str:
    return module.split(".")[1] if module.count(".") >= 1 else module


MODULES = _modules()


def _graph() -> dict[str, set[str]]:
    graph = {}
    for module, path in MODULES.items():
        edges = set()
        for imported, names, _ in _imports(path, module):
            if imported == "t2p":  # `from t2p import x`: the submodule x
                edges |= {f"t2p.{name}" for name in names if f"t2p.{name}" in MODULES}
            elif imported.startswith("t2p."):
                target = imported if imported in MODULES else imported.rpartition(".")[0]
                edges.add(target)
                edges |= {f"{imported}.{name}" for name in names if f"{imported}.{name}" in MODULES}
        graph[module] = edges - {module}
    return graph


def test_no_module_imports_another_concern_above_it():
    wrong = []
    for module, path in MODULES.items():
        if module == "t2p":
            continue
        concern = _concern(module)
        for imported, _, line in _imports(path, module):
            if imported.startswith("t2p.") and _concern(imported) not in ALLOWED[concern] | {concern}:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {imported}")
    assert not wrong, "\n".join(wrong)


def test_there_is_no_import_cycle_annotations_included():
    graph = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(module: str, trail: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join(trail[trail.index(target):] + [target]) if target in trail else target)
            elif target not in state:
                visit(target, trail + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def test_pose_format_is_imported_by_the_pose_module_and_the_renderer_only():
    users = {module for module, path in MODULES.items()
             if any(imported.split(".")[0] == "pose_format" for imported, _, _ in _imports(path, module))}
    assert users == POSE_FORMAT_USERS


def _canonical_path(value, importer: str) -> str:
    """Where a t2p class or function is imported from: its package when it is part of that package's
    contract (`__all__`) and the importer is outside the package; else the module that defines it."""
    module = value.__module__
    package = module.rpartition(".")[0]
    contract = getattr(importlib.import_module(package), "__all__", ()) if package.count(".") == 1 else ()
    inside = importer == package or importer.startswith(package + ".")
    return package if value.__name__ in contract and not inside else module


def test_every_name_has_one_import_path():
    """A class or function of t2p is imported from one place everywhere (package and tests): its
    package's contract from outside the package, else the module that defines it; never through
    another module that merely imports it (no re-exports)."""
    wrong = []
    sources = {**MODULES, **{f"tests.{p.stem}": p for p in (ROOT / "tests").glob("*.py")}}
    for module, path in sources.items():
        for imported, names, line in _imports(path, module):
            if not imported.startswith("t2p"):
                continue
            owner = importlib.import_module(imported)
            for name in names:
                value = getattr(owner, name, None)
                if (inspect.isclass(value) or inspect.isfunction(value)) and value.__module__.startswith("t2p"):
                    canonical = _canonical_path(value, module)
                    if imported != canonical:
                        wrong.append(f"{path.relative_to(ROOT)}:{line}: {name} from {imported}, not {canonical}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("package", sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()))
def test_each_subpackage_says_what_it_owns(package):
    docstring = ast.get_docstring(ast.parse((PACKAGE / package / "__init__.py").read_text()))
    summary = docstring.split("\n\n")[0] if docstring else ""
    assert summary and len(summary.splitlines()) <= 3, package
