"""The ``bnpipe`` command.

``bnpipe run`` runs the experiment DAG through Airflow in this process (``dag.test()``) on the
embedded default: a project-local Airflow home on SQLite and a local MLflow store. With
``--parallel`` it hands the mapped training tasks to Airflow's LocalExecutor instead, so they
run side by side in separate processes.
"""

from __future__ import annotations

import argparse
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


def run_dag(conf: dict, parallel: bool = False):
    """Run the DAG once in this process with ``conf``; returns the finished DagRun."""
    apply_embedded_env()
    from airflow import settings as af_settings

    af_settings.configure_orm()
    _migrate()
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    if bag.import_errors:
        raise SystemExit(f"DAG import errors: {bag.import_errors}")
    dag = bag.get_dag(DAG_ID)
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
    dr = run_dag(conf, parallel=args.parallel)
    summary = summary_for(dr.run_id)
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
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
