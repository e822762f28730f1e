"""Instrumentation: gradient norms against hand-computed values, dead units, BN statistics."""

import math

import numpy as np
import pytest

from bnpipe.core import instrument


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(3)
    return rng.standard_normal((6, 3)).astype("float32"), np.array([0, 1, 1, 0, 1, 0])


def _model(layers_spec):
    import keras

    x = inp = keras.Input(shape=(3,))
    for name, units, act in layers_spec:
        x = keras.layers.Dense(units, activation=act, name=name)(x)
    return keras.Model(inp, x)


def test_single_dense_softmax_gradient_norm_matches_numpy(batch):
    X, y = batch
    W = np.array([[0.5, -1.0], [0.25, 0.75], [-0.5, 0.1]], dtype="float32")
    b = np.array([0.1, -0.2], dtype="float32")
    m = _model([("output", 2, "softmax")])
    m.get_layer("output").set_weights([W, b])
    # by hand: mean cross-entropy; d loss / d logits = (p - onehot) / n
    p = _softmax(X.astype("float64") @ W + b)
    d = (p - np.eye(2)[y]) / len(y)
    expected = math.sqrt(np.sum((X.T @ d) ** 2) + np.sum(d.sum(axis=0) ** 2))
    got = instrument.layer_grad_norms(m, X, y)
    assert list(got) == ["output"]
    assert got["output"] == pytest.approx(expected, rel=1e-4)


def test_two_layer_norms_and_ratio_match_backprop_by_hand(batch):
    X, y = batch
    X64 = X.astype("float64")
    W1 = np.array([[1.0, -0.5, 0.2, 0.0], [0.3, 0.8, -1.0, 0.5], [-0.7, 0.1, 0.4, 0.9]], dtype="float32")
    b1 = np.array([0.0, 0.1, -0.1, 0.2], dtype="float32")
    W2 = np.array([[0.2, -0.3], [0.5, 0.5], [-1.0, 0.4], [0.3, 0.3]], dtype="float32")
    b2 = np.zeros(2, dtype="float32")
    m = _model([("dense_0", 4, "linear"), ("output", 2, "softmax")])
    m.get_layer("dense_0").set_weights([W1, b1])
    m.get_layer("output").set_weights([W2, b2])
    h = X64 @ W1 + b1
    d2 = (_softmax(h @ W2 + b2) - np.eye(2)[y]) / len(y)
    d1 = d2 @ W2.T
    n1 = math.sqrt(np.sum((X64.T @ d1) ** 2) + np.sum(d1.sum(axis=0) ** 2))
    n2 = math.sqrt(np.sum((h.T @ d2) ** 2) + np.sum(d2.sum(axis=0) ** 2))
    got = instrument.layer_grad_norms(m, X, y)
    assert list(got) == ["dense_0", "output"]
    assert got["dense_0"] == pytest.approx(n1, rel=1e-4) and got["output"] == pytest.approx(n2, rel=1e-4)
    assert instrument.grad_log10_ratio(got) == pytest.approx(math.log10(n1 / n2), rel=1e-4)


def test_measuring_gradients_leaves_bn_moving_statistics_alone(batch):
    import keras

    X, y = batch
    inp = keras.Input(shape=(3,))
    out = keras.layers.Dense(2, activation="softmax", name="output")(keras.layers.BatchNormalization(name="bn")(inp))
    m = keras.Model(inp, out)
    before = [v.numpy().copy() for v in m.non_trainable_variables]
    instrument.layer_grad_norms(m, X * 100 + 50, y)
    instrument.mode_accuracies(m, X * 100 + 50, y, batch_size=2)
    for b, v in zip(before, m.non_trainable_variables):
        np.testing.assert_array_equal(b, v.numpy())


def test_dead_units_are_the_ones_never_active(batch):
    X, _ = batch
    m = _model([("dense_0", 4, "relu"), ("output", 2, "softmax")])
    W = np.zeros((3, 4), dtype="float32")
    m.get_layer("dense_0").set_weights([W, np.array([-1.0, -0.5, 0.5, 2.0], dtype="float32")])
    assert instrument.dead_unit_fractions(m, X) == {"dense_0": 0.5}
    sig = _model([("dense_0", 4, "sigmoid"), ("output", 2, "softmax")])
    assert instrument.dead_unit_fractions(sig, X) == {}  # not a ReLU-family layer


def test_bn_stats_row_summarises_moving_against_true():
    row = instrument.bn_stats_row([0.0, 0.0], [1.0, 1.0], [3.0, 5.0], [4.0, 16.0])
    assert row["bn_first/true_mean"] == 4.0 and row["bn_first/true_var"] == 10.0
    assert row["bn_first/var_ratio"] == pytest.approx(0.1)
    assert row["bn_first/mean_err_std"] == pytest.approx(math.sqrt((9 + 25) / 2 / 10))


def test_grad_ratio_flags_vanishing_and_undefined():
    assert instrument.grad_log10_ratio({"a": 1e-6, "b": 1.0}) == pytest.approx(-6)
    assert math.isnan(instrument.grad_log10_ratio({"a": float("nan"), "b": 1.0}))
    assert math.isnan(instrument.grad_log10_ratio({"a": 1.0}))


def test_dead_means_no_gradient_passes_whatever_the_activation(batch):
    X, _ = batch
    bias = np.array([-20.0, -1.0, 0.5, 2.0], dtype="float32")  # zero kernel: pre-activation = bias on every row
    W = np.zeros((3, 4), dtype="float32")
    got = {}
    for act in ("relu", "leaky_relu", "elu", "selu"):
        m = _model([("dense_0", 4, act), ("output", 2, "softmax")])
        m.get_layer("dense_0").set_weights([W, bias])
        got[act] = instrument.dead_unit_fractions(m, X)["dense_0"]
    # relu: both negative units; elu/selu: only the one saturated at -20 (exp(-20) < 1e-6); leaky: none
    assert got == {"relu": 0.5, "leaky_relu": 0.0, "elu": 0.25, "selu": 0.25}


def test_rms_gradient_divides_out_the_layer_size():
    norms = {"big": 100.0, "small": 1.0}
    counts = {"big": 10_000, "small": 1}
    per_param = instrument.rms(norms, counts)
    assert per_param == {"big": pytest.approx(1.0), "small": pytest.approx(1.0)}
    assert instrument.grad_log10_ratio(per_param) == pytest.approx(0.0)  # the whole-layer ratio would say 2


def test_recalibration_sets_exact_statistics_layer_by_layer():
    import keras

    from bnpipe.core import model as model_lib
    from bnpipe.core.variants import Variant

    rng = np.random.default_rng(0)
    X = (rng.standard_normal((500, 3)) * [1.0, 100.0, 0.01] + [5.0, -300.0, 0.0]).astype("float32")
    v = Variant(preprocessing="bn_first", hidden=(4,), hidden_bn=True)
    m = model_lib.build_model(v, (3,), 2)
    state = model_lib.bn_state(m)
    assert model_lib.recalibrate_bn(m, X, chunk=128) == 2
    first = m.get_layer("bn_input")
    np.testing.assert_allclose(first.moving_mean.numpy(), X.astype("float64").mean(axis=0), rtol=1e-4)
    np.testing.assert_allclose(first.moving_variance.numpy(), X.astype("float64").var(axis=0), rtol=1e-4)
    # the second BN layer sees the first one's inference-mode output, with its new statistics
    hidden = keras.Model(m.input, m.get_layer("bn_0").input)(X, training=False).numpy()
    np.testing.assert_allclose(m.get_layer("bn_0").moving_mean.numpy(), hidden.mean(axis=0), rtol=1e-3, atol=1e-5)
    model_lib.set_bn_state(m, state)
    np.testing.assert_array_equal(first.moving_mean.numpy(), state[0][0])
