"""What every bnpipe DAG shares: its owner, the owner's link, its start and retry defaults, and how a task fails fast.

Each DAG file is parsed on its own, so what they share lives here rather than in ``dags/``.
Importing this module imports no Airflow; ``fail_fast`` imports ``airflow.sdk`` when a task uses it.
"""

from __future__ import annotations

from contextlib import contextmanager
from datetime import datetime, timedelta

from bnpipe.base import settings

OWNER = "bnpipe"


def owner_links() -> dict[str, str]:
    """The DAGs' ``owner_links``: the owner's name in the UI opens the project's README.

    Airflow accepts an http(s) or mailto link only, so it is the README as the bnpipe plugin
    serves it inside the Airflow UI (``/bnpipe/readme``).
    """
    return {OWNER: f"{settings.airflow_base_url()}/bnpipe/readme"}


def dag_defaults(doc: str, tags: list[str], retries: int, retry_delay_seconds: float, timeout_minutes: float,
                 backoff: bool = False) -> dict:  # fmt: skip
    """The ``@dag`` arguments every bnpipe DAG sets alike: a fixed start without catch-up, the
    ``bnpipe`` tag, the doc, the owner and its link, and the task defaults (retries and their delay,
    exponential ``backoff`` if asked, an execution timeout)."""
    retrying = {"retries": retries, "retry_delay": timedelta(seconds=retry_delay_seconds)}
    return {
        "start_date": datetime(2026, 1, 1),
        "catchup": False,
        "tags": ["bnpipe", "ml", *tags],
        "doc_md": doc,
        "owner_links": owner_links(),
        "default_args": {
            "owner": OWNER, **retrying, **({"retry_exponential_backoff": True} if backoff else {}),
            "execution_timeout": timedelta(minutes=timeout_minutes),
        },
    }  # fmt: skip


@contextmanager
def fail_fast(*errors: type[BaseException], before=None):
    """Turn ``errors`` raised inside the block into ``AirflowFailException``: a failure without retries.

    For input that no retry can fix; the message is the error's own. ``before(exc)``, if given, runs
    first, e.g. to record the failure elsewhere.
    """
    try:
        yield
    except errors as exc:
        from airflow.sdk.exceptions import AirflowFailException

        if before is not None:
            before(exc)
        raise AirflowFailException(str(exc)) from exc
