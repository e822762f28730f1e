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


def _fields(stat: str) -> list[str]:
    """The fields of a ``/proc/<pid>/stat`` line from field 3 (state) on: the name before may hold spaces.
    Index 0 is the state, 2 the process group, 11-14 utime, stime, cutime, cstime, 19 the start time."""
    return stat[stat.rindex(")") + 2 :].split()


def _all_stats():
    """(pid, ``_fields``) of every process; those gone while being read are left out."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        yield int(stat.parent.name), _fields(text)


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (None if it is gone): PID reuse guard."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = _fields(stat)
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
    return [pid for pid, fields in _all_stats() if fields[0] != "Z" and int(fields[2]) == pgid]


def groups_cpu_seconds(pgids) -> dict[int, float]:
    """CPU seconds (user + system) used so far by the processes of each process group in ``pgids``,
    with the children they have reaped."""
    ticks = dict.fromkeys(pgids, 0)
    for _, fields in _all_stats():
        if int(fields[2]) in ticks:
            ticks[int(fields[2])] += sum(int(v) for v in fields[11:15])
    hz = os.sysconf("SC_CLK_TCK")
    return {pgid: n / hz for pgid, n in ticks.items()}


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
