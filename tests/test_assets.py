"""Assets connect the DAGs: data -> champion -> predictions.

The pure parts (which event a run emits, which events started a run, the scoring DAG's schedule
and plan) are checked on constructed values. The last test runs them on the session's real stack
(``live_stack``): a training run on a data set of its own moves the champion, its asset event
starts the scoring DAG, and that run scores the data set's score inbox with the event's version.
"""

from __future__ import annotations

import time
import urllib.parse
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from stack_fixtures import mlflow_rest

from bnpipe.mlflow_edge import score
from bnpipe.operations import assets
from bnpipe.operations.stack import EXPERIMENT_DAG

SCORE_DAG = "bnpipe_score"
SNAPSHOT = {"dataset": "wine", "digest": "0123456789abcdef", "n_train": 100, "n_val": 40, "n_test": 38}


def _champion(**kw) -> dict:
    base = {"model_name": "bnpipe-wine", "version": 3, "run_id": "r3", "variant": "v", "reason": "why"}
    return {**base, **kw}


def test_champion_event_only_when_the_alias_moved_to_the_winner():
    uri, extra = assets.champion_event(SNAPSHOT, _champion(alias_moved=True, champion_version=3))
    assert uri == "bnpipe://models/bnpipe-wine/champion"
    assert extra["model_name"] == "bnpipe-wine" and extra["version"] == 3 and extra["dataset"] == "wine"
    assert extra["data_digest"] == SNAPSHOT["digest"]
    # the winner did not beat the holder (v2): no event
    assert assets.champion_event(SNAPSHOT, _champion(alias_moved=False, champion_version=2)) is None
    assert assets.champion_event(SNAPSHOT, None) is None
    # a retried compare: an earlier try moved the alias to this winner, and its event was lost with that try
    assert assets.champion_event(SNAPSHOT, _champion(alias_moved=False, champion_version=3))[1]["version"] == 3


def test_data_and_predictions_events_name_the_dataset():
    uri, extra = assets.data_event({**SNAPSHOT, "source_uri": "sklearn://datasets/load_wine", "reused": True})
    assert uri == "bnpipe://data/wine" and extra["digest"] == SNAPSHOT["digest"] and extra["rows"] == 178
    job = {"dataset": "wine", "input_path": "/in/a.csv", "id_column": None, "version": 3}
    result = {"model_name": "bnpipe-wine", "model_version": 3, "input": "/in/a.csv", "output": "/in/a.predictions.csv"}
    uri, extra = assets.predictions_event(job, {**result, "rows": 5})
    assert uri == "bnpipe://predictions/bnpipe-wine" and extra["version"] == 3 and extra["output"].endswith(".csv")


def test_champion_extras_reads_each_triggering_event_once_oldest_first():
    from airflow.sdk import Asset, AssetAlias

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    newer = SimpleNamespace(extra={"dataset": "wine", "version": 4}, timestamp=t0 + timedelta(minutes=1))
    older = SimpleNamespace(extra={"dataset": "wine", "version": 3}, timestamp=t0)
    data = SimpleNamespace(extra={"dataset": "wine", "digest": "d"}, timestamp=t0)
    events = {  # what a run's triggering_asset_events holds: each event under its asset and under its alias
        Asset(assets.champion_uri("wine")): [newer, older],
        AssetAlias(assets.CHAMPION): [newer, older],
        Asset(assets.data_uri("wine")): [data],
    }
    assert assets.champion_extras(events) == [older.extra, newer.extra]
    assert assets.champion_extras({}) == []


def test_score_schedule_keeps_the_time_schedule_available():
    from airflow.sdk import AssetAlias, AssetOrTimeSchedule

    assert assets.score_schedule(None, False) is None  # by hand only, as before
    assert assets.score_schedule("@daily", False) == "@daily"
    assert assets.score_schedule(None, True) == AssetAlias(assets.CHAMPION)
    both = assets.score_schedule("@daily", True)
    assert isinstance(both, AssetOrTimeSchedule) and both.asset_condition == AssetAlias(assets.CHAMPION)
    assert both.timetable.expression == "0 0 * * *"


def test_score_plan_uses_the_event_version_and_the_score_inbox(tmp_path, monkeypatch):
    monkeypatch.setenv("BNPIPE_SCORE_INBOX", str(tmp_path))
    for name in ("b.csv", "a.parquet", "a.predictions.parquet", ".hidden.csv", "notes.txt"):
        (tmp_path / "wine").mkdir(exist_ok=True)
        (tmp_path / "wine" / name).write_text("x\n1\n")
    (tmp_path / "digits").mkdir()
    (tmp_path / "digits" / "d.csv").write_text("x\n1\n")
    events = [{"dataset": "wine", "version": 3}, {"dataset": "digits", "version": 1}, {"dataset": "wine", "version": 5}]
    jobs = score.plan("ignored", "", None, events)
    assert [(j["dataset"], Path(j["input_path"]).name, j["version"]) for j in jobs] == [
        ("wine", "a.parquet", 5),
        ("wine", "b.csv", 5),
        ("digits", "d.csv", 1),
    ]
    assert score.plan("ignored", "", None, [{"dataset": "iris", "version": 1}]) == []  # no folder: nothing to do

    # without events: the alias holder now, for input_path or else the dataset's folder
    monkeypatch.setattr(score, "champion", lambda dataset: {"version": 7})
    assert [j["version"] for j in score.plan("wine", "", None, [])] == [7, 7]
    assert [j["input_path"] for j in score.plan("wine", "/x/in.csv", "id", [])] == ["/x/in.csv"]
    assert score.plan("iris", "", None, []) == []  # by the clock: an empty inbox is nothing to do
    with pytest.raises(score.ScoringError, match=r"nothing to score: set input_path, or put .* into .*iris"):
        score.plan("iris", "", None, [], required=True)  # by hand: say what to do


# ------------------------------------------------------------------- the real stack
DATASET = "digits"  # a model of its own: no other test trains digits on the stack, so the alias moves
TRAIN = {"dataset": DATASET, "grid": "smoke", "epochs": 1, "batch_size": 32}


def _events(client, **query) -> list[dict]:
    return client.api("GET", "/assets/events?" + urllib.parse.urlencode({**query, "limit": 100}))["asset_events"]


@pytest.mark.integration
def test_new_champion_starts_the_scoring_dag_with_its_version(live_stack):
    from sklearn.datasets import load_digits

    client = live_stack.client
    bunch = load_digits()
    folder = Path(live_stack.env["BNPIPE_INBOX"]) / "score" / DATASET  # BNPIPE_SCORE_INBOX's default
    folder.mkdir(parents=True, exist_ok=True)
    rows = pd.DataFrame(bunch.data[:40], columns=bunch.feature_names)
    rows.to_csv(folder / "batch.csv", index=False)
    client.unpause(SCORE_DAG)
    try:
        run_id = client.trigger(EXPERIMENT_DAG, TRAIN)
        assert client.wait_for_run(EXPERIMENT_DAG, run_id, timeout=600) == "success"
        emitted = {e["uri"]: e for e in _events(client, source_dag_id=EXPERIMENT_DAG, source_run_id=run_id)}
        assert set(emitted) == {assets.data_uri(DATASET), assets.champion_uri(DATASET)}, emitted
        data = emitted[assets.data_uri(DATASET)]
        assert data["source_task_id"] == "ingest" and len(data["extra"]["digest"]) == 16
        holder = mlflow_rest(live_stack, "GET", "registered-models/alias", name="bnpipe-digits", alias="champion")
        version = int(holder["model_version"]["version"])
        champion = emitted[assets.champion_uri(DATASET)]
        assert champion["source_task_id"] == "compare"
        assert champion["extra"]["version"] == version and champion["extra"]["model_name"] == "bnpipe-digits"
        assert champion["extra"]["data_digest"] == data["extra"]["digest"]

        deadline = time.monotonic() + 120  # the scheduler turns the event into a scoring run
        while not (created := _created_runs(client, run_id, champion["id"])):
            assert time.monotonic() < deadline, "no scoring run was started by the champion's asset event"
            time.sleep(2)
        assert [r["dag_id"] for r in created] == [SCORE_DAG]
        score_run = created[0]["run_id"]
        assert client.wait_for_run(SCORE_DAG, score_run, timeout=420) == "success"
        assert client.dag_run(SCORE_DAG, score_run)["run_type"] == "asset_triggered"
        tis = client.task_instances(SCORE_DAG, score_run, "score")
        assert [(t["state"], t["rendered_map_index"]) for t in tis] == [("success", "batch.csv")]

        pred = pd.read_csv(folder / "batch.predictions.csv")
        assert len(pred) == len(rows) and pred["row_id"].tolist() == list(range(len(rows)))
        assert set(pred["model_name"]) == {"bnpipe-digits"} and set(pred["model_version"]) == {version}
        assert set(pred["predicted_class"].astype(str)) <= {str(c) for c in bunch.target_names}

        (predictions,) = _events(client, source_dag_id=SCORE_DAG, source_run_id=score_run)
        assert predictions["uri"] == assets.predictions_uri(DATASET)
        assert predictions["extra"]["version"] == version and predictions["extra"]["rows"] == len(rows)
        assert predictions["extra"]["output"] == str(folder / "batch.predictions.csv")
    finally:
        client.pause(SCORE_DAG)


def _created_runs(client, run_id: str, event_id: int) -> list[dict]:
    """The DAG runs that asset event ``event_id`` of experiment run ``run_id`` started."""
    (event,) = [e for e in _events(client, source_dag_id=EXPERIMENT_DAG, source_run_id=run_id) if e["id"] == event_id]
    return event["created_dagruns"]
