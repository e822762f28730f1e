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
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, get_current_context, task

from bnpipe.base import settings
from bnpipe.mlflow_edge import score as scoring

DAG_ID = "bnpipe_score"


@dag(
    dag_id=DAG_ID,
    schedule=settings.score_schedule(),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["bnpipe", "ml", "scoring"],
    doc_md=__doc__,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=20), "execution_timeout": timedelta(minutes=30)},
    params={name: Param(**s) for name, s in scoring.PARAMS.items()},
)
def bnpipe_score():
    @task
    def find_champion() -> dict:
        """Pin the version holding `champion`; with none yet, fail without retries: train first."""
        from airflow.sdk.exceptions import AirflowFailException

        try:
            return scoring.champion(get_current_context()["params"]["dataset"])
        except scoring.NoChampion as exc:
            raise AirflowFailException(str(exc)) from exc

    @task
    def score(champion: dict) -> dict:
        """Check the file against the signature, score raw values, write predictions, log to MLflow."""
        from airflow.sdk.exceptions import AirflowFailException

        from bnpipe.core.data import DataError

        ctx = get_current_context()
        p = ctx["params"]
        tags = {
            "bnpipe.dag_id": ctx["dag"].dag_id,
            "bnpipe.dag_run_id": ctx["run_id"],
            "bnpipe.airflow_link": f"{settings.airflow_base_url()}/dags/{ctx['dag'].dag_id}/runs/{ctx['run_id']}",
        }
        try:
            return scoring.score_file(p["dataset"], p["input_path"], p["id_column"], champion["version"], tags)
        except (scoring.ScoringError, DataError) as exc:
            raise AirflowFailException(str(exc)) from exc

    score(find_champion())


bnpipe_score()
