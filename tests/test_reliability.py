"""Bad input, faults and retries: clear errors, nothing half-written, the alias never moves wrongly."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from conftest import BNPIPE, ROOT, cli_env, run_cli
from dag_fixtures import embedded_task_rows

from bnpipe.base.procs import free_port
from bnpipe.mlflow_edge import tracking
from bnpipe.operations import warm

FAST_FAIL = {"BNPIPE_RETRIES": "0"}


def _client(home):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{home / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _parents(home):
    c = _client(home)
    exp = c.get_experiment_by_name("bnpipe")
    return c.search_runs([exp.experiment_id], "tags.`bnpipe.role` = 'parent'") if exp else []


def test_bad_param_is_refused_before_anything_runs(tmp_path):
    home = tmp_path / "h"
    home.mkdir()
    proc = run_cli(["run", "--dataset", "breast_cancer", "--conf", '{"epochs": 0}'], home)
    assert proc.returncode == 2
    assert "epochs=0" in proc.stderr and "minimum" in proc.stderr
    assert not (home / "mlflow.db").exists() and not (home / "airflow").exists()


@pytest.mark.integration
def test_rejected_file_fails_without_retry_and_records_the_reason(tmp_path):
    home = tmp_path / "h"
    home.mkdir()
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,cls\n" + "\n".join(f"{i},{i * 2},{i % 2}" for i in range(30)))
    proc = run_cli(
        ["run", "--dataset", "csv", "--data-path", str(bad), "--label", "target", "--grid", "smoke"],
        home,
        extra_env={"BNPIPE_RETRIES": "3", "BNPIPE_RETRY_DELAY": "30"},
    )
    assert proc.returncode == 1
    # Airflow's record: ingest failed on its first try and had no earlier one, though 3 retries were allowed
    [ingest] = embedded_task_rows(home, "ingest")
    assert (ingest["state"], ingest["try_number"]) == ("failed", 1), ingest
    assert embedded_task_rows(home, "ingest", "task_instance_history") == [], "a rejected file must not be retried"
    [parent] = _parents(home)
    assert parent.info.status == "FAILED"
    assert "label column 'target' not found" in parent.data.tags["bnpipe.failure"]
    assert "bad.csv" in parent.data.tags["bnpipe.failure"]
    assert _client(home).search_registered_models() == []


@pytest.mark.integration
def test_all_variants_diverge_fails_the_run_and_moves_no_alias(tmp_path):
    home = tmp_path / "h"
    home.mkdir()
    axes = {"preprocessing": ["none"], "hidden_bn": [False], "initializer": ["he_normal", "glorot_uniform"]}
    proc = run_cli(
        ["run", "--dataset", "synthetic", "--rows", "600", "--grid", "custom", "--axes", json.dumps(axes),
         "--hidden", "[8]", "--learning-rate", "10", "--epochs", "2", "--summary-json", str(tmp_path / "s.json")],
        home,
        extra_env=FAST_FAIL,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert "every variant diverged" in proc.stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    assert [v["status"] for v in summary["variants"]] == ["diverged", "diverged"]
    assert summary["status"] == "FAILED" and summary["champion"] is None
    assert _client(home).search_registered_models() == []


def test_unreachable_tracking_server_retries_then_names_the_uri():
    uri = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(tracking.TrackingError, match=uri.replace(".", r"\.")) as err:
        tracking.connect(uri, attempts=3, first_wait=0.2)
    assert time.monotonic() - t0 >= 0.6 - 0.05, "must back off between attempts (0.2 s + 0.4 s)"
    assert "after 3 attempts" in str(err.value)


@pytest.mark.integration
def test_unreachable_tracking_server_fails_the_dag_with_the_uri(tmp_path):
    home = tmp_path / "h"
    home.mkdir()
    uri = f"http://127.0.0.1:{free_port()}"
    proc = run_cli(
        ["run", "--dataset", "breast_cancer", "--grid", "smoke"],
        home,
        extra_env={**FAST_FAIL, "MLFLOW_TRACKING_URI": uri},
    )
    assert proc.returncode == 1
    assert uri in proc.stderr


# Starts the warm trainer that `bnpipe run`'s first training task will use (same home, code, thread
# count and slot) and prints its PID once it listens, which it does only after importing TensorFlow.
PREWARM = """
from bnpipe.base import settings
from bnpipe.operations import warm
threads = settings.tf_threads()
pool = warm.pool_dir(threads)
pool.mkdir(parents=True, exist_ok=True)
warm._connect_or_spawn(pool, 0, threads).close()
print(warm.running()[0]["pid"])
"""


@pytest.mark.integration
def test_training_past_its_timeout_fails_cleanly_and_its_run_is_failed(tmp_path):
    home = tmp_path / "h"
    home.mkdir()
    env = {**FAST_FAIL, "BNPIPE_TRAIN_TIMEOUT": "20"}
    # The timeout must fire while the variant trains, not while TensorFlow is imported: the trainer is
    # warm before the run starts (with the interpreter of the `bnpipe` script: the code digest names it).
    python = Path(BNPIPE).read_text().splitlines()[0].removeprefix("#!")
    warmed = subprocess.run(
        [python, "-c", PREWARM], env=cli_env(home, env), cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert warmed.returncode == 0, warmed.stderr[-3000:]
    trainer = f"warm pid {warmed.stdout.split()[-1]}"
    try:
        proc = run_cli(
            ["run", "--dataset", "fashion_mnist", "--max-rows", "12000", "--grid", "custom",
             "--axes", '{"preprocessing": ["standard", "bn_first"]}', "--epochs", "200",
             "--summary-json", str(tmp_path / "s.json")],
            home,
            extra_env=env,
        )  # fmt: skip
    finally:
        warm.stop_all(home)  # `bnpipe run` stops it too; this covers a run that never started
    assert proc.returncode == 1
    summary = json.loads((tmp_path / "s.json").read_text())
    c = _client(home)
    runs = [c.get_run(v["run_id"]) for v in summary["variants"]]
    statuses = [r.info.status for r in runs]
    assert trainer in {r.data.tags.get("bnpipe.trainer") for r in runs}, "the run did not use the warm trainer"
    # the timed-out attempt ends its own run as FAILED; an attempt cut off before its training
    # started is ended by the DAG's teardown as KILLED; a variant that diverged within the time
    # limit has finished on its own; nothing stays RUNNING
    assert "FAILED" in statuses, statuses
    for r in runs:
        ok = r.info.status in ("FAILED", "KILLED") or r.data.tags.get("bnpipe.status") == "diverged"
        assert ok, (r.info.run_name, r.info.status, r.data.tags.get("bnpipe.status"))
    assert summary["status"] == "FAILED" and summary["failure"]
    assert summary["champion"] is None and c.search_registered_models() == []
