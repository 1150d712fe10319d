"""Run one measurement process and leave nothing of it behind.

Each measurement runs in its own session with a timeout. On Linux the
harness also makes itself a *child subreaper*, so that worker processes that
outlive their measurement (even ones that started their own session, out of
reach of the process-group kill) are reparented to the harness, where they
can be found, counted and killed by pid.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

#: ``prctl`` option that makes orphaned descendants reparent to us.
PR_SET_CHILD_SUBREAPER = 36
#: Seconds that workers get to exit on their own after a measurement ends.
LEFTOVER_GRACE_S = 3.0


@dataclass
class Outcome:
    """What one measurement process did."""

    #: Exit status, or None if it timed out.
    status: int | None
    stdout: str
    stderr: str
    #: Descendants still alive ``LEFTOVER_GRACE_S`` after a normal exit.
    leftovers: int


def become_subreaper() -> bool:
    """Adopt orphaned descendants (Linux only); return whether it worked."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _process_table() -> dict[int, tuple[int, str]]:
    """Map pid -> (parent pid, state) for every process in /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        table[int(entry.name)] = (int(ppid), state)
    return table


def live_descendants(root: int) -> list[int]:
    """Pids of the non-zombie descendants of ``root`` (empty without /proc)."""
    if not Path("/proc").is_dir():
        return []
    table = _process_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _state) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, frontier = [], [root]
    while frontier:
        kids = children.get(frontier.pop(), [])
        found.extend(kids)
        frontier.extend(kids)
    return [pid for pid in found if table[pid][1] != "Z"]


def reap() -> None:
    """Collect the exit status of every child that has exited."""
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def kill_leftovers(grace: float) -> int:
    """Wait up to ``grace`` s for our descendants to exit, then kill the rest.

    Returns how many had to be killed.
    """
    deadline = time.monotonic() + grace
    while True:
        reap()
        left = live_descendants(os.getpid())
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    for pid in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    time.sleep(0.05 if left else 0)
    reap()
    return len(left)


def kill_group(pgid: int) -> None:
    """SIGKILL what is left of a process group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def spawn(cmd: list[str], timeout: float, env: dict[str, str], cwd: Path) -> Outcome:
    """Run ``cmd`` in its own session with a timeout, then clean up after it.

    Output goes to files, not pipes, so that a stray worker that holds them
    open cannot block us.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=err, env=env, cwd=cwd, start_new_session=True
        )
        try:
            status: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            status = None
            kill_group(proc.pid)
            proc.wait()
        leftovers = kill_leftovers(0.0 if status is None else LEFTOVER_GRACE_S)
        kill_group(proc.pid)
        out.seek(0)
        err.seek(0)
        return Outcome(status, out.read(), err.read(), leftovers)
