"""Verdict logic on synthetic metric tables: holds, does not hold, inconclusive, not tested."""

import math

import pytest

from bnpipe import claims, compare
from bnpipe.claims import FAILS, HOLDS, INCONCLUSIVE, UNTESTED
from bnpipe.variants import Variant


def _runs(config: dict, values: dict[str, list[float]], status: str = "ok") -> list[dict]:
    """One row per seed of one configuration; ``values`` maps a metric to its per-seed values."""
    n = len(next(iter(values.values())))
    rows = []
    for seed in range(n):
        v = Variant(**config, seed=seed)
        row = {k: val for k, val in v.to_dict().items() if k != "name"}
        row.update(hidden=v.hidden, name=v.name, config=Variant(**config).name, run_id=v.name, status=status)
        row.update({m: vals[seed] for m, vals in values.items()})
        rows.append(row)
    return rows


def _by_claim(rows):
    return {v["claim"]: v for v in claims.evaluate(rows)}


STD, BN = {"preprocessing": "standard"}, {"preprocessing": "bn_first"}


def test_4e_holds_when_bn_first_is_no_worse_within_the_interval():
    rows = _runs(STD, {"val_accuracy": [0.95, 0.96, 0.94]}) + _runs(BN, {"val_accuracy": [0.951, 0.962, 0.942]})
    v = _by_claim(rows)["4e"]
    assert v["verdict"] == HOLDS
    assert v["estimate"] == pytest.approx((0.001 + 0.002 + 0.002) / 3, abs=1e-9)
    assert v["lo"] > -claims.ACC_MARGIN and v["n"] == 3
    assert "bn_first (momentum 0.99) minus standard" in v["evidence"]


def test_4e_does_not_hold_when_bn_first_is_clearly_worse():
    # the design notes' breast_cancer measurement: BN-first stuck near the minority-class rate
    rows = _runs(STD, {"val_accuracy": [0.96, 0.95, 0.97]}) + _runs(BN, {"val_accuracy": [0.25, 0.30, 0.37]})
    v = _by_claim(rows)["4e"]
    assert v["verdict"] == FAILS and v["hi"] < -claims.ACC_MARGIN


def test_4e_inconclusive_when_the_interval_straddles_the_margin():
    rows = _runs(STD, {"val_accuracy": [0.90, 0.90, 0.90]}) + _runs(BN, {"val_accuracy": [0.70, 0.95, 0.93]})
    assert _by_claim(rows)["4e"]["verdict"] == INCONCLUSIVE


def test_a_single_seed_never_decides():
    rows = _runs(STD, {"val_accuracy": [0.96]}) + _runs(BN, {"val_accuracy": [0.25]})
    v = _by_claim(rows)["4e"]
    assert v["verdict"] == INCONCLUSIVE and math.isnan(v["lo"])


def test_claims_the_grid_cannot_test_say_so():
    rows = _runs(STD, {"val_accuracy": [0.9, 0.91]})
    verdicts = _by_claim(rows)
    assert set(verdicts) == {"1", "2", "3", "4a", "4b", "4c", "4d", "4e"}
    assert all(v["verdict"] == UNTESTED for v in verdicts.values())


def test_diverged_runs_are_left_out_and_counted():
    rows = _runs(STD, {"val_accuracy": [0.95, 0.96, 0.94]}) + _runs(BN, {"val_accuracy": [0.1, 0.1, 0.1]}, "diverged")
    v = _by_claim(rows)["4e"]
    assert v["verdict"] == UNTESTED  # no healthy pair is left to compare


def test_clipping_and_bn_contrasts():
    base = {"preprocessing": "standard", "hidden_bn": False}
    rows = (
        _runs({**base, "clipping": "none"}, {"val_accuracy": [0.80, 0.82, 0.81], "val_accuracy_epoch1": [0.5] * 3})
        + _runs({**base, "clipping": "clipnorm"}, {"val_accuracy": [0.80, 0.821, 0.811]})
        + _runs({**base, "hidden_bn": True}, {"val_accuracy": [0.8] * 3, "val_accuracy_epoch1": [0.70, 0.72, 0.71]})
    )
    verdicts = _by_claim(rows)
    assert verdicts["3"]["verdict"] == FAILS  # any gain from clipping is below the margin
    assert verdicts["4b"]["verdict"] == HOLDS and verdicts["4b"]["estimate"] == pytest.approx(0.21)


def test_dying_relu_and_mode_gap():
    rows = _runs({"activation": "relu"}, {"dead_fraction": [0.30, 0.35, 0.32], "mode_gap_accuracy": [0.5, 0.6, 0.55]})
    rows += _runs({"activation": "elu"}, {"dead_fraction": [0.05, 0.04, 0.06], "mode_gap_accuracy": [0.0, 0.01, 0.0]})
    verdicts = _by_claim(rows)
    assert verdicts["2"]["verdict"] == HOLDS
    assert verdicts["4c"]["verdict"] == FAILS  # the relu config's inference-mode model is far worse


def test_t_interval_matches_scipy():
    from scipy import stats

    ci = claims.t_interval([1.0, 2.0, 4.0])
    lo, hi = stats.t.interval(0.95, 2, loc=7 / 3, scale=stats.sem([1.0, 2.0, 4.0]))
    assert (ci["lo"], ci["hi"]) == (pytest.approx(lo), pytest.approx(hi))


def test_ranking_uses_the_mean_over_seeds_not_the_luckiest_seed():
    rows = _runs(STD, {"val_accuracy": [0.99, 0.50, 0.50]}) + _runs(BN, {"val_accuracy": [0.80, 0.81, 0.79]})
    assert claims.rank_configs(rows)[0]["config"] == Variant(**BN).name
    results = [{"name": r["name"], "status": "ok", "metrics": {"val_accuracy": r["val_accuracy"]}} for r in rows]
    ranked = compare.rank(results)
    assert ranked[0]["name"].startswith("bn_first") and ranked[0]["metrics"]["val_accuracy"] == 0.81


def test_main_effects_and_learning_speed():
    rows = _runs(STD, {"val_accuracy": [0.9, 0.92]}) + _runs(BN, {"val_accuracy": [0.5, 0.52]})
    effects = {e["level"]: e for e in claims.main_effects(rows)}
    assert effects["standard"]["mean"] == pytest.approx(0.91) and effects["bn_first"]["runs"] == 2
    assert claims.epochs_to_target([0.5, 0.8, 0.91, 0.95], 0.9) == 3
    assert claims.epochs_to_target([0.5, 0.6], 0.9) is None


def test_bn_speed_counts_epochs_to_target_and_a_model_that_never_learned_cannot_overfit():
    no_bn = {"preprocessing": "standard", "hidden_bn": False}
    learns = {"val_accuracy_epoch1": [0.11, 0.10, 0.12], "epochs_to_target": [6, 7, 8], "gen_gap_accuracy": [0.05] * 3}
    stuck = {"val_accuracy_epoch1": [0.10, 0.11, 0.11], "epochs_to_target": [None] * 3, "gen_gap_accuracy": [0.0] * 3}
    rows = _runs({**no_bn, "hidden_bn": True}, learns) + _runs(no_bn, stuck)
    for r in rows:
        r["epochs_run"] = 20
    verdicts = _by_claim(rows)
    assert verdicts["4b"]["verdict"] == HOLDS  # same epoch-1 accuracy, but only BN reaches the target
    assert verdicts["4b"]["estimate"] == pytest.approx(21 - 7)
    assert verdicts["4a"]["verdict"] == INCONCLUSIVE  # not "does not hold" because the stuck model has no gap
