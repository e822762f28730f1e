"""Snapshot store: a snapshot's files in MLflow's artifact store, so workers need no shared disk.

Ingest writes a snapshot to its own host (``BNPIPE_DATA_DIR``); a training or compare task may run
on another worker. ``publish`` uploads the snapshot once per content digest, as the artifacts of
one run in the experiment ``bnpipe-snapshots`` (tags ``bnpipe.role=snapshot`` and
``bnpipe.data_digest``): ``snapshot/`` holds the files, ``manifest.json`` the sha256 and size of
each. The snapshot dict that XCom carries gains ``store_uri`` (``runs:/<id>/snapshot``), a string.

``local_snapshot`` is what every reader on a worker calls before it opens a split. It returns the
snapshot with a ``path`` on this host, trying in order, the first two without a single MLflow call:
ingest's own folder (when it is here and its ``meta.json`` names the digest); this worker's cache
(``BNPIPE_SNAPSHOT_CACHE``, default ``$BNPIPE_HOME/cache/snapshots/<digest>``); else a download
from ``store_uri`` into a temporary folder next to the cache, checked file by file against the
manifest, then renamed into place (two tasks on one worker may race: the first rename wins and the
other's identical copy is dropped). A copy that does not match its manifest is refused with
``SnapshotCorrupt`` and nothing is cached; it is not retried here: the task fails, and Airflow's
(bounded) retries fetch it again.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from pathlib import Path

from bnpipe.base import settings
from bnpipe.core import snapshots
from bnpipe.mlflow_edge import tracking

EXPERIMENT = "bnpipe-snapshots"
ARTIFACTS = "snapshot"  # the run's artifact folder of the snapshot's files
MANIFEST = "manifest.json"  # next to it: {"digest": ..., "files": snapshots.manifest(...)}
ROLE = "snapshot"


class SnapshotUnavailable(RuntimeError):
    """The snapshot is not on this worker and could not be fetched."""


class SnapshotCorrupt(RuntimeError):
    """A fetched copy does not match the manifest it was published with."""


def _key(digest: str) -> dict:
    return {tracking.TAG + "role": ROLE, tracking.TAG + "data_digest": digest}


def stored_uri(client, experiment_id: str, digest: str) -> str | None:
    """``runs:/<id>/snapshot`` of the digest's published copy (a FINISHED run), or None."""
    for run in tracking.find_runs(client, experiment_id, _key(digest)):
        if run.info.status == "FINISHED":  # an upload that failed or still runs left its run otherwise
            return f"runs:/{run.info.run_id}/{ARTIFACTS}"
    return None


def publish(snapshot: dict, client=None) -> dict:
    """The snapshot with ``store_uri``; its files are uploaded unless a copy of its digest is stored already."""
    client = client or tracking.connect()
    experiment_id = tracking.ensure_experiment(client, EXPERIMENT)
    uri = stored_uri(client, experiment_id, snapshot["digest"])
    if uri is None:
        uri = _upload(client, experiment_id, snapshot)
    return {**snapshot, "store_uri": uri}


def _upload(client, experiment_id: str, snapshot: dict) -> str:
    """One run holding the snapshot's files and their manifest; FINISHED only once both are stored."""
    from mlflow.exceptions import MlflowException

    digest, folder = snapshot["digest"], Path(snapshot["path"])
    t0 = time.perf_counter()
    files = snapshots.manifest(folder)
    tags = {**_key(digest), tracking.TAG + "dataset": snapshot["dataset"]}
    run_id = client.create_run(experiment_id, run_name=f"{snapshot['dataset']}-{digest}", tags=tags).info.run_id
    try:
        client.log_artifacts(run_id, str(folder), ARTIFACTS)
        with tempfile.TemporaryDirectory() as tmp:
            listed = Path(tmp) / MANIFEST
            listed.write_text(json.dumps({"digest": digest, "files": files}, indent=2))
            client.log_artifact(run_id, str(listed))
        client.set_terminated(run_id, status="FINISHED")
    except BaseException:
        with contextlib.suppress(MlflowException, OSError):  # the server may be what failed: its error stands
            client.set_terminated(run_id, status="FAILED")  # never taken for a stored copy
        raise
    size = sum(f["bytes"] for f in files.values())
    print(f"snapshot {digest} published to MLflow as runs:/{run_id}/{ARTIFACTS} "
          f"({size / 1e6:.1f} MB, {time.perf_counter() - t0:.1f} s)", flush=True)  # fmt: skip
    return f"runs:/{run_id}/{ARTIFACTS}"


def _holds(folder: Path, digest: str) -> bool:
    """Whether ``folder`` is a complete snapshot of ``digest`` (``meta.json`` is written last)."""
    return (folder / "meta.json").is_file() and snapshots.read_meta(folder).get("digest") == digest


def local_snapshot(snapshot: dict, client=None) -> dict:
    """The snapshot with a ``path`` on this host: ingest's folder, this worker's cache, or a verified download.

    ``client`` (optional) is used only for a download; a snapshot found here costs no MLflow call.
    """
    digest, here = snapshot["digest"], snapshot.get("path")
    if here and _holds(Path(here), digest):
        return snapshot
    cached = settings.snapshot_cache_dir() / digest
    if _holds(cached, digest):
        return {**snapshot, "path": str(cached)}
    uri = snapshot.get("store_uri")
    if not uri:
        raise SnapshotUnavailable(
            f"snapshot {digest} is not on this worker ({settings.hostname()}): neither {here} nor {cached} holds "
            "it, and it has no store_uri to fetch it from (ingest publishes it to MLflow). Run the DAG again, "
            "or run this task on the host where ingest ran."
        )
    return {**snapshot, "path": str(fetch(uri, digest, cached, client))}


def fetch(uri: str, digest: str, target: Path, client=None) -> Path:
    """Download ``uri`` (``runs:/<id>/<folder>``), verify it against its manifest and rename it to ``target``."""
    from mlflow.exceptions import MlflowException

    run_id, _, artifact = uri.removeprefix("runs:/").partition("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=target.parent))
    try:
        t0 = time.perf_counter()
        client = client or tracking.connect()
        try:
            folder = Path(client.download_artifacts(run_id, artifact, str(tmp)))
            listed = json.loads(Path(client.download_artifacts(run_id, MANIFEST, str(tmp))).read_text())
        except (MlflowException, OSError) as exc:
            raise SnapshotUnavailable(
                f"could not fetch snapshot {digest} from {uri} at {client.tracking_uri}: {exc}. Is the MLflow "
                f"server up, and does run {run_id} (experiment {EXPERIMENT}) still have its artifacts?"
            ) from exc
        size = verify(folder, listed, digest, uri)
        placed = snapshots.place(folder, target)
        print(f"snapshot {digest} fetched from MLflow into {target} ({size / 1e6:.1f} MB, "
              f"{time.perf_counter() - t0:.1f} s)" + ("" if placed else "; another task placed it first"),
              flush=True)  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def verify(folder: Path, listed: dict, digest: str, uri: str) -> int:
    """Every file of ``folder`` as the manifest ``listed`` says (no more, no fewer); returns the bytes."""
    want, got = listed.get("files", {}), snapshots.manifest(folder)
    problems = [f"the manifest is of snapshot {listed.get('digest')}"] if listed.get("digest") != digest else []
    for name in sorted(set(want) | set(got)):
        if name not in got:
            problems.append(f"{name} is missing")
        elif name not in want:
            problems.append(f"{name} is not in the manifest")
        elif got[name] != want[name]:
            problems.append(
                f"{name} has {got[name]['bytes']} bytes, sha256 {got[name]['sha256'][:16]}; the manifest says "
                f"{want[name]['bytes']} bytes, sha256 {want[name]['sha256'][:16]}"
            )
    if problems:
        raise SnapshotCorrupt(
            f"snapshot {digest} fetched from {uri} does not match its manifest: {'; '.join(problems)}. Nothing "
            f"was cached. The stored copy is damaged: delete its run (experiment {EXPERIMENT}, tag "
            f"{tracking.TAG}data_digest = {digest}) and run the DAG again; ingest then publishes it anew."
        )
    return sum(f["bytes"] for f in got.values())
