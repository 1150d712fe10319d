"""The broker's worker registry: who is connected and how many credits each has.

Ready workers with free credits sit in buckets by the number of tasks they
run, so that picking the least loaded worker (idle ones first) is O(1) for
any number of workers: at most one bucket per credit is looked at. Within a
bucket the worker placed last goes first (dicts keep insertion order): of
idle workers, the one that finished last, whose caches are warm and which
may still be polling for its next task (``FLAG_LONE``), rather than one
that has slept longer.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from distex_zmq.wire.frames import RecentFunctions

from .task import Task


class WorkerRecord:
    """The broker's view of one connected worker."""

    __slots__ = (
        "identity",
        "pid",
        "host",
        "capacity",
        "running",
        "known_funcs",
        "ready",
        "pinned",
        "bucket",
        "info",
        "head_since",
        "exclusive",
        "used",
        "unreachable",
    )

    def __init__(self, identity: bytes, pid: int, host: str, capacity: int, info: dict[str, Any]):
        self.identity = identity
        self.pid = pid
        self.host = host
        #: credits granted in the worker's hello: tasks it may hold at once
        self.capacity = capacity
        #: task id -> task, for the tasks sent to it and not yet answered
        self.running: dict[int, Task] = {}
        #: credits in use: a task each, or one for a group of tiny tasks
        self.used = 0
        #: ids of the functions this worker holds (it keeps the recent ones)
        self.known_funcs = RecentFunctions()
        #: False until its initializer has run
        self.ready = False
        #: tasks that only this worker may run, sent before any other
        self.pinned: deque[Task] = deque()
        self.bucket = -1
        self.info = info
        #: when the oldest task it runs began (roughly), for task_timeout
        self.head_since = 0.0
        #: it runs a suspect task alone: it gets nothing else meanwhile
        self.exclusive = False
        #: a send to it failed: it gets nothing more (``Broker._unreachable``)
        self.unreachable = False

    @property
    def free(self) -> int:
        return self.capacity - self.used

    def __str__(self) -> str:
        return f"worker pid {self.pid} on {self.host}"

    def __repr__(self) -> str:
        return f"<WorkerRecord {self.identity!r} pid={self.pid} host={self.host}>"


class Registry:
    """Connected workers, and the ready ones with free credits by load."""

    def __init__(self) -> None:
        self.workers: dict[bytes, WorkerRecord] = {}
        self._buckets: list[dict[WorkerRecord, None]] = []
        #: the credits of the ready workers, together
        self.ready_capacity = 0

    def __len__(self) -> int:
        return len(self.workers)

    def get(self, identity: bytes) -> WorkerRecord | None:
        return self.workers.get(identity)

    def add(self, rec: WorkerRecord) -> None:
        self.workers[rec.identity] = rec
        self.place(rec)

    def set_ready(self, rec: WorkerRecord) -> None:
        """``rec`` may take any task now (its initializer ran)."""
        if not rec.ready:
            rec.ready = True
            self.ready_capacity += rec.capacity
        self.place(rec)

    def remove(self, rec: WorkerRecord) -> None:
        if self.workers.pop(rec.identity, None) is rec and rec.ready:
            self.ready_capacity -= rec.capacity
        if rec.bucket >= 0:
            del self._buckets[rec.bucket][rec]
            rec.bucket = -1

    def ready_workers(self) -> list[WorkerRecord]:
        return [rec for rec in self.workers.values() if rec.ready]

    def place(self, rec: WorkerRecord) -> None:
        """Put ``rec`` in the bucket of its current load (call after a change)."""
        load = rec.used
        free = rec.ready and load < rec.capacity and not rec.exclusive and not rec.unreachable
        bucket = load if free else -1
        if bucket == rec.bucket:
            return
        if rec.bucket >= 0:
            del self._buckets[rec.bucket][rec]
        if bucket >= 0:
            while len(self._buckets) <= bucket:
                self._buckets.append({})
            self._buckets[bucket][rec] = None
        rec.bucket = bucket

    def idle(self) -> WorkerRecord | None:
        """A ready worker that runs nothing, if there is one."""
        if self._buckets and self._buckets[0]:
            return next(reversed(self._buckets[0]))
        return None

    def least_loaded(self) -> WorkerRecord | None:
        """The ready worker with the fewest running tasks and a free credit."""
        for bucket in self._buckets:
            if bucket:
                return next(reversed(bucket))
        return None
