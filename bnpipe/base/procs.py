"""Processes bnpipe starts and stops: one lifecycle for the stack's servers, the warm trainers and
the CLI's api-server.

A started process is *recorded* as ``{pid, start_ticks, cmd}``: its PID and its start time in
clock ticks since boot. A record is alive only while a process with that PID *and* that start time
exists, so a reused PID is never mistaken for ours, and nothing is ever stopped by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
        return True


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (None if it is gone): PID reuse guard."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie has exited already
        return None
    return int(fields[19])


def record(pid: int, cmd: list[str] | None = None) -> dict:
    return {"pid": pid, "start_ticks": start_ticks(pid), "cmd": cmd}


def write_record(path: Path, rec: dict) -> None:
    path.write_text(json.dumps(rec) + "\n")


def read_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def alive(rec: dict | None) -> bool:
    """The recorded process still runs: same PID, same start time."""
    return bool(rec) and rec.get("start_ticks") is not None and start_ticks(rec["pid"]) == rec["start_ticks"]


def spawn(cmd: list[str], log: Path, env: dict | None = None, cwd: str | None = None) -> subprocess.Popen:
    """Start ``cmd`` in a session (and process group) of its own, appending its output to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            cwd=cwd or Path.cwd(),
        )  # fmt: skip


def group_members(pgid: int) -> list[int]:
    """PIDs of live (non-zombie) processes in process group ``pgid``."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(stat.parent.name))
    return out


def terminate(rec: dict | None, grace: float = 20, group: bool = True) -> bool:
    """SIGTERM the recorded process (its whole group when ``group``), SIGKILL after ``grace`` s.

    Does nothing unless the record is alive. Returns whether it was.
    """
    return terminate_all([rec], grace, group) == 1


def terminate_all(recs: list[dict | None], grace: float = 20, group: bool = True) -> int:
    """:func:`terminate` for several records at once: SIGTERM every live one, then wait up to
    ``grace`` s for all of them together and SIGKILL the ones left. Returns how many were alive."""
    live = [rec for rec in recs if alive(rec)]
    send = os.killpg if group else os.kill
    for rec in live:
        with contextlib.suppress(ProcessLookupError):
            send(rec["pid"], signal.SIGTERM)

    def gone(pid: int) -> bool:  # the leader exited (maybe a zombie its parent reaps later), and its group
        return start_ticks(pid) is None and (not group or not group_members(pid))

    left = [rec["pid"] for rec in live]
    end = time.monotonic() + grace
    while left and time.monotonic() < end:
        left = [pid for pid in left if not gone(pid)]
        if left:
            time.sleep(0.05 if not group else 0.2)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            send(pid, signal.SIGKILL)
    return len(live)
