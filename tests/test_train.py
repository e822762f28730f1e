"""Training (bnpipe.core.train): one compiled model per graph serves every seed and variant of it,
and a seed still gives the run it gave a freshly built model."""

from __future__ import annotations

import numpy as np
import pytest

from bnpipe.core import snapshots, sources, train
from bnpipe.core.variants import Variant

CFG = train.TrainConfig(epochs=2, batch_size=32, threads=1)


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    return snapshots.ingest(sources.IngestRequest(source="wine"), tmp_path_factory.mktemp("snapshots"))


def _run(variant: Variant, snapshot: dict) -> tuple:
    rows: list = []
    model, history, diverged, extra = train.fit(variant, snapshot["path"], CFG, on_metrics=rows.extend)
    measured = {f"{k}@{step}": v for row, step in rows for k, v in row.items() if k != "instrument_seconds"}
    return model, {**history, **extra, **measured, **train.evaluate(model, snapshot["path"])}


def _assert_same(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-7, err_msg=f"{what}: {key}")


# Seeds, a learning rate and the scaler's statistics are values of one graph: a model compiled for
# the first variant trains the others. Clipping is part of the graph: the last one gets its own.
VARIANTS = [
    Variant(preprocessing="standard", hidden=(16,), seed=0),
    Variant(preprocessing="standard", hidden=(16,), seed=1, learning_rate=0.05, initializer="glorot_uniform"),
    Variant(preprocessing="standard", hidden=(16,), seed=2, bn_recalibrate=True),
    Variant(preprocessing="standard", hidden=(16,), seed=1, clipping="clipnorm"),
]


@pytest.fixture(params=["in_memory", "keras_arrays"])
def pipeline(request, monkeypatch):
    """Each of fit's two input pipelines: small splits (all of these) take ``_in_memory``'s, unless the limit is 0."""
    if request.param == "keras_arrays":
        monkeypatch.setattr(train, "IN_MEMORY_MAX_BYTES", 0)
    return request.param


def test_a_reused_compiled_model_trains_each_variant_as_a_fresh_model_does(snapshot, pipeline):
    fresh = {}
    for v in VARIANTS:
        train.forget_compiled_models()
        fresh[v.name] = _run(v, snapshot)[1]

    train.forget_compiled_models()
    models = []
    for v in VARIANTS:
        model, results = _run(v, snapshot)
        _assert_same(fresh[v.name], results, v.name)
        models.append(model)
    assert models[0] is models[1] is models[2], "variants of one graph were not trained by one compiled model"
    assert models[3] is not models[0], "a different clipping must not reuse the unclipped graph"
    train.forget_compiled_models()


def test_the_in_memory_pipeline_shows_every_row_once_per_epoch_reshuffled_and_seeded():
    X = np.arange(40, dtype="float32").reshape(20, 2)
    y = np.arange(20)

    def epochs(seed, n=3):
        ds = train._in_memory(X, y, 6, seed)
        return [np.concatenate([b[1].numpy() for b in ds]) for _ in range(n)]

    first = epochs(seed=7)
    for order in first:
        assert sorted(order.tolist()) == list(range(20)), "an epoch must visit every row exactly once"
    assert not np.array_equal(first[0], first[1]), "the order must change from one epoch to the next"
    assert not np.array_equal(first[0], np.arange(20)), "training batches must be shuffled"
    assert all(np.array_equal(a, b) for a, b in zip(first, epochs(seed=7))), "a seed must give the same orders"
    assert not np.array_equal(first[0], epochs(seed=8)[0]), "another seed, another order"
    rows = np.concatenate([b[0].numpy() for b in train._in_memory(X, y, 6)])
    np.testing.assert_array_equal(rows, X)  # validation: in order, unshuffled


def test_xla_only_for_runs_long_enough_to_pay_for_its_compilation():
    few = train.XLA_MIN_STEPS // 10
    assert not train.uses_xla(train.TrainConfig(epochs=10), few - 1)
    assert train.uses_xla(train.TrainConfig(epochs=10), few)
    assert train.uses_xla(train.TrainConfig(epochs=1, jit_compile=True), 1)
    assert not train.uses_xla(train.TrainConfig(epochs=10, jit_compile=False), train.XLA_MIN_STEPS)
