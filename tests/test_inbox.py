"""The inbox: a file dropped into $BNPIPE_INBOX starts one experiment, through Airflow's triggerer.

The watcher (what the trigger runs), the claim (what the DAG run does) and the trigger's contract
with the triggerer are checked on a temp folder. The last test drops files into the session's real
stack (``live_stack``): the triggerer announces them, the asset event starts the inbox DAG, and it
starts the experiment with the sidecar's Params; it also measures how long that takes and restarts
the triggerer.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.parse
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest

from bnpipe.base import procs
from bnpipe.operations import assets, inbox
from bnpipe.operations.stack import EXPERIMENT_DAG, INBOX_DAG

T0 = 1_800_000_000.0  # a fixed "now" for the watcher: files are back-dated relative to it


def _drop(folder: Path, name: str, text: str, sidecar: dict | None = None, at: float = T0 - 60) -> Path:
    if sidecar is not None:
        (folder / f"{name}.json").write_text(json.dumps(sidecar))
        os.utime(folder / f"{name}.json", (at, at))
    path = folder / name
    path.write_text(text)
    os.utime(path, (at, at))
    return path


def _names(announced: list[dict]) -> list[str]:
    return [a["name"] for a in announced]


def test_watcher_announces_a_settled_data_file_once(tmp_path):
    w = inbox.Watcher(tmp_path)
    _drop(tmp_path, "a.csv", "x,label\n1,0\n")
    for ignored in (".hidden.csv", "a.predictions.csv", "notes.txt"):
        _drop(tmp_path, ignored, "x\n")
    (tmp_path / "score").mkdir()  # the score inbox is a folder: not a file to train on
    assert w.poll(T0) == []  # first sight: not yet known to be unchanged
    announced = w.poll(T0 + 1)
    assert announced == [{"path": str(tmp_path / "a.csv"), "name": "a.csv", "digest": inbox.digest(tmp_path / "a.csv")}]
    assert w.poll(T0 + 2) == []  # announced, not claimed yet: not again


def test_watcher_waits_for_a_file_still_being_written(tmp_path):
    w = inbox.Watcher(tmp_path, settle=2.0)
    path = _drop(tmp_path, "a.csv", "x,label\n", at=T0 - 60)
    assert w.poll(T0) == []
    with path.open("a") as f:  # still growing, its old mtime kept (as cp -p does): the size tells
        f.write("1,0\n")
    os.utime(path, (T0 - 60, T0 - 60))
    assert w.poll(T0 + 1) == []  # changed since the last scan
    assert _names(w.poll(T0 + 2)) == ["a.csv"]  # unchanged since the last scan, and for long enough
    fresh = inbox.Watcher(tmp_path, settle=2.0)
    _drop(tmp_path, "b.csv", "x,label\n1,0\n", at=T0 + 10)
    fresh.poll(T0 + 10.5)
    assert "b.csv" not in _names(fresh.poll(T0 + 11))  # unchanged since the last scan, but for 1 s only
    assert "b.csv" in _names(fresh.poll(T0 + 12.5))


def test_a_file_the_watcher_cannot_read_does_not_hold_up_the_others(tmp_path, monkeypatch):
    read = inbox.digest

    def digest(path: Path) -> str:
        if path.name == "locked.csv":
            raise PermissionError(13, "Permission denied", str(path))
        return read(path)

    monkeypatch.setattr(inbox, "digest", digest)
    _drop(tmp_path, "locked.csv", "x,label\n1,0\n", at=T0 - 120)
    _drop(tmp_path, "open.csv", "x,label\n1,0\n")
    w = inbox.Watcher(tmp_path)
    w.poll(T0)
    assert _names(w.poll(T0 + 1)) == ["open.csv"]
    monkeypatch.setattr(inbox, "digest", read)  # readable now: taken at the next scan
    assert _names(w.poll(T0 + 2)) == ["locked.csv"]


def test_claimed_files_are_seen_new_content_and_restarts(tmp_path):
    path = _drop(tmp_path, "a.csv", "x,label\n1,0\n2,1\n")
    w = inbox.Watcher(tmp_path)
    w.poll(T0)
    first = w.poll(T0 + 1)
    restarted = inbox.Watcher(tmp_path)  # a triggerer restart before the run claimed the file: memory lost
    restarted.poll(T0 + 2)
    assert restarted.poll(T0 + 3) == first  # announced again ...
    assert len(inbox.claim(first, "inbox_run_1")) == 1
    assert inbox.claim(first, "inbox_run_2") == []  # ... and the marker lets one claim through
    assert w.poll(T0 + 4) == [] and restarted.poll(T0 + 4) == []
    fresh = inbox.Watcher(tmp_path)
    fresh.poll(T0 + 5)
    assert fresh.poll(T0 + 6) == []  # the marker is on disk: a new trigger does not announce it
    _drop(tmp_path, "a.csv", "x,label\n1,0\n2,1\n", at=T0 + 10)  # the same bytes again: still seen
    fresh.poll(T0 + 20)
    assert fresh.poll(T0 + 21) == []
    _drop(tmp_path, "a.csv", "x,label\n1,0\n2,1\n3,0\n", at=T0 + 30)  # new content, same name: new
    fresh.poll(T0 + 40)
    again = fresh.poll(T0 + 41)
    assert _names(again) == ["a.csv"] and again[0]["digest"] != first[0]["digest"]
    (tmp_path / "a.csv.json").write_text('{"epochs": 2}')  # a sidecar added or changed: new too
    os.utime(tmp_path / "a.csv.json", (T0 + 50, T0 + 50))
    inbox.claim(again, "inbox_run_3")
    fresh.poll(T0 + 60)
    assert _names(fresh.poll(T0 + 61)) == ["a.csv"]
    assert path.exists() and (tmp_path / "a.csv.json").exists()  # nothing is deleted


def test_files_the_former_sensor_started_stay_seen(tmp_path):
    path = _drop(tmp_path, "old.csv", "x,label\n1,0\n")
    st = path.stat()
    (tmp_path / ".seen").mkdir()
    (tmp_path / ".seen" / f"old.csv@{st.st_size}-{st.st_mtime_ns}").write_text("started\n")
    w = inbox.Watcher(tmp_path)
    w.poll(T0)
    assert w.poll(T0 + 1) == []
    assert inbox.claim([{"path": str(path), "name": "old.csv", "digest": inbox.digest(path)}], "run") == []


def test_claim_builds_the_conf_from_the_sidecar_and_is_idempotent_per_run(tmp_path):
    from airflow.configuration import conf as airflow_conf

    path = _drop(tmp_path, "my churn (v2).csv", "a,churned\n1,0\n", sidecar={"label": "churned", "grid": "smoke"})
    item = {"path": str(path), "name": path.name, "digest": inbox.digest(path)}
    starts = inbox.claim([item, item], "asset_triggered__run1")  # one file announced twice: one start
    assert len(starts) == 1
    conf, run_id = starts[0]["conf"], starts[0]["trigger_run_id"]
    assert conf["dataset"] == "csv" and conf["data_path"] == str(path)
    assert conf["label"] == "churned" and conf["grid"] == "smoke"
    pattern = airflow_conf.get("scheduler", "allowed_run_id_pattern")
    assert __import__("re").match(pattern, run_id), run_id
    assert run_id.startswith("inbox__my_churn__v2_.csv__" + item["digest"][:12])
    record = json.loads(inbox.marker(path, item["digest"]).read_text())
    assert record["run_id"] == run_id and record["claimed_by"] == "asset_triggered__run1"
    assert inbox.claim([item], "asset_triggered__run1") == starts  # the task retried: the same start
    assert inbox.claim([item], "asset_triggered__run2") == []


def test_claim_skips_changed_and_gone_files_and_rejects_a_bad_sidecar(tmp_path):
    path = _drop(tmp_path, "a.csv", "x,label\n1,0\n")
    stale = {"path": str(path), "name": "a.csv", "digest": inbox.digest(path)}
    path.write_text("x,label\n1,0\n2,1\n")  # rewritten after it was announced
    assert inbox.claim([stale], "run") == []
    assert not inbox.marker(path, stale["digest"]).exists()
    assert inbox.claim([{"path": str(tmp_path / "gone.csv"), "name": "gone.csv", "digest": "0" * 16}], "run") == []
    bad = _drop(tmp_path, "b.csv", "x,label\n1,0\n", sidecar={"epochs": 0})
    item = {"path": str(bad), "name": "b.csv", "digest": inbox.digest(bad)}
    assert inbox.claim([item], "run") == []
    reason = inbox.marker(bad, item["digest"]).with_name(f"b.csv@{item['digest']}.rejected").read_text()
    assert "epochs" in reason
    w = inbox.Watcher(tmp_path)
    w.poll(T0)
    assert "b.csv" not in _names(w.poll(T0 + 1))  # rejected is seen: fix the sidecar to try again
    (tmp_path / "b.csv.json").write_text('{"epochs": 1}')
    os.utime(tmp_path / "b.csv.json", (T0, T0))
    w.poll(T0 + 2)
    assert "b.csv" in _names(w.poll(T0 + 3))


def test_inbox_announcements_read_the_runs_inbox_events_oldest_first():
    from airflow.sdk import Asset

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    a = {"path": "/in/a.csv", "name": "a.csv", "digest": "a" * 16}
    b = {"path": "/in/b.csv", "name": "b.csv", "digest": "b" * 16}
    events = {  # as triggering_asset_events holds them: under the asset as Airflow stored it
        Asset(name=assets.INBOX_URI, uri="bnpipe://inbox/"): [
            SimpleNamespace(extra={"from_trigger": True, "payload": b}, timestamp=t0 + timedelta(seconds=1)),
            SimpleNamespace(extra={"from_trigger": True, "payload": a}, timestamp=t0),
        ],
        Asset(assets.data_uri("wine")): [SimpleNamespace(extra={"digest": "d"}, timestamp=t0)],
    }
    assert assets.inbox_announcements(events) == [a, b]
    assert assets.inbox_announcements({}) == []


def _first_event(trigger, timeout: float = 20):
    async def first():
        events = trigger.run()
        try:
            return await asyncio.wait_for(events.__anext__(), timeout)
        finally:
            await events.aclose()

    return asyncio.run(first())


def test_the_trigger_is_an_event_trigger_recreated_from_its_kwargs(tmp_path):
    from airflow.sdk import AssetWatcher
    from airflow.triggers.base import BaseEventTrigger

    from bnpipe.operations.inbox_trigger import InboxTrigger

    trigger = InboxTrigger(directory=str(tmp_path), poll_seconds=0.05, settle_seconds=0.1)
    classpath, kwargs = trigger.serialize()
    assert isinstance(trigger, BaseEventTrigger)
    AssetWatcher(name="w", trigger=trigger)  # refuses anything but an event trigger
    assert not any("timeout" in k for k in kwargs)  # an event trigger runs until cancelled
    module, _, name = classpath.rpartition(".")
    recreated = getattr(__import__(module, fromlist=[name]), name)(**json.loads(json.dumps(kwargs)))
    assert recreated.serialize() == (classpath, kwargs)
    path = _drop(tmp_path, "a.csv", "x,label\n1,0\n", at=time.time() - 60)
    event = _first_event(recreated)
    assert event.payload == {"path": str(path), "name": "a.csv", "digest": inbox.digest(path)}
    asset = assets.inbox(tmp_path)
    assert asset.watchers[0].trigger.serialize()[1]["directory"] == str(tmp_path)


def test_the_triggerer_imports_nothing_heavy_for_it():
    heavy = {"tensorflow", "keras", "mlflow", "pandas"}
    code = (
        "import json, sys; import bnpipe.operations.inbox_trigger;"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & {heavy!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


# ------------------------------------------------------------------ on the real stack
ROWS = 120
SIDECAR = {"label": "target", "grid": "smoke", "epochs": 1}


def _csv(seed: int) -> str:
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(ROWS, 3)) * [1, 10, 100]
    y = (x[:, 0] + x[:, 1] / 10 > 0).astype(int)
    return "a,b,c,target\n" + "".join(",".join(f"{v:.4f}" for v in r) + f",{t}\n" for r, t in zip(x, y))


def _wait(what, timeout: float, every: float = 1.0):
    """``what()``'s first truthy value within ``timeout`` seconds, else None. A poll the API did not
    answer in time (a loaded machine's SQLite stack can stall for tens of seconds) counts as not yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = what()
        except TimeoutError:
            found = None
        if found or time.monotonic() > deadline:
            return found or None
        time.sleep(every)


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


class _Inbox:
    """The stack's inbox seen through Airflow's REST API: the asset, its events, the runs they start."""

    def __init__(self, stack):
        self.client, self.folder = stack.client, Path(stack.env["BNPIPE_INBOX"])

    def runs(self, dag_id: str, query: str = "") -> list[dict]:
        return self.client.api("GET", f"/dags/{dag_id}/dagRuns?limit=25&order_by=-run_after{query}")["dag_runs"]

    def asset(self) -> dict | None:
        """The inbox asset, once it has its watcher (the trigger the triggerer runs)."""
        found = self.client.api("GET", f"/assets?uri_pattern={urllib.parse.quote(assets.INBOX_URI)}")["assets"]
        return next((a for a in found if a["watchers"]), None)

    def event(self, asset_id: int, digest: str) -> dict | None:
        """The asset event announcing the file with ``digest``, once it has created its DAG run."""
        path = f"/assets/events?asset_id={asset_id}&limit=50&order_by=-timestamp"
        events = [e for e in self.client.api("GET", path)["asset_events"]
                  if ((e.get("extra") or {}).get("payload") or {}).get("digest") == digest]  # fmt: skip
        assert len(events) <= 1, f"the file {digest} was announced {len(events)} times"
        return events[0] if events and events[0]["created_dagruns"] else None

    def experiment(self, path: Path, digest: str) -> dict | None:
        """The experiment run started for ``path`` with content ``digest`` (its run id names both)."""
        prefix = urllib.parse.quote(f"inbox__{path.name}__{digest[:12]}")
        runs = self.runs(EXPERIMENT_DAG, f"&run_id_prefix_pattern={prefix}")
        return next((r for r in runs if (r.get("conf") or {}).get("data_path") == str(path)), None)

    def delete(self, dag_id: str, run_id: str) -> None:
        self.client.api("DELETE", f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}")


@pytest.mark.integration
def test_a_dropped_file_starts_an_experiment_through_the_triggerer(live_stack):
    """Drop, event, inbox run, experiment with the sidecar's Params; then latency, new content, restart.

    Leaves the stack as it found it: the inbox DAG paused and no experiment run queued (the runs
    started only to be measured are created while the experiment DAG is paused, then deleted).
    """
    box, client = _Inbox(live_stack), live_stack.client
    client.unpause(INBOX_DAG)
    experiment_paused = False
    try:
        token = client.api("GET", f"/dags/{INBOX_DAG}/details")["file_token"]
        client.api("PUT", f"/parseDagFile/{token}")  # the watcher is created when the unpaused DAG is parsed again
        asset = _wait(box.asset, 120)
        assert asset, "the inbox asset has no watcher"

        # 1. a file and its sidecar: one event, one inbox run (no sensor), an experiment with the sidecar's Params
        path = _drop(box.folder, "drop.csv", _csv(0), sidecar=SIDECAR, at=time.time())
        digest = inbox.digest(path)
        run = _wait(partial(box.experiment, path, digest), 180)
        assert run, "no experiment run was started for the dropped file"
        assert {k: run["conf"][k] for k in SIDECAR} == SIDECAR and run["conf"]["dataset"] == "csv"
        event = box.event(asset["id"], digest)
        assert event["extra"]["from_trigger"] is True and event["extra"]["payload"]["path"] == str(path)
        inbox_run = client.dag_run(INBOX_DAG, event["created_dagruns"][0]["run_id"])
        assert inbox_run["run_type"] == "asset_triggered"
        tis = client.task_instances(INBOX_DAG, inbox_run["dag_run_id"])
        assert {t["task_id"] for t in tis} == {"claim_files", "start_experiment"}  # no sensor
        assert client.wait_for_run(EXPERIMENT_DAG, run["dag_run_id"], timeout=600) == "success"
        assert json.loads(inbox.marker(path, digest).read_text())["run_id"] == run["dag_run_id"]

        # 2. latency, file written -> inbox run started -> experiment run created, over several drops;
        # the first is drop.csv again with new content, which is a new file
        client.pause(EXPERIMENT_DAG)
        experiment_paused = True
        to_inbox, to_experiment, dropped = [], [], [digest]
        for i in range(1, 6):
            path = _drop(box.folder, "drop.csv" if i == 1 else f"latency-{i}.csv", _csv(i), at=time.time())
            written, digest = path.stat().st_mtime, inbox.digest(path)
            dropped.append(digest)
            started = _wait(partial(box.experiment, path, digest), 120)
            assert started, f"no experiment run for {path.name} ({digest})"
            event = box.event(asset["id"], digest)
            inbox_run = client.dag_run(INBOX_DAG, event["created_dagruns"][0]["run_id"])
            to_inbox.append(_ts(inbox_run["start_date"]) - written)
            to_experiment.append(_ts(started["queued_at"]) - written)
            box.delete(EXPERIMENT_DAG, started["dag_run_id"])
        print(
            f"\ninbox latency, {len(to_inbox)} drops, load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: "
            f"file -> inbox DAG run start median {statistics.median(to_inbox):.1f} s, max {max(to_inbox):.1f} s; "
            f"file -> experiment run created median {statistics.median(to_experiment):.1f} s, "
            f"max {max(to_experiment):.1f} s"
        )
        assert max(to_experiment) < 60  # the sensor it replaced checked once a minute

        # 3. the triggerer restarts: a file dropped while it was down is started, the claimed ones are not again
        procs.terminate(live_stack.record_of("triggerer"))
        path = _drop(box.folder, "while-down.csv", _csv(9), at=time.time())
        digest = inbox.digest(path)
        live_stack.start(components=("triggerer",), timeout=240)
        assert _wait(partial(box.experiment, path, digest), 240), "nothing was started after the restart"
        # the older files were announced again no later than this one: wait until their runs ended
        assert _wait(lambda: not box.runs(INBOX_DAG, "&state=queued&state=running"), 120)
        queued = box.runs(EXPERIMENT_DAG, "&state=queued")
        assert [r["conf"]["data_path"] for r in queued] == [str(path)]
        for digest in dropped:  # the new trigger did not announce the claimed files again
            assert box.event(asset["id"], digest)
        box.delete(EXPERIMENT_DAG, queued[0]["dag_run_id"])
    finally:
        client.pause(INBOX_DAG)
        if experiment_paused:
            client.unpause(EXPERIMENT_DAG)
