"""Approval: a person approves a new champion before the alias moves (Param ``approval``).

With ``approval=required`` compare registers the winner but, when the alias would move, leaves it
where it is (``compare.register``). The experiment DAG's ``approve`` task, a ``ChampionApproval``
(Airflow's ``ApprovalOperator``), then asks: it shows the move, the ranked table and the claims'
verdicts, and waits in the task state ``awaiting_input`` until someone answers, in the Airflow UI
(Required Actions, or the task instance's Required Action tab) or through the REST API
(``PATCH /api/v2/dags/<dag>/dagRuns/<run>/taskInstances/approve/-1/hitlDetails``,
``{"chosen_options": ["Approve"]}``):

- Approve: the next task, ``promote``, moves the alias (``compare.promote``: the holder read again
  before the alias is set and read back after).
- Reject, or no answer within ``approval_timeout_hours`` (Reject is the default Airflow takes then):
  ``promote`` is skipped and the alias stays; the parent run's tags ``bnpipe.approval`` and
  ``bnpipe.alias_reason`` say who rejected it or that the request timed out (``compare.keep``).

With ``approval=auto``, or when the alias would not move anyway, the task skips itself, and
``promote`` with it: nothing waits. Importing this module imports Airflow's HITL operators (the
DAG file has loaded Airflow already); MLflow only when an answer is recorded.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.providers.standard.operators.hitl import ApprovalOperator

from bnpipe.operations import params

COMPARE = "compare"  # the task whose return value holds the champion outcome and the approval request
TIMEOUT = "approval_timeout_hours"


def verdict(response: dict, timeout_hours: float) -> str:
    """The answer as the parent run's tag ``bnpipe.approval`` records it: "approved by <user>",
    "rejected by <user>" or "timed out after <hours> h".

    ``response``: the HITL answer (``chosen_options``, ``responded_by_user``, and ``timedout``
    when Airflow took the default because nobody answered in time; then no user answered).
    """
    user = response.get("responded_by_user")
    if response.get("timedout") or not user:
        return f"timed out after {timeout_hours:g} h"
    who = user.get("name") or user.get("id")
    said = "approved" if list(response.get("chosen_options") or []) == [ApprovalOperator.APPROVE] else "rejected"
    return f"{said} by {who}"


def approver(response: dict) -> str:
    """Who approved: the user's name in the HITL answer (``ChampionApproval``'s return value)."""
    user = response.get("responded_by_user") or {}
    return user.get("name") or user.get("id") or "?"


class ChampionApproval(ApprovalOperator):
    """Ask a person to approve moving `champion` to this run's winner (Param approval=required).

    Shows the move, the ranked comparison and the claims' verdicts; Approve runs `promote`, Reject or
    no answer within `approval_timeout_hours` skips it and records why on the parent MLflow run.
    Skips itself when nothing awaits approval (approval=auto, or the alias would not move).
    """

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("doc_md", self.__doc__)
        super().__init__(
            subject="Approve the new champion?",  # the request's own subject is set when it is made
            defaults=self.REJECT,  # what Airflow answers when the time is up
            response_timeout=timedelta(hours=params.SPEC[TIMEOUT]["default"]),  # the run's Param, at run time
            retries=0,  # a retry would ask again
            **kwargs,
        )

    def execute(self, context):
        outcome = context["ti"].xcom_pull(task_ids=COMPARE) or {}
        request = outcome.get("approval")
        if not request:
            from airflow.sdk.exceptions import AirflowSkipException

            champ = outcome.get("champion") or {}
            raise AirflowSkipException(f"nothing awaits approval: {champ.get('reason') or 'no champion outcome'}")
        self.subject, self.body = request["subject"], request["body"]
        self.response_timeout = timedelta(hours=context["params"][TIMEOUT])
        return super().execute(context)

    def execute_complete(self, context, event):
        # Recorded before the operator acts on it: on Reject it skips `promote` by raising, so nothing after runs.
        if "error" not in event:  # an error event fails the task in the operator (a timeout has a default here)
            said = verdict(event, context["params"][TIMEOUT])
            self.log.info("The champion's move was %s", said)
            if list(event["chosen_options"]) != [self.APPROVE]:
                from bnpipe.mlflow_edge import compare

                outcome = context["ti"].xcom_pull(task_ids=COMPARE)
                compare.keep(outcome["champion"], outcome["parent_run_id"], said)
        return super().execute_complete(context, event)
