"""The benchmark suite's driver: runs every row side by side and writes ``BENCHMARKS.md``.

Each row is a ratio (or a time) measured in this one run, with interleaved repetitions; the
table shows the median with min and max. ``--smoke`` runs the same code on tiny sizes (used by
``tests/test_benchmarks_smoke.py``); its numbers mean nothing beyond "the harness works".
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from benchmarks import grid, ingest, scaleout
from benchmarks.common import ROOT, child_env, run_module, summary

SIZES = {
    "full": {
        "reps": 3,
        "trainer": {"max_rows": 20000, "epochs": 4, "batch_size": 32},
        # the default grid's design-notes model, he_normal only: 4 variants, with the DAG's default epochs
        # and batch size on a third of Fashion-MNIST (the whole set took ~8 min per repetition on a loaded
        # 2-core machine); row 5 runs them on a smaller subsample
        "grid": {"max_rows": 20000, "epochs": 5, "batch_size": 32, "axes": {"initializer": ["he_normal"]}},
        "parallel": {"max_rows": 6000, "epochs": 3},
        "parallel_reps": 2,
        "synthetic": [100_000, 1_000_000, 10_000_000],
        "ingest_reps": 2,
        "fashion_max_rows": None,
        "peak": {},
        # row 8: the issue's small-data case (a wine grid of 3 epochs: 4 steps per epoch), one trainer process
        "overhead": {"dataset": "wine", "grid": "smoke", "seeds": 2, "epochs": 3, "batch_size": 32, "reps": 3},
        "roofline": {"max_rows": 20000, "epochs": 3, "batch_size": 32, "reps": 3, "triad_mib": 256},
        # row 10: the default grid's 8 configurations x 2 seeds on digits, one worker vs. two (one core each);
        # at 10 epochs a variant trained in ~3.6 s of a ~9 s task cycle: 30 epochs make training the larger part
        "scaleout": {
            "conf": {"dataset": "digits", "grid": "default", "seeds": 2, "epochs": 30, "batch_size": 32},
            "reps": 2,
        },
    },
    "smoke": {
        "reps": 1,
        "trainer": {"max_rows": 600, "epochs": 3, "batch_size": 32},
        "grid": {
            "max_rows": 300,
            "epochs": 1,
            "batch_size": 32,
            "hidden": [16],
            "axes": {"preprocessing": ["bn_first", "standard"], "initializer": ["he_normal"], "clipping": ["none"]},
        },  # fmt: skip
        "parallel": {},
        "parallel_reps": 1,
        "synthetic": [1_000, 10_000, 100_000],
        "ingest_reps": 1,
        "fashion_max_rows": 600,
        "peak": {"n": 512, "trials": 1, "per_trial": 2},
        "overhead": {"dataset": "wine", "grid": "smoke", "seeds": 1, "epochs": 2, "batch_size": 32, "reps": 1},
        "roofline": {"max_rows": 600, "epochs": 3, "batch_size": 32, "reps": 1, "triad_mib": 32},
        # row 10: two variants of one epoch, one repetition (still a stack start and two DAG runs)
        "scaleout": {
            "conf": {
                "dataset": "breast_cancer",
                "grid": "custom",
                "axes": {"preprocessing": ["standard", "bn_first"]},
                "hidden": [16],
                "epochs": 1,
            },
            "reps": 1,
        },
    },
}


@contextmanager
def _env(**values):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update({k: str(v) for k, v in values.items()})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line), platform.processor())
    mem = next((int(line.split()[1]) // 1024 for line in meminfo if "MemTotal" in line), None)
    versions = {p: metadata.version(p) for p in ("tensorflow-cpu", "keras", "mlflow", "apache-airflow", "numpy")}
    return {
        "cpu": cpu, "cores": os.cpu_count(), "mem_mib": mem, "os": platform.platform(),
        "python": sys.version.split()[0], **versions,
    }  # fmt: skip


def _row(rid, what, values, unit, target=None, ok=None, digits=2):
    stats = summary(values)
    return {"id": rid, "what": what, "stats": stats, "unit": unit, "target": target, "ok": ok, "digits": digits}


def _check(values, test) -> bool | None:
    med = summary(values)["median"]
    return None if med is None else bool(test(med))


def trainer_rows(res: dict) -> list[dict]:
    reps = res["reps"]
    t, off, plain = ([r[a] for r in reps] for a in ("trainer", "trainer_noinst", "plain"))
    speed = [a["samples_per_second"] / b["samples_per_second"] for a, b in zip(t, plain)]
    whole = [b["fit_seconds"] / a["fit_seconds"] for a, b in zip(t, plain)]
    inst = [100 * (b["samples_per_second"] / a["samples_per_second"] - 1) for a, b in zip(t, off)]
    inst_self = [100 * a["instrument_share"] for a in t if a.get("instrument_share") is not None]
    peak = [r["peak_gflops"] for r in reps]
    frac = [a["gflops"] / r["peak_gflops"] for a, r in zip(t, reps)]
    frac_plain = [b["gflops"] / r["peak_gflops"] for b, r in zip(plain, reps)]
    return [
        _row("1a", "trainer (MLflow + instrumentation on) / plain `fit`, samples/s per epoch", speed, "x",
             ">= 2.5", _check(speed, lambda m: m >= 2.5)),
        _row("1b", "  trainer samples/s", [a["samples_per_second"] for a in t], "samples/s", digits=0),
        _row("1c", "  plain `fit` samples/s (Keras defaults)", [b["samples_per_second"] for b in plain], "samples/s",
             digits=0),
        _row("1d", "trainer / plain, whole `fit` call incl. tracing and XLA compile", whole, "x"),
        _row("1e", "instrumentation's cost (instrument on vs. off, samples/s)", inst, "%", "< 5",
             _check(inst, lambda m: m < 5), 1),
        _row("1f", "  instrumentation's own time per epoch (timed inside its callback) / epoch period", inst_self,
             "%", "< 5", _check(inst_self, lambda m: m < 5), 1),
        _row("2a", "fp32 matmul peak (tf.matmul 2048^2)", peak, "GFLOP/s", digits=1),
        _row("2b", "trainer achieved (Dense FLOPs, fwd+bwd x3, + validation fwd)", [a["gflops"] for a in t],
             "GFLOP/s", digits=1),
        _row("2c", "trainer fraction of peak", [100 * f for f in frac], "%", digits=1),
        _row("2d", "plain `fit` fraction of peak", [100 * f for f in frac_plain], "%", digits=1),
    ]  # fmt: skip


def mlflow_rows(res: dict, par: dict, e2e: dict) -> list[dict]:
    """Per variant, from what each trainer logged (``mlflow_seconds``): rows 1-3's trainer runs, row 5's
    tasks and the variants of row 4's DAG runs."""
    per_variant = [r["trainer"]["mlflow_seconds"] for r in res["reps"]]
    per_variant += [t["mlflow_seconds"] for runs in par.values() for run in runs for t in run["tasks"]]
    per_variant += [s for d in e2e["dag"] + e2e["dag_warm"] for s in d["variant_mlflow_seconds"]]
    share = [r["trainer"]["mlflow_seconds"] / r["trainer"]["fit_seconds"] for r in res["reps"]]
    share += [t["mlflow_seconds"] / t["train_seconds"] for runs in par.values() for run in runs for t in run["tasks"]]
    full = [r["registry"]["full_model_seconds"] for r in res["reps"]]
    registry = [r["registry"]["registry_seconds"] for r in res["reps"]]
    return [
        _row("3a", "MLflow per variant: connect, params, metrics, datasets, LoggedModel with model.keras (save + "
             "upload), system metrics", per_variant,
             "s", "< 0.5", _check(per_variant, lambda m: m < 0.5)),
        _row("3b", "  MLflow per variant / its training time", [100 * s for s in share], "%", digits=1),
        _row("3c", "winner only: full MLflow pyfunc model and mlflow.models.evaluate (once per DAG run)", full, "s"),
        _row("3d", "winner only: registry (version, alias, model card)", registry, "s"),
    ]  # fmt: skip


def grid_rows(e2e: dict, par: dict, levels: list[int]) -> tuple[list[dict], int]:
    dag, warm_dag, script = e2e["dag"], e2e["dag_warm"], e2e["script"]
    ratio = [d["wall_seconds"] / s["wall_seconds"] for d, s in zip(dag, script)]
    warm_ratio = [d["wall_seconds"] / s["wall_seconds"] for d, s in zip(warm_dag, script)]
    rows = [
        _row("4a", "DAG under the scheduler (trainers cold) / sequential script with autolog, wall time", ratio,
             "x", "<= 0.8", _check(ratio, lambda m: m <= 0.8)),
        _row("4b", "  DAG run, trigger to end (trainers cold)", [d["wall_seconds"] for d in dag], "s", digits=1),
        _row("4c", "  script, process start to exit", [s["wall_seconds"] for s in script], "s", digits=1),
        _row("4d", "DAG run right after another (trainers warm) / script", warm_ratio, "x", "<= 0.8",
             _check(warm_ratio, lambda m: m <= 0.8)),
        _row("4e", "  DAG run, trigger to end (trainers warm)", [d["wall_seconds"] for d in warm_dag], "s", digits=1),
    ]  # fmt: skip
    base = [r["wall_seconds"] for r in par[str(levels[0])]]
    best, best_wall = levels[0], summary(base)["median"]
    for c in levels[1:]:
        walls = [r["wall_seconds"] for r in par[str(c)]]
        speedup = [b / w for b, w in zip(base, walls)]
        rows.append(_row(f"5-{c}", f"speedup with {c} training tasks at once (vs. 1)", speedup, "x"))
        if summary(walls)["median"] < best_wall:
            best, best_wall = c, summary(walls)["median"]
    rows.append(_row("5-1", "  grid wall time with 1 task at a time", base, "s", digits=1))
    over = [d["overhead_seconds"] for d in dag]
    warm_over = [d["overhead_seconds"] for d in warm_dag]
    rows += [
        _row("7a", "orchestration overhead per DAG run (wall - time inside `fit`), trainers cold", over, "s", "< 5",
             _check(over, lambda m: m < 5), 1),
        _row("7a'", "orchestration overhead per DAG run, trainers warm", warm_over, "s", "< 5",
             _check(warm_over, lambda m: m < 5), 1),
        _row("7b", "  trigger to first task running", [d["trigger_to_first_task_seconds"] for d in dag], "s", digits=1),
        _row("7c", "  queued to running, summed over tasks", [d["queued_seconds_total"] for d in dag], "s", digits=1),
        _row("7d", "  train task start to `fit` start (process, trainer, data, MLflow run), median, cold",
             [d["task_startup_seconds_median"] for d in dag], "s", digits=1),
        _row("7d'", "  train task start to `fit` start, median, warm",
             [d["task_startup_seconds_median"] for d in warm_dag], "s", digits=1),
        _row("7e", "  compare task (rank, full model, registry, report)",
             [d["compare_seconds"] for d in dag + warm_dag], "s", digits=1),
        _row("7f", "  first task start to first training task start (validate, track, ingest, plan)",
             [d["before_training_seconds"] for d in dag + warm_dag], "s", digits=1),
        _row("7g", "  teardown (close_runs) start to the run's end", [d["teardown_seconds"] for d in dag + warm_dag],
             "s", digits=1),
    ]  # fmt: skip
    return rows, best


def ingest_rows(res: dict, sizes: list[int]) -> list[dict]:
    cold, cached = res["fashion_cold"], res["fashion_cached"]
    small, mid, big = (res["synthetic"][str(n)] for n in sizes)
    factor = sizes[2] / sizes[1]
    t_growth = [b["seconds"] / a["seconds"] for a, b in zip(mid, big)]
    m_growth = [b["peak_above_baseline"] / max(a["peak_above_baseline"], 1) for a, b in zip(mid, big)]
    copies = [b["peak_above_baseline"] / ingest.data_bytes(b["rows"], b["n_features"]) for b in big]
    mib = 1024 * 1024
    rows = [
        _row("6a", "Fashion-MNIST ingest, cold", [r["seconds"] for r in cold], "s"),
        _row("6b", "Fashion-MNIST ingest, cached (snapshot reused)", [r["seconds"] for r in cached], "s"),
    ]
    for n, runs in zip(sizes, (small, mid, big)):
        rows.append(_row(f"6-{n:.0e}", f"synthetic {n:.0e} rows: time", [r["seconds"] for r in runs], "s"))
        rows.append(_row(f"6-{n:.0e}m", f"synthetic {n:.0e} rows: peak RSS above baseline",
                         [r["peak_above_baseline"] / mib for r in runs], "MiB", digits=0))  # fmt: skip
    rows += [
        _row("6c", f"time growth {sizes[1]:.0e} -> {sizes[2]:.0e} rows", t_growth, "x", f"<= {factor:.0f} (linear)",
             _check(t_growth, lambda m: m <= factor)),
        _row("6d", f"peak-RSS growth {sizes[1]:.0e} -> {sizes[2]:.0e} rows", m_growth, "x",
             f"<= {factor:.0f} (linear)", _check(m_growth, lambda m: m <= factor)),
        _row("6e", f"peak RSS above baseline at {sizes[2]:.0e} rows / one copy of the data", copies, "copies",
             "<= 1", _check(copies, lambda m: m <= 1)),
    ]  # fmt: skip
    return rows


def overhead_rows(res: dict) -> list[dict]:
    """Row 8: everything but ``fit``'s steady-state epochs, as a share of a small-data grid's wall time."""
    reps = res["reps"]
    arm = {a: [r[a] for r in reps] for a in ("before", "no_xla", "cold", "warm")}
    share = {a: [100 * g["other_share"] for g in runs] for a, runs in arm.items()}
    speed = {a: [b["wall"] / g["wall"] for b, g in zip(arm["before"], arm[a])] for a in ("cold", "warm")}
    return [
        _row("8a", "small-data grid in a warm trainer: wall time outside `fit`'s steady-state epochs / wall time",
             share["warm"], "%", "<= 25", _check(share["warm"], lambda m: m <= 25), 1),
        _row("8b", "  the same, trainer cold at the grid's start (one trace per graph)", share["cold"], "%", "<= 25",
             _check(share["cold"], lambda m: m <= 25), 1),
        _row("8c", "  the same before: XLA on, every variant built, compiled and traced afresh", share["before"], "%",
             digits=1),
        _row("8d", "grid wall time, before / trainer cold at the grid's start", speed["cold"], "x"),
        _row("8e", "grid wall time, before / warm trainer", speed["warm"], "x"),
        _row("8f", "  grid wall time, warm trainer", [g["wall"] for g in arm["warm"]], "s", digits=1),
        _row("8g", "  grid wall time, trainer cold at the grid's start", [g["wall"] for g in arm["cold"]], "s",
             digits=1),
        _row("8h", "  grid wall time before", [g["wall"] for g in arm["before"]], "s", digits=1),
        _row("8i", "  grid wall time before, with XLA chosen by the run's steps only",
             [g["wall"] for g in arm["no_xla"]], "s", digits=1),
        _row("8j", "  `fit`'s steady-state epochs, warm trainer", [g["steady"] for g in arm["warm"]], "s", digits=1),
    ]  # fmt: skip


def roofline_rows(res: dict) -> list[dict]:
    """Row 9: the training step's roofline and the trainer's place under it."""
    reps = res["reps"]
    col = {k: [r[k] for r in reps] for k in reps[0]}
    of_bound = [100 * t / b for t, b in zip(col["trainer_gflops"], col["bound_gflops"])]
    of_peak = [100 * t / p for t, p in zip(col["trainer_gflops"], col["peak_gflops"])]
    bare_of_mm = [100 * b / m for b, m in zip(col["bare_gflops"], col["matmul_gflops"])]
    return [
        _row("9a", f"memory bandwidth (STREAM triad, float64, {res['triad_mib']} MiB per array)", col["bandwidth_gbs"],
             "GB/s", digits=1),
        _row("9b", f"  bandwidth from cache (the same triad, {res['cache_triad_kib']:,} KiB: one step's working set)",
             col["cache_bandwidth_gbs"], "GB/s", digits=1),
        _row("9c", "  fp32 matmul peak, measured alongside (as row 2a)", col["peak_gflops"], "GFLOP/s", digits=1),
        _row("9d", f"training step's arithmetic intensity ({res['flops'] / 1e6:.1f} MFLOP, "
             f"{res['bytes'] / 1e6:.2f} MB)", [res["intensity"]], "FLOP/B"),
        _row("9e", "roofline bound: min(peak, bandwidth x intensity)", col["bound_gflops"], "GFLOP/s", digits=1),
        _row("9f", "trainer achieved / roofline bound", of_bound, "%", ">= 50", _check(of_bound, lambda m: m >= 50), 1),
        _row("9g", "  trainer achieved / fp32 peak", of_peak, "%", digits=1),
        _row("9h", "  trainer achieved (as row 2b: steady-state epochs, validation and instrumentation in them)",
             col["trainer_gflops"], "GFLOP/s", digits=1),
        _row("9i", "  bare training steps (the same model's `fit`, no validation, no callbacks)", col["bare_gflops"],
             "GFLOP/s", digits=1),
        _row("9j", "  one bare training step", col["bare_step_ms"], "ms", digits=3),
        _row("9k", "  the step's matrix products alone, at its shapes", col["matmul_gflops"], "GFLOP/s", digits=1),
        _row("9l", "  bare steps / their matrix products alone", bare_of_mm, "%", digits=1),
        _row("9m", f"  operations in one traced training step ({res['matmuls']} of them matrix products)", [res["ops"]],
             "ops", digits=0),
        _row("9n", "  bare step's time beyond its matrix products, per other operation", col["us_per_other_op"], "us",
             digits=1),
    ]  # fmt: skip


def scaleout_rows(res: dict) -> list[dict]:
    """Row 10: training throughput of two Celery workers on one core each against one."""
    runs = res["runs"]
    vpm = {arm: [r["variants_per_minute"] for r in runs[arm]] for arm in runs}
    idle = {arm: [100 * statistics.mean(w["idle_seconds"] / r["seconds"] for w in r["workers"].values())
                  for r in runs[arm]] for arm in runs}  # fmt: skip
    control = {arm: [r["control_cpu_seconds"] / r["run_seconds"] for r in runs[arm]] for arm in runs}
    target = res["target"]
    return [
        _row("10a", "Celery scale-out: two workers on one core each / one worker on one core, training "
             "throughput (variants/min)", res["ratio"], "x", f">= {target}",
             _check(res["ratio"], lambda m: m >= target)),
        _row("10b", "  one worker (`taskset -c 0`), variants/min in the training phase", vpm["one"], "variants/min"),
        _row("10c", "  two workers (`taskset -c 0`, `-c 1`), variants/min in the training phase", vpm["two"],
             "variants/min"),
        _row("10d", "  training phase (first `train` start to last end), one worker",
             [r["seconds"] for r in runs["one"]], "s", digits=1),
        _row("10e", "  training phase, two workers", [r["seconds"] for r in runs["two"]], "s", digits=1),
        _row("10f", "  a worker's time without a training task in the phase, one worker", idle["one"], "%", digits=1),
        _row("10g", "  the same, two workers (mean over the workers)", idle["two"], "%", digits=1),
        _row("10h", "  control plane's CPU (scheduler, api-server, dag-processor, MLflow server) over the DAG "
             "run's wall time, one worker", control["one"], "cores", digits=2),
        _row("10i", "  the same, two workers", control["two"], "cores", digits=2),
        _row("10j", "  a `train` task instance's duration, median, one worker",
             [r["task_seconds_median"] for r in runs["one"]], "s", digits=2),
        _row("10k", "  the same, two workers side by side", [r["task_seconds_median"] for r in runs["two"]], "s",
             digits=2),
    ]  # fmt: skip


def _fmt(v, digits):
    return "-" if v is None else f"{v:,.{digits}f}"


def table(rows: list[dict]) -> str:
    lines = ["| # | measurement | median | min | max | unit | target | met |", "|---|---|---:|---:|---:|---|---|---|"]
    for r in rows:
        s, d = r["stats"], r["digits"]
        met = {True: "yes", False: "**MISSED**", None: ""}[r["ok"]] if r["target"] else ""
        lines.append(
            f"| {r['id']} | {r['what']} | {_fmt(s['median'], d)} | {_fmt(s['min'], d)} | {_fmt(s['max'], d)} "
            f"| {r['unit']} | {r['target'] or ''} | {met} |"
        )
    return "\n".join(lines)


def _command(argv: list[str]) -> str:
    exe = Path(sys.executable)
    try:
        py = str(exe.relative_to(Path.cwd()))
    except ValueError:
        py = "python"
    return " ".join([py, "-m", "benchmarks", *argv])


def run(mode: str = "full", stack=None, out: Path | None = None, argv: list[str] | None = None, log=print) -> dict:
    """Run every row; returns ``{"rows": [...], "markdown": str, "raw": {...}}`` and writes ``out``."""
    from bnpipe.base import settings
    from bnpipe.core import snapshots, sources
    from bnpipe.operations import params as spec
    from bnpipe.operations.stack import EXPERIMENT_DAG, Stack

    size = SIZES[mode]
    cores = os.cpu_count() or 1
    levels = sorted({1, 2, cores, 2 * cores}) if mode == "full" else [1, 2]
    started = time.monotonic()
    load_before = os.getloadavg()
    # row 10 needs PostgreSQL, Redis, taskset and two cores: say so before an hour of other rows, not after
    scaleout_missing = "; ".join(scaleout.missing())
    if scaleout_missing and mode == "full":
        raise scaleout.Unavailable(f"row 10 (Celery scale-out) cannot run here: {scaleout_missing}")

    def say(msg: str) -> None:
        log(f"[{time.monotonic() - started:5.0f} s] {msg}")

    work = Path(tempfile.mkdtemp(prefix="bnpipe-bench-"))
    own_stack = stack is None
    try:
        if own_stack:
            home = work / "home"
            stack = Stack(work / "stack", extra_env={"BNPIPE_HOME": str(home), "BNPIPE_SCHEDULE": ""})
            say("starting the Airflow + MLflow stack ...")
            stack.start(timeout=600, unpause=(EXPERIMENT_DAG,))
        home = Path(stack.env["BNPIPE_HOME"])
        store = home / "snapshots"
        raw: dict = {"machine": machine(), "mode": mode}
        with _env(MLFLOW_TRACKING_URI=stack.mlflow_url, BNPIPE_HOME=home, BNPIPE_EXPERIMENT="bnpipe-bench"):
            # Rows 1-3: one process, all cores for every arm.
            snap = snapshots.ingest(
                sources.IngestRequest(source="fashion_mnist", max_rows=size["trainer"]["max_rows"]), store
            )
            cfg = {
                **{k: size["trainer"][k] for k in ("epochs", "batch_size")}, "snapshot": snap, "threads": cores,
                "variant": {"preprocessing": "bn_first", "initializer": "he_normal"}, "reps": size["reps"],
                "peak": size["peak"],
            }  # fmt: skip
            say(f"rows 1-3: trainer vs. plain fit, {size['reps']} interleaved repetitions ...")
            env = child_env({"MLFLOW_TRACKING_URI": stack.mlflow_url, "BNPIPE_EXPERIMENT": "bnpipe-bench"})
            import json

            raw["trainer"] = run_module("benchmarks.trainer", ["compare", "--config", json.dumps(cfg)], env)

            # Rows 4, 5, 7: the same grid for the DAG, the script and the parallel tasks.
            g = size["grid"]
            conf = {"dataset": "fashion_mnist", "grid": "default", "max_rows": g["max_rows"], "epochs": g["epochs"],
                    "batch_size": g["batch_size"], "axes": g["axes"]}  # fmt: skip
            if g.get("hidden"):
                conf["hidden"] = g["hidden"]
            params = spec.validate(conf)
            variants = spec.variant_dicts(params)
            gsnap = snapshots.ingest(spec.ingest_request(params), store)  # the DAG's ingest finds it cached
            say(f"rows 4, 7: DAG vs. script over {len(variants)} variants, {size['reps']} repetitions ...")
            raw["e2e"] = grid.end_to_end(stack, conf, gsnap, variants, size["reps"])
            params = spec.validate({**conf, **size["parallel"]})
            psnap = snapshots.ingest(spec.ingest_request(params), store)
            say(f"row 5: {len(variants)} training tasks at {levels} at once ...")
            raw["parallel"] = grid.parallel(stack, params, psnap, variants, levels, size["parallel_reps"], work)
        say(f"row 6: ingest at {size['synthetic']} rows and Fashion-MNIST ...")
        raw["ingest"] = ingest.run(size["synthetic"], size["ingest_reps"], size["fashion_max_rows"], work / "ingest")
    finally:
        if own_stack and stack is not None:
            stack.stop()
        shutil.rmtree(work, ignore_errors=True)

    # Rows 8, 9 need no services: they run after the stack has stopped, so its processes keep off the cores.
    import json

    with tempfile.TemporaryDirectory(prefix="bnpipe-bench-") as store:
        say(f"row 8: a small-data grid in one trainer process, {size['overhead']['reps']} repetitions ...")
        cfg = {**size["overhead"], "threads": settings.tf_threads(), "store": store}  # a training slot's threads
        raw["overhead"] = run_module("benchmarks.overhead", ["grid", "--config", json.dumps(cfg)], child_env())
        say(f"row 9: bandwidth, peak and the trainer, {size['roofline']['reps']} repetitions ...")
        cfg = {**size["roofline"], "threads": cores, "store": store, "peak": size["peak"],
               "variant": {"preprocessing": "bn_first", "initializer": "he_normal"}}  # fmt: skip
        raw["roofline"] = run_module("benchmarks.roofline", ["measure", "--config", json.dumps(cfg)], child_env())
    if scaleout_missing:
        say(f"row 10 skipped: {scaleout_missing}")
    else:  # its own Celery stack, after the LocalExecutor one has stopped
        say(f"row 10: one Celery worker vs. two, one core each, {size['scaleout']['reps']} repetition(s) ...")
        args = ["--config", json.dumps(size["scaleout"])]
        raw["scaleout"] = run_module("benchmarks.scaleout", args, child_env(), timeout=7200)

    rows = trainer_rows(raw["trainer"]) + mlflow_rows(raw["trainer"], raw["parallel"], raw["e2e"])
    g_rows, best = grid_rows(raw["e2e"], raw["parallel"], levels)
    rows += g_rows + ingest_rows(raw["ingest"], size["synthetic"])
    rows += overhead_rows(raw["overhead"]) + roofline_rows(raw["roofline"])
    rows += scaleout_rows(raw["scaleout"]) if "scaleout" in raw else []
    rows.sort(key=lambda r: int(re.match(r"\d+", r["id"]).group()))  # by row number, stable within
    minutes = (time.monotonic() - started) / 60
    m = raw["machine"]
    tr = raw["trainer"]
    ov, rf = raw["overhead"], raw["roofline"]
    peak_med = summary([r["peak_gflops"] for r in tr["reps"]])["median"]
    bw_med = summary([r["bandwidth_gbs"] for r in rf["reps"]])["median"]
    md = "\n".join([
        "# bnpipe benchmarks",
        "",
        "Generated by the command below; every number comes from that one run (`benchmarks/`). Each row",
        "is measured side by side with interleaved repetitions: median, min and max over them.",
        "",
        f"- **Command**: `{_command(argv or [])}` ({mode} mode, {minutes:.1f} min)",
        f"- **Date**: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- **Machine**: {m['cpu']}, {m['cores']} cores, {m['mem_mib']} MiB RAM; {m['os']}",
        f"- **Software**: Python {m['python']}, tensorflow-cpu {m['tensorflow-cpu']}, keras {m['keras']}, "
        f"mlflow {m['mlflow']}, apache-airflow {m['apache-airflow']}, numpy {m['numpy']}",
        f"- **Load average** (1/5/15 min) at start {'/'.join(f'{x:.2f}' for x in load_before)}, at end "
        f"{'/'.join(f'{x:.2f}' for x in os.getloadavg())}: other work shared the cores, hence the ranges.",
        f"- **Rows 1-3**: Fashion-MNIST, stratified subsample `max_rows={size['trainer']['max_rows']}` "
        f"({tr['n_train']} train / {tr['n_val']} val rows), variant `{tr['variant']}` (the design notes' MLP, "
        f"{tr['forward_flops_per_sample']:,} forward FLOPs per sample), batch {tr['batch_size']}, "
        f"{tr['epochs']} epochs, {tr['threads']} TensorFlow threads for every arm; samples/s from the steady-state "
        "epochs (epoch-end to epoch-end, after the first), MLflow server over HTTP.",
        f"- **Rows 4, 7**: Fashion-MNIST `max_rows={size['grid']['max_rows']}`, {len(variants)} variants of the "
        f"`default` grid (axes {json.dumps(size['grid']['axes'])}), {size['grid']['epochs']} epochs, batch "
        f"{size['grid']['batch_size']}; the DAG with its defaults ({settings.train_concurrency()} training tasks at "
        f"once, {settings.tf_threads()} TensorFlow thread(s) each), the script with TensorFlow's defaults.",
        f"- **Row 5**: the same variants with {json.dumps(size['parallel'])}, each training task a process of its "
        f"own (as the LocalExecutor runs them) training in its slot's warm trainer, started afresh for each level, "
        f"{size['parallel_reps']} repetitions per level.",
        "- **Row 6**: one fresh process per ingest; peak RSS is the kernel's high-water mark (VmHWM), reset after "
        "the imports and a warm-up, above the RSS at that point.",
        f"- **Row 8**: `{ov['grid']}` grid on `{ov['dataset']}` ({ov['variants']} variants, {ov['graphs']} graphs, "
        f"{ov['seeds']} seed(s), {ov['n_train']} train rows: {ov['steps_per_epoch']} steps per epoch), {ov['epochs']} "
        f"epochs, in one process with {ov['threads']} TensorFlow thread(s), as a warm trainer runs it without MLflow "
        "(`fit`, the test split's scores, the clean-up); steady state = each variant's epochs x the median of its "
        "epochs after the first.",
        f"- **Row 9**: rows 1-3's variant at batch {rf['batch_size']}, {rf['threads']} threads, "
        f"{rf['params']:,} parameters; bytes per step as if nothing stayed cached between passes "
        "(`benchmarks/roofline.py` lists them).",
        _scaleout_note(raw.get("scaleout"), scaleout_missing),
        f"- **Ceilings**: fp32 matmul peak {_fmt(peak_med, 1)} GFLOP/s (row 2a), memory bandwidth "
        f"{_fmt(bw_med, 1)} GB/s (STREAM-style triad, row 9a).",
        "",
        table(rows),
        "",
        f"Row 5: the fastest level was {best} training task(s) at once; the default "
        f"(`BNPIPE_TRAIN_CONCURRENCY`) is one per core, {cores} here.",
        "",
    ])  # fmt: skip
    if out:
        Path(out).write_text(md)
    return {"rows": rows, "markdown": md, "raw": raw, "best_concurrency": best}


def _scaleout_note(res: dict | None, why_not: str) -> str:
    if res is None:
        return f"- **Row 10**: not measured: {why_not}."
    conf = res["conf"]
    return (
        f"- **Row 10**: the native Celery topology of `tests/test_celery_native.py` (its own PostgreSQL databases, "
        f"Redis DB and MLflow server), `{conf['grid']}` grid on `{conf['dataset']}` ({res['variants']} variants, "
        f"{conf['epochs']} epochs), one DAG run per arm and repetition, {res['reps']} repetition(s) interleaved; "
        f"fresh workers per arm, concurrency 1, each pinned to one core with `taskset` ({res['cpu']}, `nproc` "
        f"{res['nproc']}), {res['tf_threads']} TensorFlow thread, "
        f"`BNPIPE_TRAIN_CONCURRENCY={res['train_concurrency']}` in both arms; throughput from the `train` task "
        "instances' start and end dates. The scheduler, api-server, dag-processor and MLflow server are not "
        "pinned and share the cores."
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the harness, not the numbers")
    parser.add_argument("--out", default=None, help="Markdown file (default: BENCHMARKS.md; none with --smoke)")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else (None if args.smoke else ROOT / "BENCHMARKS.md")
    result = run("smoke" if args.smoke else "full", out=out, argv=argv)
    print(table(result["rows"]))
    if out:
        print(f"\nwritten to {out}")
    return 0
