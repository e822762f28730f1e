"""What every bnpipe DAG shares: its owner, the owner's link, and how a task fails fast.

Each DAG file is parsed on its own, so what they share lives here rather than in ``dags/``.
Importing this module imports no Airflow; ``fail_fast`` imports ``airflow.sdk`` when a task uses it.
"""

from __future__ import annotations

from contextlib import contextmanager

from bnpipe.base import settings

OWNER = "bnpipe"


def owner_links() -> dict[str, str]:
    """The DAGs' ``owner_links``: the owner's name in the UI opens the project's README.

    Airflow accepts an http(s) or mailto link only, so it is the README as the bnpipe plugin
    serves it inside the Airflow UI (``/bnpipe/readme``).
    """
    return {OWNER: f"{settings.airflow_base_url()}/bnpipe/readme"}


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
