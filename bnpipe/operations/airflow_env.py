"""The environment of an Airflow that bnpipe runs itself, built in one place for its two setups:
``bnpipe run``'s embedded Airflow (:mod:`bnpipe.operations.cli`: SQLite, LocalExecutor, no servers
but a short-lived api-server for ``--parallel``) and ``make up``'s long-lived services
(:mod:`bnpipe.operations.stack`: an api-server with a login, a scheduler, a dag-processor, a triggerer).

What differs between them is a parameter: the Airflow home, the metadata DB, the executor, the
tracking URI, and for the services their ports, login and Celery broker. Everything else, such as
the DAG folder or the rule for how many task slots the executor has, is the same fact for both.

Only the standard library: nothing here imports Airflow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bnpipe.base import settings
from bnpipe.base.procs import HOST

SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"


def parallelism(scheduler: bool) -> int:
    """``[core] parallelism``: the executor's task slots, across every DAG run it serves.

    One rule for both setups: the training slots (BNPIPE_TRAIN_CONCURRENCY, default one per core)
    plus the slots for what runs beside training. What differs is who enforces the training limit
    (``scheduler``). ``bnpipe run --parallel`` runs the DAG through ``dag.test()``, which hands every
    ready task to the executor and ignores the train task's ``max_active_tis_per_dagrun``: there the
    slots *are* the training limit, and nothing needs to run beside training (the rest of the DAG
    run waits for it). ``make up``'s scheduler enforces that limit itself, and its executor also
    serves the inbox DAG's and the scoring DAG's runs: as many slots again as cores, at least 2, so
    they never wait behind a training grid. (The two setups used to compute max(2, cores) and
    max(4, 2 x cores): the same values by default on two cores or more, but the embedded one let
    ``--parallel`` train one variant per core even when BNPIPE_TRAIN_CONCURRENCY said otherwise.)
    """
    beside = max(2, os.cpu_count() or 1) if scheduler else 0
    return settings.train_concurrency() + beside


def execution_api(port: int, jwt_secret: str) -> dict[str, str]:
    """What tasks need to reach the Task Execution API of an api-server on ``port`` of 127.0.0.1."""
    return {
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://{HOST}:{port}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": jwt_secret,
    }


@dataclass(frozen=True)
class Services:
    """What ``make up``'s long-lived services add: the api-server's port and login, the MLflow UI's URL."""

    api_port: int
    jwt_secret: str
    username: str
    password_file: Path
    mlflow_ui_url: str
    celery_broker_url: str | None = None
    celery_result_backend: str | None = None


def airflow_env(
    *,
    home: Path,
    airflow_home: Path,
    db_url: str,
    executor: str,
    tracking_uri: str,
    services: Services | None = None,
) -> dict[str, str]:
    """The variables bnpipe sets for an Airflow of its own; ``services=None`` for the embedded setup.

    The caller decides what they replace: the embedded setup lets the shell's BNPIPE_HOME,
    MLFLOW_TRACKING_URI and TF_CPP_MIN_LOG_LEVEL win; the stack gives its components exactly these.
    """
    env = {
        "BNPIPE_HOME": str(home),
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(settings.repo_dir("dags")),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": executor,
        "AIRFLOW__CORE__PARALLELISM": str(parallelism(scheduler=services is not None)),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        # A task's supervisor (every executor runs one per task) notices its task process has exited
        # only at its next heartbeat check, at most this often (default 5 s): once the task's sockets
        # have closed it sleeps the whole interval, so each task held its executor slot (or Celery
        # worker) ~5 s after it ended. 1 s: the tail is at most 1 s, for one heartbeat a second per running task.
        "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
    }
    if services is None:
        return env
    s = services
    api_url = f"http://{HOST}:{s.api_port}"
    env.update({
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(settings.repo_dir("plugins")),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{s.username}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(s.password_file),
        **execution_api(s.api_port, s.jwt_secret),
        "AIRFLOW__API__HOST": HOST,
        "AIRFLOW__API__PORT": str(s.api_port),
        "AIRFLOW__API__BASE_URL": api_url,
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        # the scheduler's nap when a loop found nothing to do (default 1 s): each task of a run
        # waits up to that long to be scheduled after its upstream ends; 0.2 s cut a DAG run's wall time
        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",
        "BNPIPE_MLFLOW_UI_URL": s.mlflow_ui_url,
    })  # fmt: skip
    if s.celery_broker_url:
        env["AIRFLOW__CELERY__BROKER_URL"] = s.celery_broker_url
    if s.celery_result_backend:
        env["AIRFLOW__CELERY__RESULT_BACKEND"] = s.celery_result_backend
    return env
