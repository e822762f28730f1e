"""
### bnpipe on new data: drop a file into the inbox, get an experiment

Every csv or parquet file that appears in `$BNPIPE_INBOX` (default `$BNPIPE_HOME/inbox`) starts one
`bnpipe_experiment` run on it. The label column is `label`, unless a sidecar `<file>.json` names
another; the sidecar may set any experiment Param, for example
`{"label": "churned", "grid": "smoke", "epochs": 3}`.

Event-driven, no sensor: the asset `bnpipe://inbox` has a watcher, `InboxTrigger`
(`bnpipe/operations/inbox_trigger.py`), that Airflow's triggerer runs while this DAG is unpaused.
It scans the folder every second; a file unchanged for 2 s is an asset event, and the event starts
a run of this DAG (run type `asset_triggered`). The run claims its files, writing a marker
`.seen/<name>@<digest>` each, and starts one experiment per file, with the run id
`inbox__<name>__<digest>__<time>`. The same content is started once; new content under the same
name, or a changed sidecar, is new. Nothing is deleted.
"""

from __future__ import annotations

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import dag, get_current_context, task

from bnpipe.base import settings
from bnpipe.operations import assets, conventions

EXPERIMENT_DAG = "bnpipe_experiment"


@dag(
    dag_id="bnpipe_on_new_data",
    schedule=[assets.inbox(settings.inbox_dir())],
    max_active_runs=1,
    **conventions.dag_defaults(__doc__, ["data-aware"], retries=2, retry_delay_seconds=20, timeout_minutes=5),
)
def bnpipe_on_new_data():
    @task
    def claim_files() -> list[dict]:
        """Claim the files this run's inbox events announced: one experiment start per new file.

        XCom: `{trigger_run_id, conf}` per file. Safe to retry: a file this run claimed gives the same start again.
        """
        from bnpipe.operations import inbox

        ctx = get_current_context()
        return inbox.claim(assets.inbox_announcements(ctx["triggering_asset_events"]), ctx["run_id"])

    TriggerDagRunOperator.partial(
        task_id="start_experiment",
        trigger_dag_id=EXPERIMENT_DAG,
        logical_date=None,
        skip_when_already_exists=True,
        doc_md="Start one `bnpipe_experiment` run per claimed file, with the file's conf and run id.",
    ).expand_kwargs(claim_files())


bnpipe_on_new_data()
