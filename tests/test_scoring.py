"""Using the champion: the scoring DAG, `bnpipe score`, `bnpipe serve` and the model card.

The shared smoke run on breast_cancer (tests/run_fixtures.py) registered a champion; every test
here uses it. The scoring input is the snapshot's test split, raw, with a `patient_id` column as the row id.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pandas as pd
import pytest
from conftest import BNPIPE, ROOT, cli_env, run_cli

from bnpipe.base import procs

pytestmark = pytest.mark.integration

MODEL = "bnpipe-breast_cancer"
# Runs the scoring DAG once per conf through Airflow (dag.test), as `bnpipe run` does for training.
RUN_SCORE_DAG = """
import json, sys
from bnpipe.operations.cli import run_dag
out = []
for conf in json.loads(sys.argv[1]):
    dr = run_dag(conf, dag_id="bnpipe_score")
    tis = {ti.task_id: [str(getattr(ti.state, "value", ti.state)), ti.try_number] for ti in dr.get_task_instances()}
    out.append({"run_id": dr.run_id, "state": str(getattr(dr.state, "value", dr.state)), "tis": tis})
print("RESULT" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def trained(smoke_run):
    """A home with a breast_cancer champion, the training summary and a raw scoring file next to it."""
    from bnpipe.core import snapshots

    home = smoke_run.home
    snap = next((home / "snapshots").iterdir())
    meta = snapshots.read_meta(snap)
    X, y = snapshots.load_split(snap, "test")
    frame = pd.DataFrame(X.astype("float64"), columns=meta["feature_names"])
    frame.insert(0, "patient_id", np.arange(1000, 1000 + len(frame)))
    (home.parent / "patients.csv").write_text(frame.to_csv(index=False))
    return {"home": home, "summary": smoke_run.summary, "meta": meta, "snap": snap, "y": y}


@pytest.fixture(scope="module")
def dag_runs(trained):
    """Three runs of the scoring DAG: a good file, a file with wrong columns, a dataset with no champion."""
    home, meta = trained["home"], trained["meta"]
    good = home.parent / "patients.csv"
    wrong = pd.read_csv(good).drop(columns=["mean radius"]).assign(colour=1.0)
    wrong_path = home.parent / "wrong_columns.csv"
    wrong.to_csv(wrong_path, index=False)
    confs = [
        {"dataset": "breast_cancer", "input_path": str(good), "id_column": "patient_id"},
        {"dataset": "breast_cancer", "input_path": str(wrong_path), "id_column": "patient_id"},
        {"dataset": "wine", "input_path": str(good)},
    ]
    proc = subprocess.run(
        [sys.executable, "-c", RUN_SCORE_DAG, json.dumps(confs)],
        env=cli_env(home), capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")), None)
    assert line, proc.stdout[-3000:] + proc.stderr[-3000:]
    good_run, wrong_run, no_champion = json.loads(line[len("RESULT") :])
    assert len(meta["feature_names"]) == 30
    return {"good": good_run, "wrong": wrong_run, "none": no_champion, "log": proc.stdout + proc.stderr}


def _client(home):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{home / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _proba(frame: pd.DataFrame, classes: list[str]) -> np.ndarray:
    return frame[[f"proba_{c}" for c in classes]].to_numpy("float64")


def test_dag_writes_predictions_and_logs_to_mlflow(trained, dag_runs):
    home, meta, summary = trained["home"], trained["meta"], trained["summary"]
    run = dag_runs["good"]
    assert run["state"] == "success" and run["tis"]["score"][0] == "success", run
    inputs = pd.read_csv(home.parent / "patients.csv")
    pred = pd.read_csv(home.parent / "patients.predictions.csv")
    classes = meta["classes"]
    assert list(pred.columns) == ["row_id", "predicted_class", *[f"proba_{c}" for c in classes], "model_name"] + [
        "model_version"
    ]
    assert pred["row_id"].tolist() == inputs["patient_id"].tolist()
    champion = summary["champion"]
    assert set(pred["model_name"]) == {MODEL} and set(pred["model_version"]) == {champion["version"]}
    proba = _proba(pred, classes)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert pred["predicted_class"].tolist() == [classes[i] for i in proba.argmax(axis=1)]
    # The scored file is the snapshot's test split: accuracy is the winner's recorded test_accuracy.
    acc = float((pred["predicted_class"].to_numpy() == np.array(classes)[trained["y"]]).mean())
    winner = next(v for v in summary["variants"] if v["run_id"] == champion["run_id"])
    assert acc == pytest.approx(winner["metrics"]["test_accuracy"], abs=1e-6)

    c = _client(home)
    exp = c.get_experiment_by_name("bnpipe-scoring")
    runs = c.search_runs([exp.experiment_id], f"tags.`bnpipe.dag_run_id` = '{run['run_id']}'")
    assert len(runs) == 1
    r = runs[0]
    assert r.info.status == "FINISHED" and r.data.tags["bnpipe.dag_id"] == "bnpipe_score"
    assert r.data.params["model_version"] == str(champion["version"]) and r.data.params["model_name"] == MODEL
    assert r.data.metrics["rows_scored"] == len(inputs) and r.data.metrics["seconds"] > 0
    counts = pred["predicted_class"].value_counts()
    for cls in classes:
        assert r.data.metrics[f"predicted_count_{cls}"] == counts.get(cls, 0)
        assert r.data.metrics[f"predicted_fraction_{cls}"] == pytest.approx(counts.get(cls, 0) / len(inputs))
    assert "class_distribution.json" in {a.path for a in c.list_artifacts(r.info.run_id)}


def test_no_scaler_outside_the_model(trained, dag_runs):
    """The DAG fed raw values: the Keras model on the raw values gives the same probabilities."""
    import keras

    from bnpipe.core import snapshots
    from bnpipe.core.train import MODEL_ARTIFACT

    home, meta = trained["home"], trained["meta"]
    c = _client(home)
    local = c.download_artifacts(trained["summary"]["champion"]["run_id"], MODEL_ARTIFACT, str(home.parent))
    model = keras.models.load_model(local, compile=False)
    raw = pd.read_csv(home.parent / "patients.csv")[meta["feature_names"]].to_numpy("float32")
    pred = _proba(pd.read_csv(home.parent / "patients.predictions.csv"), meta["classes"])
    np.testing.assert_allclose(np.asarray(model.predict(raw, verbose=0)), pred, atol=1e-6)
    X_tr, _ = snapshots.load_split(trained["snap"], "train")
    standardized = ((raw - X_tr.mean(axis=0)) / X_tr.std(axis=0)).astype("float32")
    assert not np.allclose(np.asarray(model.predict(standardized, verbose=0)), pred, atol=1e-3)


def test_signature_mismatch_names_missing_and_extra_columns(trained, dag_runs, monkeypatch):
    run = dag_runs["wrong"]
    assert run["state"] == "failed" and run["tis"]["score"] == ["failed", 1], run  # no retries
    assert "missing columns ['mean radius'], extra columns ['colour']" in dag_runs["log"]
    assert not (trained["home"].parent / "wrong_columns.predictions.csv").exists()

    from bnpipe.mlflow_edge import score

    for k, v in cli_env(trained["home"]).items():
        if k.startswith(("BNPIPE_", "MLFLOW_")):
            monkeypatch.setenv(k, v)
    with pytest.raises(score.SignatureMismatch, match=r"missing columns \['mean radius'\], extra columns \['colour'"):
        score.score_file("breast_cancer", str(trained["home"].parent / "wrong_columns.csv"), "patient_id")
    with pytest.raises(score.SignatureMismatch, match=r"extra columns \['patient_id'\].*pass it as id_column"):
        score.score_file("breast_cancer", str(trained["home"].parent / "patients.csv"))


def test_no_champion_says_to_run_the_training_dag(trained, dag_runs):
    run = dag_runs["none"]
    assert run["state"] == "failed" and run["tis"]["find_champion"] == ["failed", 1], run
    assert run["tis"]["score"][0] == "upstream_failed"
    assert (
        "no model version of bnpipe-wine holds the alias 'champion' yet; run the training DAG first"
        in (dag_runs["log"])
    )
    proc = run_cli(["score", "--dataset", "digits", "--input", str(trained["home"].parent / "patients.csv")],
                   trained["home"], timeout=120)  # fmt: skip
    assert proc.returncode == 1
    assert "bnpipe-digits" in proc.stderr and "run the training DAG first" in proc.stderr


def test_cli_score_on_parquet(trained, dag_runs):
    home, meta = trained["home"], trained["meta"]
    src = pd.read_csv(home.parent / "patients.csv").head(20)
    src.to_parquet(home.parent / "batch.parquet", index=False)
    proc = run_cli(["score", "--dataset", "breast_cancer", "--input", str(home.parent / "batch.parquet"),
                    "--id-column", "patient_id"], home, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert result["output"] == str(home.parent / "batch.predictions.parquet") and result["rows"] == 20
    out = pd.read_parquet(home.parent / "batch.predictions.parquet")
    dag = pd.read_csv(home.parent / "patients.predictions.csv").head(20)
    assert out["row_id"].tolist() == src["patient_id"].tolist()
    assert out["predicted_class"].tolist() == dag["predicted_class"].tolist()
    np.testing.assert_allclose(_proba(out, meta["classes"]), _proba(dag, meta["classes"]), atol=1e-6)


def test_server_and_dag_agree(trained, dag_runs):
    home, meta = trained["home"], trained["meta"]
    port = procs.free_port()
    cmd = [BNPIPE, "serve", "--dataset", "breast_cancer", "--port", str(port)]
    server = procs.spawn(cmd, home.parent / "serve.log", cli_env(home), cwd=str(ROOT))  # a session of its own
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, (home.parent / "serve.log").read_text()
                time.sleep(0.5)
        rows = pd.read_csv(home.parent / "patients.csv")[meta["feature_names"]]
        body = json.dumps({"dataframe_split": rows.to_dict(orient="split", index=False)}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"})
        served = pd.DataFrame(json.loads(urllib.request.urlopen(req, timeout=60).read())["predictions"])
    finally:
        procs.terminate(procs.record(server.pid), grace=30)  # the server and its uvicorn child: our group
        server.wait()
    dag = pd.read_csv(home.parent / "patients.predictions.csv")
    assert len(served) == len(dag)
    assert served["predicted_class"].tolist() == dag["predicted_class"].tolist()
    np.testing.assert_allclose(_proba(served, meta["classes"]), _proba(dag, meta["classes"]), atol=1e-6)
    deadline = time.monotonic() + 30  # the group leader is gone; its uvicorn worker may take a moment
    while _listening(port) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _listening(port), "stopped: nothing may listen on the port any more"


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_model_card_on_the_version(trained):
    home, summary, meta = trained["home"], trained["summary"], trained["meta"]
    c = _client(home)
    mv = c.get_model_version_by_alias(MODEL, "champion")
    card = mv.description
    table = summary["table"]
    winner, runner_up = table[0], table[1]
    assert f"**Dataset** `breast_cancer`, snapshot digest `{meta['digest']}`" in card
    assert f"**Winner** `{winner['variant']}`: val_accuracy {winner['val_accuracy']:.4f}" in card
    assert f"**Runner-up** `{runner_up['variant']}`: val_accuracy {runner_up['val_accuracy']:.4f}" in card
    # the card tells the last decision on this version: test_pipeline_integration's second run may follow the first
    parents = c.search_runs([summary["experiment_id"]], "tags.`bnpipe.role` = 'parent'", order_by=["start_time DESC"])
    last = next(r for r in parents if r.data.tags.get("bnpipe.alias_reason"))
    assert f"**Alias `champion`**: {last.data.tags['bnpipe.alias_reason']}" in card
    link = last.data.tags["bnpipe.airflow_link"]
    assert f"**Airflow DAG run**: {link}" in card and "/dags/bnpipe_experiment/runs/" in link


def test_model_card_shows_the_seed_interval():
    from bnpipe.mlflow_edge.compare import model_card

    snapshot = {"dataset": "wine", "digest": "abc123", "n_train": 10, "n_val": 5, "n_test": 5}
    winner = {
        "name": "standard-he_normal-elu-noclip",
        "metrics": {"val_accuracy": 0.91, "val_loss": 0.3, "test_accuracy": 0.9},
        "interval": {"val_accuracy": [0.88, 0.94]},
        "n_seeds": 3,
    }
    card = model_card(snapshot, winner, None, "val_accuracy", "no champion yet", "http://af/dags/x/runs/y")
    assert "val_accuracy 0.9100 (95% interval 0.8800..0.9400 over 3 seeds)" in card
    assert "**Runner-up**: none" in card and "**Airflow DAG run**: http://af/dags/x/runs/y" in card


def test_scoring_dag_shape(parsed):  # the parsed DAG folder (tests/dag_fixtures.py)
    d = parsed["dags"]["bnpipe_score"]
    assert set(d["tasks"]) == {"find_champion", "score"}
    # by hand, and on a new champion (BNPIPE_SCORE_ON_CHAMPION); no time schedule unless BNPIPE_SCORE_SCHEDULE
    assert "AssetAlias(name='bnpipe-champion'" in d["schedule"] and "Cron" not in d["schedule"], d["schedule"]
    for name in ("dataset", "input_path", "id_column"):
        assert d["params"][name].get("type") and d["params"][name].get("description"), name


def test_model_features_orders_columns_and_reshapes_images():
    from mlflow.types import ColSpec, Schema, TensorSpec

    from bnpipe.mlflow_edge import score

    table = Schema([ColSpec("double", "a"), ColSpec("double", "b")])
    frame = pd.DataFrame({"id": [7, 8], "b": [2, 4], "a": [1.5, 3.5]})
    out = score.model_features(frame, table, "id", "f.csv")
    assert list(out.columns) == ["a", "b"] and out.dtypes.tolist() == [np.float64, np.float64]
    with pytest.raises(score.ScoringError, match=r"NaN/Inf values in columns \{'a': 1\}"):
        score.model_features(frame.assign(a=[np.nan, 1.0]), table, "id", "f.csv")
    with pytest.raises(score.SignatureMismatch, match="id_column 'row' is not a column"):
        score.model_features(frame, table, "row", "f.csv")
    images = Schema([TensorSpec(np.dtype("float32"), (-1, 28, 28))])
    pixels = pd.DataFrame(np.arange(2 * 784).reshape(2, 784), columns=[f"pixel_{i}" for i in range(784)])
    tensor = score.model_features(pixels, images, None, "f.csv")
    assert tensor.shape == (2, 28, 28) and tensor.dtype == np.float32 and tensor[1, 0, 0] == 784
    with pytest.raises(score.SignatureMismatch, match=r"takes 784 feature columns .* the file has 783"):
        score.model_features(pixels.iloc[:, 1:], images, None, "f.csv")
