"""The state that the parts of ``Pool`` share, and how they reach the runtime.

``Pool`` (pool.py) groups its methods by area: life cycle and single tasks in
pool.py, what the pool says about itself in pool_status.py, elastic changes
in pool_hosts.py, map and run_on_all in pool_maps.py. Each part is a class
based on ``PoolBase`` and reads the pool through it: ``_options``, ``_tasks``,
``_runtime``, ``_is_shutdown`` and ``_live_runtime()``.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import threading
import weakref
from collections.abc import Callable
from typing import Any, NoReturn

from distex_zmq.errors import SHUT_DOWN, PoolClosedError
from distex_zmq.map_sizing import RunTimes
from distex_zmq.options import Options
from distex_zmq.process_role import refuse_start_while_loading
from distex_zmq.results import FutureSink, refuse_wait_on_pool_loop
from distex_zmq.runtime.loop import Runtime, shutdown_runtime
from distex_zmq.tasks import TaskMaker


class PoolBase(concurrent.futures.Executor):
    """A pool's options, task maker and runtime (started on first use)."""

    def __init__(self, options: Options) -> None:
        self._options = options
        self._tasks = TaskMaker(
            options.func_pickle, options.data_pickle, may_group=options.qsize > 1
        )
        self._lock = threading.Lock()
        self._runtime: Runtime | None = None
        self._finalizer: weakref.finalize | None = None
        self._is_shutdown = False
        self._future_sink = FutureSink(self._tasks.data_loads)
        #: sync maps that may be left unread: their inputs not read yet are
        #: submitted at the shutdown (``_submit_unread_maps``)
        self._unread_maps: weakref.WeakKeyDictionary[Any, Callable[[], None]] = (
            weakref.WeakKeyDictionary()
        )
        #: what the inputs of recent maps took, by function: a map of a
        #: function mapped before starts with the chunks it ended with
        self._run_times = RunTimes()

    def _start(self) -> Runtime:
        with self._lock:
            if self._is_shutdown:
                raise PoolClosedError(SHUT_DOWN)
            if self._runtime is None:
                refuse_start_while_loading()
                self._options.fix_log_level()
                # in a context of its own: what the pool loop schedules while
                # it starts (the broker's reader, the workers' pipes) would
                # otherwise run for good in a copy of this caller's context,
                # and so would what the pool loop does for later callers (a
                # task's log records, done callbacks): in Jupyter, where the
                # running cell is a context variable, all of it would go to
                # the cell that made the pool
                self._runtime = contextvars.Context().run(Runtime, self._options, self._tasks)
                self._finalizer = weakref.finalize(
                    self, shutdown_runtime, weakref.ref(self._runtime)
                )
            return self._runtime

    def _live_runtime(self) -> Runtime:
        """The runtime, started if need be; raise if the pool cannot take tasks."""
        runtime = self._runtime
        if runtime is None or self._is_shutdown:
            runtime = self._start()
        if runtime.error is not None:
            runtime.raise_error()
        if runtime.inherited:
            raise runtime.inherited_error()
        return runtime

    def _refuse_wait_on_own_loop(self, what: str) -> None:
        """Raise ``RuntimeError`` on this pool's loop thread (in a done
        callback of its futures), where ``what`` would wait for ever."""
        runtime = self._runtime
        refuse_wait_on_pool_loop(what, None if runtime is None else runtime.loop)

    def _submit_unread_maps(self) -> None:
        """Submit the inputs of the maps that were kept but never iterated
        (``m = pool.map(save, files)``), as ``Executor.map`` submits them all
        at its call: a shutdown that waits for the tasks waits for them too."""
        for submit_rest in list(self._unread_maps.values()):
            submit_rest()

    def _mark_shutdown(self) -> Runtime | None:
        with self._lock:
            self._is_shutdown = True
            runtime = self._runtime
        if self._finalizer is not None:
            self._finalizer.detach()
        return runtime


def raise_start_error(runtime: Runtime) -> NoReturn:
    """A submit found the broker closed: the start failed as it ran (raise
    its error), or the pool was shut down (re-raise the ``PoolClosedError``
    being handled)."""
    if runtime.error is not None:
        runtime.raise_error()
    raise
