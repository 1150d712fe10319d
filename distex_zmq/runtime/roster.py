"""The supervisor's record of where its workers run and how its hosts fare,
for ``Pool.status()``: kept up to date as workers start and end and as hosts
are lost and reconnected, so that a snapshot looks at nothing else."""

from __future__ import annotations

import platform
import time
from collections import OrderedDict

from distex_zmq.hostspec import HostSpec

#: Lost workers whose places the roster keeps (as the broker keeps their records).
LOST_KEPT = 32


class WorkerPlace:
    """Where one worker runs, and since when."""

    __slots__ = ("kind", "host", "started_at", "pid")

    def __init__(self, kind: str, host: str):
        #: "local", "ssh" or "spawner"
        self.kind = kind
        #: the host it was started on, as the pool names it; once it was
        #: ready, the host name it gave
        self.host = host
        self.started_at = time.time()
        #: its process id once it was ready (None before)
        self.pid: int | None = None


class HostRecord:
    """One place where workers run, and its state."""

    __slots__ = ("spec", "kind", "state", "next_retry", "last_error", "workers", "python")

    def __init__(self, spec: str, kind: str):
        self.spec = spec
        self.kind = kind
        #: "connecting", "up", "lost" or "reconnecting"
        self.state = "connecting"
        #: when the next reconnection is planned (``time.time()``)
        self.next_retry: float | None = None
        self.last_error: str | None = None
        #: identities of its workers that are starting or ready
        self.workers: set[bytes] = set()
        #: the version of the Python that runs its workers, once known
        self.python: str | None = None


class Roster:
    """Places of the workers alive (and of the last lost ones) and the hosts."""

    def __init__(self) -> None:
        self.places: dict[bytes, WorkerPlace] = {}
        #: places of the workers lost most recently, oldest first
        self.lost: OrderedDict[bytes, WorkerPlace] = OrderedDict()
        #: hosts by their spec text, in the order they were given
        self.hosts: dict[str, HostRecord] = {}
        #: workers started to replace dead ones
        self.replacements = 0
        #: workers started in place of ones that ran ``max_tasks_per_child`` tasks
        self.renewals = 0
        #: the host of each worker alive
        self._owner: dict[bytes, HostRecord] = {}

    def host(self, spec: HostSpec | None) -> HostRecord:
        """The record of a host (None: this machine), made if new."""
        key, kind = ("local", "local") if spec is None else (spec_text(spec), spec_kind(spec))
        record = self.hosts.get(key)
        if record is None:
            record = self.hosts[key] = HostRecord(key, kind)
            if spec is None:  # this machine, up; its workers run this process's Python
                record.state = "up"
                record.python = platform.python_version()
        return record

    def all_lost(self) -> bool:
        """Every host of the pool is lost or reconnecting: no worker is left,
        and none comes before a host is back (any thread)."""
        hosts = list(self.hosts.values())  # a copy: the pool loop may change it
        return bool(hosts) and all(h.state in ("lost", "reconnecting") for h in hosts)

    def forget(self, spec: HostSpec) -> None:
        """The host is not in the pool (any more): it was removed, or adding
        it failed. So are its workers whose end was never heard of (one that
        its session's end took along)."""
        record = self.hosts.pop(spec_text(spec), None)
        if record is None:
            return
        for identity in record.workers:
            self.places.pop(identity, None)
            self._owner.pop(identity, None)

    def spawned(self, identity: bytes, spec: HostSpec | None) -> None:
        host = self.host(spec)
        host.workers.add(identity)
        self.places[identity] = WorkerPlace(host.kind, "local" if spec is None else spec.host)
        self._owner[identity] = host

    def ready(self, identity: bytes, pid: int, host: str) -> None:
        """The worker is ready: its pid and host name stay known after the
        broker lets it go (it drained and exits), until it is ``gone``."""
        place = self.places.get(identity)
        if place is not None:
            place.pid, place.host = pid, host

    def gone(self, identity: bytes) -> None:
        """The worker ended (it died, was killed, or its host was lost)."""
        place = self.places.pop(identity, None)
        host = self._owner.pop(identity, None)
        if host is not None:
            host.workers.discard(identity)
        if place is not None:
            self.lost[identity] = place
            while len(self.lost) > LOST_KEPT:
                self.lost.popitem(last=False)

    def host_lost(self, spec: HostSpec, reason: str, retry_in: float | None) -> None:
        host = self.host(spec)
        host.state = "lost"
        host.last_error = reason
        host.next_retry = None if retry_in is None else time.time() + retry_in

    def host_connecting(self, spec: HostSpec) -> None:
        host = self.host(spec)
        host.state = "connecting" if host.state == "connecting" else "reconnecting"
        host.next_retry = None

    def host_up(self, spec: HostSpec, python: str | None) -> None:
        host = self.host(spec)
        host.state = "up"
        host.next_retry = None
        host.python = python


def spec_kind(spec: HostSpec) -> str:
    return "ssh" if spec.is_ssh else "spawner"


def spec_text(spec: HostSpec) -> str:
    """``ssh://user@host:port/n`` as given (what is not given left out)."""
    return str(spec)
