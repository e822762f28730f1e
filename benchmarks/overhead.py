"""Row 8: a small-data grid's wall time, split into ``fit``'s steady-state epochs and everything else.

``python -m benchmarks.overhead grid --config JSON --out FILE`` trains one grid of variants in this
one process, as a warm trainer does (``train.fit``, the test split's ``evaluate``, then
``train.release_tf_memory``; no MLflow, whose cost is row 3), in interleaved repetitions of these arms:

- ``before``: what every variant cost before: XLA on, and a cold start per variant (build, compile,
  trace; ``train.forget_compiled_models`` after each, as the trainer's clean-up did);
- ``no_xla``: the same cold start per variant, XLA chosen by the run's steps (``train.uses_xla``);
- ``cold``: today's trainer, started cold for the grid: one compiled model per graph, restarted
  for the next seed (``train.training_model``);
- ``warm``: the grid again in the same process, as a warm trainer meets the next DAG run.

A variant's steady-state time is its epochs times the median of its epochs after the first
(``epoch_seconds``, epoch start to end: the steps, validation and instrumentation); everything
else is its wall time minus that: data split, model build, tracing and XLA, the first epoch's
extra, BN recalibration, the test evaluation and the clean-up.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace
from pathlib import Path

from benchmarks.common import child_main, rotated

ARMS = ("before", "no_xla", "cold")  # ``warm`` runs right after ``cold``: it needs cold's compiled models


def variant_seconds(variant, snapshot: dict, cfg, cold: bool) -> dict:
    """One variant as a warm trainer runs it (without MLflow): wall time and its steady-state epochs."""
    from bnpipe.core import train

    epochs: list[float] = []
    t0 = time.perf_counter()
    model, history, _, _ = train.fit(variant, snapshot["path"], cfg, on_epoch=lambda e, row: epochs.append(
        row["epoch_seconds"]), on_metrics=lambda rows: None)  # fmt: skip
    train.evaluate(model, snapshot["path"], "test")
    del model
    if cold:
        train.forget_compiled_models()
    else:
        train.release_tf_memory()
    wall = time.perf_counter() - t0
    steady = len(epochs) * statistics.median(epochs[1:] or epochs)
    return {"name": variant.name, "wall": wall, "steady": steady, "epochs": epochs, "loss": history["loss"][-1]}


def grid_seconds(variants, snapshot: dict, cfg, cold: bool) -> dict:
    runs = [variant_seconds(v, snapshot, cfg, cold) for v in variants]
    wall, steady = sum(r["wall"] for r in runs), sum(r["steady"] for r in runs)
    return {"wall": wall, "steady": steady, "other_share": (wall - steady) / wall, "variants": runs}


def run_grid(cfg: dict) -> dict:
    from bnpipe.core import model as model_lib
    from bnpipe.core import snapshots, sources, train, variants

    threads = train.configure_threads(cfg["threads"])
    snap = snapshots.ingest(sources.IngestRequest(source=cfg["dataset"]), Path(cfg["store"]))
    grid = variants.grid(cfg["grid"], seeds=cfg["seeds"])
    base = train.TrainConfig(epochs=cfg["epochs"], batch_size=cfg["batch_size"], threads=threads)
    configs = {"before": replace(base, jit_compile=True), "no_xla": base, "cold": base}
    steps = -(-snap["n_train"] // base.batch_size)
    reps = []
    for rep in range(cfg["reps"]):
        row = {}
        for arm in rotated(list(ARMS), rep):
            train.forget_compiled_models()
            row[arm] = grid_seconds(grid, snap, configs[arm], cold=arm != "cold")
            if arm == "cold":
                row["warm"] = grid_seconds(grid, snap, configs[arm], cold=False)
        reps.append(row)
    train.forget_compiled_models()
    return {
        "threads": threads,
        "dataset": cfg["dataset"],
        "grid": cfg["grid"],
        "seeds": cfg["seeds"],
        "variants": len(grid),
        "graphs": len({model_lib.graph_key(v, snap["input_shape"], snap["n_classes"]) for v in grid}),
        "epochs": base.epochs,
        "batch_size": base.batch_size,
        "n_train": snap["n_train"],
        "steps_per_epoch": steps,
        "xla_after": train.uses_xla(base, steps),
        "reps": reps,
    }


def main(argv: list[str] | None = None) -> None:
    child_main("benchmarks.overhead", {"grid": run_grid}, argv)


if __name__ == "__main__":
    main()
