"""Row 6: ingest time and peak memory, each measurement in a fresh subprocess.

``probe`` imports what ingest needs and warms it up on 100 synthetic rows, resets the kernel's
peak-RSS mark (``/proc/self/clear_refs``), records its resident set size as the baseline, runs one
``bnpipe.core.snapshots.ingest`` and reports the seconds and the new peak (VmHWM), so each number belongs to
exactly one ingest. Where the reset is refused, the parent falls back to ``os.wait4``'s peak.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, child_env


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def probe(request: dict, store: str) -> dict:
    import numpy  # noqa: F401 - part of the baseline, as in a task process
    import sklearn.model_selection  # noqa: F401

    from bnpipe.core import snapshots, sources

    with tempfile.TemporaryDirectory() as warm:  # lazy imports and BLAS buffers belong to the baseline
        snapshots.ingest(sources.IngestRequest(source="synthetic", rows=100), Path(warm))
    reset = _reset_peak()  # else the peak of the imports above would hide the ingest's own
    base = _status_bytes("VmRSS")
    t0 = time.perf_counter()
    meta = snapshots.ingest(sources.IngestRequest(**request), Path(store))
    return {
        "seconds": time.perf_counter() - t0,
        "baseline_rss": base,
        "peak_hwm": _status_bytes("VmHWM") if reset else None,
        "reused": meta["reused"],
        "rows": meta["n_train"] + meta["n_val"] + meta["n_test"],
        "n_features": meta["n_features"],
    }


def measure(request: dict, store: Path) -> dict:
    """One ingest in a child process: its seconds, baseline and peak RSS (bytes)."""
    with tempfile.NamedTemporaryFile("r", suffix=".json", delete=False) as fh:
        out = Path(fh.name)
    try:
        cmd = [sys.executable, "-m", "benchmarks.ingest", "--request", json.dumps(request), "--store", str(store)]
        proc = subprocess.Popen([*cmd, "--out", str(out)], env=child_env(), cwd=ROOT, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        err = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise RuntimeError(f"ingest probe {request} failed ({proc.returncode}):\n{err[-3000:]}")
        result = json.loads(out.read_text())
    finally:
        out.unlink(missing_ok=True)
    # the high-water mark since the reset; wait4's peak (whole life, imports included) where it was refused
    result["peak_rss"] = result.pop("peak_hwm") or usage.ru_maxrss * 1024  # KiB on Linux
    result["peak_above_baseline"] = max(0, result["peak_rss"] - result["baseline_rss"])
    return result


def data_bytes(rows: int, n_features: int) -> int:
    """One copy of a synthetic set in memory: float32 features and int64 labels."""
    return rows * (4 * n_features + 8)


def run(sizes: list[int], reps: int, fashion_max_rows: int | None, workdir: Path) -> dict:
    """Fashion-MNIST cold then cached, and the synthetic source at ``sizes``; ``reps`` rounds, interleaved."""
    out: dict = {"fashion_cold": [], "fashion_cached": [], "synthetic": {str(n): [] for n in sizes}}
    fashion = {"source": "fashion_mnist", "max_rows": fashion_max_rows}
    for rep in range(reps):
        store = workdir / f"fashion-{rep}"
        out["fashion_cold"].append(measure(fashion, store))
        out["fashion_cached"].append(measure(fashion, store))
        for n in sizes if rep % 2 == 0 else list(reversed(sizes)):
            store = workdir / f"synthetic-{rep}-{n}"
            out["synthetic"][str(n)].append(measure({"source": "synthetic", "rows": n}, store))
            shutil.rmtree(store, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ingest")
    parser.add_argument("--request", required=True, help="IngestRequest fields as JSON")
    parser.add_argument("--store", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    Path(args.out).write_text(json.dumps(probe(json.loads(args.request), args.store)))


if __name__ == "__main__":
    main()
