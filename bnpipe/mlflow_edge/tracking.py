"""Tracking: the MLflow layout of an experiment.

- One experiment, created once, upstream of the parallel training tasks.
- One parent run per DAG run, found again by its tags, so a retried task reuses it.
- One nested run per variant. A retried training task replaces its earlier run: the earlier one
  is ended as KILLED and soft-deleted (restorable in the MLflow UI), so each variant keeps
  exactly one active run per DAG run.

Everything goes through ``MlflowClient`` with an explicit run id: parallel tasks share no
global "active run" state.
"""

from __future__ import annotations

import json
import time

from bnpipe.base import settings

TAG = "bnpipe."
PARENT, VARIANT = "parent", "variant"


class TrackingError(RuntimeError):
    """The tracking server cannot be reached or refused a request."""


def _probe(client, uri: str, timeout: float = 5.0) -> None:
    """One quick request: a server's /health endpoint, or a query against a local store.

    MLflow's own HTTP client retries a dead server for minutes; probing with a short timeout
    first lets ``connect`` apply its own, shorter backoff and fail with a clear message.
    """
    if uri.startswith(("http://", "https://")):
        import urllib.request

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(uri.rstrip("/") + "/health", timeout=timeout) as resp:
            resp.read()
    else:
        client.search_experiments(max_results=1)


def connect(uri: str | None = None, attempts: int = 4, first_wait: float = 1.0):
    """An ``MlflowClient`` whose server answered; retries with exponential backoff."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = uri or settings.tracking_uri()
    wait, last = first_wait, None
    for attempt in range(1, attempts + 1):
        try:
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            _probe(client, uri)
            return client
        except (OSError, MlflowException) as exc:  # not answering; anything else (a timeout signal) propagates
            last = exc
            if attempt < attempts:
                time.sleep(wait)
                wait *= 2
    raise TrackingError(
        f"MLflow tracking server at {uri} did not answer after {attempts} attempts: {last}. "
        "Start it (`make up`) or point MLFLOW_TRACKING_URI at a running server."
    )


class Timed:
    """An ``MlflowClient`` whose method calls are timed: ``seconds`` is the wall time spent in MLflow."""

    def __init__(self, client, seconds: float = 0.0):
        self._client, self.seconds = client, seconds

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0

        return timed


# MLflow 3's UI opens an experiment by its kind; without it a training experiment opens on the
# GenAI pages (traces, "Detect issues"). This value makes it open on the training runs.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def ensure_experiment(client, name: str | None = None) -> str:
    """The experiment's id, marked as a model-training experiment; created with a project-local
    artifact root when the store is local."""
    name = name or settings.experiment_name()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        if exp.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:
            client.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
        return exp.experiment_id
    uri = client.tracking_uri
    local_store = uri.startswith(("sqlite:", "file:", "/")) or "://" not in uri
    root = settings.artifact_root() if local_store else None
    try:
        return client.create_experiment(name, artifact_location=root, tags=dict([EXPERIMENT_KIND]))
    except Exception:  # created concurrently, or an answer lost: the error stands unless the experiment is there now
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return ensure_experiment(client, name)


def _find_runs(client, experiment_id: str, tags: dict, include_deleted: bool = False) -> list:
    from mlflow.entities import ViewType

    flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    view = ViewType.ALL if include_deleted else ViewType.ACTIVE_ONLY
    return client.search_runs([experiment_id], filter_string=flt, run_view_type=view, max_results=1000)


def start_parent_run(client, experiment_id: str, dag_id: str, dag_run_id: str, link: str, params: dict) -> str:
    """The DAG run's parent run, created on first call and reused afterwards."""
    key = {TAG + "dag_id": dag_id, TAG + "dag_run_id": dag_run_id, TAG + "role": PARENT}
    found = _find_runs(client, experiment_id, key)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id
    tags = {**key, TAG + "airflow_link": link, "mlflow.note.content": f"Airflow DAG run: {link}"}
    run = client.create_run(experiment_id, run_name=dag_run_id, tags=tags)
    log_params(client, run.info.run_id, params)
    return run.info.run_id


def log_params(client, run_id: str, params: dict) -> None:
    from mlflow.entities import Param

    items = [Param(k, json.dumps(v) if isinstance(v, dict | list) else str(v)) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])


def log_dataset(client, run_id: str, snapshot: dict, context: str = "training") -> None:
    """Record the snapshot as the run's dataset input, with its digest."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import InputTag

    ds = MetaDataset(resolve_dataset_source(snapshot["path"]), name=snapshot["dataset"], digest=snapshot["digest"])
    tag = InputTag(key="mlflow.data.context", value=context)
    from mlflow.entities import DatasetInput

    client.log_inputs(run_id, datasets=[DatasetInput(ds._to_mlflow_entity(), tags=[tag])])


def start_variant_run(
    client, experiment_id: str, parent_run_id: str, variant: dict, map_index: int, try_number: int, extra_tags: dict
) -> str:
    """A fresh nested run for this attempt; earlier attempts' runs are KILLED and soft-deleted."""
    key = {TAG + "parent_run_id": parent_run_id, TAG + "variant": variant["name"]}
    for old in _find_runs(client, experiment_id, key):
        if old.info.status in ("RUNNING", "SCHEDULED"):
            client.set_terminated(old.info.run_id, status="KILLED")
        client.set_tag(old.info.run_id, TAG + "superseded_by_try", str(try_number))
        client.delete_run(old.info.run_id)
    tags = {
        **key,
        **extra_tags,
        TAG + "role": VARIANT,
        TAG + "map_index": str(map_index),
        TAG + "try_number": str(try_number),
        "mlflow.parentRunId": parent_run_id,
    }
    run = client.create_run(experiment_id, run_name=variant["name"], tags=tags)
    return run.info.run_id


def log_metrics(client, run_id: str, metrics: dict, step: int = 0) -> None:
    """All of ``metrics`` in one request."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
    for i in range(0, len(items), 1000):
        client.log_batch(run_id, metrics=items[i : i + 1000])


def variant_runs(client, parent_run_id: str) -> list:
    """The active variant runs under a parent run."""
    parent = client.get_run(parent_run_id)
    return _find_runs(client, parent.info.experiment_id, {TAG + "parent_run_id": parent_run_id})


def model_name(dataset: str) -> str:
    return f"bnpipe-{dataset}"


def start_dag_run(params: dict, dag_id: str, dag_run_id: str, link: str) -> dict:
    """Create (or find) the experiment and the DAG run's parent run, once, before the fan-out."""
    client = connect()
    experiment_id = ensure_experiment(client)
    parent = start_parent_run(client, experiment_id, dag_id, dag_run_id, link, params)
    return {"experiment_id": experiment_id, "parent_run_id": parent, "tracking_uri": client.tracking_uri}


def record_snapshot(parent_run_id: str, snapshot: dict) -> None:
    """Tag the parent run with the snapshot and log it as the run's dataset input."""
    client = connect()
    client.set_tag(parent_run_id, TAG + "data_digest", snapshot["digest"])
    client.set_tag(parent_run_id, TAG + "dataset", snapshot["dataset"])
    log_dataset(client, parent_run_id, snapshot)


def close_dag_run(parent_run_id: str) -> dict:
    """Teardown of a DAG run: no run is left RUNNING, whatever happened to the tasks.

    Variant runs still RUNNING belong to attempts that were killed or timed out without a
    retry: they are ended as KILLED. A parent still RUNNING means compare never finished:
    it is ended as FAILED with the reason.
    """
    client = connect()
    killed = []
    for r in variant_runs(client, parent_run_id):
        if r.info.status in ("RUNNING", "SCHEDULED"):
            client.set_terminated(r.info.run_id, status="KILLED")
            killed.append(r.info.run_id)
    parent = client.get_run(parent_run_id)
    if parent.info.status == "RUNNING":
        reason = parent.data.tags.get(TAG + "failure") or "the DAG run ended before compare finished; see the task logs"
        client.set_tag(parent_run_id, TAG + "failure", reason)
        client.set_terminated(parent_run_id, status="FAILED")
    return {"killed": killed, "parent_status": client.get_run(parent_run_id).info.status}


def fail_parent(parent_run_id: str, reason: str) -> None:
    """Record why the DAG run failed on its parent run, and end it as FAILED."""
    client = connect()
    client.set_tag(parent_run_id, TAG + "failure", reason[:5000])
    client.set_terminated(parent_run_id, status="FAILED")


def log_metric_rows(client, run_id: str, rows: list[tuple[dict, int]]) -> None:
    """Metrics taken at several steps, ``[(metrics, step), ...]``, in as few requests as possible."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, int(step)) for row, step in rows for k, v in row.items() if v is not None]
    for i in range(0, len(items), 1000):
        client.log_batch(run_id, metrics=items[i : i + 1000])
