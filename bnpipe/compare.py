"""Compare: rank the variants, register the winner and decide whether the alias ``champion`` moves.

The alias moves only when the winner beats the current champion on the same data: if the
champion was trained on the same snapshot digest its recorded metric is used, otherwise the
champion is re-scored on this snapshot's validation split. A version is registered once per
training result (``bnpipe.train_key``), so retries and re-runs create no duplicates.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

from bnpipe import tracking

ALIAS = "champion"
# metric -> True when higher is better
METRICS = {"val_accuracy": True, "val_loss": False, "test_accuracy": True, "test_loss": False}


class NoHealthyVariant(RuntimeError):
    """Every variant diverged or failed: there is nothing to register."""


def rank(results: list[dict], metric: str = "val_accuracy") -> list[dict]:
    """Healthy results best first; ties go to the lower val_loss. Diverged ones are left out.

    With several seeds per configuration, configurations are ordered by their *mean* over
    seeds first (so one lucky seed cannot win), then the runs within a configuration.
    """
    from bnpipe.variants import config_name

    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not one of {', '.join(METRICS)}")
    higher = METRICS[metric]
    healthy = [r for r in results if r.get("status") == "ok" and metric in r.get("metrics", {})]
    by_config: dict[str, list[float]] = {}
    for r in healthy:
        by_config.setdefault(config_name(r["name"]), []).append(r["metrics"][metric])
    mean = {c: sum(vs) / len(vs) for c, vs in by_config.items()}

    def key(r):
        m = r["metrics"]
        v = m.get(metric, -math.inf if higher else math.inf)
        c = mean[config_name(r["name"])]
        return (-c if higher else c, -v if higher else v, m.get("val_loss", math.inf), r["name"])

    ranked = sorted(healthy, key=key)
    for i, r in enumerate(ranked, 1):
        r["rank"] = i
    return ranked


def table_rows(results: list[dict], ranked: list[dict]) -> list[dict]:
    """One flat row per variant, ranked ones first, for CSV and Markdown."""
    cols = ("val_accuracy", "val_loss", "test_accuracy", "accuracy", "loss", "train_seconds", "epochs_run")
    ranked_names = {r["name"] for r in ranked}
    ordered = ranked + [r for r in results if r["name"] not in ranked_names]
    rows = []
    for r in ordered:
        row = {"rank": r.get("rank", "-"), "variant": r["name"], "status": r.get("status", "?")}
        row.update({c: r.get("metrics", {}).get(c) for c in cols})
        row["run_id"] = r.get("run_id")
        rows.append(row)
    return rows


def better(a: float, b: float, metric: str) -> bool:
    return a > b if METRICS[metric] else a < b


def _versions_by_tag(client, name: str, key: str, value: str) -> list:
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except Exception:  # noqa: BLE001 - no such model yet
        return []
    return [v for v in versions if v.tags.get(key) == value]


def _wait_ready(client, version, timeout: float = 120.0):
    """The version once the registry reports it READY; the alias never points at a half-registered one."""
    import time

    deadline = time.monotonic() + timeout
    while version.status != "READY":
        if version.status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
            raise RuntimeError(f"model version {version.name} v{version.version} is {version.status}, not READY")
        time.sleep(0.5)
        version = client.get_model_version(version.name, version.version)
    return version


def _champion(client, name: str):
    try:
        return client.get_model_version_by_alias(name, ALIAS)
    except Exception:  # noqa: BLE001 - no model or no alias yet
        return None


def _log_full_model(client, winner: dict, snapshot: dict):
    """Log the winner's compact model.keras as an MLflow pyfunc model in its run; returns the model URI."""
    from bnpipe import serving
    from bnpipe.train import MODEL_ARTIFACT

    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(winner["run_id"], MODEL_ARTIFACT, tmp)
        return serving.log_model(winner["run_id"], local, snapshot, client.tracking_uri)


def _score_version(client, name: str, version, snapshot: dict, metric: str) -> float | None:
    """``metric`` of a registered version on this snapshot's validation split, or None if it cannot score it."""
    import keras

    from bnpipe.train import MODEL_ARTIFACT, evaluate

    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = client.download_artifacts(version.run_id, MODEL_ARTIFACT, tmp)
            model = keras.models.load_model(local)
            model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
            scored = evaluate(model, snapshot["path"], "val")
    except Exception:  # noqa: BLE001 - incompatible inputs, missing artifact: cannot compare
        return None
    return scored.get(metric)


def _interval(result: dict, key: str) -> tuple[float, float] | None:
    """The (low, high) interval of ``key`` when seeds > 1: ``result["interval"][key]`` or ``<key>_ci_low/high``."""
    iv = (result.get("interval") or {}).get(key)
    if iv is None:
        m = result.get("metrics", {})
        lo, hi = m.get(f"{key}_ci_low"), m.get(f"{key}_ci_high")
        iv = (lo, hi) if lo is not None and hi is not None else None
    return (float(iv[0]), float(iv[1])) if iv is not None else None


def _metric_text(result: dict, key: str) -> str:
    value = result.get("metrics", {}).get(key)
    text = f"{key} {value:.4f}" if value is not None else f"{key} n/a"
    iv = _interval(result, key)
    if iv:
        seeds = result.get("n_seeds") or result.get("seeds")
        text += f" (95% interval {iv[0]:.4f}..{iv[1]:.4f}" + (f" over {seeds} seeds)" if seeds else ")")
    return text


def model_card(snapshot: dict, winner: dict, runner_up: dict | None, metric: str, reason: str, link: str) -> str:
    """The model version's description: data, winner, runner-up, why the alias moved or not, the DAG run."""
    keys = [metric] + [k for k in ("val_loss", "test_accuracy") if k != metric]
    lines = [
        f"**Dataset** `{snapshot['dataset']}`, snapshot digest `{snapshot['digest']}` "
        f"({snapshot['n_train']} train / {snapshot['n_val']} val / {snapshot['n_test']} test rows).",
        f"**Winner** `{winner['name']}`: " + ", ".join(_metric_text(winner, k) for k in keys) + ".",
        f"**Runner-up** `{runner_up['name']}`: " + ", ".join(_metric_text(runner_up, k) for k in keys) + "."
        if runner_up
        else "**Runner-up**: none (a single healthy variant).",
        f"**Alias `{ALIAS}`**: {reason}",
        f"**Airflow DAG run**: {link or 'n/a (not run by Airflow)'}",
        "Takes raw inputs: scaling is inside the model. Use it with `bnpipe score` or the `bnpipe_score` DAG, "
        "or serve it with `bnpipe serve`.",
    ]
    return "\n\n".join(lines)


def register(client, ranked: list[dict], snapshot: dict, metric: str, link: str = "") -> dict:
    """Register the winner (once per train_key) and move ``champion`` if it beats the current one."""
    if not ranked:
        raise NoHealthyVariant("every variant diverged or failed; no model registered and the alias did not move")
    winner, runner_up = ranked[0], (ranked[1] if len(ranked) > 1 else None)
    name = tracking.model_name(snapshot["dataset"])
    T = tracking.TAG
    try:
        client.get_registered_model(name)
    except Exception:  # noqa: BLE001 - first registration
        client.create_registered_model(name, description=f"bnpipe champion models for {snapshot['dataset']}")
    existing = _versions_by_tag(client, name, T + "train_key", winner["train_key"])
    value = winner["metrics"][metric]
    if existing:
        version = existing[0]
    else:
        uri = _log_full_model(client, winner, snapshot)
        tags = {
            T + "train_key": winner["train_key"],
            T + "data_digest": snapshot["digest"],
            T + "variant": winner["name"],
            T + "metric": metric,
            T + "metric_value": repr(value),
        }
        # A tracking server accepts a "models:/m-..." source only together with the logged model's id.
        model_id = uri.removeprefix("models:/") if uri.startswith("models:/m-") else None
        version = client.create_model_version(name, uri, run_id=winner["run_id"], tags=tags, model_id=model_id)
        version = _wait_ready(client, version)
    current = _champion(client, name)
    if current is None:
        moved, reason = True, f"no champion yet; version {version.version} becomes {ALIAS}"
    elif current.version == version.version:
        moved, reason = False, f"version {version.version} already holds {ALIAS}"
    else:
        if current.tags.get(T + "data_digest") == snapshot["digest"] and current.tags.get(T + "metric") == metric:
            theirs = float(current.tags[T + "metric_value"])
            how = "recorded on the same snapshot"
        else:
            theirs = _score_version(client, name, current, snapshot, metric)
            how = f"re-scored on snapshot {snapshot['digest']}"
        if theirs is None:
            moved, reason = (
                True,
                f"champion v{current.version} cannot score this data; version {version.version} replaces it",
            )
        elif better(value, theirs, metric):
            moved, reason = True, f"{metric} {value:.4f} beats champion v{current.version}'s {theirs:.4f} ({how})"
        else:
            moved, reason = (
                False,
                f"{metric} {value:.4f} does not beat champion v{current.version}'s {theirs:.4f} ({how})",
            )
    if moved:
        client.set_registered_model_alias(name, ALIAS, version.version)
    client.update_model_version(
        name, version.version, description=model_card(snapshot, winner, runner_up, metric, reason, link)
    )
    return {
        "model_name": name,
        "version": int(version.version),
        "run_id": winner["run_id"],
        "variant": winner["name"],
        "alias_moved": moved,
        "reason": reason,
        "champion_version": int(version.version) if moved else (int(current.version) if current else None),
    }


def log_table(client, parent_run_id: str, rows: list[dict], out_dir: str | Path) -> dict:
    """Write the comparison as CSV and Markdown and log both to the parent run."""
    import pandas as pd

    from bnpipe.report import markdown_table

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / "comparison.csv", out / "comparison.md"
    pd.DataFrame(rows).to_csv(csv_path, index=False)
    md_path.write_text(markdown_table(rows) + "\n")
    client.log_artifact(parent_run_id, str(csv_path), "comparison")
    client.log_artifact(parent_run_id, str(md_path), "comparison")
    return {"csv": str(csv_path), "markdown": str(md_path)}


def conclude(results: list[dict], snapshot: dict, parent_run_id: str, metric: str, link: str = "") -> dict:
    """Rank, log the table, register and record the decision on the parent run. Returns the summary."""
    client = tracking.connect()
    results = [r for r in results if r]
    ranked = rank(results, metric)
    rows = table_rows(results, ranked)
    T = tracking.TAG
    with tempfile.TemporaryDirectory() as tmp:
        log_table(client, parent_run_id, rows, tmp)
    try:
        champion = register(client, ranked, snapshot, metric, link)
    except NoHealthyVariant as exc:
        client.set_tag(parent_run_id, T + "failure", str(exc))
        client.set_terminated(parent_run_id, status="FAILED")
        raise
    client.set_tag(parent_run_id, T + "winner", champion["variant"])
    client.set_tag(parent_run_id, T + "alias_moved", str(champion["alias_moved"]).lower())
    client.set_tag(parent_run_id, T + "alias_reason", champion["reason"])
    client.set_tag(parent_run_id, T + "registered_version", str(champion["version"]))
    tracking.log_metrics(client, parent_run_id, {f"best_{metric}": ranked[0]["metrics"][metric]})
    client.set_terminated(parent_run_id, status="FINISHED")
    parent = client.get_run(parent_run_id)
    return {
        "experiment_id": parent.info.experiment_id,
        "parent_run_id": parent_run_id,
        "metric": metric,
        "variants": [
            {"name": r["name"], "run_id": r["run_id"], "status": r.get("status"), "metrics": r.get("metrics", {})}
            for r in results
        ],
        "table": rows,
        "champion": champion,
    }
