"""
### bnpipe scoring: batch predictions with the champion

Scores a csv or parquet file with `models:/bnpipe-<dataset>@champion` and writes
`<stem>.predictions.<csv|parquet>` next to it: `row_id`, `predicted_class`, one `proba_<class>`
per class, and the model name and version used. The file holds raw feature values: scaling is a
layer inside the registered model.

The first task pins the version that holds `champion`, so the whole run uses one version even
if the training DAG moves the alias meanwhile. A file whose columns do not match the champion's
signature is refused, naming the missing and extra columns. Each scoring is an MLflow run in the
experiment `bnpipe-scoring` (model version, rows scored, seconds, predicted class distribution).

**On a new champion** (`BNPIPE_SCORE_ON_CHAMPION`, default on): when a training run moves a data
set's champion it emits the asset `bnpipe://models/bnpipe-<dataset>/champion`, and this DAG runs
on it. Such a run scores every file in `$BNPIPE_SCORE_INBOX/<dataset>/` with the version named in
the triggering event. A run triggered by hand (or on `BNPIPE_SCORE_SCHEDULE`) without `input_path`
scores the `dataset`'s folder the same way, with the version holding `champion` then. Every scored
file emits `bnpipe://predictions/bnpipe-<dataset>`.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, get_current_context, task

from bnpipe.base import settings
from bnpipe.mlflow_edge import score as scoring
from bnpipe.operations import assets, conventions
from bnpipe.operations.conventions import fail_fast

DAG_ID = "bnpipe_score"


@dag(
    dag_id=DAG_ID,
    # BNPIPE_SCORE_SCHEDULE and/or a new champion (BNPIPE_SCORE_ON_CHAMPION); neither: by hand only
    schedule=assets.score_schedule(settings.score_schedule(), settings.score_on_champion()),
    **conventions.dag_defaults(__doc__, ["scoring"], retries=2, retry_delay_seconds=20, timeout_minutes=30),
    params={name: Param(**s) for name, s in scoring.PARAMS.items()},
)
def bnpipe_score():
    @task
    def find_champion() -> list[dict]:
        """Pin the version that scores each file: the triggering champion event's, else the alias holder now.

        One job per file: `input_path`, else the data set's score inbox. Without a champion, or with
        nothing to score in a run started by hand, fail without retries.
        """
        ctx = get_current_context()
        p = ctx["params"]
        events = assets.champion_extras(ctx["triggering_asset_events"])
        with fail_fast(scoring.ScoringError):
            return scoring.plan(
                p["dataset"], p["input_path"], p["id_column"], events, required=ctx["dag_run"].run_type == "manual"
            )

    @task(map_index_template="{{ input_name }}", outlets=[assets.alias(assets.PREDICTIONS)])
    def score(job: dict) -> dict:
        """Check one file against the signature, score raw values, write predictions, log to MLflow."""
        from pathlib import Path

        from bnpipe.core.validation import DataError

        ctx = get_current_context()
        ctx["input_name"] = Path(job["input_path"]).name
        tags = {
            "bnpipe.dag_id": ctx["dag"].dag_id,
            "bnpipe.dag_run_id": ctx["run_id"],
            "bnpipe.airflow_link": f"{settings.airflow_base_url()}/dags/{ctx['dag'].dag_id}/runs/{ctx['run_id']}",
        }
        with fail_fast(scoring.ScoringError, DataError):
            result = scoring.score_file(job["dataset"], job["input_path"], job["id_column"], job["version"], tags)
        assets.emit(ctx["outlet_events"], assets.PREDICTIONS, assets.predictions_event(job, result))
        return result

    score.expand(job=find_champion())


bnpipe_score()
