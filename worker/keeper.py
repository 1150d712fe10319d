"""The keeper of a worker's process group: ``keep_group``.

A worker leads a process group of its own, and whatever its tasks start and
leave running there (a ``subprocess``, a pool of their own) is killed with
it: the launcher that started it signals the group as it reaps the worker.
But a launcher that dies first (the client, an SSH host's agent, a spawner,
killed by SIGKILL, or by SIGTERM without a handler) reaps nothing; Linux
kills the worker (its parent-death signal) and leaves the rest of the group
running, orphaned.

So each worker leaves a keeper in its group, a shell that waits for the
worker's end (GNU ``tail --pid``, which looks every second) and then kills
the group, itself included. It is no child of the worker (a task that waits
for any child, ``os.wait()``, never meets it), holds none of the worker's
descriptors (its pipes to the launcher end with the worker), and ignores
the signals that stop a worker politely. It execs the shell rather than
staying a fork of the worker, which would keep a copy of the worker's memory
as it was at the fork. Where ``tail`` cannot wait for a process (busybox),
the shell ends and kills nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal

#: The keeper's ``$0``: what names it in ``ps`` (``/bin/sh -c SCRIPT NAME PID``).
KEEPER_NAME = "distex_zmq-keeper"
#: What the keeper runs: ``$1`` is the worker's pid.
KEEPER_SCRIPT = 'tail --pid="$1" -f /dev/null -s 1 2>/dev/null && kill -s KILL 0'


def keep_group() -> None:
    """Leave a keeper of this process's group if it leads one (a worker
    started by its launcher); at its start, before any thread runs."""
    worker = os.getpid()
    if os.getpgrp() != worker or not os.path.exists("/bin/sh"):
        return
    middle = os.fork()
    if middle == 0:
        # the middle child: the keeper is its child, left to init as it ends
        try:
            if os.fork() == 0:
                _exec_keeper(worker)
        finally:
            os._exit(0)
    # (with SIGCHLD ignored, as the client's may be and a worker inherits,
    # the kernel reaps it: the wait ends when it does, in ECHILD)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(middle, 0)


def _exec_keeper(worker: int) -> None:
    """In the keeper's process: become the shell that keeps the group."""
    try:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # kept across exec
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        os.execv("/bin/sh", ["/bin/sh", "-c", KEEPER_SCRIPT, KEEPER_NAME, str(worker)])
    finally:
        os._exit(0)
