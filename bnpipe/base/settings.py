"""Configuration: every environment variable bnpipe reads, with its default and its one-line doc.

``VARIABLES`` is the one source: the functions below read through ``get``, and
``docs/configuration.md`` is generated from it (``python -m bnpipe.base.settings``; a test checks that
the file is current and that no other module reads ``os.environ``). Everything lives under
``BNPIPE_HOME`` (default: ``.bnpipe`` in the working directory): snapshots, the embedded MLflow
store and the embedded Airflow home; each location can be overridden on its own. Nothing here
imports a heavy library.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class Variable:
    name: str
    default: str | None  # None: unset unless given; the doc says what that means
    doc: str
    group: str


VARIABLES: dict[str, Variable] = {
    v.name: v
    for v in (
        Variable("BNPIPE_HOME", ".bnpipe", "Where bnpipe keeps its state: snapshots, the embedded MLflow store and "
                 "Airflow home, warm trainers' sockets, logs.", "locations"),
        Variable("BNPIPE_DATA_DIR", None, "Snapshots, one folder per content digest (default: $BNPIPE_HOME/snapshots).",
                 "locations"),
        Variable("BNPIPE_SNAPSHOT_CACHE", None, "Snapshots a worker fetched from MLflow's artifact store, one folder "
                 "per digest: workers need no shared disk (default: $BNPIPE_HOME/cache/snapshots).", "locations"),
        Variable("BNPIPE_INPUT_DIRS", None, "Directories (os.pathsep-separated) that csv/parquet paths from Params may "
                 "point into (default: the working directory and $BNPIPE_HOME/inbox).", "locations"),
        Variable("BNPIPE_ALLOW_ANY_PATH", "0", "1: accept any local path as data_path (trusted single-user setups).",
                 "locations"),
        Variable("BNPIPE_URL_SCHEMES", "http,https", "URL schemes a data_path may use; empty: no URLs.", "locations"),
        Variable("BNPIPE_INBOX", None, "The folder the inbox DAG watches (default: $BNPIPE_HOME/inbox).",
                 "locations"),
        Variable("BNPIPE_FASHION_MNIST_DIR", None, "IDX files of Fashion-MNIST, if not in Debian's "
                 f"{FASHION_MNIST_DIR}.", "locations"),
        Variable("MLFLOW_TRACKING_URI", None, "MLflow tracking server or store (default: SQLite "
                 "$BNPIPE_HOME/mlflow.db).", "mlflow"),
        Variable("BNPIPE_ARTIFACT_ROOT", None, "Artifact location of new experiments on a local store (default: "
                 "$BNPIPE_HOME/mlartifacts).", "mlflow"),
        Variable("BNPIPE_EXPERIMENT", "bnpipe", "The MLflow experiment of the training runs.", "mlflow"),
        Variable("BNPIPE_MLFLOW_UI_URL", None, "MLflow UI for the Airflow plugin's links (default: the tracking URI "
                 "when it is http).", "mlflow"),
        Variable("BNPIPE_SCHEDULE", "@weekly", "Schedule of the experiment DAG; empty: manual and data-triggered "
                 "only.", "airflow"),
        Variable("BNPIPE_SCORE_SCHEDULE", None, "Time schedule of the scoring DAG (cron or preset, e.g. @daily); "
                 "unset: none.", "airflow"),
        Variable("BNPIPE_SCORE_ON_CHAMPION", "1", "1: the scoring DAG also runs whenever a training run moves a "
                 "champion, and scores that data set's files in BNPIPE_SCORE_INBOX with the new version; 0: only "
                 "by hand and on BNPIPE_SCORE_SCHEDULE.", "airflow"),
        Variable("BNPIPE_SCORE_INBOX", None, "Where the scoring DAG finds files to score when no input_path is "
                 "given: a folder per data set, named like the dataset Param, of csv or parquet files (default: "
                 "$BNPIPE_INBOX/score).", "locations"),
        Variable("BNPIPE_RETRIES", "2", "Retries of every task except the ones that fail fast on bad input.",
                 "airflow"),
        Variable("BNPIPE_RETRY_DELAY", "20", "Seconds before the first retry (then exponential backoff).",
                 "airflow"),
        Variable("BNPIPE_TRAIN_TIMEOUT", "7200", "Seconds one training task may run (execution_timeout).", "airflow"),
        Variable("BNPIPE_TRAIN_QUEUE", "default", "Executor queue of the training tasks; Celery workers subscribe "
                 "to it.", "airflow"),
        Variable("BNPIPE_HOSTNAME", None, "This worker's name in Airflow (default: the FQDN), to tell apart several "
                 "workers on one host.", "airflow"),
        Variable("AIRFLOW__API__BASE_URL", "http://127.0.0.1:8080", "Base URL of the Airflow UI, for the links from "
                 "MLflow runs back to Airflow.", "airflow"),
        Variable("BNPIPE_TRAIN_CONCURRENCY", None, "Training tasks at once per DAG run (default: one per core).",
                 "training"),
        Variable("BNPIPE_TF_THREADS", None, "TensorFlow threads per training task (default: cores / concurrency).",
                 "training"),
        Variable("BNPIPE_WARM_TRAINERS", "1", "0: train in the task process instead of a reused warm trainer.",
                 "training"),
        Variable("BNPIPE_WARM_IDLE", "600", "Seconds an idle warm trainer waits for work before it exits.",
                 "training"),
        Variable("BNPIPE_WARM_MAX_RSS_MB", "4096", "A warm trainer over this resident size exits after its job.",
                 "training"),
    )
}  # fmt: skip


PACKAGE_DIR = Path(__file__).resolve().parents[1]  # bnpipe/


def repo_dir(name: str) -> Path:
    """``dags/`` or ``plugins/`` next to the package (an editable install or a checkout), else in the cwd."""
    here = PACKAGE_DIR.parent / name
    return here if here.is_dir() else Path.cwd() / name


def get(name: str) -> str | None:
    """The variable's value from the environment, else its default (None when it has none)."""
    return os.environ.get(name, VARIABLES[name].default)


def home() -> Path:
    return Path(get("BNPIPE_HOME")).resolve()


def data_dir() -> Path:
    """Where ingest stores snapshots, keyed by their digest."""
    return Path(get("BNPIPE_DATA_DIR") or home() / "snapshots").resolve()


def snapshot_cache_dir() -> Path:
    """Where this worker keeps snapshots it fetched from MLflow (``bnpipe.mlflow_edge.snapshot_store``)."""
    return Path(get("BNPIPE_SNAPSHOT_CACHE") or home() / "cache" / "snapshots").resolve()


def allowed_input_dirs() -> list[Path]:
    """Directories that csv/parquet paths from Params may point into (``os.pathsep``-separated)."""
    raw = get("BNPIPE_INPUT_DIRS")
    if raw:
        return [Path(p).resolve() for p in raw.split(os.pathsep) if p]
    return [Path.cwd().resolve(), home() / "inbox"]


def allow_any_path() -> bool:
    return get("BNPIPE_ALLOW_ANY_PATH") == "1"


def allowed_url_schemes() -> tuple[str, ...]:
    return tuple(s for s in (get("BNPIPE_URL_SCHEMES") or "").split(",") if s)


def inbox_dir() -> Path:
    return Path(get("BNPIPE_INBOX") or home() / "inbox").resolve()


def score_inbox() -> Path:
    """Where the scoring DAG finds files to score when no input_path is given: one folder per data set."""
    return Path(get("BNPIPE_SCORE_INBOX") or inbox_dir() / "score").resolve()


def fashion_mnist_dirs() -> list[Path]:
    """Where to look for Fashion-MNIST's IDX files, in order."""
    return [Path(p) for p in (get("BNPIPE_FASHION_MNIST_DIR"), FASHION_MNIST_DIR) if p]


def tracking_uri() -> str:
    """MLflow tracking URI; the embedded default is a SQLite file under BNPIPE_HOME."""
    return get("MLFLOW_TRACKING_URI") or embedded_tracking_uri()


def embedded_tracking_uri() -> str:
    """The embedded MLflow store: a SQLite file under BNPIPE_HOME (used when MLFLOW_TRACKING_URI is unset)."""
    return f"sqlite:///{home() / 'mlflow.db'}"


def artifact_root() -> str:
    """Artifact location for new experiments when the tracking store is local (file URI)."""
    return get("BNPIPE_ARTIFACT_ROOT") or (home() / "mlartifacts").as_uri()


def experiment_name() -> str:
    return get("BNPIPE_EXPERIMENT")


def mlflow_ui_url() -> str:
    """The MLflow UI the plugin links to: BNPIPE_MLFLOW_UI_URL, else an http tracking URI, else ''."""
    ui = get("BNPIPE_MLFLOW_UI_URL") or get("MLFLOW_TRACKING_URI") or ""
    return ui.rstrip("/") if ui.startswith(("http://", "https://")) else ""


def schedule() -> str | None:
    """The experiment DAG's schedule; None (empty variable): manual and data-triggered only."""
    return get("BNPIPE_SCHEDULE") or None


def score_schedule() -> str | None:
    """The scoring DAG's time schedule; None: none (it may still run on a new champion)."""
    return get("BNPIPE_SCORE_SCHEDULE") or None


def score_on_champion() -> bool:
    """Whether the scoring DAG runs when a training run moves a champion (an asset event)."""
    return get("BNPIPE_SCORE_ON_CHAMPION") != "0"


def train_concurrency() -> int:
    """How many training tasks run at once per DAG run (default: one per core)."""
    return max(1, int(get("BNPIPE_TRAIN_CONCURRENCY") or os.cpu_count() or 1))


def tf_threads() -> int:
    """TensorFlow intra-op threads per training task, so parallel tasks share the cores."""
    raw = get("BNPIPE_TF_THREADS")
    if raw:
        return max(1, int(raw))
    return max(1, (os.cpu_count() or 1) // train_concurrency())


def train_queue() -> str:
    """Executor queue of the training tasks; CeleryExecutor workers subscribe to it (``--queues``).

    The default equals Airflow's ``[operators] default_queue``, so LocalExecutor runs are unaffected.
    """
    return get("BNPIPE_TRAIN_QUEUE")


def hostname() -> str:
    """This worker's name in Airflow (``[core] hostname_callable = bnpipe.base.settings.hostname``).

    ``BNPIPE_HOSTNAME`` tells apart several workers on one host; otherwise the FQDN, as Airflow does.
    """
    import socket

    return get("BNPIPE_HOSTNAME") or socket.getfqdn()


def airflow_base_url() -> str:
    """Base URL of the Airflow UI, used for links from MLflow runs back to Airflow."""
    return get("AIRFLOW__API__BASE_URL").rstrip("/")


def task_retries() -> int:
    """Retries of every DAG task except the ones that fail fast on bad input."""
    return max(0, int(get("BNPIPE_RETRIES")))


def retry_delay_seconds() -> float:
    return float(get("BNPIPE_RETRY_DELAY"))


def train_timeout_seconds() -> float:
    """execution_timeout of one training task."""
    return float(get("BNPIPE_TRAIN_TIMEOUT"))


def warm_trainers_enabled() -> bool:
    return get("BNPIPE_WARM_TRAINERS") != "0"


def warm_idle_seconds() -> float:
    return float(get("BNPIPE_WARM_IDLE"))


def warm_max_rss_mb() -> float:
    return float(get("BNPIPE_WARM_MAX_RSS_MB"))


def configuration_markdown() -> str:
    """docs/configuration.md: every variable, grouped, with its default and doc."""
    titles = {"locations": "Where things are", "mlflow": "MLflow", "airflow": "Airflow and the DAGs",
              "training": "Training"}  # fmt: skip
    out = [
        "# Configuration",
        "Environment variables bnpipe reads, generated from `bnpipe/base/settings.py` "
        "(`python -m bnpipe.base.settings`). "
        "`bnpipe run`'s embedded Airflow ignores the shell's `AIRFLOW_HOME` and `AIRFLOW__*` (see `bnpipe --help`).",
    ]
    for group, title in titles.items():
        out += [f"## {title}", "| variable | default | what it does |", "|---|---|---|"]
        for v in VARIABLES.values():
            if v.group == group:
                default = f"`{v.default}`" if v.default not in (None, "") else "–"
                out.append(f"| `{v.name}` | {default} | {v.doc.replace('|', '/')} |")
    return "\n\n".join(out[:2]) + "\n\n" + _join_tables(out[2:]) + "\n"


def _join_tables(lines: list[str]) -> str:
    text, block = [], []
    for line in lines:
        if line.startswith("## "):
            if block:
                text.append("\n".join(block))
            block = [line + "\n"]
        else:
            block.append(line)
    text.append("\n".join(block))
    return "\n\n".join(text)


if __name__ == "__main__":
    print(configuration_markdown(), end="")
