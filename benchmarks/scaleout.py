"""Row 10: Celery scale-out, one worker on one core against two workers on one core each.

``python -m benchmarks.scaleout --out FILE`` (``--smoke`` for tiny sizes, ``--config JSON`` to
override them) builds the topology of ``tests/test_celery_native.py`` afresh: Airflow's
CeleryExecutor on this machine's PostgreSQL (127.0.0.1:5432, user postgres, trust auth) and Redis
(127.0.0.1:6379), an MLflow server on PostgreSQL. It creates two uniquely named databases and
claims an empty Redis DB number, and drops / flushes them at the end; it starts and stops only its
own processes, by the PIDs its :class:`bnpipe.operations.stack.Stack` recorded.

Each repetition runs the same DAG run twice, in turns (which arm goes first alternates):

- ``one``: one Celery worker under ``taskset -c <core 0>``;
- ``two``: two workers, under ``taskset -c <core 0>`` and ``taskset -c <core 1>``.

Every arm starts fresh workers, each with a ``BNPIPE_HOME`` of its own (so cold warm trainers and
an empty snapshot cache), concurrency 1 and no prefetching beyond the task it runs; the warm
trainers they start inherit the worker's core. The DAG is the same in both arms:
``BNPIPE_TRAIN_CONCURRENCY`` is twice the two-worker arm's slots, ``BNPIPE_TF_THREADS=1``. So in
both arms training tasks wait in Redis while others run, and a worker that finishes takes the next
without waiting for the scheduler to queue it. What a worker spends without a training task is
reported (``idle_seconds``: most of it was Airflow's 5 s supervisor check after each task, now 1 s).
The scheduler, the api-server, the dag-processor and the MLflow server are not pinned: they share
the two cores with the workers, and the CPU time they use during each DAG run is reported
(``control_cpu_seconds``, their process groups' user and system time).

Throughput is the training phase's: the ``train`` task instances' count over the time from the
first one's start to the last one's end (Airflow's start and end dates), per minute.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from benchmarks.common import rotated, summary
from bnpipe.base import procs
from bnpipe.operations import local_services as services

CLAIM_KEY = "bnpipe:bench-claim"
ARMS = {"one": 1, "two": 2}  # arm: workers
TARGET = 1.8  # two workers' throughput / one worker's


class Unavailable(RuntimeError):
    """What the row needs (PostgreSQL, Redis, taskset, two cores) is not there."""


def missing() -> list[str]:
    """What this machine lacks for the row, as sentences; empty when it can run."""
    out = [f"{service} is not reachable" for service in services.unreachable()]
    if shutil.which("taskset") is None:
        out.append("taskset (util-linux) is not installed")
    if len(os.sched_getaffinity(0)) < 2:
        out.append(f"this process may use {len(os.sched_getaffinity(0))} core(s); the row pins workers to two")
    return out


def _claim_redis_db(token: str) -> int:
    n = services.claim_redis_db(CLAIM_KEY, token)
    if n is None:
        raise Unavailable(f"no empty Redis DB among 1..15 at {services.REDIS_HOST}:{services.REDIS_PORT}; flush one")
    return n


def _stack(root: Path, airflow_db: str, mlflow_db: str, redis_n: int):
    from bnpipe.operations.stack import Stack

    return Stack(
        root,
        executor="CeleryExecutor",
        sql_alchemy_conn=services.pg_url(airflow_db),
        mlflow_backend_uri=services.pg_url(mlflow_db),
        celery_broker_url=f"redis://{services.REDIS_HOST}:{services.REDIS_PORT}/{redis_n}",
        celery_result_backend=services.pg_url(airflow_db, "db+postgresql+psycopg2"),
        extra_env={
            "BNPIPE_HOME": root / "home-scheduler",
            "BNPIPE_TRAIN_QUEUE": "train",
            # a training slot per worker of the larger arm and one task queued behind each: a worker that
            # finishes takes the next task from Redis at once instead of waiting for the scheduler to queue one
            "BNPIPE_TRAIN_CONCURRENCY": 2 * max(ARMS.values()),
            "BNPIPE_TF_THREADS": 1,  # a worker has one core
            "BNPIPE_SCHEDULE": "",  # manual runs only
            "BNPIPE_RETRIES": 0,  # a failed task fails the measurement instead of hiding in a retry
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "bnpipe.base.settings.hostname",
            # Airflow derives an asyncpg URL for its async engine; the venv has no asyncpg, and the DAG needs none
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": "",
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": 1,
            # a worker reserves only the task it runs: the queued ones go to whichever worker is free
            "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": 1,
            "AIRFLOW__CELERY__TASK_ACKS_LATE": "True",
        },
    )


def _wait_ready(stack, hostname: str, timeout: float = 180) -> None:
    """Until the worker's log says Celery is ready ("celery@<hostname> ready.")."""
    name = f"celery-worker-{hostname}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not stack.alive(name):
            raise RuntimeError(f"Celery worker {hostname} exited:\n{stack.log_tail(name)}")
        if f"{hostname} ready." in stack.log_tail(name, 200):
            return
        time.sleep(1)
    raise RuntimeError(f"Celery worker {hostname} not ready after {timeout:.0f} s:\n{stack.log_tail(name)}")


def _ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def training_phase(tis: list[dict]) -> dict:
    """Throughput and per-worker occupancy of a DAG run's ``train`` task instances."""
    train = [t for t in tis if t["task_id"] == "train"]
    spans = [(_ts(t["start_date"]), _ts(t["end_date"]), t["hostname"]) for t in train]
    first, last = min(a for a, _, _ in spans), max(b for _, b, _ in spans)
    seconds = last - first
    workers = {}
    for host in sorted({h for _, _, h in spans}):
        mine = sorted((a, b) for a, b, h in spans if h == host)
        overlap = any(b0 > a1 for (_, b0), (a1, _) in zip(mine, mine[1:]))
        busy = sum(b - a for a, b in mine)
        workers[host] = {"tasks": len(mine), "busy_seconds": busy, "idle_seconds": seconds - busy, "overlap": overlap}
    return {
        "variants": len(train),
        "seconds": seconds,
        "variants_per_minute": 60 * len(train) / seconds,
        "task_seconds_median": statistics.median(b - a for a, b, _ in spans),
        "workers": workers,
    }


def _control_groups(stack) -> dict[str, int]:
    """The process groups of the stack's control plane, by component: every one but the Celery workers."""
    records = {name: stack.record_of(name) for name in stack.recorded() if not name.startswith("celery-worker")}
    return {name: r["pid"] for name, r in records.items() if r}


def arm_run(stack, arm: str, cores: list[int], conf: dict, tag: str, timeout: float) -> dict:
    """Fresh workers for ``arm``, pinned one per core; one DAG run on them; the workers stopped again."""
    from bnpipe.operations import warm
    from bnpipe.operations.stack import EXPERIMENT_DAG

    names = [f"bnpipe-bench-{tag}-{arm}-w{i}" for i in range(1, ARMS[arm] + 1)]
    homes = {name: stack.root / f"home-{name}" for name in names}
    started = []
    try:
        pids = {}
        for name, core in zip(names, cores):
            homes[name].mkdir()
            pids[name] = stack.start_celery_worker(
                name, concurrency=1, extra_env={"BNPIPE_HOME": homes[name]}, prefix=("taskset", "-c", str(core))
            )
            started.append(name)
        for name in names:
            _wait_ready(stack, name)
        pins = {name: sorted(os.sched_getaffinity(pid)) for name, pid in pids.items()}  # taskset has exec'd by now
        load = os.getloadavg()
        control = _control_groups(stack)
        cpu0, t0 = procs.groups_cpu_seconds(control.values()), time.monotonic()
        run_id = stack.client.trigger(EXPERIMENT_DAG, conf)
        state = stack.client.wait_for_run(EXPERIMENT_DAG, run_id, timeout=timeout)
        run_seconds = time.monotonic() - t0
        cpu1 = procs.groups_cpu_seconds(control.values())
        cpu = {name: cpu1[pgid] - cpu0[pgid] for name, pgid in control.items()}
        tis = stack.client.task_instances(EXPERIMENT_DAG, run_id)
        if state != "success":
            failed = [(t["task_id"], t["map_index"], t["state"], t["hostname"]) for t in tis if t["state"] != "success"]
            logs = "\n".join(f"--- {n}\n{stack.log_tail(f'celery-worker-{n}', 30)}" for n in names)
            raise RuntimeError(f"benchmark DAG run {run_id} ended {state}: {failed}\n{logs}\nlogs: {stack.log_dir}")
        phase = training_phase(tis)
        # the warm trainers the training tasks started: they inherit their worker's core
        trainers = {name: [sorted(os.sched_getaffinity(t["pid"])) for t in warm.running(homes[name])] for name in names}
        strangers = set(phase["workers"]) - set(names)
        if strangers:
            raise RuntimeError(f"training tasks of {run_id} ran on workers not of this arm: {sorted(strangers)}")
        return {"arm": arm, "run_id": run_id, "run_seconds": run_seconds, "pinned": pins, "trainers_pinned": trainers,
                "control_cpu_seconds": sum(cpu.values()), "control_cpu_by_component": cpu,
                "load_before": load, "load_after": os.getloadavg(), **phase}  # fmt: skip
    finally:
        for name in started:
            stack.stop_celery_worker(name)


def measure(cfg: dict) -> dict:
    """Build the Celery topology, run the arms ``cfg["reps"]`` times interleaved, tear everything down."""
    from bnpipe.operations import params as spec
    from bnpipe.operations.stack import EXPERIMENT_DAG

    if reasons := missing():
        raise Unavailable("; ".join(reasons))
    conf = cfg["conf"]
    variants = len(spec.variant_dicts(spec.validate(conf)))
    cores = sorted(os.sched_getaffinity(0))[:2]
    token = f"{os.getpid()}_{secrets.token_hex(3)}"
    airflow_db, mlflow_db = f"bnpipe_b_airflow_{token}", f"bnpipe_b_mlflow_{token}"
    work = Path(tempfile.mkdtemp(prefix="bnpipe-scaleout-"))
    admin = services.pg()
    created, redis_n, stack, recorded, done = [], None, None, [], False
    t0 = time.monotonic()
    try:
        for db in (airflow_db, mlflow_db):
            with admin.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{db}"')
            created.append(db)
        redis_n = _claim_redis_db(token)
        stack = _stack(work / "stack", airflow_db, mlflow_db, redis_n)
        components = ("mlflow", "api-server", "scheduler", "dag-processor")
        stack.start(components=components, timeout=cfg.get("start_timeout", 600), unpause=(EXPERIMENT_DAG,))
        start_seconds = time.monotonic() - t0
        runs = {arm: [] for arm in ARMS}
        for rep in range(cfg["reps"]):
            for arm in rotated(list(ARMS), rep):
                out = arm_run(stack, arm, cores, conf, f"{token}-r{rep}", cfg.get("run_timeout", 3600))
                runs[arm].append(out)
        done = True
    finally:
        if stack is not None:
            recorded = [stack.record_of(name) for name in stack.recorded()]
            stack.stop()  # workers first, then the servers; only the PIDs this stack recorded
        for db in reversed(created):
            with admin.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.close()
        if redis_n is not None:
            with services.redis_db(redis_n) as r:
                r.flushdb()
        if done:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"benchmarks.scaleout: the stack's logs are kept in {work / 'stack' / 'logs'}", file=sys.stderr)
    alive = [rec["pid"] for rec in recorded if rec and Path(f"/proc/{rec['pid']}").exists()]
    if alive:
        raise RuntimeError(f"processes of the benchmark's stack still running after stop: {alive}")
    ratio = [b["variants_per_minute"] / a["variants_per_minute"] for a, b in zip(runs["one"], runs["two"])]
    return {
        "variants": variants,
        "conf": conf,
        "reps": cfg["reps"],
        "cores": cores,
        "cpu": _cpu_model(),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "train_concurrency": max(ARMS.values()),
        "tf_threads": 1,
        "stack_start_seconds": start_seconds,
        "total_seconds": time.monotonic() - t0,
        "runs": runs,
        "one": _arm_summary(runs["one"]),
        "two": _arm_summary(runs["two"]),
        "ratio": ratio,
        "ratio_median": summary(ratio)["median"],
        "target": TARGET,
    }


def _arm_summary(runs: list[dict]) -> dict:
    return {
        "seconds": summary([r["seconds"] for r in runs])["median"],
        "variants_per_minute": summary([r["variants_per_minute"] for r in runs])["median"],
    }


def _cpu_model() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    return next((line.split(":", 1)[1].strip() for line in lines if "model name" in line), "unknown")


def main(argv: list[str] | None = None) -> int:
    from benchmarks.run import SIZES

    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaleout", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the harness, not the numbers")
    parser.add_argument("--config", default="{}", help="JSON overriding the size's keys (conf, reps, ...)")
    parser.add_argument("--out", required=True, help="JSON result")
    args = parser.parse_args(argv)
    cfg = {**SIZES["smoke" if args.smoke else "full"]["scaleout"], **json.loads(args.config)}
    try:
        result = measure(cfg)
    except Unavailable as exc:
        print(f"benchmarks.scaleout: cannot run here: {exc}", file=sys.stderr)
        return 2
    Path(args.out).write_text(json.dumps(result, indent=1))
    one, two = result["one"], result["two"]
    print(
        f"{result['variants']} variants: one worker {one['variants_per_minute']:.2f}/min ({one['seconds']:.0f} s), "
        f"two workers {two['variants_per_minute']:.2f}/min ({two['seconds']:.0f} s), "
        f"ratio {result['ratio_median']:.2f} (target >= {TARGET}); written to {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
