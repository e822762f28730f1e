"""Shared pieces of the benchmark harness: summaries, the MLflow cost meter, subprocess helpers.

Nothing here imports TensorFlow or MLflow at module level: the harness's driver process stays
light, and every measurement that needs TensorFlow runs in a subprocess of its own.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def summary(values) -> dict:
    """Median, min and max of the finite values (None when there are none)."""
    vals = [float(v) for v in values if v is not None and v == v and abs(v) != float("inf")]
    if not vals:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def rotated(items: list, rep: int) -> list:
    """``items`` rotated by ``rep``: interleaved repetitions change which arm goes first."""
    k = rep % len(items)
    return items[k:] + items[:k]


def child_env(extra: dict | None = None, drop: tuple[str, ...] = ()) -> dict:
    """This process's environment plus ``extra``; keys starting with one of ``drop`` are removed."""
    env = {k: v for k, v in os.environ.items() if not (drop and k.startswith(drop))}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update({k: str(v) for k, v in (extra or {}).items()})
    return env


def run_module(module: str, args: list[str], env: dict, timeout: float = 1800) -> dict:
    """Run ``python -m module args`` and return the JSON it writes to the file passed as ``--out``."""
    import tempfile

    with tempfile.NamedTemporaryFile("r", suffix=".json", delete=False) as fh:
        out = Path(fh.name)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", module, *args, "--out", str(out)],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"python -m {module} {args[0]} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        return json.loads(out.read_text())
    finally:
        out.unlink(missing_ok=True)


def child_main(module: str, commands: dict, argv: list[str] | None = None) -> None:
    """The other side of ``run_module``: ``python -m <module> <command> --config JSON --out FILE`` runs
    ``commands[command](config)`` and writes its result to FILE as JSON."""
    import argparse

    parser = argparse.ArgumentParser(prog=f"python -m {module}")
    parser.add_argument("command", choices=sorted(commands))
    parser.add_argument("--config", required=True, help="JSON")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    Path(args.out).write_text(json.dumps(commands[args.command](json.loads(args.config))))


def epoch_periods(client, run_id: str, key: str = "loss") -> list[float]:
    """Seconds between consecutive epochs' ``key`` metric, from the timestamps the trainer logged:
    one full epoch each (training, validation, instrumentation, logging), compile excluded."""
    history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
    stamps = [m.timestamp / 1000 for m in history]
    return [b - a for a, b in zip(stamps, stamps[1:])]


def dense_flops_per_sample(model) -> int:
    """Forward FLOPs of one sample through the model's Dense layers: 2 * in * out each."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense):
            fan_in, fan_out = layer.kernel.shape
            total += 2 * int(fan_in) * int(fan_out)
    return total
