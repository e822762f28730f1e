"""Divergence handling through ``train_and_log`` and the claims report rebuilt from an MLflow store alone."""

from __future__ import annotations

import json
import math

import pytest
from conftest import run_cli

from bnpipe.core import snapshots, sources
from bnpipe.core.variants import Variant
from bnpipe.mlflow_edge import compare, tracking


def test_absurd_learning_rate_diverges_is_marked_and_left_out_of_the_ranking(home):
    from bnpipe.core.train import TrainConfig
    from bnpipe.mlflow_edge.logged_training import train_and_log

    snapshot = snapshots.ingest(sources.IngestRequest(source="breast_cancer"))
    client = tracking.connect()
    exp = tracking.ensure_experiment(client)
    parent = tracking.start_parent_run(client, exp, "bnpipe_experiment", "manual__diverge", "link", {})
    cfg = TrainConfig(epochs=3, batch_size=32, threads=1)
    bad = Variant(preprocessing="none", hidden_bn=False, hidden=(8,), learning_rate=1e30)
    good = Variant(preprocessing="standard", hidden_bn=False, hidden=(8,))
    results = [train_and_log(snapshot, v.to_dict(), cfg, exp, parent) for v in (bad, good)]

    assert [r["status"] for r in results] == ["diverged", "ok"]
    assert all(math.isfinite(v) for v in results[0]["metrics"].values())  # no NaN leaks into the result
    run = client.get_run(results[0]["run_id"])
    assert run.data.tags["bnpipe.status"] == "diverged" and run.info.status == "FINISHED"
    # stopped in its first epoch (TerminateOnNaN), and never scored on the test split
    assert run.data.metrics["epochs_run"] < cfg.epochs and "test_accuracy" not in run.data.metrics
    assert [a.path for a in client.list_artifacts(results[0]["run_id"], "model")] == []  # nothing to register
    ranked = compare.rank(results)
    assert [r["name"] for r in ranked] == [good.name]
    # the healthy one carries the instrumentation
    m = client.get_run(results[1]["run_id"]).data.metrics
    for key in ("grad_norm/dense_0", "grad_norm/output", "grad_log10_ratio", "grad_rms/dense_0",
                "grad_log10_rms_ratio_initial", "grad_abs_log10_rms_ratio_mean", "train_infer_accuracy",
                "gen_gap_accuracy", "dead_fraction", "val_accuracy_epoch1", "loss_epoch1", "n_val",
                "val_accuracy_recalibrated"):  # fmt: skip
        assert key in m, key
    assert [h.step for h in client.get_metric_history(results[1]["run_id"], "gen_gap_accuracy")] == [1, 2, 3]
    # inference-mode train accuracy minus validation accuracy, not Keras' running train-mode accuracy
    assert m["gen_gap_accuracy"] == pytest.approx(m["train_infer_accuracy"] - m["val_accuracy"], abs=1e-6)
    # no BN layer: nothing to recalibrate. The same accuracy (one row is 1/n_val apart), from Keras' float32
    # history and from the float64 re-score
    assert m["val_accuracy_recalibrated"] == pytest.approx(m["val_accuracy"], abs=1e-6)


def _fake_run(client, exp, parent, variant: Variant, val_acc: list[float], extra: dict, status: str = "ok"):
    """A variant run as bnpipe.core.train logs it, without training: params, per-epoch history, final metrics."""
    run_id = tracking.start_variant_run(client, exp, parent, variant.to_dict(), 0, 1, {})
    tracking.log_params(client, run_id, {k: v for k, v in variant.to_dict().items() if k != "name"})
    for epoch, acc in enumerate(val_acc, 1):
        tracking.log_metrics(client, run_id, {"val_accuracy": acc, "accuracy": acc + 0.02, "loss": 1 / epoch}, epoch)
    rows = [({"grad_norm/dense_0": 0.1 * s + 0.01, "grad_norm/output": 1.0}, s) for s in (0, 10, 20)]
    if variant.uses_bn:
        rows += [({"bn_first/moving_mean": s / 20, "bn_first/true_mean": 1.0, "bn_first/moving_var": 1 + s,
                   "bn_first/true_var": 20.0}, s) for s in (0, 10, 20)]  # fmt: skip
    tracking.log_metric_rows(client, run_id, rows)
    final = {"val_accuracy_epoch1": val_acc[0], "gen_gap_accuracy": 0.02, "steps_per_epoch": 10, **extra}
    tracking.log_metrics(client, run_id, final, len(val_acc))
    client.set_tag(run_id, "bnpipe.status", status)
    client.set_terminated(run_id, "FINISHED")
    return run_id


DAG_RUN = "manual__2026-11-26T00:00:00+00:00"


@pytest.fixture
def stored_run(home):
    """A finished DAG run in the MLflow store: standard vs. bn_first over 3 seeds, bn_first far worse."""
    client = tracking.connect()
    exp = tracking.ensure_experiment(client)
    params = {"dataset": "breast_cancer", "grid": "custom", "epochs": 3, "batch_size": 32, "seeds": 3,
              "target_val_accuracy": None}  # fmt: skip
    parent = tracking.start_parent_run(client, exp, "bnpipe_experiment", DAG_RUN, "link", params)
    client.set_tag(parent, "bnpipe.dataset", "breast_cancer")
    for seed, (std, bn) in enumerate([(0.95, 0.30), (0.96, 0.25), (0.94, 0.35)]):
        _fake_run(client, exp, parent, Variant(preprocessing="standard", seed=seed), [0.9, 0.93, std], {})
        _fake_run(client, exp, parent, Variant(preprocessing="bn_first", seed=seed), [0.2, 0.25, bn],
                  {"train_mode_accuracy": 0.9, "infer_mode_accuracy": 0.3 - seed / 100})  # fmt: skip
    _fake_run(client, exp, parent, Variant(preprocessing="bn_first", learning_rate=5.0), [0.1], {}, "diverged")
    client.set_terminated(parent, "FINISHED")
    return parent


def test_report_rebuilds_from_mlflow_alone_by_either_id(home, stored_run, tmp_path):
    out = tmp_path / "by-parent"
    proc = run_cli(["report", stored_run, "--out", str(out)], home)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    md = (out / "report.md").read_text()
    assert "| 4e | does not hold |" in md  # bn_first 0.25-0.35 vs. standard 0.94-0.96
    assert "| 4c | does not hold |" in md  # inference-mode accuracy 0.6 below train-mode
    for claim in ("1", "2", "3", "4b", "4d"):
        assert f"| {claim} | not tested by this grid |" in md, claim
    assert "| 4a | inconclusive |" in md and "no variance" in md  # the same gap 0.02 in every run
    assert "BN-first (momentum 0.99) vs standard" in md
    verdicts = json.loads((out / "verdicts.json").read_text())
    e = next(c for c in verdicts["claims"] if c["claim"] == "4e")
    assert e["verdict"] == "does not hold" and e["comparisons"][0]["n"] == 3
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3 and '<td class="does-not-hold">' in html
    for png in ("learning_curves.png", "grad_norms.png", "final_val_accuracy.png", "bn_stats.png"):
        assert (out / png).stat().st_size > 1000, png
    assert "claim 4e: does not hold. BN-first (momentum 0.99) vs standard" in proc.stdout

    by_dag_run = tmp_path / "by-dag-run"
    proc = run_cli(["report", DAG_RUN, "--out", str(by_dag_run), "--log"], home)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (by_dag_run / "report.md").read_text().split("Rebuilt")[1].count("| 4e | does not hold |") == 1
    client = tracking.connect()
    logged = {a.path for a in client.list_artifacts(stored_run, "report")}
    assert {"report/report.html", "report/report.md", "report/grad_norms.png", "report/verdicts.json"} <= logged


def test_report_for_an_unknown_run_says_what_to_give(home):
    proc = run_cli(["report", "manual__nope"], home)
    assert proc.returncode == 1 and "parent run id or a DAG run id" in proc.stderr
