"""Claims: turn a table of runs into a verdict per claim of the design notes, with the numbers behind it.

Pure functions on plain rows: one dict per variant run with its variant fields (``preprocessing``,
``hidden_bn``, ``initializer``, ... ``seed``), ``config`` (its name without the seed suffix),
``status`` and its final metrics. Nothing here touches MLflow, Keras or files.

How a verdict is reached
------------------------
- **The unit of replication is the seed.** Each seed draws its own train/validation split and its
  own initialization (``snapshots.replicate_split``), so seeds are independent replicates; runs of one
  seed are not.
- **One paired difference per replicate.** A comparison contrasts two arms (e.g. BN-first against
  standardization). Within a seed, every *stratum* (the runs that agree on every other variant
  field) gives one difference arm A minus arm B; the seed's difference is the mean over its
  strata. A run is used once per comparison, never in two pairs, and n is the number of seeds.
- **No verdict from fewer than** ``MIN_REPLICATES`` **replicates**, and none from differences that
  are all identical ("inconclusive (no variance)": e.g. one example of a tiny validation set).
- **The test** is the paired t-test on the per-seed differences (``scipy.stats.ttest_1samp``):
  one-sided at ``ALPHA`` / 2 for a direction ("improves", "no worse"), so a "holds" agrees with
  the 95% two-sided interval that is reported; two-sided at ``ALPHA`` for "differs".
- **Margins** are stated up front: a difference smaller than the margin does not matter. For an
  accuracy the margin is never smaller than one example of the validation set (its granularity).
  - *improves* (superiority): holds when H0 "difference <= 0" is rejected; does not hold when
    H0 "difference >= margin" is rejected (any improvement is too small to matter).
  - *no worse* (non-inferiority): holds when H0 "difference <= -margin" is rejected; does not
    hold when H0 "difference >= -margin" is rejected.
  - *differs* (two-sided): holds when H0 "difference = 0" is rejected; does not hold when both
    one-sided tests of equivalence within +-margin reject (TOST).
- **Several comparisons behind one claim** are corrected with Holm's step-down method, once for
  the "holds" tests and once for the "does not hold" tests. A claim's verdict combines its
  comparisons by a rule stated with it: ``any`` (holds if one comparison holds; does not hold if
  all do not), ``all`` (the reverse), or ``headline`` (one named comparison decides; the others
  are reported).
- For an inconclusive comparison the report gives the smallest true difference the design
  would detect with 80% power (from the observed spread and n).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

HOLDS, FAILS, INCONCLUSIVE, UNTESTED = "holds", "does not hold", "inconclusive", "not tested by this grid"
VARIANT_FIELDS = (
    "preprocessing", "hidden_bn", "initializer", "activation", "clipping", "clip_value",
    "bn_momentum", "bn_epsilon", "bn_recalibrate", "hidden", "optimizer", "learning_rate",
)  # fmt: skip
BN_FIELDS = ("bn_momentum", "bn_epsilon", "bn_recalibrate")
AXES = ("preprocessing", "initializer", "activation", "clipping", "hidden_bn", "bn_momentum", "learning_rate")
RELU_VARIANTS = ("leaky_relu", "elu", "selu")
SCALERS = ("standard", "minmax", "rescale")
ALPHA = 0.05  # two-sided; directional tests use ALPHA / 2, matching the reported 95% interval
LEVEL = 1 - ALPHA
POWER = 0.8  # for the smallest detectable difference of an inconclusive comparison
MIN_REPLICATES = 3
ACC_MARGIN = 0.01  # accuracy difference that matters (raised to one validation example when coarser)
GRAD_MARGIN = 0.1  # |log10 RMS-gradient ratio| difference that matters (a factor of 1.26)
DEAD_MARGIN = 0.02  # dead-unit fraction difference that matters
LOSS_MARGIN = 0.05  # ln(training loss) difference that matters (5%)
MODE_GAP_MARGIN = 0.02  # inference-mode accuracy may fall this far below train-mode accuracy

CLAIMS = {
    "1": "Vanishing/exploding gradients depend on weight initialization and the activation function.",
    "2": "ReLU variants exist because of dying ReLU: plain ReLU leaves more units dead.",
    "3": "Gradient clipping is a remedy (better validation accuracy than no clipping).",
    "4a": "BN reduces overfitting (smaller train - validation accuracy gap).",
    "4b": "BN speeds up learning (lower training loss after the first epoch).",
    "4c": "BN's moving statistics estimate the data's statistics well enough for inference "
    "(inference-mode accuracy no worse than train-mode accuracy).",
    "4d": "BN relieves vanishing/exploding gradients (first/last layer RMS gradient ratio closer to 1).",
    "4e": "BN as the first layer replaces standardizing the training data (validation accuracy no worse).",
    "R": "Remedy: recomputing BN's statistics over the training split after training (precise BN) closes "
    "BN-first's gap to standardization.",
}
METRIC_TEXT = {
    "grad_imbalance_initial": "|log10 first/last-layer RMS gradient| at step 0",
    "grad_imbalance_mean": "|log10 first/last-layer RMS gradient|, mean over training",
    "dead_fraction": "dead-unit fraction",
    "val_accuracy_or_chance": "val accuracy (diverged run: chance)",
    "gen_gap_accuracy": "train - val accuracy (both inference mode)",
    "log_loss_epoch1": "ln(training loss) after epoch 1",
    "infer_minus_train_mode": "inference-mode - train-mode accuracy",
    "val_accuracy": "val accuracy",
    "val_accuracy_recalibrated": "val accuracy after BN recalibration",
    "recalibration_gain": "val accuracy after minus before BN recalibration",
}
TESTS = {
    "improves": "paired t-test, one-sided (H1: difference > 0), alpha 0.025",
    "no_worse": "paired t-test, one-sided non-inferiority (H1: difference > -margin), alpha 0.025",
    "differs": "paired t-test, two-sided (H1: difference != 0), alpha 0.05; TOST within +-margin for 'does not hold'",
}


# --- statistics -------------------------------------------------------------------------------


def t_interval(values, level: float = LEVEL) -> dict:
    """Mean and two-sided t-interval of ``values`` (NaN bounds with fewer than two values or no spread)."""
    from scipy import stats

    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(vals)
    if n == 0:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": 0, "sd": math.nan}
    mean = math.fsum(vals) / n
    if n < 2:
        return {"mean": mean, "lo": math.nan, "hi": math.nan, "n": n, "sd": math.nan}
    if max(vals) - min(vals) <= 1e-12 * max(1.0, abs(mean)):  # identical up to float rounding
        return {"mean": mean, "lo": mean, "hi": mean, "n": n, "sd": 0.0}
    sd = stats.tstd(vals)
    if sd == 0:
        return {"mean": mean, "lo": mean, "hi": mean, "n": n, "sd": 0.0}
    lo, hi = stats.t.interval(level, n - 1, loc=mean, scale=sd / math.sqrt(n))
    return {"mean": mean, "lo": float(lo), "hi": float(hi), "n": n, "sd": float(sd)}


def p_value(diffs: list[float], null: float, alternative: str) -> float:
    """p of the one-sample t-test of ``diffs`` against ``null`` (scipy's ``ttest_1samp``)."""
    from scipy import stats

    return float(stats.ttest_1samp(diffs, popmean=null, alternative=alternative).pvalue)


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input's order (monotone, capped at 1)."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted, running = [1.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def detectable(sd: float, n: int) -> float:
    """The smallest true difference a paired t-test with this spread and n detects with ``POWER``.

    Every test here rejects beyond t(1 - ALPHA/2) (one-sided at 0.025 or two-sided at 0.05).
    """
    from scipy import stats

    if n < 2 or not math.isfinite(sd):
        return math.nan
    return float((stats.t.ppf(1 - ALPHA / 2, n - 1) + stats.t.ppf(POWER, n - 1)) * sd / math.sqrt(n))


# --- comparisons -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Contrast:
    """Arm A against arm B on one metric: what differs between them (``vary``) and how it is judged."""

    label: str
    metric: str
    a: Callable[[dict], bool]
    b: Callable[[dict], bool] | None  # None: a one-sample test of arm A's metric (a within-run difference)
    vary: tuple[str, ...]
    kind: str  # improves | no_worse | differs
    margin: float
    a_name: str = "A"
    b_name: str = "B"
    headline: bool = False
    extra: dict = field(default_factory=dict)


def _stratum(row: dict, vary: tuple[str, ...]) -> tuple:
    return tuple((f, repr(row.get(f))) for f in VARIANT_FIELDS if f not in vary)


# Metrics that mean something for a run that diverged later: its score at chance, and what was
# measured at step 0, before training could diverge (a naive N(0, 1) init that explodes must count).
DEFINED_WHEN_DIVERGED = ("val_accuracy_or_chance", "grad_imbalance_initial")


def usable(row: dict, metric: str) -> bool:
    """A healthy run with a finite value; a diverged run only for metrics that score divergence."""
    v = row.get(metric)
    ok = row.get("status") == "ok" or (row.get("status") == "diverged" and metric in DEFINED_WHEN_DIVERGED)
    return ok and v is not None and math.isfinite(v)


def paired_differences(rows: list[dict], c: Contrast) -> dict:
    """One difference per seed: the mean over strata of A - B, each run used at most once.

    Returns ``{"diffs": {seed: d}, "strata": k, "runs_a": .., "runs_b": .., "left_out": ..}``.
    """
    cells: dict[tuple, dict[str, list]] = {}
    left_out = 0
    for r in rows:
        side = "a" if c.a(r) else "b" if c.b is not None and c.b(r) else None
        if side is None:
            continue
        if not usable(r, c.metric):
            left_out += 1
            continue
        key = (r.get("seed"), _stratum(r, c.vary))
        cells.setdefault(key, {"a": [], "b": []})[side].append(r)
    per_seed: dict = {}
    strata = set()
    for (seed, stratum), arms in cells.items():
        if not arms["a"] or (c.b is not None and not arms["b"]):
            continue
        a = math.fsum(r[c.metric] for r in arms["a"]) / len(arms["a"])  # several A runs: averaged, not reused
        d = a if c.b is None else a - math.fsum(r[c.metric] for r in arms["b"]) / len(arms["b"])
        per_seed.setdefault(seed, []).append(d)
        strata.add(stratum)
    diffs = {seed: math.fsum(ds) / len(ds) for seed, ds in sorted(per_seed.items(), key=lambda kv: repr(kv[0]))}
    return {"diffs": diffs, "strata": len(strata), "left_out": left_out}


def test_contrast(rows: list[dict], c: Contrast) -> dict:
    """The contrast's estimate, interval, n and raw p-values (before Holm); see the module docstring."""
    paired = paired_differences(rows, c)
    diffs = list(paired["diffs"].values())
    ci = t_interval(diffs)
    out = {
        "label": c.label,
        "metric": c.metric,
        "metric_text": METRIC_TEXT.get(c.metric, c.metric),
        "arms": {"a": c.a_name, "b": c.b_name} if c.b is not None else {"a": c.a_name},
        "n": ci["n"],
        "strata": paired["strata"],
        "estimate": ci["mean"],
        "lo": ci["lo"],
        "hi": ci["hi"],
        "level": LEVEL,
        "sd": ci["sd"],
        "margin": c.margin,
        "kind": c.kind,
        "test": TESTS[c.kind],
        "headline": c.headline,
        "left_out": paired["left_out"],
        "diffs": diffs,
        "p_holds": None,
        "p_fails": None,
        "reason": "",
        **c.extra,
    }
    if ci["n"] == 0:
        out["reason"] = "no replicate has both arms"
    elif ci["n"] < MIN_REPLICATES:
        out["reason"] = f"n={ci['n']} replicate(s); a verdict needs at least {MIN_REPLICATES} seeds"
    elif ci["sd"] == 0:
        out["reason"] = "no variance: every replicate gave the same difference"
    else:
        m = c.margin
        if c.kind == "improves":
            out["p_holds"], out["p_fails"] = p_value(diffs, 0.0, "greater"), p_value(diffs, m, "less")
        elif c.kind == "no_worse":
            out["p_holds"], out["p_fails"] = p_value(diffs, -m, "greater"), p_value(diffs, -m, "less")
        else:
            two = p_value(diffs, 0.0, "two-sided")
            tost = max(p_value(diffs, -m, "greater"), p_value(diffs, m, "less"))
            out["p_holds"], out["p_fails"] = two, tost
    return out


def decide(results: list[dict]) -> list[dict]:
    """Holm-adjust the comparisons of one claim (``holds`` and ``does not hold`` families) and judge each."""
    tested = [r for r in results if r["p_holds"] is not None]
    for key in ("p_holds", "p_fails"):
        adjusted = holm([r[key] for r in tested])
        for r, p in zip(tested, adjusted):
            r[key + "_holm"] = p
    for r in results:
        r["correction"] = f"Holm over {len(tested)} comparison(s) of this claim" if len(tested) > 1 else "none (1)"
        if r["p_holds"] is None:
            r["verdict"] = INCONCLUSIVE
            r["detectable"] = math.nan
            continue
        alpha = ALPHA if r["kind"] == "differs" else ALPHA / 2  # both match the 95% interval
        if r["p_holds_holm"] < alpha:
            r["verdict"] = HOLDS
        elif r["p_fails_holm"] < ALPHA / 2:  # one-sided, or each of TOST's two tests
            r["verdict"] = FAILS
        else:
            r["verdict"] = INCONCLUSIVE
            r["reason"] = "the interval is compatible with both an effect and none (after Holm)"
        r["detectable"] = detectable(r["sd"], r["n"])
    return results


def _combine(results: list[dict], rule: str) -> tuple[str, dict | None]:
    """The claim's verdict from its comparisons' verdicts, and the comparison to show first."""
    if not results:
        return UNTESTED, None
    verdicts = [r["verdict"] for r in results]
    if rule == "headline":
        head = next((r for r in results if r["headline"]), results[0])
        return head["verdict"], head
    if rule == "any":
        verdict = HOLDS if HOLDS in verdicts else FAILS if all(v == FAILS for v in verdicts) else INCONCLUSIVE
    else:
        verdict = FAILS if FAILS in verdicts else HOLDS if all(v == HOLDS for v in verdicts) else INCONCLUSIVE
    pick = {HOLDS: HOLDS, FAILS: FAILS}.get(verdict)
    shown = [r for r in results if r["verdict"] == pick] or results
    return verdict, max(shown, key=lambda r: (r["n"], abs(r["estimate"]) if math.isfinite(r["estimate"]) else 0))


def judge(claim: str, rows: list[dict], contrasts: list[Contrast], rule: str, hint: str, note: str = "") -> dict:
    """Test every contrast that the rows can answer, correct within the claim, combine by ``rule``."""
    results = [test_contrast(rows, c) for c in contrasts]
    results = decide([r for r in results if r["n"] > 0])
    verdict, head = _combine(results, rule)
    if head is None:
        return _claim_row(claim, UNTESTED, rule, [], hint)
    reason = ""
    if verdict == INCONCLUSIVE:
        reasons = sorted({r["reason"] for r in results if r["verdict"] == INCONCLUSIVE})
        reason = "; ".join(reasons)
    return _claim_row(claim, verdict, rule, results, note, head, reason)


def _claim_row(claim, verdict, rule, results, note="", head=None, reason="") -> dict:
    head = head or {"estimate": math.nan, "lo": math.nan, "hi": math.nan, "n": 0, "margin": math.nan, "test": ""}
    return {
        "claim": claim,
        "text": CLAIMS[claim],
        "verdict": verdict,
        "rule": rule,
        "reason": reason,
        "estimate": head["estimate"],
        "lo": head["lo"],
        "hi": head["hi"],
        "n": head["n"],
        "margin": head["margin"],
        "test": head["test"],
        "headline": head.get("label"),
        "comparisons": results,
        "evidence": evidence_text(results, note),
    }


def fmt_comparison(r: dict, digits: int = 3) -> str:
    """One comparison in one line: label, metric, estimate [interval], n, margin, test, verdict."""
    if not math.isfinite(r["estimate"]):
        body = "no data"
    elif not math.isfinite(r["lo"]):
        body = f"{r['estimate']:+.{digits}f} (no interval)"
    else:
        body = f"{r['estimate']:+.{digits}f} [{r['lo']:+.{digits}f}, {r['hi']:+.{digits}f}]"
    p = r.get("p_fails_holm") if r["verdict"] == FAILS else r.get("p_holds_holm")
    ptext = f", Holm p={p:.3g}" if p is not None and math.isfinite(p) else ""
    verdict = r["verdict"] + (" (no variance)" if r["reason"].startswith("no variance") else "")
    mde = r.get("detectable")
    mdetext = f"; detectable at 80% power: {mde:.3f}" if verdict == INCONCLUSIVE and mde and math.isfinite(mde) else ""
    return (f"{r['label']}: {r['metric_text']} {body}, n={r['n']}, margin {r['margin']:.3g}{ptext} -> {verdict}"
            f"{mdetext}")  # fmt: skip


def evidence_text(results: list[dict], note: str = "") -> str:
    parts = [fmt_comparison(r) for r in results]
    return "; ".join(parts) + (f". {note}" if note else "")


# --- the claims -----------------------------------------------------------------------------


def input_scale(preprocessing: str) -> str:
    """The preprocessing without its BN layer: what the inputs look like to the first BN or Dense."""
    return {"bn_first": "none", "rescale_bn_first": "rescale"}.get(preprocessing, preprocessing)


def uses_bn(row: dict) -> bool:
    return row.get("preprocessing") in ("bn_first", "rescale_bn_first") or bool(row.get("hidden_bn"))


def healthy(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("status") == "ok"]


def acc_margin(rows: list[dict], size_key: str = "n_val") -> float:
    """``ACC_MARGIN``, raised to one example of the smallest evaluation set: finer is not measurable."""
    sizes = [r[size_key] for r in rows if r.get(size_key)]
    return max(ACC_MARGIN, 1.0 / min(sizes)) if sizes else ACC_MARGIN


def with_derived(rows: list[dict]) -> list[dict]:
    """Rows plus the metrics the claims read that are computed from logged ones."""
    from bnpipe.core.variants import Variant

    defaults = {f: getattr(Variant, f) for f in BN_FIELDS}
    out = []
    for r in rows:
        r = dict(r)
        for f, default in defaults.items():  # runs logged before the field existed
            if r.get(f) is None:
                r[f] = default
        for src, dst in (("grad_log10_rms_ratio_initial", "grad_imbalance_initial"),
                         ("grad_abs_log10_rms_ratio_mean", "grad_imbalance_mean")):  # fmt: skip
            v = r.get(src)
            r[dst] = abs(v) if v is not None and math.isfinite(v) else None
        loss = r.get("loss_epoch1")
        r["log_loss_epoch1"] = math.log(loss) if loss is not None and math.isfinite(loss) and loss > 0 else None
        ia, ta = r.get("infer_mode_accuracy"), r.get("train_mode_accuracy")
        r["infer_minus_train_mode"] = ia - ta if ia is not None and ta is not None else None
        va, vr = r.get("val_accuracy"), r.get("val_accuracy_recalibrated")
        r["recalibration_gain"] = vr - va if va is not None and vr is not None else None
        if r.get("status") == "diverged" and r.get("n_classes"):
            r["val_accuracy_or_chance"] = 1.0 / r["n_classes"]
        elif r.get("status") == "ok":
            r["val_accuracy_or_chance"] = r.get("val_accuracy")
        out.append(r)
    return out


def _levels(rows: list[dict], f: str, pred=lambda r: True) -> list:
    return sorted({r.get(f) for r in rows if pred(r) and r.get(f) is not None}, key=repr)


def _is(**want):
    return lambda r: all(r.get(k) == v for k, v in want.items())


def claim_1(rows):
    """Within each hidden-BN stratum: every pair of initializers, and every pair of activations."""
    contrasts = []
    for hbn in _levels(rows, "hidden_bn"):
        where = "hidden BN on" if hbn else "hidden BN off"
        for axis in ("initializer", "activation"):
            levels = _levels(rows, axis, _is(hidden_bn=hbn))
            for i, a in enumerate(levels):
                for b in levels[i + 1 :]:
                    contrasts.append(Contrast(
                        f"{axis} {a} vs {b} ({where})", "grad_imbalance_initial",
                        _is(hidden_bn=hbn, **{axis: a}), _is(hidden_bn=hbn, **{axis: b}), (axis,), "differs",
                        GRAD_MARGIN, a, b,
                    ))  # fmt: skip
    return judge("1", rows, contrasts, "any", "needs runs that differ only in initializer or activation")


def claim_2(rows):
    contrasts = [
        Contrast(f"relu vs {v}", "dead_fraction", _is(activation="relu"), _is(activation=v), ("activation",),
                 "improves", DEAD_MARGIN, "relu", v)
        for v in RELU_VARIANTS if any(r.get("activation") == v for r in rows)
    ]  # fmt: skip
    return judge("2", rows, contrasts, "all", "needs runs that differ only in relu vs. a ReLU variant")


def _divergence(rows, pred) -> str:
    arm = [r for r in rows if pred(r)]
    return f"{sum(r.get('status') == 'diverged' for r in arm)}/{len(arm)}"


def claim_3(rows):
    margin = acc_margin(rows)
    contrasts, notes = [], []
    none = _is(clipping="none")
    for kind in _levels(rows, "clipping", lambda r: r.get("clipping") != "none"):
        for value in _levels(rows, "clip_value", _is(clipping=kind)):
            arm = _is(clipping=kind, clip_value=value)
            name = f"{kind} {value:g}"
            contrasts.append(Contrast(f"{name} vs no clipping", "val_accuracy_or_chance", arm,
                                      lambda r: r.get("clipping") == "none", ("clipping", "clip_value"), "improves",
                                      margin, name, "none"))  # fmt: skip
            notes.append(f"diverged {_divergence(rows, arm)} {name}")
    if contrasts:
        notes.append(f"diverged {_divergence(rows, none)} unclipped; a diverged run scores chance (1/classes)")
    return judge("3", rows, contrasts, "any", "needs runs that differ only in gradient clipping", ", ".join(notes))


def bn_contrasts(rows, metric: str, kind: str, margin: float, sign: int) -> list[Contrast]:
    """BN against no BN with the inputs normalized either way, so input scaling is not credited to BN.

    - hidden BN on vs. off, same preprocessing;
    - BN-first vs. standardization (both normalize the inputs), one comparison per BN setting;
    - BN (first and hidden) on 1/255-scaled pixels vs. the same pixels without BN.
    ``sign`` +1 when the BN arm should be higher, -1 when lower (the difference is then no BN - BN).
    """
    specs = []
    hbn_on = _is(hidden_bn=True)
    for pre in _levels(rows, "preprocessing", hbn_on):
        specs.append((f"hidden BN on vs off ({pre} inputs)", _is(hidden_bn=True, preprocessing=pre),
                      _is(hidden_bn=False, preprocessing=pre), ("hidden_bn",)))  # fmt: skip
    for m in _levels(rows, "bn_momentum", _is(preprocessing="bn_first")):
        specs.append((f"BN-first (momentum {m:g}) vs standardization", _is(preprocessing="bn_first", bn_momentum=m),
                      _is(preprocessing="standard"), ("preprocessing", *BN_FIELDS)))  # fmt: skip
    specs.append(("BN on 1/255 pixels vs no BN", _is(preprocessing="rescale_bn_first"), _is(preprocessing="rescale"),
                  ("preprocessing", "hidden_bn")))  # fmt: skip
    out = []
    for label, bn, plain, vary in specs:
        if not (any(bn(r) for r in rows) and any(plain(r) for r in rows)):
            continue
        a, b, an, bname = (bn, plain, "BN", "no BN") if sign > 0 else (plain, bn, "no BN", "BN")
        out.append(Contrast(label, metric, a, b, vary, kind, margin, an, bname))
    return out


HINT_BN = "needs runs with and without BN on normalized inputs (hidden_bn true/false, or bn_first vs. standard)"


def claim_4a(rows):
    return judge("4a", rows, bn_contrasts(healthy(rows), "gen_gap_accuracy", "improves", acc_margin(rows), -1),
                 "any", HINT_BN)  # fmt: skip


def claim_4b(rows):
    return judge(
        "4b",
        rows,
        bn_contrasts(healthy(rows), "log_loss_epoch1", "improves", LOSS_MARGIN, -1),
        "any",
        HINT_BN,
        "Training loss is measured in train mode, so BN's moving averages do not enter it.",
    )


def claim_4c(rows):
    margin = max([MODE_GAP_MARGIN, *(1.0 / r["mode_sample_rows"] for r in rows if r.get("mode_sample_rows"))])
    contrasts = []
    for config in sorted({r["config"] for r in healthy(rows) if uses_bn(r)}):
        contrasts.append(Contrast(f"{config}", "infer_minus_train_mode", _is(config=config), None, (), "no_worse",
                                  margin, config))  # fmt: skip
    return judge("4c", rows, contrasts, "all", "needs variants with a BatchNormalization layer")


def claim_4d(rows):
    ok = healthy(rows)
    contrasts = [
        replace(c, label=f"{c.label}{when}")
        for metric, when in (("grad_imbalance_initial", " (step 0)"), ("grad_imbalance_mean", " (over training)"))
        for c in bn_contrasts(ok, metric, "improves", GRAD_MARGIN, -1)
    ]
    return judge("4d", rows, contrasts, "any", HINT_BN)


def _scaler_contrasts(rows, metric: str, label_suffix: str, headline_ok: bool) -> list[Contrast]:
    margin = acc_margin(rows)
    out = []
    for m in sorted(_levels(rows, "bn_momentum", _is(preprocessing="bn_first")), reverse=True):
        for ref in SCALERS:
            if not any(r.get("preprocessing") == ref for r in rows):
                continue
            vary = ("preprocessing", *BN_FIELDS)
            shared = set(_levels(rows, "hidden_bn", _is(preprocessing="bn_first"))) & set(
                _levels(rows, "hidden_bn", _is(preprocessing=ref))
            )
            if not shared:  # e.g. textbook: BN everywhere on raw pixels vs. scaled pixels without BN
                vary = (*vary, "hidden_bn")
            out.append(Contrast(
                f"BN-first (momentum {m:g}){label_suffix} vs {ref}" + (" (hidden BN differs too)"
                                                                       if "hidden_bn" in vary else ""),
                metric, _is(preprocessing="bn_first", bn_momentum=m, bn_recalibrate=False), _is(preprocessing=ref),
                vary, "no_worse", margin, f"bn_first m{m:g}{label_suffix}", ref,
                headline=headline_ok and m == 0.99 and ref == "standard",
            ))  # fmt: skip
    return out


def claim_4e(rows):
    contrasts = _scaler_contrasts(rows, "val_accuracy_or_chance", "", True)
    if contrasts and not any(c.headline for c in contrasts):
        contrasts[0] = replace(contrasts[0], headline=True)
    return judge(
        "4e",
        rows,
        contrasts,
        "headline",
        "needs bn_first runs and standard/minmax/rescale runs",
        "Headline: BN-first with Keras' default momentum 0.99 against standardization.",
    )


def claim_r(rows):
    """Does precise BN close BN-first's gap? Its gain on the BN-first runs, and BN-first recalibrated vs. scalers."""
    margin = acc_margin(rows)
    contrasts = [
        Contrast(f"BN-first (momentum {m:g}): recalibrated vs moving averages", "recalibration_gain",
                 _is(preprocessing="bn_first", bn_momentum=m, bn_recalibrate=False), None, (), "improves", margin,
                 f"bn_first m{m:g}")
        for m in sorted(_levels(rows, "bn_momentum", _is(preprocessing="bn_first")), reverse=True)
    ]  # fmt: skip
    scalers = _scaler_contrasts(rows, "val_accuracy_recalibrated", " recalibrated", True)
    if scalers and not any(c.headline for c in scalers):  # no standardization arm: the first scaler decides
        scalers[0] = replace(scalers[0], headline=True)
    contrasts += scalers
    rule = "headline" if any(c.headline for c in contrasts) else "all"
    return judge(
        "R",
        rows,
        contrasts,
        rule,
        "needs bn_first runs (every run logs its recalibrated accuracy)",
        "Headline: BN-first recalibrated (momentum 0.99) against standardization, non-inferiority.",
    )


def evaluate(rows: list[dict]) -> list[dict]:
    """One verdict row per claim of the design notes, and one for the recalibration remedy."""
    rows = with_derived(rows)
    return [f(rows) for f in (claim_1, claim_2, claim_3, claim_4a, claim_4b, claim_4c, claim_4d, claim_4e, claim_r)]


def verdicts_json(verdicts: list[dict]) -> dict:
    """The machine-readable form of ``evaluate``'s output: every claim and every comparison."""

    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        return v

    claims_out = []
    for v in verdicts:
        comps = [{
            "label": c["label"], "arms": c["arms"], "metric": c["metric"], "metric_text": c["metric_text"],
            "n": c["n"], "strata": c["strata"], "estimate": c["estimate"], "interval": [c["lo"], c["hi"]],
            "level": c["level"], "margin": c["margin"], "test": c["test"], "correction": c["correction"],
            "p": c["p_holds"], "p_adjusted": c.get("p_holds_holm"), "p_does_not_hold": c["p_fails"],
            "p_does_not_hold_adjusted": c.get("p_fails_holm"), "verdict": c["verdict"], "reason": c["reason"],
            "detectable_difference": c.get("detectable"), "headline": c["headline"], "differences": c["diffs"],
            "runs_left_out": c["left_out"],
        } for c in v["comparisons"]]  # fmt: skip
        claims_out.append({"claim": v["claim"], "text": v["text"], "verdict": v["verdict"], "rule": v["rule"],
                           "reason": v["reason"], "headline": v["headline"], "comparisons": comps})  # fmt: skip
    return clean({"alpha": ALPHA, "min_replicates": MIN_REPLICATES, "unit": "seed (own split and initialization)",
                  "claims": claims_out})  # fmt: skip


def sentence(v: dict) -> str:
    """A claim's verdict in one line, with its headline estimate, interval, n and margin."""
    if v["verdict"] == UNTESTED or not v["comparisons"]:
        return f"claim {v['claim']}: {v['verdict']}"
    head = next((c for c in v["comparisons"] if c["label"] == v["headline"]), v["comparisons"][0])
    more = f" (+{len(v['comparisons']) - 1} more, rule '{v['rule']}')" if len(v["comparisons"]) > 1 else ""
    return f"claim {v['claim']}: {v['verdict']}. {fmt_comparison(head)}{more}"


# --- summaries per configuration ---------------------------------------------------------------


def aggregate(rows: list[dict], metrics: list[str]) -> list[dict]:
    """One row per configuration: how many seeds ran and stayed healthy, and each metric's mean and 95% interval."""
    configs: dict[str, list] = {}
    for r in rows:
        configs.setdefault(r["config"], []).append(r)
    out = []
    for config, rs in configs.items():
        ok = healthy(rs)
        row = {"config": config, "seeds": len(rs), "healthy": len(ok)}
        for m in metrics:
            ci = t_interval([r.get(m) for r in ok])
            row.update({m: ci["mean"], f"{m}_lo": ci["lo"], f"{m}_hi": ci["hi"]})
        out.append(row)
    return out


def rank_configs(rows: list[dict], metric: str = "val_accuracy", higher: bool = True) -> list[dict]:
    """Configurations best first by the *mean* of ``metric`` over their healthy seeds."""
    agg = [a for a in aggregate(rows, [metric]) if a["healthy"] and math.isfinite(a[metric])]
    return sorted(agg, key=lambda a: (-a[metric] if higher else a[metric], a["config"]))


def main_effects(rows: list[dict], metric: str = "val_accuracy") -> list[dict]:
    """For each grid axis with more than one level: the metric's mean and 95% interval per level (healthy runs)."""
    ok = healthy(rows)
    out = []
    for axis in AXES:
        levels = sorted({repr(r.get(axis)) for r in ok})
        if len(levels) < 2:
            continue
        for level in levels:
            ci = t_interval([r.get(metric) for r in ok if repr(r.get(axis)) == level])
            diverged = sum(1 for r in rows if repr(r.get(axis)) == level and r.get("status") != "ok")
            out.append({"axis": axis, "level": level.strip("'"), "mean": ci["mean"], "lo": ci["lo"], "hi": ci["hi"],
                        "runs": ci["n"], "not_ok": diverged})  # fmt: skip
    return out


def epochs_to_target(val_accuracy: list[float], target: float) -> int | None:
    """1-based epoch at which validation accuracy first reaches ``target``; None if it never does."""
    return next((i for i, v in enumerate(val_accuracy, 1) if v is not None and v >= target), None)


def default_target(histories: dict[str, list[float]], rows: list[dict], fraction: float = 0.95) -> float | None:
    """``fraction`` of the best healthy run's best validation accuracy."""
    ok = {r["run_id"] for r in healthy(rows)}
    best = [max(v) for rid, v in histories.items() if rid in ok and v]
    return fraction * max(best) if best else None
