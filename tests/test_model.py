import numpy as np
import pytest

from bnpipe.core import model
from bnpipe.core.variants import Variant


@pytest.fixture(scope="module")
def X():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((64, 5)) * np.array([1e-3, 1, 10, 1e3, 1e4]) + 5).astype("float32")


def _first_layer_output(m, name, X):
    import keras

    sub = keras.Model(m.inputs, m.get_layer(name).output)
    return np.asarray(sub(X, training=False))


def test_standard_scaler_lives_inside_the_model(X):
    from sklearn.preprocessing import StandardScaler

    v = Variant(preprocessing="standard", hidden=(4,))
    m = model.build_model(v, [5], 2, model.scaler_stats(v, X))
    got = _first_layer_output(m, "standard_scaler", X)
    np.testing.assert_allclose(got, StandardScaler().fit_transform(X), rtol=1e-3, atol=1e-3)


def test_minmax_scaler_lives_inside_the_model(X):
    from sklearn.preprocessing import MinMaxScaler

    v = Variant(preprocessing="minmax", hidden=(4,))
    m = model.build_model(v, [5], 2, model.scaler_stats(v, X))
    got = _first_layer_output(m, "minmax_scaler", X)
    np.testing.assert_allclose(got, MinMaxScaler().fit_transform(X), rtol=1e-3, atol=1e-3)


def test_design_notes_model_shape():
    v = Variant(preprocessing="bn_first", hidden_bn=True, hidden=(256, 128))
    m = model.build_model(v, [28, 28], 10)
    kinds = [type(layer).__name__ for layer in m.layers]
    assert kinds == [
        "InputLayer", "Flatten", "BatchNormalization", "Dense", "BatchNormalization",
        "Dense", "BatchNormalization", "Dense",
    ]  # fmt: skip
    assert m.get_layer("bn_input").momentum == 0.99
    assert m.get_layer("dense_0").activation.__name__ == "elu"
    assert type(m.get_layer("dense_0").kernel_initializer).__name__ == "HeNormal"


@pytest.mark.parametrize("clipping", ["clipnorm", "clipvalue", "global_clipnorm"])
def test_clipping_reaches_the_optimizer(clipping):
    opt = model.optimizer(Variant(clipping=clipping, clip_value=0.5))
    assert getattr(opt, clipping) == 0.5


@pytest.mark.parametrize(
    "variant",
    [
        Variant(preprocessing="standard", hidden=(8, 4), seed=3),
        Variant(preprocessing="bn_first", initializer="naive_normal", hidden=(8,), seed=1),
        Variant(preprocessing="minmax", hidden_bn=False, initializer="glorot_uniform", hidden=(6,), seed=2),
    ],
)
def test_initial_weights_are_a_fresh_models(X, variant):
    import keras

    stats = model.scaler_stats(variant, X)
    keras.utils.set_random_seed(variant.seed)
    expected = model.build_model(variant, [5], 2, stats).get_weights()
    other = model.build_model(variant, [5], 2, stats)  # the same graph, drawn from another state
    other.set_weights([w + 1 for w in other.get_weights()])  # and trained
    keras.utils.set_random_seed(variant.seed)
    got = model.initial_weights(other, variant, stats)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(np.asarray(g), e)


def test_a_saved_scaler_model_keeps_its_statistics(X, tmp_path):
    import keras

    v = Variant(preprocessing="standard", hidden=(4,))
    m = model.build_model(v, [5], 2, model.scaler_stats(v, X))
    m.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", compile=False)
    scaled = _first_layer_output(loaded, "standard_scaler", X)
    np.testing.assert_allclose(scaled, _first_layer_output(m, "standard_scaler", X))
    np.testing.assert_allclose(np.asarray(loaded(X)), np.asarray(m(X)), atol=1e-6)


def test_scores_are_what_evaluate_reports(X):
    v = Variant(preprocessing="standard", hidden=(4,))
    m = model.compile_model(model.build_model(v, [5], 3, model.scaler_stats(v, X)), v, 1, False)
    y = np.arange(len(X)) % 3
    loss, acc = m.evaluate(X, y, batch_size=16, verbose=0)
    got = model.scores(m, X, y, chunk=16)
    np.testing.assert_allclose(got, (loss, acc), rtol=1e-6)
