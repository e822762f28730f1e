"""What `bnpipe run` shows while it runs and at the end, and `bnpipe runs show`.

The progress model is pure (fake runs in, lines out); the integration test runs the console
script with its stdout piped, as CI and `make demo | tee` do.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import run_cli

from bnpipe.reporting import progress
from bnpipe.reporting.progress import DIVERGED, DONE, FAILED, QUEUED, TRAINING

PLANNED = ["a-s0", "b-s0", "c-s0"]


def _run(name, status="RUNNING", outcome=None, epoch=0, acc=None, sps=None, start=100.0, end=None):
    return {"variant": name, "status": status, "outcome": outcome, "epoch": epoch, "val_accuracy": acc,
            "samples_per_second": sps, "start": start, "end": end}  # fmt: skip


PARENT = {"status": "RUNNING", "has_data": True}


def test_states_epochs_and_time_left_from_the_runs():
    runs = [
        _run("a-s0", "FINISHED", "ok", 10, 0.91, 1500.0, start=100, end=120),
        _run("b-s0", "RUNNING", None, 5, 0.8, 1400.0, start=120),
    ]
    p = progress.progress_of(PLANNED, 10, runs, PARENT, started=90, now=130)
    assert [(v.name, v.state, v.epoch) for v in p.variants] == [("a-s0", DONE, 10), ("b-s0", TRAINING, 5),
                                                                 ("c-s0", QUEUED, 0)]  # fmt: skip
    assert (p.epochs_done, p.epochs_total, p.stage, p.elapsed) == (15, 30, progress.TRAINING_STAGE, 40)
    assert p.left == pytest.approx(15 * 30 / 15)  # 15 epochs left at 30 s per 15 epochs


@pytest.mark.parametrize(
    ("status", "outcome", "state"),
    [("FINISHED", "ok", DONE), ("FINISHED", "diverged", DIVERGED), ("FAILED", None, FAILED),
     ("KILLED", None, FAILED), ("RUNNING", None, TRAINING),
     ("RUNNING", "ok", DONE)],  # compare reopens the winner's run to log the full model: not training again
)  # fmt: skip
def test_variant_state(status, outcome, state):
    assert progress.variant_state(status, outcome) == state


@pytest.mark.parametrize(
    ("parent", "runs", "stage"),
    [
        (None, [], progress.STARTING),
        ({"status": "RUNNING", "has_data": False}, [], progress.INGESTING),
        (PARENT, [], progress.TRAINING_STAGE),
        (PARENT, [_run(n, "FINISHED", "ok", 2) for n in PLANNED], progress.COMPARING),
        ({"status": "FINISHED", "has_data": True}, [_run(n, "FINISHED", "ok", 2) for n in PLANNED], "finished"),
        ({"status": "FAILED", "has_data": False}, [], "failed"),
    ],
)
def test_stage_from_the_parent_run(parent, runs, stage):
    assert progress.progress_of(PLANNED, 2, runs, parent, 0, 10).stage == stage


def test_plain_events_one_line_per_start_some_epochs_and_each_end():
    readings = [
        (None, []),
        (PARENT, []),
        (PARENT, [_run("a-s0", epoch=3, acc=0.5, sps=900.0)]),
        (PARENT, [_run("a-s0", epoch=5, acc=0.6, sps=1000.0)]),  # epoch 5 of 20: reported
        (PARENT, [_run("a-s0", epoch=7, acc=0.7, sps=1000.0)]),  # epoch 7: not
        (
            PARENT,
            [
                _run("a-s0", "FINISHED", "ok", 20, 0.9, 1000.0, end=150),
                _run("b-s0", "FINISHED", "diverged", 2, None, None, end=160),
                _run("c-s0", "FAILED", None, 0, end=170),
            ],
        ),  # fmt: skip
    ]
    prev, lines = None, []
    for t, (parent, runs) in enumerate(readings):
        cur = progress.progress_of(PLANNED, 20, runs, parent, started=100, now=100 + 10 * t)
        lines += progress.events(prev, cur)
        prev = cur
    assert lines == [
        "[0:00] starting Airflow",
        "[0:10] training 3 variants x 20 epochs",
        "[0:20] a-s0: training",
        "[0:30] a-s0: epoch 5/20, val acc 0.6000, 1,000 samples/s",
        "[0:50] a-s0: done, val acc 0.9000 after 20 epochs (1/3 ended)",
        "[0:50] b-s0: diverged, val acc - after 2 epochs (2/3 ended)",
        "[0:50] c-s0: failed, val acc - after 0 epochs (3/3 ended)",
        "[0:50] ranking, registering the winner, writing the claims report",
    ]
    assert progress.events(prev, prev) == [], "nothing changed, nothing printed"


def test_live_view_fits_many_variants_in_a_small_terminal():
    from rich.console import Console

    planned = [f"v{i:02d}" for i in range(40)]
    runs = [_run(f"v{i:02d}", "FINISHED", "ok", 3, 0.5 + i / 100, 800.0, end=100 + i) for i in range(10)]
    runs.append(_run("v10", epoch=1, acc=0.4, sps=700.0))
    p = progress.progress_of(planned, 3, runs, PARENT, started=0, now=200)
    console = Console(width=100, record=True, color_system=None)
    console.print(progress.render(p, "bnpipe run X", max_rows=8))
    text = console.export_text()
    assert "31/120 epochs" in text and "10/40 variants" in text and "left" in text
    rows = [line for line in text.splitlines() if re.match(r"\s*v\d\d ", line)]
    assert len(rows) == 7 and any(r.split()[:3] == ["v10", "training", "1/3"] for r in rows)
    assert "... 33 more: 25 queued, 8 done" in text  # training, the 2 latest ended, then the next queued


def test_verdict_text_rebuilds_the_sentences_from_verdicts_json():
    """The closing summary reads report/verdicts.json: its sentences match the ones claims.evaluate gives."""

    from bnpipe.core import claims
    from bnpipe.reporting import report

    rows = []
    for seed in range(4):
        for pre, acc in (("standard", 0.90), ("bn_first", 0.80 + 0.01 * seed)):
            rows.append({"name": f"{pre}-s{seed}", "config": pre, "run_id": f"{pre}{seed}", "seed": seed,
                         "preprocessing": pre, "initializer": "he_normal", "activation": "elu", "clipping": "none",
                         "hidden_bn": False, "bn_momentum": 0.99, "learning_rate": 0.01, "status": "ok",
                         "val_accuracy": acc, "n_val": 200})  # fmt: skip
    verdicts = claims.evaluate(rows)
    doc = claims.verdicts_json(verdicts)
    assert report.verdict_text(doc["claims"]) == report.verdict_text(verdicts)
    tested = [claims.sentence(v) for v in verdicts if v["verdict"] != claims.UNTESTED]
    assert tested and report.verdict_text(verdicts).splitlines()[: len(tested)] == tested
    assert report.verdict_text(verdicts).splitlines()[-1].endswith(": not tested by this grid")


@pytest.fixture
def piped_run(smoke_run):
    """The shared smoke run (tests/run_fixtures.py): 12 variants, its output captured through a pipe."""
    return smoke_run.home, smoke_run.proc


@pytest.mark.integration
def test_piped_output_is_short_and_ends_with_the_answer(piped_run):
    home, proc = piped_run
    lines = proc.stdout.splitlines()
    assert len(lines) + len(proc.stderr.splitlines()) < 60, proc.stdout + proc.stderr
    assert "[info" not in proc.stdout + proc.stderr, "no Airflow log line on the terminal"
    end = re.compile(r"\[\d+:\d\d\] (\S+): (done|diverged|failed), val acc")
    ends = [m.group(1) for m in map(end.match, lines) if m]
    assert len(ends) == len(set(ends)) == 12, "one line per variant's end"
    # the closing summary, in order: the table, the champion, the verdicts, where to look
    table = lines.index("| rank | variant | status | val_accuracy | val_loss | test_accuracy | train_seconds |")
    assert all(line.startswith("| ") for line in lines[table + 2 : table + 7])
    assert lines[table + 7] == "(top 5 of 12 variants; the full table is the parent run's comparison/comparison.csv)"
    champion = next(i for i, line in enumerate(lines) if "now holds 'champion'" in line)
    claims_at = [i for i, line in enumerate(lines) if line.startswith("claim")]
    assert table < champion < claims_at[0] and any(lines[i].startswith("claim 4e: ") for i in claims_at)
    assert re.search(r"claim 3: \w.*\[[-+]\d\.\d+, [-+]\d\.\d+\], n=3, margin", proc.stdout), "estimate and interval"
    report_line, ui_line, url_line = lines[-3:]
    assert report_line.startswith("Claims report: ") and report_line.endswith("/report/report.html")
    assert ui_line.endswith(f"mlflow ui --backend-store-uri sqlite:///{home / 'mlflow.db'} --host 127.0.0.1")
    assert re.fullmatch(
        r"  then open http://127\.0\.0\.1:5000/#/experiments/\d+/runs/[0-9a-f]{32}\?workflowType=machine_learning",
        url_line,
    )
    assert Path(report_line.removeprefix("Claims report: ")).resolve().is_file()


@pytest.mark.integration
def test_airflows_logs_go_to_the_file_named_at_the_start(piped_run):
    home, proc = piped_run
    first = proc.stdout.splitlines()[0]
    m = re.fullmatch(r"Airflow's logs: (\S+) \(--verbose shows them here\)", first)
    assert m, first
    log = Path(m.group(1))
    assert log.parent == home / "logs" and log.name.startswith("run-"), log
    text = log.read_text()
    finished = "TaskInstance Finished: dag_id=bnpipe_experiment, task_id=compare"  # the LocalExecutor's record
    assert finished in text and "Marking run <DagRun bnpipe_experiment" in text


@pytest.mark.integration
def test_runs_show_prints_the_same_summary_by_either_id(piped_run):
    home, proc = piped_run
    closing = proc.stdout[proc.stdout.index("| rank |") :]
    parent = re.search(r"/runs/([0-9a-f]{32})\?workflowType=machine_learning$", proc.stdout.strip()).group(1)
    by_parent = run_cli(["runs", "show", parent, "--top", "5"], home, timeout=120)
    assert by_parent.returncode == 0, by_parent.stderr
    header, rest = by_parent.stdout.split("\n", 1)
    assert re.fullmatch(rf"DAG run (manual__\S+), MLflow parent run {parent} \(FINISHED\)", header)
    assert rest.strip() == closing.strip()
    dag_run_id = header.split()[2].rstrip(",")
    by_dag_run = run_cli(["runs", "show", dag_run_id, "--top", "5"], home, timeout=120)
    assert by_dag_run.stdout == by_parent.stdout
    missing = run_cli(["runs", "show", "manual__nope"], home, timeout=120)
    assert missing.returncode == 1 and missing.stderr.strip().startswith("bnpipe runs show: no bnpipe run")


HOOKS_LOCK_PROBE = """
import sys, threading
from bnpipe.operations import cli
{prepare}
from mlflow.utils import import_hooks

held, release = threading.Event(), threading.Event()

def other_thread():  # the watcher's thread, caught inside an import: it holds MLflow's import-hooks lock
    with import_hooks._post_import_hooks_lock:
        held.set()
        release.wait()

threading.Thread(target=other_thread, daemon=True).start()
held.wait()
import mlflow.models.evaluation.evaluator_registry as registry  # what compare's first evaluate does
assert registry._model_evaluation_registry.is_registered("default"), "evaluators not registered"
print("registered")
release.set()
"""


@pytest.mark.parametrize("prepared", [True, False])
def test_in_process_runs_register_mlflows_evaluators_before_the_watcher_thread_starts(prepared):
    """`bnpipe run` without --parallel runs compare's ``mlflow.models.evaluate`` in the process whose
    progress watcher polls MLflow from another thread. Registering the evaluators takes MLflow's
    import-hooks lock while importing, and another thread's import can hold a module lock while it
    waits for that lock: a deadlock that hung a run (see ``cli.before_in_process_tasks``). Prepared,
    the registration no longer needs the lock; unprepared, the same import waits for it."""
    import subprocess
    import sys

    code = HOOKS_LOCK_PROBE.format(prepare="cli.before_in_process_tasks()" if prepared else "")
    try:
        wait = 60 if prepared else 15  # unprepared, it waits for good: 15 s tell
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=wait)
    except subprocess.TimeoutExpired:
        assert not prepared, "registering MLflow's evaluators waited for another thread's import-hooks lock"
        return
    assert prepared, "the unprepared registration should have waited for the lock (is the probe still valid?)"
    assert out.returncode == 0 and "registered" in out.stdout, out.stderr[-2000:]
