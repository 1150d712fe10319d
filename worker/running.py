"""Running a worker's tasks: unpickling them, calling the function (once, or
over a chunk of inputs), awaiting what is awaitable, and pickling each result
or error into the batch of results that the worker sends next.

An error of a task is its result (a ``RemoteException`` that unpickles to the
original exception); in a chunk, each input that raises has an ``ItemError``.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import os
import socket
import time
import types
from collections.abc import Callable
from typing import Any

from distex_zmq.errors import RemoteException, SerializationError
from distex_zmq.serialization import ItemError, dumps, loads, pickle_module
from distex_zmq.task_errors import unloadable_hint, unpicklable_hint
from distex_zmq.wire import frames as p


class Runner:
    """Runs tasks and collects their results in ``results`` until taken.

    ``on_async_result()`` is called when an awaited result was added, so that
    the worker sends it soon.
    """

    def __init__(
        self,
        func_pickle: int,
        data_pickle: int,
        loop: asyncio.AbstractEventLoop,
        on_async_result: Callable[[], None],
    ):
        self._func_loads = pickle_module(func_pickle).loads
        #: the pickle settings, for hints in error messages
        self._pickles = (func_pickle, data_pickle)
        data_module = pickle_module(data_pickle)
        self._data_loads = data_module.loads
        self._data_dumps = data_module.dumps
        self._loop = loop
        self._on_async_result = on_async_result
        #: the functions it holds, by id (the broker knows which)
        self.functions = p.RecentFunctions()
        #: the awaited tasks that have not finished
        self.running: set[asyncio.Future[Any]] = set()
        #: results not sent yet
        self.results = p.Writer(p.RESULT)

    def take_results(self) -> p.Writer:
        """The results collected so far; collecting starts anew."""
        results = self.results
        self.results = p.Writer(p.RESULT)
        return results

    def give_back(self, task_id: int) -> None:
        """Return ``task_id`` unrun (``STATUS_RETURNED``)."""
        self.results.entries.append(p.RESULT_ENTRY.pack(task_id, p.STATUS_RETURNED, 0, 0, 0))

    def run(
        self,
        task_id: int,
        func_id: int,
        flags: int,
        func_pickle: Any,
        data: Any,
        buffers: list[Any],
    ) -> None:
        """Run a task; its result is added now or, if awaitable, once awaited."""
        started = time.perf_counter()
        try:
            func = self._function(func_id, func_pickle)
            args = loads(data, buffers, self._data_loads)
        except BaseException as e:  # noqa: BLE001 - any unpickling error fails the task
            part = "function" if type(e) is _Broken else "arguments"
            hint = "" if type(e) is _Broken else unloadable_hint(part, e, *self._pickles)
            error = SerializationError(
                f"{_where()} could not unpickle the {part} of task {task_id}: "
                f"{e if type(e) is _Broken else f'{type(e).__name__}: {e}'}{hint}"
            )
            self._add_result(task_id, p.STATUS_ERROR, _remote(error), started)
            return
        if flags & p.FLAG_CHUNK:
            self._run_chunk(task_id, func, args, flags & p.FLAG_STAR, started)
            return
        try:
            if flags & p.FLAG_KWARGS:
                args, kwargs = args
                result = func(*args, **kwargs)
            elif flags & p.FLAG_STAR:
                result = func(*args)
            else:
                result = func(args)
        except BaseException as e:  # noqa: BLE001 - a task's error is its result
            self._add_result(task_id, p.STATUS_ERROR, _remote(e), started)
            return
        if _is_awaitable(result):
            self._await_result(task_id, result, started)
        else:
            self._add_result(task_id, p.STATUS_OK, result, started)

    def _function(self, func_id: int, func_pickle: Any) -> Any:
        if func_pickle is not None:
            try:
                func = self._func_loads(func_pickle)
            except BaseException as e:  # noqa: BLE001
                why = f"{type(e).__name__}: {e}{unloadable_hint('function', e, *self._pickles)}"
                # remembered, so that later tasks of this function fail alike
                func = _Broken(why)
            self.functions.add(func_id, func, len(func_pickle))
        else:
            func = self.functions.take(func_id)
            if func is p.ABSENT:
                raise p.ProtocolError(f"the broker referred to function {func_id}, unknown here")
        if type(func) is _Broken:
            raise func
        return func

    def _run_chunk(self, task_id: int, func: Any, items: Any, star: int, started: float) -> None:
        """Run every input of a chunk; an input's error is its own result."""
        results: list[Any] = []
        inputs = iter(items)
        while True:
            try:
                # map() in extend() is the fast path; after an error it goes on
                # with the inputs that follow
                results.extend(itertools.starmap(func, inputs) if star else map(func, inputs))
                break
            except BaseException as e:  # noqa: BLE001
                results.append(ItemError(_remote(e)))
        # one function makes all the results: if the first is awaitable, await them all
        if results and _is_awaitable(results[0]):
            self._await_result(task_id, _settle_all(results), started)
        else:
            self._add_result(task_id, p.STATUS_OK, results, started)

    def _await_result(self, task_id: int, awaitable: Any, started: float) -> None:
        fut = asyncio.ensure_future(awaitable, loop=self._loop)
        self.running.add(fut)

        def done(fut: asyncio.Future[Any]) -> None:
            self.running.discard(fut)
            if fut.cancelled():
                error = _remote(asyncio.CancelledError(f"task {task_id} was cancelled"))
                self._add_result(task_id, p.STATUS_ERROR, error, started)
            elif (exc := fut.exception()) is not None:
                error = _remote(exc)
                self._add_result(task_id, p.STATUS_ERROR, error, started)
            else:
                self._add_result(task_id, p.STATUS_OK, fut.result(), started)
            self._on_async_result()

        fut.add_done_callback(done)

    def _add_result(self, task_id: int, status: int, value: Any, started: float) -> None:
        elapsed = min(int((time.perf_counter() - started) * 1e6), p.MAX_ELAPSED)
        try:
            data, buffers = dumps(value, self._data_dumps)
        except BaseException as e:  # noqa: BLE001 - an unpicklable result fails the task
            data, buffers = _unpicklable(task_id, status, value, e, self._pickles[1])
            status = p.STATUS_ERROR
        results = self.results
        size = results.body(data, buffers)
        results.entries.append(p.RESULT_ENTRY.pack(task_id, status, elapsed, size, len(buffers)))


def _unpicklable(
    task_id: int, status: int, value: Any, e: BaseException, data_pickle: int
) -> tuple[bytes, list[Any]]:
    """The pickled error that stands for a result or error that did not pickle."""
    if status == p.STATUS_OK:
        what = f"its result of type {type(value).__name__}"
    else:
        what = "its exception"
        if isinstance(value, RemoteException):
            # keep the remote traceback, lose only the exception object
            text = (
                f"task {task_id} raised {type(value.exc).__name__}: {value.exc}; on "
                f"{_where()} the exception could not be pickled "
                f"({type(e).__name__}: {e}), so its traceback is the cause"
            )
            return dumps(_remote(SerializationError(text), value.tb))
    error = SerializationError(
        f"task {task_id} ran on {_where()} but {what} could not be pickled: "
        f"{type(e).__name__}: {e}{unpicklable_hint(value, e, data_pickle)}"
    )
    return dumps(_remote(error))


def _where() -> str:
    return f"worker pid {os.getpid()} on {_HOST}"


#: this worker's host name, which the errors of its tasks carry
_HOST = socket.gethostname()


def _remote(exc: BaseException, tb: str | None = None) -> RemoteException:
    """``exc`` to send as a task's error, marked with this worker's host and pid
    (a ``SerializationError`` made here is marked too)."""
    pid = os.getpid()
    if isinstance(exc, SerializationError):
        exc.set_origin(_HOST, pid)
    return RemoteException(exc, tb, _HOST, pid)


def _is_awaitable(value: Any) -> bool:
    # inspect.isawaitable goes through ABCs: too slow for every result
    if hasattr(value, "__await__"):
        return True
    return isinstance(value, types.GeneratorType) and inspect.isawaitable(value)


async def _settle_all(results: list[Any]) -> list[Any]:
    """A chunk's results with the awaitable ones awaited, together."""
    return list(await asyncio.gather(*(_settle(r) for r in results)))


async def _settle(value: Any) -> Any:
    """``value`` awaited if it is awaitable, an ``ItemError`` if that raised;
    else as it is (a plain result, or the ``ItemError`` of a sync error)."""
    if not inspect.isawaitable(value):
        return value
    try:
        return await value
    except BaseException as e:  # noqa: BLE001 - an input's error is its own result
        return ItemError(_remote(e))


class _Broken(Exception):
    """Stands for a function that could not be unpickled."""
