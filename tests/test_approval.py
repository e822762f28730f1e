"""approval=required: compare registers the winner and leaves the alias; a person's answer decides.

The registry part runs against a real MLflow registry (SQLite) with compare's model-file edges
faked (tests/test_compare.py's fixtures); the last test is a real run on the session's stack,
rejected through Airflow's REST API. The approval in the browser is in tests/test_browser.py.
"""

from __future__ import annotations

import pytest
from stack_fixtures import approval_conf, mlflow_rest, parent_and_children, respond, tags_of, wait_for_approval
from test_compare import _snap, _state, _winner, fakes, store  # noqa: F401 - fixtures used by name

from bnpipe.mlflow_edge import compare
from bnpipe.operations.stack import EXPERIMENT_DAG

METRIC = "val_accuracy"
BEATS = "val_accuracy 0.9000 beats champion v1's 0.8000 (recorded on the same snapshot)"


@pytest.fixture
def client(store, fakes, monkeypatch):  # noqa: F811 - the fixtures imported above
    """The registry's client, also what ``promote`` and ``keep`` connect to."""
    monkeypatch.setattr(compare.tracking, "connect", lambda *a, **k: store[0])
    return store[0]


def _pending(store, dataset: str, champion: float, winner: float) -> dict:  # noqa: F811
    """v1 holds champion (metric ``champion``); v2 (``winner``) is registered with approval=required."""
    client = store[0]
    compare.register(client, [_winner(store, f"{dataset}-1", champion)], _snap(dataset), METRIC)
    return compare.register(
        client, [_winner(store, f"{dataset}-2", winner)], _snap(dataset), METRIC, approval="required"
    )


def _parent(store) -> str:  # noqa: F811
    return store[0].create_run(store[1], run_name="parent").info.run_id


def test_required_registers_the_winner_and_leaves_the_alias_to_the_approval(store, client):  # noqa: F811
    out = _pending(store, "appr", 0.8, 0.9)
    assert out["awaiting_approval"] and not out["alias_moved"]
    assert out["reason"] == compare.AWAITING + BEATS
    assert out["champion_version"] == 1 and _state(client, "bnpipe-appr") == (1, 2)
    assert compare.CARD_ALIAS + compare.AWAITING in client.get_model_version("bnpipe-appr", "2").description


def test_required_asks_nobody_when_the_alias_would_not_move(store, client):  # noqa: F811
    out = _pending(store, "noask", 0.8, 0.7)
    assert not out["awaiting_approval"] and not out["alias_moved"] and "does not beat" in out["reason"]
    assert _state(client, "bnpipe-noask") == (1, 2)


def test_an_approved_move_moves_the_alias_once_and_says_who(store, client):  # noqa: F811
    out, parent = _pending(store, "yes", 0.8, 0.9), _parent(store)
    moved = compare.promote(out, _snap("yes"), parent, METRIC, "alice")
    assert moved["alias_moved"] and moved["champion_version"] == 2 and not moved["awaiting_approval"]
    assert _state(client, "bnpipe-yes") == (2, 2)
    tags = client.get_run(parent).data.tags
    assert tags["bnpipe.approval"] == "approved by alice" and tags["bnpipe.alias_moved"] == "true"
    assert tags["bnpipe.alias_reason"] == BEATS + " (approved by alice)"
    card = client.get_model_version("bnpipe-yes", "2").description
    assert compare.CARD_ALIAS + tags["bnpipe.alias_reason"] in card and compare.AWAITING not in card
    again = compare.promote(out, _snap("yes"), parent, METRIC, "alice")  # a retried task
    assert again["alias_moved"] and again["champion_version"] == 2 and _state(client, "bnpipe-yes") == (2, 2)


def test_an_approval_never_replaces_a_better_champion_set_meanwhile(store, client):  # noqa: F811
    out, parent = _pending(store, "race", 0.8, 0.85), _parent(store)
    meanwhile = compare.register(client, [_winner(store, "race-3", 0.95)], _snap("race"), METRIC)  # another run, auto
    assert meanwhile["alias_moved"] and _state(client, "bnpipe-race") == (3, 3)
    kept = compare.promote(out, _snap("race"), parent, METRIC, "alice")
    assert not kept["alias_moved"] and kept["champion_version"] == 3 and _state(client, "bnpipe-race") == (3, 3)
    assert "another process moved it to v3 meanwhile" in kept["reason"] and "does not beat" in kept["reason"]
    assert client.get_run(parent).data.tags["bnpipe.alias_moved"] == "false"


@pytest.mark.parametrize("verdict", ["rejected by bob", "timed out after 24 h"])
def test_a_rejection_or_a_timeout_leaves_the_alias_and_records_why(store, client, verdict):  # noqa: F811
    dataset = verdict.split()[0]
    out, parent = _pending(store, dataset, 0.8, 0.9), _parent(store)
    kept = compare.keep(out, parent, verdict)
    assert not kept["alias_moved"] and _state(client, f"bnpipe-{dataset}") == (1, 2)
    tags = client.get_run(parent).data.tags
    assert tags["bnpipe.approval"] == verdict and tags["bnpipe.alias_moved"] == "false"
    assert tags["bnpipe.alias_reason"].startswith(f"{verdict}; alias champion unchanged (it would have moved: ")
    assert tags["bnpipe.alias_reason"] in client.get_model_version(f"bnpipe-{dataset}", "2").description


def test_the_verdict_names_who_answered_or_the_timeout():
    from bnpipe.operations.approval import approver, verdict

    alice = {"id": "1", "name": "alice"}
    assert verdict({"chosen_options": ["Approve"], "responded_by_user": alice}, 24) == "approved by alice"
    assert verdict({"chosen_options": ["Reject"], "responded_by_user": alice}, 24) == "rejected by alice"
    # on a timeout Airflow answers its default (Reject) itself, with no user
    assert verdict({"chosen_options": ["Reject"], "responded_by_user": None, "timedout": True}, 0.5) == (
        "timed out after 0.5 h"
    )
    assert approver({"chosen_options": ["Approve"], "responded_by_user": alice}) == "alice"


def test_bnpipe_run_refuses_required_approval_it_cannot_ask_for(capsys):
    from bnpipe.operations import cli

    assert cli.main(["run", "--dataset", "wine", "--approval", "required"]) == 2
    assert "approval=required needs a person to answer in the Airflow UI" in capsys.readouterr().err


# ------------------------------------------------------------------- the real stack
@pytest.mark.integration
def test_a_champion_rejected_through_the_rest_api_stays_unmoved_and_the_reason_is_tagged(live_stack):
    conf = approval_conf(live_stack, "rejected_by_rest")
    run_id, answered = live_stack.client.trigger(EXPERIMENT_DAG, conf), None
    try:
        detail = wait_for_approval(live_stack, run_id)
        # what the person reads: the move, the ranked table and the claims' verdicts
        assert detail["subject"] == "Make bnpipe-rejected_by_rest v1 the champion?"
        assert "| rank | variant |" in detail["body"] and "### Claims" in detail["body"]
        assert detail["defaults"] == ["Reject"] and detail["options"] == ["Approve", "Reject"]
        answered = respond(live_stack, run_id, "Reject")
    finally:
        if answered is None:  # a run left waiting would hold the DAG (one run at a time) until its timeout
            respond(live_stack, run_id, "Reject", missing_ok=True)
    assert live_stack.client.wait_for_run(EXPERIMENT_DAG, run_id, timeout=300) == "success"
    states = {t["task_id"]: t["state"] for t in live_stack.client.task_instances(EXPERIMENT_DAG, run_id)}
    assert (states["approve"], states["promote"], states["close_runs"]) == ("success", "skipped", "success")
    model = mlflow_rest(live_stack, "GET", "registered-models/get", name="bnpipe-rejected_by_rest")["registered_model"]
    assert not model.get("aliases"), "the alias moved although the move was rejected"
    parent, _ = parent_and_children(live_stack, run_id)
    tags = tags_of(parent)
    who = answered["responded_by"]["name"]
    assert tags["bnpipe.approval"] == f"rejected by {who}" and tags["bnpipe.alias_moved"] == "false"
    assert tags["bnpipe.alias_reason"].startswith(f"rejected by {who}; alias champion unchanged")
    events = live_stack.client.api("GET", f"/assets/events?source_run_id={run_id}&limit=100")["asset_events"]
    assert not [e for e in events if e["uri"].startswith("bnpipe://models/")], "no champion event without a move"
