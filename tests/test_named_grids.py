"""The claims report's named grids and the run settings they bring."""

import pytest

from bnpipe.core import model, variants
from bnpipe.operations import params


def test_grid_settings_fill_only_what_the_run_leaves_out():
    p = params.validate({"grid": "textbook"})
    assert (p["dataset"], p["epochs"], p["batch_size"]) == ("fashion_mnist", 10, 32)
    p = params.validate({"grid": "textbook", "epochs": 2, "seeds": 1})
    assert (p["epochs"], p["seeds"], p["dataset"]) == (2, 1, "fashion_mnist")
    assert params.validate({"grid": "tabular-scales", "dataset": "wine"})["dataset"] == "wine"
    assert params.validate({})["epochs"] == 5  # the default grid brings no settings


def test_textbook_is_the_book_model_with_plain_sgd():
    vs = variants.grid("textbook")
    assert {(v.preprocessing, v.hidden_bn) for v in vs} == {
        ("rescale", False), ("rescale_bn_first", True), ("bn_first", True),
    }  # fmt: skip
    assert all(v.hidden == (300, 100) and v.activation == "relu" for v in vs)
    assert {v.learning_rate for v in vs} == {1e-3, 1e-2}  # the book's text, and its notebook's rate
    opt = model.optimizer(vs[0])
    assert vs[0].optimizer == "sgd_plain" and opt.momentum == 0.0
    m = model.build_model(next(v for v in vs if v.preprocessing == "rescale_bn_first"), [28, 28], 10)
    kinds = [type(layer).__name__ for layer in m.layers]
    assert kinds[:4] == ["InputLayer", "Flatten", "Rescaling", "BatchNormalization"]
    assert m.get_layer("rescale").scale == pytest.approx(1 / 255)


def test_tabular_and_deep_sigmoid_grids():
    tab = variants.grid("tabular-scales", seeds=2)
    assert {(v.preprocessing, v.bn_momentum) for v in tab} == {
        ("none", 0.99), ("standard", 0.99), ("minmax", 0.99), ("bn_first", 0.99), ("bn_first", 0.9),
    }  # fmt: skip
    assert len(tab) == 10 and not any(v.hidden_bn for v in tab)
    deep = variants.grid("deep-sigmoid")
    assert all(len(v.hidden) >= 10 and v.activation == "sigmoid" for v in deep)
    assert {(v.hidden_bn, v.initializer) for v in deep} == {
        (False, "glorot_uniform"), (False, "he_normal"), (True, "glorot_uniform"), (True, "he_normal"),
    }  # fmt: skip


def test_config_name_strips_only_the_seed():
    v = variants.Variant(preprocessing="bn_first", seed=3, learning_rate=0.5)
    assert variants.config_name(v.name) == variants.Variant(preprocessing="bn_first", learning_rate=0.5).name


@pytest.mark.parametrize(
    "grid, claim_axes",
    [
        ("init-activation", {"initializer": {"naive_normal", "glorot_uniform", "he_normal"},
                             "activation": {"sigmoid", "relu", "elu"}}),
        ("dying-relu", {"activation": {"relu", "leaky_relu", "elu", "selu"}}),
        ("exploding", {"clipping": {"none", "clipnorm"}, "learning_rate": {0.1, 0.3}}),
        ("overfit", {"hidden_bn": {False, True}}),
    ],
)  # fmt: skip
def test_claim_grids_vary_what_their_claim_needs_with_five_seeds(grid, claim_axes):
    p = params.validate({"grid": grid})
    assert p["seeds"] >= 5
    vs = variants.grid(grid, p["seeds"])
    for axis, levels in claim_axes.items():
        assert {getattr(v, axis) for v in vs} == levels, axis
    assert {v.seed for v in vs} == set(range(p["seeds"]))
