"""The DAG files parse without errors, without TensorFlow, and follow the project's policies.

``parsed`` (tests/dag_fixtures.py) is the DAG folder as the dag-processor sees it.
"""

import os


def test_no_import_errors(parsed):
    assert parsed["errors"] == {}
    assert "bnpipe_experiment" in parsed["dags"]


def test_tensorflow_is_not_imported_while_parsing(parsed):
    assert parsed["tf_loaded"] == []


def test_policies(parsed):
    for dag_id, d in parsed["dags"].items():
        assert d["tags"], f"{dag_id} has no tags"
        assert d["catchup"] is False, f"{dag_id} catches up"
        assert d["doc"], f"{dag_id} has no doc_md"
        assert all(r is not None for r in d["retries"])
        assert all(t is not None and t > 0 for t in d["timeouts"]), f"{dag_id}: every task needs an execution_timeout"
        for task_id, t in d["tasks"].items():
            assert t["doc"], f"{dag_id}.{task_id} has no docstring"


def test_experiment_dag_shape(parsed):
    d = parsed["dags"]["bnpipe_experiment"]
    assert d["schedule"] not in ("None", ""), "the experiment DAG must have a schedule"
    assert d["tasks"]["train"]["mapped"]
    assert 1 <= d["tasks"]["train"]["max_tis"] <= (os.cpu_count() or 1)
    assert max(d["retries"]) >= 1
    # registrations are serialized across DAG runs, so two runs finishing at once cannot race on the alias
    assert d["tasks"]["compare"]["max_tis_per_dag"] == 1


def test_every_param_is_typed_and_described(parsed):
    params = parsed["dags"]["bnpipe_experiment"]["params"]
    for name in ("dataset", "grid", "epochs", "batch_size", "seeds", "metric", "data_path", "label"):
        assert params[name].get("type"), name
        assert params[name].get("description"), name
    assert "enum" in params["dataset"] and "minimum" in params["epochs"]


def test_every_dag_has_the_owner_and_its_link(parsed):
    from bnpipe.operations import conventions

    for dag_id, d in parsed["dags"].items():
        assert d["owner"] == conventions.OWNER, f"{dag_id} is owned by {d['owner']!r}"
        link = d["owner_links"].get(conventions.OWNER, "")
        assert link.startswith(("http://", "https://")) and link.endswith("/bnpipe/readme"), f"{dag_id}: {link!r}"


def test_the_trigger_form_groups_the_params_in_sections(parsed):
    from bnpipe.operations.params import SECTIONS

    params = parsed["dags"]["bnpipe_experiment"]["params"]
    sections = {name: p.get("section") for name, p in params.items()}
    assert set(sections.values()) == set(SECTIONS), sections  # every Param in a section, no section empty
    assert [sections[n] for n in ("dataset", "grid", "epochs", "metric")] == list(SECTIONS)


def test_the_dags_are_connected_by_assets(parsed):
    experiment, scoring = parsed["dags"]["bnpipe_experiment"], parsed["dags"]["bnpipe_score"]
    assert experiment["tasks"]["ingest"]["outlets"] == ["AssetAlias:bnpipe-data"]
    assert experiment["tasks"]["compare"]["outlets"] == ["AssetAlias:bnpipe-champion"]
    assert scoring["tasks"]["score"]["outlets"] == ["AssetAlias:bnpipe-predictions"]
    assert scoring["tasks"]["score"]["mapped"], "one scoring task per file"


def test_the_inbox_dag_runs_on_the_inbox_watcher_without_a_sensor(parsed):
    d = parsed["dags"]["bnpipe_on_new_data"]
    assert "watchers=[AssetWatcher(" in d["schedule"]  # scheduled on the inbox asset, which the triggerer watches
    assert "bnpipe.operations.inbox_trigger.InboxTrigger" in d["schedule"]
    assert set(d["tasks"]) == {"claim_files", "start_experiment"}, "no sensor: the triggerer announces new files"
    assert d["tasks"]["start_experiment"]["mapped"], "one experiment per file"
