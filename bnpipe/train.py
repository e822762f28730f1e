"""Train: fit one variant on a stored snapshot and log it to its own nested MLflow run.

``run_variant`` is what one mapped Airflow task calls. It returns a small JSON-able result;
the model itself goes to MLflow as a compact ``model.keras`` artifact. The full MLflow model
is logged later, for the winner only (see ``bnpipe.compare``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bnpipe import data, settings, tracking
from bnpipe.variants import Variant

MODEL_ARTIFACT = "model/model.keras"


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 5
    batch_size: int = 32
    steps_per_execution: int = 32
    jit_compile: bool = True
    threads: int | None = None  # TF intra-op threads; None: settings.tf_threads()
    grad_every_steps: int = 0  # also sample gradient norms every N steps (0: once per epoch)
    instrument: bool = True  # bnpipe.instrument's measurements (gradient norms, BN statistics, ...)


def configure_threads(threads: int | None) -> int:
    """Cap TensorFlow's thread pools. Must run before TensorFlow executes its first op."""
    n = threads or settings.tf_threads()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("OMP_NUM_THREADS", str(n))
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(min(2, n))
    except RuntimeError:  # runtime already initialised in this process (dag.test runs tasks in-process)
        pass
    return n


def _release_tf_memory() -> None:
    """Drop Keras' global graph state, so tasks sharing a process (dag.test) do not accumulate models."""
    import gc

    import keras

    keras.backend.clear_session()
    gc.collect()


def train_key(snapshot_digest: str, variant: Variant, cfg: TrainConfig) -> str:
    """Identifies a training result: same data, variant and schedule give the same key."""
    blob = json.dumps(
        {"data": snapshot_digest, "variant": variant.to_dict(), "epochs": cfg.epochs, "batch": cfg.batch_size},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


def is_diverged(history: dict, model) -> bool:
    """A NaN/Inf training or validation loss, no finished epoch, or a non-finite weight."""
    import numpy as np

    losses = history.get("loss", []) + history.get("val_loss", [])
    if not history.get("loss") or any(not _finite(v) for v in losses):
        return True
    return not all(np.isfinite(w).all() for w in model.get_weights())


class Aborted(Exception):
    """Training was stopped from outside (``stop()`` returned a status: KILLED, FAILED)."""

    def __init__(self, status: str):
        super().__init__(f"training stopped from outside; run marked {status}")
        self.status = status


def recalibration(model, variant: Variant, X_tr, X_va, y_va) -> dict:
    """Validation accuracy and loss with BN's moving averages and after recomputing them exactly.

    The model keeps the recalibrated statistics only when the variant asks for it
    (``bn_recalibrate``); otherwise they are put back. A model without BN gets the same numbers
    twice, so every run can be compared on ``val_accuracy_recalibrated``.
    """
    from bnpipe import model as model_lib

    def scores(prefix: str) -> dict:
        loss, acc = model.evaluate(X_va, y_va, batch_size=1024, verbose=0)
        return {f"val_loss_{prefix}": float(loss), f"val_accuracy_{prefix}": float(acc)}

    out = scores("moving")
    saved = model_lib.bn_state(model)
    if not saved:
        return {**out, "val_loss_recalibrated": out["val_loss_moving"],
                "val_accuracy_recalibrated": out["val_accuracy_moving"]}  # fmt: skip
    model_lib.recalibrate_bn(model, X_tr)
    out.update(scores("recalibrated"))
    if not variant.bn_recalibrate:
        model_lib.set_bn_state(model, saved)
    return out


def fit(variant: Variant, snapshot_path: str, cfg: TrainConfig, on_epoch=None, on_metrics=None, stop=None) -> tuple:
    """Train ``variant``; returns (model, history dict, diverged flag, extra metrics). No MLflow here.

    The replicate ``variant.seed`` draws its own train/validation split from the snapshot
    (``data.replicate_split``) as well as its own initialization and shuffling. ``extra`` holds
    the split's sizes and, for a healthy run, BN recalibration's validation metrics.

    ``on_epoch(epoch, row)`` gets each epoch's metrics; ``on_metrics([(row, step), ...])`` gets
    ``bnpipe.instrument``'s measurements, a batch per epoch. ``stop()``, polled after every
    execution (``steps_per_execution`` steps), returns a status to abort with (raises ``Aborted``).
    """
    import keras

    from bnpipe import model as model_lib

    meta = data.read_meta(snapshot_path)
    X_tr, y_tr, X_va, y_va = data.replicate_split(snapshot_path, variant.seed)
    X_tr, X_va = X_tr.astype("float32"), X_va.astype("float32")
    keras.utils.set_random_seed(variant.seed)
    model = model_lib.build_model(
        variant, meta["input_shape"], meta["n_classes"], model_lib.scaler_stats(variant, X_tr)
    )
    steps = max(1, math.ceil(len(y_tr) / cfg.batch_size))
    model_lib.compile_model(model, variant, min(cfg.steps_per_execution, steps), cfg.jit_compile)

    class EpochLogger(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds = time.perf_counter() - self.t0
            row = {k: float(v) for k, v in (logs or {}).items()}
            row["epoch_seconds"] = seconds
            row["samples_per_second"] = len(y_tr) / seconds if seconds > 0 else 0.0
            if not _finite(row.get("loss")):
                self.model.stop_training = True
            if on_epoch:
                on_epoch(epoch + 1, row)

    class StopFromOutside(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            status = stop()
            if status:
                raise Aborted(status)

    callbacks = [EpochLogger(), keras.callbacks.TerminateOnNaN()]
    if stop is not None:
        callbacks.append(StopFromOutside())
    if cfg.instrument:
        from bnpipe import instrument

        sink = on_metrics or (lambda rows: None)
        probe = instrument.callback(X_tr, y_tr, X_va, y_va, cfg.batch_size, steps, sink, cfg.grad_every_steps)
        callbacks.insert(0, probe)
    hist = model.fit(
        X_tr,
        y_tr,
        batch_size=cfg.batch_size,
        epochs=cfg.epochs,
        validation_data=(X_va, y_va),
        callbacks=callbacks,
        verbose=0,
        shuffle=True,
    )
    history = {k: [float(v) for v in vs] for k, vs in hist.history.items()}
    diverged = is_diverged(history, model)
    extra = {"n_train": len(y_tr), "n_val": len(y_va), "n_classes": meta["n_classes"]}
    if not diverged:
        extra.update(recalibration(model, variant, X_tr, X_va, y_va))
    return model, history, diverged, extra


def evaluate(model, snapshot_path: str, split: str = "test", batch_size: int = 1024) -> dict:
    """Loss and accuracy of ``model`` on one split of the snapshot."""
    X, y = data.load_split(snapshot_path, split)
    loss, acc = model.evaluate(X.astype("float32"), y, batch_size=batch_size, verbose=0)
    return {f"{split}_loss": float(loss), f"{split}_accuracy": float(acc)}


def run_variant(
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

    ``stop``: see ``fit``; ``bnpipe.warm`` passes it, so a task that goes away stops its trainer.
    ``trainer`` (tag ``bnpipe.trainer``) says which process trained: ``task`` or ``warm pid <n>``.
    """
    configure_threads(cfg.threads)
    variant = Variant.from_dict(variant_dict)
    t_connect = time.perf_counter()
    client = tracking.connect()
    client = tracking.Timed(client, time.perf_counter() - t_connect)  # -> metric mlflow_seconds
    key = train_key(snapshot["digest"], variant, cfg)
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
        model, history, diverged, extra = fit(
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
            summary.update(evaluate(model, snapshot["path"], "test"))
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "model.keras"
                t_save = time.perf_counter()
                model.save(path)
                client.seconds += time.perf_counter() - t_save
                client.log_artifact(run_id, str(path), artifact_path=str(Path(MODEL_ARTIFACT).parent))
        # MLflow's share of this variant: every client call so far and the model file (not the last few requests)
        summary["mlflow_seconds"] = client.seconds
        summary = {k: v for k, v in summary.items() if _finite(v)}
        tracking.log_metric_rows(client, run_id, [(summary, summary["epochs_run"]), *pending])
        metrics = {k: v for k, v in {**final, **summary}.items() if _finite(v)}
        client.set_tag(run_id, tracking.TAG + "status", status)
        client.set_terminated(run_id, status="FINISHED")
    except Aborted as exc:
        client.set_terminated(run_id, status=exc.status)
        raise
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    finally:
        _release_tf_memory()
    return {"name": variant.name, "run_id": run_id, "status": status, "metrics": metrics, "train_key": key}
