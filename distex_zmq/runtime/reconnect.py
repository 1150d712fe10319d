"""Reconnections to lost remote hosts, less and less often.

The first attempt comes ``RECONNECT_DELAY`` seconds after the loss; the
delay doubles after each failed attempt, up to ``MAX_RECONNECT_DELAY``. A
host removed from the pool meanwhile is not reconnected (or is removed again
if it reconnected as it was removed).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from distex_zmq.hostspec import HostSpec
from distex_zmq.loops import run_in_background
from distex_zmq.options import Options
from distex_zmq.runtime.roster import Roster
from distex_zmq.runtime.state import PoolState

if TYPE_CHECKING:
    from distex_zmq.launch.remote import RemoteLauncher

_logger = logging.getLogger("distex_zmq.pool")

#: Seconds before the first attempt to reconnect to a lost host; it doubles
#: after each failed attempt, up to ``MAX_RECONNECT_DELAY``: a host that
#: comes back after a long outage is back in the pool within about that
#: and a ``connect_timeout``, at the cost of a connection attempt that often
#: to a host that stays down.
RECONNECT_DELAY = 2.0
MAX_RECONNECT_DELAY = 15.0


class Reconnects:
    """The reconnections under way (on the pool loop)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        options: Options,
        pool: PoolState,
        roster: Roster,
        connect: Callable[[HostSpec], Awaitable[RemoteLauncher]],
        remove_host: Callable[[RemoteLauncher, bool], Awaitable[None]],
    ):
        self._loop = loop
        self._options = options
        self._pool = pool
        self._roster = roster
        self._connect = connect
        self._remove_host = remove_host
        self._tasks: set[asyncio.Task[None]] = set()
        #: the host each reconnection is for
        self._specs: dict[asyncio.Task[None], HostSpec] = {}

    def later(self, spec: HostSpec, delay: float) -> None:
        """Try to reconnect to ``spec`` in ``delay`` seconds, until it works."""

        async def reconnect() -> None:
            await asyncio.sleep(delay)
            if self._pool.closing or self._pool.error is not None:
                return
            if spec not in self._options.hosts:
                return  # removed from the pool meanwhile (``remove_hosts``)
            try:
                launcher = await self._connect(spec)
            except Exception as e:  # noqa: BLE001 - logged, and tried again later
                delay_next = min(delay * 2, MAX_RECONNECT_DELAY)
                _logger.warning("cannot reconnect to %s: %s; next try in %g s", spec, e, delay_next)
                self._roster.host_lost(spec, f"cannot reconnect: {e}", delay_next)
                self.later(spec, delay_next)
                return
            if self._pool.closing:
                await launcher.stop(0)
            elif spec not in self._options.hosts:
                await self._remove_host(launcher, False)
            else:
                _logger.warning("reconnected to %s", launcher.where)

        task = run_in_background(self._loop, reconnect(), self._tasks)
        self._specs[task] = spec
        task.add_done_callback(self._specs.pop)

    async def cancel(self, specs: list[HostSpec]) -> None:
        """Stop trying to reconnect to these hosts (removed from the pool)."""
        tasks = [t for t, spec in self._specs.items() if any(spec is s for s in specs)]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    async def stop(self, grace: float) -> None:
        """Cancel every reconnection; wait up to ``grace`` seconds for them."""
        if self._tasks:
            # a reconnection under way disconnects as it is cancelled
            for task in self._tasks:
                task.cancel()
            await asyncio.wait(list(self._tasks), timeout=grace)
