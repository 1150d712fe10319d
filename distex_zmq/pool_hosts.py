"""The elastic methods of ``Pool``: ``add_hosts``, ``remove_hosts``, ``resize``.

The caller's side of a change: check the arguments, hand the change to the
runtime (runtime/elastic.py makes it on the pool loop) and wait for it. A
change goes on to its end even if its caller is cancelled.
"""

from __future__ import annotations

import asyncio
import concurrent.futures

from distex_zmq.errors import PoolClosedError
from distex_zmq.hostspec import HostSpec, parse_hosts
from distex_zmq.loops import running_loop
from distex_zmq.options import check_flag, check_spawner_heartbeat, drain_timeout, local_workers
from distex_zmq.pool_base import PoolBase


class HostsMixin(PoolBase):
    """Adds and removes the workers of a running ``Pool``."""

    def add_hosts(self, hosts: str | list[str]) -> None:
        """Add remote hosts (``[ssh://][user@]host[:port]/num_workers``, as
        in ``Pool(hosts=...)``) to the running pool.

        Returns when their workers are ready: each has run the initializer
        and takes tasks at once, those of a ``map`` already running included.
        All or nothing: if a host cannot be reached (``HostConnectionError``)
        or a worker fails to start (``WorkerStartError``), what this call
        added leaves again and that error is raised; the pool runs on as it
        was. A host in the pool already raises ``ValueError``.
        """
        self._refuse_wait_on_own_loop("Pool.add_hosts")
        _elastic_result(self._live_runtime().add_hosts(self._host_specs(hosts)))

    async def add_hosts_async(self, hosts: str | list[str]) -> None:
        """Async version of ``add_hosts``."""
        running_loop("add_hosts_async", "add_hosts")
        self._refuse_wait_on_own_loop("Pool.add_hosts_async")
        await _elastic_wait(self._live_runtime().add_hosts(self._host_specs(hosts)))

    def _host_specs(self, hosts: str | list[str]) -> list[HostSpec]:
        specs = parse_hosts(hosts)
        if not specs:
            raise ValueError("no hosts given")
        check_spawner_heartbeat(self._options.remote.heartbeat_timeout, specs)
        return specs

    def remove_hosts(
        self, hosts: str | list[str], drain: bool = True, *, timeout: float | None = None
    ) -> None:
        """Remove remote hosts from the running pool, by host name (``"maxi"``)
        or specification (``"ssh://maxi/8"``).

        Their workers take no new task. With ``drain`` (default) the tasks
        they run finish there, for at most ``timeout`` seconds if given;
        otherwise, and for what still runs after the ``timeout``, those tasks
        go back to the queue and run on other workers, without counting as a
        retry (``max_retries``). Then the workers stop and the pool leaves
        nothing on the host: its SSH agent exits, its spawner session ends,
        and the pool does not reconnect to it. Returns when that is done. A
        name that is not in the pool raises ``ValueError``, and so does
        removing the last workers.
        """
        self._refuse_wait_on_own_loop("Pool.remove_hosts")
        check_flag("drain", drain)
        names, timeout = _host_names(hosts), drain_timeout(timeout)
        _elastic_result(self._live_runtime().remove_hosts(names, drain, timeout))

    async def remove_hosts_async(
        self, hosts: str | list[str], drain: bool = True, *, timeout: float | None = None
    ) -> None:
        """Async version of ``remove_hosts``."""
        running_loop("remove_hosts_async", "remove_hosts")
        self._refuse_wait_on_own_loop("Pool.remove_hosts_async")
        check_flag("drain", drain)
        names, timeout = _host_names(hosts), drain_timeout(timeout)
        await _elastic_wait(self._live_runtime().remove_hosts(names, drain, timeout))

    def resize(
        self, num_workers: int | None, drain: bool = True, *, timeout: float | None = None
    ) -> None:
        """Change the number of local workers of the running pool.

        ``num_workers`` means what it means for ``Pool``: 0 is one per CPU,
        ``None`` none at all (the pool then needs remote hosts). New workers
        run the initializer and take tasks at once; it returns when they are
        ready, and if one fails to start, the new ones leave again and the
        error (``WorkerStartError``) is raised. Shrinking retires the least
        busy workers as ``remove_hosts`` does, ``drain`` and ``timeout``
        included, and returns when their processes have exited.
        """
        self._refuse_wait_on_own_loop("Pool.resize")
        check_flag("drain", drain)
        count, timeout = local_workers(num_workers), drain_timeout(timeout)
        _elastic_result(self._live_runtime().resize(count, drain, timeout))

    async def resize_async(
        self, num_workers: int | None, drain: bool = True, *, timeout: float | None = None
    ) -> None:
        """Async version of ``resize``."""
        running_loop("resize_async", "resize")
        self._refuse_wait_on_own_loop("Pool.resize_async")
        check_flag("drain", drain)
        count, timeout = local_workers(num_workers), drain_timeout(timeout)
        await _elastic_wait(self._live_runtime().resize(count, drain, timeout))


def _host_names(hosts: str | list[str]) -> list[str]:
    names = [hosts] if isinstance(hosts, str) else list(hosts)
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"a host is named by a string, not {name!r}")
    return names


def _elastic_result(change: concurrent.futures.Future[None]) -> None:
    try:
        change.result()
    except concurrent.futures.CancelledError:
        raise PoolClosedError("the pool was shut down during the change") from None


async def _elastic_wait(change: concurrent.futures.Future[None]) -> None:
    try:
        # the change goes on if the caller is cancelled: half a change is worse
        await asyncio.shield(asyncio.wrap_future(change))
    except asyncio.CancelledError:
        if not change.cancelled():
            raise  # the caller's own cancellation
        raise PoolClosedError("the pool was shut down during the change") from None
