"""The champion decision: does the alias ``champion`` move to a newly registered version?

Pure: plain values in, a ``Decision`` out; no MLflow, no I/O. ``bnpipe.mlflow_edge.compare`` gathers the
facts (which version holds the alias, its metric on this snapshot or why it cannot score this
snapshot's data) and acts on the decision.

The rules:

- no champion yet: the candidate becomes champion;
- the candidate already holds the alias: nothing to do;
- the champion cannot score this data (its inputs are not this snapshot's): the candidate replaces it;
- otherwise the candidate must be strictly better on the same data; a tie keeps the champion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bnpipe.mlflow_edge.tracking import TAG

ALIAS = "champion"


@dataclass(frozen=True)
class Holder:
    """The version that holds the alias now, and how it fares on this snapshot.

    Exactly one of ``value`` (its metric on this snapshot, obtained as ``how`` says) and
    ``mismatch`` (why its inputs are not this snapshot's) is set, unless it is the candidate itself.
    """

    version: int
    value: float | None = None
    how: str = ""
    mismatch: str | None = None


@dataclass(frozen=True)
class Decision:
    moves: bool
    reason: str


def decide(version: int, value: float, holder: Holder | None, metric: str, higher: bool) -> Decision:
    """Whether the alias moves to candidate ``version`` whose ``metric`` is ``value``.

    ``higher`` is the metric's direction (True: higher is better).
    """
    if holder is None:
        return Decision(True, f"no champion yet; version {version} becomes {ALIAS}")
    if holder.version == version:
        return Decision(False, f"version {version} already holds {ALIAS}")
    if holder.mismatch is not None:
        return Decision(
            True,
            f"champion v{holder.version} cannot score this data ({holder.mismatch}); version {version} replaces it",
        )
    if holder.value is None:
        raise ValueError(f"champion v{holder.version}: neither its {metric} on this data nor a mismatch is known")
    theirs = f"champion v{holder.version}'s {holder.value:.4f} ({holder.how})"
    if beats(value, holder.value, higher):
        return Decision(True, f"{metric} {value:.4f} beats {theirs}")
    if value == holder.value:
        return Decision(False, f"{metric} {value:.4f} ties with {theirs}; a tie keeps the champion")
    return Decision(False, f"{metric} {value:.4f} does not beat {theirs}")


def beats(a: float, b: float, higher: bool) -> bool:
    """``a`` strictly better than ``b``; NaN never beats anything."""
    if math.isnan(a):
        return False
    return a > b if higher else a < b


def recorded(tags: dict, digest: str, metric: str) -> float | None:
    """The holder's ``metric`` as recorded at registration, if it was trained on snapshot ``digest``."""
    if tags.get(TAG + "data_digest") != digest or tags.get(TAG + "metric") != metric:
        return None
    text = tags.get(TAG + "metric_value")
    return float(text) if text is not None else None


def mismatch(inputs: dict, snapshot: dict) -> str | None:
    """Why a model taking ``inputs`` cannot score ``snapshot``'s data, or None if it can.

    ``inputs`` is ``{"columns": [names]}`` (named raw columns) or ``{"shape": [dims]}`` (one
    tensor per row, without the batch dimension). Only the data decides: the snapshot's
    ``input_shape`` and ``feature_names``.
    """
    shape = [int(d) for d in snapshot["input_shape"]]
    if "columns" in inputs:
        theirs = list(inputs["columns"])
        if len(shape) != 1:
            return f"it takes {len(theirs)} named columns, the snapshot has {tuple(shape)} tensors"
        ours = list(snapshot["feature_names"])
        if theirs == ours:
            return None
        missing = [c for c in theirs if c not in ours]
        extra = [c for c in ours if c not in theirs]
        if not missing and not extra:
            return "it takes the same columns in another order"
        return f"it takes columns the snapshot lacks {missing} and not the snapshot's {extra}"
    theirs = [int(d) for d in inputs["shape"]]
    if theirs != shape:
        return f"it takes inputs of shape {tuple(theirs)}, the snapshot's are {tuple(shape)}"
    return None
