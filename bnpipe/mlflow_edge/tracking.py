"""Tracking: the MLflow layout of an experiment.

- One experiment, created once, upstream of the parallel training tasks.
- One parent run per DAG run, found again by its tags, so a retried task reuses it.
- One nested run per variant. A retried training task replaces its earlier run: the earlier one
  is ended as KILLED and soft-deleted (restorable in the MLflow UI), so each variant keeps
  exactly one active run per DAG run.
- Each run's dataset inputs are the snapshot's splits, ``<dataset>/train``, ``/val`` and ``/test``
  (contexts training, validation, test), with the snapshot's digest.
- Each variant run has one LoggedModel (MLflow 3's model object), its metrics linked to those
  datasets; a retry's earlier attempt loses its model with its run.

Everything goes through ``MlflowClient`` with an explicit run id: parallel tasks share no
global "active run" state.
"""

from __future__ import annotations

import json
import re
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


# The experiment's kind, as MLflow 3 records it ("custom_model_development": machine learning, not GenAI).
# MLflow 3.17's UI no longer opens an experiment by it: the view follows a switch per browser (GenAI or
# Model training, stored in the browser, GenAI unless changed) or the page's query ``workflowType``.
# A bare #/experiments/<id> therefore opens on the GenAI overview ("Detect issues"); bnpipe's links carry
# UI_QUERY, so they open on the training runs (``ui_page``).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
UI_QUERY = "workflowType=machine_learning"


def ui_page(experiment_id: str, run_id: str | None = None) -> str:
    """The MLflow UI's page (the part after the server's address) of an experiment, or of one of its
    runs, in the UI's Model training view: ``#/experiments/<id>[/runs/<run_id>]?workflowType=machine_learning``."""
    return f"#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "") + "?" + UI_QUERY


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


def find_runs(client, experiment_id: str, tags: dict, include_deleted: bool = False) -> list:
    """The runs of ``experiment_id`` carrying every tag of ``tags`` (``{key: value}``), newest first.

    ``include_deleted`` adds the soft-deleted runs (a retried variant's earlier attempts).
    """
    from mlflow.entities import ViewType

    flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    view = ViewType.ALL if include_deleted else ViewType.ACTIVE_ONLY
    return client.search_runs([experiment_id], filter_string=flt, run_view_type=view, max_results=1000)


def start_parent_run(client, experiment_id: str, dag_id: str, dag_run_id: str, link: str, params: dict) -> str:
    """The DAG run's parent run, created on first call and reused afterwards."""
    key = {TAG + "dag_id": dag_id, TAG + "dag_run_id": dag_run_id, TAG + "role": PARENT}
    found = find_runs(client, experiment_id, key)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id
    tags = {**key, TAG + "airflow_link": link, "mlflow.note.content": f"Airflow DAG run: {link}"}
    run = client.create_run(experiment_id, run_name=dag_run_id, tags=tags)
    log_params(client, run.info.run_id, params)
    return run.info.run_id


def _param_value(v) -> str:
    return json.dumps(v) if isinstance(v, dict | list) else str(v)


def log_params(client, run_id: str, params: dict) -> None:
    from mlflow.entities import Param

    items = [Param(k, _param_value(v)) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])


# The snapshot's splits as MLflow datasets: the split's file name -> the context a run records it under
SPLIT_CONTEXTS = {"train": "training", "val": "validation", "test": "test"}


def input_schema(snapshot: dict):
    """The raw model input as an MLflow schema: named double columns for tables, a float32 tensor for images."""
    import numpy as np
    from mlflow.types import ColSpec, Schema, TensorSpec

    shape = snapshot["input_shape"]
    if len(shape) == 1:
        return Schema([ColSpec("double", n) for n in snapshot["feature_names"]])
    return Schema([TensorSpec(np.dtype("float32"), (-1, *shape))])


def split_datasets(snapshot: dict) -> dict:
    """The snapshot's splits as MLflow datasets by context, named ``<dataset>/<split>``.

    Metadata only (``MetaDataset``: no data is read): the source is the snapshot's folder, the
    digest the snapshot's content digest, the schema its raw inputs.
    """
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource

    source, schema = LocalArtifactDatasetSource(snapshot["path"]), input_schema(snapshot)
    return {
        context: MetaDataset(source, name=f"{snapshot['dataset']}/{split}", digest=snapshot["digest"], schema=schema)
        for split, context in SPLIT_CONTEXTS.items()
    }


def dataset_input(dataset, context: str, tags: dict | None = None, rows: int | None = None):
    """``dataset`` (an ``mlflow.data`` dataset) as a run input under ``context``; ``rows`` goes in its profile.

    What ``mlflow.log_input`` builds, for ``MlflowClient.log_inputs``: bnpipe logs through a client
    and an explicit run id, never MLflow's global active run.
    """
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    fields = dataset.to_dict()
    if rows is not None and not fields.get("profile"):
        fields["profile"] = json.dumps({"num_rows": int(rows)})
    tags = [InputTag(k, str(v)) for k, v in (tags or {}).items()] + [InputTag(MLFLOW_DATASET_CONTEXT, context)]
    return DatasetInput(Dataset(**fields), tags=tags)


def log_datasets(client, run_id: str, snapshot: dict, replicate: int | None = None) -> dict:
    """Record the snapshot's splits as the run's dataset inputs (contexts training, validation, test).

    ``replicate``: the seed whose own re-split of the pooled train and validation rows the run
    trained on (``snapshots.replicate_split``), tagged ``bnpipe.replicate`` on those two inputs.
    Returns the datasets by context.
    """
    datasets = split_datasets(snapshot)
    rows = {"training": snapshot.get("n_train"), "validation": snapshot.get("n_val"), "test": snapshot.get("n_test")}
    replicated = {TAG + "replicate": replicate} if replicate is not None else None
    inputs = [
        dataset_input(ds, context, replicated if context != "test" else None, rows[context])
        for context, ds in datasets.items()
    ]
    client.log_inputs(run_id, datasets=inputs)
    return datasets


# --- the variant's model: an MLflow 3 LoggedModel -------------------------------------------------
# Every variant's run owns one LoggedModel (the MLflow UI's Models view lists them all): created
# PENDING before training, linked to its run as an output, holding the compact model.keras, READY
# when saved and FAILED when training diverged or failed. Only the winner's becomes a full pyfunc
# model (``serving.log_model``, called by compare); the rest stay cheap (a few requests each).
MODEL_TYPE = "keras-classifier"
# The metrics that describe the model, by the dataset context they were measured on
MODEL_METRICS = {"training": ("loss", "accuracy"), "validation": ("val_loss", "val_accuracy"),
                 "test": ("test_loss", "test_accuracy")}  # fmt: skip


# MLflow refuses these in a LoggedModel's name; a variant's name has a "." for a learning rate (sgd0.05)
MODEL_NAME_FORBIDDEN = re.compile(r"""[/:.%"']""")


def logged_model_name(variant_name: str) -> str:
    """The LoggedModel's name for a variant: its name with MLflow's forbidden characters as "_"."""
    return MODEL_NAME_FORBIDDEN.sub("_", variant_name)


def create_variant_model(client, experiment_id: str, run_id: str, name: str, params: dict, tags: dict) -> str:
    """A PENDING LoggedModel for the variant trained in ``run_id``; returns its id."""
    params = {k: _param_value(v) for k, v in params.items()}
    tags = {k: str(v) for k, v in tags.items()}
    model = client.create_logged_model(
        experiment_id, name=logged_model_name(name), source_run_id=run_id, tags=tags, params=params,
        model_type=MODEL_TYPE,
    )  # fmt: skip
    return model.model_id


def metric_links(model_id: str, datasets: dict) -> dict:
    """``{metric: (model_id, dataset name, dataset digest)}`` for ``log_metric_rows``: which metrics
    are the model's, and on which of the run's datasets (``log_datasets``) each was measured."""
    return {
        key: (model_id, datasets[context].name, datasets[context].digest)
        for context, keys in MODEL_METRICS.items()
        for key in keys
    }


def finish_variant_model(client, run_id: str, model_id: str, step: int, keras_path: str | None) -> None:
    """Link the model to its run as an output at ``step``; with ``keras_path`` (the saved model) it gets
    that file and becomes READY, without it (training diverged) FAILED."""
    from mlflow.entities import LoggedModelOutput

    if keras_path is not None:
        client.log_model_artifact(model_id, keras_path)
    client.log_outputs(run_id, [LoggedModelOutput(model_id, step=int(step))])
    client.finalize_logged_model(model_id, "READY" if keras_path is not None else "FAILED")


def variant_models(client, experiment_id: str, run_id: str) -> list:
    """The LoggedModels whose source is ``run_id``."""
    return list(client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'"))


def start_variant_run(
    client, experiment_id: str, parent_run_id: str, variant: dict, map_index: int, try_number: int, extra_tags: dict
) -> str:
    """A fresh nested run for this attempt; earlier attempts' runs are KILLED and soft-deleted."""
    key = {TAG + "parent_run_id": parent_run_id, TAG + "variant": variant["name"]}
    for old in find_runs(client, experiment_id, key):
        if old.info.status in ("RUNNING", "SCHEDULED"):
            client.set_terminated(old.info.run_id, status="KILLED")
        client.set_tag(old.info.run_id, TAG + "superseded_by_try", str(try_number))
        client.delete_run(old.info.run_id)
        for model in variant_models(client, experiment_id, old.info.run_id):  # soft-deleted with its run
            client.delete_logged_model(model.model_id)
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
    return find_runs(client, parent.info.experiment_id, {TAG + "parent_run_id": parent_run_id})


def model_name(dataset: str) -> str:
    return f"bnpipe-{dataset}"


def start_dag_run(params: dict, dag_id: str, dag_run_id: str, link: str) -> dict:
    """Create (or find) the experiment and the DAG run's parent run, once, before the fan-out."""
    client = connect()
    experiment_id = ensure_experiment(client)
    parent = start_parent_run(client, experiment_id, dag_id, dag_run_id, link, params)
    return {"experiment_id": experiment_id, "parent_run_id": parent, "tracking_uri": client.tracking_uri}


def record_snapshot(parent_run_id: str, snapshot: dict) -> None:
    """Tag the parent run with the snapshot and log its splits as the run's dataset inputs."""
    client = connect()
    client.set_tag(parent_run_id, TAG + "data_digest", snapshot["digest"])
    client.set_tag(parent_run_id, TAG + "dataset", snapshot["dataset"])
    log_datasets(client, parent_run_id, snapshot)


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


def log_metric_rows(client, run_id: str, rows: list[tuple], links: dict | None = None) -> int:
    """Metrics taken at several steps, ``[(metrics, step), ...]``, in as few requests as possible.
    Returns the timestamp (ms) given to rows without one of their own (``(metrics, step, timestamp)``).

    ``links`` (``metric_links``): the metrics that are also a LoggedModel's, each with its dataset.
    A row sent again with its first timestamp and ``links`` links metrics already logged to the
    model: the store keeps one copy in the run's history (what MLflow's ``log_model`` does).
    """
    from mlflow.entities import Metric

    now, links = int(time.time() * 1000), links or {}
    items = [
        Metric(k, float(v), stamp[0] if stamp else now, int(step), *links.get(k, ()))
        for row, step, *stamp in rows
        for k, v in row.items()
        if v is not None
    ]
    for i in range(0, len(items), 1000):
        client.log_batch(run_id, metrics=items[i : i + 1000])
    return now
