"""Summary: what one DAG run of the experiment came to, as a typed value.

A DAG run is one parent MLflow run with a nested run per variant. Its ``RunSummary`` holds the
parent's ids and status, one ``VariantRow`` per variant run (its final metrics and its rank among
the healthy ones) and, once the winner is registered, the ``Champion`` outcome.

``compare.conclude`` builds it right after ranking; ``bnpipe.reporting.summaries`` rebuilds it
from MLflow and renders it. Plain values only, no MLflow here; ``to_dict`` is its JSON form (the
compare task's XCom, ``bnpipe run --summary-json``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

# The metrics of a comparison-table row (comparison.csv and comparison.md), after rank, variant, status.
TABLE_METRICS = ("val_accuracy", "val_loss", "test_accuracy", "accuracy", "loss", "train_seconds", "epochs_run")


@dataclass(frozen=True)
class VariantRow:
    """One variant run: its final metrics and its rank (None: left out of the ranking, not healthy)."""

    name: str
    run_id: str | None
    status: str
    metrics: Mapping[str, float] = field(default_factory=dict)
    rank: int | None = None

    def table_row(self) -> dict:
        """The comparison table's row: rank ("-" when unranked), variant, status, the table's metrics, run_id."""
        row = {"rank": "-" if self.rank is None else self.rank, "variant": self.name, "status": self.status}
        row.update({m: self.metrics.get(m) for m in TABLE_METRICS})
        row["run_id"] = self.run_id
        return row


@dataclass(frozen=True)
class Champion:
    """The registration outcome: the winner's version, whether ``champion`` moved to it and why."""

    model_name: str
    version: int
    run_id: str | None
    variant: str | None
    alias_moved: bool
    reason: str | None
    champion_version: int | None = None  # the version holding ``champion`` (None: no holder)
    awaiting_approval: bool = False  # approval=required: the alias moves once a person approves


@dataclass(frozen=True)
class RunSummary:
    """One DAG run: the parent run, its variants in the order given, and the champion outcome."""

    experiment_id: str
    parent_run_id: str
    metric: str  # what the variants are ranked on
    variants: tuple[VariantRow, ...] = ()
    dag_run_id: str | None = None
    status: str | None = None  # the parent run's MLflow status
    failure: str | None = None  # why the DAG run failed, when it did
    champion: Champion | None = None

    @property
    def table(self) -> tuple[VariantRow, ...]:
        """The ranked variants best first, then the unranked ones in their given order."""
        return ranked_first(self.variants)

    @property
    def winner(self) -> str | None:
        """The registered winner's variant name; None before (or without) a registration."""
        return self.champion.variant if self.champion else None

    def to_dict(self) -> dict:
        """The JSON form: ``variants`` (name, run_id, status, metrics), ``table`` (comparison rows), ``champion``."""
        champ = self.champion
        return {
            "experiment_id": self.experiment_id,
            "parent_run_id": self.parent_run_id,
            "dag_run_id": self.dag_run_id,
            "status": self.status,
            "metric": self.metric,
            "variants": [
                {"name": v.name, "run_id": v.run_id, "status": v.status, "metrics": dict(v.metrics)}
                for v in self.variants
            ],
            "table": [v.table_row() for v in self.table],
            "failure": self.failure,
            "champion": None if champ is None else {
                "model_name": champ.model_name, "version": champ.version, "run_id": champ.run_id,
                "variant": champ.variant, "alias_moved": champ.alias_moved, "reason": champ.reason,
                "champion_version": champ.champion_version, "awaiting_approval": champ.awaiting_approval,
            },
        }  # fmt: skip


def variant_rows(results: list[dict], ranked: list[dict]) -> tuple[VariantRow, ...]:
    """``results`` (training results: name, run_id, status, metrics) as rows, in their order, each with
    its rank from ``ranked`` (``compare.rank``'s answer: the healthy ones, each carrying ``rank``)."""
    ranks = {r["name"]: r["rank"] for r in ranked}
    return tuple(
        VariantRow(r["name"], r.get("run_id"), r.get("status", "?"), dict(r.get("metrics", {})), ranks.get(r["name"]))
        for r in results
    )


def ranked_first(rows: tuple[VariantRow, ...]) -> tuple[VariantRow, ...]:
    """The ranked rows by rank, then the unranked ones in their given order."""
    ranked = sorted((r for r in rows if r.rank is not None), key=lambda r: r.rank)
    return (*ranked, *(r for r in rows if r.rank is None))
