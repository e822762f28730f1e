"""Shared fixtures: every test gets its own bnpipe home, Airflow home and MLflow store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BNPIPE = str(Path(sys.executable).with_name("bnpipe"))


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An isolated BNPIPE_HOME with its own MLflow SQLite store; Airflow vars are cleared."""
    h = tmp_path / "bnpipe-home"
    h.mkdir()
    for k in list(os.environ):
        if k.startswith(("AIRFLOW", "MLFLOW_", "BNPIPE_")):
            monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("BNPIPE_HOME", str(h))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{h / 'mlflow.db'}")
    monkeypatch.setenv("BNPIPE_INPUT_DIRS", str(tmp_path))
    return h


def run_cli(args: list[str], env_home: Path, timeout: int = 900, extra_env: dict | None = None):
    """Run the bnpipe console script in a subprocess with ``env_home`` as its home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW_", "BNPIPE_"))}
    env.update(
        BNPIPE_HOME=str(env_home),
        MLFLOW_TRACKING_URI=f"sqlite:///{env_home / 'mlflow.db'}",
        BNPIPE_INPUT_DIRS=str(env_home.parent),
        **(extra_env or {}),
    )
    return subprocess.run([BNPIPE, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
