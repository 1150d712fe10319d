"""What ``Pool.status()`` returns: a consistent snapshot of a running pool.

Frozen dataclasses, and how a status prints (``str``: lines for an
operator; ``repr``: every field). The pool loop fills them in
(``runtime/snapshot.py``) from counters that the broker and the supervisor
keep as they go, so that taking a snapshot costs a look at each worker and
host, never at each task.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class WorkerStatus:
    """One worker process, as the pool sees it."""

    #: the identity the pool gave it (``local-3``, ``ssh-maxi-7``)
    name: str
    #: the host it runs on: the worker's own host name once it said hello,
    #: else where the pool started it (``local``, the host of its spec)
    host: str
    #: its process id (None until it said hello)
    pid: int | None
    #: ``"local"``, ``"ssh"`` or ``"spawner"``
    kind: str
    #: ``"starting"`` (no hello or initializer yet), ``"ready"``, ``"leaving"``
    #: (it finishes what it holds and takes nothing new, then exits:
    #: ``remove_hosts``, ``resize``, ``max_tasks_per_child``) or ``"lost"``;
    #: ``"stopped"`` in the last status of a pool that ended
    state: str
    #: tasks it holds now: sent to it and not answered
    tasks_held: int
    #: tasks it answered with a result (a map's chunk counts once)
    done: int
    #: tasks it answered with an error
    failed: int
    #: when the pool started it (``time.time()``)
    started_at: float
    #: the version of the Python it runs (``"3.12.1"``), from its hello
    #: (None until then): a host of another minor version than the client's
    #: is refused, another patch level shows here
    python: str | None = None
    #: the tasks it holds, oldest first (the first ``HELD_SHOWN``), as
    #: errors name them: ``task 12 (f)``, ``task 40 (f, input #37 of a map)``
    #: (``chunk #N``: a chunk of inputs from N); the oldest is the one it
    #: runs, or has just run
    tasks: tuple[str, ...] = ()
    #: since when it holds tasks and has answered none (``time.time()``):
    #: when it got one while it held none, or last answered one while it held
    #: more; None while it holds none. Long ago: its oldest task runs long,
    #: or hangs (``py-spy dump --pid`` shows where)
    busy_since: float | None = None


#: ``WorkerStatus.tasks`` names at most this many of the tasks a worker holds
#: (tiny tasks that share a credit may be many)
HELD_SHOWN = 8


@dataclasses.dataclass(frozen=True)
class HostStatus:
    """One place where workers run: this machine, an SSH host or a spawner."""

    #: the host specification as given (``ssh://maxi/8``), or ``"local"``
    spec: str
    #: ``"local"``, ``"ssh"`` or ``"spawner"``
    kind: str
    #: ``"connecting"`` (first connection), ``"up"``, ``"lost"`` (its link is
    #: gone, a reconnection is planned) or ``"reconnecting"`` (under way);
    #: ``"stopped"`` in the last status of a pool that ended
    state: str
    #: its workers that are starting or ready now
    workers: int
    #: when the pool tries to reconnect next (``time.time()``; None: not planned)
    next_retry: float | None
    #: why it was lost, or why the last reconnection failed (None: no error)
    last_error: str | None
    #: the version of the Python its workers run (``"3.12.1"``): this
    #: process's for ``"local"``, for a remote host what its spawner or SSH
    #: agent said at its connection (None until then)
    python: str | None = None


@dataclasses.dataclass(frozen=True)
class Totals:
    """Counters of the whole pool since it started."""

    #: tasks waiting for a worker
    queued: int
    #: tasks sent to workers and not answered
    in_flight: int
    #: tasks that ended with a result. Here and in ``queued``, ``in_flight``
    #: and ``failed``, the parts that a map's chunk hands back to run
    #: elsewhere (its inputs not started, once it ran long or after it
    #: killed a worker) count as tasks of their own, which
    #: ``tasks_submitted`` does not count
    done: int
    #: tasks that ended with an error (raised, lost, timed out, cancelled by
    #: ``shutdown``)
    failed: int
    #: runs of tasks again after their worker died
    retried: int
    #: workers that died or were cut off with their host
    workers_lost: int
    #: workers started to replace dead ones
    replacements: int
    #: tasks sent in groups of tiny tasks that shared one credit
    grouped_tasks: int
    #: functions the client holds pickled, ready to send
    functions_cached: int
    #: tasks the client made (a map's chunk is one task; initializer and
    #: ``run_on_all`` tasks count too)
    tasks_submitted: int
    #: workers started in place of ones that ran ``max_tasks_per_child`` tasks
    renewals: int = 0


@dataclasses.dataclass(frozen=True)
class PoolStatus:
    """A snapshot of a pool, taken at one moment on its loop."""

    #: ``"not started"`` (``lazy_create``), ``"starting"``, ``"ready"``,
    #: ``"hosts lost"`` (every host lost or reconnecting: no worker runs),
    #: ``"failed"`` (also in a forked child of the process that made the
    #: pool: it cannot run tasks there) or ``"shut down"``
    state: str
    #: why the pool failed (None unless ``state`` is ``"failed"``)
    error: BaseException | None
    #: workers configured: local and on every host
    configured_workers: int
    #: the workers: starting, ready, leaving, and the most recently lost ones
    workers: tuple[WorkerStatus, ...]
    hosts: tuple[HostStatus, ...]
    totals: Totals
    #: when the snapshot was taken (``time.time()``)
    taken_at: float

    @property
    def ready_workers(self) -> int:
        """Workers ready for tasks now."""
        return sum(1 for w in self.workers if w.state == "ready")

    def __str__(self) -> str:
        """The snapshot as an operator reads it: ``print(pool.status())``."""
        return _format(self)


def _format(status: PoolStatus) -> str:
    """``status`` in lines of text: the pool and its counters, then a line
    per host and per worker, with how long a worker has held tasks without
    answering one and when a lost host is tried again, in seconds from
    ``taken_at``. ``repr`` keeps every field."""
    t = status.totals
    head = (
        f"pool: {status.state}, {status.ready_workers} of {status.configured_workers} "
        f"workers ready ({t.workers_lost} lost, {t.replacements} replaced, "
        f"{t.renewals} renewed)"
    )
    if status.error is not None:
        head += f"; {type(status.error).__name__}: {_one_line(str(status.error))}"
    lines = [
        head,
        f"tasks: {t.queued} queued, {t.in_flight} in flight, {t.done} done, "
        f"{t.failed} failed, {t.retried} retried; {t.tasks_submitted} submitted",
    ]
    rows = [_host_row(h, status.taken_at) for h in status.hosts]
    if rows:
        lines.append("hosts:")
        lines += _aligned(rows)
    rows = [_worker_row(w, status.taken_at) for w in status.workers]
    if rows:
        lines.append("workers:")
        lines += _aligned(rows)
    return "\n".join(lines)


def _host_row(host: HostStatus, now: float) -> list[str]:
    workers = f"{host.workers} worker" + ("" if host.workers == 1 else "s")
    python = f"Python {host.python}" if host.python else ""
    note = ""
    if host.next_retry is not None:
        note = f"retry in {max(0.0, host.next_retry - now):.1f} s"
    if host.last_error:
        error = _one_line(host.last_error)
        note = f"{note}: {error}" if note else f"last error: {error}"
    return [host.spec, host.kind, host.state, workers, python, note]


def _worker_row(worker: WorkerStatus, now: float) -> list[str]:
    pid = f"pid {worker.pid}" if worker.pid is not None else "pid -"
    held = f"holds {worker.tasks_held}"
    if worker.busy_since is not None:
        held += f" for {max(0.0, now - worker.busy_since):.1f} s"
    counts = f"done {worker.done}, failed {worker.failed}"
    return [worker.name, worker.host, pid, worker.state, held, counts, ", ".join(worker.tasks)]


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _aligned(rows: list[list[str]]) -> list[str]:
    """``rows`` as indented lines, each column as wide as its widest cell."""
    widths = [max(map(len, column)) for column in zip(*rows, strict=True)]
    lines = []
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        lines.append("  " + "  ".join(cells).rstrip())
    return lines
