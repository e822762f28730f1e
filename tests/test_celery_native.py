"""The compose topology without Docker: Airflow's CeleryExecutor on this machine's PostgreSQL and
Redis, two Celery workers as separate processes, and an MLflow server on PostgreSQL.

Each worker has a BNPIPE_HOME of its own, and the scheduler's is a third: they share no disk, as
workers on other hosts would not, so a snapshot reaches a worker only through MLflow's artifact store.

The test creates its own uniquely named databases and claims an empty Redis DB number; it starts
and stops only its own processes (by the PIDs it recorded) and drops / flushes everything at the end.
It skips where PostgreSQL (127.0.0.1:5432, user postgres, trust auth) or Redis (127.0.0.1:6379)
cannot be reached.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest
from dag_fixtures import most_at_once

from bnpipe.operations.local_services import REDIS_HOST, REDIS_PORT, claim_redis_db, pg, pg_url, reachable, redis_db
from bnpipe.operations.local_services import unreachable as unreachable_services

pytestmark = [pytest.mark.services, pytest.mark.integration, pytest.mark.timeout(600)]

DAG_ID = "bnpipe_experiment"
CONF = {"dataset": "breast_cancer", "grid": "smoke", "epochs": 2}
MODEL = "bnpipe-breast_cancer"
CLAIM_KEY = "bnpipe:test-claim"
HEARTBEAT_TIMEOUT = 30  # [scheduler] task_instance_heartbeat_timeout of the test stack, seconds


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


def _private_disk(hidden: list[Path]) -> tuple[str, ...]:
    """A command prefix: the rest runs in a mount namespace of its own with ``hidden`` covered by empty tmpfs."""
    mounts = " && ".join(f"mount -t tmpfs bnpipe-hidden {h}" for h in hidden)
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"workers without a shared disk need mount namespaces (unshare -m): {probe.stderr.decode()[-300:]}")
    return ("unshare", "-m", "--propagation", "private", "sh", "-c", f'{mounts} && exec "$@"', "sh")


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


@dataclass
class Topology:
    """The running stack and what the tests need to find their way in it."""

    stack: object  # bnpipe.operations.stack.Stack
    workers: list[str]
    airflow_db: str
    mlflow_db: str
    redis_db: int
    token: str
    homes: dict[str, Path]  # each worker's BNPIPE_HOME
    timings: dict = field(default_factory=dict)

    def tis(self, run_id: str, task_id: str | None = None) -> list[dict]:
        return self.stack.client.task_instances(DAG_ID, run_id, task_id)

    def mlflow(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.stack.mlflow_url, registry_uri=self.stack.mlflow_url)

    def worker_log(self, hostname: str, lines: int = 60) -> str:
        return self.stack.log_tail(f"celery-worker-{hostname}", lines)

    def diagnostics(self, run_id: str) -> str:
        """What to read when a run did not end as expected: its task states, the scheduler's and workers' logs."""
        tis = [(t["task_id"], t["map_index"], t["state"], t["try_number"], t["hostname"]) for t in self.tis(run_id)]
        logs = "\n".join(f"--- {w}\n{self.worker_log(w, 30)}" for w in self.workers)
        return f"{tis}\n--- scheduler\n{self.stack.log_tail('scheduler', 40)}\n{logs}"


@pytest.fixture(scope="module")
def topology(tmp_path_factory):
    """The native Celery stack, once per module: the plain run and the fault tests share it; torn down at the end."""
    missing = unreachable_services()
    if missing:
        pytest.skip(f"the native Celery test needs {' and '.join(missing)}, which is not reachable")
    from bnpipe.operations.stack import Stack

    token = f"{os.getpid()}_{secrets.token_hex(3)}"
    airflow_db, mlflow_db = f"bnpipe_t_airflow_{token}", f"bnpipe_t_mlflow_{token}"
    workers = [f"bnpipe-w1-{token}", f"bnpipe-w2-{token}"]
    root = tmp_path_factory.mktemp("celery-stack")
    admin = pg()
    created, stack, redis_n = [], None, None
    try:
        for db in (airflow_db, mlflow_db):
            with admin.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{db}"')
            created.append(db)
        redis_n = claim_redis_db(CLAIM_KEY, token)
        if redis_n is None:
            pytest.fail("no empty Redis DB among 1..15 to run the Celery test in; flush a stale one")
        stack = Stack(
            root,
            executor="CeleryExecutor",
            sql_alchemy_conn=pg_url(airflow_db),
            mlflow_backend_uri=pg_url(mlflow_db),
            celery_broker_url=f"redis://{REDIS_HOST}:{REDIS_PORT}/{redis_n}",
            celery_result_backend=pg_url(airflow_db, "db+postgresql+psycopg2"),
            extra_env={
                "BNPIPE_HOME": root / "bnpipe-home",
                "BNPIPE_TRAIN_QUEUE": "train",
                "BNPIPE_TRAIN_CONCURRENCY": 2,
                "BNPIPE_TF_THREADS": 1,
                "BNPIPE_SCHEDULE": "",  # manual runs only: unpausing starts nothing by itself
                # one retry, soon: a task lost with its worker runs again on the other one
                # (the plain run asserts that none of its tasks needed it)
                "BNPIPE_RETRIES": 1,
                "BNPIPE_RETRY_DELAY": 1,
                # a task whose worker died stops heartbeating: failed (then retried) after 30 s, not 300 s
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": HEARTBEAT_TIMEOUT,
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": 5,
                # a task queued while Redis restarts loses its message (Redis keeps nothing): re-queue
                # it after 60 s instead of the default 600 s (seen: a run stalled 10 min, then the next test's)
                "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": 60,
                "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL": 5,
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": "bnpipe.base.settings.hostname",
                # Airflow derives an asyncpg URL for its async engine; the venv has no asyncpg (the official
                # image does). Nothing this DAG uses needs the async engine, so switch it off.
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": "",
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": 1,
                # a worker reserves only the task it runs (Airflow's defaults, pinned: the spread test relies on them)
                "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": 1,
                "AIRFLOW__CELERY__TASK_ACKS_LATE": "True",
            },
        )
        _check_celery_executor_imports(stack.env)
        timings: dict[str, float] = {}
        t0 = time.monotonic()
        stack.start(components=("mlflow", "api-server", "scheduler", "dag-processor"), timeout=240, unpause=(DAG_ID,))
        # no shared disk: each worker its own BNPIPE_HOME, neither the scheduler's (root / "bnpipe-home"), and
        # in a mount namespace of its own where the other worker's home is an empty tmpfs, as on another host
        homes = {w: root / f"worker-home-{i}" for i, w in enumerate(workers, 1)}
        for h in homes.values():
            h.mkdir()
        pids = [
            stack.start_celery_worker(
                w,
                queues=("default", "train"),
                concurrency=1,
                extra_env={"BNPIPE_HOME": homes[w]},
                prefix=_private_disk([h for v, h in homes.items() if v != w]),
            )
            for w in workers
        ]
        assert len(set(pids)) == 2
        for w in workers:
            _wait_worker_ready(stack, w)
        timings["start"] = time.monotonic() - t0
        yield Topology(stack, workers, airflow_db, mlflow_db, redis_n, token, homes, timings)
    finally:
        started = []
        if stack is not None:
            started = [stack.record_of(name) for name in stack.recorded()]
            stack.stop()  # workers first, then the servers; only the PIDs this stack recorded
        for db in reversed(created):
            with admin.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        with admin.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database WHERE datname = ANY(%s)", (created,))
            left_dbs = cur.fetchall()
        admin.close()
        if redis_n is not None:
            with redis_db(redis_n) as r:
                r.flushdb()
    # teardown is part of the contract: an error here fails the module
    alive = [rec["pid"] for rec in started if rec and Path(f"/proc/{rec['pid']}").exists()]
    assert not alive, f"processes of the test stack still running: {alive}"
    assert not left_dbs, f"databases left behind: {left_dbs}"


@pytest.fixture(scope="module")
def celery_run(topology):
    """One plain DAG run on the stack (the smoke grid, 4 variants); yields what the assertions need."""
    stack = topology.stack
    t1 = time.monotonic()
    run_id = stack.client.trigger(DAG_ID, CONF)
    state = stack.client.wait_for_run(DAG_ID, run_id, timeout=300)
    topology.timings["run"] = time.monotonic() - t1
    return {
        "stack": stack,
        "state": state,
        "run_id": run_id,
        "tis": topology.tis(run_id),
        "workers": topology.workers,
        "mlflow_db": topology.mlflow_db,
        "timings": topology.timings,
        "logs": {w: topology.worker_log(w) for w in topology.workers},
        "scheduler_log": stack.log_tail("scheduler", 60),
        "homes": topology.homes,
        "scheduler_home": Path(stack.env["BNPIPE_HOME"]),
    }


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
        "approve",
        "promote",
        "close_runs",
    }
    assert all(t.get("executor") in (None, "CeleryExecutor") for t in tis)
    # the stack allows one retry (for the fault tests below); this run needed none. approve skips itself
    # (approval=auto) and promote with it: a skipped task never started, whatever its try number says
    assert [(t["task_id"], t["map_index"]) for t in tis if t["try_number"] != 1 and t["state"] != "skipped"] == []
    print(
        f"\nnative Celery stack: start {celery_run['timings']['start']:.0f} s, run {celery_run['timings']['run']:.0f} s"
    )


def test_training_variants_shared_by_both_workers(celery_run):
    """Each worker has one slot and reserves no second task (concurrency 1, prefetch multiplier 1, late
    acks: set in the topology), and the DAG queues two training tasks at once (BNPIPE_TRAIN_CONCURRENCY=2).
    So the first two ran on different workers, and no worker ever ran two at once; where the other
    two ran is Celery's choice, not asserted."""
    workers = set(celery_run["workers"])
    train = [t for t in celery_run["tis"] if t["task_id"] == "train"]
    assert len(train) == 4 and all(t["state"] == "success" for t in train)
    placed = [(t["map_index"], t["hostname"], t["queued_when"], t["start_date"], t["end_date"]) for t in train]
    for w in workers:
        assert most_at_once([(t["start_date"], t["end_date"]) for t in train if t["hostname"] == w]) <= 1, placed
    first, second = sorted(train, key=lambda t: datetime.fromisoformat(t["queued_when"]))[:2]
    queued_together = datetime.fromisoformat(second["queued_when"]) < datetime.fromisoformat(first["end_date"])
    assert queued_together, f"the second training task was queued only after the first ended: {placed}"
    assert first["hostname"] != second["hostname"], placed
    # every task ran on one of this test's workers, and the training tasks went through the train queue
    assert {t["hostname"] for t in celery_run["tis"] if t["state"] != "skipped"} <= workers
    assert {t["queue"] for t in train} == {"train"}
    assert {t["queue"] for t in celery_run["tis"] if t["task_id"] != "train"} == {"default"}


def _task_logs(stack, run_id: str) -> dict[str, str]:
    """The run's task logs as the workers wrote them (one Airflow home on this host): {relative path: text}."""
    root = stack.airflow_home / "logs"
    return {
        str(p.relative_to(root)): p.read_text(errors="replace")
        for p in root.rglob("*.log")
        if f"run_id={run_id}" in p.parts
    }


def test_workers_share_no_disk_the_snapshot_travels_through_mlflow(celery_run):
    """Ingest's worker stored the snapshot in its own home and published it; the other worker, whose home
    never saw it, fetched it from the MLflow server (the task log's fetch line) into its cache, verified,
    and trained on it; the scheduler's home holds no snapshot."""
    from bnpipe.core import snapshots

    assert celery_run["state"] == "success"
    homes, tis = celery_run["homes"], celery_run["tis"]
    assert len(set(homes.values()) | {celery_run["scheduler_home"]}) == 3
    (ingest,) = [t for t in tis if t["task_id"] == "ingest"]
    (other,) = set(homes) - {ingest["hostname"]}
    stored = [p.parent for p in (homes[ingest["hostname"]] / "snapshots").glob("*/meta.json")]
    assert len(stored) == 1, stored
    digest = stored[0].name
    cached = homes[other] / "cache" / "snapshots" / digest
    assert snapshots.manifest(cached) == snapshots.manifest(stored[0])  # the same files, byte for byte
    assert not (homes[other] / "snapshots").exists()  # the other worker never ingested
    assert not (homes[ingest["hostname"]] / "cache").exists()  # ingest's worker never fetched
    assert list(celery_run["scheduler_home"].rglob("meta.json")) == []
    assert any(t["hostname"] == other for t in tis if t["task_id"] == "train")

    logs = _task_logs(celery_run["stack"], celery_run["run_id"])
    fetched = [
        (path, line)
        for path, text in logs.items()
        for line in text.splitlines()
        if f"snapshot {digest} fetched from MLflow into" in line
    ]
    assert len(fetched) == 1, (fetched, sorted(logs))  # once per worker that lacked it: later tasks read the cache
    assert str(cached) in fetched[0][1]
    published = [p for p, text in logs.items() if f"snapshot {digest} published to MLflow" in text]
    assert [Path(p).parts[-2] for p in published] == ["task_id=ingest"], published
    line = fetched[0][1]
    print(f"\nsnapshot fetch on {other}: {line[line.index('snapshot ' + digest) :].split(chr(34))[0]}")


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
    conn = pg(celery_run["mlflow_db"])
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT e.name, count(*) FROM runs r JOIN experiments e ON r.experiment_id = e.experiment_id "
                "WHERE r.lifecycle_stage = 'active' GROUP BY e.name"
            )
            # the DAG run's parent and 4 variants; the snapshot's one run, which the workers fetched it from
            assert dict(cur.fetchall()) == {"bnpipe": 5, "bnpipe-snapshots": 1}
            cur.execute("SELECT version FROM registered_model_aliases WHERE name = %s AND alias = 'champion'", (MODEL,))
            assert [str(v) for (v,) in cur.fetchall()] == [champion.version]
    finally:
        conn.close()


# ----------------------------------------------------------------------------- faults
# Each fault test triggers its own small run on the same stack: two variants (one per worker), enough
# epochs that the fault lands while they train. The lost-worker test kills a worker, so it comes last.
FAULT_CONF = {
    "dataset": "breast_cancer",
    "grid": "custom",
    "axes": {"preprocessing": ["standard", "bn_first"]},
    "hidden": [16],
    "epochs": 40,
    "batch_size": 16,
}
REDIS_START = [
    "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", str(REDIS_PORT),
    "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis", "--logfile", "/var/log/redis/ci.log",
]  # fmt: skip


def _wait_until(check, timeout: float, what: str, diagnostics=lambda: ""):
    """``check()``'s first truthy value, polled every 0.5 s; fails with ``what`` and the diagnostics."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout:.0f} s\n{diagnostics()}")
        time.sleep(0.5)


def _variant_runs(topology: Topology, run_id: str) -> list:
    """Every variant run (deleted ones too) under the DAG run's parent run; [] before the parent exists."""
    from mlflow.entities import ViewType

    client = topology.mlflow()
    exp = client.get_experiment_by_name("bnpipe")
    if exp is None:
        return []
    parents = client.search_runs(
        [exp.experiment_id], f"tags.`bnpipe.dag_run_id` = '{run_id}' and tags.`bnpipe.role` = 'parent'"
    )
    if not parents:
        return []
    flt = f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'"
    return client.search_runs([exp.experiment_id], flt, run_view_type=ViewType.ALL, max_results=1000)


def _training(topology: Topology, run_id: str) -> tuple[dict, object] | None:
    """A training task instance that runs now, with its attempt's MLflow run RUNNING in a trainer; else None."""
    running = {(t["map_index"], t["try_number"]): t for t in topology.tis(run_id, "train") if t["state"] == "running"}
    for r in _variant_runs(topology, run_id):
        tags = r.data.tags
        key = (int(tags.get("bnpipe.map_index", -2)), int(tags.get("bnpipe.try_number", 0)))
        if r.info.status == "RUNNING" and "bnpipe.trainer" in tags and key in running:
            return running[key], r
    return None


def _finish_or_clear(topology: Topology, run_id: str, timeout: float = 300) -> tuple[str, list]:
    """The run's end state, and the tasks that failed on the way; a failed run is cleared once and awaited again."""
    stack = topology.stack
    state = stack.client.wait_for_run(DAG_ID, run_id, timeout=timeout)
    if state == "success":
        return state, []
    failed = [(t["task_id"], t["map_index"], t["state"]) for t in topology.tis(run_id) if t["state"] != "success"]
    body = {"dry_run": False, "dag_run_id": run_id, "only_failed": True, "reset_dag_runs": True}
    stack.client.api("POST", f"/dags/{DAG_ID}/clearTaskInstances", body)
    return stack.client.wait_for_run(DAG_ID, run_id, timeout=timeout), failed


def _assert_clean_mlflow(topology: Topology, run_id: str, variants: int) -> None:
    """One active FINISHED run per variant, a FINISHED parent, and no run left RUNNING anywhere."""
    runs = _variant_runs(topology, run_id)
    active = [r for r in runs if r.info.lifecycle_stage == "active"]
    assert len(active) == variants and all(r.info.status == "FINISHED" for r in active), [
        (r.data.tags.get("bnpipe.variant"), r.info.status) for r in active
    ]
    assert not [r.info.run_id for r in runs if r.info.status in ("RUNNING", "SCHEDULED")]
    client = topology.mlflow()
    parent = client.get_run(active[0].data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED", parent.data.tags.get("bnpipe.failure")


def _redis_up() -> bool:
    try:
        return subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "ping"], capture_output=True, text=True,
                              timeout=5).stdout.strip() == "PONG"  # fmt: skip
    except subprocess.TimeoutExpired:
        return False


def _ensure_redis() -> None:
    if not _redis_up():
        subprocess.run(REDIS_START, check=True, timeout=30)
        _wait_until(_redis_up, 30, "answer from the restarted Redis")


def test_redis_restart_mid_run(topology):
    """The broker restarts (empty: Redis keeps nothing on disk) while both variants train; the run still ends well."""
    stack = topology.stack
    run_id = stack.client.trigger(DAG_ID, FAULT_CONF)
    _wait_until(lambda: _training(topology, run_id), 240, "training task", lambda: topology.diagnostics(run_id))
    try:
        subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "shutdown", "nosave"], capture_output=True, timeout=30)
        _wait_until(lambda: not reachable(REDIS_HOST, REDIS_PORT), 30, "Redis shutdown")
    finally:
        _ensure_redis()
    with redis_db(topology.redis_db) as r:
        r.set(CLAIM_KEY, topology.token)  # the claim went with the data: take the DB number again
    state, failed = _finish_or_clear(topology, run_id)
    print(f"\nRedis restart: run {state}; tasks that failed first: {failed or 'none'}")
    logs = {w: (stack.log_dir / f"celery-worker-{w}.log").read_text(errors="replace") for w in topology.workers}
    deaf = [w for w, text in logs.items() if "Connection to broker lost" not in text]
    assert not deaf, f"workers that never lost the broker (did the restart happen?): {deaf}"
    assert state == "success", topology.diagnostics(run_id)
    _assert_clean_mlflow(topology, run_id, variants=2)


def test_postgres_connections_terminated_mid_run(topology):
    """Every connection to the Airflow DB is cut while both variants train; the run still ends well."""
    stack = topology.stack
    run_id = stack.client.trigger(DAG_ID, FAULT_CONF)
    _wait_until(lambda: _training(topology, run_id), 240, "training task", lambda: topology.diagnostics(run_id))
    admin = pg()
    try:
        with admin.cursor() as cur:
            cur.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s "
                "AND pid <> pg_backend_pid()",
                (topology.airflow_db,),
            )
            cut = cur.fetchone()[0]
    finally:
        admin.close()
    assert cut > 0  # the stack's components held connections: the fault really happened
    state, failed = _finish_or_clear(topology, run_id)
    print(f"\nPostgreSQL connections cut ({cut}): run {state}; tasks that failed first: {failed or 'none'}")
    gone = [c for c in ("scheduler", "api-server", "dag-processor") if not stack.alive(c)]
    assert not gone, f"components died with their DB connections: {gone}"
    assert state == "success", topology.diagnostics(run_id)
    _assert_clean_mlflow(topology, run_id, variants=2)


def test_lost_worker_task_retried_on_the_other(topology):
    """SIGKILL a worker (its process group) while it trains: the task runs again on the other worker, the
    killed attempt's MLflow run ends KILLED or FAILED, none stays RUNNING, and no trainer keeps training."""
    from bnpipe.base.procs import start_ticks

    stack = topology.stack
    run_id = stack.client.trigger(DAG_ID, FAULT_CONF)
    ti, attempt = _wait_until(
        lambda: _training(topology, run_id), 240, "training task", lambda: topology.diagnostics(run_id)
    )
    victim = ti["hostname"]
    (survivor,) = set(topology.workers) - {victim}
    rec = stack.record_of(f"celery-worker-{victim}")
    task_runner = ti["pid"]
    trainer_tag = attempt.data.tags["bnpipe.trainer"]
    os.killpg(rec["pid"], signal.SIGKILL)  # the worker and its pool; the task runner has its own group
    t_kill = time.monotonic()
    runner_ticks = start_ticks(task_runner) if task_runner else None
    client = topology.mlflow()

    ended = _wait_until(
        lambda: client.get_run(attempt.info.run_id).info.status != "RUNNING" and time.monotonic(),
        HEARTBEAT_TIMEOUT + 120, "end of the killed attempt's MLflow run", lambda: topology.diagnostics(run_id),
    )  # fmt: skip
    state = stack.client.wait_for_run(DAG_ID, run_id, timeout=300)
    runner_left = task_runner and start_ticks(task_runner) == runner_ticks and runner_ticks is not None
    print(
        f"\nlost worker {victim} (task runner pid {task_runner}, trainer '{trainer_tag}'): the attempt's run ended "
        f"{ended - t_kill:.0f} s after the kill; run {state} {time.monotonic() - t_kill:.0f} s after it; "
        f"task runner still alive: {bool(runner_left)}"
    )
    assert state == "success", topology.diagnostics(run_id)
    (retried,) = [t for t in topology.tis(run_id, "train") if t["map_index"] == ti["map_index"]]
    assert (retried["state"], retried["try_number"], retried["hostname"]) == ("success", 2, survivor)

    # the trainer stopped mid-fit on its own (the task hung up), long before Airflow could retry the task
    first = client.get_run(attempt.info.run_id)
    epochs_logged = len(client.get_metric_history(first.info.run_id, "val_accuracy"))
    assert first.info.status in ("KILLED", "FAILED"), first.info.status
    assert ended - t_kill < HEARTBEAT_TIMEOUT and epochs_logged < FAULT_CONF["epochs"], (ended - t_kill, epochs_logged)
    assert first.info.lifecycle_stage == "deleted"  # superseded by the retry's run
    _assert_clean_mlflow(topology, run_id, variants=2)
    assert not runner_left, f"the killed worker's task runner {task_runner} still runs"
