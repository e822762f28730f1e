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


def cli_env(env_home: Path, extra_env: dict | None = None) -> dict:
    """This process's environment with ``env_home`` as bnpipe's home; inputs may live in its parent."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW_", "BNPIPE_"))}
    env.update(
        BNPIPE_HOME=str(env_home),
        MLFLOW_TRACKING_URI=f"sqlite:///{env_home / 'mlflow.db'}",
        BNPIPE_INPUT_DIRS=str(env_home.parent),
    )
    env.update(extra_env or {})
    return env


def run_cli(args: list[str], env_home: Path, timeout: int = 900, extra_env: dict | None = None):
    """Run the bnpipe console script in a subprocess with ``env_home`` as its home."""
    env = cli_env(env_home, extra_env)
    return subprocess.run([BNPIPE, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 with its own SQLite store and served artifacts; yields its port."""
    import time
    import urllib.request

    from bnpipe.base import procs

    root = tmp_path_factory.mktemp("mlflow-server")
    port = procs.free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--serve-artifacts",
           "--artifacts-destination", str(root / "artifacts"), "--workers", "1"]  # fmt: skip
    proc = procs.spawn(cmd, root / "server.log")  # a session of its own: the server and its workers
    rec = procs.record(proc.pid, cmd)
    deadline = time.monotonic() + 180  # a loaded 2-core machine took 76 s
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            procs.terminate(rec)
            proc.wait()
            raise RuntimeError(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield port
    procs.terminate(rec, grace=30)  # the group this fixture started: the server and its workers
    proc.wait()


# Shared by several modules: the DAG folder parsed once (test_dag_integrity.py, test_scoring.py) and
# the real stack of Airflow and MLflow servers (test_stack_e2e.py, test_browser.py, test_faults_stack.py).
# One finished smoke run is read by three modules (tests/run_fixtures.py).
from dag_fixtures import parsed  # noqa: E402, F401
from run_fixtures import smoke_run  # noqa: E402, F401
from stack_fixtures import live_stack, stack_run  # noqa: E402, F401


def _leftover_trainers(root: Path) -> list[int]:
    """PIDs of warm trainers (bnpipe.operations.warm) whose pool lies under ``root``: the ones this session started."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"bnpipe.operations.warm" in argv and b"--pool" in argv:
            pool = argv[argv.index(b"--pool") + 1].decode()
            if Path(pool).is_relative_to(root):
                found.append(int(proc.name))
    return found


def pytest_sessionfinish(session, exitstatus):
    """Whatever started a warm trainer must stop it; a leftover fails the session (and is stopped here)."""
    import signal

    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None:
        return
    leftovers = _leftover_trainers(factory.getbasetemp())
    for pid in leftovers:
        os.kill(pid, signal.SIGTERM)
    if leftovers:
        print(f"\nwarm trainers left running by the tests (now stopped): {leftovers}")
        session.exitstatus = 1


# With `pytest -n 2` (pytest-xdist; `make test` does it) every module stays on one worker, so its
# module-scoped fixtures start once, and the modules that use the session's real stack share one
# worker, so that stack starts once. The two workers then overlap a stack module's waiting with
# another module's work. (xdist's own `--dist loadgroup` cannot do this under pytest 9: it renames
# the items through an attribute pytest 9 no longer reads, so the groups were ignored and two
# workers started two stacks.)
STACK_MODULES = {
    "test_stack_e2e", "test_browser", "test_faults_stack", "test_assets", "test_benchmarks_smoke", "test_inbox",
    "test_approval",
}  # fmt: skip
SMOKE_RUN_MODULES = {"test_pipeline_integration", "test_scoring", "test_progress"}
SHARED = {"stack": ({"live_stack", "stack_run"}, STACK_MODULES), "smoke-run": ({"smoke_run"}, SMOKE_RUN_MODULES)}


def scope_of(nodeid: str) -> str:
    """The unit a worker takes whole: the module, or the name of a group of modules sharing a session fixture."""
    module = nodeid.split("::", 1)[0]
    stem = Path(module).stem
    return next((name for name, (_, modules) in SHARED.items() if stem in modules), module)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ByModule(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return scope_of(nodeid)

    return ByModule(config, log)


def pytest_collection_modifyitems(config, items):
    """A module using a shared session fixture must be in its group, or a second worker would start it again."""
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1]
        for name, (fixtures, modules) in SHARED.items():
            if fixtures & set(getattr(item, "fixturenames", ())) and module not in modules:
                raise pytest.UsageError(f"{module} uses the shared {name!r} fixtures: add it to that group in conftest")
