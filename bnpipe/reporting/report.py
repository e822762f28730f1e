"""Report: the claims report of a run (Markdown, HTML, ``verdicts.json``) and the README's findings table.

Everything is rebuilt from MLflow alone: the run's summary (``bnpipe.reporting.summaries``), each
variant run's fields and metric histories, and from them the claims' evidence and verdicts.
"""

from __future__ import annotations

import json

from bnpipe.base import settings
from bnpipe.base.render import markdown_table
from bnpipe.core import claims
from bnpipe.mlflow_edge.summary import RunSummary

REPORT_DIR = "report"
HISTORY_KEYS = ("val_accuracy", "accuracy", "loss", "val_loss")
HISTORY_PREFIXES = ("grad_norm/", "bn_first/moving_", "bn_first/true_")
CONFIG_METRICS = [
    "val_accuracy_epoch1", "val_accuracy", "val_accuracy_recalibrated", "test_accuracy", "gen_gap_accuracy",
    "gen_gap_loss", "grad_log10_rms_ratio_initial", "grad_abs_log10_rms_ratio_mean", "dead_fraction",
    "mode_gap_accuracy", "bn_first/mean_err_std", "loss_epoch1", "epochs_to_target", "steps_to_target",
    "epoch_seconds", "samples_per_second",
]  # fmt: skip
VERDICTS_FILE = "verdicts.json"


def _param(raw: str | None):
    """A run param back to a Python value (params are stored as strings)."""
    import json

    if raw is None or raw == "None":
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return {"True": True, "False": False}.get(raw, raw)


def load_runs(client, summary: RunSummary) -> list[dict]:
    """One row per variant run: variant fields, config, status, final metrics and metric histories."""
    from bnpipe.core.variants import config_name

    runs = []
    for v in summary.variants:
        r = client.get_run(v.run_id)
        fields = {f: _param(r.data.params.get(f)) for f in (*claims.VARIANT_FIELDS, "seed")}
        if isinstance(fields.get("hidden"), list):
            fields["hidden"] = tuple(fields["hidden"])
        keys = [k for k in r.data.metrics if k in HISTORY_KEYS or k.startswith(HISTORY_PREFIXES)]
        history = {k: [(m.step, m.value) for m in client.get_metric_history(v.run_id, k)] for k in keys}
        runs.append({
            **fields, "name": v.name, "config": config_name(v.name), "run_id": v.run_id,
            "status": v.status, "metrics": dict(r.data.metrics), "history": history,
        })  # fmt: skip
    return runs


def _evidence(runs: list[dict], target: float | None) -> tuple[list[dict], float | None]:
    """Claim rows (variant fields + final metrics + learning speed) and the learning-speed target used."""
    vals = {r["run_id"]: [v for _, v in sorted(r["history"].get("val_accuracy", []))] for r in runs}
    rows = [{**{k: v for k, v in r.items() if k not in ("metrics", "history")}, **r["metrics"]} for r in runs]
    target = target or claims.default_target(vals, rows)
    for row in rows:
        e = claims.epochs_to_target(vals[row["run_id"]], target) if target else None
        row["epochs_to_target"] = e
        spe = row.get("steps_per_epoch")
        row["steps_to_target"] = e * spe if e is not None and spe else None
    return rows, target


METHOD = (
    "Method: the unit of replication is the seed; each seed draws its own stratified train/validation split and "
    "its own initialization, and the test split stays fixed. A comparison takes one difference per seed (the mean "
    "over the grid cells that differ only in the factor under test), so n counts seeds and no run is paired twice. "
    "Each difference is tested with a paired t-test (scipy.stats.ttest_1samp): one-sided at 0.025 for 'improves' "
    "and non-inferiority 'no worse than' claims, two-sided at 0.05 for 'differs', matching the 95% interval shown. "
    "Margins are stated per comparison; an accuracy margin is never below one validation example. The comparisons "
    "of one claim are corrected with Holm's method; the claim's rule says how they combine (any / all / headline). "
    f"Fewer than {claims.MIN_REPLICATES} seeds, or identical differences on every seed, give 'inconclusive'. "
    "Diverged runs count as chance accuracy for claims 3 and 4e and are left out of the others. "
    "Machine-readable: verdicts.json."
)


def _fmt_p(c: dict) -> str:
    ph, pf = c.get("p_holds_holm"), c.get("p_fails_holm")
    return f"{ph:.3g} / {pf:.3g}" if ph is not None and pf is not None else ""


def _fmt_ci(mean, lo, hi, digits=3) -> str:
    import math

    if mean is None or not math.isfinite(mean):
        return ""
    if lo is None or not math.isfinite(lo):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def build_claims_report(ref: str, out_dir, log_to_mlflow: bool = False, target: float | None = None) -> dict:
    """Write report.md, report.html and the PNG plots for a past run into ``out_dir``; returns their paths.

    ``ref`` is an MLflow parent run id or an Airflow DAG run id. Everything is read back from MLflow.
    With ``log_to_mlflow`` the files go to the parent run's ``report/`` artifacts, and each variant
    run gets its learning speed (``epochs_to_target``, ``steps_to_target``).
    """
    from datetime import UTC, datetime
    from pathlib import Path

    from bnpipe.mlflow_edge import tracking
    from bnpipe.reporting import plots
    from bnpipe.reporting.summaries import resolve_summary

    summary = resolve_summary(ref)
    if summary is None:
        raise LookupError(
            f"no bnpipe run {ref!r} in MLflow at {settings.tracking_uri()}: give a parent run id or a DAG run id "
            "(see `mlflow ui`, experiment bnpipe)"
        )
    client = tracking.connect()
    parent = client.get_run(summary.parent_run_id)
    params = {k: _param(v) for k, v in parent.data.params.items()}
    runs = load_runs(client, summary)
    rows, target = _evidence(runs, target or params.get("target_val_accuracy"))
    verdicts = claims.evaluate(rows)
    machine = claims.verdicts_json(verdicts)
    machine.update(parent_run_id=summary.parent_run_id, dag_run_id=summary.dag_run_id,
                   dataset=params.get("dataset"), grid=params.get("grid"), epochs=params.get("epochs"),
                   seeds=params.get("seeds"))  # fmt: skip
    configs = claims.aggregate(rows, CONFIG_METRICS)
    order = {c["config"]: i for i, c in enumerate(claims.rank_configs(rows, "val_accuracy"))}
    configs.sort(key=lambda c: (order.get(c["config"], len(order)), c["config"]))
    effects = claims.main_effects(rows, "val_accuracy")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = [
        ("Learning curves per variant", plots.learning_curves(runs, out / "learning_curves.png")),
        ("Gradient norm per layer over training", plots.grad_norms(runs, out / "grad_norms.png")),
        ("Final validation accuracy per variant, 95% interval", plots.final_metric(configs, runs, "val_accuracy",
                                                                                  out / "final_val_accuracy.png")),
        ("First BN layer: moving statistics vs. true statistics", plots.bn_stats(runs, out / "bn_stats.png")),
    ]  # fmt: skip
    images = [(caption, p) for caption, p in images if p]

    champ = summary.champion
    blocks = [
        ("h1", f"bnpipe claims report: {params.get('dataset', '?')}, grid {params.get('grid', '?')}"),
        ("p", f"DAG run `{summary.dag_run_id}`, MLflow parent run `{summary.parent_run_id}`. "
              f"{params.get('epochs')} epochs, batch {params.get('batch_size')}, {params.get('seeds')} seed(s) per "
              f"configuration, {len(runs)} runs ({sum(r['status'] != 'ok' for r in runs)} not healthy). "
              f"Rebuilt {datetime.now(UTC):%Y-%m-%d %H:%M} UTC."),
        ("h2", "Verdicts"),
        ("table", [{"claim": v["claim"], "verdict": v["verdict"], "claim (design notes)": v["text"],
                    "headline effect [95% CI]": _fmt_ci(v["estimate"], v["lo"], v["hi"]), "n": v["n"],
                    "margin": f"{v['margin']:.3g}" if v["n"] else "", "rule": v["rule"],
                    "why inconclusive": v["reason"]} for v in verdicts]),
        ("p", METHOD),
        ("h2", "Every comparison"),
        ("table", [{"claim": v["claim"], "comparison": c["label"], "metric": c["metric_text"], "n": c["n"],
                    "estimate [95% CI]": _fmt_ci(c["estimate"], c["lo"], c["hi"]), "margin": f"{c['margin']:.3g}",
                    "test": c["test"], "Holm p (holds / does not hold)": _fmt_p(c),
                    "verdict": c["verdict"] + (" (no variance)" if c["reason"].startswith("no variance") else ""),
                    "detectable (80% power)": _fmt_ci(c.get("detectable"), None, None)}
                   for v in verdicts for c in v["comparisons"]]
         or [{"claim": "-", "comparison": "this grid tests no claim"}]),
        ("h2", "Champion"),
        ("p", (f"Winner `{champ.variant}`: {champ.model_name} version {champ.version}; "
               f"alias moved: {champ.alias_moved}. Reason: {champ.reason}. Configurations are "
               "ranked on their mean over seeds.") if champ else f"No champion: {summary.failure}"),
        ("h2", "Configurations (mean [95% CI] over seeds)"),
        ("table", [{"config": c["config"], "seeds ok": f"{c['healthy']}/{c['seeds']}",
                    "val acc epoch 1": _fmt_ci(c["val_accuracy_epoch1"], c["val_accuracy_epoch1_lo"],
                                               c["val_accuracy_epoch1_hi"]),
                    "val acc final": _fmt_ci(c["val_accuracy"], c["val_accuracy_lo"], c["val_accuracy_hi"]),
                    "test acc": _fmt_ci(c["test_accuracy"], None, None),
                    "gap train-val acc": _fmt_ci(c["gen_gap_accuracy"], None, None),
                    "val acc recalibrated": _fmt_ci(c["val_accuracy_recalibrated"], None, None),
                    "log10 RMS grad ratio step 0": _fmt_ci(c["grad_log10_rms_ratio_initial"], None, None, 2),
                    "dead units": _fmt_ci(c["dead_fraction"], None, None, 2),
                    "train-infer acc": _fmt_ci(c["mode_gap_accuracy"], None, None),
                    "epochs to target": _fmt_ci(c["epochs_to_target"], None, None, 1),
                    "samples/s": _fmt_ci(c["samples_per_second"], None, None, 0)} for c in configs]),
        ("p", f"Learning-speed target: validation accuracy {target:.4f}." if target else "No learning-speed target."),
        ("h2", "Main effects (validation accuracy by grid axis, healthy runs)"),
        ("table", [{"axis": e["axis"], "level": e["level"], "mean [95% CI]": _fmt_ci(e["mean"], e["lo"], e["hi"]),
                    "runs": e["runs"], "not healthy": e["not_ok"]} for e in effects]
         or [{"axis": "-", "level": "the grid varies no axis", "mean [95% CI]": "", "runs": "", "not healthy": ""}]),
        ("h2", "Plots"),
        *[("img", caption, p) for caption, p in images],
    ]  # fmt: skip
    (out / VERDICTS_FILE).write_text(json.dumps(machine, indent=1))
    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text(render_markdown(blocks))
    html_path.write_text(render_html(blocks))
    files = {"markdown": str(md_path), "html": str(html_path), "verdicts": str(out / VERDICTS_FILE),
             "images": [str(p) for _, p in images]}  # fmt: skip
    if log_to_mlflow:
        client.log_artifacts(summary.parent_run_id, str(out), REPORT_DIR)
        if target:
            client.set_tag(summary.parent_run_id, tracking.TAG + "target_val_accuracy", f"{target:.4f}")
        for row in rows:
            speed = {k: row[k] for k in ("epochs_to_target", "steps_to_target") if row.get(k) is not None}
            if speed:
                tracking.log_metrics(client, row["run_id"], speed)
    return {"summary": summary, "verdicts": verdicts, "configs": configs, "effects": effects, "files": files}


def render_markdown(blocks: list[tuple]) -> str:
    out = []
    for kind, *rest in blocks:
        if kind == "h1":
            out.append(f"# {rest[0]}")
        elif kind == "h2":
            out.append(f"## {rest[0]}")
        elif kind == "p":
            out.append(rest[0])
        elif kind == "table":
            out.append(markdown_table([{k: str(v).replace("|", "/") for k, v in r.items()} for r in rest[0]]))
        elif kind == "img":
            out.append(f"![{rest[0]}]({rest[1].name})")
    return "\n\n".join(out) + "\n"


def render_html(blocks: list[tuple]) -> str:
    """A self-contained HTML page: the images are embedded as base64 data URIs."""
    import base64
    import html
    import re

    def inline(text: str) -> str:
        return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(text))

    body = []
    for kind, *rest in blocks:
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{inline(rest[0])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{inline(rest[0])}</p>")
        elif kind == "table" and rest[0]:
            cols = list(rest[0][0])
            head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
            rows = "".join(
                "<tr>" + "".join(f'<td class="{html.escape(str(r.get(c, "")).replace(" ", "-"))}">'
                                 f"{inline(str(r.get(c, '')))}</td>" for c in cols) + "</tr>"
                for r in rest[0]
            )  # fmt: skip
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "img":
            data = base64.b64encode(rest[1].read_bytes()).decode()
            body.append(f'<figure><img alt="{html.escape(rest[0])}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{html.escape(rest[0])}</figcaption></figure>")  # fmt: skip
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 6px;"
        "vertical-align:top}th{background:#f3f3f3}td.holds{background:#d9f2d9}td.does-not-hold{background:#f7d6d6}"
        "td.inconclusive{background:#fff4cc}img{max-width:100%}code{font-size:12px}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>bnpipe claims report</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )


def publish_claims_report(parent_run_id: str) -> dict:
    """Build the claims report and log it to the parent run's ``report/`` artifacts; returns the verdicts.

    A report that cannot be built does not undo the comparison: the error is recorded on the
    parent run as the tag ``bnpipe.report_error`` and returned, and ``bnpipe report`` can retry.
    """
    import tempfile
    import traceback

    from bnpipe.mlflow_edge import tracking

    try:
        with tempfile.TemporaryDirectory() as tmp:
            built = build_claims_report(parent_run_id, tmp, log_to_mlflow=True)
    except Exception as exc:  # noqa: BLE001 - the champion decision stands without its report
        traceback.print_exc()
        tracking.connect().set_tag(parent_run_id, tracking.TAG + "report_error", f"{type(exc).__name__}: {exc}"[:5000])
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"verdicts": [{"claim": v["claim"], "verdict": v["verdict"], "sentence": claims.sentence(v)}
                         for v in built["verdicts"]], "artifacts": REPORT_DIR}  # fmt: skip


def verdict_text(verdicts: list[dict]) -> str:
    """One line per claim, for logs and the CLI: the verdict and its headline numbers when there are any.

    ``verdicts``: ``claims.evaluate``'s rows, rows that carry their ``sentence``, or the ``claims`` of
    verdicts.json (``claims.verdicts_json``). Claims this grid does not test share one line.
    """
    lines, untested = [], []
    for v in verdicts:
        if v.get("verdict") == claims.UNTESTED:
            untested.append(v["claim"])
        else:
            lines.append(v.get("sentence") or claims.sentence(_from_json(v) if "lo" not in v else v))
    if untested:
        lines.append(f"claim{'s' * (len(untested) > 1)} {', '.join(untested)}: {claims.UNTESTED}")
    return "\n".join(lines)


def _from_json(v: dict) -> dict:
    """A claim of verdicts.json back in the shape ``claims.sentence`` takes (null numbers are NaN)."""
    import math

    def num(x):
        return math.nan if x is None else x

    comps = [{**c, "estimate": num(c["estimate"]), "lo": num((c.get("interval") or [None, None])[0]),
              "hi": num((c.get("interval") or [None, None])[1]), "margin": num(c["margin"]),
              "p_holds_holm": c.get("p_adjusted"), "p_fails_holm": c.get("p_does_not_hold_adjusted"),
              "detectable": c.get("detectable_difference")} for c in v.get("comparisons", [])]  # fmt: skip
    return {**v, "comparisons": comps}


# --- the README's findings: one table from the committed results' verdicts.json -----------------------

FINDINGS = (  # committed result folders under docs/results/, in the order the README shows them
    "init-activation", "dying-relu", "exploding", "overfit", "deep-sigmoid", "textbook",
    "tabular-scales/breast_cancer-5-epochs", "tabular-scales/breast_cancer-100-epochs",
    "tabular-scales/wine-5-epochs", "tabular-scales/wine-100-epochs",
)  # fmt: skip
FINDINGS_LABELS = {
    "1": "1 init/activation", "2": "2 dying ReLU", "3": "3 clipping", "4a": "4a overfitting", "4b": "4b speed",
    "4c": "4c moving stats", "4d": "4d gradients", "4e": "4e replaces scaling", "R": "R recalibration",
}  # fmt: skip


def findings_table(results_dir, folders=FINDINGS, link_prefix: str = "docs/results/") -> str:
    """A claim-by-result table of verdicts, read from each folder's ``verdicts.json`` (– : not tested).

    The README embeds this table between ``<!-- findings -->`` markers; a test checks it is current.
    """
    from pathlib import Path

    docs = {f: json.loads((Path(results_dir) / f / VERDICTS_FILE).read_text()) for f in folders}
    rows = []
    for claim, label in FINDINGS_LABELS.items():
        row = {"claim": label}
        for f in folders:
            v = next(c for c in docs[f]["claims"] if c["claim"] == claim)
            row[f"[{f.removeprefix('tabular-scales/')}]({link_prefix}{f}/)"] = (
                "–" if v["verdict"] == claims.UNTESTED else v["verdict"]
            )
        rows.append(row)
    return markdown_table(rows)


if __name__ == "__main__":  # python -m bnpipe.reporting.report docs/results: print the README's findings table
    import sys

    print(findings_table(sys.argv[1] if len(sys.argv) > 1 else "docs/results"))
