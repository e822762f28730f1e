"""The inbox: a data file dropped into ``$BNPIPE_HOME/inbox`` starts an experiment on it.

A csv or parquet file is *new* until it has been handed to the experiment DAG; then a marker
``.seen/<name>@<size>-<mtime_ns>`` records it, so a file that is replaced by new content is new
again. Files still being written (changed in the last few seconds), hidden files and scoring
output (``*.predictions.*``) are ignored.

The label column is ``label`` unless an optional sidecar ``<file>.json`` says otherwise; the
sidecar may set any experiment Param, e.g. ``{"label": "churned", "grid": "smoke"}``. A file whose
sidecar breaks the Params' schema is not started: it is marked seen, with the reason beside it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from bnpipe.base import settings
from bnpipe.operations import params

KINDS = {".csv": "csv", ".parquet": "parquet"}
SETTLE_SECONDS = 5.0
DEFAULT_LABEL = "label"


def inbox_dir() -> Path:
    return settings.inbox_dir()


def _marker(path: Path) -> Path:
    st = path.stat()
    return path.parent / ".seen" / f"{path.name}@{st.st_size}-{st.st_mtime_ns}"


def new_files(inbox: Path | None = None, settle: float = SETTLE_SECONDS) -> list[str]:
    """Data files in ``inbox`` not yet handed to the experiment, oldest first."""
    inbox = inbox or inbox_dir()
    if not inbox.is_dir():
        return []
    now, found = time.time(), []
    for p in inbox.iterdir():
        if p.name.startswith(".") or p.suffix.lower() not in KINDS or ".predictions." in p.name or not p.is_file():
            continue
        if now - p.stat().st_mtime < settle or _marker(p).exists():
            continue
        found.append(p)
    return [str(p) for p in sorted(found, key=lambda p: p.stat().st_mtime)]


def run_conf(path: str) -> dict:
    """The experiment DAG's conf for one file; raises ``params.ParamError`` if the sidecar is invalid."""
    p = Path(path)
    sidecar = p.with_name(p.name + ".json")
    overrides = json.loads(sidecar.read_text()) if sidecar.exists() else {}
    if not isinstance(overrides, dict):
        raise params.ParamError(f'{sidecar} must hold a JSON object of Params, e.g. {{"label": "churned"}}')
    conf = {"dataset": KINDS[p.suffix.lower()], "data_path": str(p), "label": DEFAULT_LABEL, **overrides}
    params.validate(conf)
    return conf


def plan(paths: list[str]) -> list[dict]:
    """One conf per valid file; an invalid one is marked seen with ``<marker>.rejected`` saying why."""
    confs = []
    for path in paths:
        try:
            confs.append(run_conf(path))
        except (params.ParamError, json.JSONDecodeError) as exc:
            mark_seen([path], reason=str(exc))
    return confs


def mark_seen(paths: list[str], reason: str | None = None) -> None:
    for path in paths:
        p = Path(path)
        if not p.exists():
            continue
        marker = _marker(p)
        marker.parent.mkdir(exist_ok=True)
        marker.write_text(reason or "started\n")
        if reason:
            marker.with_name(marker.name + ".rejected").write_text(reason + "\n")
