import math
import os

import pytest

from bnpipe.mlflow_edge import compare


def _r(name, acc, loss, status="ok"):
    return {"name": name, "run_id": name, "status": status, "metrics": {"val_accuracy": acc, "val_loss": loss}}


def test_rank_best_first_ties_to_lower_val_loss_and_diverged_left_out():
    results = [_r("a", 0.9, 0.5), _r("b", 0.95, 0.4), _r("c", 0.9, 0.3), _r("d", 0.99, float("nan"), "diverged")]
    ranked = compare.rank(results)
    assert [r["name"] for r in ranked] == ["b", "c", "a"]
    rows = compare.table_rows(results, ranked)
    assert [r["variant"] for r in rows] == ["b", "c", "a", "d"]
    assert rows[-1]["rank"] == "-" and rows[-1]["status"] == "diverged"


def test_rank_on_loss_prefers_lower():
    ranked = compare.rank([_r("a", 0.9, 0.5), _r("b", 0.8, 0.2)], metric="val_loss")
    assert ranked[0]["name"] == "b"


def test_unknown_metric_is_refused():
    with pytest.raises(ValueError, match="metric 'f1'"):
        compare.rank([_r("a", 0.9, 0.5)], metric="f1")


def test_register_refuses_when_nothing_is_healthy():
    with pytest.raises(compare.NoHealthyVariant, match="every variant diverged"):
        compare.register(None, [], {"dataset": "x"}, "val_accuracy")


def test_better_respects_direction():
    assert compare.better(0.9, 0.8, "val_accuracy") and not compare.better(0.9, 0.8, "val_loss")


# --- register(): the champion under faults ---------------------------------------------------
# A real MLflow registry (SQLite) behind a client whose chosen calls fail. The model files are
# stand-ins: logging the full model, reading a signature and re-scoring are replaced by fakes, so
# these tests exercise the registry calls and the decision, not Keras.


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('registry') / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return client, client.create_experiment("bnpipe")


def _unavailable(call: str):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

    return MlflowException(f"API request to {call} failed with error code 503 != 200", TEMPORARILY_UNAVAILABLE)


class Faulty:
    """A real ``MlflowClient`` whose calls fail on demand.

    ``fail[m] = n``: the next n calls of method m fail before reaching the store (``math.inf``:
    all of them). ``lose[m] = n``: the next n calls reach the store, then fail as if the answer
    were lost. ``after[m] = f``: f(*args) runs once right after m succeeds (another process).
    """

    def __init__(self, client):
        self._client, self.fail, self.lose, self.after, self.calls = client, {}, {}, {}, {}

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            self.calls[name] = self.calls.get(name, 0) + 1
            if self.fail.get(name, 0) > 0:
                self.fail[name] -= 1
                raise _unavailable(name)
            out = attr(*args, **kwargs)
            if name in self.after:
                self.after.pop(name)(*args)
            if self.lose.get(name, 0) > 0:
                self.lose[name] -= 1
                raise _unavailable(name)
            return out

        return call


class FakeModel:
    def __init__(self, run_id, input_shape=(None, 3)):
        self.run_id, self.input_shape = run_id, input_shape


@pytest.fixture
def fakes(monkeypatch):
    """Compare's model-file edges replaced: ``signatures[(name, version)]``, ``scores[run_id]``.

    Loading a model raises the ``load_errors`` one per call, then ``load_error`` (if set) forever.
    """
    import types

    f = types.SimpleNamespace(signatures={}, scores={}, load_errors=[], load_error=None, loads=0)

    def load(client, run_id):
        f.loads += 1
        if f.load_errors:
            raise f.load_errors.pop(0)
        if f.load_error is not None:
            raise f.load_error
        return FakeModel(run_id)

    monkeypatch.setattr(compare, "FIRST_WAIT", 0.01)
    monkeypatch.setattr(compare, "_log_full_model", lambda c, w, s: f"runs:/{w['run_id']}/registered_model")
    monkeypatch.setattr(
        compare, "_signature_inputs", lambda c, n, v: f.signatures.get((n, str(v)), {"columns": ["a", "b", "c"]})
    )
    monkeypatch.setattr(compare, "_load_keras", load)
    monkeypatch.setattr(compare, "_rescore", lambda model, snapshot, metric: f.scores[model.run_id])
    return f


def _snap(dataset, digest="d1"):
    return {
        "dataset": dataset, "digest": digest, "path": "/nowhere", "input_shape": [3], "feature_names": ["a", "b", "c"],
        "n_train": 60, "n_val": 20, "n_test": 20, "classes": ["0", "1"],
    }  # fmt: skip


def _winner(store, key, value, metric="val_accuracy"):
    client, exp = store
    run = client.create_run(exp, run_name=key)
    return {"name": key, "run_id": run.info.run_id, "train_key": key, "status": "ok", "metrics": {metric: value}}


def _state(client, name):
    """(the version holding champion, number of versions) as the registry has them."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return None, 0
    held = model.aliases.get("champion")
    return (int(held) if held is not None else None), len(client.search_model_versions(f"name='{name}'"))


def test_register_first_champion_then_a_rerun_registers_nothing_new(store, fakes):
    client, _ = store
    w = _winner(store, "first-k", 0.8)
    first = compare.register(client, [w], _snap("first"), "val_accuracy")
    assert first["alias_moved"] and first["reason"] == "no champion yet; version 1 becomes champion"
    again = compare.register(client, [w], _snap("first"), "val_accuracy")
    assert not again["alias_moved"] and again["reason"] == "version 1 already holds champion"
    assert again["champion_version"] == 1 and _state(client, "bnpipe-first") == (1, 1)
    assert (
        "**Alias `champion`**: version 1 already holds champion"
        in client.get_model_version("bnpipe-first", "1").description
    )


def test_better_moves_the_alias_a_tie_and_a_worse_do_not(store, fakes):
    client, _ = store
    compare.register(client, [_winner(store, "tie-1", 0.8)], _snap("tie"), "val_accuracy")
    tie = compare.register(client, [_winner(store, "tie-2", 0.8)], _snap("tie"), "val_accuracy")
    worse = compare.register(client, [_winner(store, "tie-3", 0.7)], _snap("tie"), "val_accuracy")
    better = compare.register(client, [_winner(store, "tie-4", 0.9)], _snap("tie"), "val_accuracy")
    assert not tie["alias_moved"] and "ties with champion v1's 0.8000 (recorded on the same snapshot)" in tie["reason"]
    assert not worse["alias_moved"] and worse["champion_version"] == 1
    assert better["alias_moved"] and better["champion_version"] == 4
    assert _state(client, "bnpipe-tie") == (4, 4)
    assert fakes.loads == 0, "a champion trained on the same snapshot is not re-scored"


def test_champion_is_rescored_on_new_data_and_kept_when_it_is_better(store, fakes):
    client, _ = store
    old = _winner(store, "new-1", 0.9)
    compare.register(client, [old], _snap("new", "d1"), "val_accuracy")
    fakes.scores[old["run_id"]] = 0.95
    out = compare.register(client, [_winner(store, "new-2", 0.93)], _snap("new", "d2"), "val_accuracy")
    assert not out["alias_moved"] and out["reason"] == (
        "val_accuracy 0.9300 does not beat champion v1's 0.9500 (re-scored on snapshot d2)"
    )
    assert _state(client, "bnpipe-new") == (1, 2)


def test_a_champion_whose_inputs_differ_from_the_snapshot_is_replaced(store, fakes):
    client, _ = store
    compare.register(client, [_winner(store, "cols-1", 0.99)], _snap("cols", "d1"), "val_accuracy")
    fakes.signatures[("bnpipe-cols", "1")] = {"columns": ["a", "b", "z"]}
    out = compare.register(client, [_winner(store, "cols-2", 0.5)], _snap("cols", "d2"), "val_accuracy")
    assert out["alias_moved"] and out["reason"] == (
        "champion v1 cannot score this data (it takes columns the snapshot lacks ['z'] and not the snapshot's ['c']); "
        "version 2 replaces it"
    )
    assert fakes.loads == 0, "the mismatch is decided from the signature, without downloading the model"


def test_a_champion_whose_download_keeps_failing_is_not_dethroned(store, fakes, capsys):
    client, _ = store
    compare.register(client, [_winner(store, "dl-1", 0.9)], _snap("dl", "d1"), "val_accuracy")
    fakes.load_error = OSError("Connection reset by peer")
    with pytest.raises(compare.RegistryUnavailable) as err:
        compare.register(client, [_winner(store, "dl-2", 0.5)], _snap("dl", "d2"), "val_accuracy")
    assert "could not download and load bnpipe-dl v1's model" in str(err.value)
    assert "Connection reset by peer" in str(err.value) and "nothing registered; alias champion unchanged" in str(
        err.value
    )
    assert fakes.loads == compare.ATTEMPTS and capsys.readouterr().err.count("retrying in") == compare.ATTEMPTS - 1
    assert _state(client, "bnpipe-dl") == (1, 1)


def test_a_load_that_fails_once_is_retried_and_decides_on_the_score(store, fakes):
    client, _ = store
    old = _winner(store, "dl1-1", 0.9)
    compare.register(client, [old], _snap("dl1", "d1"), "val_accuracy")
    fakes.load_errors, fakes.scores[old["run_id"]] = [ValueError("truncated zip")], 0.6
    out = compare.register(client, [_winner(store, "dl1-2", 0.7)], _snap("dl1", "d2"), "val_accuracy")
    assert out["alias_moved"] and "beats champion v1's 0.6000 (re-scored on snapshot d2)" in out["reason"]
    assert _state(client, "bnpipe-dl1") == (2, 2)


@pytest.mark.parametrize("with_champion", [True, False])
@pytest.mark.parametrize(
    ("method", "says"),
    [
        ("get_registered_model", "could not read alias champion of bnpipe-{d}"),
        ("search_model_versions", "could not search the versions of bnpipe-{d}"),
        ("create_model_version", "could not register run"),
    ],
)
def test_a_registry_that_keeps_failing_fails_loudly_and_changes_nothing(store, fakes, method, says, with_champion):
    client, _ = store
    d = f"out-{method[:6]}-{with_champion}".replace("_", "")
    name = f"bnpipe-{d}"
    if with_champion:
        compare.register(client, [_winner(store, d + "-1", 0.5)], _snap(d), "val_accuracy")
    before = _state(client, name)
    faulty = Faulty(client)
    faulty.fail[method] = math.inf
    with pytest.raises(compare.RegistryUnavailable, match=says.format(d=d)) as err:
        compare.register(faulty, [_winner(store, d + "-2", 0.9)], _snap(d), "val_accuracy")
    assert f"after {compare.ATTEMPTS} attempts" in str(err.value) and "503" in str(err.value)
    assert faulty.calls[method] == compare.ATTEMPTS and "set_registered_model_alias" not in faulty.calls
    assert _state(client, name) == before


def test_transient_faults_everywhere_give_the_fault_free_result(store, fakes, capsys):
    client, _ = store
    old = _winner(store, "tr-1", 0.8)
    compare.register(client, [old], _snap("tr", "d1"), "val_accuracy")
    fakes.scores[old["run_id"]] = 0.8
    faulty = Faulty(client)
    faulty.fail = {"get_registered_model": 2, "search_model_versions": 1, "get_model_version": 1}
    faulty.lose = {"create_model_version": 1, "set_registered_model_alias": 1, "update_model_version": 1}
    out = compare.register(faulty, [_winner(store, "tr-2", 0.85)], _snap("tr", "d2"), "val_accuracy")
    assert out["alias_moved"] and out["version"] == 2 and out["champion_version"] == 2
    assert "beats champion v1's 0.8000 (re-scored on snapshot d2)" in out["reason"]
    assert _state(client, "bnpipe-tr") == (2, 2), "a create whose answer was lost is found again, not repeated"
    assert faulty.calls["create_model_version"] == 1
    assert capsys.readouterr().err.count("retrying in") == 7


def test_a_missing_model_is_created_but_an_outage_is_not_taken_for_one(store, fakes):
    client, _ = store
    faulty = Faulty(client)
    faulty.fail["get_registered_model"] = math.inf
    with pytest.raises(compare.RegistryUnavailable, match="could not read alias champion of bnpipe-gone"):
        compare.register(faulty, [_winner(store, "gone-1", 0.9)], _snap("gone"), "val_accuracy")
    assert "create_registered_model" not in faulty.calls and _state(client, "bnpipe-gone") == (None, 0)


def test_a_set_alias_that_keeps_failing_says_it_was_not_verified(store, fakes):
    client, _ = store
    faulty = Faulty(client)
    faulty.fail["set_registered_model_alias"] = math.inf
    with pytest.raises(compare.RegistryUnavailable) as err:
        compare.register(faulty, [_winner(store, "set-1", 0.9)], _snap("set"), "val_accuracy")
    assert "could not set alias champion of bnpipe-set to v1" in str(err.value)
    assert "bnpipe-set v1 registered; alias champion set to it but not verified" in str(err.value)
    assert _state(client, "bnpipe-set") == (None, 1)
    # the task's retry finds the version by its train_key and completes the decision
    out = compare.register(
        client, [dict(_winner(store, "set-x", 0.9), train_key="set-1")], _snap("set"), "val_accuracy"
    )
    assert out["alias_moved"] and out["version"] == 1 and _state(client, "bnpipe-set") == (1, 1)


@pytest.mark.parametrize(("theirs", "moved", "holder"), [(0.95, False, 2), (0.7, True, 3)])
def test_an_alias_moved_concurrently_is_decided_again(store, fakes, theirs, moved, holder):
    client, _ = store
    d = f"race{int(theirs * 100)}"
    name = f"bnpipe-{d}"
    compare.register(client, [_winner(store, d + "-1", 0.6)], _snap(d), "val_accuracy")
    other = compare.register(client, [_winner(store, d + "-2", theirs)], _snap(d), "val_accuracy")
    client.set_registered_model_alias(name, "champion", "1")  # v2 registered, v1 still champion
    faulty = Faulty(client)
    # right after this process sets the alias, another one moves it to v2
    faulty.after["set_registered_model_alias"] = lambda *a: client.set_registered_model_alias(name, "champion", "2")
    out = compare.register(faulty, [_winner(store, d + "-3", 0.9)], _snap(d), "val_accuracy")
    assert other["version"] == 2 and out["version"] == 3
    assert out["alias_moved"] is moved and out["champion_version"] == holder
    assert "another process moved it to v2" in out["reason"]
    assert _state(client, name) == (holder, 3)
    assert faulty.calls["set_registered_model_alias"] == (2 if moved else 1)


def test_the_experiment_opens_on_its_training_runs_in_the_mlflow_ui(home):
    """MLflow 3's UI shows an experiment without a kind as a GenAI one (traces); bnpipe marks its kind."""
    from bnpipe.mlflow_edge import tracking

    client = tracking.connect()
    exp_id = tracking.ensure_experiment(client)
    assert client.get_experiment(exp_id).tags["mlflow.experimentKind"] == "custom_model_development"
    client.set_experiment_tag(exp_id, "mlflow.experimentKind", "genai_development")  # an older or edited one
    assert tracking.ensure_experiment(client) == exp_id
    assert client.get_experiment(exp_id).tags["mlflow.experimentKind"] == "custom_model_development"


def test_reading_a_signature_leaves_mlflows_global_uris_as_they_were(home, monkeypatch):
    """compare reads signatures through MLflow's global URIs; a later set_tracking_uri must still move the registry."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils

    from bnpipe.mlflow_edge import compare, tracking

    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.setattr(registry_utils, "_registry_uri", None)
    before = mlflow.get_tracking_uri()
    client = tracking.connect()
    client.create_registered_model("m")
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException):  # there is no version 1: the state afterwards is the point
        compare._signature_inputs(client, "m", "1")
    assert registry_utils._registry_uri is None and "MLFLOW_REGISTRY_URI" not in os.environ
    assert mlflow.get_tracking_uri() == before
