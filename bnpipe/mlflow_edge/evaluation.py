"""Evaluation: the winner's full model scored on the snapshot's test split by ``mlflow.models.evaluate``.

compare logs the winner as a pyfunc model (the one ``bnpipe score`` and ``bnpipe serve`` use, raw
inputs in) and, before registering it, ``evaluate_model`` loads that model, predicts the test
split and lets MLflow's default classifier evaluator compute accuracy, precision, recall and F1
(with the confusion counts for two classes), prefixed ``test_`` (``test_accuracy_score``,
``test_f1_score``, ...). They go to the winner's run, linked to its LoggedModel and to the run's
test dataset (``<dataset>/test``, the snapshot's digest). A model that cannot score its own test
split is not registered. A run is evaluated once: compare's retries find its metrics there.

bnpipe's own ``test_loss`` and ``test_accuracy`` stay as they are: the trainer measures them on
the Keras model in memory, for every variant. This checks the artifact that gets registered.
"""

from __future__ import annotations

from bnpipe.mlflow_edge import snapshot_store, tracking

PREFIX = "test_"
MARKER = PREFIX + "accuracy_score"  # on a run once its model was evaluated
OWN = tracking.MODEL_METRICS["test"]  # the trainer's test metrics, which share the prefix


def evaluate_model(client, model_uri: str, run_id: str, snapshot: dict) -> dict:
    """``mlflow.models.evaluate`` of the pyfunc model ``model_uri`` on the snapshot's test split, logged
    to ``run_id`` (and to the LoggedModel a ``models:/m-...`` URI names). Returns its metrics."""
    import mlflow
    import numpy as np

    from bnpipe.core import snapshots
    from bnpipe.mlflow_edge.score import model_features

    run = client.get_run(run_id)
    if MARKER in run.data.metrics:
        return {k: v for k, v in run.data.metrics.items() if k.startswith(PREFIX) and k not in OWN}
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    X, y = snapshots.load_split(snapshot_store.local_snapshot(snapshot, client)["path"], "test")
    columns = snapshot["feature_names"] if len(snapshot["input_shape"]) == 1 else None
    schema, where = tracking.input_schema(snapshot), f"{snapshot['dataset']}'s test split"
    probabilities = [f"proba_{c}" for c in snapshot["classes"]]
    mlflow.set_tracking_uri(client.tracking_uri)  # evaluate loads and logs through MLflow's global URI
    model = mlflow.pyfunc.load_model(model_uri)

    # evaluate gets this function, not the model's URI: it would feed the model 2-D data only (an
    # image model takes (n, 28, 28)), and its two-class metrics want labels 0/1, not class names.
    # model_features is the scoring path's own input check and reshaping.
    def predict(features):
        frame = _frame(np.asarray(features, dtype="float64"), columns)
        out = model.predict(model_features(frame, schema, None, where))
        return out[probabilities].to_numpy().argmax(axis=1)

    # a numpy dataset, one row per example (images flattened): from_pandas would infer a schema
    # cell by cell, which takes seconds per thousand Fashion-MNIST rows
    test = tracking.split_datasets(snapshot)["test"]
    data = mlflow.data.from_numpy(
        X.reshape(len(X), -1), source=test.source, targets=y.astype("int64"), name=test.name, digest=test.digest
    )
    # evaluate logs into MLflow's active run: the winner's, resumed for this and then put back as it ended
    with mlflow.start_run(run_id=run_id):
        result = mlflow.models.evaluate(
            predict,
            data,
            model_type="classifier",
            model_id=model_id,
            evaluator_config={"metric_prefix": PREFIX, "log_model_explainability": False},
        )
    client.set_terminated(run_id, status=run.info.status, end_time=run.info.end_time)
    return {k: float(v) for k, v in result.metrics.items()}


def _frame(X, columns: list[str] | None):
    """The features as a DataFrame: named columns for a table, ``x0, x1, ...`` for a flattened image."""
    import pandas as pd

    return pd.DataFrame(X, columns=columns or [f"x{i}" for i in range(X.shape[1])])
