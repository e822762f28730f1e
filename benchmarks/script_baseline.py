"""The script users would otherwise write: a sequential loop over the grid with ``mlflow.keras.autolog()``.

Same snapshot, variants (built by ``bnpipe.core.model``, so the architecture is identical), epochs and
batch size as the DAG; Keras' default ``compile``; autolog logs params, per-epoch metrics and a
full MLflow model per variant. The best variant on ``val_accuracy`` is registered and gets the
alias ``champion``, as the DAG's compare task does.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def run(cfg: dict) -> dict:
    import keras
    import mlflow

    from bnpipe.core import model as model_lib
    from bnpipe.core import snapshots
    from bnpipe.core.variants import Variant

    snapshot = cfg["snapshot"]
    X_tr, y_tr = snapshots.load_split(snapshot["path"], "train")
    X_va, y_va = snapshots.load_split(snapshot["path"], "val")
    X_te, y_te = snapshots.load_split(snapshot["path"], "test")
    X_tr, X_va, X_te = (a.astype("float32") for a in (X_tr, X_va, X_te))
    mlflow.set_experiment(cfg["experiment"])
    mlflow.keras.autolog(silent=True)
    best = None
    for vd in cfg["variants"]:
        variant = Variant.from_dict(vd)
        keras.utils.set_random_seed(variant.seed)
        stats = model_lib.scaler_stats(variant, X_tr)
        model = model_lib.build_model(variant, snapshot["input_shape"], snapshot["n_classes"], stats)
        model.compile(
            optimizer=model_lib.optimizer(variant), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
        )
        with mlflow.start_run(run_name=variant.name):
            hist = model.fit(
                X_tr, y_tr, batch_size=cfg["batch_size"], epochs=cfg["epochs"],
                validation_data=(X_va, y_va), verbose=0,
            )  # fmt: skip
            test_loss, test_acc = model.evaluate(X_te, y_te, verbose=0)
            mlflow.log_metrics({"test_loss": test_loss, "test_accuracy": test_acc})
            logged = mlflow.last_logged_model()
        score = hist.history["val_accuracy"][-1]
        if best is None or score > best[0]:
            best = (score, logged.model_uri)
        keras.backend.clear_session()
    version = mlflow.register_model(best[1], cfg["model_name"])
    mlflow.MlflowClient().set_registered_model_alias(cfg["model_name"], "champion", version.version)
    return {"registered_version": int(version.version), "best_val_accuracy": best[0]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.script_baseline")
    parser.add_argument("--config", required=True, help="JSON")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    out = run(json.loads(args.config))
    out["in_process_seconds"] = time.perf_counter() - t0
    Path(args.out).write_text(json.dumps(out))


if __name__ == "__main__":
    main()
