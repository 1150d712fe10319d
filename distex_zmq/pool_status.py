"""What a ``Pool`` says about itself: ``repr``, ``is_ready`` and ``ready``,
``total_workers`` (and dask's ``_max_workers``), ``status``.

Each reads the runtime as it is, without starting it: a pool that has not
started yet answers from its options.
"""

from __future__ import annotations

import time
import weakref
from typing import TYPE_CHECKING, Any, Protocol

from distex_zmq.loops import running_loop
from distex_zmq.pool_base import PoolBase
from distex_zmq.runtime.snapshot import status_async, status_threadsafe

if TYPE_CHECKING:
    # imported when a status is first taken
    from distex_zmq.status import PoolStatus


class StatusMixin(PoolBase):
    """The state, size and status of a ``Pool``."""

    def __repr__(self) -> str:
        runtime = self._runtime
        configured = self._options.total_workers
        if runtime is None:
            state = "shut down" if self._is_shutdown else "not started"
            return f"<Pool 0/{configured} workers up, {state}>"
        up = 0 if runtime.closing or runtime.inherited else runtime.ready_workers
        state = runtime.pool_state(self._is_shutdown)
        error = runtime.failure()
        if state == "failed" and error is not None:
            state = f"failed: {type(error).__name__}: {error}"
        return f"<Pool {up}/{configured} workers up, {state}>"

    def is_ready(self) -> bool:
        """True once the pool has started (its workers came up) and until it
        is shut down (see also ``ready``), as in distex: a worker lost
        meanwhile, or every host, does not change it (``status().state`` and
        ``total_workers()`` tell what runs now)."""
        runtime = self._runtime
        return (
            runtime is not None
            and not self._is_shutdown
            and not runtime.inherited
            and runtime.started.done()
            and runtime.started.exception() is None
        )

    def total_workers(self) -> int:
        """Number of workers ready for tasks now, local and remote (the
        processors in use, as in distex): a worker that died counts again
        once its replacement is ready.

        Until the pool has started (``lazy_create``, or while its workers
        start) it is the number configured, so that what sizes itself from
        it (dask, joblib) sees the pool it will get; after a failure or a
        shutdown it is 0.
        """
        runtime = self._runtime
        if runtime is None:
            return 0 if self._is_shutdown else self._options.total_workers
        if self._is_shutdown or runtime.closing or runtime.failure() is not None:
            return 0
        if not runtime.started.done():
            return self._options.total_workers
        return runtime.ready_workers

    @property
    def _max_workers(self) -> int:
        """``total_workers()``, under the name that dask (``scheduler=pool``)
        reads from a ``concurrent.futures`` executor to size itself; the
        number configured when no worker is up (never 0)."""
        return self.total_workers() or self._options.total_workers

    def status(self) -> PoolStatus:
        """A snapshot of the pool: its workers, hosts and counters (see
        ``PoolStatus``). Taken on the pool loop, so it is consistent; cheap
        enough to call in a loop. After shutdown: the last status."""
        runtime = self._runtime
        if runtime is None:
            return self._unstarted_status()
        return status_threadsafe(runtime, self._is_shutdown)

    async def status_async(self) -> PoolStatus:
        """Async version of ``status``."""
        running_loop("status_async", "status")
        runtime = self._runtime
        if runtime is None:
            return self._unstarted_status()
        return await status_async(runtime, self._is_shutdown)

    def _unstarted_status(self) -> PoolStatus:
        from distex_zmq.status import PoolStatus, Totals

        tasks = self._tasks
        return PoolStatus(
            state="shut down" if self._is_shutdown else "not started",
            error=None,
            configured_workers=self._options.total_workers,
            workers=(),
            hosts=(),
            totals=Totals(0, 0, 0, 0, 0, 0, 0, 0, len(tasks.functions), tasks.made),
            taken_at=time.time(),
        )


class Startable(Protocol):
    """What ``Ready`` needs of a pool."""

    def is_ready(self) -> bool: ...

    async def create(self) -> Any: ...


class Ready:
    """``pool.ready``: whether the workers are up, as ``is_set`` and ``wait``."""

    def __init__(self, pool: Startable):
        # weak, as the pool holds this object: a cycle would delay its shutdown
        self._pool = weakref.ref(pool)

    def is_set(self) -> bool:
        pool = self._pool()
        return pool is not None and pool.is_ready()

    async def wait(self) -> bool:
        pool = self._pool()
        if pool is not None:
            await pool.create()
        return True
