import pytest

from bnpipe.core import variants
from bnpipe.core.variants import Variant, VariantError


def test_name_is_readable_and_matches_issue_example():
    v = Variant(preprocessing="bn_first", initializer="he_normal", activation="elu", clipping="clipnorm")
    assert v.name == "bn_first-he_normal-elu-clipnorm1"


def test_round_trip_through_dict_keeps_every_field():
    v = Variant(preprocessing="minmax", hidden_bn=False, bn_momentum=0.9, seed=3, hidden=(8, 4), clipping="clipvalue")
    assert Variant.from_dict(v.to_dict()) == v


@pytest.mark.parametrize("grid, count", [("smoke", 4), ("default", 8), ("full", 4 * 2 * 3 * 4 * 4)])
def test_named_grids_expand_to_unique_variants(grid, count):
    vs = variants.grid(grid)
    assert len(vs) == count
    assert len({v.name for v in vs}) == count


def test_default_grid_asks_the_seed_question():
    vs = variants.grid("default")
    assert {v.preprocessing for v in vs} == {"standard", "bn_first"}
    assert {v.clipping for v in vs} == {"none", "clipnorm"}
    assert all(v.hidden == (256, 128) and v.hidden_bn for v in vs)


def test_seeds_multiply_variants():
    vs = variants.grid("smoke", seeds=3)
    assert len(vs) == 12
    assert {v.seed for v in vs} == {0, 1, 2}


def test_custom_grid_from_axes_and_base():
    vs = variants.grid("custom", axes={"bn_momentum": [0.99, 0.9]}, base={"preprocessing": "bn_first"})
    assert [v.name for v in vs] == ["bn_first-he_normal-elu-noclip", "bn_first-he_normal-elu-noclip-m0.9"]


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"preprocessing": "zscore"}, "preprocessing"),
        ({"activation": "tanhh"}, "activation"),
        ({"hidden": ()}, "hidden"),
    ],
)
def test_bad_fields_are_named(bad, field):
    with pytest.raises(VariantError, match=field):
        Variant.from_dict(bad)


def test_unknown_grid_and_empty_custom_are_refused():
    with pytest.raises(VariantError, match="unknown grid"):
        variants.grid("huge")
    with pytest.raises(VariantError, match="needs axes"):
        variants.grid("custom")
