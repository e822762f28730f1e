"""The rooms of docs/architecture.md hold: each layer is a folder of bnpipe/, imports flow one way,
and there are no circles."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bnpipe"

# Lowest first: a module imports only modules of its own folder or of a folder listed before it.
ORDER = ["base", "core", "mlflow_edge", "reporting", "operations"]
HEAVY_FOR_CORE = ("airflow", "mlflow")


def _modules() -> dict[str, Path]:
    """``layer.module`` -> path, for every module of the package."""
    return {
        f"{p.parent.name}.{p.stem}": p
        for p in PACKAGE.glob("*/*.py")
        if p.stem != "__init__" and p.parent.name != "__pycache__"
    }


def _layer(qualified: str) -> int:
    return ORDER.index(qualified.split(".")[0])


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(bnpipe modules as ``layer.module``, top-level third-party packages) that ``path`` imports
    anywhere, functions included."""
    ours, theirs = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            if parts[0] != "bnpipe":
                theirs.add(parts[0])
            elif len(parts) == 1:
                ours |= {f"{a.name}.*" for a in node.names}  # a whole layer: refused below
            elif len(parts) == 2:
                ours |= {f"{parts[1]}.{a.name}" for a in node.names}
            else:
                ours.add(f"{parts[1]}.{parts[2]}")
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] != "bnpipe":
                    theirs.add(parts[0])
                else:
                    ours.add(".".join(parts[1:3]) if len(parts) > 2 else f"{parts[-1]}.*")
    return ours, theirs


def _graph() -> dict[str, set[str]]:
    return {name: _imports(path)[0] - {name} for name, path in _modules().items()}


def test_the_package_is_the_five_rooms_and_nothing_else():
    top = sorted(p.name for p in PACKAGE.iterdir() if p.name not in {"__pycache__", "__init__.py"})
    assert top == sorted(ORDER), f"bnpipe/ holds {top}; docs/architecture.md names {ORDER}"
    assert (PACKAGE / "__init__.py").read_text().strip().startswith('"""'), "the package docstring maps the rooms"


def test_every_import_names_an_existing_module():
    modules = set(_modules())
    unknown = {f"{m} -> {d}" for m, deps in _graph().items() for d in deps if d not in modules}
    assert unknown == set(), f"imports of whole layers or of modules that do not exist: {sorted(unknown)}"


def test_imports_flow_downwards_only():
    upward = [
        f"{m} imports {d}"
        for m, deps in _graph().items()
        for d in deps
        if d.split(".")[0] in ORDER and _layer(d) > _layer(m)
    ]
    assert upward == []


def test_no_import_circles():
    graph = _graph()

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for d in graph.get(todo.pop(), ()):
                if d not in seen:
                    seen.add(d)
                    todo.append(d)
        return seen

    circles = sorted(m for m in graph if m in reach(m))
    assert circles == [], f"modules that reach themselves through imports: {circles}"


def test_the_core_knows_neither_airflow_nor_mlflow():
    for name, path in _modules().items():
        if name.split(".")[0] in {"base", "core"}:
            _, theirs = _imports(path)
            assert not theirs & set(HEAVY_FOR_CORE), f"{name} imports {sorted(theirs & set(HEAVY_FOR_CORE))}"


def test_dags_and_plugins_import_no_heavy_library_at_module_level():
    for path in [*ROOT.glob("dags/*.py"), *ROOT.glob("plugins/*.py")]:
        top = ast.parse(path.read_text()).body
        names = set()
        for node in top:
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module.split(".")[0])
        assert not names & {"tensorflow", "keras", "mlflow", "pandas"}, f"{path.name}: {names}"


def test_the_layer_imports_in_the_test_catch_an_upward_import(tmp_path):
    """The checker itself: a core module importing the reporting layer is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("from bnpipe.reporting import report\nimport bnpipe.operations.cli\n")
    ours, _ = _imports(bad)
    assert ours == {"reporting.report", "operations.cli"}
    assert all(_layer(d) > _layer("core.bad") for d in ours)
