"""Report: render comparison tables and run summaries as text."""

from __future__ import annotations

from bnpipe import settings


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:.1f}"
    return str(v)


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table of ``rows`` (dicts sharing keys)."""
    if not rows:
        return "_no rows_"
    cols = columns or list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def summary_text(summary: dict) -> str:
    """What `bnpipe run` prints: the table, then who holds the alias and why."""
    cols = ["rank", "variant", "status", "val_accuracy", "val_loss", "test_accuracy", "train_seconds"]
    out = [markdown_table(summary["table"], cols), ""]
    champ = summary.get("champion")
    if champ:
        verb = "now holds" if champ["alias_moved"] else "was registered; the alias did not move"
        out.append(
            f"Winner {champ['variant']}: {champ['model_name']} version {champ['version']} {verb} 'champion'."
            if champ["alias_moved"]
            else f"Winner {champ['variant']}: {champ['model_name']} version {champ['version']} {verb}."
        )
        out.append(f"Reason: {champ['reason']}")
        if champ.get("champion_version") is not None:
            out.append(f"'champion' -> {champ['model_name']} version {champ['champion_version']}")
    return "\n".join(out)


def load_summary(
    dag_id: str | None = None, dag_run_id: str | None = None, parent_run_id: str | None = None
) -> dict | None:
    """Rebuild a run's summary from MLflow alone: by DAG run id or by parent run id."""
    from bnpipe import compare, tracking

    client = tracking.connect()
    T = tracking.TAG
    if parent_run_id is None:
        exp = client.get_experiment_by_name(settings.experiment_name())
        if exp is None:
            return None
        found = tracking._find_runs(
            client, exp.experiment_id, {T + "dag_run_id": dag_run_id, T + "role": tracking.PARENT}
        )
        if dag_id:
            found = [r for r in found if r.data.tags.get(T + "dag_id") == dag_id]
        if not found:
            return None
        parent = found[0]
    else:
        parent = client.get_run(parent_run_id)
    tags, metric = parent.data.tags, parent.data.params.get("metric", "val_accuracy")
    results = []
    for r in tracking.variant_runs(client, parent.info.run_id):
        results.append({
            "name": r.data.tags.get(T + "variant", r.info.run_name),
            "run_id": r.info.run_id,
            "status": r.data.tags.get(T + "status", r.info.status.lower()),
            "metrics": dict(r.data.metrics),
            "train_key": r.data.tags.get(T + "train_key"),
        })  # fmt: skip
    results.sort(key=lambda r: r["name"])
    ranked = compare.rank([dict(r) for r in results], metric)
    summary = {
        "experiment_id": parent.info.experiment_id,
        "parent_run_id": parent.info.run_id,
        "dag_run_id": tags.get(T + "dag_run_id"),
        "status": parent.info.status,
        "metric": metric,
        "variants": [{k: r[k] for k in ("name", "run_id", "status", "metrics")} for r in results],
        "table": compare.table_rows(results, ranked),
        "failure": tags.get(T + "failure"),
        "champion": None,
    }
    if T + "registered_version" in tags:
        name = tracking.model_name(tags.get(T + "dataset", ""))
        version = int(tags[T + "registered_version"])
        try:
            holder = int(client.get_model_version_by_alias(name, compare.ALIAS).version)
        except Exception:  # noqa: BLE001 - alias removed since
            holder = None
        summary["champion"] = {
            "model_name": name,
            "version": version,
            "run_id": client.get_model_version(name, str(version)).run_id,
            "variant": tags.get(T + "winner"),
            "alias_moved": tags.get(T + "alias_moved") == "true",
            "reason": tags.get(T + "alias_reason"),
            "champion_version": holder,
        }
    return summary
