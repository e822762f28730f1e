"""Assets: what connects the DAGs in Airflow's Assets view, inbox -> data -> model -> predictions.

| asset | emitted by | when | the event's extra |
|---|---|---|---|
| ``bnpipe://inbox`` | its watcher (``InboxTrigger``, triggerer) | a new file is ready | payload: path, name, digest |
| ``bnpipe://data/<dataset>`` | ``bnpipe_experiment.ingest`` | every run | digest, source, rows |
| ``bnpipe://models/bnpipe-<dataset>/champion`` | ``bnpipe_experiment.compare`` | the alias moved | model, version |
| ``bnpipe://predictions/bnpipe-<dataset>`` | ``bnpipe_score.score`` | a file was scored | version, files, rows |

The data set is a run Param, so a URI is known only while the task runs. Each task therefore
declares one ``AssetAlias`` per kind as its outlet (fixed when the DAG is parsed) and adds the
concrete asset through it at run time; Airflow creates the asset on its first event. A DAG
scheduled on an alias runs on an event of any asset the alias stands for: the scoring DAG, on
:data:`CHAMPION`, runs whenever any data set's champion moves (``score_schedule``). With approval
required, the alias moves, and its event is emitted, in ``bnpipe_experiment.promote`` instead. The inbox asset
is fixed, and no task emits it: an ``AssetWatcher`` does (:func:`inbox`), and the inbox DAG runs on it.

Importing this module imports no Airflow: the functions that build Airflow objects import
``airflow.sdk``, which the DAG files have loaded already, when they are called.
"""

from __future__ import annotations

from bnpipe.mlflow_edge import tracking

# The aliases the tasks declare as outlets, one per kind of asset.
DATA, CHAMPION, PREDICTIONS = "bnpipe-data", "bnpipe-champion", "bnpipe-predictions"
CHAMPION_PREFIX = "bnpipe://models/"
INBOX_URI = "bnpipe://inbox"


def data_uri(dataset: str) -> str:
    return f"bnpipe://data/{dataset}"


def champion_uri(dataset: str) -> str:
    return f"{CHAMPION_PREFIX}{tracking.model_name(dataset)}/champion"


def predictions_uri(dataset: str) -> str:
    return f"bnpipe://predictions/{tracking.model_name(dataset)}"


def inbox(directory):
    """The inbox asset, watched in the triggerer by an ``InboxTrigger`` on ``directory``: each new file is an event."""
    from airflow.sdk import Asset, AssetWatcher

    from bnpipe.operations.inbox_trigger import InboxTrigger

    watcher = AssetWatcher(name="bnpipe-inbox-files", trigger=InboxTrigger(directory=str(directory)))
    return Asset(INBOX_URI, extra={"directory": str(directory)}, watchers=[watcher])


def inbox_announcements(triggering_asset_events) -> list[dict]:
    """The files announced by the inbox events that started this DAG run (``{path, name, digest}``), oldest first.

    Several files dropped before the run was created arrive as several events of one run.
    """
    from airflow.sdk import Asset

    inbox_asset = Asset(INBOX_URI)  # its URI as Airflow normalizes it ("bnpipe://inbox/")
    events = [
        event
        for key in triggering_asset_events
        if isinstance(key, Asset) and (key.name, key.uri) == (inbox_asset.name, inbox_asset.uri)
        for event in triggering_asset_events[key]
    ]
    payloads = [e.extra.get("payload") for e in sorted(events, key=lambda e: e.timestamp)]
    return [p for p in payloads if isinstance(p, dict) and {"path", "digest"} <= set(p)]


def alias(name: str):
    """The ``AssetAlias`` ``name``, for a task's ``outlets`` or a DAG's schedule."""
    from airflow.sdk import AssetAlias

    return AssetAlias(name)


def data_event(snapshot: dict) -> tuple[str, dict]:
    """The data asset's event for an ingested snapshot: its digest, where it came from, its rows."""
    rows = sum(int(snapshot.get(k) or 0) for k in ("n_train", "n_val", "n_test"))
    extra = {
        "dataset": snapshot["dataset"],
        "digest": snapshot["digest"],
        "source_uri": snapshot.get("source_uri"),
        "rows": rows,
        "reused": bool(snapshot.get("reused")),
    }
    return data_uri(snapshot["dataset"]), extra


def champion_event(snapshot: dict, champion: dict | None) -> tuple[str, dict] | None:
    """The champion asset's event when the alias moved to this run's winner; None when it did not.

    ``champion`` is compare's outcome (``model_name``, ``version``, ``alias_moved``,
    ``champion_version``: who holds the alias now). A retried compare whose earlier try moved the
    alias finds the winner holding it already (``alias_moved`` false): that move's event was lost
    with the failed try, so it is emitted now.
    """
    if not champion or not (champion.get("alias_moved") or champion.get("champion_version") == champion["version"]):
        return None
    extra = {
        "dataset": snapshot["dataset"],
        "model_name": champion["model_name"],
        "version": int(champion["version"]),
        "variant": champion.get("variant"),
        "run_id": champion.get("run_id"),
        "data_digest": snapshot["digest"],
        "reason": champion.get("reason"),
    }
    return champion_uri(snapshot["dataset"]), extra


def predictions_event(job: dict, result: dict) -> tuple[str, dict]:
    """The predictions asset's event for one scored file: which version wrote what."""
    extra = {
        "dataset": job["dataset"],
        "model_name": result["model_name"],
        "version": int(result["model_version"]),
        "input": result["input"],
        "output": result["output"],
        "rows": result["rows"],
    }
    return predictions_uri(job["dataset"]), extra


def emit(outlet_events, alias_name: str, event: tuple[str, dict] | None) -> None:
    """Add ``event`` (URI, extra) to the running task's outlet events through ``alias_name``; None adds nothing.

    The task must declare ``alias(alias_name)`` among its outlets.
    """
    if event is None:
        return
    from airflow.sdk import Asset, AssetAlias

    uri, extra = event
    outlet_events[AssetAlias(alias_name)].add(Asset(uri), extra=extra)


def champion_extras(triggering_asset_events) -> list[dict]:
    """The extras of the champion events that started this DAG run, oldest first.

    Empty for a run started by hand or by the clock. Read from the run's ``triggering_asset_events``
    by asset (every champion asset, emitted through the alias or not), so each event counts once.
    """
    from airflow.sdk import Asset

    events = [
        event
        for key in triggering_asset_events
        if isinstance(key, Asset) and key.uri.startswith(CHAMPION_PREFIX)
        for event in triggering_asset_events[key]
    ]
    return [dict(e.extra) for e in sorted(events, key=lambda e: e.timestamp) if {"dataset", "version"} <= set(e.extra)]


def score_schedule(cron: str | None, on_champion: bool):
    """The scoring DAG's schedule: the time schedule ``cron``, the champion alias, both, or neither.

    ``on_champion`` adds the alias :data:`CHAMPION`: a run whenever a champion moves. With a
    ``cron`` too, either starts a run (``AssetOrTimeSchedule``). None: by hand only.
    """
    if not on_champion:
        return cron
    if not cron:
        return alias(CHAMPION)
    from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable
    from airflow.settings import TIMEZONE  # the DAGs' default time zone, as a plain cron string gets it

    return AssetOrTimeSchedule(timetable=CronTriggerTimetable(cron, timezone=TIMEZONE), assets=alias(CHAMPION))
