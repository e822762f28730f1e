"""Where bnpipe keeps its state, read from the environment with project-local defaults.

Everything lives under ``BNPIPE_HOME`` (default: ``.bnpipe`` in the working directory):
snapshots, the embedded MLflow store and the embedded Airflow home. Each location can be
overridden on its own. Nothing here imports a heavy library.
"""

from __future__ import annotations

import os
from pathlib import Path

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def home() -> Path:
    return Path(os.environ.get("BNPIPE_HOME", ".bnpipe")).resolve()


def data_dir() -> Path:
    """Where ingest stores snapshots, keyed by their digest."""
    return Path(os.environ.get("BNPIPE_DATA_DIR", home() / "snapshots")).resolve()


def allowed_input_dirs() -> list[Path]:
    """Directories that csv/parquet paths from Params may point into (``os.pathsep``-separated)."""
    raw = os.environ.get("BNPIPE_INPUT_DIRS")
    if raw:
        return [Path(p).resolve() for p in raw.split(os.pathsep) if p]
    return [Path.cwd().resolve(), home() / "inbox"]


def allowed_url_schemes() -> tuple[str, ...]:
    return tuple(s for s in os.environ.get("BNPIPE_URL_SCHEMES", "http,https").split(",") if s)


def tracking_uri() -> str:
    """MLflow tracking URI; the embedded default is a SQLite file under BNPIPE_HOME."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{home() / 'mlflow.db'}"


def artifact_root() -> str:
    """Artifact location for new experiments when the tracking store is local (file URI)."""
    return os.environ.get("BNPIPE_ARTIFACT_ROOT", (home() / "mlartifacts").as_uri())


def experiment_name() -> str:
    return os.environ.get("BNPIPE_EXPERIMENT", "bnpipe")


def train_concurrency() -> int:
    """How many training tasks run at once per DAG run (default: one per core)."""
    return max(1, int(os.environ.get("BNPIPE_TRAIN_CONCURRENCY", os.cpu_count() or 1)))


def tf_threads() -> int:
    """TensorFlow intra-op threads per training task, so parallel tasks share the cores."""
    raw = os.environ.get("BNPIPE_TF_THREADS")
    if raw:
        return max(1, int(raw))
    return max(1, (os.cpu_count() or 1) // train_concurrency())


def train_queue() -> str:
    """Executor queue of the training tasks; CeleryExecutor workers subscribe to it (``--queues``).

    The default equals Airflow's ``[operators] default_queue``, so LocalExecutor runs are unaffected.
    """
    return os.environ.get("BNPIPE_TRAIN_QUEUE", "default")


def hostname() -> str:
    """This worker's name in Airflow (``[core] hostname_callable = bnpipe.settings.hostname``).

    ``BNPIPE_HOSTNAME`` tells apart several workers on one host; otherwise the FQDN, as Airflow does.
    """
    import socket

    return os.environ.get("BNPIPE_HOSTNAME") or socket.getfqdn()


def airflow_base_url() -> str:
    """Base URL of the Airflow UI, used for links from MLflow runs back to Airflow."""
    return os.environ.get("AIRFLOW__API__BASE_URL", "http://127.0.0.1:8080").rstrip("/")


def task_retries() -> int:
    """Retries of every DAG task except the ones that fail fast on bad input."""
    return max(0, int(os.environ.get("BNPIPE_RETRIES", "2")))


def retry_delay_seconds() -> float:
    return float(os.environ.get("BNPIPE_RETRY_DELAY", "20"))


def train_timeout_seconds() -> float:
    """execution_timeout of one training task."""
    return float(os.environ.get("BNPIPE_TRAIN_TIMEOUT", "7200"))


def embedded_tracking_uri() -> str:
    """The embedded MLflow store: a SQLite file under BNPIPE_HOME (used when MLFLOW_TRACKING_URI is unset)."""
    return f"sqlite:///{home() / 'mlflow.db'}"
