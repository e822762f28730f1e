"""The ``bnpipe`` command.

``bnpipe run`` runs the experiment DAG through Airflow in this process (``dag.test()``) on the
embedded default: a project-local Airflow home on SQLite and a local MLflow store. With
``--parallel`` it hands the mapped training tasks to Airflow's LocalExecutor instead, so they
run side by side in separate processes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from bnpipe import params as spec
from bnpipe import settings

DAG_ID = "bnpipe_experiment"


def _dags_folder() -> Path:
    """The repository's dags/ next to this package (editable install), else ./dags."""
    here = Path(__file__).resolve().parents[1] / "dags"
    return here if here.is_dir() else Path.cwd() / "dags"


def embedded_env() -> dict:
    """Environment defaults of the embedded setup; values already set win."""
    home = settings.home()
    return {
        "BNPIPE_HOME": str(home),
        "AIRFLOW_HOME": str(home / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(_dags_folder()),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": str(max(2, os.cpu_count() or 2)),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow' / 'airflow.db'}",
        "MLFLOW_TRACKING_URI": settings.tracking_uri(),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


def apply_embedded_env() -> None:
    for k, v in embedded_env().items():
        os.environ.setdefault(k, v)
    Path(os.environ["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)


def _conf_from_args(args) -> dict:
    conf = json.loads(args.conf) if args.conf else {}
    for name in spec.SPEC:
        value = getattr(args, name, None)
        if value is not None:
            conf[name] = value
    return conf


def _migrate() -> None:
    from airflow.utils.db import initdb

    initdb()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def execution_api(timeout: float = 120.0):
    """An Airflow api-server on a free 127.0.0.1 port, for executor-run tasks; stopped on exit."""
    import secrets
    import subprocess
    import time
    import urllib.request

    port = free_port()
    os.environ.setdefault("AIRFLOW__API_AUTH__JWT_SECRET", secrets.token_hex(32))
    os.environ["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = f"http://127.0.0.1:{port}/execution/"
    log_dir = Path(os.environ["AIRFLOW_HOME"]) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "api-server.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "airflow", "api-server", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"Airflow api-server did not start; see {log_dir / 'api-server.log'}") from None
                time.sleep(0.5)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def run_dag(conf: dict, parallel: bool = False, dag_id: str = DAG_ID):
    """Run the DAG once in this process with ``conf``; returns the finished DagRun.

    With ``parallel``, tasks go to the LocalExecutor, which needs an api-server for the
    Task Execution API: one is started on a free loopback port for the duration of the run.
    """
    apply_embedded_env()
    from airflow import settings as af_settings

    af_settings.configure_orm()
    _migrate()
    from bnpipe import warm

    try:
        if parallel:
            with execution_api():
                return _run_dag(conf, parallel, dag_id)
        return _run_dag(conf, parallel, dag_id)
    finally:  # the training tasks' warm trainers (bnpipe.warm) end with this run
        warm.stop_all()


def _run_dag(conf: dict, parallel: bool, dag_id: str = DAG_ID):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    if bag.import_errors:
        raise SystemExit(f"DAG import errors: {bag.import_errors}")
    dag = bag.get_dag(dag_id)
    return dag.test(run_conf=conf, use_executor=parallel)


def summary_for(dag_run_id: str) -> dict | None:
    """The run summary, read back from MLflow by the DAG run's id."""
    from bnpipe.report import load_summary

    return load_summary(dag_id=DAG_ID, dag_run_id=dag_run_id)


def cmd_run(args) -> int:
    try:
        conf = spec.validate(_conf_from_args(args))
    except (spec.ParamError, json.JSONDecodeError) as exc:
        print(f"bnpipe run: {exc}", file=sys.stderr)
        return 2
    from bnpipe.tracking import TrackingError

    dr = run_dag(conf, parallel=args.parallel)
    try:
        summary = summary_for(dr.run_id)
    except TrackingError as exc:
        print(f"bnpipe run: DAG run {dr.run_id} ended {dr.state}; {exc}", file=sys.stderr)
        return 1
    from bnpipe.report import summary_text

    state = str(getattr(dr.state, "value", dr.state))
    if summary and summary.get("table"):
        print(summary_text(summary))
    if args.summary_json and summary:
        Path(args.summary_json).write_text(json.dumps(summary, indent=2, default=str))
    if state != "success":
        reason = (summary or {}).get("failure") or "see the task logs"
        print(f"bnpipe run: DAG run {dr.run_id} ended {state}: {reason}", file=sys.stderr)
        return 1
    return 0


def cmd_score(args) -> int:
    """Score a file once with the champion: the same code as the scoring DAG's task."""
    apply_embedded_env()
    from bnpipe import score
    from bnpipe.data import DataError

    try:
        result = score.score_file(args.dataset, args.input, args.id_column)
    except (score.ScoringError, DataError) as exc:
        print(f"bnpipe score: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


def cmd_report(args) -> int:
    """Rebuild the claims report of a past run from MLflow alone."""
    apply_embedded_env()
    from bnpipe import report
    from bnpipe.tracking import TrackingError

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
    apply_embedded_env()
    from bnpipe import score

    try:
        champ = score.champion(args.dataset)
    except score.NoChampion as exc:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bnpipe", description=__doc__.strip().splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the experiment DAG once, in-process, and print the comparison")
    for name, s in spec.SPEC.items():
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
    run.set_defaults(func=cmd_run)
    from bnpipe.score import PARAMS

    sc = sub.add_parser("score", help="score a csv/parquet file with the champion; writes <stem>.predictions.*")
    sc.add_argument("--dataset", required=True, help=PARAMS["dataset"]["description"])
    sc.add_argument("--input", required=True, metavar="PATH_OR_URL", help=PARAMS["input_path"]["description"])
    sc.add_argument("--id-column", help=PARAMS["id_column"]["description"])
    sc.set_defaults(func=cmd_score)
    serve = sub.add_parser("serve", help="serve the champion over HTTP on 127.0.0.1 with MLflow's model server")
    serve.add_argument("--dataset", required=True, help=PARAMS["dataset"]["description"])
    serve.add_argument("--port", type=int, default=5001, help="port on 127.0.0.1 (default: 5001)")
    serve.set_defaults(func=cmd_serve)
    rep = sub.add_parser("report", help="rebuild the claims report (HTML + Markdown + plots) of a past run from MLflow")
    rep.add_argument("run_id", help="the Airflow DAG run id or the MLflow parent run id")
    rep.add_argument("--out", metavar="DIR", help="output directory (default: ./bnpipe-report-<run id>)")
    rep.add_argument("--log", action="store_true", help="also log the report to the parent run's report/ artifacts")
    rep.set_defaults(func=cmd_report)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
