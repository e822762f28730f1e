"""The layers of docs/architecture.md hold: imports flow one way, and there are no circles."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bnpipe"

# Lower layers never import higher ones (docs/architecture.md says what each room holds).
LAYERS = {
    "base": {"settings", "procs", "render"},
    "core": {"variants", "data", "model", "instrument", "train", "claims"},
    "mlflow edge": {"tracking", "champion", "serving", "logged_training", "compare", "score"},
    "reporting": {"report", "plots", "progress"},
    "operations": {"params", "cli", "warm", "stack", "inbox", "suite"},
}
ORDER = list(LAYERS)
HEAVY_FOR_CORE = ("airflow", "mlflow")


def _layer(module: str) -> int:
    return next(i for i, name in enumerate(ORDER) if module in LAYERS[name])


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(bnpipe modules, top-level third-party packages) that ``path`` imports anywhere, functions included."""
    ours, theirs = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "bnpipe":
                ours |= {a.name for a in node.names}
            elif node.module.startswith("bnpipe."):
                ours.add(node.module.split(".")[1])
            else:
                theirs.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("bnpipe."):
                    ours.add(a.name.split(".")[1])
                else:
                    theirs.add(a.name.split(".")[0])
    return ours, theirs


def _graph() -> dict[str, set[str]]:
    return {p.stem: _imports(p)[0] - {p.stem} for p in PACKAGE.glob("*.py") if p.stem != "__init__"}


def test_every_module_has_a_layer():
    modules = set(_graph())
    placed = set().union(*LAYERS.values())
    assert modules == placed, f"unplaced: {sorted(modules - placed)}; gone: {sorted(placed - modules)}"


def test_imports_flow_downwards_only():
    upward = [
        f"{m} ({ORDER[_layer(m)]}) imports {d} ({ORDER[_layer(d)]})"
        for m, deps in _graph().items()
        for d in deps
        if _layer(d) > _layer(m)
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
    for module in LAYERS["base"] | LAYERS["core"]:
        _, theirs = _imports(PACKAGE / f"{module}.py")
        assert not theirs & set(HEAVY_FOR_CORE), f"{module} imports {sorted(theirs & set(HEAVY_FOR_CORE))}"


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
