"""Logged training: one variant trained in its own nested MLflow run (the MLflow edge of ``train``).

``train_and_log`` is what a mapped training task runs, in this process or (through
``bnpipe.operations.warm.train_variant``) in a warm trainer. It returns a small JSON-able result; the model
itself goes to MLflow as a compact ``model.keras`` artifact. The full MLflow model is logged
later, for the winner only (see ``bnpipe.mlflow_edge.compare``).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from bnpipe.core import train
from bnpipe.core.train import TrainConfig
from bnpipe.core.variants import Variant
from bnpipe.mlflow_edge import tracking


def train_and_log(
    snapshot: dict,
    variant_dict: dict,
    cfg: TrainConfig,
    experiment_id: str,
    parent_run_id: str,
    map_index: int = -1,
    try_number: int = 1,
    stop=None,
    trainer: str = "task",
) -> dict:
    """Train one variant in its own nested MLflow run. Returns ``{name, run_id, status, metrics}``.

    ``stop``: see ``train.fit``; ``bnpipe.operations.warm`` passes it, so a task that goes away stops its trainer.
    ``trainer`` (tag ``bnpipe.trainer``) says which process trained: ``task`` or ``warm pid <n>``.
    """
    train.configure_threads(cfg.threads)
    variant = Variant.from_dict(variant_dict)
    t_connect = time.perf_counter()
    client = tracking.connect()
    client = tracking.Timed(client, time.perf_counter() - t_connect)  # -> metric mlflow_seconds
    key = train.train_key(snapshot["digest"], variant, cfg)
    run_id = tracking.start_variant_run(
        client,
        experiment_id,
        parent_run_id,
        variant.to_dict(),
        map_index,
        try_number,
        {
            tracking.TAG + "train_key": key,
            tracking.TAG + "data_digest": snapshot["digest"],
            tracking.TAG + "trainer": trainer,
        },
    )
    try:
        params = {k: v for k, v in variant.to_dict().items() if k != "name"}
        tracking.log_params(client, run_id, {**params, **{f"train.{k}": v for k, v in asdict(cfg).items()}})
        tracking.log_dataset(client, run_id, snapshot)
        pending: list = []  # instrumentation rows ride along with the epoch's metrics: one request per epoch

        def log_epoch(step: int, row: dict) -> None:
            rows, pending[:] = [(row, step), *pending], []
            tracking.log_metric_rows(client, run_id, rows)

        t0 = time.perf_counter()
        model, history, diverged, extra = train.fit(
            variant, snapshot["path"], cfg, on_epoch=log_epoch, on_metrics=pending.extend, stop=stop
        )
        train_seconds = time.perf_counter() - t0
        final = {k: vs[-1] for k, vs in history.items() if vs}  # already logged per epoch
        summary = {"train_seconds": train_seconds, "epochs_run": len(history.get("loss", [])), **extra}
        if variant.bn_recalibrate and "val_accuracy_recalibrated" in extra:  # the model as it was saved
            final.update(val_accuracy=extra["val_accuracy_recalibrated"], val_loss=extra["val_loss_recalibrated"])
            summary.update(val_accuracy=final["val_accuracy"], val_loss=final["val_loss"])
        status = "diverged" if diverged else "ok"
        if not diverged:
            summary.update(train.evaluate(model, snapshot["path"], "test"))
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "model.keras"
                t_save = time.perf_counter()
                model.save(path)
                client.seconds += time.perf_counter() - t_save
                client.log_artifact(run_id, str(path), artifact_path=str(Path(train.MODEL_ARTIFACT).parent))
        # MLflow's share of this variant: every client call so far and the model file (not the last few requests)
        summary["mlflow_seconds"] = client.seconds
        summary = {k: v for k, v in summary.items() if train.finite(v)}
        tracking.log_metric_rows(client, run_id, [(summary, summary["epochs_run"]), *pending])
        metrics = {k: v for k, v in {**final, **summary}.items() if train.finite(v)}
        client.set_tag(run_id, tracking.TAG + "status", status)
        client.set_terminated(run_id, status="FINISHED")
    except train.Aborted as exc:
        client.set_terminated(run_id, status=exc.status)
        raise
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    finally:
        train.release_tf_memory()
    return {"name": variant.name, "run_id": run_id, "status": status, "metrics": metrics, "train_key": key}
