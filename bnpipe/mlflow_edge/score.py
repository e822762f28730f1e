"""Score: batch predictions with the registered champion, ``models:/bnpipe-<dataset>@champion``.

``score_file`` is what the scoring DAG's task and ``bnpipe score`` both call. It reads a csv or
parquet file (a path inside the allowed input directories, or an http(s) URL: the same checks
as ingest), checks its columns against the champion's signature, feeds the raw values to the
MLflow pyfunc model (scaling is a layer inside it; nothing is scaled here) and writes
``<stem>.predictions.<csv|parquet>`` next to the input, one row per input row:
``row_id``, ``predicted_class``, ``proba_<class>``..., ``model_name``, ``model_version``.
Each scoring is one run in the MLflow experiment ``bnpipe-scoring``.
"""

from __future__ import annotations

import re
import time
import urllib.parse
from pathlib import Path

from bnpipe.base import settings
from bnpipe.core import validation
from bnpipe.mlflow_edge import tracking
from bnpipe.mlflow_edge.champion import ALIAS

EXPERIMENT = "bnpipe-scoring"
SCORING_CONTEXT = "scoring"  # the scored file's context among the scoring run's inputs
ROW_ID = "row_id"

PARAMS: dict[str, dict] = {
    "dataset": {
        "default": "fashion_mnist",
        "type": "string",
        "pattern": "^[A-Za-z0-9_-]+$",
        "title": "Dataset",
        "description": "Whose champion scores the file: the model bnpipe-<dataset> (the training DAG's dataset Param).",
    },
    "input_path": {
        "default": "",
        "type": "string",
        "title": "Input file",
        "description": "The csv or parquet file to score: a path inside the allowed input directories "
        "(BNPIPE_INPUT_DIRS) or an http(s) URL. Its columns must be the champion's raw feature columns.",
    },
    "id_column": {
        "default": None,
        "type": ["null", "string"],
        "title": "Row id column",
        "description": "A column that identifies rows; copied to row_id and not fed to the model. "
        "Empty: row_id is the row's 0-based position in the file.",
    },
}


class ScoringError(ValueError):
    """Input that no retry can fix: the message says what is wrong and what to do."""


class NoChampion(ScoringError):
    """No version of ``bnpipe-<dataset>`` holds the alias yet."""


class SignatureMismatch(ScoringError):
    """The input's columns are not the champion's raw feature columns."""


def champion(dataset: str, client=None) -> dict:
    """The version holding ``champion`` for ``dataset``, pinned by number so a run uses one version."""
    client = client or tracking.connect()
    name = tracking.model_name(dataset)
    try:
        mv = client.get_model_version_by_alias(name, ALIAS)
    except Exception as exc:  # no such model, or no alias on it (re-raised as NoChampion, cause chained)
        raise NoChampion(
            f"no model version of {name} holds the alias '{ALIAS}' yet; run the training DAG first "
            f"(bnpipe_experiment with dataset={dataset}, or `bnpipe run --dataset {dataset}`)"
        ) from exc
    return {
        "model_name": name,
        "version": int(mv.version),
        "model_uri": f"models:/{name}/{mv.version}",
        "run_id": mv.run_id,
        "variant": mv.tags.get(tracking.TAG + "variant"),
    }


INPUT_SUFFIXES = (".csv", ".parquet", ".pq")


def inbox_files(dataset: str) -> list[str]:
    """The files waiting in ``dataset``'s score inbox (``BNPIPE_SCORE_INBOX/<dataset>``), by name.

    Hidden files and earlier predictions (``*.predictions.*``) are not inputs.
    """
    folder = settings.score_inbox() / dataset
    if not folder.is_dir():
        return []
    return [
        str(p)
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix.lower() in INPUT_SUFFIXES
        and not p.name.startswith(".") and ".predictions." not in p.name
    ]  # fmt: skip


def plan(
    dataset: str, input_path: str, id_column: str | None, events: list[dict], *, required: bool = False
) -> list[dict]:
    """What one run of the scoring DAG scores: one job per file, each with the version that scores it.

    ``events``: the extras of the champion events that started the run, oldest first (each names
    its ``dataset`` and the ``version`` the alias moved to; see ``bnpipe.operations.assets``). Then
    each of those data sets' score inbox is scored with its newest event's version: the version
    that became champion, even if the alias has moved on since (that move queues a run of its own).
    Without events (started by hand or by the clock) the version holding ``champion`` now scores
    ``input_path``, or else ``dataset``'s score inbox. ``required``: nothing to score is an error
    (a run started by hand), not an empty plan.
    """
    if events:
        newest = {e["dataset"]: int(e["version"]) for e in events}
        jobs = [_job(d, path, id_column, v) for d, v in newest.items() for path in inbox_files(d)]
    else:
        version = champion(dataset)["version"]
        paths = [input_path] if input_path else inbox_files(dataset)
        jobs = [_job(dataset, path, id_column, version) for path in paths]
    if required and not jobs:
        raise ScoringError(
            f"nothing to score: set input_path, or put csv/parquet files into {settings.score_inbox() / dataset}"
        )
    return jobs


def _job(dataset: str, input_path: str, id_column: str | None, version: int) -> dict:
    return {"dataset": dataset, "input_path": input_path, "id_column": id_column, "version": version}


def _format(loc: str) -> str:
    suffix = Path(urllib.parse.urlparse(loc).path).suffix.lower()
    return "parquet" if suffix in (".parquet", ".pq") else "csv"


def output_location(loc: str, fmt: str) -> Path:
    """``<stem>.predictions.<fmt>`` next to a local input; under ``$BNPIPE_HOME/predictions`` for a URL."""
    if "://" in loc:
        folder, stem = settings.home() / "predictions", Path(urllib.parse.urlparse(loc).path).stem or "input"
    else:
        folder, stem = Path(loc).parent, Path(loc).stem
    return folder / f"{stem}.predictions.{fmt}"


def model_features(frame, input_schema, id_column: str | None, where: str):
    """The model's raw input from ``frame``: named double columns, or a float32 tensor for images.

    Raises ``SignatureMismatch`` naming the missing and extra columns.
    """
    import numpy as np
    import pandas as pd

    if id_column is not None and id_column not in frame.columns:
        raise SignatureMismatch(f"{where}: id_column {id_column!r} is not a column; columns are {list(frame.columns)}")
    features = frame.drop(columns=[id_column]) if id_column is not None else frame
    if input_schema.is_tensor_spec():
        shape = tuple(input_schema.inputs[0].shape[1:])
        if features.shape[1] != int(np.prod(shape)):
            raise SignatureMismatch(
                f"{where}: the champion takes {int(np.prod(shape))} feature columns (a {shape} tensor per row), "
                f"the file has {features.shape[1]}"
            )
        cols = list(features.columns)
    else:
        cols = input_schema.input_names()
        missing = [c for c in cols if c not in features.columns]
        extra = [c for c in features.columns if c not in cols]
        if missing or extra:
            hint = " (if one of them identifies rows, pass it as id_column)" if extra else ""
            raise SignatureMismatch(
                f"{where}: columns do not match the champion's signature: missing columns {missing}, "
                f"extra columns {extra}{hint}"
            )
    non_numeric = [c for c in cols if not pd.api.types.is_numeric_dtype(features[c])]
    if non_numeric:
        raise SignatureMismatch(f"{where}: non-numeric columns {non_numeric}; the champion takes numbers only")
    values = features[cols].astype("float64")
    bad = ~np.isfinite(values.to_numpy())
    if bad.any():
        counts = {c: int(n) for c, n in zip(cols, bad.sum(axis=0)) if n}
        raise ScoringError(f"{where}: NaN/Inf values in columns {counts}; clean them before scoring")
    if input_schema.is_tensor_spec():
        return values.to_numpy("float32").reshape((-1, *shape))
    return values


def predict(model_uri: str, features):
    """The pyfunc's predictions for raw ``features``: ``predicted_class`` and ``proba_<class>``."""
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri())
    return mlflow.pyfunc.load_model(model_uri).predict(features)


def score_file(
    dataset: str,
    input_path: str,
    id_column: str | None = None,
    version: int | None = None,
    run_tags: dict | None = None,
) -> dict:
    """Score ``input_path`` with the champion (or ``version``), write the predictions, log the run.

    Returns ``{model_name, model_version, model_uri, input, output, rows, seconds, class_counts,
    run_id}``.
    """
    import mlflow

    if not input_path:
        raise ScoringError("no input file: set input_path to the csv or parquet file to score")
    started = time.monotonic()
    client = tracking.connect()
    name = tracking.model_name(dataset)
    version = champion(dataset, client)["version"] if version is None else int(version)
    model_uri = f"models:/{name}/{version}"
    mlflow.set_tracking_uri(client.tracking_uri)
    input_schema = mlflow.models.get_model_info(model_uri).signature.inputs
    loc = validation.resolve_location(input_path, param="input_path")
    fmt = _format(loc)
    frame = validation.read_table(loc, fmt)
    if len(frame) == 0:
        raise ScoringError(f"{loc}: the file has a header but no rows; nothing to score")
    features = model_features(frame, input_schema, id_column, loc)
    pred = predict(model_uri, features)
    row_ids = frame[id_column].to_numpy() if id_column else range(len(frame))
    pred.insert(0, ROW_ID, list(row_ids))
    pred["model_name"], pred["model_version"] = name, version
    out = output_location(loc, fmt)
    _write(pred, out, fmt)
    seconds = time.monotonic() - started
    classes = [c.removeprefix("proba_") for c in pred.columns if c.startswith("proba_")]
    counts = pred["predicted_class"].value_counts()
    class_counts = {c: int(counts.get(c, 0)) for c in classes}
    summary = {
        "model_name": name,
        "model_version": version,
        "model_uri": model_uri,
        "input": loc,
        "output": str(out),
        "rows": len(pred),
        "seconds": round(seconds, 3),
        "class_counts": class_counts,
    }
    summary["run_id"] = log_scoring(client, summary, run_tags or {}, input_dataset(frame, loc))
    return summary


def input_dataset(frame, loc: str):
    """The scored file as an ``mlflow.data`` dataset: named after the file, its source the path or URL,
    its digest the content's, its schema the columns'.

    A ``MetaDataset``, not ``mlflow.data.from_pandas``: that one's digest and schema visit every
    cell in Python (about a minute per million rows of 30 columns). Here the digest is hashed
    vectorized and the schema inferred from the first rows (the columns' types are the frame's).
    """
    import hashlib

    import pandas as pd
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import HTTPDatasetSource, LocalArtifactDatasetSource
    from mlflow.models import infer_signature

    h = hashlib.sha256(repr([(str(c), str(t)) for c, t in frame.dtypes.items()]).encode())
    h.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    source = HTTPDatasetSource(loc) if "://" in loc else LocalArtifactDatasetSource(loc)
    name = Path(urllib.parse.urlparse(loc).path).name or "input"
    schema = infer_signature(frame.head(1000)).inputs
    return MetaDataset(source, name=name, digest=h.hexdigest()[:16], schema=schema)


def _write(frame, out: Path, fmt: str) -> None:
    """Write atomically: a crash never leaves half a predictions file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    if fmt == "parquet":
        frame.to_parquet(tmp, index=False)
    else:
        frame.to_csv(tmp, index=False)
    tmp.replace(out)


def log_scoring(client, summary: dict, run_tags: dict, dataset=None) -> str:
    """One run in the ``bnpipe-scoring`` experiment: version, rows, seconds, class distribution, and
    ``dataset`` (``input_dataset``: the scored file) as its input, context ``scoring``."""
    experiment_id = tracking.ensure_experiment(client, EXPERIMENT)
    T = tracking.TAG
    tags = {
        T + "role": "scoring",
        T + "model_name": summary["model_name"],
        T + "model_version": str(summary["model_version"]),
        **run_tags,
    }
    run = client.create_run(experiment_id, run_name=f"{summary['model_name']}-v{summary['model_version']}", tags=tags)
    run_id = run.info.run_id
    tracking.log_params(
        client,
        run_id,
        {k: summary[k] for k in ("model_name", "model_version", "model_uri", "input", "output")},
    )
    if dataset is not None:
        client.log_inputs(run_id, datasets=[tracking.dataset_input(dataset, SCORING_CONTEXT, rows=summary["rows"])])
    rows = max(summary["rows"], 1)
    metrics = {"rows_scored": summary["rows"], "seconds": summary["seconds"]}
    for c, n in summary["class_counts"].items():
        key = re.sub(r"[^\w\-. /]", "_", c)  # MLflow's allowed metric-name characters
        metrics[f"predicted_count_{key}"] = n
        metrics[f"predicted_fraction_{key}"] = n / rows
    tracking.log_metrics(client, run_id, metrics)
    client.log_dict(run_id, summary["class_counts"], "class_distribution.json")
    client.set_terminated(run_id, status="FINISHED")
    return run_id
