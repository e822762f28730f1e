"""The inbox: a data file dropped into ``$BNPIPE_INBOX`` (default ``$BNPIPE_HOME/inbox``) starts an experiment on it.

Two steps, in two processes:

1. **Announce** (:class:`Watcher`, run by :mod:`bnpipe.operations.inbox_trigger` in Airflow's triggerer).
   A scan of the folder announces each *ready* file once: a csv or parquet file, not hidden, not scoring
   output (``*.predictions.*``), with the same size and mtime as at the previous scan and unchanged for
   ``SETTLE_SECONDS`` (so a file still being written waits), whose content has no marker yet. The
   announcement (path, name, :func:`digest`) becomes an event of the inbox asset.
2. **Claim** (:func:`claim`, in the inbox DAG's run). Each announced file that still has the announced
   content and no marker gets one: ``.seen/<name>@<digest>``, a JSON record of the experiment run it starts
   (run id, conf) and of the inbox run that claimed it. The markers are the durable "seen" state: the
   watcher skips a file that has one, and an announcement repeated after a triggerer restart (the
   watcher's memory is lost with it) finds the marker and starts nothing.

A file's identity is :func:`digest`, of its bytes and of its sidecar's: the same content is
started once, whatever its mtime; new content under the same name, or a changed sidecar, is a new file.
The label column is ``label`` unless an optional sidecar ``<file>.json`` says otherwise; the sidecar may
set any experiment Param, e.g. ``{"label": "churned", "grid": "smoke"}``. A file whose sidecar breaks the
Params' schema is claimed as rejected, with ``<marker>.rejected`` saying why. Nothing is ever deleted.

Only the standard library and :mod:`bnpipe.base.settings` at import: the triggerer imports this module.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from datetime import UTC, datetime
from pathlib import Path

from bnpipe.base import settings

KINDS = {".csv": "csv", ".parquet": "parquet"}
SETTLE_SECONDS = 2.0
DEFAULT_LABEL = "label"
SEEN = ".seen"

log = logging.getLogger(__name__)


def inbox_dir() -> Path:
    return settings.inbox_dir()


def sidecar(path: Path) -> Path:
    """The optional Params of ``path``: ``<file>.json`` beside it."""
    return path.with_name(path.name + ".json")


def is_data_file(path: Path) -> bool:
    """A csv or parquet file that is neither hidden nor scoring output."""
    name = path.name
    return not name.startswith(".") and path.suffix.lower() in KINDS and ".predictions." not in name and path.is_file()


def stamp(path: Path) -> tuple:
    """Size and mtime (ns) of the file and of its sidecar (None without one): what tells a change."""
    st = path.stat()
    try:
        sc = sidecar(path).stat()
    except FileNotFoundError:
        return st.st_size, st.st_mtime_ns, None
    return st.st_size, st.st_mtime_ns, (sc.st_size, sc.st_mtime_ns)


def digest(path: Path) -> str:
    """The file's identity: a digest (16 hex) of its bytes and of its sidecar's, if it has one."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    side = sidecar(path)
    if side.exists():
        h.update(b"\0sidecar\0" + side.read_bytes())
    return h.hexdigest()[:16]


def marker(path: Path, file_digest: str) -> Path:
    return path.parent / SEEN / f"{path.name}@{file_digest}"


def _legacy_marker(path: Path) -> Path:
    """The marker of the polling sensor this replaced (``<name>@<size>-<mtime_ns>``): files it started stay seen."""
    st = path.stat()
    return path.parent / SEEN / f"{path.name}@{st.st_size}-{st.st_mtime_ns}"


def is_seen(path: Path, file_digest: str) -> bool:
    return marker(path, file_digest).exists() or _legacy_marker(path).exists()


class Watcher:
    """The folder ``folder`` scanned again and again; :meth:`poll` returns what became ready since the last scan.

    Its memory, between scans of one trigger's life: each file's stamp at the last scan (a file is
    ready only when it did not change since), its digest (an unchanged file is not read again), and the
    files it announced that have no marker yet (not announced twice while their DAG run is pending).
    A file it cannot read is skipped, with one warning per version of it; the others go on.
    """

    def __init__(self, folder: Path, settle: float = SETTLE_SECONDS):
        self.folder, self.settle = Path(folder), settle
        self._stamps: dict[str, tuple] = {}
        self._digests: dict[str, tuple[tuple, str]] = {}
        self._pending: set[tuple[str, str]] = set()
        self._unreadable: dict[str, tuple] = {}

    def _scan(self) -> dict[str, tuple]:
        stamps = {}
        if self.folder.is_dir():
            for p in self.folder.iterdir():
                try:
                    if is_data_file(p):
                        stamps[p.name] = stamp(p)
                except FileNotFoundError:  # removed while we looked
                    continue
        return stamps

    def poll(self, now: float | None = None) -> list[dict]:
        """One scan: an announcement ``{path, name, digest}`` per file that is ready and new, oldest first."""
        now = time.time() if now is None else now
        stamps, found = self._scan(), []
        for name, st in sorted(stamps.items(), key=lambda item: item[1][1]):
            changed_ns = max(st[1], st[2][1] if st[2] else 0)
            if self._stamps.get(name) != st or now - changed_ns / 1e9 < self.settle:
                continue
            path = self.folder / name
            try:
                cached = self._digests.get(name)
                file_digest = cached[1] if cached and cached[0] == st else digest(path)
                self._digests[name] = (st, file_digest)
                if is_seen(path, file_digest):
                    self._pending.discard((name, file_digest))  # claimed: the marker remembers it from now on
                    continue
            except FileNotFoundError:  # removed meanwhile
                continue
            except OSError as exc:  # e.g. no permission to read it: the other files go on
                if self._unreadable.get(name) != st:
                    log.warning("cannot read %s: %s; trying again at every scan", path, exc)
                self._unreadable[name] = st
                continue
            if (name, file_digest) not in self._pending:
                self._pending.add((name, file_digest))
                found.append({"path": str(path), "name": name, "digest": file_digest})
        self._stamps = stamps
        self._digests = {n: v for n, v in self._digests.items() if n in stamps}
        self._pending = {(n, k) for n, k in self._pending if n in stamps}
        self._unreadable = {n: v for n, v in self._unreadable.items() if n in stamps}
        return found


def run_conf(path: str) -> dict:
    """The experiment DAG's conf for one file; raises ``params.ParamError`` if the sidecar is invalid."""
    from bnpipe.operations import params

    p = Path(path)
    side = sidecar(p)
    overrides = json.loads(side.read_text()) if side.exists() else {}
    if not isinstance(overrides, dict):
        raise params.ParamError(f'{side} must hold a JSON object of Params, e.g. {{"label": "churned"}}')
    conf = {"dataset": KINDS[p.suffix.lower()], "data_path": str(p), "label": DEFAULT_LABEL, **overrides}
    params.validate(conf)
    return conf


def experiment_run_id(name: str, file_digest: str, at: datetime) -> str:
    """``inbox__<name>__<digest>__<UTC time>``: the file in the experiment's run list, in Airflow's run-id alphabet."""
    safe = re.sub(r"[^A-Za-z0-9_.~:+-]", "_", name)[:80]
    return f"inbox__{safe}__{file_digest[:12]}__{at.strftime('%Y%m%dT%H%M%S')}"


def _write(path: Path, record: dict) -> None:
    """Write the marker whole or not at all (a temp file renamed over it)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(path)


def _record(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def claim(announced: list[dict], claimed_by: str) -> list[dict]:
    """One experiment start ``{trigger_run_id, conf}`` per announced file that is new; writes its marker.

    A file is skipped when it is gone, when its content changed since it was announced (the new
    content is announced on its own) or when it has a marker: claimed by an earlier inbox run, or
    started by the former sensor. A marker of this very run (``claimed_by``, its task retried or
    cleared) gives its start again, with the same run id. An invalid sidecar: the marker records the
    rejection, ``<marker>.rejected`` says why, and nothing starts.
    """
    from bnpipe.operations import params

    starts, done = [], set()
    for item in announced:
        path, file_digest = Path(item["path"]), item["digest"]
        if (str(path), file_digest) in done:
            continue
        done.add((str(path), file_digest))
        try:
            if digest(path) != file_digest:
                log.info("%s changed since it was announced; its new content has an event of its own", path)
                continue
            seen = marker(path, file_digest)
            if seen.exists():
                record = _record(seen)
                if record.get("claimed_by") == claimed_by and record.get("run_id"):
                    starts.append({"trigger_run_id": record["run_id"], "conf": record["conf"]})
                else:
                    log.info("%s was claimed before (%s); nothing to start", path, seen)
                continue
            if _legacy_marker(path).exists():
                log.info("%s was started by the former inbox sensor; nothing to start", path)
                continue
        except FileNotFoundError:
            log.info("%s is gone; nothing to start", path)
            continue
        seen.parent.mkdir(exist_ok=True)
        now = datetime.now(UTC)
        record = {"claimed_by": claimed_by, "claimed_at": now.isoformat(timespec="seconds")}
        try:
            conf = run_conf(str(path))
        except (params.ParamError, json.JSONDecodeError) as exc:
            _write(seen, {**record, "rejected": str(exc)})
            seen.with_name(seen.name + ".rejected").write_text(f"{exc}\n")
            log.warning("%s rejected: %s", path, exc)
            continue
        run_id = experiment_run_id(path.name, file_digest, now)
        _write(seen, {**record, "run_id": run_id, "conf": conf})
        starts.append({"trigger_run_id": run_id, "conf": conf})
    return starts
