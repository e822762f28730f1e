"""The embedded default is hermetic: Airflow and MLflow settings in a user's shell neither break
``bnpipe run`` nor steer it, and every command's expected errors are one line, never a traceback."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess

import pytest
from conftest import BNPIPE, ROOT, cli_env, run_cli

from bnpipe.base.procs import free_port
from bnpipe.operations import cli

CHAMPION = "now holds 'champion'"  # the closing summary's winner line (bnpipe.reporting.summaries.champion_lines)
SMOKE = ["run", "--dataset", "wine", "--grid", "smoke", "--epochs", "1", "--seeds", "1"]


def _bnpipe_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("bnpipe ")]


def _hostile_airflow(tmp_path) -> dict:
    """What a user's shell may export: ~/airflow that does not exist yet, a Celery setup, an unusable DB,
    a DAG folder of junk, a config file of their own."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the DB's directory should be\n")
    junk = tmp_path / "junk-dags"
    junk.mkdir(exist_ok=True)
    (junk / "broken.py").write_text("raise RuntimeError('a junk DAG file')\n")
    return {
        "AIRFLOW_HOME": str(tmp_path / "airflow-not-here"),
        "AIRFLOW_CONFIG": str(tmp_path / "cfg-not-here" / "airflow.cfg"),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{blocker}/airflow.db",
        "AIRFLOW__CORE__DAGS_FOLDER": str(junk),
    }


def _assert_untouched(tmp_path, env: dict) -> None:
    assert not (tmp_path / "airflow-not-here").exists(), "the shell's AIRFLOW_HOME must not be created"
    assert not (tmp_path / "cfg-not-here").exists(), "the shell's AIRFLOW_CONFIG must not be written"
    assert (tmp_path / "not-a-dir").is_file()
    assert [p.name for p in (tmp_path / "junk-dags").iterdir()] == ["broken.py"]


@pytest.fixture
def saved_environ():
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_embedded_env_replaces_the_shells_airflow_and_keeps_its_tracking_uri(home, tmp_path, saved_environ):
    hostile = _hostile_airflow(tmp_path)
    user_uri = "http://mlflow.example:5000"
    os.environ.update(
        hostile, MLFLOW_TRACKING_URI=user_uri, MLFLOW_REGISTRY_URI="databricks-uc", TF_CPP_MIN_LOG_LEVEL="0"
    )

    dropped = cli.apply_embedded_env()

    assert dropped == {**hostile, "MLFLOW_REGISTRY_URI": "databricks-uc"}
    assert os.environ["AIRFLOW_HOME"] == str(home / "airflow") and (home / "airflow").is_dir()
    assert os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"sqlite:///{home / 'airflow' / 'airflow.db'}"
    assert os.environ["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert os.environ["AIRFLOW__CORE__DAGS_FOLDER"] == str(ROOT / "dags")
    assert "AIRFLOW_CONFIG" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ
    assert os.environ["MLFLOW_TRACKING_URI"] == user_uri and os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
    assert cli.apply_embedded_env() == {}, "a second call finds nothing foreign"
    _assert_untouched(tmp_path, hostile)

    notice = cli.embedded_notice("bnpipe run", dropped)
    assert "\n" not in notice and notice.startswith("bnpipe run: ignoring AIRFLOW_HOME=")
    for name in dropped:
        assert name in notice
    assert f"the embedded Airflow lives in {home / 'airflow'}" in notice
    assert f"tracking to MLFLOW_TRACKING_URI={user_uri} from your shell" in notice
    mlflow_only = cli.embedded_notice("bnpipe score", dropped, airflow=False)
    assert "AIRFLOW" not in mlflow_only and "MLFLOW_REGISTRY_URI" in mlflow_only


def test_notice_hides_a_password_in_the_tracking_uri(home, saved_environ):
    os.environ["MLFLOW_TRACKING_URI"] = "https://me:s3cret@mlflow.example"
    notice = cli.embedded_notice("bnpipe run", cli.apply_embedded_env())
    assert "s3cret" not in notice and "https://me:***@mlflow.example" in notice


def test_help_lists_every_command_with_an_example_that_parses(tmp_path):
    proc = subprocess.run([BNPIPE, "--help"], env=cli_env(tmp_path), capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    commands = proc.stdout.split("{", 1)[1].split("}", 1)[0].split(",")
    assert set(commands) == {"run", "score", "serve", "report", "runs"}
    examples = [line.strip() for line in proc.stdout.splitlines() if line.startswith("  bnpipe ")]
    for command in commands:
        [example] = [e for e in examples if e.split()[1] == command]
        argv = shlex.split(example.split("   ")[0])[1:]
        assert cli.build_parser().parse_args(argv).command == command, example
    assert "ignored" in proc.stdout and "AIRFLOW_HOME, AIRFLOW_CONFIG, AIRFLOW__*" in proc.stdout


def test_unreachable_tracking_uri_is_refused_in_one_line_before_anything_runs(tmp_path):
    home = tmp_path / "h"
    home.mkdir()
    uri = f"http://127.0.0.1:{free_port()}"
    hostile = _hostile_airflow(tmp_path)
    proc = run_cli(SMOKE, home, extra_env={**hostile, "MLFLOW_TRACKING_URI": uri})
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"bnpipe run: MLflow tracking server at {uri} did not answer")
    assert "unset it to use the embedded store" in line
    # refused before anything ran: no Airflow DB was created, so no task (and no training) started
    assert not (home / "airflow" / "airflow.db").exists() and not (home / "mlflow.db").exists()
    _assert_untouched(tmp_path, hostile)


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (["run", "--conf", "{not json"], 2, "bnpipe run: Expecting property name"),
        (["score", "--dataset", "wine", "--input", "new.csv"], 1, "`bnpipe run --dataset wine`"),
        (["serve", "--dataset", "wine"], 1, "`bnpipe run --dataset wine`"),
        (["serve", "--dataset", "wine", "--port", "{busy}"], 1, "is not free; pass another with --port"),
        (["report", "manual__nope"], 1, "give a parent run id or a DAG run id"),
        (["score", "--dataset", "wine", "--input", "new.csv", "--uri", "{closed}"], 1, "did not answer"),
    ],
    ids=[
        "run-bad-json",
        "score-no-champion",
        "serve-no-champion",
        "serve-busy-port",
        "report-unknown",
        "score-no-mlflow",
    ],
)
def test_expected_errors_are_one_line_with_the_next_step(tmp_path, args, code, expected):
    home = tmp_path / "h"
    home.mkdir()
    extra = {**_hostile_airflow(tmp_path), "MLFLOW_REGISTRY_URI": f"http://127.0.0.1:{free_port()}"}
    if "--uri" in args:
        args = args[: args.index("--uri")]
        extra["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{free_port()}"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        args = [a.replace("{busy}", str(busy.getsockname()[1])) for a in args]
        proc = run_cli(args, home, timeout=120, extra_env=extra)
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = _bnpipe_lines(proc.stderr)
    assert lines and lines[-1] == proc.stderr.strip().splitlines()[-1], proc.stderr[-3000:]
    assert expected in lines[-1]
    notices = [line for line in lines[:-1] if "ignoring" in line]
    assert all("AIRFLOW" not in n for n in notices), "MLflow-only commands do not talk about Airflow"
    assert len(lines) - len(notices) == 1
    _assert_untouched(tmp_path, extra)


@pytest.mark.integration
def test_hostile_shell_is_ignored_and_the_run_reaches_its_champion(tmp_path):
    """One real run with every hostile setting at once; the shell's MLFLOW_TRACKING_URI is honoured."""
    home = tmp_path / "h"
    home.mkdir()
    user_store = tmp_path / "users-mlflow" / "mlflow.db"
    user_uri = f"sqlite:///{user_store}"
    hostile = {
        **_hostile_airflow(tmp_path),
        "MLFLOW_REGISTRY_URI": f"http://127.0.0.1:{free_port()}",
        "MLFLOW_EXPERIMENT_NAME": "someone-elses",
    }
    proc = run_cli(SMOKE, home, extra_env={**hostile, "MLFLOW_TRACKING_URI": user_uri})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert CHAMPION in proc.stdout
    assert "Traceback" not in proc.stderr + proc.stdout
    [notice] = [line for line in proc.stderr.splitlines() if line.startswith("bnpipe run: ")]
    for name in hostile:
        assert name in notice, name
    assert f"AIRFLOW_HOME={tmp_path / 'airflow-not-here'}" in notice
    assert f"the embedded Airflow lives in {home / 'airflow'}" in notice
    assert f"tracking to MLFLOW_TRACKING_URI={user_uri} from your shell" in notice
    _assert_untouched(tmp_path, hostile)
    assert (home / "airflow" / "airflow.db").is_file()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=user_uri, registry_uri=user_uri)
    assert not (home / "mlflow.db").exists(), "the honoured store, not the embedded one"
    assert client.get_experiment_by_name("someone-elses") is None
    exp = client.get_experiment_by_name("bnpipe")
    [parent] = client.search_runs([exp.experiment_id], "tags.`bnpipe.role` = 'parent'")
    assert parent.info.status == "FINISHED"
    assert int(client.get_model_version_by_alias("bnpipe-wine", "champion").version) == 1
