"""Run summaries: a DAG run's ``RunSummary`` rebuilt from MLflow alone, and rendered.

- Loading: ``summary_of`` turns a parent run into its summary (the variant runs ranked again, the
  decision ``compare`` recorded in the parent's tags, who holds ``champion`` now). ``find_parent``,
  ``load_summary`` and ``resolve_summary`` find the parent run by DAG run id or parent run id.
- Rendering: ``cells`` (the table's rows as display strings), ``markdown`` (the table and the
  champion lines), ``text`` (the closing summary of `bnpipe run` and `bnpipe runs show`) and
  ``html`` (the Airflow plugin's results tab).
"""

from __future__ import annotations

import html as _html
from collections.abc import Callable

from bnpipe.base import settings
from bnpipe.base.render import cell, markdown_table
from bnpipe.mlflow_edge.compare import AWAITING, PENDING
from bnpipe.mlflow_edge.summary import Champion, RunSummary, variant_rows

# The comparison columns a person reads (comparison.csv has them all).
COLUMNS = ("rank", "variant", "status", "val_accuracy", "val_loss", "test_accuracy", "train_seconds")


# --- loading ---------------------------------------------------------------------------------------


def _tag(run, key: str, default: str | None = None) -> str | None:
    """The run's bnpipe tag ``key`` (``bnpipe.<key>``)."""
    from bnpipe.mlflow_edge import tracking

    return run.data.tags.get(tracking.TAG + key, default)


def find_parent(client, dag_id: str | None = None, dag_run_id: str | None = None):
    """The parent run of DAG run ``dag_run_id`` (of DAG ``dag_id`` when given); without a DAG run id,
    the latest parent run of ``dag_id``. None when there is none (or no experiment yet)."""
    from bnpipe.mlflow_edge import tracking

    exp = client.get_experiment_by_name(settings.experiment_name())
    if exp is None:
        return None
    wanted = {"role": tracking.PARENT, "dag_id": dag_id, "dag_run_id": dag_run_id}
    tags = {tracking.TAG + k: v for k, v in wanted.items() if v is not None}
    found = tracking.find_runs(client, exp.experiment_id, tags)
    return max(found, key=lambda r: r.info.start_time or 0, default=None)


def _holder(client, model_name: str) -> int | None:
    """The version holding ``champion`` now; None when the model or its alias was removed since."""
    from mlflow.exceptions import MlflowException

    from bnpipe.mlflow_edge.compare import ALIAS, MISSING

    try:
        model = client.get_registered_model(model_name)
    except MlflowException as exc:
        if exc.error_code != MISSING:
            raise
        return None
    held = model.aliases.get(ALIAS)
    return int(held) if held is not None else None


def _champion(client, parent) -> Champion | None:
    """The registration outcome compare recorded on the parent run; None before (or without) one."""
    from bnpipe.mlflow_edge import tracking

    version = _tag(parent, "registered_version")
    if version is None:
        return None
    name = tracking.model_name(_tag(parent, "dataset", ""))
    return Champion(
        model_name=name,
        version=int(version),
        run_id=client.get_model_version(name, version).run_id,
        variant=_tag(parent, "winner"),
        alias_moved=_tag(parent, "alias_moved") == "true",
        reason=_tag(parent, "alias_reason"),
        champion_version=_holder(client, name),
        awaiting_approval=_tag(parent, "approval") == PENDING,
    )


def summary_of(client, parent) -> RunSummary:
    """The summary of the DAG run whose MLflow parent run is ``parent`` (an MLflow ``Run``).

    The variants (by name) are ranked again as compare ranks them, so a run still training has its
    table too; the champion outcome is read from the parent's tags.
    """
    from bnpipe.mlflow_edge import compare, tracking

    metric = parent.data.params.get("metric", "val_accuracy")
    results = sorted(
        (
            {"name": _tag(r, "variant", r.info.run_name), "run_id": r.info.run_id,
             "status": _tag(r, "status", r.info.status.lower()), "metrics": dict(r.data.metrics)}
            for r in tracking.variant_runs(client, parent.info.run_id)
        ),
        key=lambda r: r["name"],
    )  # fmt: skip
    ranked = compare.rank([dict(r) for r in results], metric)
    return RunSummary(
        experiment_id=parent.info.experiment_id,
        parent_run_id=parent.info.run_id,
        metric=metric,
        variants=variant_rows(results, ranked),
        dag_run_id=_tag(parent, "dag_run_id"),
        status=parent.info.status,
        failure=_tag(parent, "failure"),
        champion=_champion(client, parent),
    )


def load_summary(
    dag_id: str | None = None, dag_run_id: str | None = None, parent_run_id: str | None = None
) -> RunSummary | None:
    """A run's summary from MLflow alone: by parent run id, or by DAG run id (and DAG id). None: no such run."""
    from bnpipe.mlflow_edge import tracking

    client = tracking.connect()
    parent = client.get_run(parent_run_id) if parent_run_id else find_parent(client, dag_id, dag_run_id)
    return summary_of(client, parent) if parent is not None else None


def resolve_summary(ref: str) -> RunSummary | None:
    """The summary of a past run, by MLflow parent run id or by Airflow DAG run id."""
    import re

    from mlflow.exceptions import MlflowException

    from bnpipe.mlflow_edge.compare import MISSING

    if re.fullmatch(r"[0-9a-f]{32}", ref):
        try:
            return load_summary(parent_run_id=ref)
        except MlflowException as exc:  # no such run: try it as a DAG run id
            if exc.error_code != MISSING:
                raise
    return load_summary(dag_run_id=ref)


# --- rendering ---------------------------------------------------------------------------------------


def cells(summary: RunSummary, top: int | None = None) -> list[dict[str, str]]:
    """The comparison table's rows (the ``top`` first), ``COLUMNS`` only, as display strings."""
    rows = summary.table[:top] if top else summary.table
    return [{c: cell(v) for c, v in row.table_row().items() if c in COLUMNS} for row in rows]


def champion_lines(summary: RunSummary) -> list[str]:
    """Who won, whether ``champion`` moved and why, who holds it; or why there is no champion."""
    champ = summary.champion
    if champ is None:
        return [f"No champion: {summary.failure}"] if summary.failure else []
    won = f"Winner {champ.variant}: {champ.model_name} version {champ.version}"
    if champ.alias_moved:
        lines = [f"{won} now holds 'champion'."]
    elif champ.awaiting_approval:
        lines = [f"{won} was registered; 'champion' moves to it once a person approves (Airflow: Required Actions)."]
    else:
        lines = [f"{won} was registered; the alias did not move."]
    lines.append(f"Reason: {champ.reason}")
    if champ.champion_version is not None:
        lines.append(f"'champion' -> {champ.model_name} version {champ.champion_version}")
    return lines


def markdown(summary: RunSummary, top: int | None = None) -> str:
    """The ranked table (the ``top`` rows, with a note when some are left out) and the champion lines."""
    out = [markdown_table(cells(summary, top), list(COLUMNS))]
    n = len(summary.variants)
    if top and n > top:
        out.append(f"(top {top} of {n} variants; the full table is the parent run's comparison/comparison.csv)")
    return "\n".join([*out, "", *champion_lines(summary)])


def text(summary: RunSummary, top: int | None = None, tail: tuple[str, ...] | list[str] = ()) -> str:
    """The closing summary: ``markdown``, then each non-empty block of ``tail`` after a blank line
    (the claims' verdict sentences, where to look next)."""
    return "\n\n".join([markdown(summary, top), *(block for block in tail if block)])


def html(summary: RunSummary, run_url: Callable[[str], str]) -> str:
    """The results tab's body: the parent run, the ranked table (variants linked to their runs, the
    winner's row marked ``winner``), the champion outcome and the failure. ``run_url(run_id)`` is a
    run's page in the MLflow UI."""
    e = _html.escape

    def link(run_id: str, label: str) -> str:
        return f"<a href='{e(run_url(run_id))}' target='_blank' rel='noopener'>{e(label)}</a>"

    rows = []
    for row, shown in zip(summary.table, cells(summary), strict=True):
        tds = [link(row.run_id, row.name) if c == "variant" and row.run_id else e(shown[c]) for c in COLUMNS]
        mark = " class='winner'" if row.name == summary.winner else ""
        rows.append(f"<tr{mark}>" + "".join(f"<td>{td}</td>" for td in tds) + "</tr>")
    head = "<tr>" + "".join(f"<th>{c}</th>" for c in COLUMNS) + "</tr>"
    parts = [
        f"<p>MLflow parent run {link(summary.parent_run_id, summary.parent_run_id)} ({e(summary.status or '')}), "
        f"ranked on <b>{e(summary.metric)}</b>.</p>",
        f"<table id='comparison'>{head}{''.join(rows)}</table>" if rows else "<p>No variant has finished yet.</p>",
    ]
    champ = summary.champion
    if champ:
        verb = "now holds" if champ.alias_moved else "was registered; the alias did not move:"
        parts.append(
            f"<p id='champion'>Winner <b>{e(champ.variant or '')}</b>: {e(champ.model_name)} version "
            f"{champ.version} {verb} <code>champion</code>. {e(champ.reason or '')}</p>"
        )
    if summary.failure:
        parts.append(f"<p><b>Failure:</b> {e(summary.failure)}</p>")
    return "".join(parts)


def approval_request(summary: RunSummary, verdicts: str, timeout_hours: float) -> dict | None:
    """What the person asked to approve a new champion reads (approval=required): ``subject`` and a
    Markdown ``body`` with the move, the ranked table, the claims' verdicts and the MLflow run.
    None when nothing awaits approval. ``verdicts``: one line per claim (``report.verdict_text``)."""
    from bnpipe.mlflow_edge import tracking

    champ = summary.champion
    if champ is None or not champ.awaiting_approval:
        return None
    held = champ.champion_version
    move = f"from v{held} to v{champ.version}" if held is not None else f"to v{champ.version} (no version holds it yet)"
    parts = [
        f"**{champ.model_name} v{champ.version}** (variant `{champ.variant}`) won this run on `{summary.metric}`: "
        f"{(champ.reason or '').removeprefix(AWAITING)}.",
        f"**Approve** moves the alias `champion` {move}. **Reject**, or no answer "
        f"within {timeout_hours:g} h, leaves it where it is.",
        "### Comparison",
        markdown_table(cells(summary), list(COLUMNS)),
    ]
    lines = [f"- {line}" for line in verdicts.splitlines() if line.strip()]
    parts += ["### Claims", "\n".join(lines) if lines else "_no verdicts: the claims report was not built_"]
    ui = settings.mlflow_ui_url()
    if ui:
        parts.append(f"MLflow parent run: {ui}/{tracking.ui_page(summary.experiment_id, summary.parent_run_id)}")
    subject = f"Make {champ.model_name} v{champ.version} the champion?"
    return {"subject": subject, "body": "\n\n".join(parts)}
