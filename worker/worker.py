"""The worker process: runs tasks from the broker on its own event loop.

::

    broker ROUTER  --TASK-->   DEALER  Worker._on_readable
                                         |  run each task (sync: at once;
                                         |  coroutine: as an asyncio task)
                   <--RESULT--         _outbox, flushed once per batch

The worker grants the broker ``credits`` when it says hello; the broker never
sends more tasks than that, so the worker keeps no queue of its own. Results
of a batch of tasks travel back in one message, unless the batch runs longer
than ``FLUSH_AFTER`` seconds, when what is done is sent at once, or a task
that may run long (``FLAG_FLUSH_FIRST``) is next: what is done is sent
before it starts. Tiny tasks that share a credit (``FLAG_GROUPED``) were
guessed tiny from their function's past: once one of them runs
``GROUPED_TASK_LIMIT`` or longer, the later ones of that function are given
back unrun.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import os
import socket
import sys
import time
import types
from typing import Any

import zmq

from distex_zmq.errors import RemoteException, SerializationError
from distex_zmq.security import KeyPair, make_client
from distex_zmq.serialization import ItemError, dumps, loads, pickle_module
from distex_zmq.task_errors import unloadable_hint, unpicklable_hint
from distex_zmq.version import __version__
from distex_zmq.wire import frames as p
from distex_zmq.wire.zmqio import readable, recv_frames, send_frames

#: Seconds between checks that the process that started the worker lives.
PARENT_CHECK_INTERVAL = 1.0
#: A batch of results waits no longer than this for the rest of its batch.
FLUSH_AFTER = 0.001
#: Seconds a task of a group (tiny tasks sharing a credit) may run before
#: the later ones of its function in the message are given back.
GROUPED_TASK_LIMIT = p.GROUP_BELOW_US / 1e6
#: Seconds a worker polls for the next task after the pool's only one.
LONE_POLL = p.LONE_POLL_US / 1e6

_logger = logging.getLogger("distex_zmq.worker")


class Worker:
    """Connects to a broker and runs the tasks it sends until told to stop."""

    def __init__(
        self,
        endpoint: str,
        identity: bytes,
        credits: int,
        func_pickle: int,
        data_pickle: int,
        loop: asyncio.AbstractEventLoop,
        parent_pid: int = 0,
        curve: dict[str, str] | None = None,
    ):
        self._endpoint = endpoint
        self._identity = identity
        self._credits = credits
        self._func_loads = pickle_module(func_pickle).loads
        self._pickles = (func_pickle, data_pickle)
        data_module = pickle_module(data_pickle)
        self._data_loads = data_module.loads
        self._data_dumps = data_module.dumps
        self._loop = loop
        self._parent_pid = parent_pid
        self._functions = p.RecentFunctions()
        self._running: set[asyncio.Future[Any]] = set()
        self._results = p.Writer(p.RESULT)
        self._flush_scheduled = False
        #: the latest batch held the pool's only task (``FLAG_LONE``)
        self._lone = False
        self._stopping = False
        self.exit_code = 0
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 2000)
        self._sock.setsockopt(zmq.ROUTING_ID, identity)
        if curve is not None:
            # the broker's TCP endpoint admits only the keys its pool gave out
            keys = KeyPair(curve["public"].encode(), curve["secret"].encode())
            make_client(self._sock, curve["server"].encode(), keys)

    def run(self) -> int:
        """Serve tasks until STOP, REFUSE or the loop stops; return the exit code."""
        sock = self._sock
        sock.connect(self._endpoint)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "credits": self._credits,
            "version": __version__,
            "python": sys.version.split()[0],
        }
        sock.send_multipart(p.hello(info))
        fd = int(sock.getsockopt(zmq.FD))
        self._loop.add_reader(fd, self._on_readable)
        self._loop.call_soon(self._on_readable)
        if self._parent_pid:
            self._loop.call_later(PARENT_CHECK_INTERVAL, self._check_parent)
        try:
            self._loop.run_forever()
        finally:
            self._loop.remove_reader(fd)
            for fut in self._running:
                fut.cancel()
            sock.close()
            self._ctx.term()
        return self.exit_code

    def _check_parent(self) -> None:
        # Linux's parent-death signal covers most deaths; this covers the rest
        # (another OS, a parent that is not the process that started us)
        if os.getppid() != self._parent_pid:
            print("distex_zmq worker: the pool's process is gone; exiting", file=sys.stderr)
            os._exit(1)
        self._loop.call_later(PARENT_CHECK_INTERVAL, self._check_parent)

    # receiving

    def _on_readable(self) -> None:
        sock = self._sock
        while True:
            self._lone = False
            while not self._stopping and readable(sock):
                frames = recv_frames(sock)
                try:
                    kind, count, buf = p.check(frames[0])
                    if kind == p.TASK:
                        self._run_tasks(buf, count, frames)
                    elif kind == p.STOP:
                        self._stop()
                    elif kind == p.REFUSE:
                        self._refused(p.text_body(buf))
                    else:
                        raise p.ProtocolError(f"unknown message type {kind!r}")
                except p.ProtocolError as e:
                    _logger.error("dropped a message from the broker: %s", e)
            self._flush()
            # after the pool's only task, the next one often follows at once
            if not self._lone or self._running or self._stopping or not self._poll(sock):
                return

    @staticmethod
    def _poll(sock: Any) -> bool:
        """Whether a message comes within ``LONE_POLL``: cheaper than sleeping
        if it does, as waking a sleeping thread costs tens of microseconds."""
        deadline = time.perf_counter() + LONE_POLL
        while time.perf_counter() < deadline:
            if readable(sock):
                return True
        return False

    def _refused(self, reason: str) -> None:
        print(f"distex_zmq worker: refused by the broker: {reason}", file=sys.stderr)
        self.exit_code = 2
        self._stopping = True
        self._loop.stop()

    def _stop(self) -> None:
        self._stopping = True
        if self._running:
            waiter = asyncio.gather(*self._running, return_exceptions=True)
            waiter.add_done_callback(lambda _: self._loop.stop())
        else:
            self._loop.stop()

    # running tasks

    def _run_tasks(self, buf: memoryview, count: int, frames: list[Any]) -> None:
        start = time.perf_counter()
        reader = p.Reader(buf, p.body(buf, count, p.TASK_ENTRY), frames)
        #: a function whose grouped task was not tiny after all
        slow_func = -1
        for task_id, func_id, flags, func_len, data_len, nbuffers in p.task_entries(buf, count):
            func_pickle = reader.inline(func_len) if flags & p.FLAG_FUNC else None
            data, buffers = reader.data(data_len, nbuffers)
            if func_id == slow_func and flags & p.FLAG_GROUPED and func_pickle is None:
                # give it back rather than run the group one slow task after
                # the other: another worker may be free
                self._give_back(task_id)
                continue
            if flags & p.FLAG_LONE:
                self._lone = True
            if flags & p.FLAG_FLUSH_FIRST and self._results:
                # a task that may run long: send what is done before it starts
                self._flush()
                start = time.perf_counter()
            grouped = flags & p.FLAG_GROUPED
            if grouped:
                began = time.perf_counter()
            self._run_task(task_id, func_id, flags, func_pickle, data, buffers)
            now = time.perf_counter()
            if grouped and now - began >= GROUPED_TASK_LIMIT:
                slow_func = func_id
            if self._results and now - start > FLUSH_AFTER:
                self._flush()
                start = time.perf_counter()

    def _run_task(
        self,
        task_id: int,
        func_id: int,
        flags: int,
        func_pickle: Any,
        data: Any,
        buffers: list[Any],
    ) -> None:
        started = time.perf_counter()
        try:
            func = self._function(func_id, func_pickle)
            args = loads(data, buffers, self._data_loads)
        except BaseException as e:  # noqa: BLE001 - any unpickling error fails the task
            part = "function" if type(e) is _Broken else "arguments"
            hint = "" if type(e) is _Broken else unloadable_hint(part, e, *self._pickles)
            error = SerializationError(
                f"{self._where()} could not unpickle the {part} of task {task_id}: "
                f"{e if type(e) is _Broken else f'{type(e).__name__}: {e}'}{hint}"
            )
            self._add_result(task_id, p.STATUS_ERROR, RemoteException(error), started)
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
            self._add_result(task_id, p.STATUS_ERROR, RemoteException(e), started)
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
            self._functions.add(func_id, func, len(func_pickle))
        else:
            func = self._functions.take(func_id)
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
                results.append(ItemError(RemoteException(e)))
        # one function makes all the results: if the first is awaitable, await them all
        if results and _is_awaitable(results[0]):
            self._await_chunk(task_id, results, started)
        else:
            self._add_result(task_id, p.STATUS_OK, results, started)

    def _await_result(self, task_id: int, awaitable: Any, started: float) -> None:
        fut = asyncio.ensure_future(awaitable, loop=self._loop)
        self._running.add(fut)

        def done(fut: asyncio.Future[Any]) -> None:
            self._running.discard(fut)
            if fut.cancelled():
                error = RemoteException(asyncio.CancelledError(f"task {task_id} was cancelled"))
                self._add_result(task_id, p.STATUS_ERROR, error, started)
            elif fut.exception() is not None:
                error = RemoteException(fut.exception())
                self._add_result(task_id, p.STATUS_ERROR, error, started)
            else:
                self._add_result(task_id, p.STATUS_OK, fut.result(), started)
            self._schedule_flush()

        fut.add_done_callback(done)

    def _await_chunk(self, task_id: int, results: list[Any], started: float) -> None:
        async def gather() -> list[Any]:
            done = await asyncio.gather(*(_awaited(r) for r in results), return_exceptions=True)
            return [
                ItemError(RemoteException(r)) if isinstance(r, BaseException) else r for r in done
            ]

        fut = asyncio.ensure_future(gather(), loop=self._loop)
        self._running.add(fut)

        def finished(fut: asyncio.Future[Any]) -> None:
            self._running.discard(fut)
            if fut.cancelled() or fut.exception() is not None:
                error = RemoteException(fut.exception() or asyncio.CancelledError())
                self._add_result(task_id, p.STATUS_ERROR, error, started)
            else:
                self._add_result(task_id, p.STATUS_OK, fut.result(), started)
            self._schedule_flush()

        fut.add_done_callback(finished)

    # sending results

    def _add_result(self, task_id: int, status: int, value: Any, started: float) -> None:
        elapsed = min(int((time.perf_counter() - started) * 1e6), p.MAX_ELAPSED)
        try:
            data, buffers = dumps(value, self._data_dumps)
        except BaseException as e:  # noqa: BLE001 - an unpicklable result fails the task
            data, buffers = self._unpicklable(task_id, status, value, e)
            status = p.STATUS_ERROR
        results = self._results
        size = results.body(data, buffers)
        results.entries.append(p.RESULT_ENTRY.pack(task_id, status, elapsed, size, len(buffers)))

    def _give_back(self, task_id: int) -> None:
        self._results.entries.append(p.RESULT_ENTRY.pack(task_id, p.STATUS_RETURNED, 0, 0, 0))

    def _unpicklable(
        self, task_id: int, status: int, value: Any, e: BaseException
    ) -> tuple[bytes, list[Any]]:
        if status == p.STATUS_OK:
            what = f"its result of type {type(value).__name__}"
        else:
            what = "its exception"
            if isinstance(value, RemoteException):
                # keep the remote traceback, lose only the exception object
                text = (
                    f"task {task_id} raised {type(value.exc).__name__}: {value.exc}; on "
                    f"{self._where()} the exception could not be pickled "
                    f"({type(e).__name__}: {e}), so its traceback is the cause"
                )
                return dumps(RemoteException(SerializationError(text), value.tb))
        error = SerializationError(
            f"task {task_id} ran on {self._where()} but {what} could not be pickled: "
            f"{type(e).__name__}: {e}{unpicklable_hint(value, e, self._pickles[1])}"
        )
        return dumps(RemoteException(error))

    @staticmethod
    def _where() -> str:
        return f"worker pid {os.getpid()} on {socket.gethostname()}"

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._results:
            results = self._results
            self._results = p.Writer(p.RESULT)
            send_frames(self._sock, results.frames_out())
            # a send can consume the edge of the edge-triggered FD: look again
            if not self._stopping and readable(self._sock):
                self._loop.call_soon(self._on_readable)


def _is_awaitable(value: Any) -> bool:
    # inspect.isawaitable goes through ABCs: too slow for every result
    if hasattr(value, "__await__"):
        return True
    return isinstance(value, types.GeneratorType) and inspect.isawaitable(value)


class _Broken(Exception):
    """Stands for a function that could not be unpickled."""


async def _awaited(value: Any) -> Any:
    if isinstance(value, ItemError):
        raise value.error
    if inspect.isawaitable(value):
        return await value
    return value
