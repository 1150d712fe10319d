"""The start-up of a pool: bind the broker, start the workers, and wait
until every one of them was ready once.

``StartGate`` counts the workers that became ready and ends the start-up,
or fails it with the first error on the way; ``start_workers`` runs the
steps on the pool loop.
"""

from __future__ import annotations

import asyncio

from distex_zmq.broker import Broker
from distex_zmq.options import Options
from distex_zmq.runtime.endpoints import RemoteEndpoints
from distex_zmq.runtime.placement import BrokerAccess, worker_args
from distex_zmq.runtime.supervisor import Supervisor


class StartGate:
    """Opens once ``total_workers`` workers were ready; the first error of
    the start-up fails it (on the pool loop)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, options: Options):
        self._options = options
        self._ready_count = 0
        self._all_ready: asyncio.Future[None] = loop.create_future()

    @property
    def is_over(self) -> bool:
        """Every worker was ready once, or the start-up failed."""
        return self._all_ready.done()

    def worker_ready(self) -> None:
        """A worker became ready (a replacement too)."""
        self._ready_count += 1
        if self._ready_count >= self._options.total_workers and not self._all_ready.done():
            self._all_ready.set_result(None)

    def fail(self, error: BaseException) -> bool:
        """Fail the start-up with ``error``; False if it is over already."""
        if self._all_ready.done():
            return False
        self._all_ready.set_exception(error)
        return True

    async def wait(self) -> None:
        """Until every worker was ready once; raise why the start-up failed."""
        await self._all_ready


async def start_workers(
    options: Options,
    broker: Broker,
    ipc_endpoint: str,
    endpoints: RemoteEndpoints,
    supervisor: Supervisor,
    gate: StartGate,
) -> None:
    """Bind the broker, start the local workers, connect to the hosts and
    wait until every worker is ready; raise the first error on the way."""
    opts = options
    endpoint = broker.bind(ipc_endpoint)
    if opts.hosts:
        # only through the SSH tunnels, from this machine; else from anywhere
        endpoints.bind(public=not opts.remote.tunnel or any(not h.is_ssh for h in opts.hosts))
    supervisor.start(BrokerAccess(endpoint, worker_args(opts), endpoints.worker_keys))
    if opts.hosts:
        hosts = await asyncio.gather(
            *(supervisor.connect(spec) for spec in opts.hosts), return_exceptions=True
        )
        for result in hosts:
            if isinstance(result, BaseException):
                raise result
    await gate.wait()
