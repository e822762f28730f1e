"""The whole DAG, run through Airflow with its LocalExecutor, against a real MLflow store in a temp dir.

The run is the shared smoke run (tests/run_fixtures.py): 4 configurations x 3 seeds on breast_cancer.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from dag_fixtures import embedded_task_rows, most_at_once
from run_fixtures import SEEDS, SMOKE_ARGS, TRAIN_CONCURRENCY

pytestmark = pytest.mark.integration

VARIANTS = 4 * SEEDS  # the smoke grid's 4 configurations


@pytest.fixture
def first_run(smoke_run):
    return smoke_run.home, smoke_run.summary, smoke_run.proc.stdout


def _client(home):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{home / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_prints_table_and_champion(first_run):
    _, summary, stdout = first_run
    assert "| rank | variant |" in stdout
    assert f"version {summary['champion']['version']} now holds 'champion'" in stdout


def test_parent_and_nested_variant_runs(first_run):
    home, summary, _ = first_run
    c = _client(home)
    parent = c.get_run(summary["parent_run_id"])
    assert parent.info.status == "FINISHED"
    tags = parent.data.tags
    assert tags["bnpipe.dag_id"] == "bnpipe_experiment" and tags["bnpipe.dag_run_id"].startswith("manual__")
    assert tags["bnpipe.airflow_link"].endswith(tags["bnpipe.dag_run_id"])
    children = c.search_runs([summary["experiment_id"]], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    names = sorted(r.info.run_name for r in children)
    assert names == sorted(v["name"] for v in summary["variants"]) and len(names) == VARIANTS
    for r in children:
        assert r.info.status == "FINISHED"
        assert r.data.params["preprocessing"] in ("standard", "bn_first")
        assert r.data.tags["bnpipe.variant"] == r.info.run_name and "bnpipe.map_index" in r.data.tags
        assert r.data.tags["bnpipe.try_number"] == "1"
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds"):
            history = c.get_metric_history(r.info.run_id, key)
            assert [m.step for m in history] == [1, 2, 3], key
        assert 0.0 <= r.data.metrics["test_accuracy"] <= 1.0
        assert [a.path for a in c.list_artifacts(r.info.run_id, "model")] == ["model/model.keras"]
        inputs = r.inputs.dataset_inputs
        assert inputs and inputs[0].dataset.digest == tags["bnpipe.data_digest"]
        contexts = {t.value for i in inputs for t in i.tags if t.key == "mlflow.data.context"}
        assert contexts == {"training", "validation", "test"}
        models = [c.get_logged_model(o.model_id) for o in r.outputs.model_outputs]  # the variant's LoggedModel
        assert [(m.source_run_id, m.name, m.status) for m in models] == [(r.info.run_id, r.info.run_name, "READY")]


def test_mapped_training_tasks_overlapped(first_run):
    """--parallel ran as many training tasks at once as the training concurrency allows, and no more
    (Airflow's own record of when each task ran, not the MLflow runs inside them)."""
    home, summary, _ = first_run
    run_id = summary["dag_run_id"]
    tis = [t for t in embedded_task_rows(home, "train") if t["run_id"] == run_id]  # not the second run's
    assert len(tis) == VARIANTS and all(t["state"] == "success" for t in tis), tis
    spans = [(t["start_date"], t["end_date"]) for t in tis]
    assert most_at_once(spans) == TRAIN_CONCURRENCY, sorted(spans)


def test_comparison_artifacts_on_parent(first_run):
    home, summary, _ = first_run
    c = _client(home)
    files = {a.path for a in c.list_artifacts(summary["parent_run_id"], "comparison")}
    assert files == {"comparison/comparison.csv", "comparison/comparison.md"}
    local = c.download_artifacts(summary["parent_run_id"], "comparison/comparison.csv", str(home.parent))
    import pandas as pd

    table = pd.read_csv(local)
    assert list(table["variant"])[0] == summary["champion"]["variant"]
    assert table["val_accuracy"].is_monotonic_decreasing


def test_registered_champion_takes_raw_inputs(first_run):
    home, summary, _ = first_run
    import mlflow
    import pandas as pd

    from bnpipe.core import snapshots

    c = _client(home)
    champ = summary["champion"]
    assert champ["model_name"] == "bnpipe-breast_cancer" and champ["alias_moved"] is True
    mv = c.get_model_version_by_alias("bnpipe-breast_cancer", "champion")
    assert int(mv.version) == champ["version"] and mv.run_id == champ["run_id"]
    assert "breast_cancer" in mv.description and champ["variant"] in mv.description
    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model("models:/bnpipe-breast_cancer@champion")
    snap = next((home / "snapshots").iterdir())
    meta = snapshots.read_meta(snap)
    X, y = snapshots.load_split(snap, "test")
    frame = pd.DataFrame(X.astype("float64"), columns=meta["feature_names"])  # raw, unscaled values
    pred = model.predict(frame)
    acc = float((pred["predicted_class"].to_numpy() == np.array(meta["classes"])[y]).mean())
    winner = next(v for v in summary["variants"] if v["run_id"] == champ["run_id"])
    assert acc == pytest.approx(winner["metrics"]["test_accuracy"], abs=1e-6)
    assert c.get_run(champ["run_id"]).data.metrics["test_accuracy_score"] == pytest.approx(acc, abs=1e-6)  # evaluate's
    assert acc > 0.85


def test_second_run_adds_no_duplicate_version(first_run):
    home, summary, _ = first_run
    before = datetime.now().timestamp() * 1000
    proc = run_cli([*SMOKE_ARGS, "--summary-json", str(home.parent / "second.json")], home)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    second = json.loads((home.parent / "second.json").read_text())
    c = _client(home)
    versions = c.search_model_versions("name='bnpipe-breast_cancer'")
    assert len(versions) == 1
    assert second["champion"]["version"] == summary["champion"]["version"]
    assert second["champion"]["alias_moved"] is False
    assert second["parent_run_id"] != summary["parent_run_id"]
    assert c.get_run(second["parent_run_id"]).info.start_time >= before - 1000
    assert (
        int(c.get_model_version_by_alias("bnpipe-breast_cancer", "champion").version) == summary["champion"]["version"]
    )


def test_claims_report_logged_to_parent_and_variants_instrumented(first_run):
    home, summary, stdout = first_run
    c = _client(home)
    files = {a.path for a in c.list_artifacts(summary["parent_run_id"], "report")}
    assert {"report/report.html", "report/report.md", "report/learning_curves.png", "report/grad_norms.png",
            "report/verdicts.json"} <= files  # fmt: skip
    md = Path(c.download_artifacts(summary["parent_run_id"], "report/report.md", str(home.parent))).read_text()
    assert "| 4e |" in md and "| 4e | not tested by this grid |" not in md  # smoke grid: standard vs. bn_first
    assert "claim 4e:" in stdout
    verdicts = c.download_artifacts(summary["parent_run_id"], "report/verdicts.json", str(home.parent))
    doc = json.loads(Path(verdicts).read_text())
    e = next(v for v in doc["claims"] if v["claim"] == "4e")
    assert e["comparisons"] and all(c["n"] == SEEDS for c in e["comparisons"])  # one replicate per seed
    for comparison in e["comparisons"]:  # n=3: an interval, its margin and the test it came from
        assert comparison["test"] and comparison["margin"] > 0, comparison
        lo, hi = comparison["interval"]
        assert lo <= comparison["estimate"] <= hi and comparison["level"] == 0.95, comparison
    assert e["verdict"] in ("holds", "does not hold", "inconclusive")
    for v in summary["variants"]:
        metrics = c.get_run(v["run_id"]).data.metrics
        assert {"grad_norm/dense_0", "grad_norm/output", "grad_log10_ratio", "gen_gap_accuracy"} <= set(metrics)
        assert "bn_first/moving_mean" in metrics and "mode_gap_accuracy" in metrics  # every smoke variant has BN


def test_variants_trained_in_warm_trainers_that_end_with_the_run(first_run):
    """Each slot's trainer imports TensorFlow once and trains several variants; `bnpipe run` stops them."""
    from bnpipe.operations import warm

    home, summary, _ = first_run
    c = _client(home)
    trainers = [c.get_run(v["run_id"]).data.tags["bnpipe.trainer"] for v in summary["variants"]]
    assert all(t.startswith("warm pid ") for t in trainers), trainers
    assert len(set(trainers)) < len(trainers)  # reused: fewer trainers than variants
    assert warm.running(home) == []
