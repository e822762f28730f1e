"""Warm trainers (bnpipe.operations.warm): reused across tasks, stopped by a task that goes away, never left behind.

Each test drives ``bnpipe.operations.warm`` as a training task does, with a real trainer process, a real
snapshot and a real MLflow store; the tasks that must die are subprocesses of the test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from bnpipe.base.procs import start_ticks
from bnpipe.core import snapshots, sources
from bnpipe.core.train import TrainConfig
from bnpipe.core.variants import Variant
from bnpipe.mlflow_edge import tracking
from bnpipe.operations import warm

pytestmark = pytest.mark.integration

CFG = TrainConfig(epochs=2, batch_size=32, threads=1)


@pytest.fixture
def setup(home):
    snapshot = snapshots.ingest(sources.IngestRequest(source="breast_cancer"))
    client = tracking.connect()
    exp = tracking.ensure_experiment(client)
    parent = tracking.start_parent_run(client, exp, "bnpipe_experiment", "manual__warm", "link", {})
    yield snapshot, client, exp, parent
    warm.stop_all(home)
    assert warm.running(home) == []


def _args(snapshot, exp, parent, variant: Variant, cfg: TrainConfig = CFG, map_index: int = 0) -> dict:
    return {
        "snapshot": snapshot, "variant_dict": variant.to_dict(), "cfg": asdict(cfg), "experiment_id": exp,
        "parent_run_id": parent, "map_index": map_index, "try_number": 1,
    }  # fmt: skip


def _wait(predicate, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_one_trainer_serves_consecutive_tasks_of_its_slot(setup, home):
    snapshot, client, exp, parent = setup
    variants = [Variant(preprocessing=p, hidden=(8,), hidden_bn=False) for p in ("standard", "bn_first")]
    results = [warm._run_in_pool(_args(snapshot, exp, parent, v, map_index=i), 1, 1) for i, v in enumerate(variants)]

    assert [r["status"] for r in results] == ["ok", "ok"]
    trainers = {client.get_run(r["run_id"]).data.tags["bnpipe.trainer"] for r in results}
    live = warm.running(home)
    assert len(live) == 1 and trainers == {f"warm pid {live[0]['pid']}"}  # one process trained both
    assert live[0]["pid"] != os.getpid()
    for r in results:
        run = client.get_run(r["run_id"])
        assert run.info.status == "FINISHED" and "test_accuracy" in run.data.metrics
        assert [a.path for a in client.list_artifacts(r["run_id"], "model")] == ["model/model.keras"]


def test_errors_come_back_to_the_task(setup):
    snapshot, _, exp, parent = setup
    broken = {**snapshot, "path": str(snapshot["path"]) + "-missing"}
    with pytest.raises(warm.WarmTrainerError, match="missing"):
        warm._run_in_pool(_args(broken, exp, parent, Variant(hidden=(8,))), 1, 1)
    # the trainer survives a failed job and serves the next one
    ok = warm._run_in_pool(_args(snapshot, exp, parent, Variant(hidden=(8,), hidden_bn=False)), 1, 1)
    assert ok["status"] == "ok"


TASK = """
import json, signal, sys
from bnpipe.operations import warm
args = json.loads(sys.argv[1])
class TaskTimeout(BaseException):  # like Airflow's execution_timeout: raised in the waiting task
    pass
if len(sys.argv) > 3:
    warm.ABORT_GRACE = float(sys.argv[3])
if len(sys.argv) > 2:
    def timeout(*_):
        raise TaskTimeout("execution_timeout")
    signal.signal(signal.SIGALRM, timeout)
    signal.alarm(int(sys.argv[2]))
print(json.dumps(warm._run_in_pool(args, 1, 1)))
"""


def _task(args: dict, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-c", TASK, json.dumps(args), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _variant_run(client, exp, parent, timeout: float = 300):
    """The variant run of the task under test, once it has logged an epoch."""

    def found():
        runs = tracking.variant_runs(client, parent)
        return runs[0] if runs and client.get_metric_history(runs[0].info.run_id, "loss") else None

    return _wait(found, timeout, "the variant run's first epoch")


# Many minutes of work: only an abort ends it in time. Without XLA (which this many steps would switch
# on), so the first epoch comes seconds after the start and a short task timeout still falls inside the fit.
LONG = TrainConfig(epochs=3000, batch_size=8, threads=1, jit_compile=False)
TASK_TIMEOUT = "30"  # the task's execution_timeout, seconds


def test_a_killed_task_stops_its_trainer_and_the_run_is_killed(setup, home):
    snapshot, client, exp, parent = setup
    task = _task(_args(snapshot, exp, parent, Variant(hidden=(32,)), LONG))
    run = _variant_run(client, exp, parent)
    task.send_signal(signal.SIGKILL)
    task.wait(timeout=30)
    status = _wait(lambda: (s := client.get_run(run.info.run_id).info.status) != "RUNNING" and s, 60, "the run to end")
    assert status == "KILLED"
    assert len(warm.running(home)) == 1  # the trainer stopped the fit and lives on for the next task
    epochs = len(client.get_metric_history(run.info.run_id, "loss"))
    assert epochs < LONG.epochs


def test_a_task_that_fails_while_waiting_marks_its_run_failed(setup):
    snapshot, client, exp, parent = setup
    task = _task(_args(snapshot, exp, parent, Variant(hidden=(32,)), LONG), TASK_TIMEOUT)
    run = _variant_run(client, exp, parent)
    _, err = task.communicate(timeout=120)
    assert task.returncode != 0 and "TaskTimeout: execution_timeout" in err  # the task failed with its own error
    assert client.get_run(run.info.run_id).info.status == "FAILED"  # recorded before the task exited


def test_a_trainer_that_does_not_answer_the_abort_is_killed_and_the_slot_recovers(setup, home):
    snapshot, client, exp, parent = setup
    task = _task(_args(snapshot, exp, parent, Variant(hidden=(32,)), LONG), TASK_TIMEOUT, "2")
    _variant_run(client, exp, parent)
    (hung,) = warm.running(home)
    os.kill(hung["pid"], signal.SIGSTOP)  # a trainer stuck in its job
    _, err = task.communicate(timeout=120)
    assert task.returncode != 0 and "did not answer the abort; killing it" in err
    _wait(lambda: start_ticks(hung["pid"]) is None, 30, "the hung trainer to be gone")
    ok = warm._run_in_pool(_args(snapshot, exp, parent, Variant(hidden=(8,), hidden_bn=False), map_index=1), 1, 1)
    assert ok["status"] == "ok"
    assert [t["pid"] for t in warm.running(home)] != [hung["pid"]]  # a new trainer holds the slot


def test_idle_trainers_exit_on_their_own(setup, home, monkeypatch):
    snapshot, _, exp, parent = setup
    monkeypatch.setenv("BNPIPE_WARM_IDLE", "3")
    warm._run_in_pool(_args(snapshot, exp, parent, Variant(hidden=(8,), hidden_bn=False), map_index=0), 1, 1)
    assert len(warm.running(home)) == 1
    _wait(lambda: warm.running(home) == [], 60, "the idle trainer to exit")


def test_a_new_code_version_gets_its_own_pool(home, monkeypatch, tmp_path):
    before = warm.pool_dir(1)
    assert before.parent == home / "warm" and before.name.endswith("-t1")
    assert warm.pool_dir(2) != before
    other = tmp_path / "bnpipe"  # another bnpipe tree: other sources
    (other / "operations").mkdir(parents=True)
    (other / "operations" / "warm.py").write_text("# changed\n")
    monkeypatch.setattr(warm.settings, "PACKAGE_DIR", other)
    changed = warm.pool_dir(1)
    assert changed != before
    (other / "core").mkdir()
    (other / "core" / "train.py").write_text("# a change in another room counts too\n")
    assert warm.pool_dir(1) not in (before, changed)


OTHER_USER = """
import json, socket, sys
conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
conn.connect("\\0" + sys.argv[1])  # an abstract address: a leading NUL
try:
    conn.sendall((json.dumps({"job": {}, "env": {}}) + "\\n").encode())
    print(repr(conn.recv(4096)))
except (BrokenPipeError, ConnectionResetError):  # closed before or after our request: unread either way
    print("reset")
"""


SYSTEM_PYTHON = "/usr/bin/python3"  # the client needs only the standard library; the venv may be private


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a client as another user")
@pytest.mark.skipif(not Path(SYSTEM_PYTHON).exists(), reason=f"no {SYSTEM_PYTHON}")
def test_a_trainer_serves_only_its_own_user(setup, home):
    snapshot, _, exp, parent = setup
    warm._run_in_pool(_args(snapshot, exp, parent, Variant(hidden=(8,), hidden_bn=False)), 1, 1)
    address = warm._address(warm.pool_dir(1), 0).removeprefix("\0")  # argv cannot carry the NUL
    nobody = subprocess.run(
        [SYSTEM_PYTHON, "-c", OTHER_USER, address], capture_output=True, text=True, timeout=30, user=65534, cwd="/"
    )
    assert nobody.returncode == 0, nobody.stderr
    assert nobody.stdout.strip() in ("b''", "reset")  # closed without a word
    assert "refused a connection from another user" in (warm.pool_dir(1) / "slot-0.log").read_text()
