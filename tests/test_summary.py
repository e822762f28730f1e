"""The typed run summary (issue 15): compare builds it, the loader rebuilds the same one from MLflow,
and the renderers give the closing summary, the Markdown table and the results tab's HTML."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from bnpipe.mlflow_edge import tracking
from bnpipe.mlflow_edge.summary import Champion, RunSummary, VariantRow
from bnpipe.reporting import summaries

ROOT = Path(__file__).resolve().parents[1]


def _summary(**changes) -> RunSummary:
    """Three variants given in name order: b wins, a second, c diverged (unranked); v3 holds champion."""
    fields = dict(
        experiment_id="1",
        parent_run_id="p" * 32,
        metric="val_accuracy",
        variants=(
            VariantRow("a", "run-a", "ok", {"val_accuracy": 0.9, "val_loss": 0.5, "train_seconds": 1.25}, rank=2),
            VariantRow("b", "run-b", "ok", {"val_accuracy": 0.95, "val_loss": 0.4}, rank=1),
            VariantRow("c", "run-c", "diverged", {"val_accuracy": 0.1}),
        ),
        dag_run_id="manual__1",
        status="FINISHED",
        champion=Champion("bnpipe-x", 3, "run-b", "b", True, "beats champion v2's 0.9000", 3),
    )
    return RunSummary(**{**fields, **changes})


# --- the type and its JSON form -----------------------------------------------------------------------


def test_table_is_ranked_first_then_the_unranked_in_their_order():
    s = _summary()
    assert [v.name for v in s.table] == ["b", "a", "c"] and s.winner == "b"
    assert [v.name for v in s.variants] == ["a", "b", "c"]


def test_to_dict_is_the_json_shape_of_xcom_and_summary_json():
    d = json.loads(json.dumps(_summary().to_dict()))
    assert set(d) == {"experiment_id", "parent_run_id", "dag_run_id", "status", "metric", "variants", "table",
                      "failure", "champion"}  # fmt: skip
    assert d["variants"][0] == {"name": "a", "run_id": "run-a", "status": "ok",
                                "metrics": {"val_accuracy": 0.9, "val_loss": 0.5, "train_seconds": 1.25}}  # fmt: skip
    assert [(r["rank"], r["variant"]) for r in d["table"]] == [(1, "b"), (2, "a"), ("-", "c")]
    assert list(d["table"][0]) == ["rank", "variant", "status", "val_accuracy", "val_loss", "test_accuracy",
                                   "accuracy", "loss", "train_seconds", "epochs_run", "run_id"]  # fmt: skip
    assert d["champion"] == {"model_name": "bnpipe-x", "version": 3, "run_id": "run-b", "variant": "b",
                             "alias_moved": True, "reason": "beats champion v2's 0.9000",
                             "champion_version": 3, "awaiting_approval": False}  # fmt: skip
    assert _summary(champion=None).to_dict()["champion"] is None


# --- the renderers ------------------------------------------------------------------------------------


def test_text_is_the_closing_summary():
    expected = "\n".join([
        "| rank | variant | status | val_accuracy | val_loss | test_accuracy | train_seconds |",
        "|---|---|---|---|---|---|---|",
        "| 1 | b | ok | 0.9500 | 0.4000 |  |  |",
        "| 2 | a | ok | 0.9000 | 0.5000 |  | 1.2500 |",
        "| - | c | diverged | 0.1000 |  |  |  |",
        "",
        "Winner b: bnpipe-x version 3 now holds 'champion'.",
        "Reason: beats champion v2's 0.9000",
        "'champion' -> bnpipe-x version 3",
        "",
        "claim 1: holds",
        "",
        "Claims report: somewhere",
        "MLflow UI: there",
    ])  # fmt: skip
    tail = ["claim 1: holds", "", "Claims report: somewhere\nMLflow UI: there"]
    assert summaries.text(_summary(), tail=tail) == expected


def test_text_keeps_the_top_rows_and_says_what_it_left_out():
    out = summaries.text(_summary(), top=2).splitlines()
    assert out[2:4] == ["| 1 | b | ok | 0.9500 | 0.4000 |  |  |", "| 2 | a | ok | 0.9000 | 0.5000 |  | 1.2500 |"]
    assert out[4] == "(top 2 of 3 variants; the full table is the parent run's comparison/comparison.csv)"


def test_champion_lines_for_a_kept_alias_and_for_a_failed_run():
    kept = Champion("bnpipe-x", 4, "run-b", "b", False, "ties with champion v3", 3)
    assert summaries.champion_lines(_summary(champion=kept)) == [
        "Winner b: bnpipe-x version 4 was registered; the alias did not move.",
        "Reason: ties with champion v3",
        "'champion' -> bnpipe-x version 3",
    ]
    removed = Champion("bnpipe-x", 4, "run-b", "b", True, "r", None)  # the alias was removed since
    assert summaries.champion_lines(_summary(champion=removed))[-1] == "Reason: r"
    failed = _summary(champion=None, failure="every variant diverged")
    assert summaries.champion_lines(failed) == ["No champion: every variant diverged"]
    assert summaries.markdown(failed).endswith("\n\nNo champion: every variant diverged")


def test_html_links_each_variant_marks_the_winner_and_escapes_what_it_shows():
    hostile = VariantRow("<b>x</b>", "run-x", "ok", {"val_accuracy": 0.5}, rank=3)
    s = _summary(variants=(*_summary().variants, hostile), failure="<oops>")
    page = summaries.html(s, lambda run_id: f"http://ui/#/runs/{run_id}?a=1&b=2")
    assert page.startswith(
        "<p>MLflow parent run <a href='http://ui/#/runs/" + "p" * 32 + "?a=1&amp;b=2' target='_blank' "
        "rel='noopener'>" + "p" * 32 + "</a> (FINISHED), ranked on <b>val_accuracy</b>.</p>"
        "<table id='comparison'><tr><th>rank</th><th>variant</th><th>status</th><th>val_accuracy</th>"
        "<th>val_loss</th><th>test_accuracy</th><th>train_seconds</th></tr>"
    )
    assert (
        "<tr class='winner'><td>1</td><td><a href='http://ui/#/runs/run-b?a=1&amp;b=2' target='_blank' "
        "rel='noopener'>b</a></td><td>ok</td><td>0.9500</td><td>0.4000</td><td></td><td></td></tr>"
    ) in page
    assert page.count("class='winner'") == 1 and "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert (
        "<p id='champion'>Winner <b>b</b>: bnpipe-x version 3 now holds <code>champion</code>. "
        "beats champion v2&#x27;s 0.9000</p>"
    ) in page
    assert page.endswith("<p><b>Failure:</b> &lt;oops&gt;</p>")
    empty = summaries.html(_summary(variants=(), champion=None), lambda run_id: run_id)
    assert "<p>No variant has finished yet.</p>" in empty and "comparison" not in empty


# --- compare builds it; the loader rebuilds the same one from MLflow --------------------------------------


@pytest.fixture
def concluded(home, monkeypatch):
    """A finished DAG run in a real MLflow store: two healthy variants and a diverged one, concluded by compare
    (the model file edges replaced), with ``(client, summary, dag_run_id)``."""
    from bnpipe.mlflow_edge import compare, tracking

    monkeypatch.setattr(compare, "_log_full_model", lambda c, w, s: f"runs:/{w['run_id']}/registered_model")
    client = tracking.connect()
    exp = tracking.ensure_experiment(client)
    dag_run_id = "manual__2026-01-01T00:00:00+00:00"
    parent = tracking.start_parent_run(client, exp, "bnpipe_experiment", dag_run_id, "", {"metric": "val_accuracy"})
    client.set_tag(parent, tracking.TAG + "dataset", "toy")
    results = []
    for i, (name, status, metrics) in enumerate([
        ("a", "ok", {"val_accuracy": 0.8, "val_loss": 0.5, "train_seconds": 2.0}),
        ("b", "ok", {"val_accuracy": 0.9, "val_loss": 0.4, "train_seconds": 3.0}),
        ("c", "diverged", {"val_accuracy": 0.1}),
    ]):  # fmt: skip
        tags = {tracking.TAG + "status": status}
        run_id = tracking.start_variant_run(client, exp, parent, {"name": name}, i, 1, tags)
        tracking.log_metrics(client, run_id, metrics)
        client.set_terminated(run_id)
        results.append({"name": name, "run_id": run_id, "status": status, "metrics": metrics, "train_key": name})
    snapshot = {"dataset": "toy", "digest": "d1", "n_train": 6, "n_val": 2, "n_test": 2}
    return client, compare.conclude(results, snapshot, parent, "val_accuracy"), dag_run_id


def test_compare_returns_the_typed_summary_and_records_the_decision(concluded, tmp_path):
    client, s, dag_run_id = concluded
    assert isinstance(s, RunSummary) and [v.name for v in s.table] == ["b", "a", "c"]
    assert (s.dag_run_id, s.status, s.failure) == (dag_run_id, "FINISHED", None)
    assert s.champion == Champion("bnpipe-toy", 1, s.variants[1].run_id, "b", True,
                                  "no champion yet; version 1 becomes champion", 1)  # fmt: skip
    tags = client.get_run(s.parent_run_id).data.tags
    assert {k: tags[f"bnpipe.{k}"] for k in ("winner", "alias_moved", "alias_reason", "registered_version")} == {
        "winner": "b", "alias_moved": "true", "alias_reason": "no champion yet; version 1 becomes champion",
        "registered_version": "1",
    }  # fmt: skip
    lines = Path(client.download_artifacts(s.parent_run_id, "comparison/comparison.md", str(tmp_path))).read_text()
    lines = lines.splitlines()
    assert lines[0] == "| " + " | ".join(s.to_dict()["table"][0]) + " |"
    assert [line.split(" | ")[1] for line in lines[2:]] == ["b", "a", "c"]


def test_the_loader_rebuilds_what_compare_returned(concluded):
    client, s, dag_run_id = concluded
    assert summaries.load_summary(dag_run_id=dag_run_id) == s
    assert summaries.load_summary(dag_id="bnpipe_experiment", dag_run_id=dag_run_id) == s
    assert summaries.load_summary(dag_id="another_dag", dag_run_id=dag_run_id) is None
    assert summaries.resolve_summary(s.parent_run_id) == s
    assert summaries.resolve_summary(dag_run_id) == s
    assert summaries.resolve_summary("0" * 32) is None  # looks like a run id, is not one, nor a DAG run id
    assert summaries.find_parent(client, "bnpipe_experiment").info.run_id == s.parent_run_id  # the latest


def test_the_loader_reads_who_holds_champion_now(concluded):
    from mlflow.exceptions import MlflowException

    client, s, dag_run_id = concluded
    client.delete_registered_model_alias("bnpipe-toy", "champion")
    assert summaries.load_summary(dag_run_id=dag_run_id).champion.champion_version is None
    client.delete_registered_model("bnpipe-toy")
    with pytest.raises(MlflowException, match="bnpipe-toy"):  # the registered version itself is gone: said, not hidden
        summaries.load_summary(dag_run_id=dag_run_id)


def test_the_loader_does_not_take_an_outage_for_a_removed_alias(concluded, monkeypatch):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

    client, s, _ = concluded

    def unavailable(name):
        raise MlflowException("API request failed with error code 503 != 200", TEMPORARILY_UNAVAILABLE)

    monkeypatch.setattr(client, "get_registered_model", unavailable)
    with pytest.raises(MlflowException, match="503"):
        summaries.summary_of(client, client.get_run(s.parent_run_id))


def test_a_run_without_variants_yet_has_an_empty_table(home):
    from bnpipe.mlflow_edge import tracking

    client = tracking.connect()
    exp = tracking.ensure_experiment(client)
    tracking.start_parent_run(client, exp, "bnpipe_experiment", "manual__2", "", {"metric": "val_loss"})
    s = summaries.load_summary(dag_run_id="manual__2")
    assert (s.variants, s.champion, s.metric, s.status) == ((), None, "val_loss", "RUNNING")


def test_the_plugins_results_tab_renders_the_loaded_summary(concluded, monkeypatch):
    """The plugin's page is the loader plus ``summaries.html``: the table, the winner and the champion line."""
    client, s, dag_run_id = concluded
    monkeypatch.setenv("BNPIPE_MLFLOW_UI_URL", "http://mlflow.ui")
    spec = importlib.util.spec_from_file_location("bnpipe_plugin_summary", ROOT / "plugins" / "bnpipe_plugin.py")
    plugin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)
    page = plugin._results_page("bnpipe_experiment", dag_run_id)
    body = summaries.html(s, lambda run_id: f"http://mlflow.ui/{tracking.ui_page(s.experiment_id, run_id)}")
    assert "?workflowType=machine_learning" in body  # the runs open in the UI's Model training view
    assert f"<h2>bnpipe results: bnpipe_experiment / {dag_run_id}</h2>{body}" in page
    assert "<tr class='winner'><td>1</td>" in page and "version 1 now holds <code>champion</code>" in page
    assert "id='no-report'" in page  # no claims report was logged on this run
