"""
### bnpipe on new data: drop a file into the inbox, get an experiment

Watches `$BNPIPE_HOME/inbox` (or `BNPIPE_INBOX`). Every csv or parquet file that appears there
starts one `bnpipe_experiment` run on it. The label column is `label`, unless a sidecar
`<file>.json` names another; the sidecar may set any experiment Param, for example
`{"label": "churned", "grid": "smoke", "epochs": 3}`.

The DAG runs continuously: a sensor checks the inbox every minute (in reschedule mode, so it
holds no worker slot between checks). A handed-over file is remembered under `inbox/.seen/`;
replacing it with new content makes it new again.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import PokeReturnValue, dag, task

EXPERIMENT_DAG = "bnpipe_experiment"


@dag(
    dag_id="bnpipe_on_new_data",
    schedule="@continuous",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["bnpipe", "ml", "data-aware"],
    doc_md=__doc__,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=20), "execution_timeout": timedelta(minutes=5)},
)
def bnpipe_on_new_data():
    @task.sensor(poke_interval=60, timeout=timedelta(minutes=30), mode="reschedule", soft_fail=True)
    def wait_for_data() -> PokeReturnValue:
        """Done when the inbox holds data files not yet handed to the experiment; XCom: their paths."""
        from bnpipe.operations import inbox

        files = inbox.new_files()
        return PokeReturnValue(is_done=bool(files), xcom_value=files)

    @task(retries=0)
    def plan_runs(files: list[str]) -> list[dict]:
        """One experiment conf per file; a file with an invalid sidecar is set aside with the reason."""
        from bnpipe.operations import inbox

        return inbox.plan(files)

    @task(trigger_rule="none_failed_min_one_success")
    def mark_seen(files: list[str]) -> None:
        """Remember the handed-over files, so the next check does not start them again."""
        from bnpipe.operations import inbox

        inbox.mark_seen(files)

    files = wait_for_data()
    started = TriggerDagRunOperator.partial(
        task_id="start_experiment",
        trigger_dag_id=EXPERIMENT_DAG,
        doc_md="Start one `bnpipe_experiment` run per new file, with the file's conf.",
    ).expand(conf=plan_runs(files))
    started >> mark_seen(files)


bnpipe_on_new_data()
