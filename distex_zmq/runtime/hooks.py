"""The broker's hooks (``BrokerHooks``): what the pool does when a worker
says hello (its initializer), is ready, fails its initializer, sends a log
record (whose task's result waits until it is handled), runs past
``task_timeout`` or loses its connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

from distex_zmq.broker import INIT_TAG, STATUS_LOCAL_ERROR, InitNotSent, Task, WorkerRecord
from distex_zmq.errors import WorkerStartError
from distex_zmq.options import Options
from distex_zmq.results import DISCARD
from distex_zmq.runtime.state import PoolState
from distex_zmq.runtime.supervisor import Supervisor
from distex_zmq.serialization import loads
from distex_zmq.tasks import TaskMaker, callable_name

_logger = logging.getLogger("distex_zmq.pool")


class HookedPool(PoolState, Protocol):
    """What the hooks need of the pool besides its state."""

    #: made after the broker, which needs the hooks first
    supervisor: Supervisor

    def worker_ready(self) -> None:
        """A worker became ready (a replacement too): the start-up ends once
        ``total_workers`` have."""


class PoolHooks:
    """The broker's hooks of one pool (on the pool loop)."""

    def __init__(self, options: Options, tasks: TaskMaker, pool: HookedPool):
        self._options = options
        self._tasks = tasks
        self._pool = pool

    def on_hello(self, rec: WorkerRecord) -> Task | None:
        """The task a new worker runs before any other: the initializer."""
        init = self._options.initializer
        if init is None:
            return None
        try:
            return self._tasks.call(init, self._options.initargs, {}, DISCARD, INIT_TAG, alone=True)
        except Exception as e:  # noqa: BLE001 - it does not pickle: the start fails with it
            error = WorkerStartError(
                f"the initializer {callable_name(init)!r} or its initargs could not be "
                f"pickled to send to the workers: {type(e).__name__}: {e}"
            )
            error.__cause__ = e
            if not self._pool.closing:
                self._start_failed(rec, error)
            raise InitNotSent from e

    def on_ready(self, rec: WorkerRecord) -> None:
        self._pool.supervisor.worker_ready(rec)
        self._pool.worker_ready()

    def on_init_failed(self, rec: WorkerRecord, status: int, value: Any) -> None:
        pool = self._pool
        if pool.closing:
            return
        if status == STATUS_LOCAL_ERROR:
            cause = value
        else:
            try:
                cause = loads(value[0], value[1], self._tasks.data_loads)
            except Exception as e:  # noqa: BLE001
                cause = e
        error = WorkerStartError(
            f"the initializer {callable_name(self._options.initializer)!r} raised on {rec}: "
            f"{type(cause).__name__}: {cause}"
        )
        error.__cause__ = cause if isinstance(cause, BaseException) else None
        self._start_failed(rec, error)

    def _start_failed(self, rec: WorkerRecord, error: WorkerStartError) -> None:
        """``rec``'s initializer failed with ``error``: the pool's start
        fails, or a replacement dies (which counts against
        ``max_worker_deaths``)."""
        pool = self._pool
        if pool.error is not None:
            # the pool failed (another worker's initializer raised first, and
            # the start-up is over for it): this worker goes with the pool
            return
        if not pool.is_up:
            pool.fail(error)
        elif not pool.supervisor.start_failed(rec.identity, error):
            # a replacement: it dies, which counts against max_worker_deaths
            _logger.error("%s", error)
            pool.supervisor.kill(rec.identity)

    def on_log(self, rec: WorkerRecord, body: bytes) -> int:
        output = self._pool.supervisor.placement.output
        return output.log(rec.host, rec.pid, rec.identity.decode(errors="backslashreplace"), body)

    def read_output(self, rec: WorkerRecord) -> bool:
        local = self._pool.supervisor.placement.local
        return local is not None and not rec.remote and local.read_now(rec.identity)

    def logs_handled(self) -> int:
        return self._pool.supervisor.placement.output.writer.handled

    def when_logs_handled(self, ticket: int, callback: Callable[[], None]) -> None:
        writer = self._pool.supervisor.placement.output.writer
        writer.when_handled(ticket, asyncio.get_running_loop(), callback)

    def on_task_timeout(self, rec: WorkerRecord, task: Task | None) -> None:
        self._pool.supervisor.on_task_timeout(rec, task)

    def on_unreachable(self, rec: WorkerRecord) -> None:
        self._pool.supervisor.on_unreachable(rec)

    def on_spent(self, rec: WorkerRecord) -> None:
        self._pool.supervisor.renew(rec.identity)

    def on_stopped(self, rec: WorkerRecord) -> None:
        self._pool.supervisor.left(rec)
