"""The claims engine on run tables whose truth is known: replicates, pairing, margins, Holm, no variance."""

import math
import random

import pytest

from bnpipe.core import claims
from bnpipe.core.claims import FAILS, HOLDS, INCONCLUSIVE, UNTESTED
from bnpipe.core.variants import Variant
from bnpipe.mlflow_edge import compare


def _runs(config: dict, values: dict[str, list], status: str = "ok", n_val: int = 1000) -> list[dict]:
    """One row per seed of one configuration; ``values`` maps a metric to its per-seed values."""
    n = len(next(iter(values.values())))
    rows = []
    for seed in range(n):
        v = Variant(**config, seed=seed)
        row = {k: val for k, val in v.to_dict().items() if k != "name"}
        row.update(hidden=v.hidden, name=v.name, config=Variant(**config).name, run_id=v.name, status=status)
        row.update(n_val=n_val, n_classes=2)
        row.update({m: vals[seed] for m, vals in values.items()})
        rows.append(row)
    return rows


def _noisy(mean: float, sd: float, n: int, rng: random.Random) -> list[float]:
    return [mean + rng.gauss(0, sd) for _ in range(n)]


def _by_claim(rows):
    return {v["claim"]: v for v in claims.evaluate(rows)}


STD = {"preprocessing": "standard", "hidden_bn": False}
BN = {"preprocessing": "bn_first", "hidden_bn": False}


# --- statistics -------------------------------------------------------------------------------


def test_t_interval_matches_scipy():
    from scipy import stats

    ci = claims.t_interval([1.0, 2.0, 4.0])
    lo, hi = stats.t.interval(0.95, 2, loc=7 / 3, scale=stats.sem([1.0, 2.0, 4.0]))
    assert (ci["lo"], ci["hi"]) == (pytest.approx(lo), pytest.approx(hi))


def test_holm_adjusts_step_down_and_keeps_order():
    # sorted p: 0.01 (x3), 0.02 (x2 -> 0.04), 0.04 (x1, but monotone: max(0.04, 0.04))
    assert claims.holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert claims.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert claims.holm([0.001]) == [0.001]


# --- truth known -----------------------------------------------------------------------------


def test_identical_arms_never_hold():
    rng = random.Random(7)
    holds = 0
    for _ in range(40):  # same distribution in both arms: a "holds" would be a false positive (2.5% each)
        same = _noisy(0.9, 0.01, 5, rng)
        rows = _runs(STD, {"val_accuracy": same}) + _runs(BN, {"val_accuracy": same})
        v = _by_claim(rows)["4e"]
        assert v["verdict"] != HOLDS or v["estimate"] == 0
        holds += v["verdict"] == HOLDS
    assert holds == 0
    exact = _runs(STD, {"val_accuracy": [0.9] * 5}) + _runs(BN, {"val_accuracy": [0.9] * 5})
    v = _by_claim(exact)["4e"]
    assert v["verdict"] == INCONCLUSIVE and "no variance" in v["reason"]


def test_a_true_effect_of_known_size_is_found_at_5_seeds():
    rng = random.Random(3)
    base = _noisy(0.90, 0.02, 5, rng)
    rows = _runs(STD, {"val_accuracy": base}) + _runs(
        BN, {"val_accuracy": [b - 0.10 + rng.gauss(0, 0.01) for b in base]}
    )
    v = _by_claim(rows)["4e"]
    assert v["verdict"] == FAILS and v["n"] == 5
    assert v["estimate"] == pytest.approx(-0.10, abs=0.02) and v["hi"] < -v["margin"]
    comp = v["comparisons"][0]
    assert comp["test"].startswith("paired t-test") and comp["margin"] == claims.ACC_MARGIN


def test_a_reused_baseline_cannot_raise_n():
    # two BN-first momenta against one standardized baseline, 3 seeds: each comparison has n=3, not 6
    rows = (
        _runs(STD, {"val_accuracy": [0.90, 0.91, 0.92]})
        + _runs(BN, {"val_accuracy": [0.80, 0.83, 0.81]})
        + _runs({**BN, "bn_momentum": 0.9}, {"val_accuracy": [0.88, 0.87, 0.90]})
    )
    v = _by_claim(rows)["4e"]
    assert len(v["comparisons"]) == 2
    assert all(c["n"] == 3 and len(c["diffs"]) == 3 for c in v["comparisons"])
    assert "Holm over 2" in v["comparisons"][0]["correction"]


def test_strata_are_averaged_within_a_seed_so_n_counts_seeds():
    # clipping compared in two learning-rate strata: 3 seeds give n=3 differences, each a mean of 2
    rows = []
    for lr, gain in ((0.01, 0.02), (0.1, 0.06)):
        rows += _runs({**STD, "learning_rate": lr}, {"val_accuracy": [0.8, 0.81, 0.82]})
        rows += _runs({**STD, "learning_rate": lr, "clipping": "clipnorm"},
                      {"val_accuracy": [0.8 + gain, 0.81 + gain + 0.001, 0.82 + gain - 0.002]})  # fmt: skip
    comp = _by_claim(rows)["3"]["comparisons"][0]
    assert comp["n"] == 3 and comp["strata"] == 2
    assert comp["estimate"] == pytest.approx(0.04 - 0.001 / 3 / 2, abs=1e-3)


def test_fewer_than_three_replicates_give_no_verdict():
    rows = _runs(STD, {"val_accuracy": [0.96, 0.95]}) + _runs(BN, {"val_accuracy": [0.25, 0.30]})
    v = _by_claim(rows)["4e"]
    assert v["verdict"] == INCONCLUSIVE and "at least 3 seeds" in v["reason"]
    one_seed = _runs(STD, {"val_accuracy": [0.96]}) + _runs({**STD, "clipping": "clipnorm"}, {"val_accuracy": [0.5]})
    assert _by_claim(one_seed)["3"]["verdict"] == INCONCLUSIVE  # a 1-seed grid with two cells decides nothing


def _p_greater(diffs):
    from scipy import stats

    return stats.ttest_1samp(diffs, 0.0, alternative="greater").pvalue


def _shifted_to_p(noise: list[float], target: float) -> list[float]:
    """``noise`` shifted so that the one-sided p-value of its mean against 0 is ``target``."""
    lo, hi = 0.0, 1.0
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _p_greater([x + mid for x in noise]) > target else (lo, mid)
    return [x + hi for x in noise]


def test_a_borderline_effect_changes_verdict_under_holm():
    noise = [0.01, -0.012, 0.004, 0.009, -0.011]
    gains = _shifted_to_p(noise, 0.018)  # below 0.025 alone, above 0.025 once doubled by Holm
    base = [0.70, 0.72, 0.71, 0.69, 0.73]
    clipped = [b + g for b, g in zip(base, gains)]
    one = _runs(STD, {"val_accuracy": base}) + _runs({**STD, "clipping": "clipnorm"}, {"val_accuracy": clipped})
    alone = _by_claim(one)["3"]
    assert alone["verdict"] == HOLDS and alone["comparisons"][0]["p_holds_holm"] == pytest.approx(0.018, rel=1e-3)
    # a second clipping kind that does nothing: Holm doubles the smallest p, and the claim no longer holds
    useless = [b + x for b, x in zip(base, [0.003, -0.002, 0.001, -0.004, 0.002])]
    two = one + _runs({**STD, "clipping": "clipvalue"}, {"val_accuracy": useless})
    corrected = _by_claim(two)["3"]
    norm = next(c for c in corrected["comparisons"] if c["label"].startswith("clipnorm"))
    assert norm["p_holds"] == pytest.approx(0.018, rel=1e-3) and norm["p_holds_holm"] == pytest.approx(0.036, rel=1e-3)
    assert corrected["verdict"] == INCONCLUSIVE and "Holm over 2" in norm["correction"]


def test_margin_is_never_finer_than_one_validation_example():
    rows = _runs(STD, {"val_accuracy": [0.9, 0.92, 0.91]}, n_val=27) + _runs(
        BN, {"val_accuracy": [0.89, 0.93, 0.90]}, n_val=27
    )
    comp = _by_claim(rows)["4e"]["comparisons"][0]
    assert comp["margin"] == pytest.approx(1 / 27)


def test_diverged_runs_score_chance_in_claim_3_instead_of_dropping_out():
    unclipped = _runs(STD, {"val_accuracy": [math.nan] * 4 + [0.8]})
    for r in unclipped[:4]:
        r["status"] = "diverged"
    clipped = _runs({**STD, "clipping": "clipnorm"}, {"val_accuracy": [0.80, 0.82, 0.79, 0.81, 0.80]})
    v = _by_claim(unclipped + clipped)["3"]
    assert v["verdict"] == HOLDS and v["n"] == 5  # diverged runs kept, at chance 0.5
    assert "diverged 4/5 unclipped" in v["evidence"] and "diverged 0/5 clipnorm 1" in v["evidence"]


def test_claims_the_grid_cannot_test_say_so():
    rows = _runs(STD, {"val_accuracy": [0.9, 0.91, 0.92]})
    verdicts = _by_claim(rows)
    assert set(verdicts) == {"1", "2", "3", "4a", "4b", "4c", "4d", "4e", "R"}
    assert all(v["verdict"] == UNTESTED for v in verdicts.values())


def test_dying_relu_needs_every_variant_to_leave_fewer_dead_units():
    base = {**STD, "learning_rate": 0.1}
    rows = _runs({**base, "activation": "relu"}, {"dead_fraction": [0.30, 0.35, 0.32]})
    rows += _runs({**base, "activation": "elu"}, {"dead_fraction": [0.0, 0.01, 0.0]})
    rows += _runs({**base, "activation": "leaky_relu"}, {"dead_fraction": [0.0, 0.0, 0.0]})
    v = _by_claim(rows)["2"]
    assert v["verdict"] == HOLDS and v["rule"] == "all" and len(v["comparisons"]) == 2
    rows += _runs({**base, "activation": "selu"}, {"dead_fraction": [0.301, 0.349, 0.321]})  # as bad as relu
    v = _by_claim(rows)["2"]
    assert (
        v["verdict"] == FAILS and next(c for c in v["comparisons"] if c["label"] == "relu vs selu")["verdict"] == FAILS
    )


def test_claim_1_compares_within_hidden_bn_strata_on_the_step_0_ratio():
    rows = []
    for hbn in (False, True):
        for init, ratio in (("naive_normal", 3.0), ("he_normal", 0.2)):
            vals = [ratio + 0.05 * k * k * (init == "he_normal") for k in range(4)] if not hbn else [0.1] * 4
            rows += _runs({**STD, "hidden_bn": hbn, "initializer": init}, {"grad_log10_rms_ratio_initial": vals})
    v = _by_claim(rows)["1"]
    labels = {c["label"]: c for c in v["comparisons"]}
    off = labels["initializer he_normal vs naive_normal (hidden BN off)"]
    assert off["verdict"] == HOLDS and off["estimate"] == pytest.approx(0.2 - 3.0 + 0.05 * 14 / 4)
    assert labels["initializer he_normal vs naive_normal (hidden BN on)"]["reason"].startswith("no variance")
    assert v["verdict"] == HOLDS


def test_4c_is_one_sided_inference_beating_train_mode_holds():
    vals = {"infer_mode_accuracy": [0.9, 0.92, 0.91, 0.9], "train_mode_accuracy": [0.85, 0.86, 0.88, 0.84],
            "mode_sample_rows": [256] * 4}  # fmt: skip
    v = _by_claim(_runs(BN, vals))["4c"]
    assert v["verdict"] == HOLDS and v["estimate"] > 0
    worse = {**vals, "infer_mode_accuracy": [0.3, 0.32, 0.31, 0.3]}
    assert _by_claim(_runs(BN, worse))["4c"]["verdict"] == FAILS


def test_4a_uses_inference_mode_gap_and_compares_bn_only_on_normalized_inputs():
    rows = _runs(STD, {"gen_gap_accuracy": [0.10, 0.12, 0.11, 0.13]})
    rows += _runs({**STD, "hidden_bn": True}, {"gen_gap_accuracy": [0.02, 0.03, 0.01, 0.02]})
    rows += _runs({"preprocessing": "none", "hidden_bn": False}, {"gen_gap_accuracy": [0.0, 0.0, 0.01, 0.0]})
    v = _by_claim(rows)["4a"]
    assert v["verdict"] == HOLDS
    assert [c["label"] for c in v["comparisons"]] == ["hidden BN on vs off (standard inputs)"]


def test_recalibration_remedy_and_verdicts_json():
    import json

    rng = random.Random(5)
    std = _noisy(0.95, 0.01, 5, rng)
    rows = _runs(STD, {"val_accuracy": std, "val_accuracy_recalibrated": std})
    rows += _runs(BN, {"val_accuracy": _noisy(0.4, 0.05, 5, rng),
                       "val_accuracy_recalibrated": [s + rng.gauss(0, 0.002) for s in std]})  # fmt: skip
    verdicts = claims.evaluate(rows)
    by = {v["claim"]: v for v in verdicts}
    assert by["4e"]["verdict"] == FAILS and by["R"]["verdict"] == HOLDS
    assert by["R"]["headline"] == "BN-first (momentum 0.99) recalibrated vs standard"
    doc = json.loads(json.dumps(claims.verdicts_json(verdicts)))  # JSON-able, NaN as null
    comp = next(c for c in doc["claims"] if c["claim"] == "R")["comparisons"][0]
    for key in ("arms", "n", "estimate", "interval", "margin", "test", "correction", "verdict"):
        assert key in comp, key
    assert comp["n"] == 5 and len(comp["interval"]) == 2


def test_ranking_uses_the_mean_over_seeds_not_the_luckiest_seed():
    rows = _runs(STD, {"val_accuracy": [0.99, 0.50, 0.50]}) + _runs(BN, {"val_accuracy": [0.80, 0.81, 0.79]})
    assert claims.rank_configs(rows)[0]["config"] == Variant(**BN).name
    results = [{"name": r["name"], "status": "ok", "metrics": {"val_accuracy": r["val_accuracy"]}} for r in rows]
    ranked = compare.rank(results)
    assert ranked[0]["name"].startswith("bn_first") and ranked[0]["metrics"]["val_accuracy"] == 0.81


def test_main_effects_and_learning_speed_target():
    rows = _runs(STD, {"val_accuracy": [0.9, 0.92]}) + _runs(BN, {"val_accuracy": [0.5, 0.52]})
    effects = {e["level"]: e for e in claims.main_effects(rows)}
    assert effects["standard"]["mean"] == pytest.approx(0.91) and effects["bn_first"]["runs"] == 2
    assert claims.epochs_to_target([0.5, 0.8, 0.91, 0.95], 0.9) == 3
    assert claims.epochs_to_target([0.5, 0.6], 0.9) is None


def test_step_0_gradients_count_for_runs_that_diverged_later():
    rows = _runs({**STD, "initializer": "he_normal"}, {"grad_log10_rms_ratio_initial": [0.1, 0.2, 0.15, 0.12]})
    naive = _runs({**STD, "initializer": "naive_normal"}, {"grad_log10_rms_ratio_initial": [5.0, 5.5, 4.8, 5.2]})
    for r in naive:
        r["status"] = "diverged"  # exploded in training; its step-0 measurement still stands
    v = _by_claim(rows + naive)["1"]
    assert v["verdict"] == HOLDS and v["n"] == 4
    assert _by_claim(rows + naive)["4e"]["verdict"] == UNTESTED


def test_without_a_standardization_arm_the_first_scaler_is_the_headline():
    # textbook: BN-first (hidden BN on) on raw pixels against 1/255 scaling without BN
    rescale = _runs(
        {"preprocessing": "rescale", "hidden_bn": False},
        {"val_accuracy": [0.80, 0.81, 0.82], "val_accuracy_recalibrated": [0.80, 0.81, 0.82]},
    )
    bn = _runs({"preprocessing": "bn_first", "hidden_bn": True},
               {"val_accuracy": [0.83, 0.835, 0.84], "val_accuracy_recalibrated": [0.831, 0.836, 0.842]})  # fmt: skip
    by = _by_claim(rescale + bn)
    assert by["4e"]["headline"].startswith("BN-first (momentum 0.99) vs rescale (hidden BN differs too)")
    assert by["R"]["rule"] == "headline" and "recalibrated vs rescale" in by["R"]["headline"]
    assert by["R"]["verdict"] == HOLDS  # no gap to close: recalibrated BN-first is no worse than 1/255
