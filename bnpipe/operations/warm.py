"""Warm trainers: one long-lived process per training slot, with TensorFlow already imported.

A training task that imports TensorFlow itself pays about 4.5 s before its first step (the
import alone, on a quiet 2-core machine), and a DAG run pays it once per variant. Instead, the
first training task of a slot *spawns* a trainer (a fresh interpreter, never a fork: TensorFlow
does not survive one), which imports TensorFlow once, caps its threads, and then trains one
variant per request for every later task of that slot. Each task still runs under Airflow as
before, holds its slot for as long as it trains, and gets the trainer's output in its own log.

Protocol (JSON lines on an abstract Unix socket, so deep ``BNPIPE_HOME`` paths never hit the
108-byte socket path limit; a trainer serves only processes of its own user, checked with
``SO_PEERCRED``):

- task -> trainer: ``{"job": {...train_and_log's arguments...}, "env": {BNPIPE_*, MLFLOW_*}}``;
  later, optionally, ``{"abort": "FAILED"}`` when the task itself fails (e.g. its timeout);
- trainer -> task: ``{"out": text}`` lines, then ``{"result": {...}}`` or ``{"error": ...}``.

If the task goes away mid-fit (SIGKILL: the socket closes; or its parent, Airflow's supervisor,
dies with its Celery worker: the task then hangs up), the trainer stops at the next execution
boundary (every ``steps_per_execution`` steps) and marks the variant's MLflow run KILLED; on
``abort`` it marks it with the given status. A trainer that does not answer an abort within
``ABORT_GRACE`` seconds is killed by the task, so a hung trainer never holds its slot.
A slot is an exclusive ``flock`` on a file, so it is released even when its holder is killed.

Trainers live under ``$BNPIPE_HOME/warm/<code digest>-t<threads>/``: a pool per code version and
thread cap, so a changed ``bnpipe`` never runs in an old trainer. They exit after
``BNPIPE_WARM_IDLE`` seconds without work (default 600), after a job when their RSS passes
``BNPIPE_WARM_MAX_RSS_MB`` (default 4096), or on SIGTERM (``stop_all``: ``bnpipe run`` and
``make down`` call it). ``BNPIPE_WARM_TRAINERS=0`` trains inside the task process instead, as
does a process that has already imported TensorFlow (``dag.test`` without ``--parallel``).

Only the standard library at import time: DAG files may import this module.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path

from bnpipe.base import procs, settings

ENV_PREFIXES = ("BNPIPE_", "MLFLOW_")
START_TIMEOUT = 120.0  # a trainer's own start: the TensorFlow import, on a busy machine
ABORT_GRACE = 20.0  # how long a failing task waits for its trainer to record the abort


class WarmTrainerError(RuntimeError):
    """The trainer reported an error, or went away before it answered."""


class _Vanished(WarmTrainerError):
    """The trainer closed the connection before a single reply (e.g. it was exiting on idle)."""


def enabled() -> bool:
    return settings.warm_trainers_enabled() and "tensorflow" not in sys.modules


def idle_seconds() -> float:
    return settings.warm_idle_seconds()


def max_rss_mb() -> float:
    return settings.warm_max_rss_mb()


def code_digest() -> str:
    """The interpreter and the ``bnpipe`` sources: a trainer only serves the code it was started with."""
    h = hashlib.sha256(sys.executable.encode())
    for path in sorted(settings.PACKAGE_DIR.rglob("*.py")):
        h.update(str(path.relative_to(settings.PACKAGE_DIR)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:12]


def pool_dir(threads: int) -> Path:
    return settings.home() / "warm" / f"{code_digest()}-t{threads}"


def _address(pool: Path, slot: int) -> str:
    return "\0bnpipe-warm-" + hashlib.sha256(f"{pool}/{slot}".encode()).hexdigest()[:24]


def _send(conn: socket.socket, message: dict, lock: threading.Lock | None = None) -> None:
    data = (json.dumps(message) + "\n").encode()
    with lock or contextlib.nullcontext():
        conn.sendall(data)


# ---------------------------------------------------------------- the task's side
def train_variant(snapshot: dict, variant_dict: dict, cfg, experiment_id: str, parent_run_id: str,
                  map_index: int = -1, try_number: int = 1) -> dict:  # fmt: skip
    """``logged_training.train_and_log`` in a warm trainer when one can be had, else in this process."""
    from dataclasses import asdict

    args = {
        "snapshot": snapshot, "variant_dict": variant_dict, "cfg": asdict(cfg), "experiment_id": experiment_id,
        "parent_run_id": parent_run_id, "map_index": map_index, "try_number": try_number,
    }  # fmt: skip
    if enabled():
        threads = cfg.threads or settings.tf_threads()
        result = _run_in_pool(args, threads, settings.train_concurrency())
        if result is not None:
            return result
        print("bnpipe: no warm trainer slot was free; training in the task process", file=sys.stderr)
    from bnpipe.mlflow_edge import logged_training

    return logged_training.train_and_log(**{**args, "cfg": cfg})


def _run_in_pool(args: dict, threads: int, slots: int) -> dict | None:
    pool = pool_dir(threads)
    pool.mkdir(parents=True, exist_ok=True)
    for slot in range(slots):
        lock = (pool / f"slot-{slot}.lock").open("a+")  # held for the whole job
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        try:
            for attempt in (1, 2):
                try:
                    conn = _connect_or_spawn(pool, slot, threads)
                except WarmTrainerError as exc:  # could not get a trainer: train here rather than fail
                    print(f"bnpipe: {exc}", file=sys.stderr)
                    return None
                print(f"bnpipe: training in the warm trainer of slot {slot} (log: {pool / f'slot-{slot}.log'})")
                with conn:
                    try:
                        return _exchange(conn, args, pool, slot)
                    except _Vanished:
                        if attempt == 2:
                            raise
                time.sleep(0.5)  # a trainer that was exiting: give its socket time to go
        finally:
            lock.close()
    return None


def _connect(pool: Path, slot: int) -> socket.socket | None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(_address(pool, slot))
    except (ConnectionRefusedError, FileNotFoundError):
        conn.close()
        return None
    return conn


def _connect_or_spawn(pool: Path, slot: int, threads: int) -> socket.socket:
    conn = _connect(pool, slot)
    if conn is not None:
        return conn
    log = pool / f"slot-{slot}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CTX_"))}
    cmd = [sys.executable, "-m", "bnpipe.operations.warm", "--pool", str(pool), "--slot", str(slot)]
    proc = procs.spawn([*cmd, "--threads", str(threads)], log, env)  # a session of its own
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        conn = _connect(pool, slot)
        if conn is not None:
            return conn
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise WarmTrainerError(f"the warm trainer for slot {slot} exited with {proc.returncode}:\n{tail}")
        time.sleep(0.1)
    procs.terminate(procs.record(proc.pid), grace=0, group=False)
    raise WarmTrainerError(f"the warm trainer for slot {slot} did not start within {START_TIMEOUT:.0f} s (log: {log})")


def _exchange(conn: socket.socket, args: dict, pool: Path, slot: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)}
    try:
        _send(conn, {"job": args, "env": env})
    except (BrokenPipeError, ConnectionResetError) as exc:
        raise _Vanished(f"the warm trainer closed the connection: {exc}") from exc
    replies = conn.makefile("rb")
    done = threading.Event()
    threading.Thread(target=_watch_parent, args=(conn, os.getppid(), done), daemon=True).start()
    try:
        return _read_result(replies)
    except (WarmTrainerError, ConnectionError):  # the trainer is gone: nobody to tell
        raise
    except BaseException:  # this task is failing (its timeout, a SIGTERM): the trainer records it
        if not _abort(conn, replies):  # no answer: a hung trainer would block its slot for good
            _kill_trainer(pool, slot)
        raise
    finally:
        done.set()


def _watch_parent(conn: socket.socket, parent: int, done: threading.Event, every: float = 1.0) -> None:
    """Hang up on the trainer when this task's parent dies (Airflow's supervisor, killed with its Celery worker).

    The task process lives in a process group of its own, so it outlives its supervisor, and it says
    nothing while it waits: without this the trainer would finish a job nobody waits for, mark it
    FINISHED, and hold its slot meanwhile. On EOF the trainer marks the run KILLED and stops.
    """
    while not done.wait(every):
        if os.getppid() != parent:
            with contextlib.suppress(OSError):  # stderr may lead to the dead supervisor
                print(f"bnpipe: the task's parent {parent} is gone; stopping the warm trainer", file=sys.stderr)
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            return


def _abort(conn: socket.socket, replies) -> bool:
    """Ask the trainer to stop and mark the run FAILED; False if it did not answer within ABORT_GRACE."""
    try:
        _send(conn, {"abort": "FAILED"})
        conn.settimeout(ABORT_GRACE)
        _read_result(replies)
    except TimeoutError:
        return False
    except (WarmTrainerError, OSError):  # it answered with the error, or closed the connection
        pass
    return True


def _kill_trainer(pool: Path, slot: int) -> None:
    rec = procs.read_record(pool / f"slot-{slot}.pid")
    if procs.alive(rec):
        print(f"bnpipe: the warm trainer {rec['pid']} did not answer the abort; killing it", file=sys.stderr)
        procs.terminate(rec, grace=0, group=False)


def _read_result(replies) -> dict:
    heard = False
    try:
        for line in replies:
            heard = True
            msg = json.loads(line)
            if "out" in msg:
                sys.stdout.write(msg["out"])
                sys.stdout.flush()
            elif "result" in msg:
                return msg["result"]
            elif "error" in msg:
                print(msg.get("traceback", ""), file=sys.stderr)
                raise WarmTrainerError(msg["error"])
    except ConnectionResetError:  # the trainer died (or was dying when we connected)
        pass
    error = WarmTrainerError if heard else _Vanished
    raise error("the warm trainer went away before it answered (see its log under $BNPIPE_HOME/warm/)")


# ---------------------------------------------------------------- the trainer's side
class _Forward(io.TextIOBase):
    """A text stream whose writes go to the task as ``{"out": ...}`` lines."""

    def __init__(self, conn, lock):
        self.conn, self.lock = conn, lock

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if text:
            with contextlib.suppress(OSError):
                _send(self.conn, {"out": text}, self.lock)
        return len(text)


@contextlib.contextmanager
def _job_env(env: dict):
    """The task's BNPIPE_* and MLFLOW_* settings for the length of one job."""
    saved = dict(os.environ)
    for key in [k for k in os.environ if k.startswith(ENV_PREFIXES)]:
        del os.environ[key]
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _handle(conn: socket.socket) -> None:
    from bnpipe.core import train
    from bnpipe.mlflow_edge import logged_training

    lock = threading.Lock()
    requests = conn.makefile("rb")
    first = requests.readline()
    if not first:
        return
    msg = json.loads(first)
    stop: dict = {}

    def watch():  # the only reader from here on: an abort, or EOF when the task is gone
        for line in requests:
            with contextlib.suppress(ValueError):
                stop.setdefault("status", json.loads(line).get("abort", "FAILED"))
        stop.setdefault("status", "KILLED")

    threading.Thread(target=watch, daemon=True).start()
    job = dict(msg["job"])
    job["cfg"] = train.TrainConfig(**job["cfg"])
    out = _Forward(conn, lock)
    try:
        with _job_env(msg.get("env", {})), contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            result = logged_training.train_and_log(
                **job, stop=lambda: stop.get("status"), trainer=f"warm pid {os.getpid()}"
            )
        reply = {"result": result}
    except Exception as exc:  # noqa: BLE001 - every error goes back to the task, which fails with it
        reply = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    with contextlib.suppress(OSError):
        _send(conn, reply, lock)


def _peer_uid(conn: socket.socket) -> int:
    """The connecting process's user id (SO_PEERCRED: pid, uid, gid)."""
    import struct

    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def serve(pool: Path, slot: int, threads: int) -> int:
    from bnpipe.core import train

    train.configure_threads(threads)  # imports TensorFlow, before any op runs
    import keras  # noqa: F401 - warm: the import is the point
    import mlflow  # noqa: F401

    pid_file = pool / f"slot-{slot}.pid"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(_address(pool, slot))  # fails if another trainer holds the slot: then this one exits
    srv.listen(1)
    srv.settimeout(idle_seconds())
    procs.write_record(pid_file, procs.record(os.getpid()))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"warm trainer pid {os.getpid()}: slot {slot}, {threads} TF thread(s), ready", flush=True)
    try:
        while True:
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                print("idle: exiting", flush=True)
                return 0
            with conn:
                if _peer_uid(conn) != os.getuid():  # abstract sockets have no file permissions: check the peer
                    print("refused a connection from another user", flush=True)
                    continue
                conn.settimeout(None)
                _handle(conn)
            if _rss_mb() > max_rss_mb():
                print(f"RSS {_rss_mb():.0f} MiB over the cap: exiting", flush=True)
                return 0
    finally:
        srv.close()
        pid_file.unlink(missing_ok=True)


def running(home: Path | None = None) -> list[dict]:
    """The live trainers under ``home``'s warm/ folder: ``{pid, pid_file, record}``."""
    out = []
    for pid_file in sorted(((home or settings.home()) / "warm").glob("*/slot-*.pid")):
        rec = procs.read_record(pid_file)
        if procs.alive(rec):
            out.append({"pid": rec["pid"], "pid_file": pid_file, "record": rec})
    return out


def stop_all(home: Path | None = None, grace: float = 10.0) -> int:
    """SIGTERM the trainers recorded under ``home`` (SIGKILL after ``grace`` s); returns how many."""
    live = running(home)
    procs.terminate_all([t["record"] for t in live], grace=grace, group=False)
    for t in live:
        t["pid_file"].unlink(missing_ok=True)
    return len(live)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m bnpipe.operations.warm", description="one warm trainer (started by tasks)"
    )
    parser.add_argument("--pool", required=True, type=Path)
    parser.add_argument("--slot", required=True, type=int)
    parser.add_argument("--threads", required=True, type=int)
    args = parser.parse_args(argv)
    return serve(args.pool, args.slot, args.threads)


if __name__ == "__main__":
    sys.exit(main())
