"""Train: fit one variant on a stored snapshot; no Airflow, no MLflow.

``fit`` trains, with ``bnpipe.core.instrument``'s measurements and BN recalibration; ``evaluate``
scores a split. ``bnpipe.mlflow_edge.logged_training`` wraps them in a nested MLflow run, and ``bnpipe.operations.warm``
runs that in a warm trainer process.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass

from bnpipe.base import settings
from bnpipe.core import snapshots
from bnpipe.core.variants import Variant

MODEL_ARTIFACT = "model/model.keras"
# XLA compiles the training step once per graph: 2-5 s more than tracing alone, for 0-10% faster steps on
# these MLPs (0.3-0.4 ms of ~3-4 ms per step at batch 32). Below this many steps per run it costs more than
# it saves (docs/performance.md).
XLA_MIN_STEPS = 10_000
# Splits up to this size train from an in-memory tf.data pipeline built here (``_in_memory``): Keras'
# own adapter for arrays costs ~40 ms to build and ~18 ms per epoch even on 124 rows, against ~6 ms and
# ~2 ms; above it, that pipeline's copy of the arrays costs more than the adapter (docs/performance.md).
IN_MEMORY_MAX_BYTES = 16 * 2**20
# Compiled models this process keeps, one per graph (``model.graph_key``), most recently used last.
CACHED_MODELS = 8
_compiled_models: dict = {}


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 5
    batch_size: int = 32
    steps_per_execution: int = 32
    jit_compile: bool | None = None  # XLA; None: when the run has at least XLA_MIN_STEPS steps
    threads: int | None = None  # TF intra-op threads; None: settings.tf_threads()
    grad_every_steps: int = 0  # also sample gradient norms every N steps (0: once per epoch)
    instrument: bool = True  # bnpipe.core.instrument's measurements (gradient norms, BN statistics, ...)


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


def release_tf_memory() -> None:
    """After a variant: collect its garbage (the young generations; a full collection takes ~0.5 s).

    The process keeps its compiled models (at most ``CACHED_MODELS``, one per graph) for the next
    variants, so models do not accumulate; ``forget_compiled_models`` drops them.
    """
    import gc

    gc.collect(1)


def forget_compiled_models() -> None:
    """Drop this process's compiled models and Keras' global state: the next ``fit`` starts cold."""
    import gc

    import keras

    _compiled_models.clear()
    keras.backend.clear_session()
    gc.collect()


def uses_xla(cfg: TrainConfig, steps_per_epoch: int) -> bool:
    """``cfg.jit_compile``, or, when it is None, whether the run is long enough for XLA to pay off."""
    if cfg.jit_compile is not None:
        return cfg.jit_compile
    return cfg.epochs * steps_per_epoch >= XLA_MIN_STEPS


def seed_everything(seed: int) -> None:
    """``keras.utils.set_random_seed(seed)`` (Python, NumPy, TensorFlow, Keras), keeping TensorFlow's caches.

    ``tf.random.set_seed`` also empties TensorFlow's eager caches, so that a cached stateful random
    kernel restarts its stream; every traced function then instantiates its kernels again, which
    cost a variant ~0.3 s on a small table (its first calls took 10-60 ms instead of 2-6 ms).
    Nothing here draws from an unseeded stateful kernel between seedings (initializers are
    stateless with explicit seeds; each ``fit`` builds its own shuffling pipeline, seeded from the
    global seed), so a seed gives the same run either way (``tests/test_train.py``).
    """
    import keras
    from tensorflow.python.eager import context

    ctx = context.context()
    handle, ctx._context_handle = ctx._context_handle, None  # set_seed empties the caches only through it
    try:
        keras.utils.set_random_seed(seed)
    finally:
        ctx._context_handle = handle


def training_model(variant: Variant, meta: dict, stats, steps_per_execution: int, jit_compile: bool):
    """The compiled model that trains ``variant``, initialised from ``variant.seed``.

    Seeds, then builds and compiles the variant's model or, when this process already holds a
    compiled model of the same graph, restarts that one from the weights a fresh model would get
    (``model.initial_weights``): its traced training, evaluation and instrumentation functions
    (and XLA's compiled code) serve again. The returned model belongs
    to this process's cache: the next ``fit`` of the same graph trains it again.
    """
    from bnpipe.core import model as model_lib

    seed_everything(variant.seed)
    key = (model_lib.graph_key(variant, meta["input_shape"], meta["n_classes"]), steps_per_execution, jit_compile)
    model = _compiled_models.pop(key, None)
    if model is None:
        model = model_lib.build_model(variant, meta["input_shape"], meta["n_classes"], stats)
        model_lib.compile_model(model, variant, steps_per_execution, jit_compile)
    else:
        model_lib.restart(model, model_lib.initial_weights(model, variant, stats), variant)
    _compiled_models[key] = model
    while len(_compiled_models) > CACHED_MODELS:
        _compiled_models.pop(next(iter(_compiled_models)))
    return model


def _in_memory(X, y, batch_size: int, shuffle_seed: int | None = None):
    """A tf.data pipeline over small in-memory arrays: every row reshuffled each epoch (seeded), in batches."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((X, y))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(y), seed=shuffle_seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size)


def train_key(snapshot_digest: str, variant: Variant, cfg: TrainConfig) -> str:
    """Identifies a training result: same data, variant and schedule give the same key."""
    blob = json.dumps(
        {"data": snapshot_digest, "variant": variant.to_dict(), "epochs": cfg.epochs, "batch": cfg.batch_size},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def finite(x) -> bool:
    return x is not None and math.isfinite(x)


def is_diverged(history: dict, model) -> bool:
    """A NaN/Inf training or validation loss, no finished epoch, or a non-finite weight."""
    import numpy as np

    losses = history.get("loss", []) + history.get("val_loss", [])
    if not history.get("loss") or any(not finite(v) for v in losses):
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
    from bnpipe.core import model as model_lib

    def scores(prefix: str) -> dict:
        loss, acc = model_lib.scores(model, X_va, y_va)
        return {f"val_loss_{prefix}": loss, f"val_accuracy_{prefix}": acc}

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
    (``snapshots.replicate_split``) as well as its own initialization and shuffling. ``extra`` holds
    the split's sizes and, for a healthy run, BN recalibration's validation metrics.

    ``on_epoch(epoch, row)`` gets each epoch's metrics; ``on_metrics([(row, step), ...])`` gets
    ``bnpipe.core.instrument``'s measurements, a batch per epoch. ``stop()``, polled after every
    execution (``steps_per_execution`` steps), returns a status to abort with (raises ``Aborted``).

    The model is this process's compiled model for the variant's graph (``training_model``): save
    or evaluate it before the next ``fit``.
    """
    import keras

    from bnpipe.core import model as model_lib

    meta = snapshots.read_meta(snapshot_path)
    X_tr, y_tr, X_va, y_va = snapshots.replicate_split(snapshot_path, variant.seed)
    X_tr, X_va = X_tr.astype("float32"), X_va.astype("float32")
    steps = max(1, math.ceil(len(y_tr) / cfg.batch_size))
    stats = model_lib.scaler_stats(variant, X_tr)
    model = training_model(variant, meta, stats, min(cfg.steps_per_execution, steps), uses_xla(cfg, steps))

    class EpochLogger(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds = time.perf_counter() - self.t0
            row = {k: float(v) for k, v in (logs or {}).items()}
            row["epoch_seconds"] = seconds
            row["samples_per_second"] = len(y_tr) / seconds if seconds > 0 else 0.0
            if not finite(row.get("loss")):
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
        from bnpipe.core import instrument

        sink = on_metrics or (lambda rows: None)
        probe = instrument.callback(X_tr, y_tr, X_va, y_va, cfg.batch_size, steps, sink, cfg.grad_every_steps)
        callbacks.insert(0, probe)
    if X_tr.nbytes + X_va.nbytes <= IN_MEMORY_MAX_BYTES:
        data = {"x": _in_memory(X_tr, y_tr, cfg.batch_size, variant.seed), "shuffle": False,  # it shuffles itself
                "validation_data": _in_memory(X_va, y_va, cfg.batch_size)}  # fmt: skip
    else:
        data = {"x": X_tr, "y": y_tr, "batch_size": cfg.batch_size, "validation_data": (X_va, y_va), "shuffle": True}
    hist = model.fit(**data, epochs=cfg.epochs, callbacks=callbacks, verbose=0)
    history = {k: [float(v) for v in vs] for k, vs in hist.history.items()}
    diverged = is_diverged(history, model)
    extra = {"n_train": len(y_tr), "n_val": len(y_va), "n_classes": meta["n_classes"]}
    if not diverged:
        extra.update(recalibration(model, variant, X_tr, X_va, y_va))
    return model, history, diverged, extra


def evaluate(model, snapshot_path: str, split: str = "test", batch_size: int = 1024) -> dict:
    """Loss and accuracy of ``model`` on one split of the snapshot (``model.scores``, in chunks of ``batch_size``)."""
    from bnpipe.core import model as model_lib

    X, y = snapshots.load_split(snapshot_path, split)
    loss, acc = model_lib.scores(model, X, y, chunk=batch_size)
    return {f"{split}_loss": loss, f"{split}_accuracy": acc}
