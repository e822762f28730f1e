"""Progress: what `bnpipe run` shows while the DAG runs, read from MLflow alone.

The training tasks already report everything a person wants to see: each variant is a nested
MLflow run under the DAG run's parent run, with per-epoch ``val_accuracy``, ``samples_per_second``
and ``epoch_seconds`` (step = epoch) and the tags ``bnpipe.variant`` / ``bnpipe.status``.
A ``Watcher`` thread polls the tracking store about once a second and hands a ``RunProgress``
to a view: a rich Live display on a terminal, one plain line per event otherwise.

Three layers, each testable alone:
- ``read_runs`` (MLflow) -> plain run dicts;
- ``progress_of`` (pure) -> ``RunProgress``; ``events`` (pure) -> plain lines; ``render`` -> rich renderable;
- ``LiveView`` / ``PlainView`` and ``Watcher``: the terminal and the thread.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, replace

QUEUED, TRAINING, DONE, DIVERGED, FAILED = "queued", "training", "done", "diverged", "failed"
ENDED = (DONE, DIVERGED, FAILED)

# The DAG's stages as MLflow shows them (no parent run yet: Airflow is still starting).
STARTING, INGESTING, TRAINING_STAGE, COMPARING, FINISHED_STAGE, FAILED_STAGE = (
    "starting Airflow",
    "reading the data",
    "training",
    "ranking, registering the winner, writing the claims report",
    "finished",
    "failed",
)


@dataclass(frozen=True)
class VariantProgress:
    name: str
    epochs: int
    state: str = QUEUED
    epoch: int = 0
    val_accuracy: float | None = None
    samples_per_second: float | None = None
    start: float | None = None  # epoch seconds
    end: float | None = None


@dataclass(frozen=True)
class RunProgress:
    variants: tuple[VariantProgress, ...]
    stage: str
    epochs_done: int  # an ended variant counts all its planned epochs: it will not run more
    epochs_total: int
    elapsed: float  # seconds since the run started
    left: float | None  # estimated seconds of training left; None when unknown or not training

    @property
    def ended(self) -> int:
        return sum(v.state in ENDED for v in self.variants)


def variant_state(status: str, outcome: str | None) -> str:
    """A variant's state from its MLflow run status and its ``bnpipe.status`` tag.

    The tag is set once training ends and decides: compare reopens the winner's run (RUNNING
    again) to log the full model, which is not training.
    """
    if outcome:
        return DIVERGED if outcome == "diverged" else DONE
    if status in ("RUNNING", "SCHEDULED"):
        return TRAINING
    return FAILED  # FAILED or KILLED without an outcome: the attempt ended before training did


def progress_of(
    planned: list[str], epochs: int, runs: list[dict], parent: dict | None, started: float, now: float
) -> RunProgress:
    """The run's progress from the planned variants and what MLflow holds (pure).

    ``runs``: one dict per variant run: ``variant``, ``status`` (MLflow), ``outcome`` (tag
    ``bnpipe.status``), ``epoch``, ``val_accuracy``, ``samples_per_second``, ``start``, ``end``.
    ``parent``: ``{"status": ..., "has_data": bool}`` or None before the parent run exists.
    """
    by_name = {r["variant"]: r for r in runs}
    variants = []
    for name in planned:
        r = by_name.get(name)
        if r is None:
            variants.append(VariantProgress(name, epochs))
            continue
        state = variant_state(r["status"], r.get("outcome"))
        variants.append(VariantProgress(
            name, epochs, state, min(int(r.get("epoch") or 0), epochs), r.get("val_accuracy"),
            r.get("samples_per_second"), r.get("start"), r.get("end") if state in ENDED else None,
        ))  # fmt: skip
    done = sum(epochs if v.state in ENDED else v.epoch for v in variants)
    total = epochs * len(variants)
    if parent is None:
        stage = STARTING
    elif parent["status"] == "FINISHED":
        stage = FINISHED_STAGE
    elif parent["status"] in ("FAILED", "KILLED"):
        stage = FAILED_STAGE
    elif not parent.get("has_data") and not runs:
        stage = INGESTING
    elif all(v.state in ENDED for v in variants):
        stage = COMPARING
    else:
        stage = TRAINING_STAGE
    left = None
    first = min((v.start for v in variants if v.start), default=None)
    if stage == TRAINING_STAGE and first is not None and 0 < done < total and now > first:
        left = (total - done) * (now - first) / done  # wall time per epoch so far, parallel slots included
    return RunProgress(tuple(variants), stage, done, total, max(0.0, now - started), left)


def clock(seconds: float | None) -> str:
    """``1:05`` or ``1:02:03``; ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = round(seconds)
    h, m, s = s // 3600, s // 60 % 60, s % 60
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _acc(v: float | None) -> str:
    return f"{v:.4f}" if v is not None and math.isfinite(v) else "-"


def _rate(v: float | None) -> str:
    return f"{v:,.0f}" if v is not None and math.isfinite(v) else "-"


def epoch_every(epochs: int) -> int:
    """How often the plain output reports an epoch: a few times per variant at most, never the last."""
    return max(5, math.ceil(epochs / 4))


def events(prev: RunProgress | None, cur: RunProgress) -> list[str]:
    """Plain lines for what changed between two readings (pure): stages, starts, some epochs, ends."""
    out, stage = [], []
    at = f"[{clock(cur.elapsed)}]"
    if prev is None or prev.stage != cur.stage:
        if cur.stage == TRAINING_STAGE:
            n, epochs = len(cur.variants), cur.variants[0].epochs if cur.variants else 0
            out.append(f"{at} training {n} variant{'s' * (n != 1)} x {epochs} epoch{'s' * (epochs != 1)}")
        elif cur.stage in (STARTING, INGESTING):
            out.append(f"{at} {cur.stage}")
        elif cur.stage not in (FINISHED_STAGE, FAILED_STAGE):  # the closing summary says how it ended
            stage.append(f"{at} {cur.stage}")  # after the variants' last lines
    before = {v.name: v for v in prev.variants} if prev else {}
    every = epoch_every(cur.variants[0].epochs) if cur.variants else 1
    ended = sum(v.state in ENDED for v in before.values())
    for v in cur.variants:
        old = before.get(v.name, VariantProgress(v.name, v.epochs))
        if old.state == QUEUED and v.state == TRAINING:
            out.append(f"{at} {v.name}: training")
        if v.state == TRAINING and v.epoch // every > old.epoch // every and v.epoch < v.epochs:
            out.append(f"{at} {v.name}: epoch {v.epoch}/{v.epochs}, val acc {_acc(v.val_accuracy)}, "
                       f"{_rate(v.samples_per_second)} samples/s")  # fmt: skip
        if v.state in ENDED and old.state not in ENDED:
            ended += 1
            what = {DONE: "done", DIVERGED: "diverged", FAILED: "failed"}[v.state]
            left = f", about {clock(cur.left)} left" if cur.left is not None else ""
            out.append(f"{at} {v.name}: {what}, val acc {_acc(v.val_accuracy)} after {v.epoch} epoch"
                       f"{'s' * (v.epoch != 1)} ({ended}/{len(cur.variants)} ended{left})")  # fmt: skip
    return out + stage


def visible(variants: tuple[VariantProgress, ...], limit: int) -> tuple[list[VariantProgress], str]:
    """The rows that fit in ``limit``: training first, then the latest ended, then the next queued;
    shown in plan order, with a line that counts the hidden ones ("" when all fit)."""
    if len(variants) <= limit:
        return list(variants), ""
    order = {v.name: i for i, v in enumerate(variants)}
    training = [v for v in variants if v.state == TRAINING]
    ended = sorted((v for v in variants if v.state in ENDED), key=lambda v: -(v.end or 0))
    queued = [v for v in variants if v.state == QUEUED]
    keep = (training + ended[:2] + queued + ended[2:])[: max(1, limit - 1)]
    hidden = [v for v in variants if v not in keep]
    counts = {s: sum(v.state == s for v in hidden) for s in (QUEUED, *ENDED)}
    note = f"... {len(hidden)} more: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    return sorted(keep, key=lambda v: order[v.name]), note


STATE_STYLE = {QUEUED: "dim", TRAINING: "bold cyan", DONE: "green", DIVERGED: "yellow", FAILED: "bold red"}


def render(p: RunProgress, title: str, max_rows: int = 20):
    """The live view: a title, the whole run's bar with the time left, and one row per variant."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    head = Table.grid(padding=(0, 1))
    head.add_row(
        ProgressBar(total=max(1, p.epochs_total), completed=p.epochs_done, width=30),
        Text(f"{p.epochs_done}/{p.epochs_total} epochs", style="bold"),
        Text(f"{p.ended}/{len(p.variants)} variants"),
        Text(f"{clock(p.elapsed)} elapsed"),
        Text(f"about {clock(p.left)} left" if p.left is not None else "", style="bold"),
    )
    table = Table(box=None, padding=(0, 1), show_edge=False, header_style="bold")
    for col, justify in (("variant", "left"), ("state", "left"), ("epoch", "right"), ("val acc", "right"),
                         ("samples/s", "right")):  # fmt: skip
        table.add_column(col, justify=justify)
    rows, note = visible(p.variants, max_rows)
    for v in rows:
        epoch = f"{v.epoch}/{v.epochs}"
        table.add_row(v.name, Text(v.state, style=STATE_STYLE[v.state]), epoch, _acc(v.val_accuracy),
                      _rate(v.samples_per_second))  # fmt: skip
    parts = [Text(title, style="bold"), head, Text(p.stage, style="italic"), table]
    if note:
        parts.append(Text(note, style="dim"))
    return Group(*parts)


# --- reading MLflow -------------------------------------------------------------------------------


def read_runs(client, experiment_name: str, dag_run_id: str) -> tuple[dict | None, list[dict]]:
    """The DAG run's parent run and its variant runs, as the plain dicts ``progress_of`` takes."""
    from bnpipe.mlflow_edge.tracking import PARENT, TAG, find_runs

    exp = client.get_experiment_by_name(experiment_name)
    if exp is None:
        return None, []
    found = find_runs(client, exp.experiment_id, {TAG + "dag_run_id": dag_run_id, TAG + "role": PARENT})
    if not found:
        return None, []
    p = found[0]
    parent = {"run_id": p.info.run_id, "status": p.info.status, "has_data": TAG + "data_digest" in p.data.tags}
    runs = []
    for r in find_runs(client, exp.experiment_id, {TAG + "parent_run_id": p.info.run_id}):
        m, status = r.data.metrics, r.info.status
        if status in ("RUNNING", "SCHEDULED"):  # the latest epoch is the latest step of a per-epoch metric
            epoch = max((x.step for x in client.get_metric_history(r.info.run_id, "epoch_seconds")), default=0)
        else:
            epoch = int(m.get("epochs_run", 0))
        runs.append({
            "variant": r.data.tags.get(TAG + "variant", r.info.run_name), "status": status,
            "outcome": r.data.tags.get(TAG + "status"), "epoch": epoch, "val_accuracy": m.get("val_accuracy"),
            "samples_per_second": m.get("samples_per_second"), "start": (r.info.start_time or 0) / 1000 or None,
            "end": (r.info.end_time or 0) / 1000 or None,
        })  # fmt: skip
    return parent, runs


# --- views and the polling thread ------------------------------------------------------------------


class PlainView:
    """One line per event, for pipes and CI: nothing is redrawn."""

    def __init__(self, file):
        self.file, self.last = file, None

    def start(self) -> None:
        pass

    def update(self, p: RunProgress) -> None:
        for line in events(self.last, p):
            print(line, file=self.file, flush=True)
        self.last = p

    def stop(self) -> None:
        pass


class LiveView:
    """A rich Live display on the terminal; everything else this process writes must go elsewhere."""

    def __init__(self, console, title: str):
        self.console, self.title, self.live = console, title, None

    def start(self) -> None:
        from rich.live import Live

        self.live = Live(console=self.console, refresh_per_second=4, redirect_stdout=False, redirect_stderr=False)
        self.live.start()

    def update(self, p: RunProgress) -> None:
        rows = max(3, self.console.size.height - 6)
        self.live.update(render(p, self.title, rows), refresh=True)

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()


class Watcher:
    """Polls ``read()`` every ``interval`` seconds in a daemon thread and shows the progress in ``view``.

    ``read()`` returns ``(parent, runs)``; ``read_errors`` are the exceptions that mean "MLflow did
    not answer this time": the view keeps the last reading and says so in the stage line.
    """

    def __init__(self, read, view, planned: list[str], epochs: int, interval: float = 1.0, read_errors=()):
        self.read, self.view, self.planned, self.epochs = read, view, planned, epochs
        self.interval, self.read_errors = interval, read_errors
        self.started = time.time()
        self.last: tuple[dict | None, list[dict]] = (None, [])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bnpipe-progress", daemon=True)

    def poll(self) -> RunProgress:
        problem = None
        try:
            self.last = self.read()
        except self.read_errors as exc:
            problem = f"MLflow did not answer ({' '.join(str(exc).split())[:100]}); showing the last reading"
        p = progress_of(self.planned, self.epochs, self.last[1], self.last[0], self.started, time.time())
        return replace(p, stage=problem) if problem else p

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.view.update(self.poll())

    def __enter__(self):
        self.view.start()
        self.view.update(self.poll())
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        try:
            self.view.update(self.poll())  # the last word: every variant's final state
        finally:
            self.view.stop()
