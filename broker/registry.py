"""The broker's worker registry: who may connect, who is connected, and how
many credits each has free.

Ready workers with free credits sit in buckets by the number of tasks they
run, so that picking the least loaded worker (idle ones first) is O(1) for
any number of workers: at most one bucket per credit is looked at. Within a
bucket the worker placed last goes first (dicts keep insertion order): of
idle workers, the one that finished last, whose caches are warm and which
may still be polling for its next task (``FLAG_LONE``), rather than one
that has slept longer.
"""

from __future__ import annotations

from .records import WorkerRecord


class Registry:
    """Admitted identities, connected workers, and the ready ones with free
    credits by load."""

    def __init__(self) -> None:
        self.workers: dict[bytes, WorkerRecord] = {}
        self._buckets: list[dict[WorkerRecord, None]] = []
        #: identities of the workers the pool started and that may say hello,
        #: and whether each connects over TCP (from another host)
        self._expected: dict[bytes, bool] = {}
        #: the credits of the ready workers, together
        self.ready_capacity = 0
        #: the ready workers (any thread may read it)
        self.ready_count = 0

    def expect(self, identity: bytes, remote: bool = False) -> None:
        """Admit a worker with this identity (given to it by its launcher);
        ``remote``: it connects over TCP."""
        self._expected[identity] = remote

    def forget(self, identity: bytes) -> None:
        """Admit this identity no more (its worker will never connect)."""
        self._expected.pop(identity, None)

    def expects(self, identity: bytes) -> bool:
        return identity in self._expected

    def remote(self, identity: bytes) -> bool:
        """Whether the worker ``identity`` connects over TCP (``expect``)."""
        return self._expected.get(identity, False)

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
            self.ready_count += 1
        self.place(rec)

    def remove(self, rec: WorkerRecord) -> None:
        """Forget ``rec`` (gone): it is admitted no more."""
        self._expected.pop(rec.identity, None)
        if self.workers.pop(rec.identity, None) is rec and rec.ready and not rec.draining:
            self.ready_capacity -= rec.capacity
            self.ready_count -= 1
        if rec.bucket >= 0:
            del self._buckets[rec.bucket][rec]
            rec.bucket = -1

    def drain(self, rec: WorkerRecord) -> None:
        """``rec`` takes no new task (it leaves the pool); it keeps what it runs."""
        if rec.ready and not rec.draining:
            self.ready_capacity -= rec.capacity
            self.ready_count -= 1
        rec.draining = True
        self.place(rec)

    def undrain(self, rec: WorkerRecord) -> None:
        """``rec`` takes new tasks again (a drain taken back)."""
        if rec.draining:
            rec.draining = False
            if rec.ready:
                self.ready_capacity += rec.capacity
                self.ready_count += 1
            self.place(rec)

    def ready_workers(self) -> list[WorkerRecord]:
        """The workers that may take any task (ready and not draining)."""
        return [rec for rec in self.workers.values() if rec.ready and not rec.draining]

    def place(self, rec: WorkerRecord) -> None:
        """Put ``rec`` in the bucket of its current load (call after a change)."""
        load = rec.used
        free = (
            rec.ready
            and load < rec.capacity
            and not rec.exclusive
            and not rec.unreachable
            and not rec.draining
        )
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
