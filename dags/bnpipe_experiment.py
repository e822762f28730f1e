"""
### bnpipe experiment: does BatchNormalization-first replace standardization on *your* data?

One run ingests a data set, trains a grid of model variants in parallel (standardized inputs
vs. raw inputs with BatchNormalization as the first layer, initializers, activations, gradient
clipping), logs every variant to MLflow as a nested run, then ranks them and registers the
winner as `bnpipe-<dataset>`. The alias `champion` moves only when the winner beats the
current champion on the same data. With the Param `approval` set to `required`, it moves only once
a person approves it: the task `approve` waits for an answer under Required Actions.

Set the trigger form's fields to choose the data set, the grid and the schedule of training.
Results: the MLflow UI, experiment `bnpipe`, one parent run per DAG run.

Assets: `ingest` emits `bnpipe://data/<dataset>` (digest in the event's extra); `compare` (or
`promote`, after an approval) emits `bnpipe://models/bnpipe-<dataset>/champion` (model name and
version) when the alias moved, which starts `bnpipe_score` on the new champion.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag, get_current_context, task

from bnpipe.base import settings
from bnpipe.operations import assets, conventions, params
from bnpipe.operations.approval import ChampionApproval, approver
from bnpipe.operations.conventions import fail_fast

DAG_ID = "bnpipe_experiment"


def _airflow_link() -> str:
    ctx = get_current_context()
    return f"{settings.airflow_base_url()}/dags/{ctx['dag'].dag_id}/runs/{ctx['run_id']}"


@dag(
    dag_id=DAG_ID,
    schedule=settings.schedule(),  # BNPIPE_SCHEDULE; empty: manual and data-triggered only
    max_active_runs=1,
    **conventions.dag_defaults(
        __doc__, ["experiment"], settings.task_retries(), settings.retry_delay_seconds(), 30, backoff=True
    ),
    params={name: Param(**s) for name, s in params.SPEC.items()},
)
def bnpipe_experiment():
    @task(retries=0)
    def validate_params() -> dict:
        """Check every Param before any data is read; a bad value fails fast, without retries."""
        with fail_fast(ValueError):
            return params.validate(dict(get_current_context()["params"]))

    @task
    def start_tracking(p: dict) -> dict:
        """Create the MLflow experiment and this DAG run's parent run, once, before the fan-out."""
        from bnpipe.mlflow_edge import tracking

        ctx = get_current_context()
        return tracking.start_dag_run(p, ctx["dag"].dag_id, ctx["run_id"], _airflow_link())

    @task(outlets=[assets.alias(assets.DATA)])
    def ingest(p: dict, run: dict) -> dict:
        """Read, validate, split and store the data set once per content digest, and publish it to MLflow's
        artifact store (once per digest) for workers without it. XCom: paths, digest and the store's URI.

        Emits the data set's asset, bnpipe://data/<dataset>, with the snapshot's digest.
        """
        from bnpipe.core import snapshots
        from bnpipe.core.validation import DataError
        from bnpipe.mlflow_edge import snapshot_store, tracking

        def rejected(exc):
            tracking.fail_parent(run["parent_run_id"], f"ingest rejected the data: {exc}")

        with fail_fast(DataError, before=rejected):
            snapshot = snapshots.ingest(params.ingest_request(p))
        snapshot = snapshot_store.publish(snapshot)  # once per digest: workers fetch it from MLflow
        tracking.record_snapshot(run["parent_run_id"], snapshot)
        assets.emit(get_current_context()["outlet_events"], assets.DATA, assets.data_event(snapshot))
        return snapshot

    @task(retries=0)
    def plan(p: dict) -> list[dict]:
        """Expand the chosen grid into one variant dict per mapped training task."""
        return params.variant_dicts(p)

    @task(
        map_index_template="{{ variant_name }}",
        max_active_tis_per_dagrun=settings.train_concurrency(),
        queue=settings.train_queue(),
        execution_timeout=timedelta(seconds=settings.train_timeout_seconds()),
    )
    def train(variant: dict, snapshot: dict, run: dict, p: dict) -> dict:
        """Train one variant in its own nested MLflow run, in a warm trainer (bnpipe.operations.warm) when one is free.

        TensorFlow is never imported at parse time: here only, or in the trainer process.
        """
        from bnpipe.operations.warm import train_variant

        ctx = get_current_context()
        ctx["variant_name"] = variant["name"]
        ti = ctx["ti"]
        return train_variant(
            snapshot, variant, params.train_config(p), run["experiment_id"], run["parent_run_id"],
            ti.map_index, ti.try_number,
        )  # fmt: skip

    # one registration at a time in this deployment (others: compare re-reads)
    @task(max_active_tis_per_dag=1, outlets=[assets.alias(assets.CHAMPION)])
    def compare(results: list[dict], snapshot: dict, run: dict, p: dict) -> dict:
        """Rank the variants, log the table, register the winner and move `champion` if it is better.

        Then log the claims report (verdict per claim, plots) to the parent run's `report/` artifacts.
        When the alias moved, emits bnpipe://models/bnpipe-<dataset>/champion with the version.
        With approval=required the move waits for `approve`; XCom `approval` holds the request.
        """
        from bnpipe.mlflow_edge.compare import NoHealthyVariant, conclude
        from bnpipe.reporting import report, summaries

        with fail_fast(NoHealthyVariant):
            summary = conclude(
                list(results), snapshot, run["parent_run_id"], p["metric"], _airflow_link(), p["approval"]
            )
        published = report.publish_claims_report(run["parent_run_id"])
        verdicts = report.verdict_text(published.get("verdicts", []))
        print(summaries.text(summary))
        print(verdicts)
        request = summaries.approval_request(summary, verdicts, p["approval_timeout_hours"])
        out = {**summary.to_dict(), "report": published, "approval": request}
        event = assets.champion_event(snapshot, out["champion"])
        assets.emit(get_current_context()["outlet_events"], assets.CHAMPION, event)
        return out

    @task(outlets=[assets.alias(assets.CHAMPION)])
    def promote(out: dict, response: dict, snapshot: dict, run: dict, p: dict) -> dict:
        """Move `champion` to the version a person approved, checking the holder again first (approval=required).

        Emits bnpipe://models/bnpipe-<dataset>/champion when the alias moved. Skipped on Reject, on a
        timeout, and when nothing awaited approval.
        """
        from bnpipe.mlflow_edge import compare

        champion = compare.promote(out["champion"], snapshot, run["parent_run_id"], p["metric"], approver(response))
        event = assets.champion_event(snapshot, champion)
        assets.emit(get_current_context()["outlet_events"], assets.CHAMPION, event)
        return champion

    @task
    def close_runs(run: dict) -> dict:
        """Teardown: runs left RUNNING by killed or timed-out attempts end as KILLED; an unfinished parent as FAILED."""
        from bnpipe.mlflow_edge import tracking

        return tracking.close_dag_run(run["parent_run_id"])

    p = validate_params()
    run = start_tracking(p)
    snapshot = ingest(p, run)
    results = train.partial(snapshot=snapshot, run=run, p=p).expand(variant=plan(p))
    out = compare(results, snapshot, run, p)
    approve = ChampionApproval(task_id="approve")
    out >> approve
    promote(out, approve.output, snapshot, run, p) >> close_runs(run).as_teardown(setups=run)


bnpipe_experiment()
