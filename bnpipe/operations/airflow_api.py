"""A small client of Airflow's REST API (``/api/v2``) on 127.0.0.1: a token, requests, DAG runs.

``make up`` uses it to unpause the DAGs; the tests and the benchmarks use it to trigger runs and
read their task instances. Only the standard library: this module imports neither Airflow nor
TensorFlow.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request

FINAL_STATES = ("success", "failed")


class ApiError(RuntimeError):
    """The Airflow REST API refused a request: ``status`` and ``body`` say how."""

    def __init__(self, message: str, status: int | None = None, body: object = None):
        super().__init__(message)
        self.status, self.body = status, body


def http(method: str, url: str, body: dict | None = None, headers: dict | None = None, timeout: float = 30):
    """(status, parsed JSON or text) of one request; HTTP errors are returned, not raised."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={**(headers or {})})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
    try:
        with opener.open(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    text = raw.decode(errors="replace")
    try:
        return status, json.loads(text) if text else None
    except json.JSONDecodeError:
        return status, text


class AirflowClient:
    """Airflow's REST API at ``url`` as ``username``, with a JWT fetched on first use and renewed once on 401."""

    def __init__(self, url: str, username: str, password: str):
        self.url = url.rstrip("/")
        self.username, self.password = username, password
        self._token: str | None = None

    def token(self, username: str | None = None, password: str | None = None) -> str:
        """A JWT from ``POST /auth/token`` (for this client's login unless another is given)."""
        status, body = http(
            "POST", f"{self.url}/auth/token",
            {"username": username or self.username, "password": password or self.password},
        )  # fmt: skip
        if status not in (200, 201) or not isinstance(body, dict) or "access_token" not in body:
            raise ApiError(f"POST /auth/token answered {status}: {body}", status, body)
        return body["access_token"]

    def api(self, method: str, path: str, json=None) -> dict:
        """``/api/v2{path}`` with a Bearer token; raises :class:`ApiError` on HTTP >= 400."""
        if self._token is None:
            self._token = self.token()
        url = f"{self.url}/api/v2/{path.lstrip('/')}"
        status, body = http(method, url, json, {"Authorization": f"Bearer {self._token}"})
        if status == 401:  # expired: one fresh token
            self._token = self.token()
            status, body = http(method, url, json, {"Authorization": f"Bearer {self._token}"})
        if status >= 400:
            raise ApiError(f"{method} {path} answered {status}: {body}", status, body)
        return body if body is not None else {}

    def unpause(self, dag_id: str, deadline: float | None = None) -> None:
        """Wait until the dag-processor stored ``dag_id`` (404 until then), then unpause it."""
        deadline = deadline or time.monotonic() + 180
        while True:
            try:
                self.api("PATCH", f"/dags/{dag_id}", {"is_paused": False})
                return
            except ApiError as exc:
                if exc.status != 404 or time.monotonic() > deadline:
                    raise ApiError(f"{dag_id} could not be unpaused: {exc}", exc.status, exc.body) from exc
            time.sleep(1)

    def pause(self, dag_id: str) -> None:
        self.api("PATCH", f"/dags/{dag_id}", {"is_paused": True})

    def trigger(self, dag_id: str, conf: dict) -> str:
        """Start a manual DAG run with ``conf``; returns its dag_run_id."""
        body = self.api("POST", f"/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf})
        return body["dag_run_id"]

    def dag_run(self, dag_id: str, run_id: str) -> dict:
        return self.api("GET", f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}")

    def task_instances(self, dag_id: str, run_id: str, task_id: str | None = None) -> list[dict]:
        """The DAG run's task instances (mapped ones one per map index), of ``task_id`` only if given."""
        path = f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances?limit=1000"
        tis = self.api("GET", path)["task_instances"]
        return [t for t in tis if task_id is None or t["task_id"] == task_id]

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 600) -> str:
        """Poll the DAG run until it ends; returns its final state ("success" or "failed")."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.dag_run(dag_id, run_id)["state"]
            if state in FINAL_STATES:
                return state
            if time.monotonic() > deadline:
                raise ApiError(f"{dag_id} run {run_id} still {state} after {timeout:.0f} s")
            time.sleep(2)
