"""Rows 4, 5 and 7: the grid end to end, in parallel, and the orchestration's own time.

- Row 4: the experiment DAG under the real scheduler (a :class:`bnpipe.operations.stack.Stack`,
  LocalExecutor) against ``benchmarks.script_baseline`` in a fresh process, interleaved.
  The DAG's wall time runs from the trigger request to the run's ``end_date``.
- Row 7: from each of those DAG runs, the wall time outside training: the run's wall time minus
  the union of the intervals in which some task was inside ``fit`` (from the trainer's MLflow
  runs: ``train_seconds`` ending at the last epoch's metric timestamp), with a breakdown from the
  task instances (queued-to-running, task start-up before ``fit``, the compare task).
- Row 5: the training tasks as separate processes (as the LocalExecutor runs them, each
  training in its slot's warm trainer, started afresh for each level), at most ``c`` at once,
  under the thread cap ``BNPIPE_TRAIN_CONCURRENCY=c`` (so ``BNPIPE_TF_THREADS`` defaults to
  cores // c).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from benchmarks.common import ROOT, child_env, rotated, run_module


def _ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


def _union_seconds(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, None
    for a, b in sorted(intervals):
        if end is None or a > end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return total


def dag_run(stack, conf: dict, client) -> dict:
    """Trigger one experiment run, wait for it, and take its timings apart."""
    from bnpipe.mlflow_edge import tracking
    from bnpipe.operations.stack import EXPERIMENT_DAG

    t0 = time.time()
    run_id = stack.client.trigger(EXPERIMENT_DAG, conf)
    state = stack.client.wait_for_run(EXPERIMENT_DAG, run_id, timeout=3600)
    if state != "success":
        raise RuntimeError(f"benchmark DAG run {run_id} ended {state}; see {stack.log_dir}")
    run = stack.client.dag_run(EXPERIMENT_DAG, run_id)
    tis = stack.client.task_instances(EXPERIMENT_DAG, run_id)
    wall = _ts(run["end_date"]) - t0

    exp = client.get_experiment_by_name("bnpipe")
    flt = f"tags.`{tracking.TAG}dag_run_id` = '{run_id}' and tags.`{tracking.TAG}role` = 'parent'"
    parent = client.search_runs([exp.experiment_id], filter_string=flt)[0]
    fits, mlflow_seconds = {}, []
    for child in tracking.variant_runs(client, parent.info.run_id):
        last = max(m.timestamp for m in client.get_metric_history(child.info.run_id, "loss")) / 1000
        index = int(child.data.tags.get(tracking.TAG + "map_index", "-1"))
        fits[index] = (last - child.data.metrics["train_seconds"], last)
        mlflow_seconds.append(child.data.metrics["mlflow_seconds"])
    training = _union_seconds(list(fits.values()))
    queued = [_ts(t["start_date"]) - _ts(t["queued_when"]) for t in tis if t.get("queued_when") and t["start_date"]]
    startup = [fits[t["map_index"]][0] - _ts(t["start_date"]) for t in tis if t["task_id"] == "train"]
    compare = [_ts(t["end_date"]) - _ts(t["start_date"]) for t in tis if t["task_id"] == "compare"]
    first_start = min(_ts(t["start_date"]) for t in tis if t["start_date"])
    before = [t for t in tis if t["task_id"] in ("validate_params", "start_tracking", "ingest", "plan")]
    first_train = min(_ts(t["start_date"]) for t in tis if t["task_id"] == "train")
    teardown = [_ts(run["end_date"]) - _ts(t["start_date"]) for t in tis if t["task_id"] == "close_runs"]
    return {
        "run_id": run_id,
        "wall_seconds": wall,
        "training_seconds": training,
        "overhead_seconds": wall - training,
        "queued_seconds_total": sum(queued),
        "task_startup_seconds_median": sorted(startup)[len(startup) // 2] if startup else None,
        "compare_seconds": compare[0] if compare else None,
        "trigger_to_first_task_seconds": first_start - t0,
        "before_training_seconds": first_train - min(_ts(t["start_date"]) for t in before),
        "teardown_seconds": teardown[0] if teardown else None,
        "variant_mlflow_seconds": mlflow_seconds,
        "tasks": len(tis),
    }


def script_run(stack, snapshot: dict, variants: list[dict], epochs: int, batch_size: int, tag: str) -> dict:
    """The hand-written script in a fresh process (its TensorFlow import included), against the same server."""
    cfg = {
        "snapshot": snapshot, "variants": variants, "epochs": epochs, "batch_size": batch_size,
        "experiment": "bnpipe-script-baseline", "model_name": f"script-baseline-{tag}",
    }  # fmt: skip
    env = child_env({"MLFLOW_TRACKING_URI": stack.mlflow_url}, drop=("BNPIPE_TF_", "BNPIPE_TRAIN_", "OMP_"))
    t0 = time.perf_counter()
    out = run_module("benchmarks.script_baseline", ["--config", json.dumps(cfg)], env)
    out["wall_seconds"] = time.perf_counter() - t0
    return out


def end_to_end(stack, conf: dict, snapshot: dict, variants: list[dict], reps: int) -> dict:
    """Row 4 (and row 7's DAG runs): DAG vs. script, interleaved, ``reps`` times.

    Each repetition runs the DAG twice in a row: first with no warm trainer alive (as a scheduled
    run finds them after ``BNPIPE_WARM_IDLE``), then right after, with the trainers still warm.
    """
    from bnpipe.mlflow_edge import tracking
    from bnpipe.operations import warm

    client = tracking.connect(stack.mlflow_url)
    home = Path(stack.env["BNPIPE_HOME"])
    out = {"dag": [], "dag_warm": [], "script": []}
    for rep in range(reps):
        for arm in rotated(["dag", "script"], rep):
            if arm == "dag":
                warm.stop_all(home)
                out["dag"].append(dag_run(stack, conf, client))
                out["dag_warm"].append(dag_run(stack, conf, client))
            else:
                tag = f"{int(time.time())}-{rep}"
                out["script"].append(script_run(stack, snapshot, variants, conf["epochs"], conf["batch_size"], tag))
    return out


def _pool(jobs: list[tuple[list[str], dict, Path]], concurrency: int) -> float:
    """Run the commands with at most ``concurrency`` at once; wall seconds until the last ends.

    Each job's stderr goes to ``<its out file>.log`` (a pipe could fill up and block it)."""
    pending, running = list(jobs), []
    t0 = time.perf_counter()
    while pending or running:
        while pending and len(running) < concurrency:
            cmd, env, out = pending.pop(0)
            with out.with_suffix(".log").open("wb") as err:
                proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
            running.append((proc, out))
        for item in list(running):
            proc, out = item
            if proc.poll() is not None:
                running.remove(item)
                if proc.returncode != 0:
                    log = out.with_suffix(".log").read_text(errors="replace")
                    raise RuntimeError(f"training task failed ({proc.returncode}):\n{log[-3000:]}")
        time.sleep(0.05)
    return time.perf_counter() - t0


def parallel(stack, params: dict, snapshot: dict, variants: list[dict], levels: list[int], reps: int, tmp: Path):
    """Row 5: the grid's training tasks with 1, 2, ... N at once, interleaved over ``reps``."""
    from bnpipe.mlflow_edge import tracking
    from bnpipe.operations import warm

    out = {str(c): [] for c in levels}
    for rep in range(reps):
        for c in rotated(list(levels), rep):
            warm.stop_all(Path(stack.env["BNPIPE_HOME"]))  # every level starts its own trainers
            run = tracking.start_dag_run(params, "benchmarks", f"parallel-{int(time.time())}-{rep}-c{c}", "")
            env = child_env(
                {"MLFLOW_TRACKING_URI": stack.mlflow_url, "BNPIPE_TRAIN_CONCURRENCY": c}, drop=("BNPIPE_TF_", "OMP_")
            )
            jobs = []
            for i, variant in enumerate(variants):
                cfg = {"snapshot": snapshot, "variant": variant, "params": params, "run": run}
                path = tmp / f"task-{rep}-{c}-{i}.json"
                cmd = [sys.executable, "-m", "benchmarks.trainer", "task", "--config", json.dumps(cfg)]
                jobs.append(([*cmd, "--out", str(path)], env, path))
            wall = _pool(jobs, c)
            tasks = [json.loads(p.read_text()) for _, _, p in jobs]
            out[str(c)].append({"wall_seconds": wall, "tasks": tasks})
    return out
