"""Elastic pools: hosts added to and removed from a running pool, and its
local workers resized (``Pool.add_hosts``, ``remove_hosts``, ``resize``).

Each change runs on the pool loop, one at a time, and keeps ``Options``
(``num_workers``, ``hosts``: the configured counts) up to date. Adding is all
or nothing: if a host cannot be reached or a new worker fails to start (its
initializer raised, say), what the call added leaves again and the error is
raised at once; the pool runs on as before. The workers that did start may
have taken tasks meanwhile: they finish those (stopped, the tasks would run
again elsewhere, their side effects twice) and take no more, then leave.
Removing retires workers through ``Membership`` (``runtime/membership.py``):
with ``drain`` they finish what they run, otherwise their tasks go back to
the queue without counting a try; either way no worker replaces them, and a
removed host's agent or spawner session ends.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from distex_zmq.broker import Broker
from distex_zmq.errors import SHUT_DOWN, PoolClosedError, fresh_error
from distex_zmq.hostspec import HostSpec
from distex_zmq.loops import run_in_background
from distex_zmq.options import Options
from distex_zmq.runtime.state import PoolState
from distex_zmq.runtime.supervisor import Supervisor, workers_text

if TYPE_CHECKING:
    from distex_zmq.launch.remote import RemoteLauncher

_logger = logging.getLogger("distex_zmq.runtime.elastic")


class Elastic:
    """Adds and removes the workers of a running pool (on the pool loop)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        supervisor: Supervisor,
        broker: Broker,
        options: Options,
        pool: PoolState,
    ):
        self._loop = loop
        self._pool = pool
        self._supervisor = supervisor
        self._members = supervisor.membership
        self._broker = broker
        self._options = options
        self._lock: asyncio.Lock | None = None
        #: what failed calls added, leaving once its tasks are done (``_take_back``)
        self._taking_back: set[asyncio.Task[None]] = set()
        #: the hosts of those (their specifications' ids)
        self._hosts_taken_back: set[int] = set()

    def _serial(self) -> asyncio.Lock:
        # made on the pool loop, the one that uses it
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    def when_up(
        self,
        started: concurrent.futures.Future[None],
        change: Callable[[], Coroutine[Any, Any, None]],
    ) -> concurrent.futures.Future[None]:
        """Run ``change`` on the pool loop once ``started`` is done, unless the
        pool failed or shut down meanwhile (any thread)."""

        async def when_up() -> None:
            await asyncio.wrap_future(started)
            if self._pool.error is not None:
                raise fresh_error(self._pool.error)
            if self._pool.closing:
                raise PoolClosedError(SHUT_DOWN)
            await change()

        # in a context of its own, as the pool's start (``PoolBase._start``):
        # the workers and hosts it adds are watched for good by callbacks
        # made in it, which must not run in a copy of this caller's context
        return contextvars.Context().run(asyncio.run_coroutine_threadsafe, when_up(), self._loop)

    async def add_hosts(self, specs: list[HostSpec]) -> None:
        """Connect to ``specs``, start their workers and wait until they are ready."""
        async with self._serial():
            hosts = self._options.hosts
            for i, spec in enumerate(specs):
                for twin in specs[:i]:
                    if spec.same_host(twin):
                        raise ValueError(
                            f"{twin} and {spec} name the same host; give it once, "
                            "with all its workers"
                        )
                for there in hosts:
                    if spec.same_host(there):
                        raise ValueError(self._in_pool_already(spec, there))
            results = await asyncio.gather(
                *(self._add(spec) for spec in specs), return_exceptions=True
            )
            added = [r for r in results if not isinstance(r, BaseException)]
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                for host in added:
                    self._take_back(host)
                for spec in specs:
                    if id(spec) not in self._hosts_taken_back:
                        self._supervisor.roster.forget(spec)
                raise errors[0]
            hosts.extend(specs)
            ready = sum(len(self._members.workers_of(host)) for host in added)
            _logger.info(
                "added %s: %s ready", ", ".join(str(spec) for spec in specs), workers_text(ready)
            )

    def _in_pool_already(self, spec: HostSpec, there: HostSpec) -> str:
        """Why ``add_hosts`` refuses ``spec``: ``there`` names its host."""
        record = self._supervisor.roster.hosts.get(str(there))
        if record is not None and record.state in ("lost", "reconnecting"):
            name = str(spec) if str(spec) == str(there) else f"{spec}: {there}"
            return (
                f"{name} is in the pool already, and lost ({record.last_error}); "
                "the pool reconnects to it on its own, as often as it stays lost. To "
                "try at once, remove_hosts it and add_hosts it again"
            )
        return f"{spec} is in the pool already; remove it first to change its workers"

    async def _add(self, spec: HostSpec) -> RemoteLauncher:
        members = self._members
        host = await self._supervisor.connect(spec)
        try:
            await members.wait_ready(list(members.workers_of(host)))
        except BaseException:
            self._take_back(host)
            raise
        return host

    def _take_back(self, host: RemoteLauncher) -> None:
        """Take ``host`` out of the pool again, as a call that added it
        failed: its workers finish the tasks they took, and take no more,
        then it leaves (and the roster forgets it), while the call raises."""

        async def leave() -> None:
            try:
                await self._members.remove_host(host, drain=True)
            except Exception:  # noqa: BLE001 - its workers are gone with the pool
                _logger.debug("taking back %s failed", host.where, exc_info=True)
            finally:
                self._hosts_taken_back.discard(id(host.spec))
            self._supervisor.roster.forget(host.spec)

        self._hosts_taken_back.add(id(host.spec))
        run_in_background(self._loop, leave(), self._taking_back)

    async def remove_hosts(self, names: list[str], drain: bool, timeout: float | None) -> None:
        """Remove the hosts that ``names`` name (host names or specifications);
        ``drain`` for at most ``timeout`` seconds (None: as long as it takes)."""
        async with self._serial():
            opts, supervisor = self._options, self._supervisor
            leaving: list[HostSpec] = []
            for name in names:
                found = [h for h in opts.hosts if _names(name, h)]
                if not found:
                    known = ", ".join(str(h) for h in opts.hosts) or "none"
                    raise ValueError(f"no host {name!r} in the pool (its hosts: {known})")
                leaving.extend(h for h in found if not any(h is s for s in leaving))
            staying = [h for h in opts.hosts if not any(h is s for s in leaving)]
            _check_not_empty(opts.num_workers, staying)
            opts.hosts[:] = staying
            await supervisor.reconnects.cancel(leaving)
            hosts = [r for r in supervisor.placement.remote if any(r.spec is s for s in leaving)]
            await asyncio.gather(
                *(self._members.remove_host(host, drain, timeout) for host in hosts)
            )
            for spec in leaving:
                supervisor.roster.forget(spec)
            _logger.info("removed %s", ", ".join(str(spec) for spec in leaving))

    async def resize(self, num_workers: int, drain: bool, timeout: float | None) -> None:
        """Start or retire local workers until there are ``num_workers``
        (those retired ``drain`` for at most ``timeout`` seconds)."""
        async with self._serial():
            opts, supervisor, members = self._options, self._supervisor, self._members
            _check_not_empty(num_workers, opts.hosts)
            local = supervisor.placement.local
            assert local is not None, "the pool has started"
            current = members.workers_of(local)
            before, opts.num_workers = opts.num_workers, num_workers
            if num_workers > len(current):
                new: list[bytes | None] = []
                try:
                    # a spawn may fail half-way (no file descriptors left)
                    for _ in range(num_workers - len(current)):
                        new.append(supervisor.spawn(local))
                    await members.wait_ready(new)
                except BaseException:
                    opts.num_workers = before
                    started = [i for i in new if i is not None]
                    # they finish the tasks they took, then leave (see _take_back)
                    run_in_background(
                        self._loop, members.retire(started, drain=True), self._taking_back
                    )
                    raise
            elif num_workers < len(current):
                leaving = self._least_busy(current, len(current) - num_workers)
                await members.retire(leaving, drain, timeout)
            if num_workers != len(current):
                _logger.info("local workers: %d, from %d", num_workers, len(current))

    def _least_busy(self, identities: list[bytes], count: int) -> list[bytes]:
        """``count`` of these workers: those starting first, then those that
        run the fewest tasks."""
        registry = self._broker.registry

        def load(identity: bytes) -> int:
            rec = registry.get(identity)
            if rec is None or self._supervisor.placement.is_starting(identity):
                return -1
            return len(rec.running)

        return sorted(identities, key=load)[:count]


def _names(name: str, spec: HostSpec) -> bool:
    """``name`` is ``spec``'s host name, or a specification of the same host
    (its number of workers may be left out: ``mini:8899``, ``ssh://mini``)."""
    if name == spec.host:
        return True
    for text in (name, f"{name}/1"):
        try:
            return HostSpec(text).same_host(spec)
        except ValueError:
            continue
    return False


def _check_not_empty(num_workers: int, hosts: list[HostSpec]) -> None:
    if not num_workers and not hosts:
        raise ValueError("the change would leave the pool without any worker")
