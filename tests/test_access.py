"""Who may see the results and who may move ``champion`` (issue 12, item 5).

- The plugin's pages ask the auth manager whether the logged-in user may read the DAG named in the
  path or query (Airflow's ``requires_access_dag``): checked route by route against an auth manager
  that grants one DAG and not another, then through a real api-server with SimpleAuthManager users.
- MLflow's basic-auth app, configured by the compose stack's ``docker/mlflow/basic_auth.ini``: no
  login, a read-only login and the admin, against a real ``mlflow server --app-name basic-auth``.
"""

from __future__ import annotations

import base64
import configparser
import importlib.util
import json
import os
import secrets
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
AUTH_INI = ROOT / "docker" / "mlflow" / "basic_auth.ini"
DAG = "bnpipe_experiment"


def _http(method: str, url: str, *, headers: dict | None = None, body: dict | None = None, timeout: float = 60):
    """(status, parsed JSON or text) of one request, without proxies; HTTP errors are answers too."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as resp:
            status, text = resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        status, text = err.code, err.read().decode(errors="replace")
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


# ------------------------------------------------------------------ the plugin's pages
def _load_plugin():
    spec = importlib.util.spec_from_file_location("bnpipe_plugin_under_test", ROOT / "plugins" / "bnpipe_plugin.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class OneDagAuthManager:
    """An auth manager whose one user, alice, may read the DAGs in ``readable`` and nothing else."""

    def __init__(self, readable: set[str]):
        self.readable = readable
        self.asked: list[tuple] = []

    async def get_user_from_token(self, token: str):
        from jwt import InvalidTokenError

        if token != "alice-token":
            raise InvalidTokenError("unknown token")
        return SimpleNamespace(username="alice")

    def is_authorized_dag(self, *, method, user, access_entity=None, details=None) -> bool:
        self.asked.append((method, access_entity, details.id if details else None, user.username))
        return method == "GET" and details is not None and details.id in self.readable


# Each route of the plugin, what it asks for, and what a reader of the DAG gets with no MLflow run.
ROUTES = {
    "/mlflow-run": ("TASK_INSTANCE", 404),
    "/runs/{dag_id}/latest": ("RUN", 200),
    "/runs/{dag_id}/{dag_run_id}": ("RUN", 200),
    "/runs/{dag_id}/{dag_run_id}/report.html": ("RUN", 404),
}
# Routes that name no DAG: the login is enough. The README is where the DAGs' owner name links to.
LOGIN_ONLY = {"/readme"}


@pytest.fixture
def plugin_client(monkeypatch):
    """A TestClient on the plugin's app, with Airflow's security code asking ``OneDagAuthManager``."""
    from airflow.api_fastapi.core_api import security
    from airflow.models.dag import DagModel
    from fastapi.testclient import TestClient

    plugin = _load_plugin()
    manager = OneDagAuthManager(readable={"open_dag"})
    monkeypatch.setattr(security, "get_auth_manager", lambda: manager)
    monkeypatch.setattr(DagModel, "get_team_name", staticmethod(lambda dag_id, **_: None))  # no metadata DB here
    monkeypatch.setattr(plugin, "_parent_run", lambda dag_id, dag_run_id: (None, None))  # no MLflow run yet
    return plugin, manager, TestClient(plugin.app)


def _url(path: str, dag_id: str) -> str:
    query = urllib.parse.urlencode({"dag_id": dag_id, "dag_run_id": "manual__1", "task_id": "train"})
    return path.format(dag_id=dag_id, dag_run_id="manual__1") + "?" + query


def test_every_route_asks_the_auth_manager_for_the_dag_in_the_request(plugin_client):
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from fastapi.routing import APIRoute

    plugin, manager, client = plugin_client
    paths = {r.path for r in plugin.app.routes if isinstance(r, APIRoute)}
    assert paths == set(ROUTES) | LOGIN_ONLY, "a new route needs its access entity and expected answer in ROUTES"
    bearer = {"Authorization": "Bearer alice-token"}
    for path, (entity, allowed_status) in ROUTES.items():
        manager.asked.clear()
        denied = client.get(_url(path, "secret_dag"), headers=bearer, follow_redirects=False)
        assert denied.status_code == 403, (path, denied.text)
        assert manager.asked == [("GET", DagAccessEntity[entity], "secret_dag", "alice")], path

        manager.asked.clear()
        allowed = client.get(_url(path, "open_dag"), headers=bearer, follow_redirects=False)
        assert allowed.status_code == allowed_status, (path, allowed.text)
        assert manager.asked == [("GET", DagAccessEntity[entity], "open_dag", "alice")], path
        if allowed_status == 200:
            assert "No MLflow run for this DAG run yet" in allowed.text


def test_the_readme_needs_the_login_and_no_dag(plugin_client):
    _, manager, client = plugin_client
    page = client.get("/readme", headers={"Authorization": "Bearer alice-token"})
    assert page.status_code == 200 and "bnpipe" in page.text and "<h1" in page.text, page.text[:300]
    assert client.get("/readme").status_code == 401
    assert manager.asked == []


def test_no_login_is_401_and_a_bad_token_403_before_any_dag_is_checked(plugin_client):
    _, manager, client = plugin_client
    for path in [*ROUTES, *LOGIN_ONLY]:
        assert client.get(_url(path, "open_dag")).status_code == 401, path
        bad = client.get(_url(path, "open_dag"), headers={"Authorization": "Bearer forged"})
        assert bad.status_code == 403, path
    assert manager.asked == []


@pytest.mark.integration
def test_results_page_through_a_real_api_server(tmp_path):
    """SimpleAuthManager: admin and viewer read the DAG's results; a user without a role gets 403."""
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN

    from bnpipe.operations.stack import Stack

    stack = Stack(
        tmp_path / "stack",
        extra_env={
            # "nobody" has no role: SimpleAuthManager gives such a user no permission at all
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer,nobody:",
            "BNPIPE_HOME": str(tmp_path / "home"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",  # an empty store: no run yet
        },
    )
    t0 = time.monotonic()
    try:
        stack.start(components=("api-server",), timeout=300)
        print(f"\napi-server up in {time.monotonic() - t0:.1f} s")
        passwords = json.loads(stack.password_file.read_text())
        url = f"{stack.airflow_url}/bnpipe/runs/{DAG}/latest"

        def page(user: str | None = None, cookie: bool = False):
            if user is None:
                return _http("GET", url)
            token = stack.client.token(user, passwords[user])
            header = {"Cookie": f"{COOKIE_NAME_JWT_TOKEN}={token}"} if cookie else {"Authorization": f"Bearer {token}"}
            return _http("GET", url, headers=header)

        for user, cookie in (("admin", False), ("viewer", False), ("viewer", True)):
            status, body = page(user, cookie)
            assert status == 200, (user, status, body)
            assert f"bnpipe results: {DAG}" in body and "No MLflow run for this DAG run yet" in body
        status, body = page("nobody")  # logged in (a valid token), but no read access to the DAG
        assert (status, body) == (403, {"detail": "Forbidden"})
        assert page(None) == (401, {"detail": "Not authenticated"})
    finally:
        stack.stop()


# ------------------------------------------------------------------ MLflow basic-auth
def test_the_pinned_mlflow_carries_its_auth_app():
    """The compose stack runs ``mlflow server --app-name basic-auth`` from an image built on
    pyproject's pins; that app imports Flask-WTF, which only MLflow's ``auth`` extra brings."""
    import tomllib

    from packaging.requirements import Requirement

    pins = [Requirement(p) for p in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    mlflow = next(r for r in pins if r.name == "mlflow")
    assert "auth" in mlflow.extras, f"pin {mlflow} as mlflow[auth]{mlflow.specifier} in pyproject.toml"
    assert importlib.util.find_spec("flask_wtf") is not None


def _basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def auth_mlflow(tmp_path, monkeypatch):
    """``mlflow server --app-name basic-auth`` on 127.0.0.1 with the compose stack's auth settings,
    a SQLite store and auth DB in ``tmp_path``, and an admin written into a generated basic_auth.ini."""
    from bnpipe.base import procs
    from bnpipe.base.procs import HOST, free_port

    ini = configparser.ConfigParser()
    ini.read(AUTH_INI)
    admin = ("admin", secrets.token_hex(12))
    ini["mlflow"].update(
        database_uri=f"sqlite:///{tmp_path / 'basic_auth.db'}", admin_username=admin[0], admin_password=admin[1]
    )
    config = tmp_path / "basic_auth.ini"
    with config.open("w") as f:
        ini.write(f)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_AUTH_CONFIG_PATH=str(config), MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16))
    cmd = [
        sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--app-name", "basic-auth",
        "--serve-artifacts", "--artifacts-destination", str(tmp_path / "artifacts"),
    ]  # fmt: skip
    proc = procs.spawn(cmd, tmp_path / "mlflow.log", env)  # a session of its own: the server and its workers
    url = f"http://{HOST}:{port}"
    t0 = time.monotonic()
    try:
        while True:
            try:
                if _http("GET", f"{url}/health", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "mlflow.log").read_text()[-3000:]
            assert time.monotonic() - t0 < 90, "mlflow server not up in 90 s"
            time.sleep(0.5)
        print(f"\nmlflow basic-auth server up in {time.monotonic() - t0:.1f} s")
        # the admin's clients: MLflow reads the login from these two variables
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", admin[0])
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", admin[1])
        yield SimpleNamespace(url=url, admin=admin)
    finally:
        if proc.poll() is None:  # the server's process group, which this fixture started
            procs.terminate(procs.record(proc.pid))
            proc.wait()


@pytest.mark.integration
def test_only_the_admin_moves_champion_on_a_basic_auth_server(auth_mlflow, monkeypatch, tmp_path):
    from mlflow.server import get_app_client
    from mlflow.tracking import MlflowClient

    url, admin = auth_mlflow.url, auth_mlflow.admin
    name = "bnpipe-breast_cancer"
    # as the admin (the Airflow tasks' login): a run, a model with two versions, champion on version 1
    client = MlflowClient(tracking_uri=url, registry_uri=url)
    exp_id = client.create_experiment("bnpipe")
    run = client.create_run(exp_id)
    client.log_text(run.info.run_id, "weights", "model/MLmodel")
    client.create_registered_model(name)
    for _ in range(2):
        client.create_model_version(name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    client.set_registered_model_alias(name, "champion", "1")

    # the scoring side's read-only login, granted as docs say; a stranger is granted nothing
    auth = get_app_client("basic-auth", tracking_uri=url)
    scorer, stranger = ("scorer", secrets.token_hex(12)), ("stranger", secrets.token_hex(12))
    for user, password in (scorer, stranger):
        auth.create_user(user, password)
    auth.grant_user_permission(scorer[0], "registered_model", name, "READ")
    auth.grant_user_permission(scorer[0], "experiment", exp_id, "READ")

    alias_url = f"{url}/api/2.0/mlflow/registered-models/alias"
    move = {"name": name, "alias": "champion", "version": "2"}
    query = "?" + urllib.parse.urlencode({"name": name, "alias": "champion"})

    def holder(who) -> str:
        status, body = _http("GET", alias_url + query, headers=_basic(*who))
        assert status == 200, body
        return body["model_version"]["version"]

    assert _http("POST", alias_url, body=move)[0] == 401  # no login
    assert _http("POST", alias_url, body=move, headers=_basic(admin[0], "wrong-password"))[0] == 401
    assert _http("POST", alias_url, body=move, headers=_basic(*scorer))[0] == 403  # read-only
    assert _http("POST", alias_url, body=move, headers=_basic(*stranger))[0] == 403
    assert holder(admin) == "1", "a refused request moved the alias"
    # the read-only login reads what scoring reads; the stranger reads nothing (default_permission)
    assert holder(scorer) == "1"
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", scorer[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", scorer[1])
    scorer_client = MlflowClient(tracking_uri=url, registry_uri=url)
    assert scorer_client.get_model_version_by_alias(name, "champion").run_id == run.info.run_id
    assert scorer_client.get_run(run.info.run_id).info.experiment_id == exp_id
    model_dir = Path(scorer_client.download_artifacts(run.info.run_id, "model", str(tmp_path)))
    assert (model_dir / "MLmodel").read_text() == "weights"
    assert _http("GET", alias_url + query, headers=_basic(*stranger))[0] == 403
    artifact = f"{url}/api/2.0/mlflow-artifacts/artifacts/{exp_id}/{run.info.run_id}/artifacts/model/MLmodel"
    assert _http("GET", artifact, headers=_basic(*stranger))[0] == 403
    assert _http("GET", artifact, headers=_basic(*scorer)) == (200, "weights")

    assert _http("POST", alias_url, body=move, headers=_basic(*admin))[0] == 200
    assert holder(scorer) == "2"
