"""The real stack on one machine: Airflow's api-server, scheduler, dag-processor and triggerer,
and an MLflow tracking server, each a process of its own on 127.0.0.1.

``python -m bnpipe.operations.stack up`` (``make up``) starts it under ``$BNPIPE_HOME/stack`` and prints the
URLs and the login; ``down`` (``make down``) stops exactly the processes it recorded; ``status``
shows what runs. Tests and benchmarks use :class:`Stack` directly, with their own root and ports,
and talk to its Airflow through :attr:`Stack.client` (:mod:`bnpipe.operations.airflow_api`).

This module supervises: the components' environment comes from :mod:`bnpipe.operations.airflow_env`,
their processes are started, recorded and stopped by :mod:`bnpipe.base.procs`. Only the standard
library and subprocesses: it imports neither Airflow nor TensorFlow.

Layout under ``root``::

    airflow/    AIRFLOW_HOME: SQLite metadata DB, task logs, the login's password file
    mlflow/     the MLflow server's SQLite store (mlflow.db) and artifacts (artifacts/)
    logs/       one log file per component
    run/        one PID file per component (JSON: pid, process start time, command)
    stack.json  ports and the JWT secret, so a restart keeps its URLs and tokens
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

from bnpipe.base import procs, settings
from bnpipe.base.procs import HOST, free_port, port_is_free
from bnpipe.operations.airflow_api import AirflowClient, ApiError, http
from bnpipe.operations.airflow_env import Services, airflow_env

COMPONENTS = ("mlflow", "api-server", "scheduler", "dag-processor", "triggerer")
EXPERIMENT_DAG = "bnpipe_experiment"
INBOX_DAG = "bnpipe_on_new_data"
# Airflow's api-server health reports these components by these names.
_HEALTH_KEYS = {"scheduler": "scheduler", "dag-processor": "dag_processor", "triggerer": "triggerer"}


class StackError(RuntimeError):
    """A component did not start, did not become healthy, or has no login yet."""


class Stack:
    """Airflow and MLflow servers under ``root``, started and stopped by recorded PIDs.

    ``env`` is the complete environment every component gets; a test can reuse it to run
    ``airflow`` CLI commands against the same metadata DB.
    """

    def __init__(
        self,
        root: Path,
        *,
        airflow_port: int | None = None,
        mlflow_port: int | None = None,
        executor: str = "LocalExecutor",
        sql_alchemy_conn: str | None = None,
        mlflow_backend_uri: str | None = None,
        celery_broker_url: str | None = None,
        celery_result_backend: str | None = None,
        extra_env: dict | None = None,
        username: str = "admin",
        password: str | None = None,
    ):
        self.root = Path(root).resolve()
        self.airflow_home = self.root / "airflow"
        self.mlflow_dir = self.root / "mlflow"
        self.log_dir = self.root / "logs"
        self.run_dir = self.root / "run"
        self.state_file = self.root / "stack.json"
        state = json.loads(self.state_file.read_text()) if self.state_file.exists() else {}
        self.airflow_port = airflow_port or state.get("airflow_port") or free_port()
        self.mlflow_port = mlflow_port or state.get("mlflow_port") or free_port()
        self.jwt_secret = state.get("jwt_secret") or secrets.token_hex(32)
        self.airflow_url = f"http://{HOST}:{self.airflow_port}"
        self.mlflow_url = f"http://{HOST}:{self.mlflow_port}"
        self.username = username
        self.password_file = self.airflow_home / "simple_auth_manager_passwords.json.generated"
        self._password = password
        self.mlflow_backend_uri = mlflow_backend_uri or f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"
        self.executor = executor
        self._procs: dict[str, subprocess.Popen] = {}
        self._worker_homes: dict[str, Path] = {}  # hostname: its BNPIPE_HOME, where its warm trainers live
        self._client: AirflowClient | None = None

        # the shell's Airflow and MLflow settings would steer the components: they get the stack's own
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_HOME", "MLFLOW_"))}
        services = Services(
            api_port=self.airflow_port, jwt_secret=self.jwt_secret, username=username,
            password_file=self.password_file, mlflow_ui_url=self.mlflow_url,
            celery_broker_url=celery_broker_url, celery_result_backend=celery_result_backend,
        )  # fmt: skip
        self.env: dict = {
            **inherited,
            "PATH": str(Path(sys.executable).parent) + os.pathsep + inherited.get("PATH", ""),
            "NO_PROXY": ",".join(filter(None, [inherited.get("NO_PROXY"), HOST, "localhost"])),
            "no_proxy": ",".join(filter(None, [inherited.get("no_proxy"), HOST, "localhost"])),
            **airflow_env(
                home=settings.home(),
                airflow_home=self.airflow_home,
                db_url=sql_alchemy_conn or f"sqlite:///{self.airflow_home / 'airflow.db'}",
                executor=executor,
                tracking_uri=self.mlflow_url,
                services=services,
            ),
            **{k: str(v) for k, v in (extra_env or {}).items()},
        }

    # ----------------------------------------------------------------- login
    @property
    def password(self) -> str:
        """The login's password: given, else the one SimpleAuthManager's password file holds."""
        if self._password is None and self.password_file.exists():
            self._password = json.loads(self.password_file.read_text()).get(self.username)
        if self._password is None:
            raise StackError(f"no password for {self.username!r} yet in {self.password_file}")
        return self._password

    @property
    def client(self) -> AirflowClient:
        """Airflow's REST API on this stack, logged in as its user."""
        if self._client is None:
            self._client = AirflowClient(self.airflow_url, self.username, self.password)
        return self._client

    def _seed_password(self) -> None:
        """Write the password file before the api-server starts, so the login is known up front."""
        stored = json.loads(self.password_file.read_text()) if self.password_file.exists() else {}
        want = self._password or stored.get(self.username) or secrets.token_urlsafe(12)
        if stored.get(self.username) != want:
            stored[self.username] = want
            self.password_file.write_text(json.dumps(stored) + "\n")
            self.password_file.chmod(0o600)
        self._password = want

    # ------------------------------------------------------------- processes
    def _commands(self) -> dict[str, list[str]]:
        py, port = sys.executable, str(self.airflow_port)
        return {
            "mlflow": [
                py, "-m", "mlflow", "server", "--host", HOST, "--port", str(self.mlflow_port),
                "--backend-store-uri", self.mlflow_backend_uri, "--serve-artifacts",
                "--artifacts-destination", str(self.mlflow_dir / "artifacts"), "--workers", "1",
            ],
            "api-server": [py, "-m", "airflow", "api-server", "--host", HOST, "--port", port],
            "scheduler": [py, "-m", "airflow", "scheduler", "--skip-serve-logs"],
            "dag-processor": [py, "-m", "airflow", "dag-processor"],
            "triggerer": [py, "-m", "airflow", "triggerer", "--skip-serve-logs"],
        }  # fmt: skip

    def _pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def _spawn(self, name: str, cmd: list[str], env: dict | None = None) -> int:
        """Start ``cmd`` in a new process group (with ``env``, default ``self.env``); record its PID and start time."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        proc = procs.spawn(cmd, self.log_dir / f"{name}.log", env or self.env)
        self._procs[name] = proc
        procs.write_record(self._pid_file(name), procs.record(proc.pid, cmd))
        return proc.pid

    def record_of(self, name: str) -> dict | None:
        """The PID record of component ``name`` (``{pid, start_ticks, cmd}``), None if there is none."""
        return procs.read_record(self._pid_file(name))

    def alive(self, name: str) -> bool:
        """Is the recorded process of ``name`` still the one we started?"""
        return procs.alive(self.record_of(name))

    def recorded(self) -> list[str]:
        return sorted(p.stem for p in self.run_dir.glob("*.pid")) if self.run_dir.is_dir() else []

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.log_dir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def migrate(self) -> None:
        """Create or upgrade the Airflow metadata DB (``airflow db migrate``)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / "db-migrate.log").open("ab") as log:
            proc = subprocess.run(
                [sys.executable, "-m", "airflow", "db", "migrate"], env=self.env, stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=600,
            )  # fmt: skip
        if proc.returncode != 0:
            raise StackError(f"airflow db migrate failed:\n{self.log_tail('db-migrate')}")

    def start(self, components=COMPONENTS, timeout: float = 180, unpause=()) -> None:
        """Migrate the DB, start ``components`` (those not already running), wait until healthy.

        ``unpause``: DAG ids to unpause once the dag-processor has stored them.
        On failure everything started so far is stopped and the failing log's tail is raised.
        """
        for d in (self.airflow_home, self.mlflow_dir / "artifacts", self.log_dir, self.run_dir):
            d.mkdir(parents=True, exist_ok=True)
        if not self.state_file.exists():
            state = {"airflow_port": self.airflow_port, "mlflow_port": self.mlflow_port, "jwt_secret": self.jwt_secret}
            self.state_file.write_text(json.dumps(state, indent=1) + "\n")
            self.state_file.chmod(0o600)
        self._seed_password()
        commands = self._commands()
        wanted = [c for c in components if not self.alive(c)]
        for port, who in ((self.airflow_port, "api-server"), (self.mlflow_port, "mlflow")):
            if who in wanted and not port_is_free(port):
                raise StackError(f"port {port} for the {who} is taken by another program; pass another port")
        deadline = time.monotonic() + timeout
        try:
            if any(c != "mlflow" for c in wanted):
                self.migrate()
            for name in wanted:
                self._spawn(name, commands[name])
            self.wait_healthy(components, deadline)
            for dag_id in unpause:
                try:
                    self.client.unpause(dag_id, deadline)
                except ApiError as exc:
                    raise StackError(f"{exc}\n{self.log_tail('dag-processor')}") from exc
        except BaseException:
            self.stop()
            raise

    def start_celery_worker(
        self,
        hostname: str,
        queues=("default", "train"),
        concurrency: int = 1,
        extra_env: dict | None = None,
        prefix: tuple[str, ...] = (),
    ) -> int:
        """Start an ``airflow celery worker`` (the stack must use CeleryExecutor); returns its PID.

        The worker's environment has ``BNPIPE_HOSTNAME=hostname``: with ``[core] hostname_callable =
        bnpipe.base.settings.hostname`` its task instances record that name, so workers on one host differ.
        ``extra_env`` may give it a ``BNPIPE_HOME`` of its own (no disk shared with the other components:
        snapshots reach it through MLflow); ``stop`` stops the warm trainers there too. ``prefix``: a command
        the worker runs under (it must ``exec`` the rest, so the recorded PID is the worker's), e.g. one
        that gives it a private view of the disk.
        """
        cmd = [
            *prefix, sys.executable, "-m", "airflow", "celery", "worker", "--celery-hostname", hostname,
            "--queues", ",".join(queues), "--concurrency", str(concurrency), "--skip-serve-logs",
        ]  # fmt: skip
        env = {**self.env, "BNPIPE_HOSTNAME": hostname, **{k: str(v) for k, v in (extra_env or {}).items()}}
        self._worker_homes[hostname] = Path(env["BNPIPE_HOME"])
        return self._spawn(f"celery-worker-{hostname}", cmd, env)

    def stop_celery_worker(self, hostname: str) -> None:
        """Stop one worker of :meth:`start_celery_worker` (its recorded process group), then the warm
        trainers under its BNPIPE_HOME unless another worker of this stack, or the stack itself, uses that home."""
        from bnpipe.operations import warm

        self._stop_component(f"celery-worker-{hostname}")
        home = self._worker_homes.pop(hostname, None)
        if home is not None and home not in {Path(self.env["BNPIPE_HOME"]), *self._worker_homes.values()}:
            warm.stop_all(home)

    def _check_running(self, components) -> None:
        for name in components:
            proc = self._procs.get(name)
            if (proc is not None and proc.poll() is not None) or not self.alive(name):
                raise StackError(f"{name} exited during start-up; {self.log_dir / (name + '.log')}:\n"
                                 f"{self.log_tail(name)}")  # fmt: skip

    def health(self) -> dict:
        """Airflow's health report plus ``mlflow``: {component: "healthy" | other}."""
        out = {}
        try:
            status, body = http("GET", f"{self.airflow_url}/api/v2/monitor/health", timeout=5)
            if status == 200 and isinstance(body, dict):
                out["api-server"] = "healthy"
                out["metadatabase"] = body.get("metadatabase", {}).get("status")
                for name, key in _HEALTH_KEYS.items():
                    out[name] = (body.get(key) or {}).get("status")
        except OSError:
            out["api-server"] = "down"
        try:
            status, body = http("GET", f"{self.mlflow_url}/health", timeout=5)
            out["mlflow"] = "healthy" if status == 200 else f"HTTP {status}"
        except OSError:
            out["mlflow"] = "down"
        return out

    def wait_healthy(self, components=COMPONENTS, deadline: float | None = None) -> None:
        deadline = deadline or time.monotonic() + 180
        while True:
            self._check_running(components)
            h = self.health()
            missing = [c for c in components if h.get(c) != "healthy"]
            if not missing:
                return
            if time.monotonic() > deadline:
                name = next((m for m in missing if m in COMPONENTS), missing[0])
                raise StackError(f"not healthy in time: {missing} ({h}); {name} log:\n{self.log_tail(name)}")
            time.sleep(1)

    def stop(self) -> None:
        """Stop the process groups recorded under ``run/``, newest first, then the training tasks'
        warm trainers (``bnpipe.operations.warm``) under this stack's BNPIPE_HOME and its workers'. Idempotent."""
        from bnpipe.operations import warm

        order = list(reversed(COMPONENTS))
        names = sorted(self.recorded(), key=lambda n: order.index(n) if n in order else -1)
        for name in names:
            self._stop_component(name)
        for home in {Path(self.env["BNPIPE_HOME"]), *self._worker_homes.values()}:
            warm.stop_all(home)

    def _stop_component(self, name: str) -> None:
        procs.terminate(self.record_of(name))  # its process group, if it is still the one we started
        proc = self._procs.pop(name, None)
        if proc is not None:
            proc.wait(timeout=30)
        self._pid_file(name).unlink(missing_ok=True)

    # ------------------------------------------------------------- context
    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def describe(self) -> str:
        return "\n".join([
            f"Airflow UI   {self.airflow_url}   login: {self.username} / {self.password}",
            f"MLflow UI    {self.mlflow_url}",
            f"Logs         {self.log_dir}",
            f"Stop with    make down   (or: {Path(sys.executable).name} -m bnpipe.operations.stack down)",
        ])  # fmt: skip


# ------------------------------------------------------------------- CLI
def _default_root() -> Path:
    return settings.home() / "stack"


def _cli_stack(args) -> Stack:
    root = Path(args.root) if args.root else _default_root()
    state = root / "stack.json"
    known = json.loads(state.read_text()) if state.exists() else {}

    def pick(given, stored, preferred):
        if given:
            return given
        if stored:
            return stored
        return preferred if port_is_free(preferred) else free_port()

    return Stack(
        root,
        airflow_port=pick(args.airflow_port, known.get("airflow_port"), 8080),
        mlflow_port=pick(args.mlflow_port, known.get("mlflow_port"), 5000),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bnpipe.operations.stack", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--root", help="state directory (default: $BNPIPE_HOME/stack)")
    parser.add_argument("--airflow-port", type=int, help="default: 8080 if free, else a free port")
    parser.add_argument("--mlflow-port", type=int, help="default: 5000 if free, else a free port")
    parser.add_argument("--timeout", type=float, default=240)
    args = parser.parse_args(argv)
    stack = _cli_stack(args)
    if args.command == "down":
        names = stack.recorded()
        stack.stop()
        print(f"stopped: {', '.join(names) or 'nothing was running'}")
        return 0
    if args.command == "status":
        running = {n: stack.alive(n) for n in stack.recorded()}
        for name, ok in running.items():
            print(f"{name:14} {'running' if ok else 'not running (stale PID file)'}")
        if not running:
            print("not running; start with `make up`")
            return 1
        print(json.dumps(stack.health()))
        return 0
    t0 = time.monotonic()
    inbox = Path(stack.env.get("BNPIPE_INBOX") or Path(stack.env["BNPIPE_HOME"]) / "inbox")
    inbox.mkdir(parents=True, exist_ok=True)
    try:
        stack.start(timeout=args.timeout, unpause=(EXPERIMENT_DAG, INBOX_DAG))
    except StackError as exc:
        print(f"make up failed: {exc}", file=sys.stderr)
        return 1
    print(f"bnpipe stack is up ({time.monotonic() - t0:.0f} s); Airflow and MLflow listen on {HOST} only.")
    print(stack.describe())
    print(f"Data drop    copy a csv/parquet into {inbox} to start an experiment")
    return 0


if __name__ == "__main__":
    sys.exit(main())
