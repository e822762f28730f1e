"""compare.register() against a real MLflow server behind a fault-injecting proxy.

The MLflow client's own retries are off and its timeout short (8 s: enough on a loaded machine),
so what is tested is bnpipe's handling: a transient fault on any registry or artifact call gives
the same champion as a fault-free run; a fault that persists fails loudly, naming the call, with
the alias unchanged.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
from fault_proxy import Fault, FaultProxy

from bnpipe.mlflow_edge import compare

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

GET_ALIAS = ("GET", "/registered-models/get")
SEARCH = ("GET", "/model-versions/search")
CREATE = ("POST", "/model-versions/create")
DOWNLOAD = ("GET", "/mlflow-artifacts/artifacts/")
SET_ALIAS = ("POST", "/registered-models/alias")
# The client's timeout: with 2 s, a setup call on a machine busy with another test's training timed out.
TIMEOUT = 8
LATE = TIMEOUT + 2  # a delay fault answers after the client gave up


@pytest.fixture(scope="module")
def proxied(mlflow_server):
    """(proxy, client through the proxy); MLflow's own retries off, an 8 s timeout (a delay fault waits longer)."""
    from mlflow.tracking import MlflowClient

    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT=str(TIMEOUT))
    with FaultProxy(mlflow_server) as proxy:
        yield proxy, MlflowClient(tracking_uri=proxy.url, registry_uri=proxy.url)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two tiny Keras models saved as model.keras (class 0 always, class 1 always), a validation and a test split."""
    import keras
    import numpy as np

    d = tmp_path_factory.mktemp("models")
    (d / "snapshot").mkdir()
    rng = np.random.default_rng(0)
    np.save(d / "snapshot" / "X_val.npy", rng.normal(size=(20, 3)).astype("float32"))
    np.save(d / "snapshot" / "y_val.npy", np.array([0] * 12 + [1] * 8))  # class 0 always: accuracy 0.6
    # the test split, which compare's mlflow.models.evaluate scores the registered winner on
    np.save(d / "snapshot" / "X_test.npy", rng.normal(size=(20, 3)).astype("float32"))
    np.save(d / "snapshot" / "y_test.npy", np.array([0] * 10 + [1] * 10))
    out = {"snapshot": str(d / "snapshot")}
    for cls in (0, 1):
        inp = keras.Input((3,))
        bias = keras.initializers.Constant([1.0, 0.0] if cls == 0 else [0.0, 1.0])
        prob = keras.layers.Dense(2, activation="softmax", kernel_initializer="zeros", bias_initializer=bias)(inp)
        (d / f"class{cls}").mkdir()
        out[cls] = d / f"class{cls}" / "model.keras"  # the artifact name training logs
        keras.Model(inp, prob).save(out[cls])
    return out


def _snap(models, dataset, digest):
    """The snapshot as XCom carries it, stored on this host under its digest (its meta.json names it)."""
    folder = Path(models["snapshot"]).with_name(f"snapshot-{digest}")
    if not folder.exists():
        shutil.copytree(models["snapshot"], folder)
        (folder / "meta.json").write_text(json.dumps({"digest": digest}))
    return {
        "dataset": dataset, "digest": digest, "path": str(folder), "input_shape": [3],
        "feature_names": ["a", "b", "c"], "classes": ["0", "1"], "n_train": 60, "n_val": 20, "n_test": 20,
    }  # fmt: skip


def _winner(client, dataset, key, keras_path, value):
    exp = client.get_experiment_by_name("bnpipe") or client.get_experiment(client.create_experiment("bnpipe"))
    run = client.create_run(exp.experiment_id, run_name=key)
    client.log_artifact(run.info.run_id, str(keras_path), "model")
    return {"name": key, "run_id": run.info.run_id, "train_key": f"{dataset}-{key}", "status": "ok",
            "metrics": {"val_accuracy": value}}  # fmt: skip


def _champion_then_challenger(client, models, dataset):
    """v1 (always class 0, val_accuracy 0.6 when re-scored) is champion; returns the challenger's winner dict."""
    champion = _winner(client, dataset, "a", models[0], 0.6)
    first = compare.register(client, [champion], _snap(models, dataset, "d1"), "val_accuracy")
    assert first["alias_moved"] and first["version"] == 1
    return _winner(client, dataset, "b", models[1], 0.9)


def _state(client, name):
    model = client.get_registered_model(name)
    held = model.aliases.get("champion")
    return (str(held) if held is not None else None), len(client.search_model_versions(f"name='{name}'"))


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setattr(compare, "FIRST_WAIT", 0.05)


def test_transient_faults_on_every_call_give_the_fault_free_champion(proxied, models, fast_retries):
    proxy, client = proxied
    challenger = _champion_then_challenger(client, models, "fp-ref")
    reference = compare.register(client, [challenger], _snap(models, "fp-ref", "d2"), "val_accuracy")
    assert reference["alias_moved"] and reference["champion_version"] == 2
    assert "beats champion v1's 0.6000 (re-scored on snapshot d2)" in reference["reason"]

    challenger = _champion_then_challenger(client, models, "fp-flt")
    proxy.hits.clear()
    proxy.faults = [
        Fault(*GET_ALIAS, "status", code=503),
        Fault(*GET_ALIAS, "reset"),
        Fault(*SEARCH, "delay", seconds=LATE),
        Fault(*DOWNLOAD, "status", code=500),
        Fault(*DOWNLOAD, "drop"),
        Fault(*CREATE, "drop"),  # registered, but the answer is lost
        Fault(*SET_ALIAS, "status", code=503),
        Fault(*SET_ALIAS, "delay", seconds=LATE),  # set, but the answer is lost
    ]
    try:
        faulty = compare.register(client, [challenger], _snap(models, "fp-flt", "d2"), "val_accuracy")
    finally:
        unfired = [f for f in proxy.faults if f.times > 0]
        proxy.faults = []
    assert not unfired, f"faults that never fired (the test would prove nothing): {unfired}; hits {proxy.hits}"
    same = ("version", "alias_moved", "champion_version", "reason")
    assert {k: faulty[k] for k in same} == {k: reference[k] for k in same}
    assert _state(client, "bnpipe-fp-flt") == ("2", 2), "the create whose answer was lost must not be repeated"


@pytest.mark.parametrize("call", ["get-alias", "search", "download", "create", "set-alias"])
def test_a_persistent_fault_fails_loudly_with_the_alias_unchanged(proxied, models, fast_retries, call):
    proxy, client = proxied
    dataset = f"fp-out-{call}"
    challenger = _champion_then_challenger(client, models, dataset)
    name = f"bnpipe-{dataset}"
    before = _state(client, name)
    where = {"get-alias": GET_ALIAS, "search": SEARCH, "download": DOWNLOAD, "create": CREATE, "set-alias": SET_ALIAS}
    says = {
        "get-alias": f"could not read alias champion of {name}",
        "search": f"could not search the versions of {name}",
        "download": f"could not read the signature of {name} v1",
        "create": f"could not register run {challenger['run_id']} as a version of {name}",
        "set-alias": f"could not set alias champion of {name} to v2",
    }[call]
    proxy.faults = [Fault(*where[call], "status", times=math.inf, code=503)]
    try:
        with pytest.raises(compare.RegistryUnavailable) as err:
            compare.register(client, [challenger], _snap(models, dataset, "d2"), "val_accuracy")
    finally:
        proxy.faults = []
    assert says in str(err.value) and f"after {compare.ATTEMPTS} attempts" in str(err.value)
    alias, count = _state(client, name)
    assert alias == before[0] == "1", "the alias must not move when the registry did not answer"
    if call == "set-alias":  # the version exists; its alias decision is what the task's retry completes
        assert count == before[1] + 1 and "set to it but not verified" in str(err.value)
        retried = compare.register(client, [challenger], _snap(models, dataset, "d2"), "val_accuracy")
        assert retried["version"] == 2 and retried["champion_version"] == 2 and _state(client, name) == ("2", 2)
    else:
        assert count == before[1] and "nothing registered; alias champion unchanged" in str(err.value)
