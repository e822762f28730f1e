"""Rows 1-3: bnpipe's trainer against plain ``model.fit``, the matmul peak, and MLflow's cost.

``python -m benchmarks.trainer compare --config JSON --out FILE`` runs, in this one process and
with the same TensorFlow thread cap, ``reps`` interleaved repetitions of three arms on the same
snapshot, variant, batch size and epochs:

- ``trainer``: ``bnpipe.mlflow_edge.logged_training.train_and_log`` with MLflow logging and instrumentation on (it logs
  its own MLflow time, ``mlflow_seconds``, and the instrumentation's, ``instrument_seconds``);
- ``trainer_noinst``: the same with ``TrainConfig(instrument=False)``;
- ``plain``: ``model.fit`` on the same model with Keras' defaults (``compile`` with the same
  optimizer, loss and metric; ``steps_per_execution=1``, ``jit_compile="auto"``), ``verbose=0``.

Each repetition also measures the fp32 matmul peak and registers the trainer's run as a winner
(the full MLflow model and the registry, timed apart). ``task`` trains one variant as one
training task of the DAG does, through a warm trainer (used by row 5).
"""

from __future__ import annotations

import time

from benchmarks.common import child_main, dense_flops_per_sample, epoch_periods, rotated, summary

ARMS = ("trainer", "trainer_noinst", "plain")


def matmul_peak(n: int = 2048, trials: int = 3, per_trial: int = 4) -> float:
    """Best fp32 GFLOP/s of ``tf.matmul`` on n x n matrices over a few trials."""
    import tensorflow as tf

    a = tf.random.normal((n, n), dtype=tf.float32)
    b = tf.random.normal((n, n), dtype=tf.float32)
    float(tf.matmul(a, b)[0, 0])  # warm-up
    best = 0.0
    for _ in range(trials):
        t0 = time.perf_counter()
        for _ in range(per_trial):
            c = tf.matmul(a, b)
        float(c[0, 0])
        best = max(best, 2 * n**3 * per_trial / (time.perf_counter() - t0) / 1e9)
    return best


def plain_fit(variant, snapshot: dict, epochs: int, batch_size: int) -> dict:
    """What a user writes: build, compile with defaults, fit. Epoch ends are timed by a callback."""
    import keras

    from bnpipe.core import model as model_lib
    from bnpipe.core import snapshots

    X_tr, y_tr = snapshots.load_split(snapshot["path"], "train")
    X_va, y_va = snapshots.load_split(snapshot["path"], "val")
    X_tr, X_va = X_tr.astype("float32"), X_va.astype("float32")
    keras.utils.set_random_seed(variant.seed)
    model = model_lib.build_model(
        variant, snapshot["input_shape"], snapshot["n_classes"], model_lib.scaler_stats(variant, X_tr)
    )
    model.compile(optimizer=model_lib.optimizer(variant), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    ends: list[float] = []

    class EpochEnds(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            ends.append(time.perf_counter())

    t0 = time.perf_counter()
    model.fit(
        X_tr, y_tr, batch_size=batch_size, epochs=epochs, validation_data=(X_va, y_va),
        callbacks=[EpochEnds()], verbose=0, shuffle=True,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    keras.backend.clear_session()
    return {"periods": [b - a for a, b in zip(ends, ends[1:])], "fit_seconds": wall}


def trainer_run(variant, snapshot: dict, cfg, client, tag: str) -> dict:
    """One ``train_and_log`` call (under a parent run of its own). Epoch periods come from the logged
    timestamps; MLflow's share and the instrumentation's own time are what the trainer logged
    (``mlflow_seconds``, ``instrument_seconds`` per epoch)."""
    from bnpipe.mlflow_edge import tracking
    from bnpipe.mlflow_edge.logged_training import train_and_log

    run = tracking.start_dag_run({"benchmark": "trainer"}, "benchmarks", tag, "")
    t0 = time.perf_counter()
    result = train_and_log(snapshot, variant.to_dict(), cfg, run["experiment_id"], run["parent_run_id"])
    wall = time.perf_counter() - t0
    periods = epoch_periods(client, result["run_id"])
    inst = sorted(client.get_metric_history(result["run_id"], "instrument_seconds"), key=lambda m: m.step)[1:]
    return {
        "result": result,
        "periods": periods,
        "fit_seconds": result["metrics"]["train_seconds"],
        "wall_seconds": wall,
        "mlflow_seconds": result["metrics"]["mlflow_seconds"],
        # steady-state epochs: the instrumentation's own time / the epoch's period
        "instrument_share": summary([m.value / p for m, p in zip(inst, periods)])["median"] if inst else None,
    }


def register_winner(client, result: dict, snapshot: dict, tag: str) -> dict:
    """``compare.register`` for ``result`` under a fresh model name; full-model logging timed apart."""
    from bnpipe.mlflow_edge import compare

    spent = {"full_model": 0.0}
    inner = compare._log_full_model

    def timed_full_model(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            spent["full_model"] += time.perf_counter() - t0

    compare._log_full_model = timed_full_model
    try:
        winner = {**result, "train_key": f"{result['train_key']}-{tag}"}
        t0 = time.perf_counter()
        compare.register(client, [winner], {**snapshot, "dataset": f"bench-{tag}"}, "val_accuracy")
        total = time.perf_counter() - t0
    finally:
        compare._log_full_model = inner
    return {"full_model_seconds": spent["full_model"], "registry_seconds": total - spent["full_model"]}


def compare_arms(cfg: dict) -> dict:
    from bnpipe.core import train
    from bnpipe.core.variants import Variant

    threads = train.configure_threads(cfg["threads"])
    import keras

    from bnpipe.core import model as model_lib
    from bnpipe.mlflow_edge import tracking

    snapshot = cfg["snapshot"]
    variant = Variant.from_dict(cfg["variant"])
    client = tracking.connect()
    tag = f"{int(time.time())}"
    configs = {
        arm: train.TrainConfig(
            epochs=cfg["epochs"], batch_size=cfg["batch_size"], threads=threads, instrument=arm == "trainer"
        )
        for arm in ARMS[:2]
    }
    n_train, n_val = snapshot["n_train"], snapshot["n_val"]
    probe = model_lib.build_model(variant, snapshot["input_shape"], snapshot["n_classes"], None)
    fwd = dense_flops_per_sample(probe)
    keras.backend.clear_session()
    epoch_flops = 3 * fwd * n_train + fwd * n_val  # forward + backward on train, forward on validation

    reps = []
    for rep in range(cfg["reps"]):
        row = {"peak_gflops": matmul_peak(**cfg.get("peak", {}))}
        for arm in rotated(list(ARMS), rep):
            if arm == "plain":
                row[arm] = plain_fit(variant, snapshot, cfg["epochs"], cfg["batch_size"])
            else:
                train.forget_compiled_models()  # cold, as plain `fit` is: row 1d includes tracing (row 8: warm)
                row[arm] = trainer_run(variant, snapshot, configs[arm], client, f"{arm}-{tag}-{rep}")
        row["registry"] = register_winner(client, row["trainer"]["result"], snapshot, f"{tag}-{rep}")
        for arm in ARMS:
            periods = row[arm]["periods"]
            period = summary(periods)["median"]
            row[arm]["samples_per_second"] = n_train / period if period else None
            row[arm]["gflops"] = epoch_flops / period / 1e9 if period else None
            row[arm].pop("result", None)
        reps.append(row)
    return {
        "threads": threads,
        "n_train": n_train,
        "n_val": n_val,
        "epochs": cfg["epochs"],
        "batch_size": cfg["batch_size"],
        "variant": variant.name,
        "forward_flops_per_sample": fwd,
        "reps": reps,
    }


def one_task(cfg: dict) -> dict:
    """One training task as the DAG's ``train`` runs it: through ``bnpipe.operations.warm`` (a warm trainer
    per slot, spawned by the first task of the slot); thread caps come from the environment."""
    t_start = time.perf_counter()
    from bnpipe.operations import params as spec
    from bnpipe.operations import warm

    result = warm.train_variant(
        cfg["snapshot"], cfg["variant"], spec.train_config(cfg["params"]),
        cfg["run"]["experiment_id"], cfg["run"]["parent_run_id"],
    )  # fmt: skip
    return {
        "name": result["name"],
        "status": result["status"],
        "train_seconds": result["metrics"].get("train_seconds"),
        "mlflow_seconds": result["metrics"].get("mlflow_seconds"),
        "in_process_seconds": time.perf_counter() - t_start,
    }


def main(argv: list[str] | None = None) -> None:
    child_main("benchmarks.trainer", {"compare": compare_arms, "task": one_task}, argv)


if __name__ == "__main__":
    main()
