"""The compose topology without Docker: Airflow's CeleryExecutor on this machine's PostgreSQL and
Redis, two Celery workers as separate processes, and an MLflow server on PostgreSQL.

The test creates its own uniquely named databases and claims an empty Redis DB number; it starts
and stops only its own processes (by the PIDs it recorded) and drops / flushes everything at the end.
It skips where PostgreSQL (127.0.0.1:5432, user postgres, trust auth) or Redis (127.0.0.1:6379)
cannot be reached.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.services, pytest.mark.integration, pytest.mark.timeout(600)]

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
DAG_ID = "bnpipe_experiment"
CONF = {"dataset": "breast_cancer", "grid": "smoke", "epochs": 2}
MODEL = "bnpipe-breast_cancer"
CLAIM_KEY = "bnpipe:test-claim"


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=3):
            return True
    except OSError:
        return False


def _pg(dbname: str = "postgres"):
    import psycopg2

    conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=dbname, connect_timeout=5)
    conn.autocommit = True
    return conn


def _pg_url(db: str, scheme: str = "postgresql+psycopg2") -> str:
    return f"{scheme}://{PG_USER}@{PG_HOST}:{PG_PORT}/{db}"


def _claim_redis_db(token: str):
    """An empty Redis DB number (15 down to 1), claimed with a marker key so parallel runs skip it."""
    import redis

    for n in range(15, 0, -1):
        r = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=n, socket_timeout=5)
        if r.dbsize() == 0 and r.set(CLAIM_KEY, token, nx=True) and r.dbsize() == 1:
            return n, r
        r.close()
    pytest.fail("no empty Redis DB among 1..15 to run the Celery test in; flush a stale one")


def _wait_worker_ready(stack, hostname: str, timeout: float = 120) -> None:
    """Until the worker's log says Celery is ready (or it died / the time ran out)."""
    name = f"celery-worker-{hostname}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not stack.alive(name):
            pytest.fail(f"Celery worker {hostname} exited:\n{stack.log_tail(name)}")
        if f"{hostname} ready." in stack.log_tail(name, 200):  # Celery's "celery@<hostname> ready."
            return
        time.sleep(1)
    pytest.fail(f"Celery worker {hostname} not ready after {timeout:.0f} s:\n{stack.log_tail(name)}")


def _check_celery_executor_imports(env: dict) -> None:
    """Fail early, and say why, when the installed Celery provider cannot load with the installed Celery."""
    code = "import airflow.providers.celery.executors.celery_executor_utils"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        from importlib.metadata import version

        pytest.fail(
            f"the CeleryExecutor does not load: apache-airflow-providers-celery "
            f"{version('apache-airflow-providers-celery')} with celery {version('celery')}: "
            f"{(proc.stderr.strip().splitlines() or ['no output'])[-1]}. "
            "Pin a Celery release this provider supports in pyproject.toml."
        )


@pytest.fixture(scope="module")
def celery_run(tmp_path_factory):
    """One DAG run on the native Celery stack; yields what the assertions need, then tears it all down."""
    services = (("PostgreSQL", PG_HOST, PG_PORT), ("Redis", REDIS_HOST, REDIS_PORT))
    missing = [f"{what} at {h}:{p}" for what, h, p in services if not _reachable(h, p)]
    if missing:
        pytest.skip(f"the native Celery test needs {' and '.join(missing)}, which is not reachable")
    from bnpipe.stack import Stack

    token = f"{os.getpid()}_{secrets.token_hex(3)}"
    airflow_db, mlflow_db = f"bnpipe_t_airflow_{token}", f"bnpipe_t_mlflow_{token}"
    workers = [f"bnpipe-w1-{token}", f"bnpipe-w2-{token}"]
    root = tmp_path_factory.mktemp("celery-stack")
    admin = _pg()
    created, stack, redis_db = [], None, None
    timings: dict[str, float] = {}
    try:
        for db in (airflow_db, mlflow_db):
            with admin.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{db}"')
            created.append(db)
        n, redis_db = _claim_redis_db(token)
        stack = Stack(
            root,
            executor="CeleryExecutor",
            sql_alchemy_conn=_pg_url(airflow_db),
            mlflow_backend_uri=_pg_url(mlflow_db),
            celery_broker_url=f"redis://{REDIS_HOST}:{REDIS_PORT}/{n}",
            celery_result_backend=_pg_url(airflow_db, "db+postgresql+psycopg2"),
            extra_env={
                "BNPIPE_HOME": root / "bnpipe-home",
                "BNPIPE_TRAIN_QUEUE": "train",
                "BNPIPE_TRAIN_CONCURRENCY": 2,
                "BNPIPE_TF_THREADS": 1,
                "BNPIPE_SCHEDULE": "",  # manual runs only: unpausing starts nothing by itself
                "BNPIPE_RETRIES": 0,
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": "bnpipe.settings.hostname",
                # Airflow derives an asyncpg URL for its async engine; the venv has no asyncpg (the official
                # image does). Nothing this DAG uses needs the async engine, so switch it off.
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": "",
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": 1,
            },
        )
        _check_celery_executor_imports(stack.env)
        t0 = time.monotonic()
        stack.start(components=("mlflow", "api-server", "scheduler", "dag-processor"), timeout=240, unpause=(DAG_ID,))
        pids = [stack.start_celery_worker(w, queues=("default", "train"), concurrency=1) for w in workers]
        assert len(set(pids)) == 2
        for w in workers:
            _wait_worker_ready(stack, w)
        timings["start"] = time.monotonic() - t0
        t1 = time.monotonic()
        run_id = stack.trigger(DAG_ID, CONF)
        state = stack.wait_for_run(DAG_ID, run_id, timeout=300)
        timings["run"] = time.monotonic() - t1
        tis = stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=100")["task_instances"]
        logs = {w: stack.log_tail(f"celery-worker-{w}", 60) for w in workers}
        yield {
            "stack": stack,
            "state": state,
            "run_id": run_id,
            "tis": tis,
            "workers": workers,
            "mlflow_db": mlflow_db,
            "timings": timings,
            "logs": logs,
            "scheduler_log": stack.log_tail("scheduler", 60),
        }
    finally:
        started = []
        if stack is not None:
            started = [stack._record(name) for name in stack.recorded()]
            stack.stop()  # workers first, then the servers; only the PIDs this stack recorded
        for db in reversed(created):
            with admin.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        with admin.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database WHERE datname = ANY(%s)", (created,))
            left_dbs = cur.fetchall()
        admin.close()
        if redis_db is not None:
            redis_db.flushdb()
            redis_db.close()
    # teardown is part of the contract: an error here fails the module
    alive = [rec["pid"] for rec in started if rec and Path(f"/proc/{rec['pid']}").exists()]
    assert not alive, f"processes of the test stack still running: {alive}"
    assert not left_dbs, f"databases left behind: {left_dbs}"


def test_dag_run_succeeds_on_celery(celery_run):
    tis = celery_run["tis"]
    failed = {t["task_id"]: t["state"] for t in tis if t["state"] != "success"}
    assert celery_run["state"] == "success", f"{failed}\n{celery_run['scheduler_log']}\n{celery_run['logs']}"
    assert {t["task_id"] for t in tis} == {
        "validate_params",
        "start_tracking",
        "ingest",
        "plan",
        "train",
        "compare",
        "close_runs",
    }
    assert all(t.get("executor") in (None, "CeleryExecutor") for t in tis)
    print(
        f"\nnative Celery stack: start {celery_run['timings']['start']:.0f} s, run {celery_run['timings']['run']:.0f} s"
    )


def test_training_variants_ran_on_both_workers(celery_run):
    workers = set(celery_run["workers"])
    train = [t for t in celery_run["tis"] if t["task_id"] == "train"]
    assert len(train) == 4 and all(t["state"] == "success" for t in train)
    assert {t["hostname"] for t in train} == workers, [(t["map_index"], t["hostname"]) for t in train]
    # every task ran on one of this test's workers, and the training tasks went through the train queue
    assert {t["hostname"] for t in celery_run["tis"]} <= workers
    assert {t["queue"] for t in train} == {"train"}
    assert {t["queue"] for t in celery_run["tis"] if t["task_id"] != "train"} == {"default"}


def test_results_are_in_mlflow_on_postgresql(celery_run):
    from mlflow.tracking import MlflowClient

    stack, run_id = celery_run["stack"], celery_run["run_id"]
    client = MlflowClient(tracking_uri=stack.mlflow_url, registry_uri=stack.mlflow_url)
    exp = client.get_experiment_by_name("bnpipe")
    assert exp is not None and exp.artifact_location.startswith("mlflow-artifacts:")
    parents = client.search_runs([exp.experiment_id], f"tags.`bnpipe.dag_run_id` = '{run_id}'")
    parents = [r for r in parents if r.data.tags.get("bnpipe.role") == "parent"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 4 and all(r.info.status == "FINISHED" for r in children)
    for r in children:
        assert [m.step for m in client.get_metric_history(r.info.run_id, "val_accuracy")] == [1, 2]
        assert [a.path for a in client.list_artifacts(r.info.run_id, "model")] == ["model/model.keras"]
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.run_id in {r.info.run_id for r in children}
    assert parent.data.tags["bnpipe.registered_version"] == champion.version

    # the server really stores them in this test's PostgreSQL database
    conn = _pg(celery_run["mlflow_db"])
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM runs WHERE lifecycle_stage = 'active'")
            assert cur.fetchone()[0] == 5
            cur.execute("SELECT version FROM registered_model_aliases WHERE name = %s AND alias = 'champion'", (MODEL,))
            assert [str(v) for (v,) in cur.fetchall()] == [champion.version]
    finally:
        conn.close()
