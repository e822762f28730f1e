"""The real stack end to end: Airflow's servers and an MLflow server as separate processes.

A run is triggered through Airflow's REST API with a token and a conf; the results are checked
through MLflow's REST API. Shares one stack (``live_stack``) and one run (``stack_run``) with
test_browser.py.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from dag_fixtures import most_at_once
from stack_fixtures import MODEL, TRAIN_CONCURRENCY, mlflow_rest, parent_and_children, tags_of

from bnpipe.operations.airflow_api import ApiError, http
from bnpipe.operations.stack import COMPONENTS, EXPERIMENT_DAG, INBOX_DAG

pytestmark = pytest.mark.integration


def _listening_addresses(pgids: set[int]) -> set[str]:
    """Local addresses of the TCP sockets that processes in ``pgids`` listen on (from /proc)."""
    inodes = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            if int(text[text.rindex(")") + 2 :].split()[2]) not in pgids:
                continue
            for fd in (stat.parent / "fd").iterdir():
                target = str(fd.readlink())
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # LISTEN
                out.add(f[1].rsplit(":", 1)[0])
    return out


def test_every_component_is_healthy_and_loopback_only(live_stack):
    health = live_stack.health()
    assert all(health[c] == "healthy" for c in COMPONENTS), health
    pgids = {json.loads((live_stack.run_dir / f"{c}.pid").read_text())["pid"] for c in COMPONENTS}
    addresses = _listening_addresses(pgids)
    assert addresses, "found no listening sockets of the stack's processes"
    loopback = {"0100007F", "0000000000000000FFFF00000100007F"}  # 127.0.0.1 (IPv4, IPv4-mapped IPv6)
    assert addresses <= loopback, f"a component listens beyond 127.0.0.1: {addresses}"


def test_rest_api_needs_a_token(live_stack):
    status, _ = http("GET", f"{live_stack.airflow_url}/api/v2/dags")
    assert status == 401
    with pytest.raises(ApiError) as err:
        live_stack.client.token(password="wrong")
    assert err.value.status in (401, 403)
    dags = live_stack.client.api("GET", "/dags")["dags"]
    assert {d["dag_id"] for d in dags} >= {EXPERIMENT_DAG, INBOX_DAG}


def test_trigger_form_params_and_schema_refusals(live_stack):
    params = live_stack.client.api("GET", f"/dags/{EXPERIMENT_DAG}/details")["params"]
    for name in ("dataset", "grid", "epochs", "batch_size", "metric", "data_path", "label"):
        assert params[name]["description"], name
    assert "breast_cancer" in params["dataset"]["schema"]["enum"]
    assert params["epochs"]["schema"]["minimum"] == 1
    for conf, words in (({"epochs": 0}, ("epochs", "minimum")), ({"dataset": "nope"}, ("dataset", "nope"))):
        with pytest.raises(ApiError) as err:
            live_stack.client.trigger(EXPERIMENT_DAG, conf)
        assert err.value.status == 400
        detail = err.value.body["detail"]
        assert all(w in detail for w in words), detail


def test_run_succeeds_with_parent_nested_runs_and_champion(live_stack, stack_run):
    assert stack_run["state"] == "success"
    parent, children = parent_and_children(live_stack, stack_run["run_id"])
    assert parent["info"]["status"] == "FINISHED"
    assert tags_of(parent)["bnpipe.airflow_link"].startswith(live_stack.airflow_url)
    assert len(children) == 4, [c["info"]["run_name"] for c in children]
    assert all(c["info"]["status"] == "FINISHED" for c in children)
    assert {tags_of(c)["bnpipe.map_index"] for c in children} == {"0", "1", "2", "3"}
    # artifacts went through the server (mlflow-artifacts:) into the stack's artifact store
    child = children[0]
    assert child["info"]["artifact_uri"].startswith("mlflow-artifacts:")
    listed = mlflow_rest(live_stack, "GET", "artifacts/list", run_id=child["info"]["run_id"], path="model")
    assert [f["path"] for f in listed["files"]] == ["model/model.keras"]
    assert list((live_stack.mlflow_dir / "artifacts").rglob("model.keras"))
    alias = mlflow_rest(live_stack, "GET", "registered-models/alias", name=MODEL, alias="champion")
    assert alias["model_version"]["run_id"] in {c["info"]["run_id"] for c in children}
    assert tags_of(parent)["bnpipe.registered_version"] == alias["model_version"]["version"]


def test_mapped_training_tasks_overlapped(live_stack, stack_run):
    """The stack ran as many training tasks at once as its training concurrency allows, and no more."""
    tis = live_stack.client.task_instances(EXPERIMENT_DAG, stack_run["run_id"], "train")
    assert len(tis) == 4 and all(t["state"] == "success" for t in tis), tis
    spans = [(t["start_date"], t["end_date"]) for t in tis]
    assert most_at_once(spans) == TRAIN_CONCURRENCY, sorted(spans)


def _no_redirect(url: str, token: str | None):
    class Keep(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(Keep, urllib.request.ProxyHandler({}))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with opener.open(urllib.request.Request(url, headers=headers), timeout=30) as resp:
            return resp.status, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)


def test_extra_link_opens_the_tasks_mlflow_run(live_stack, stack_run):
    rid = urllib.parse.quote(stack_run["run_id"], safe="")
    parent, children = parent_and_children(live_stack, stack_run["run_id"])
    by_index = {tags_of(c)["bnpipe.map_index"]: c["info"]["run_id"] for c in children}
    token = live_stack.client.token()
    for task_id, map_index, want in (("train", 2, by_index["2"]), ("compare", -1, parent["info"]["run_id"])):
        links = live_stack.client.api(
            "GET", f"/dags/{EXPERIMENT_DAG}/dagRuns/{rid}/taskInstances/{task_id}/links?map_index={map_index}"
        )
        link = links["extra_links"]["MLflow run"]
        assert _no_redirect(link, None)[0] == 401  # the plugin asks for the same login as the UI
        status, headers = _no_redirect(link, token)
        assert status == 307
        assert (
            headers["location"]
            == f"{live_stack.mlflow_url}/#/experiments/{parent['info']['experiment_id']}/runs/{want}"
            "?workflowType=machine_learning"  # the UI's Model training view, not the GenAI one
        )
    links = live_stack.client.api("GET", f"/dags/{EXPERIMENT_DAG}/dagRuns/{rid}/taskInstances/ingest/links")
    assert links["extra_links"]["MLflow run"] is None  # no button on tasks without their own run


def test_results_view_shows_the_comparison(live_stack, stack_run):
    rid = urllib.parse.quote(stack_run["run_id"], safe="")
    plugins = live_stack.client.api("GET", "/plugins")["plugins"]
    views = [v for p in plugins if p["name"] == "bnpipe" for v in p["external_views"]]
    assert {v["destination"] for v in views} == {"dag_run", "dag"}
    url = f"{live_stack.airflow_url}/bnpipe/runs/{EXPERIMENT_DAG}/{rid}"
    assert http("GET", url)[0] == 401
    status, page = http("GET", url, headers={"Authorization": f"Bearer {live_stack.client.token()}"})
    assert status == 200
    _, children = parent_and_children(live_stack, stack_run["run_id"])
    for c in children:
        assert c["info"]["run_name"] in page and c["info"]["run_id"] in page
    assert "id='comparison'" in page and "champion" in page
    assert "id='report'" in page and "id='no-report'" not in page  # the compare task always logs the report
    assert "id='verdicts'" in page  # read from report/verdicts.json
    for claim in ("1", "2", "3", "4a", "4b", "4c", "4d", "4e", "R"):
        assert f"<tr><td>{claim}</td><td class='verdict'>" in page, claim
