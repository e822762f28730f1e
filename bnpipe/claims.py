"""Claims: turn a table of runs into a verdict per claim of the design notes, with the numbers behind it.

Pure functions on plain rows: one dict per variant run with its variant fields (``preprocessing``,
``hidden_bn``, ``initializer``, ... ``seed``), ``config`` (its name without the seed suffix),
``status`` and its final metrics. Nothing here touches MLflow, Keras or files.

How a verdict is reached. Runs are compared in *matched pairs*: two runs that differ only in the
factor under test (everything else equal, same seed). The per-pair differences give a mean and a
95% t-interval; pooling pairs from several settings of the other axes estimates the factor's
average effect over the grid. Then:

- a claim that X *improves* a metric **holds** when the interval lies above 0, and **does not
  hold** when it lies below ``margin`` (any improvement is too small to matter);
- a claim that X *replaces* Y (claim 4e) is a non-inferiority test: it **holds** when the interval
  lies above ``-margin`` and **does not hold** when it lies below ``-margin``;
- otherwise, or with fewer than two pairs, the verdict is **inconclusive**. A single seed per
  configuration seldom supports a verdict: run with ``seeds`` >= 3.
"""

from __future__ import annotations

import math

HOLDS, FAILS, INCONCLUSIVE, UNTESTED = "holds", "does not hold", "inconclusive", "not tested by this grid"
VARIANT_FIELDS = (
    "preprocessing", "hidden_bn", "initializer", "activation", "clipping", "clip_value",
    "bn_momentum", "hidden", "optimizer", "learning_rate",
)  # fmt: skip
AXES = ("preprocessing", "initializer", "activation", "clipping", "hidden_bn", "bn_momentum")
RELU_VARIANTS = ("leaky_relu", "elu", "selu")
SCALERS = ("standard", "minmax", "rescale")
ACC_MARGIN = 0.01  # accuracy difference that matters
GRAD_MARGIN = 0.1  # log10 gradient-ratio difference that matters (a factor of 1.26)
MODE_GAP_MARGIN = 0.02  # train-mode minus inference-mode accuracy the claim tolerates

CLAIMS = {
    "1": "Vanishing/exploding gradients depend on weight initialization and the activation function.",
    "2": "ReLU variants exist because of dying ReLU: plain ReLU leaves more units dead.",
    "3": "Gradient clipping is a remedy (better validation accuracy than no clipping).",
    "4a": "BN reduces overfitting (smaller train - validation accuracy gap).",
    "4b": "BN speeds up learning (higher validation accuracy after epoch 1, or fewer epochs to the target).",
    "4c": "BN's moving statistics estimate the data's statistics well enough for inference "
    "(inference-mode accuracy close to train-mode accuracy).",
    "4d": "BN relieves vanishing/exploding gradients (first/last layer gradient ratio closer to 1).",
    "4e": "BN as the first layer replaces standardizing the training data (validation accuracy no worse).",
}


def t_interval(values, level: float = 0.95) -> dict:
    """Mean and two-sided t-interval of ``values`` (NaN bounds with fewer than two values)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(vals)
    if n == 0:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}
    mean = sum(vals) / n
    if n < 2:
        return {"mean": mean, "lo": math.nan, "hi": math.nan, "n": n}
    from scipy import stats

    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    half = stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": n}


def verdict_improves(ci: dict, margin: float) -> str:
    """Direction claim on differences (claimed-better minus other)."""
    if ci["n"] < 2 or math.isnan(ci["lo"]):
        return INCONCLUSIVE
    if ci["lo"] > 0:
        return HOLDS
    if ci["hi"] < margin:
        return FAILS
    return INCONCLUSIVE


def verdict_not_worse(ci: dict, margin: float) -> str:
    """Non-inferiority claim on differences (candidate minus reference)."""
    if ci["n"] < 2 or math.isnan(ci["lo"]):
        return INCONCLUSIVE
    if ci["lo"] > -margin:
        return HOLDS
    if ci["hi"] < -margin:
        return FAILS
    return INCONCLUSIVE


def verdict_within(ci: dict, margin: float) -> str:
    """One-sample claim that a quantity is close to 0: within ``margin`` holds, beyond it does not."""
    if ci["n"] < 2 or math.isnan(ci["lo"]):
        return INCONCLUSIVE
    if -margin < ci["lo"] and ci["hi"] < margin:
        return HOLDS
    if ci["lo"] > margin or ci["hi"] < -margin:
        return FAILS
    return INCONCLUSIVE


def input_scale(preprocessing: str) -> str:
    """The preprocessing without its BN layer: what the inputs look like to the first BN or Dense."""
    return {"bn_first": "none", "rescale_bn_first": "rescale"}.get(preprocessing, preprocessing)


def uses_bn(row: dict) -> bool:
    return row.get("preprocessing") in ("bn_first", "rescale_bn_first") or bool(row.get("hidden_bn"))


def healthy(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("status") == "ok"]


def _key(row: dict, ignore: set[str], derived: dict | None = None) -> tuple:
    base = tuple((f, repr(row.get(f))) for f in VARIANT_FIELDS if f not in ignore)
    extra = tuple((k, repr(fn(row))) for k, fn in (derived or {}).items())
    return base + extra + (("seed", row.get("seed")),)


def paired(rows: list[dict], metric: str, is_a, is_b, ignore: set[str], derived: dict | None = None) -> dict:
    """Differences ``metric(a) - metric(b)`` over runs matched on every field but ``ignore`` (and on seed)."""
    ok = [r for r in healthy(rows) if r.get(metric) is not None and math.isfinite(r[metric])]
    bs: dict[tuple, list] = {}
    for r in ok:
        if is_b(r):
            bs.setdefault(_key(r, ignore, derived), []).append(r)
    diffs, pairs = [], []
    for a in ok:
        if not is_a(a):
            continue
        for b in bs.get(_key(a, ignore, derived), []):
            if b is not a:
                diffs.append(a[metric] - b[metric])
                pairs.append((a["config"], b["config"]))
    a_configs = sorted({p[0] for p in pairs})
    b_configs = sorted({p[1] for p in pairs})
    return {**t_interval(diffs), "pairs": len(pairs), "a": a_configs, "b": b_configs, "diffs": diffs}


def _fmt(ci: dict, digits: int = 3) -> str:
    if ci["n"] == 0:
        return "no data"
    if math.isnan(ci["lo"]):
        return f"{ci['mean']:+.{digits}f} (n={ci['n']}, no interval)"
    return f"{ci['mean']:+.{digits}f} [{ci['lo']:+.{digits}f}, {ci['hi']:+.{digits}f}] (n={ci['n']})"


def _row(claim: str, verdict: str, evidence: str, ci: dict | None = None, **extra) -> dict:
    ci = ci or {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}
    return {
        "claim": claim,
        "text": CLAIMS[claim],
        "verdict": verdict,
        "estimate": ci["mean"],
        "lo": ci["lo"],
        "hi": ci["hi"],
        "n": ci["n"],
        "evidence": evidence,
        **extra,
    }


def _diverged_note(rows: list[dict], pred_a, pred_b, a: str, b: str) -> str:
    da = sum(1 for r in rows if pred_a(r) and r.get("status") == "diverged")
    db = sum(1 for r in rows if pred_b(r) and r.get("status") == "diverged")
    return f" Diverged runs: {da} {a}, {db} {b}." if da or db else ""


def _with_imbalance(rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        r = dict(r)
        g = r.get("grad_log10_ratio_mean")
        r["grad_imbalance"] = abs(g) if g is not None and math.isfinite(g) else None
        out.append(r)
    return out


def claim_1(rows):
    rows = _with_imbalance(rows)
    results = []
    for axis in ("initializer", "activation"):
        levels = sorted({r[axis] for r in healthy(rows)})
        for i, a in enumerate(levels):
            for b in levels[i + 1 :]:
                ci = paired(rows, "grad_imbalance", lambda r, a=a, x=axis: r[x] == a,
                            lambda r, b=b, x=axis: r[x] == b, {axis})  # fmt: skip
                if ci["pairs"]:
                    results.append((f"{axis} {a} vs {b}", ci))
    if not results:
        return _row("1", UNTESTED, "needs runs that differ only in initializer or activation")
    parts = [f"abs(log10 first/last gradient-norm ratio), {label}: {_fmt(ci)}" for label, ci in results]
    if any(ci["n"] >= 2 and not math.isnan(ci["lo"]) and (ci["lo"] > 0 or ci["hi"] < 0) for _, ci in results):
        verdict = HOLDS
    elif all(ci["n"] >= 2 and -GRAD_MARGIN < ci["lo"] and ci["hi"] < GRAD_MARGIN for _, ci in results):
        verdict = FAILS
    else:
        verdict = INCONCLUSIVE
    best = max(results, key=lambda t: abs(t[1]["mean"]))[1]
    return _row("1", verdict, "; ".join(parts), best)


def claim_2(rows):
    def is_relu(r):
        return r["activation"] == "relu"

    def is_variant(r):
        return r["activation"] in RELU_VARIANTS

    ci = paired(rows, "dead_fraction", is_relu, is_variant, {"activation"})
    if not ci["pairs"]:
        return _row("2", UNTESTED, "needs runs that differ only in relu vs. a ReLU variant (leaky_relu, elu, selu)")
    ev = f"dead-unit fraction, relu minus variant: {_fmt(ci)} over {ci['pairs']} pairs"
    return _row("2", verdict_improves(ci, ACC_MARGIN), ev, ci)


def claim_3(rows):
    def clipped(r):
        return r["clipping"] != "none"

    def unclipped(r):
        return r["clipping"] == "none"

    ci = paired(rows, "val_accuracy", clipped, unclipped, {"clipping", "clip_value"})
    if not ci["pairs"]:
        return _row("3", UNTESTED, "needs runs that differ only in gradient clipping")
    ev = f"val_accuracy, clipped minus unclipped: {_fmt(ci)}." + _diverged_note(rows, clipped, unclipped,
                                                                                 "clipped", "unclipped")  # fmt: skip
    return _row("3", verdict_improves(ci, ACC_MARGIN), ev, ci)


BN_IGNORE = {"preprocessing", "hidden_bn", "bn_momentum"}
BN_DERIVED = {"input_scale": lambda r: input_scale(r["preprocessing"])}


def _bn_contrast(rows, metric, claim, sign, margin, label, untested_hint):
    """BN vs. no BN on the same inputs; ``sign`` +1 when higher is better with BN, -1 when lower."""
    a, b = (uses_bn, lambda r: not uses_bn(r)) if sign > 0 else (lambda r: not uses_bn(r), uses_bn)
    if claim == "4a":  # a model that never learned cannot overfit: compare only runs that reached the target
        learned = [r for r in rows if r.get("epochs_to_target", 0) is not None]
        if len(learned) < len(rows):
            out = _bn_contrast(learned, metric, claim, sign, margin, label, untested_hint)
            if out["verdict"] == UNTESTED and paired(rows, metric, a, b, BN_IGNORE, BN_DERIVED)["pairs"]:
                out["verdict"], out["evidence"] = INCONCLUSIVE, "no pair in which both runs learned."
            left_out = len(rows) - len(learned)
            out["evidence"] += f" Left out {left_out} runs that never reached the learning-speed target."
            return out
    ci = paired(rows, metric, a, b, BN_IGNORE, BN_DERIVED)
    if not ci["pairs"]:
        return _row(claim, UNTESTED, untested_hint)
    who = "with BN minus without" if sign > 0 else "without BN minus with"
    ev = f"{label}, {who}: {_fmt(ci)} over {ci['pairs']} pairs." + _diverged_note(
        rows, uses_bn, lambda r: not uses_bn(r), "with BN", "without BN"
    )
    return _row(claim, verdict_improves(ci, margin), ev, ci)


HINT_BN = (
    "needs runs with and without BN on the same inputs (e.g. hidden_bn true/false, or rescale vs. rescale_bn_first)"
)


def claim_4a(rows):
    return _bn_contrast(rows, "gen_gap_accuracy", "4a", -1, ACC_MARGIN, "train - val accuracy gap", HINT_BN)


def _epochs_needed(rows: list[dict]) -> list[dict]:
    """Rows with ``epochs_needed``: epochs to the target, or (censored) one more than the run trained."""
    out = []
    for r in rows:
        if "epochs_to_target" in r:
            e = r["epochs_to_target"]
            r = {**r, "epochs_needed": e if e is not None else (r.get("epochs_run") or 0) + 1}
        out.append(r)
    return out


def claim_4b(rows):
    """Faster learning shows as a higher accuracy after epoch 1 or as fewer epochs to the target."""
    first = _bn_contrast(rows, "val_accuracy_epoch1", "4b", +1, ACC_MARGIN, "val_accuracy after epoch 1", HINT_BN)
    if first["verdict"] == UNTESTED:
        return first
    speed = _bn_contrast(_epochs_needed(rows), "epochs_needed", "4b", -1, 0.5,
                         "epochs to the learning-speed target (not reached: epochs + 1)", HINT_BN)  # fmt: skip
    if speed["verdict"] == UNTESTED:
        return first
    verdicts = {first["verdict"], speed["verdict"]}
    verdict = HOLDS if HOLDS in verdicts else FAILS if verdicts == {FAILS} else INCONCLUSIVE
    head = speed if speed["verdict"] == HOLDS else first
    return {**head, "verdict": verdict, "evidence": first["evidence"] + " " + speed["evidence"]}


def claim_4c(rows):
    bn_rows = [r for r in healthy(rows) if uses_bn(r) and r.get("mode_gap_accuracy") is not None]
    if not bn_rows:
        return _row("4c", UNTESTED, "needs variants with a BatchNormalization layer")
    per_config = {}
    for r in bn_rows:
        per_config.setdefault(r["config"], []).append(r)
    verdicts, parts, worst = [], [], None
    for config, rs in sorted(per_config.items()):
        ci = t_interval([r["mode_gap_accuracy"] for r in rs])
        err = t_interval([r.get("bn_first/mean_err_std") for r in rs])
        v = verdict_within(ci, MODE_GAP_MARGIN)
        verdicts.append(v)
        extra = f", moving-mean error {err['mean']:.2f} std" if err["n"] else ""
        parts.append(f"{config}: train-mode minus inference-mode accuracy {_fmt(ci)}{extra} -> {v}")
        if worst is None or abs(ci["mean"]) > abs(worst["mean"]):
            worst = ci
    verdict = FAILS if FAILS in verdicts else HOLDS if all(v == HOLDS for v in verdicts) else INCONCLUSIVE
    return _row("4c", verdict, "; ".join(parts), worst)


def claim_4d(rows):
    return _bn_contrast(_with_imbalance(rows), "grad_imbalance", "4d", -1, GRAD_MARGIN,
                        "abs(log10 first/last gradient-norm ratio)", HINT_BN)  # fmt: skip


def claim_4e(rows):
    subs = []
    momenta = sorted({r["bn_momentum"] for r in rows if r.get("preprocessing") == "bn_first"}, reverse=True)
    for m in momenta:
        for ref in SCALERS:

            def cand(r, m=m):
                return r["preprocessing"] == "bn_first" and r["bn_momentum"] == m

            def refp(r, ref=ref):
                return r["preprocessing"] == ref

            ci = paired(rows, "val_accuracy", cand, refp, {"preprocessing", "bn_momentum"})
            note = ""
            if not ci["pairs"]:  # e.g. textbook: BN everywhere on raw pixels vs. scaled pixels without BN
                ci = paired(rows, "val_accuracy", cand, refp, {"preprocessing", "bn_momentum", "hidden_bn"})
                note = " (hidden BN differs too)"
            if ci["pairs"]:
                v = verdict_not_worse(ci, ACC_MARGIN)
                ev = f"bn_first (momentum {m:g}) minus {ref}{note}: val_accuracy {_fmt(ci)} -> {v}." + _diverged_note(
                    rows, cand, refp, "bn_first", ref
                )
                subs.append((m, ref, v, ci, ev))
    if not subs:
        return _row("4e", UNTESTED, "needs bn_first runs and standard/minmax/rescale runs that differ only there")
    head = next((s for s in subs if s[0] == 0.99 and s[1] == "standard"), subs[0])
    return _row("4e", head[2], " ".join(s[4] for s in subs), head[3])


def evaluate(rows: list[dict]) -> list[dict]:
    """One verdict row per claim of the design notes."""
    return [f(rows) for f in (claim_1, claim_2, claim_3, claim_4a, claim_4b, claim_4c, claim_4d, claim_4e)]


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
