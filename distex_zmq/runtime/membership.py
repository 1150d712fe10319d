"""Workers and hosts that join or leave a running pool: the bookkeeping
under ``runtime/elastic.py``.

A worker added to a running pool has a ready waiter: its adder learns that
it is ready, or why it failed to start (it exited, its initializer raised,
its host was lost). A worker taken out of the pool is retiring until it
exits (its exit waiter): it is neither counted as a death nor replaced. A
host being removed starts no workers and is not reconnected when lost.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from distex_zmq.broker import Broker
from distex_zmq.errors import HostConnectionError, PoolClosedError, WorkerStartError
from distex_zmq.runtime.placement import Launcher, Placement
from distex_zmq.runtime.state import PoolState

if TYPE_CHECKING:
    from distex_zmq.launch.remote import RemoteLauncher

_logger = logging.getLogger("distex_zmq.pool")


class Membership:
    """Joining and leaving workers and hosts (on the pool loop)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        broker: Broker,
        placement: Placement,
        pool: PoolState,
    ):
        self._loop = loop
        self._broker = broker
        self._placement = placement
        self._pool = pool
        #: identities of workers taken out of the pool, until they exit
        self._retiring: set[bytes] = set()
        #: futures of workers waited for: readiness (``wait_ready``) or exit
        #: (``retire``), resolved in ``worker_ready``, ``exited`` and
        #: ``host_lost``
        self._ready_waiters: dict[bytes, asyncio.Future[None]] = {}
        self._exit_waiters: dict[bytes, asyncio.Future[None]] = {}
        #: remote hosts that are being removed: no reconnection when lost
        self._removing: set[RemoteLauncher] = set()

    def workers_of(self, launcher: Launcher | None) -> list[bytes]:
        """Identities of the workers started there and not leaving."""
        return [i for i in self._placement.workers_of(launcher) if i not in self._retiring]

    def is_removing(self, launcher: Launcher) -> bool:
        """The host is leaving the pool: no new workers, no reconnection."""
        return launcher in self._removing

    def worker_ready(self, identity: bytes) -> None:
        """The worker said hello and ran the initializer, if any."""
        waiter = self._ready_waiters.pop(identity, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait_ready(self, identities: list[bytes | None]) -> None:
        """Wait until these workers (started together, in this step of the
        loop) are ready; raise why one of them failed to start."""
        waiters = [
            self._ready_waiters.setdefault(identity, self._loop.create_future())
            for identity in identities
            if identity is not None and self._placement.is_starting(identity)
        ]
        if not waiters:
            return
        await asyncio.wait(waiters)
        errors = [w.exception() for w in waiters]
        for error in errors:
            if error is not None:
                if self._pool.closing:  # a shutdown stopped them as they started
                    raise PoolClosedError("the pool was shut down during the change") from error
                raise error

    def leaving(self, identity: bytes) -> None:
        """The worker leaves the pool once the tasks it holds are done (the
        broker drains it): its exit is no death, and it is not replaced."""
        self._retiring.add(identity)

    def start_failed(self, identity: bytes, error: BaseException) -> bool:
        """A worker's initializer raised. If the worker was being added
        (``wait_ready``), its adder gets ``error``, the worker is killed and not
        replaced, and this returns True; else it returns False."""
        waiter = self._ready_waiters.pop(identity, None)
        if waiter is None:
            return False
        if not waiter.done():
            waiter.set_exception(error)
        self._retiring.add(identity)
        self._broker.retire(identity, drain=False)
        self._placement.kill(identity)
        return True

    async def retire(
        self, identities: list[bytes], drain: bool, timeout: float | None = None
    ) -> None:
        """Take these workers out of the pool and wait until they have exited.

        With ``drain`` a ready worker finishes its tasks first, for at most
        ``timeout`` seconds if given; otherwise, after that time, and for a
        worker still starting, its tasks go back to the queue without counting
        a try and it is killed. No worker replaces them.
        """
        placement = self._placement
        waiters: dict[bytes, asyncio.Future[None]] = {}
        for identity in identities:
            if placement.launcher_of(identity) is None:
                continue
            self._retiring.add(identity)
            waiters[identity] = self._exit_waiters.setdefault(identity, self._loop.create_future())
            self._broker.retire(identity, drain)
            if not drain or placement.is_starting(identity):
                placement.kill(identity)
        if not waiters:
            return
        if drain and timeout is not None:
            await asyncio.wait(waiters.values(), timeout=timeout)
            late = [identity for identity, waiter in waiters.items() if not waiter.done()]
            if late:
                _logger.warning(
                    "%d leaving worker(s) still busy after %s s: their tasks go back "
                    "to the queue and they are stopped",
                    len(late),
                    timeout,
                )
            for identity in late:
                self._broker.retire(identity, drain=False)
                placement.kill(identity)
        await asyncio.wait(waiters.values())

    async def remove_host(
        self, launcher: RemoteLauncher, drain: bool, timeout: float | None = None
    ) -> None:
        """Take a remote host out of the pool: retire its workers (``drain``
        for at most ``timeout`` seconds), then end the session there (the
        agent exits, the spawner closes the pool's session), which leaves
        nothing of the pool on the host."""
        self._removing.add(launcher)
        try:
            await self.retire(self.workers_of(launcher), drain, timeout)
            if self._pool.closing:
                return  # the shutdown stops it
            self._placement.drop_remote(launcher)
            await launcher.stop(0)
        finally:
            self._removing.discard(launcher)

    def exited(self, identity: bytes, launcher: Launcher | None, pid: int, how: str) -> bool:
        """A worker exited (``how``): fail its adder's wait if it was being
        added. Returns True if it was leaving the pool (then this is all)."""
        waiter = self._ready_waiters.pop(identity, None)
        if waiter is not None and not waiter.done() and launcher is not None:
            # a worker added to a running pool: the caller that added it learns why
            waiter.set_exception(
                WorkerStartError(f"{launcher.describe_worker(pid)} failed to start: {how}")
            )
            self._retiring.add(identity)
        if identity not in self._retiring:
            return False
        self._retiring.discard(identity)
        self._placement.started(identity)
        broker = self._broker
        rec = broker.registry.get(identity)
        if rec is not None and not self._pool.closing:
            if rec.ready:
                broker.worker_lost(rec, how)  # it died while it drained: as any death
            else:
                broker.retire(identity, drain=False)
        broker.forget(identity)
        self._resolve_exit(identity)
        return True

    def host_lost(self, identity: bytes, why: str) -> None:
        """The worker's host was lost (``why``): fail its adder's wait, and it
        leaves the pool if it was leaving."""
        waiter = self._ready_waiters.pop(identity, None)
        if waiter is not None and not waiter.done():
            waiter.set_exception(HostConnectionError(why))
        self._retiring.discard(identity)
        self._resolve_exit(identity)

    def stop(self) -> None:
        """The pool shuts down: whoever waits for a worker to leave stops waiting."""
        for identity in list(self._exit_waiters):
            self._resolve_exit(identity)

    def _resolve_exit(self, identity: bytes) -> None:
        waiter = self._exit_waiters.pop(identity, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
