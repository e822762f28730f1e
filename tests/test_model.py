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
