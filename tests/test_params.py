import pytest

from bnpipe.operations import params


def test_defaults_validate():
    p = params.validate({})
    assert p["dataset"] == "fashion_mnist" and p["grid"] == "default"


@pytest.mark.parametrize(
    "conf, needle",
    [
        ({"epochs": 0}, "epochs"),
        ({"dataset": "mnist"}, "dataset"),
        ({"metric": "f1"}, "metric"),
        ({"batch_size": "big"}, "batch_size"),
        ({"grid": "custom"}, "needs axes"),
        ({"nonsense": 1}, "unknown parameters"),
    ],
)
def test_bad_values_get_a_readable_error(conf, needle):
    with pytest.raises(params.ParamError, match=needle):
        params.validate(conf)


def test_every_param_has_a_description_and_type():
    for name, s in params.SPEC.items():
        assert s.get("description"), name
        assert s.get("type"), name


def test_param_overrides_reach_variants_and_config():
    p = params.validate({"grid": "smoke", "hidden": [8], "learning_rate": 0.05, "epochs": 2, "batch_size": 16})
    vs = params.variant_dicts(p)
    assert len(vs) == 4 and all(v["hidden"] == [8] and v["learning_rate"] == 0.05 for v in vs)
    cfg = params.train_config(p)
    assert (cfg.epochs, cfg.batch_size) == (2, 16)


def test_every_param_is_in_one_of_the_sections():
    sections = {name: s.get("section") for name, s in params.SPEC.items()}
    assert set(sections.values()) == set(params.SECTIONS), sections
    # the form's sections come in SECTIONS' order, as docs/params.md lists them
    assert list(dict.fromkeys(sections.values())) == list(params.SECTIONS)
