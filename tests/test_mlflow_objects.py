"""MLflow 3's objects around a DAG run, in a real MLflow store: every variant's LoggedModel linked to
its run and datasets, the runs' dataset inputs by context, the winner's ``mlflow.models.evaluate``
metrics, system metrics, and the scoring run's input. Variants are trained in this process."""

from __future__ import annotations

import os
import threading

import pytest

from bnpipe.core import snapshots, sources
from bnpipe.core.train import TrainConfig
from bnpipe.core.variants import Variant
from bnpipe.mlflow_edge import compare, evaluation, logged_training, score, tracking

CONTEXTS = {"training": "breast_cancer/train", "validation": "breast_cancer/val", "test": "breast_cancer/test"}
MONITOR_THREADS = ("SystemMetricsMonitor", "bnpipe-system-metrics-stop")


@pytest.fixture(scope="module")
def dag_run(tmp_path_factory):
    """Three variants (one diverges, one is retried) trained and concluded by compare, then a file scored."""
    import mlflow

    home = tmp_path_factory.mktemp("objects") / "home"
    home.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        for k in list(os.environ):
            if k.startswith(("AIRFLOW", "MLFLOW_", "BNPIPE_")):
                mp.delenv(k)
        mp.setenv("BNPIPE_HOME", str(home))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
        mp.setenv("BNPIPE_INPUT_DIRS", str(home.parent))
        mp.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.01")  # samples in these short runs
        snapshot = snapshots.ingest(sources.IngestRequest(source="breast_cancer"))
        run = tracking.start_dag_run({}, "bnpipe_experiment", "manual__objects", "")
        tracking.record_snapshot(run["parent_run_id"], snapshot)
        cfg = TrainConfig(epochs=2, batch_size=8, threads=1)  # ~0.2 s of training: system-metrics samples
        good = Variant(preprocessing="standard", hidden_bn=False, hidden=(8,))
        other = Variant(preprocessing="bn_first", hidden=(8,), seed=1)
        bad = Variant(preprocessing="none", hidden_bn=False, hidden=(8,), learning_rate=1e30)

        def train(v, i, try_number=1):
            return logged_training.train_and_log(
                snapshot, v.to_dict(), cfg, run["experiment_id"], run["parent_run_id"], i, try_number
            )

        superseded = train(good, 0)
        results = [train(good, 0, try_number=2), train(other, 1), train(bad, 2)]
        threads_after_training = [t.name for t in threading.enumerate()]
        client = tracking.connect()
        ended = {r["run_id"]: client.get_run(r["run_id"]).info for r in results}
        compare.conclude(results, snapshot, run["parent_run_id"], "val_accuracy")
        test = snapshots.load_split(snapshot["path"], "test")[0]
        import pandas as pd

        scored_file = home.parent / "patients.csv"
        pd.DataFrame(test.astype("float64"), columns=snapshot["feature_names"]).to_csv(scored_file, index=False)
        scored = [score.score_file("breast_cancer", str(scored_file))["run_id"] for _ in range(2)]
        yield {
            "client": client, "snapshot": snapshot, "run": run, "results": results, "superseded": superseded,
            "threads": threads_after_training, "ended": ended, "scored": scored, "scored_rows": len(test),
        }  # fmt: skip
        mlflow.set_tracking_uri(None)  # compare set MLflow's global URI to this module's store


def _winner(p):
    mv = p["client"].get_model_version_by_alias("bnpipe-breast_cancer", "champion")
    return mv, next(r for r in p["results"] if r["run_id"] == mv.run_id)


def test_every_variant_has_a_logged_model_linked_to_its_run_and_datasets(dag_run):
    p = dag_run
    c, digest = p["client"], p["snapshot"]["digest"]
    listed = {m.model_id for m in c.search_logged_models([p["run"]["experiment_id"]])}
    assert listed == {r["model_id"] for r in p["results"]}  # the Models view: every candidate, winner or not
    assert [r["status"] for r in p["results"]] == ["ok", "ok", "diverged"]
    for r in p["results"]:
        model, run = c.get_logged_model(r["model_id"]), c.get_run(r["run_id"])
        assert model.source_run_id == r["run_id"] and model.name == tracking.logged_model_name(r["name"])
        assert r["model_id"] in {o.model_id for o in run.outputs.model_outputs}
        assert model.params["learning_rate"] == run.data.params["learning_rate"]
        assert model.tags["bnpipe.train_key"] == r["train_key"]
        linked = {(m.key, m.dataset_name, m.dataset_digest) for m in model.metrics}
        files = {f.path for f in c.list_logged_model_artifacts(r["model_id"])}
        if r["status"] == "diverged":
            assert model.status == "FAILED" and model.tags["bnpipe.status"] == "diverged"
            assert "model.keras" not in files
            continue
        assert model.status == "READY" and "model.keras" in files
        assert {("loss", CONTEXTS["training"], digest), ("val_accuracy", CONTEXTS["validation"], digest),
                ("test_accuracy", CONTEXTS["test"], digest)} <= linked  # fmt: skip
        latest = {m.key: m.value for m in sorted(model.metrics, key=lambda m: m.timestamp)}
        for key in ("val_accuracy", "test_accuracy", "loss"):
            assert latest[key] == pytest.approx(r["metrics"][key]), key
        # the model's copy of the last epoch leaves the run's history as it was: one value per epoch
        assert [m.step for m in c.get_metric_history(r["run_id"], "val_accuracy")] == [1, 2]


def test_a_retried_variant_keeps_only_its_last_attempts_model(dag_run):
    from mlflow.exceptions import MlflowException

    p = dag_run
    old = p["superseded"]
    assert old["model_id"] != p["results"][0]["model_id"]
    with pytest.raises(MlflowException, match="not found"):
        p["client"].get_logged_model(old["model_id"])


def test_runs_record_the_snapshots_splits_as_training_validation_and_test_inputs(dag_run):
    p = dag_run
    c, snap = p["client"], p["snapshot"]
    rows = {"training": snap["n_train"], "validation": snap["n_val"], "test": snap["n_test"]}
    runs = [(p["run"]["parent_run_id"], None)] + [(r["run_id"], seed) for seed, r in zip((0, 1, 0), p["results"])]
    for run_id, seed in runs:
        inputs = c.get_run(run_id).inputs.dataset_inputs
        by_context = {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i for i in inputs}
        assert {k: i.dataset.name for k, i in by_context.items()} == CONTEXTS
        assert {i.dataset.digest for i in inputs} == {snap["digest"]}  # the snapshot's content digest
        for context, i in by_context.items():
            assert i.dataset.source_type == "local" and snap["path"] in i.dataset.source
            assert f'"num_rows": {rows[context]}' in i.dataset.profile
            replicate = {t.value for t in i.tags if t.key == "bnpipe.replicate"}
            assert replicate == (set() if seed is None or context == "test" else {str(seed)})


def test_the_winner_is_evaluated_by_mlflow_on_the_test_split(dag_run):
    p = dag_run
    c = p["client"]
    mv, winner = _winner(p)
    assert mv.source == f"models:/{winner['model_id']}"  # the full pyfunc went into the variant's own LoggedModel
    assert "MLmodel" in {f.path for f in c.list_logged_model_artifacts(winner["model_id"])}
    run = c.get_run(winner["run_id"])
    m = run.data.metrics
    # the registered pyfunc, fed raw inputs, reproduces what the trainer measured on the Keras model
    assert m[evaluation.MARKER] == pytest.approx(m["test_accuracy"], abs=1e-6)
    assert m["test_example_count"] == p["snapshot"]["n_test"]
    assert {"test_precision_score", "test_recall_score", "test_f1_score"} <= set(m)
    linked = {(x.key, x.dataset_name) for x in c.get_logged_model(winner["model_id"]).metrics}
    assert (evaluation.MARKER, CONTEXTS["test"]) in linked
    ended = p["ended"][winner["run_id"]]  # evaluation resumed the run: it ends as it had ended
    assert (run.info.status, run.info.end_time) == (ended.status, ended.end_time)
    for r in p["results"]:
        if r is not winner:
            assert evaluation.MARKER not in c.get_run(r["run_id"]).data.metrics


def test_an_evaluated_run_is_not_evaluated_again(dag_run):
    p = dag_run
    mv, winner = _winner(p)
    before = len(p["client"].get_metric_history(winner["run_id"], evaluation.MARKER))
    out = evaluation.evaluate_model(p["client"], mv.source, winner["run_id"], p["snapshot"])
    assert out[evaluation.MARKER] == pytest.approx(p["client"].get_run(winner["run_id"]).data.metrics["test_accuracy"])
    assert len(p["client"].get_metric_history(winner["run_id"], evaluation.MARKER)) == before


def test_training_runs_log_system_metrics_and_leave_no_monitor_running(dag_run):
    p = dag_run
    for r in p["results"]:
        metrics = p["client"].get_run(r["run_id"]).data.metrics
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(metrics)
    assert not [name for name in p["threads"] if name in MONITOR_THREADS]


def test_system_metrics_are_off_when_mlflow_says_so(dag_run, monkeypatch):
    client = tracking.Timed(dag_run["client"])
    run_id = client.create_run(dag_run["run"]["experiment_id"]).info.run_id
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    off = logged_training.SystemMetrics(client, run_id)
    assert not [t for t in threading.enumerate() if t.name in MONITOR_THREADS]
    off.join()
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true")
    on = logged_training.SystemMetrics(client, run_id)
    assert [t for t in threading.enumerate() if t.name == "SystemMetricsMonitor"]
    on.join()
    assert not [t for t in threading.enumerate() if t.name in MONITOR_THREADS]


def test_a_scoring_run_records_the_scored_file_as_its_input(dag_run):
    p = dag_run
    c = p["client"]
    inputs = [c.get_run(run_id).inputs.dataset_inputs for run_id in p["scored"]]
    assert [len(i) for i in inputs] == [1, 1]
    first, again = (i[0] for i in inputs)
    assert [(t.key, t.value) for t in first.tags] == [("mlflow.data.context", score.SCORING_CONTEXT)]
    assert first.dataset.name == "patients.csv" and first.dataset.source_type == "local"
    assert f'"num_rows": {p["scored_rows"]}' in first.dataset.profile
    assert "mean radius" in first.dataset.schema
    assert again.dataset.digest == first.dataset.digest  # the same file: the same digest


def test_an_image_models_evaluation_feeds_it_its_tensors(dag_run):
    """Fashion-MNIST's model takes (n, 28, 28); evaluate's rows are flattened images, reshaped for it."""
    p = dag_run
    snapshot = snapshots.ingest(sources.IngestRequest(source="fashion_mnist", max_rows=600))
    run = tracking.start_dag_run({}, "bnpipe_experiment", "manual__images", "")
    cfg = TrainConfig(epochs=1, batch_size=32, threads=1)
    result = logged_training.train_and_log(
        snapshot, Variant(hidden=(16,)).to_dict(), cfg, run["experiment_id"], run["parent_run_id"]
    )
    out = compare.register(p["client"], [result], snapshot, "val_accuracy")
    m = p["client"].get_run(result["run_id"]).data.metrics
    assert out["version"] == 1 and m["test_example_count"] == snapshot["n_test"]
    assert m[evaluation.MARKER] == pytest.approx(m["test_accuracy"], abs=1e-6)
    assert "test_f1_score" in m and "test_true_positives" not in m  # ten classes: no two-class confusion counts


def test_a_variant_whose_name_has_a_dot_gets_its_logged_model(tmp_path):
    """A learning rate puts a "." in the variant's name (``sgd0.05``), which MLflow refuses in a model name."""
    from mlflow import MlflowClient

    name = Variant(learning_rate=0.05, hidden=(16,)).name
    assert "." in name
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("objects", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(exp).info.run_id
    model_id = tracking.create_variant_model(client, exp, run_id, name, {"learning_rate": 0.05}, {})
    got = client.get_logged_model(model_id)
    assert got.name == name.replace(".", "_") and got.source_run_id == run_id


@pytest.mark.parametrize(("live_seconds", "epoch_requests"), [(0.0, 6), (1e9, 1)])
def test_epoch_metrics_are_sent_at_most_once_per_interval_and_none_is_lost(dag_run, monkeypatch, live_seconds,
                                                                            epoch_requests):  # fmt: skip
    """Last in this module: it adds variants to the experiment the first tests count."""
    p = dag_run
    monkeypatch.setattr(logged_training, "LIVE_METRICS_SECONDS", live_seconds)
    sends, real = [], tracking.log_metric_rows

    def counting(client, run_id, rows, links=None):
        sends.append((links, [step for row, step, *_ in rows if "loss" in row]))
        return real(client, run_id, rows, links)

    monkeypatch.setattr(tracking, "log_metric_rows", counting)
    run = tracking.start_dag_run({}, "bnpipe_experiment", f"manual__live_{live_seconds}", "")
    result = logged_training.train_and_log(
        p["snapshot"], Variant(hidden=(8,), seed=3).to_dict(), TrainConfig(epochs=6, batch_size=32, threads=1),
        run["experiment_id"], run["parent_run_id"],
    )  # fmt: skip
    epoch_sends = [steps for links, steps in sends if links is None and steps]
    assert len(epoch_sends) == epoch_requests, sends
    assert sorted(s for steps in epoch_sends for s in steps) == [1, 2, 3, 4, 5, 6]
    history = p["client"].get_metric_history(result["run_id"], "loss")
    assert [m.step for m in history] == [1, 2, 3, 4, 5, 6]  # each epoch once, the model's copy not added
    stamps = [m.timestamp for m in history]
    assert stamps == sorted(stamps), "each epoch keeps the time it ended"
