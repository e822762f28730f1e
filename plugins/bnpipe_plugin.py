"""bnpipe's Airflow plugin: from a task to its MLflow run, and the comparison inside the Airflow UI.

- Extra link **MLflow run** on the experiment DAG's ``train`` (one per mapped variant) and
  ``compare`` tasks. It points at ``/bnpipe/mlflow-run``, which finds the run by its tags
  (``bnpipe.dag_run_id``, ``bnpipe.map_index``) and redirects to the MLflow UI
  (``BNPIPE_MLFLOW_UI_URL``, else ``MLFLOW_TRACKING_URI`` when it is a URL).
- Tab **bnpipe results** on every DAG run page (and on the DAG page, for its latest run): the
  ranked comparison, who holds ``champion`` and why, and the claims report (artifact ``report/``
  of the parent run) when that run has one.
- ``/bnpipe/readme``: the project's README, where the DAGs' owner name links to (``owner_links``).

The FastAPI app runs inside the api-server and asks for the same login as the UI (the session
cookie or a Bearer token), then asks the auth manager whether that user may read the DAG named in
the path or query (``is_authorized_dag``, method GET: its runs for the results pages, its task
instances for the MLflow link), as Airflow's own routes do; 401 without a login, 403 without
access. Only the standard library, FastAPI and Airflow are imported here; Airflow's API modules
and MLflow are imported inside the functions that need them, TensorFlow never.
"""

from __future__ import annotations

import html
import json
import urllib.parse
from typing import Annotated

from airflow.plugins_manager import AirflowPlugin
from airflow.sdk import BaseOperatorLink
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse

EXPERIMENT_DAG = "bnpipe_experiment"
LINKED_TASKS = ("train", "compare")
PREFIX = "/bnpipe"


# ------------------------------------------------------------------ MLflow lookups
def _mlflow_ui() -> str:
    from bnpipe.base import settings

    ui = settings.mlflow_ui_url()
    if not ui:
        raise HTTPException(503, "Set BNPIPE_MLFLOW_UI_URL to the MLflow UI's address (`make up` does).")
    return ui


def _run_url(experiment_id: str, run_id: str) -> str:
    from bnpipe.mlflow_edge import tracking

    return f"{_mlflow_ui()}/{tracking.ui_page(experiment_id, run_id)}"


def _parent_run(dag_id: str, dag_run_id: str | None):
    """The MLflow client and the DAG run's parent run (the latest parent of ``dag_id`` if no run id), or None."""
    from bnpipe.mlflow_edge import tracking
    from bnpipe.reporting.summaries import find_parent

    client = tracking.connect(attempts=2)
    return client, find_parent(client, dag_id, dag_run_id or None)


def task_run_url(dag_id: str, dag_run_id: str, task_id: str, map_index: int) -> str | None:
    """MLflow UI URL of a task's run: the variant's nested run for ``train``, the parent otherwise."""
    from bnpipe.mlflow_edge import tracking

    client, parent = _parent_run(dag_id, dag_run_id)
    if parent is None:
        return None
    if task_id != "train":
        return _run_url(parent.info.experiment_id, parent.info.run_id)
    key = {tracking.TAG + "parent_run_id": parent.info.run_id, tracking.TAG + "map_index": str(map_index)}
    runs = tracking.find_runs(client, parent.info.experiment_id, key)
    return _run_url(parent.info.experiment_id, runs[0].info.run_id) if runs else None


# ------------------------------------------------------------------ the extra link
class MlflowRunLink(BaseOperatorLink):
    """Opens the MLflow run of a bnpipe training or compare task (through ``/bnpipe/mlflow-run``)."""

    name = "MLflow run"

    def get_link(self, operator, *, ti_key) -> str:
        if ti_key.dag_id != EXPERIMENT_DAG or ti_key.task_id not in LINKED_TASKS:
            return ""  # the UI shows no button for an empty link
        from bnpipe.base import settings

        query = urllib.parse.urlencode({
            "dag_id": ti_key.dag_id,
            "dag_run_id": ti_key.run_id,
            "task_id": ti_key.task_id,
            "map_index": ti_key.map_index,
        })  # fmt: skip
        return f"{settings.airflow_base_url()}{PREFIX}/mlflow-run?{query}"


# ------------------------------------------------------------------ the FastAPI app
async def require_login(request: Request):
    """The UI's login (Airflow's ``get_user``: a Bearer token, else the session cookie); 401/403 without one."""
    from airflow.api_fastapi.core_api.security import bearer_scheme, get_user

    return await get_user(request, None, await bearer_scheme(request))


def require_dag_read(entity: str):
    """A dependency: the logged-in user may read ``entity`` (a ``DagAccessEntity`` name) of the DAG
    whose id is in the path or the query, by Airflow's ``requires_access_dag``; 403 otherwise.

    Airflow's API modules are imported on the first request, inside the api-server, so the
    scheduler, dag-processor and workers that import this plugin do not pay for them.
    """

    def check(request: Request, user: Annotated[object, Depends(require_login)]) -> None:
        from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
        from airflow.api_fastapi.core_api.security import requires_access_dag

        requires_access_dag("GET", DagAccessEntity[entity])(request, user)

    return check


# Every route but the README names its DAG (path or query) and checks it; the app-wide login is a backstop.
app = FastAPI(title="bnpipe", dependencies=[Depends(require_login)])
READ_RUNS = [Depends(require_dag_read("RUN"))]


@app.get("/mlflow-run", dependencies=[Depends(require_dag_read("TASK_INSTANCE"))])
def mlflow_run(dag_id: str, dag_run_id: str, task_id: str, map_index: int = -1):
    """Redirect to the MLflow run of one task instance."""
    url = task_run_url(dag_id, dag_run_id, task_id, map_index)
    if url is None:
        raise HTTPException(404, f"No MLflow run yet for {dag_id} / {dag_run_id} / {task_id}[{map_index}].")
    return RedirectResponse(url, status_code=307)


@app.get("/readme", response_class=HTMLResponse)
def readme():
    """The project's README: where the DAGs' owner name links to (``owner_links``); the login is enough."""
    from bnpipe.base import settings

    path = settings.PACKAGE_DIR.parent / "README.md"
    if not path.is_file():
        raise HTTPException(404, f"No README.md next to the bnpipe package ({path.parent}).")
    text = path.read_text()
    try:
        from markdown_it import MarkdownIt  # installed with Airflow (through rich)

        body = MarkdownIt("commonmark", {"html": False}).enable("table").render(text)
    except ImportError:
        body = f"<pre>{html.escape(text)}</pre>"
    head = "<!doctype html><html><head><meta charset='utf-8'><title>bnpipe README</title></head>"
    return HTMLResponse(f"{head}<body>{body}</body></html>")


@app.get("/runs/{dag_id}/latest", response_class=HTMLResponse, dependencies=READ_RUNS)
def latest_results(dag_id: str):
    """The results page of the DAG's latest run that reached MLflow."""
    return HTMLResponse(_results_page(dag_id, None))


@app.get("/runs/{dag_id}/{dag_run_id}", response_class=HTMLResponse, dependencies=READ_RUNS)
def run_results(dag_id: str, dag_run_id: str):
    """Comparison table, champion decision and claims report of one DAG run."""
    return HTMLResponse(_results_page(dag_id, dag_run_id))


@app.get("/runs/{dag_id}/{dag_run_id}/report.html", response_class=HTMLResponse, dependencies=READ_RUNS)
def run_report(dag_id: str, dag_run_id: str):
    """The claims report (``report/report.html`` of the parent run), as it was logged."""
    client, parent = _parent_run(dag_id, None if dag_run_id == "latest" else dag_run_id)
    text = _report_html(client, parent) if parent else None
    if text is None:
        raise HTTPException(404, "This run has no claims report (artifact report/report.html).")
    return HTMLResponse(text)


def _report_file(client, parent, name: str) -> str | None:
    """The text of ``report/<name>`` on the parent run, or None when the run has no such artifact."""
    import tempfile
    from pathlib import Path

    names = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    if f"report/{name}" not in names:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return Path(client.download_artifacts(parent.info.run_id, f"report/{name}", tmp)).read_text()


def _report_html(client, parent) -> str | None:
    return _report_file(client, parent, "report.html")


def _verdicts_table(doc: dict) -> str:
    """Each claim's verdict with its headline comparison: n, estimate, interval, margin, test (verdicts.json)."""
    e = html.escape
    rows = []
    for claim in doc.get("claims", []):
        comps = claim.get("comparisons") or []
        head = next((c for c in comps if c.get("headline")), comps[0] if comps else None)
        if head and head.get("estimate") is not None:
            lo, hi = head.get("interval") or (None, None)
            ci = f" [{lo:+.3f}, {hi:+.3f}]" if lo is not None and hi is not None else ""
            numbers = (f"{e(head['label'])}: {e(head['metric_text'])} {head['estimate']:+.3f}{ci}, n={head['n']}, "
                       f"margin {head['margin']:.3g}, {e(head['test'])}")  # fmt: skip
        else:
            numbers = e(claim.get("reason") or "")
        rows.append(f"<tr><td>{e(claim['claim'])}</td><td class='verdict'>{e(claim['verdict'])}</td>"
                    f"<td>{e(claim['text'])}</td><td>{numbers}</td></tr>")  # fmt: skip
    head_row = "<tr><th>claim</th><th>verdict</th><th>claim (design notes)</th><th>headline comparison</th></tr>"
    return f"<table id='verdicts'>{head_row}{''.join(rows)}</table>"


STYLE = """
body{font-family:system-ui,sans-serif;margin:16px;color:#1a202c}
table{border-collapse:collapse;font-size:14px}td,th{border:1px solid #cbd5e0;padding:4px 8px;text-align:right}
td:nth-child(2),th:nth-child(2),td:nth-child(3){text-align:left}tr.winner{background:#f0fff4;font-weight:600}
.muted{color:#718096}iframe{width:100%;height:900px;border:1px solid #cbd5e0}
"""


def _results_page(dag_id: str, dag_run_id: str | None) -> str:
    from bnpipe.reporting import summaries

    e = html.escape
    client, parent = _parent_run(dag_id, dag_run_id)
    title = f"bnpipe results: {e(dag_id)} / {e(dag_run_id or 'latest run')}"
    head = f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{STYLE}</style></head>"
    if parent is None:
        body = "<p>No MLflow run for this DAG run yet: the comparison appears once training has started.</p>"
        return f"{head}<body><h2>{title}</h2>{body}</body></html>"
    s = summaries.summary_of(client, parent)
    parts = [f"<h2>{title}</h2>", summaries.html(s, lambda run_id: _run_url(s.experiment_id, run_id))]
    verdicts = _report_file(client, parent, "verdicts.json")
    if verdicts is not None:
        parts.append("<h3>Verdicts</h3>" + _verdicts_table(json.loads(verdicts)))
    if _report_html(client, parent) is not None:
        src = f"{urllib.parse.quote(s.dag_run_id or '', safe='')}/report.html"
        parts.append(f"<h3>Claims report</h3><iframe id='report' src='{e(src)}'></iframe>")
    else:
        parts.append("<p class='muted' id='no-report'>No claims report on this run (artifact report/).</p>")
    return f"{head}<body>{''.join(parts)}</body></html>"


class BnpipePlugin(AirflowPlugin):
    name = "bnpipe"
    global_operator_extra_links = [MlflowRunLink()]
    fastapi_apps = [{"app": app, "url_prefix": PREFIX, "name": "bnpipe results"}]
    external_views = [
        {
            "name": "bnpipe results",
            "href": "bnpipe/runs/{DAG_ID}/{RUN_ID}",
            "destination": "dag_run",
            "url_route": "bnpipe-run-results",
        },
        {
            "name": "bnpipe results (latest run)",
            "href": "bnpipe/runs/{DAG_ID}/latest",
            "destination": "dag",
            "url_route": "bnpipe-latest-results",
        },
    ]
