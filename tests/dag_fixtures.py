"""The DAG folder as the dag-processor sees it (``parsed``, shared by the DAG and scoring tests), and
what a finished DAG run left in Airflow's own records, for tests that assert on events (tries,
task states, who ran at the same time) instead of on wall-clock time.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PARSE = """
import json, os, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
import airflow.plugins_manager as pm
pm.ensure_plugins_loaded() if hasattr(pm, "ensure_plugins_loaded") else None
def task_info(t):
    doc = t.doc_md or t.doc or getattr(getattr(t, "python_callable", None), "__doc__", None)
    mapped = type(t).__name__.endswith("MappedOperator")
    return {"doc": bool(doc), "mapped": mapped, "max_tis": getattr(t, "max_active_tis_per_dagrun", None),
            "max_tis_per_dag": getattr(t, "max_active_tis_per_dag", None),
            "outlets": [f"{type(o).__name__}:{o.name}" for o in t.outlets]}
out = {
    "errors": {k: str(v) for k, v in bag.import_errors.items()},
    "tf_loaded": sorted(m for m in sys.modules if m == "tensorflow" or m.startswith(("tensorflow.", "keras"))),
    "dags": {},
}
for dag_id, dag in bag.dags.items():
    out["dags"][dag_id] = {
        "tags": sorted(dag.tags),
        "catchup": dag.catchup,
        "retries": [t.retries for t in dag.tasks],
        "timeouts": [t.execution_timeout.total_seconds() if t.execution_timeout else None for t in dag.tasks],
        "params": {k: {**dag.params.get_param(k).schema, "description": dag.params.get_param(k).description}
                   for k in dag.params},
        "schedule": str(getattr(dag.timetable, "description", None) or dag.timetable),
        "doc": bool(dag.doc_md),
        "owner": dag.owner,
        "owner_links": dag.owner_links,
        "tasks": {t.task_id: task_info(t) for t in dag.tasks},
    }
print("RESULT" + json.dumps(out))
"""


@pytest.fixture(scope="session")
def parsed(tmp_path_factory):
    """The DAG folder parsed once in a fresh Airflow home: import errors, modules loaded, each DAG's policies."""
    home = tmp_path_factory.mktemp("airflow")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(ROOT / "plugins"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow.db'}",
    )
    proc = subprocess.run([sys.executable, "-c", PARSE], env=env, capture_output=True, text=True, timeout=300)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")), None)
    assert line, proc.stderr[-3000:]
    return json.loads(line[len("RESULT") :])


def embedded_task_rows(home: Path, task_id: str, table: str = "task_instance") -> list[dict]:
    """Rows of ``task_id`` in the embedded Airflow DB of ``bnpipe run`` with BNPIPE_HOME ``home``.

    ``task_instance`` holds each task instance's latest try; ``task_instance_history`` one row per
    earlier try, so a task that was never retried has none there.
    """
    if table not in ("task_instance", "task_instance_history"):
        raise ValueError(f"not a task instance table: {table}")
    uri = f"file:{home / 'airflow' / 'airflow.db'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute(f"SELECT * FROM {table} WHERE task_id = ?", (task_id,))]


def most_at_once(spans) -> int:
    """The most of the ``(start, end)`` spans that ran at the same moment (ends before starts on a tie)."""
    edges = sorted([(_when(end), -1) for _, end in spans] + [(_when(start), 1) for start, _ in spans])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def _when(value) -> datetime:
    """A timestamp from Airflow's REST API (ISO 8601) or its SQLite DB ('YYYY-MM-DD HH:MM:SS.ffffff')."""
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)
