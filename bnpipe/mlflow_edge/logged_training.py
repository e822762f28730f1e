"""Logged training: one variant trained in its own nested MLflow run (the MLflow edge of ``train``).

``train_and_log`` is what a mapped training task runs, in this process or (through
``bnpipe.operations.warm.train_variant``) in a warm trainer. It returns a small JSON-able result; the model
itself goes to MLflow as a compact ``model.keras``, an artifact of the run and of the variant's
LoggedModel (``tracking.create_variant_model``), whose metrics are linked to the run's datasets.
The full MLflow model is logged later, for the winner only (see ``bnpipe.mlflow_edge.compare``).
While the variant trains, MLflow samples the machine's CPU, memory, disk and network into the
run's ``system/...`` metrics.
"""

from __future__ import annotations

import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

from bnpipe.core import train
from bnpipe.core.train import TrainConfig
from bnpipe.core.variants import Variant
from bnpipe.mlflow_edge import snapshot_store, tracking

# Seconds between system-metrics samples (MLflow's default is 10, longer than many variants train).
# MLflow's own settings win: MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL, and
# MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false turns the sampling off.
SYSTEM_METRICS_SECONDS = 5.0
# Epoch metrics go to the server at most this often (each row keeps its own epoch-end timestamp):
# the MLflow UI's curves still move live, but a variant of 30 sub-second epochs sends a few requests
# instead of 30, which cost the server ~40 ms of CPU each (docs/performance.md, row 10).
LIVE_METRICS_SECONDS = 1.0


class SystemMetrics:
    """MLflow's system-metrics monitor for one run: started on creation, ``stop`` and ``join`` end it.

    This is the monitor ``mlflow.start_run(log_system_metrics=True)`` starts, given the run and the
    tracking URI explicitly: ``start_run`` would make the run MLflow's process-wide active run and
    pin the global tracking URI, which a warm trainer, serving jobs one after another with each
    task's environment, must not keep. The monitor's thread samples with psutil (a dependency of
    Airflow's) and logs through its own client.
    """

    def __init__(self, client, run_id: str):
        from mlflow.environment_variables import MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING as enabled

        self._client, self._monitor, self._stopping = client, None, None
        if enabled.defined and not enabled.get():
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        t0 = time.perf_counter()
        self._monitor = SystemMetricsMonitor(
            run_id, sampling_interval=SYSTEM_METRICS_SECONDS, tracking_uri=client.tracking_uri
        )
        self._monitor.start()
        client.seconds += time.perf_counter() - t0

    def stop(self) -> None:
        """Stop sampling. The monitor's last request (it reads the run once more) runs in a thread of
        its own, alongside the variant's remaining work."""
        if self._monitor is not None and self._stopping is None:
            self._stopping = threading.Thread(target=self._monitor.finish, name="bnpipe-system-metrics-stop")
            self._stopping.start()

    def join(self) -> None:
        """Stop and wait until the monitor's threads have ended, so none outlives the job; the wait is MLflow time."""
        self.stop()
        if self._stopping is not None:
            t0 = time.perf_counter()
            self._stopping.join()
            self._client.seconds += time.perf_counter() - t0


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
    """Train one variant in its own nested MLflow run. Returns ``{name, run_id, model_id, status, metrics, train_key}``.

    ``stop``: see ``train.fit``; ``bnpipe.operations.warm`` passes it, so a task that goes away stops its trainer.
    ``trainer`` (tag ``bnpipe.trainer``) says which process trained: ``task`` or ``warm pid <n>``.
    """
    train.configure_threads(cfg.threads)
    variant = Variant.from_dict(variant_dict)
    t_connect = time.perf_counter()
    client = tracking.connect()
    client = tracking.Timed(client, time.perf_counter() - t_connect)  # -> metric mlflow_seconds
    data = snapshot_store.local_snapshot(snapshot, client)["path"]  # fetched only if not on this worker
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
    model_id, system = None, None
    pending: list = []  # instrumentation rows ride along with the epochs' metrics
    unsent: list = []  # epoch rows (metrics, step, timestamp) not sent yet
    last: list = []  # the last epoch's row, step and timestamp: linked to the model at the end
    sent_at = time.monotonic()

    def send_epochs() -> None:
        nonlocal sent_at
        if unsent:
            tracking.log_metric_rows(client, run_id, [*unsent, *pending])
            unsent.clear()
            pending.clear()
            sent_at = time.monotonic()

    def log_epoch(step: int, row: dict) -> None:
        last[:] = [(row, step, int(time.time() * 1000))]
        unsent.append(last[0])
        if time.monotonic() - sent_at >= LIVE_METRICS_SECONDS:
            send_epochs()

    try:
        params = {k: v for k, v in variant.to_dict().items() if k != "name"}
        params = {**params, **{f"train.{k}": v for k, v in asdict(cfg).items()}}
        tracking.log_params(client, run_id, params)
        datasets = tracking.log_datasets(client, run_id, snapshot, replicate=variant.seed)
        model_id = tracking.create_variant_model(
            client, experiment_id, run_id, variant.name, params,
            {tracking.TAG + "variant": variant.name, tracking.TAG + "train_key": key,
             tracking.TAG + "data_digest": snapshot["digest"], tracking.TAG + "parent_run_id": parent_run_id},
        )  # fmt: skip
        system = SystemMetrics(client, run_id)
        t0 = time.perf_counter()
        model, history, diverged, extra = train.fit(
            variant, data, cfg, on_epoch=log_epoch, on_metrics=pending.extend, stop=stop
        )
        system.stop()
        train_seconds = time.perf_counter() - t0
        send_epochs()  # before the model's copy of the last epoch below: the run's history gets one of each
        final = {k: vs[-1] for k, vs in history.items() if vs}  # already logged per epoch
        summary = {"train_seconds": train_seconds, "epochs_run": len(history.get("loss", [])), **extra}
        if variant.bn_recalibrate and "val_accuracy_recalibrated" in extra:  # the model as it was saved
            final.update(val_accuracy=extra["val_accuracy_recalibrated"], val_loss=extra["val_loss_recalibrated"])
            summary.update(val_accuracy=final["val_accuracy"], val_loss=final["val_loss"])
        status = "diverged" if diverged else "ok"
        if diverged:
            client.set_logged_model_tags(model_id, {tracking.TAG + "status": status})
            tracking.finish_variant_model(client, run_id, model_id, summary["epochs_run"], None)
        else:
            summary.update(train.evaluate(model, data, "test"))
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "model.keras"
                t_save = time.perf_counter()
                model.save(path)
                client.seconds += time.perf_counter() - t_save
                client.log_artifact(run_id, str(path), artifact_path=str(Path(train.MODEL_ARTIFACT).parent))
                tracking.finish_variant_model(client, run_id, model_id, summary["epochs_run"], str(path))
        system.join()
        # MLflow's share of this variant: every client call so far and the model file (not the last few requests)
        summary["mlflow_seconds"] = client.seconds
        summary = {k: v for k, v in summary.items() if train.finite(v)}
        # the model's metrics: the summary's test metrics, and the last epoch's (sent again, same timestamp;
        # one request per variant instead of one more per epoch) where the summary has no newer value
        links = tracking.metric_links(model_id, datasets)
        final_epoch = [
            ({k: v for k, v in row.items() if k in links and k not in summary}, step, ts) for row, step, ts in last
        ]
        tracking.log_metric_rows(client, run_id, [(summary, summary["epochs_run"]), *pending, *final_epoch], links)
        metrics = {k: v for k, v in {**final, **summary}.items() if train.finite(v)}
        client.set_tag(run_id, tracking.TAG + "status", status)
        client.set_terminated(run_id, status="FINISHED")
    except train.Aborted as exc:
        _send_quietly(send_epochs)
        _model_failed(client, model_id)
        client.set_terminated(run_id, status=exc.status)
        raise
    except BaseException:
        _send_quietly(send_epochs)
        _model_failed(client, model_id)
        client.set_terminated(run_id, status="FAILED")
        raise
    finally:
        if system is not None:
            system.join()
        train.release_tf_memory()
    return {
        "name": variant.name, "run_id": run_id, "model_id": model_id, "status": status, "metrics": metrics,
        "train_key": key,
    }  # fmt: skip


def _send_quietly(send) -> None:
    """The epochs' metrics not sent yet, when training stopped: best effort, so that an unreachable
    server does not hide the error that stopped it (its own error is printed)."""
    try:
        send()
    except Exception as exc:  # noqa: BLE001 - the original error propagates
        print(f"bnpipe: could not log the last epochs' metrics: {exc}")


def _model_failed(client, model_id: str | None) -> None:
    """A variant whose training stopped: its LoggedModel (if it was created) is FAILED, unless already READY."""
    if model_id is not None and client.get_logged_model(model_id).status == "PENDING":
        client.finalize_logged_model(model_id, "FAILED")
