"""One embedded `bnpipe run --parallel` shared by the modules that read a finished smoke run.

test_pipeline_integration (the run's records), test_scoring (its champion) and test_progress (what
it printed to a pipe) each started a run of their own; the one run below serves all three. They
form one xdist scope (``SMOKE_RUN_MODULES`` in conftest.py), so with `pytest -n 2` the run happens
once, on the worker that takes them.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import run_cli

# breast_cancer, the smoke grid (standard vs. BN-first, clipping on and off) at 3 seeds: the
# smallest run whose claims get an interval (n=3), 12 variants in all.
SMOKE_ARGS = ["run", "--dataset", "breast_cancer", "--grid", "smoke", "--epochs", "3", "--batch-size", "16",
              "--seeds", "3", "--parallel"]  # fmt: skip
SEEDS = 3
TRAIN_CONCURRENCY = 2  # training tasks at once, whatever the machine's cores (default: one per core)


@dataclass(frozen=True)
class SmokeRun:
    home: Path  # its BNPIPE_HOME; its parent holds the summary and whatever a test writes beside it
    summary: dict  # --summary-json
    proc: subprocess.CompletedProcess  # stdout is a pipe: the short, non-interactive output


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> SmokeRun:
    home = tmp_path_factory.mktemp("smoke-run") / "home"
    home.mkdir()
    summary_path = home.parent / "summary.json"
    concurrency = {"BNPIPE_TRAIN_CONCURRENCY": str(TRAIN_CONCURRENCY)}
    proc = run_cli([*SMOKE_ARGS, "--summary-json", str(summary_path)], home, extra_env=concurrency)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return SmokeRun(home, json.loads(summary_path.read_text()), proc)
