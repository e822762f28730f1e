"""Snapshots through MLflow's artifact store: published once per digest, fetched and verified on a worker
that lacks them, never fetched by one that has them. A throwaway SQLite store with local artifacts."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from test_compare import Faulty  # a real MlflowClient that counts its calls (fails only when asked)

from bnpipe.core import snapshots, sources
from bnpipe.mlflow_edge import snapshot_store, tracking


class NoMlflow:
    """Stands in for a client where none may be used: any method call fails the test."""

    tracking_uri = "nowhere"

    def __getattr__(self, name):
        pytest.fail(f"MLflow was called ({name}) for a snapshot this worker has")


SEEDS = itertools.count(1)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store with local artifacts for the module (migrating a new one takes seconds)."""
    root = tmp_path_factory.mktemp("snapshot-store")
    return f"sqlite:///{root / 'mlflow.db'}", (root / "artifacts").as_uri()


@pytest.fixture
def ingested(home, store, monkeypatch):
    """A snapshot of its own digest (its own split seed) ingested into ``home``, not yet published."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store[0])
    monkeypatch.setenv("BNPIPE_ARTIFACT_ROOT", store[1])
    return snapshots.ingest(sources.IngestRequest(source="breast_cancer", seed=next(SEEDS)))


@pytest.fixture
def published(ingested):
    """The snapshot published: (snapshot with store_uri, client)."""
    client = tracking.connect()
    return snapshot_store.publish(ingested, client), client


@pytest.fixture
def worker(published, tmp_path, monkeypatch):
    """Another worker, after ``published``: its own BNPIPE_HOME, the same MLflow store."""
    w = tmp_path / "worker-home"
    w.mkdir()
    monkeypatch.setenv("BNPIPE_HOME", str(w))
    return w


def _stored_file(client, snapshot: dict, name: str) -> Path:
    """The published copy of one of the snapshot's files, in the local artifact store."""
    run_id = snapshot["store_uri"].removeprefix("runs:/").split("/")[0]
    root = Path(unquote(urlparse(client.get_run(run_id).info.artifact_uri).path))
    return root / snapshot_store.ARTIFACTS / name


def _moved_away(snapshot: dict) -> Path:
    """Ingest's folder renamed, as if on another host; returns where it went (for comparisons)."""
    away = Path(snapshot["path"] + "-elsewhere")
    Path(snapshot["path"]).rename(away)
    return away


def test_publishing_twice_uploads_once(ingested, home):
    snapshot = ingested
    client = Faulty(tracking.connect())
    first = snapshot_store.publish(snapshot, client)
    second = snapshot_store.publish(snapshot, client)

    assert first["store_uri"] == second["store_uri"] and first["store_uri"].startswith("runs:/")
    assert client.calls.get("log_artifacts") == 1 and client.calls.get("create_run") == 1
    exp = client.get_experiment_by_name(snapshot_store.EXPERIMENT)
    runs = tracking.find_runs(client, exp.experiment_id, {"bnpipe.data_digest": snapshot["digest"]})
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    # the files and a manifest of their sha256, next to them; XCom gains one string
    run_id = runs[0].info.run_id
    stored = {Path(a.path).name for a in client.list_artifacts(run_id, snapshot_store.ARTIFACTS)}
    assert stored == {p.name for p in Path(snapshot["path"]).iterdir()}
    listed = json.loads(Path(client.download_artifacts(run_id, snapshot_store.MANIFEST, str(home))).read_text())
    assert listed == {"digest": snapshot["digest"], "files": snapshots.manifest(snapshot["path"])}
    assert set(first) - set(snapshot) == {"store_uri"}


def test_a_failed_upload_is_not_taken_for_a_stored_copy(ingested):
    """An upload that broke off leaves its run FAILED: the next publish uploads again."""
    from mlflow.exceptions import MlflowException

    snapshot = ingested
    client = Faulty(tracking.connect())
    real = client._client.log_artifact

    def broken(*args, **kwargs):
        raise MlflowException("connection reset while uploading the manifest")

    client._client.log_artifact = broken
    with pytest.raises(MlflowException, match="connection reset"):
        snapshot_store.publish(snapshot, client)
    client._client.log_artifact = real
    again = snapshot_store.publish(snapshot, client)

    exp = client.get_experiment_by_name(snapshot_store.EXPERIMENT)
    runs = tracking.find_runs(client, exp.experiment_id, {"bnpipe.data_digest": snapshot["digest"]})
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]
    finished = next(r for r in runs if r.info.status == "FINISHED")
    assert again["store_uri"] == f"runs:/{finished.info.run_id}/{snapshot_store.ARTIFACTS}"


def test_a_worker_without_the_snapshot_fetches_and_verifies_it(published, worker, capsys):
    snapshot, client = published
    away = _moved_away(snapshot)
    counted = Faulty(client)

    local = snapshot_store.local_snapshot(snapshot, counted)

    cache = worker / "cache" / "snapshots"
    assert local["path"] == str(cache / snapshot["digest"]) and local["digest"] == snapshot["digest"]
    assert counted.calls.get("download_artifacts") == 2  # the folder and its manifest
    for split in snapshots.SPLITS:
        for got, want in zip(snapshots.load_split(local["path"], split), snapshots.load_split(away, split)):
            np.testing.assert_array_equal(got, want)
    assert snapshots.manifest(local["path"]) == snapshots.manifest(away)
    assert [p.name for p in cache.iterdir()] == [snapshot["digest"]]  # no temporary folder left
    line = [s for s in capsys.readouterr().out.splitlines() if "fetched from MLflow" in s]
    assert len(line) == 1 and line[0].startswith(f"snapshot {snapshot['digest']} fetched from MLflow into {cache}")

    # the next task on this worker finds the cache: no MLflow at all
    assert snapshot_store.local_snapshot(snapshot, NoMlflow())["path"] == local["path"]


def test_a_present_local_copy_does_not_touch_mlflow(published, worker, monkeypatch):
    snapshot, _ = published

    def no_connect(*args, **kwargs):
        pytest.fail("tracking.connect was called for a snapshot this worker has")

    monkeypatch.setattr(tracking, "connect", no_connect)
    assert snapshot_store.local_snapshot(snapshot, NoMlflow()) == snapshot
    assert snapshot_store.local_snapshot(snapshot) == snapshot
    assert not (worker / "cache").exists()


def test_a_local_folder_of_another_digest_is_not_used(published, worker):
    """A path that exists but holds other data (its meta.json names another digest) is not trusted."""
    snapshot, client = published
    other = {**snapshot, "digest": "0" * 16}
    with pytest.raises(snapshot_store.SnapshotCorrupt, match="the manifest is of snapshot"):
        snapshot_store.local_snapshot(other, client)


@pytest.mark.parametrize(
    "damage, says",
    [
        ("flip", r"X_train\.npy has \d+ bytes, sha256 \w+; the manifest says \d+ bytes"),
        ("delete", r"y_val\.npy is missing"),
    ],
)
def test_a_corrupted_download_is_refused(published, worker, damage, says):
    snapshot, client = published
    _moved_away(snapshot)
    if damage == "flip":
        stored = _stored_file(client, snapshot, "X_train.npy")
        data = bytearray(stored.read_bytes())
        data[-1] ^= 0xFF  # same size, one bit pattern changed
        stored.write_bytes(bytes(data))
    else:
        _stored_file(client, snapshot, "y_val.npy").unlink()

    with pytest.raises(snapshot_store.SnapshotCorrupt, match=says) as err:
        snapshot_store.local_snapshot(snapshot, client)
    assert "does not match its manifest" in str(err.value) and "run the DAG again" in str(err.value)
    cache = worker / "cache" / "snapshots"
    assert not cache.exists() or list(cache.iterdir()) == []  # nothing cached, no temporary folder left


def test_two_fetches_of_one_digest_leave_one_copy(published, worker, capsys):
    """Two tasks on one worker racing: the second rename finds the first's copy and drops its own."""
    snapshot, client = published
    target = worker / "cache" / "snapshots" / snapshot["digest"]
    assert snapshot_store.fetch(snapshot["store_uri"], snapshot["digest"], target, client) == target
    assert snapshot_store.fetch(snapshot["store_uri"], snapshot["digest"], target, client) == target
    assert [p.name for p in target.parent.iterdir()] == [snapshot["digest"]]
    assert snapshots.manifest(target) == snapshots.manifest(snapshot["path"])
    assert "another task placed it first" in capsys.readouterr().out


def test_a_snapshot_neither_here_nor_stored_fails_saying_what_to_do(home):
    snapshot = {"digest": "abc123", "path": str(home / "snapshots" / "abc123")}
    with pytest.raises(snapshot_store.SnapshotUnavailable, match="is not on this worker .* no store_uri"):
        snapshot_store.local_snapshot(snapshot, NoMlflow())
