"""The ``bnpipe`` command.

``bnpipe run`` runs the experiment DAG through Airflow in this process (``dag.test()``) on the
embedded default: a project-local Airflow home on SQLite and a local MLflow store. With
``--parallel`` it hands the mapped training tasks to Airflow's LocalExecutor instead, so they
run side by side in separate processes.

The embedded default is hermetic (``ENVIRONMENT`` below, also shown by ``bnpipe --help``): a
user's ``AIRFLOW_HOME=~/airflow`` or Celery settings in the shell neither break nor steer it.
Expected errors print one line saying what to do next (exit 2 for a bad argument, 1 otherwise),
never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from bnpipe.base import procs, settings
from bnpipe.mlflow_edge.summary import RunSummary
from bnpipe.operations import airflow_env, params

DAG_ID = "bnpipe_experiment"

# One example per command: the top-level --help lists them, each command's --help shows its own.
EXAMPLES = {
    "run": ("bnpipe run --dataset wine --grid smoke --epochs 1", "train 4 small variants, print the comparison"),
    "score": ("bnpipe score --dataset wine --input new_wines.csv", "score a file with the wine champion"),
    "serve": ("bnpipe serve --dataset wine --port 5001", "serve the wine champion over HTTP"),
    "report": ("bnpipe report manual__2026-01-01T00:00:00+00:00", "rebuild a past run's claims report"),
    "runs": ("bnpipe runs show manual__2026-01-01T00:00:00+00:00", "a past run's closing summary, from MLflow"),
}

# Shell variables the embedded setup drops: all that Airflow reads, and the MLflow ones that would
# move what bnpipe records (it names its own experiment and runs, and registers on the tracking server).
SHELL_AIRFLOW_NAMES = ("AIRFLOW_HOME", "AIRFLOW_CONFIG")
SHELL_AIRFLOW_PREFIXES = ("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_")
SHELL_MLFLOW_NAMES = ("MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID")
ENVIRONMENT = f"""environment:
  BNPIPE_HOME (default ./.bnpipe) holds all state; the embedded Airflow lives in $BNPIPE_HOME/airflow.
  These shell variables are ignored, and `bnpipe run` names the ones it found in one line on stderr:
    {", ".join([*SHELL_AIRFLOW_NAMES, *(p + "*" for p in SHELL_AIRFLOW_PREFIXES)])}
    {", ".join(SHELL_MLFLOW_NAMES)}
  MLFLOW_TRACKING_URI (default: a SQLite store in $BNPIPE_HOME) and MLflow's client settings
  (credentials, TLS) are honoured; the tracking server is checked before a run starts.
  For a long-lived Airflow and MLflow instead: make up."""


class EmbeddedError(RuntimeError):
    """The embedded Airflow cannot run the DAG: its DB, its DAG folder or its api-server."""


def embedded_env() -> dict:
    """The embedded setup's environment: its AIRFLOW_* values replace the shell's; BNPIPE_HOME,
    MLFLOW_TRACKING_URI and TF_CPP_MIN_LOG_LEVEL are defaults that the shell's values override."""
    home = settings.home()
    return airflow_env.airflow_env(
        home=home,
        airflow_home=home / "airflow",
        db_url=f"sqlite:///{home / 'airflow' / 'airflow.db'}",
        executor="LocalExecutor",
        tracking_uri=settings.tracking_uri(),
    )


def _from_shell_dropped(name: str) -> bool:
    return name in SHELL_AIRFLOW_NAMES or name in SHELL_MLFLOW_NAMES or name.startswith(SHELL_AIRFLOW_PREFIXES)


def apply_embedded_env() -> dict:
    """Make this process's environment the embedded setup's; returns the shell's settings it dropped.

    Idempotent. Tasks, the LocalExecutor's workers and the warm trainers inherit this environment.
    """
    env = embedded_env()
    dropped = {k: v for k, v in os.environ.items() if _from_shell_dropped(k) and env.get(k) != v}
    for k in dropped:
        del os.environ[k]
    for k, v in env.items():
        if k.startswith("AIRFLOW"):
            os.environ[k] = v
        else:
            os.environ.setdefault(k, v)
    Path(os.environ["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    return dropped


def _one_line(text) -> str:
    return " ".join(str(text).split())


def _shown_path(path) -> str:
    """``path`` relative to the working directory when it lies inside it."""
    p = Path(path)
    return str(p.relative_to(Path.cwd())) if p.is_relative_to(Path.cwd()) else str(p)


def _shown_uri(uri: str) -> str:
    """``uri`` without a password in it."""
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()


def embedded_notice(prog: str, dropped: dict, airflow: bool = True) -> str | None:
    """One line on what the embedded setup took from the shell and what it ignored; None if nothing.

    ``airflow=False`` for commands that use MLflow only: they do not mention Airflow settings.
    """
    names = sorted(
        (k for k in dropped if airflow or k.startswith("MLFLOW_")),
        key=lambda k: (SHELL_AIRFLOW_NAMES.index(k) if k in SHELL_AIRFLOW_NAMES else 2, k.startswith("MLFLOW_"), k),
    )
    parts = []
    if names:
        shown = [f"{k}={dropped[k]}" if k in SHELL_AIRFLOW_NAMES else k for k in names]
        if len(shown) > 8:
            shown = [*shown[:7], f"{len(shown) - 7} more"]
        why = []
        if any(k.startswith("AIRFLOW") for k in names):
            why.append(f"the embedded Airflow lives in {_shown_path(os.environ['AIRFLOW_HOME'])}")
        if any(k.startswith("MLFLOW_") for k in names):
            why.append("bnpipe names its own MLflow experiment and runs and registers on the tracking server")
        parts.append(f"ignoring {', '.join(shown)} from your shell ({'; '.join(why)})")
    uri = settings.tracking_uri()
    if uri != settings.embedded_tracking_uri():
        parts.append(f"tracking to MLFLOW_TRACKING_URI={_shown_uri(uri)} from your shell")
    return f"{prog}: " + "; ".join(parts) if parts else None


def tracking_problem() -> str | None:
    """Why the MLflow tracking store does not answer, in one line; None when it does."""
    from bnpipe.mlflow_edge import tracking

    uri = settings.tracking_uri()
    try:
        tracking.connect(uri, attempts=2)
    except tracking.TrackingError as exc:
        message = _one_line(exc).replace(uri, _shown_uri(uri))
        if uri != settings.embedded_tracking_uri():
            embedded = _shown_path(settings.home())
            message += f" (MLFLOW_TRACKING_URI is set in your shell; unset it to use the embedded store in {embedded})"
        return message
    return None


def _conf_from_args(args) -> dict:
    conf = json.loads(args.conf) if args.conf else {}
    for name in params.SPEC:
        value = getattr(args, name, None)
        if value is not None:
            conf[name] = value
    return conf


def _migrate() -> None:
    """Create or upgrade the embedded Airflow's SQLite DB; a DB that cannot be used is an EmbeddedError."""
    from airflow import settings as af_settings
    from airflow.utils.db import initdb
    from sqlalchemy.exc import OperationalError

    try:
        af_settings.configure_orm()
        initdb()
    except OperationalError as exc:
        airflow_home = _shown_path(os.environ["AIRFLOW_HOME"])
        raise EmbeddedError(
            f"the embedded Airflow DB in {airflow_home} cannot be used ({_one_line(exc.orig)}); if no other "
            f"`bnpipe run` uses it, delete {airflow_home} to start afresh"
        ) from exc


@contextlib.contextmanager
def execution_api(timeout: float = 120.0):
    """An Airflow api-server on a free 127.0.0.1 port, for executor-run tasks; stopped on exit."""
    import secrets
    import time
    import urllib.request

    port = procs.free_port()
    jwt_secret = os.environ.setdefault("AIRFLOW__API_AUTH__JWT_SECRET", secrets.token_hex(32))
    os.environ.update(airflow_env.execution_api(port, jwt_secret))
    log_dir = Path(os.environ["AIRFLOW_HOME"]) / "logs"
    cmd = [sys.executable, "-m", "airflow", "api-server", "--host", "127.0.0.1", "--port", str(port)]
    proc = procs.spawn(cmd, log_dir / "api-server.log", dict(os.environ))
    rec = procs.record(proc.pid, cmd)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise EmbeddedError(f"Airflow's api-server did not start; see {log_dir}/api-server.log") from None
                time.sleep(0.5)
        yield port
    finally:
        procs.terminate(rec)  # the api-server and its workers: the group it leads
        proc.wait(timeout=30)


def run_dag(conf: dict, parallel: bool = False, dag_id: str = DAG_ID, run_after=None):
    """Run the DAG once in this process with ``conf``; returns the finished DagRun.

    ``run_after`` (an aware datetime) fixes the DAG run's id in advance: see ``dag_run_id``.
    With ``parallel``, tasks go to the LocalExecutor, which needs an api-server for the
    Task Execution API: one is started on a free loopback port for the duration of the run.
    """
    apply_embedded_env()
    _migrate()
    from bnpipe.operations import warm

    try:
        if parallel:
            with execution_api():
                return _run_dag(conf, parallel, dag_id, run_after)
        return _run_dag(conf, parallel, dag_id, run_after)
    finally:  # the training tasks' warm trainers (bnpipe.operations.warm) end with this run
        warm.stop_all()


def _run_dag(conf: dict, parallel: bool, dag_id: str = DAG_ID, run_after=None):
    from airflow.dag_processing.dagbag import DagBag

    folder = os.environ["AIRFLOW__CORE__DAGS_FOLDER"]
    bag = DagBag(dag_folder=folder)
    if bag.import_errors:
        path, trace = next(iter(bag.import_errors.items()))
        last = trace.strip().splitlines()[-1] if trace.strip() else "unknown error"
        raise EmbeddedError(f"{_shown_path(path)} does not import ({last}); fix it and run again")
    dag = bag.get_dag(dag_id)
    if dag is None:
        raise EmbeddedError(f"no DAG {dag_id!r} in {_shown_path(folder)}; is this a complete bnpipe checkout?")
    return dag.test(run_conf=conf, use_executor=parallel, run_after=run_after)


def dag_run_id(run_after) -> str:
    """The id ``dag.test(run_after=...)`` gives its DAG run (it also sets a logical date)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.types import DagRunType

    return DagRun.generate_run_id(run_type=DagRunType.MANUAL, logical_date=run_after, run_after=run_after)


def summary_for(dag_run_id: str) -> RunSummary | None:
    """The run summary, read back from MLflow by the DAG run's id."""
    from bnpipe.reporting.summaries import load_summary

    return load_summary(dag_id=DAG_ID, dag_run_id=dag_run_id)


@contextlib.contextmanager
def output_to(path: Path | None):
    """Send everything this process and its children write on fd 1 and 2 (Airflow's structured logs,
    the LocalExecutor's workers, the warm trainers) to ``path``; yields the terminal's stdout and
    stderr as files. ``path=None`` leaves the output where it is (``--verbose``)."""
    if path is None:
        yield sys.stdout, sys.stderr
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    out = os.fdopen(os.dup(saved[0]), "w", buffering=1)
    err = os.fdopen(os.dup(saved[1]), "w", buffering=1)
    try:
        yield out, err
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        out.close()
        err.close()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def before_in_process_tasks() -> None:
    """What must happen in this thread before the progress watcher's thread starts, when the tasks
    (compare's ``mlflow.models.evaluate`` among them) run in this process.

    MLflow's first ``evaluate`` registers its evaluators through its import hooks: it imports a
    few dozen modules while holding the hooks' lock, which every import in any thread takes to
    look a module up. The watcher's MLflow client imports on each request (a missing Databricks
    module), holding that module's import lock while it waits for the hooks' lock; the main thread
    waited for the module lock: a deadlock, which hung a `bnpipe run` for good (2026-11-28, under
    load; py-spy showed both threads). Registered here first, before any other thread exists.
    """
    import mlflow.models.evaluation.evaluator_registry  # noqa: F401 - its import registers the evaluators


def _watcher(conf: dict, run_id: str, out, verbose: bool):
    """The progress of DAG run ``run_id``, read from MLflow: a Live display on a terminal, else plain lines."""
    from mlflow.exceptions import MlflowException
    from rich.console import Console

    from bnpipe.mlflow_edge import tracking
    from bnpipe.reporting import progress

    console = Console(file=out)
    if console.is_terminal and not verbose:
        title = f"bnpipe run {run_id}: {conf['dataset']}, grid {conf['grid']}"
        view = progress.LiveView(console, title)
    else:
        view = progress.PlainView(out)
    holder = {}

    def read():
        if "client" not in holder:
            holder["client"] = tracking.connect(attempts=1)
        return progress.read_runs(holder["client"], settings.experiment_name(), run_id)

    planned = [v["name"] for v in params.variant_dicts(conf)]
    errors = (MlflowException, OSError, tracking.TrackingError)
    return progress.Watcher(read, view, planned, conf["epochs"], read_errors=errors)


def where_to_look(summary: RunSummary) -> list[str]:
    """Where the rest is: the claims report's artifact path and how to open the MLflow UI."""
    from bnpipe.mlflow_edge import tracking
    from bnpipe.reporting import report

    client = tracking.connect()
    parent = client.get_run(summary.parent_run_id)
    uri = settings.tracking_uri()
    page = tracking.ui_page(summary.experiment_id, summary.parent_run_id)
    artifacts = parent.info.artifact_uri
    if artifacts.startswith("file://"):  # a local store: a path one can open
        from urllib.parse import unquote, urlsplit

        artifacts = _shown_path(unquote(urlsplit(artifacts).path))
    lines = [f"Claims report: {artifacts}/{report.REPORT_DIR}/report.html"]
    if uri.startswith(("http://", "https://")):
        lines.append(f"MLflow UI: {_shown_uri(uri).rstrip('/')}/{page}")
    else:
        venv_mlflow = _shown_path(Path(sys.executable).parent / "mlflow")
        lines.append(f"MLflow UI: {venv_mlflow} ui --backend-store-uri {uri} --host 127.0.0.1")
        lines.append(f"  then open http://127.0.0.1:5000/{page}")
    return lines


def read_verdicts(parent_run_id: str) -> list[dict] | None:
    """The claims of the parent run's report/verdicts.json; None when the report was not logged."""
    import tempfile

    from mlflow.exceptions import MlflowException

    from bnpipe.mlflow_edge import tracking
    from bnpipe.reporting import report

    client = tracking.connect()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(parent_run_id, f"{report.REPORT_DIR}/{report.VERDICTS_FILE}", tmp)
        except (MlflowException, OSError):  # no report: publish_claims_report recorded why on the parent
            return None
        return json.loads(Path(path).read_text()).get("claims")


def closing_summary(summary: RunSummary, top: int = 5) -> str:
    """What `bnpipe run` and `bnpipe runs show` print at the end: the ranked table and the champion,
    one sentence per claim and where to look next; everything read from MLflow."""
    from bnpipe.reporting import report, summaries

    verdicts = read_verdicts(summary.parent_run_id)
    where = where_to_look(summary)
    if verdicts is None:
        where.insert(0, "No claims report on this run; `bnpipe report <run id> --log` rebuilds it.")
    return summaries.text(summary, top=top, tail=[report.verdict_text(verdicts or []), "\n".join(where)])


def cmd_run(args) -> int:
    try:
        conf = params.validate(_conf_from_args(args))
    except (params.ParamError, json.JSONDecodeError) as exc:
        print(f"bnpipe run: {exc}", file=sys.stderr)
        return 2
    if conf["approval"] == "required":  # dag.test() would wait for an answer nobody can give here
        print("bnpipe run: approval=required needs a person to answer in the Airflow UI, which bnpipe run does "
              "not start; use the stack (`make up`) and trigger the run there, or leave approval at auto",
              file=sys.stderr)  # fmt: skip
        return 2
    from datetime import UTC, datetime

    from bnpipe.mlflow_edge.tracking import TrackingError

    dropped = apply_embedded_env()
    run_after = datetime.now(UTC)
    log_path = None if args.verbose else settings.home() / "logs" / f"run-{run_after:%Y%m%dT%H%M%S}.log"
    with output_to(log_path) as (out, err):
        problem = tracking_problem()
        if problem:
            print(f"bnpipe run: {problem}", file=err)
            return 1
        notice = embedded_notice("bnpipe run", dropped)
        if notice:
            print(notice, file=err, flush=True)
        run_id = dag_run_id(run_after)
        if log_path:
            print(f"Airflow's logs: {_shown_path(log_path)} (--verbose shows them here)", file=out, flush=True)
        try:
            if not args.parallel:
                before_in_process_tasks()
            with _watcher(conf, run_id, out, args.verbose):
                dr = run_dag(conf, parallel=args.parallel, run_after=run_after)
        except EmbeddedError as exc:
            print(f"bnpipe run: {exc}", file=err)
            return 1
    try:
        summary = summary_for(dr.run_id)
        text = closing_summary(summary) if summary and summary.variants else None
    except TrackingError as exc:
        print(f"bnpipe run: DAG run {dr.run_id} ended {dr.state}; {exc}", file=sys.stderr)
        return 1
    state = str(getattr(dr.state, "value", dr.state))
    if text:
        print("\n" + text)
    if args.summary_json and summary:
        Path(args.summary_json).write_text(json.dumps(summary.to_dict(), indent=2, default=str))
    if state != "success":
        logs = f"Airflow's logs in {_shown_path(log_path)}" if log_path else "the task logs above"
        reason = (summary.failure if summary else None) or f"see {logs}"
        print(f"bnpipe run: DAG run {dr.run_id} ended {state}: {reason}", file=sys.stderr)
        return 1
    return 0


def cmd_runs_show(args) -> int:
    """The closing summary of a past run (`make up`, the REST API, or `bnpipe run`), from MLflow alone."""
    _enter_embedded("bnpipe runs show")
    from bnpipe.mlflow_edge.tracking import TrackingError
    from bnpipe.reporting.summaries import resolve_summary

    try:
        summary = resolve_summary(args.run_id)
        if summary is None:
            where = _shown_uri(settings.tracking_uri())
            print(f"bnpipe runs show: no bnpipe run {args.run_id!r} in MLflow at {where}; give a DAG run id or an "
                  "MLflow parent run id (see `mlflow ui`, experiment bnpipe)", file=sys.stderr)  # fmt: skip
            return 1
        if not summary.variants:
            message = f"run {args.run_id} has no variant runs yet (parent run {summary.status})"
            print(f"bnpipe runs show: {message}", file=sys.stderr)
            return 1
        ids = f"DAG run {summary.dag_run_id}, MLflow parent run {summary.parent_run_id}"
        print(f"{ids} ({summary.status})")
        print(closing_summary(summary, top=args.top))
    except TrackingError as exc:
        print(f"bnpipe runs show: {exc}", file=sys.stderr)
        return 1
    return 0


def _enter_embedded(prog: str) -> None:
    """The embedded environment for a command that uses MLflow only; notes what it ignored."""
    notice = embedded_notice(prog, apply_embedded_env(), airflow=False)
    if notice:
        print(notice, file=sys.stderr, flush=True)


def cmd_score(args) -> int:
    """Score a file once with the champion: the same code as the scoring DAG's task."""
    _enter_embedded("bnpipe score")
    from bnpipe.core.validation import DataError
    from bnpipe.mlflow_edge import score
    from bnpipe.mlflow_edge.tracking import TrackingError

    try:
        result = score.score_file(args.dataset, args.input, args.id_column)
    except (score.ScoringError, DataError, TrackingError) as exc:
        print(f"bnpipe score: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


def cmd_report(args) -> int:
    """Rebuild the claims report of a past run from MLflow alone."""
    _enter_embedded("bnpipe report")
    from bnpipe.mlflow_edge.tracking import TrackingError
    from bnpipe.reporting import report

    out = Path(args.out or f"bnpipe-report-{args.run_id.replace(':', '_').replace('+', '_')}")
    try:
        built = report.build_claims_report(args.run_id, out, log_to_mlflow=args.log)
    except (LookupError, TrackingError) as exc:
        print(f"bnpipe report: {exc}", file=sys.stderr)
        return 1
    print(report.verdict_text(built["verdicts"]))
    print(f"report: {built['files']['html']} and {built['files']['markdown']}")
    return 0


def cmd_serve(args) -> int:
    """Serve the champion with MLflow's model server on 127.0.0.1 (this process becomes the server)."""
    if not 0 < args.port < 65536 or not procs.port_is_free(args.port):
        print(f"bnpipe serve: port {args.port} on 127.0.0.1 is not free; pass another with --port", file=sys.stderr)
        return 1
    _enter_embedded("bnpipe serve")
    from bnpipe.mlflow_edge import score
    from bnpipe.mlflow_edge.tracking import TrackingError

    try:
        champ = score.champion(args.dataset)
    except (score.NoChampion, TrackingError) as exc:
        print(f"bnpipe serve: {exc}", file=sys.stderr)
        return 1
    uri = f"models:/{champ['model_name']}@champion"
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local"]
    cmd += ["--host", "127.0.0.1", "--port", str(args.port)]
    env = dict(os.environ)  # the server runs `uvicorn` from this venv's bin/
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    print(f"serving {uri} (version {champ['version']}) at http://127.0.0.1:{args.port}/invocations", flush=True)
    os.execve(sys.executable, cmd, env)
    return 0  # not reached


def _epilog(*commands: str) -> str:
    width = max(len(EXAMPLES[c][0]) for c in commands)
    lines = [f"  {EXAMPLES[c][0]:<{width}}   {EXAMPLES[c][1]}\n" for c in commands]
    return ("examples:\n" if len(lines) > 1 else "example:\n") + "".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bnpipe",
        description="Train Keras model variants through Airflow, compare them in MLflow, score and serve the champion.",
        epilog=_epilog(*EXAMPLES) + "\n" + ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(EXAMPLES) + "}")

    def command(name: str, help_: str):
        return sub.add_parser(
            name, help=help_, description=help_, epilog=_epilog(name),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )  # fmt: skip

    run = command("run", "run the experiment DAG once, in-process, and print the comparison")
    for name, s in params.SPEC.items():
        flag = "--" + name.replace("_", "-")
        kind = s["type"] if isinstance(s["type"], str) else next(t for t in s["type"] if t != "null")
        help_ = f"{s['description']} (default: {s['default']!r})"
        if kind == "boolean":
            run.add_argument(flag, dest=name, action="store_true", default=None, help=help_)
        elif kind in ("object", "array"):
            run.add_argument(flag, dest=name, type=json.loads, help=help_ + " [JSON]")
        else:
            conv = {"integer": int, "number": float, "string": str}[kind]
            run.add_argument(flag, dest=name, type=conv, choices=s.get("enum"), help=help_)
    run.add_argument("--conf", help="all Params at once, as a JSON object (flags win)")
    run.add_argument("--summary-json", metavar="PATH", help="write the run summary as JSON to PATH")
    run.add_argument("--parallel", action="store_true", help="run mapped tasks in parallel with LocalExecutor")
    run.add_argument(
        "--verbose", action="store_true",
        help="stream Airflow's logs here instead of to $BNPIPE_HOME/logs/run-<time>.log; progress as plain lines",
    )  # fmt: skip
    run.set_defaults(func=cmd_run)
    from bnpipe.mlflow_edge.score import PARAMS

    sc = command("score", "score a csv/parquet file with the champion; writes <stem>.predictions.*")
    sc.add_argument("--dataset", required=True, help=PARAMS["dataset"]["description"])
    sc.add_argument("--input", required=True, metavar="PATH_OR_URL", help=PARAMS["input_path"]["description"])
    sc.add_argument("--id-column", help=PARAMS["id_column"]["description"])
    sc.set_defaults(func=cmd_score)
    serve = command("serve", "serve the champion over HTTP on 127.0.0.1 with MLflow's model server")
    serve.add_argument("--dataset", required=True, help=PARAMS["dataset"]["description"])
    serve.add_argument("--port", type=int, default=5001, help="port on 127.0.0.1 (default: 5001)")
    serve.set_defaults(func=cmd_serve)
    rep = command("report", "rebuild the claims report (HTML + Markdown + plots) of a past run from MLflow")
    rep.add_argument("run_id", help="the Airflow DAG run id or the MLflow parent run id")
    rep.add_argument("--out", metavar="DIR", help="output directory (default: ./bnpipe-report-<run id>)")
    rep.add_argument("--log", action="store_true", help="also log the report to the parent run's report/ artifacts")
    rep.set_defaults(func=cmd_report)
    runs = command("runs", "look at past runs in MLflow, however they were started")
    runs_sub = runs.add_subparsers(dest="runs_command", required=True, metavar="{show}")
    show = runs_sub.add_parser(
        "show", help="a run's closing summary: ranking, champion, claim verdicts, where to look",
        description="The closing summary of a past run, read from MLflow alone.",
    )  # fmt: skip
    show.add_argument("run_id", help="the Airflow DAG run id or the MLflow parent run id")
    show.add_argument("--top", type=int, default=10, help="rows of the ranked table to show (default: 10)")
    show.set_defaults(func=cmd_runs_show)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"bnpipe {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
