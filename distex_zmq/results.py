"""Result sinks: how results get from the pool loop to whoever waits for them.

The broker calls ``deliver`` for each result and ``flush`` once per batch, on
the pool loop. Each sink turns that into one wake-up of its consumer per
batch: a ``concurrent.futures.Future`` set directly (it is thread-safe), an
asyncio future resolved on its own loop, or a map's result queue.
"""

from __future__ import annotations

import _thread
import asyncio
import concurrent.futures
import logging
import threading
import weakref
from asyncio import _get_running_loop, _set_running_loop
from collections import deque
from collections.abc import Callable
from concurrent.futures._base import CANCELLED, PENDING, RUNNING
from typing import TYPE_CHECKING, Any

from distex_zmq.broker import STATUS_LOCAL_ERROR, Task
from distex_zmq.errors import SerializationError
from distex_zmq.serialization import loads_rebuilding_errors
from distex_zmq.task_errors import (
    name_not_found,
    name_task,
    result_unloadable_hint,
    unloadable_error,
)
from distex_zmq.wire import frames as p

#: the logger of ``concurrent.futures``, which logs the errors of done callbacks
_futures_logger = logging.getLogger("concurrent.futures")


def decode(task: Task, status: int, value: Any, data_loads: Callable[..., Any]) -> Any:
    """Return the task's result, or raise its error.

    A chunk's result is a list in which ``ItemError`` stands for each input
    that raised; the caller raises those in order.
    """
    ok, result = outcome(task, status, value, data_loads)
    if ok:
        return result
    raise result


def outcome(
    task: Task, status: int, value: Any, data_loads: Callable[..., Any]
) -> tuple[bool, Any]:
    """``(True, the task's result)`` or ``(False, its error)``, the error
    not raised here: raised, it would hold in its traceback the frames of
    the pool loop that delivered it, which hold the task and its future,
    and a failed future that holds it would be freed only by the cycle
    collector (never, with it off), with everything those frames hold."""
    if status == STATUS_LOCAL_ERROR:
        return False, value
    try:
        # ``serialization.loads`` inline: a call less per result
        data, buffers = value[0], value[1]
        result = data_loads(data, buffers=buffers) if buffers else data_loads(data)
    except Exception as e:
        ok, result = _rebuilt(task, status, value, data_loads, e)
        if not ok:
            return False, result
    if status == p.STATUS_OK:
        return True, result
    if isinstance(result, BaseException):
        if type(result) is SerializationError:  # made by the worker: name the task
            return False, name_task(result, task.id, task.describe())
        return False, result
    error = SerializationError(f"task {task.shown_id} failed with a non-exception {result!r}")
    return False, error


def _rebuilt(
    task: Task, status: int, value: Any, data_loads: Callable[..., Any], e: Exception
) -> Any:
    """``(True, the result of task)`` that ``data_loads`` failed to load
    with ``e``, loaded with its exceptions that their classes do not make
    from their ``args`` rebuilt (an error returned or in a list of results,
    not raised); else ``(False, the SerializationError that names e)``, as
    ``outcome`` returns an error."""
    if not name_not_found(e):
        try:
            return True, loads_rebuilding_errors(value[0], value[1], data_loads)
        except Exception:  # noqa: BLE001, S110 - the first failure is the one to name
            pass
    salvaged = None
    if status == p.STATUS_ERROR:
        salvaged = unloadable_error(task.describe(), value[0], value[1], e)
    error = salvaged or SerializationError(
        f"the result of {task.describe()} could not be unpickled in the client: "
        f"{type(e).__name__}: {e}{result_unloadable_hint(e)}"
    )
    rec = task.worker  # where it ran
    if rec is not None:
        error.set_origin(rec.host, rec.pid)
    # as ``raise error from ...``; ``e``'s traceback still holds the pool
    # loop's frames (a result that does not load is rare)
    error.__cause__ = e if salvaged is None else salvaged.__cause__
    return False, error


class _LeanCondition(threading.Condition):
    """A ``threading.Condition`` over its own ``RLock`` that holds 3 objects
    the garbage collector tracks instead of 8.

    ``Condition`` binds five methods of its lock in ``__init__``; these are
    plain methods here. Every pending future holds a condition, and each
    tracked object lengthens the garbage collector's full passes, which a
    burst of submits triggers.
    """

    def __init__(self) -> None:
        self._lock = _thread.RLock()
        self._waiters: deque[Any] = deque()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    def _release_save(self) -> Any:
        return self._lock._release_save()  # type: ignore[attr-defined]

    def _acquire_restore(self, state: Any) -> None:
        self._lock._acquire_restore(state)  # type: ignore[attr-defined]

    def _is_owned(self) -> bool:
        return self._lock._is_owned()  # type: ignore[attr-defined]


#: ``loop``: on a pool loop thread, the pool's loop. The pool's results reach
#: their futures there, so a wait there for one (in a done callback of one of
#: its futures, say) would not end; a wait for another pool's results would.
_pool_loop = threading.local()


def mark_pool_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Mark the calling thread as the thread of the pool loop ``loop`` (see
    ``refuse_wait_on_pool_loop``)."""
    _pool_loop.loop = loop


def refuse_wait_on_pool_loop(what: str, loop: asyncio.AbstractEventLoop | None) -> None:
    """Raise ``RuntimeError`` on the thread of the pool loop ``loop`` (None: a
    pool not started, which has none), where ``what``, a wait for that pool's
    results, would hang."""
    if loop is not None and getattr(_pool_loop, "loop", None) is loop:
        raise RuntimeError(
            f"{what} would wait forever: this is the pool's own thread, which delivers "
            "the results (done callbacks of the pool's futures run on it). In a callback, "
            "submit() and add another callback, or hand the work to another thread"
        )


#: multiprocessing's ``AsyncResult`` methods -> what a ``Future`` has instead
_ASYNC_RESULT = {
    "get": "use .result(timeout)",
    "wait": "use concurrent.futures.wait([future], timeout)",
    "ready": "use .done()",
    "successful": "use .done() and .exception() is None",
}


class TaskFuture(concurrent.futures.Future[Any]):
    """The future of ``Pool.submit``: cancelling it cancels its task.

    As with ``ProcessPoolExecutor``, it can be cancelled until its task goes
    to a worker (which holds up to ``qsize`` tasks): from then on it is
    running, and ``cancel`` returns False. A task that its worker gives back
    unrun (it held it behind one that runs long) is pending again until it
    goes to a worker once more. A cancelled task never runs.
    Waiting for it on the pool loop (in a done callback) raises
    ``RuntimeError`` instead of hanging the pool.

    Made for its ``task``, which has no tag yet: the future becomes its tag.
    ``wake`` (the broker's) is called when a cancel drops the task, so that
    the broker ends it now rather than when a worker is free for it.
    ``loop`` is the pool loop that delivers its result.
    """

    def __init__(
        self,
        task: Task,
        loop: asyncio.AbstractEventLoop,
        wake: Callable[[], None] | None = None,
    ) -> None:
        # ``Future.__init__``'s attributes, set here: it would make a
        # ``threading.Condition`` only to have it replaced by the lean one
        # (tests/test_api.py checks that no attribute of a ``Future`` is missing)
        self._condition = _LeanCondition()
        self._state = PENDING
        self._result: Any = None
        self._exception: BaseException | None = None
        self._waiters: list[Any] = []
        self._done_callbacks: list[Callable[[concurrent.futures.Future[Any]], object]] = []
        #: the task while it may still run (cleared when its result arrives)
        self._task: Task | None = task
        self._loop = loop
        self._wake = wake
        task.tag = self
        task.claim = self._claim

    if not TYPE_CHECKING:  # for type checkers, a missing attribute stays an error

        def __getattr__(self, name: str) -> Any:
            """Called for a missing attribute only: a method of
            multiprocessing's ``AsyncResult`` raises the usual
            ``AttributeError``, saying what to use instead."""
            message = f"{type(self).__name__!r} object has no attribute {name!r}"
            hint = _ASYNC_RESULT.get(name)
            if hint is not None:
                message += (
                    ": Pool.submit(...) returns a concurrent.futures.Future, not "
                    f"multiprocessing's AsyncResult; {hint}"
                )
            raise AttributeError(message, name=name, obj=self)

    def __repr__(self) -> str:
        """As a ``concurrent.futures.Future``'s, and while it runs, its task as
        ``Pool.status()`` shows it and where it runs: ``<TaskFuture at 0x...
        state=running task 38 (f) on worker pid 4711 on mini>``."""
        text = super().__repr__()
        task = self._task
        if task is None or not self.running():
            return text
        worker = task.worker  # set on the pool loop: read once, as it is now
        where = "" if worker is None else f" on {worker}"
        return f"{text[:-1]} {task.describe()}{where}>"

    def _claim(self, runs: bool = True) -> bool:
        """The task goes to a worker (``Task.claim``): running from now on,
        unless cancelled first. Again after its worker was lost: still running.
        With ``runs`` False, its worker gave it back unrun: pending again, so
        that it may be cancelled until it goes to a worker once more."""
        with self._condition:
            if not runs:
                if self._state == RUNNING:
                    self._state = PENDING
                return False
            if self._state == PENDING:
                self._state = RUNNING
                return True
            return self._state == RUNNING

    def result(self, timeout: float | None = None) -> Any:
        if not self.done():
            refuse_wait_on_pool_loop("waiting for the result of a task", self._loop)
        try:
            return super().result(timeout)
        finally:
            # the error raised holds this frame in its traceback: without
            # ``self`` there, a dropped future is freed at once, as
            # concurrent.futures' own ``result`` has it
            del self

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if not self.done():
            refuse_wait_on_pool_loop("waiting for the result of a task", self._loop)
        return super().exception(timeout)

    def _invoke_callbacks(self) -> None:
        if getattr(_pool_loop, "loop", None) is not self._loop:
            super()._invoke_callbacks()  # type: ignore[misc]
            return
        # On the pool loop: an error that escaped a callback there, as
        # ``sys.exit()`` or a ``KeyboardInterrupt`` would, would end the
        # loop and with it every result of the pool. Logged instead, as
        # concurrent.futures logs an ``Exception``.
        for callback in self._done_callbacks:
            try:
                callback(self)
            except Exception:
                _futures_logger.exception("exception calling callback for %r", self)
            except BaseException as e:  # noqa: BLE001 - not the pool loop's to end
                _futures_logger.error(
                    "exception calling callback for %r: a %s raised in a done callback "
                    "ends neither the program nor the pool, whose thread runs the callback",
                    self,
                    type(e).__name__,
                    exc_info=True,
                )

    def cancel(self) -> bool:
        cancelled = super().cancel()
        if cancelled:
            task = self._task
            if task is not None:
                task.cancelled = True
            with self._condition:
                # What an executor does when it would have started the task:
                # ``concurrent.futures.wait`` and ``as_completed`` count a
                # cancelled future as done only once it is notified.
                if self._state == CANCELLED:
                    self.set_running_or_notify_cancel()
            if self._wake is not None:
                self._wake()
        return cancelled

    def abandon(self) -> None:
        """Cancel the task, or, once it runs, give it up (the joblib
        backend's call has failed): its worker runs it to its end, but its
        result is dropped, and a death of its worker does not run it again.
        A task given up leaves its future running for good."""
        if self.cancel():
            return
        task = self._task
        if task is not None:
            task.cancelled = True
            if self._wake is not None:
                self._wake()


class FutureSink:
    """Sets the ``TaskFuture`` in each task's tag, on the pool loop."""

    def __init__(self, data_loads: Callable[..., Any]):
        self._loads = data_loads

    def deliver(self, task: Task, status: int, value: Any) -> None:
        future: TaskFuture = task.tag
        loop = _get_running_loop() if future._done_callbacks else None
        if loop is None:
            self._settle(future, task, status, value)
            return
        # Its done callbacks run here, on the pool loop's thread, as those of
        # ProcessPoolExecutor run on a thread of its own: with no event loop
        # running nor current, so that they may call ``asyncio.run`` or a
        # sync API over asyncio, and none of them schedules on the pool's
        # loop. The pool's loop is both again afterwards (``asyncio.run``
        # leaves none current).
        _set_running_loop(None)
        asyncio.set_event_loop(None)
        try:
            self._settle(future, task, status, value)
        finally:
            asyncio.set_event_loop(loop)
            _set_running_loop(loop)

    def _settle(self, future: TaskFuture, task: Task, status: int, value: Any) -> None:
        # the task is over: nothing to cancel any more, and without the
        # cycle between the two a dropped future is freed at once
        future._task = None
        if status == STATUS_LOCAL_ERROR and isinstance(value, concurrent.futures.CancelledError):
            if not future.cancel() and not future.done():
                # it ran on a worker that was lost and waited in the queue
                # again: running for good, so it ends with the error instead
                try:
                    future.set_exception(value)
                except concurrent.futures.InvalidStateError:
                    pass
            return
        try:
            ok, result = outcome(task, status, value, self._loads)
        except BaseException as e:  # noqa: BLE001
            ok, result = False, e
        if future.cancelled():
            return
        try:
            if ok:
                future.set_result(result)
            else:
                future.set_exception(result)
        except concurrent.futures.InvalidStateError:
            pass  # cancelled meanwhile

    def flush(self, urgent: bool = False) -> None:
        pass


class DiscardSink:
    """Drops results: for tasks whose outcome the broker handles (initializers)."""

    def deliver(self, task: Task, status: int, value: Any) -> None:
        pass

    def flush(self, urgent: bool = False) -> None:
        pass


DISCARD = DiscardSink()


class LoopPort:
    """Runs callbacks on one event loop, with one thread-safe wake-up per batch.

    It refers to its loop weakly: the futures waiting on that loop hold it
    while they wait, and a pool that keeps a port per loop (``run_async``)
    must not keep every loop that ever called it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = weakref.ref(loop)
        self._pending: deque[tuple[Callable[[Any], None], Any]] = deque()
        self._scheduled = False

    def post(self, callback: Callable[[Any], None], arg: Any) -> None:
        self._pending.append((callback, arg))

    def flush(self) -> None:
        if self._pending and not self._scheduled:
            self._scheduled = True
            loop = self._loop()
            try:
                if loop is not None:
                    loop.call_soon_threadsafe(self._run)
                    return
            except RuntimeError:  # that loop is closed
                pass
            # nobody waits any more
            self._pending.clear()
            self._scheduled = False

    def _run(self) -> None:
        self._scheduled = False
        pending = self._pending
        while pending:
            callback, arg = pending.popleft()
            callback(arg)


class AsyncFutureSink:
    """Resolves the asyncio future in each task's tag on its own loop."""

    def __init__(self, port: LoopPort, data_loads: Callable[..., Any]):
        self._port = port
        self._loads = data_loads

    def deliver(self, task: Task, status: int, value: Any) -> None:
        self._port.post(self._resolve, (task, status, value))

    def flush(self, urgent: bool = False) -> None:
        self._port.flush()

    def _resolve(self, item: tuple[Task, int, Any]) -> None:
        task, status, value = item
        future: asyncio.Future[Any] = task.tag
        if future.done():
            return
        if status == STATUS_LOCAL_ERROR and isinstance(value, concurrent.futures.CancelledError):
            future.cancel()
            return
        try:
            ok, result = outcome(task, status, value, self._loads)
        except BaseException as e:  # noqa: BLE001
            ok, result = False, e
        if ok:
            future.set_result(result)
        elif isinstance(result, StopIteration):  # which an asyncio future refuses
            future.set_exception(stop_iteration_error(result, task.describe()))
        else:
            future.set_exception(result)


def stop_iteration_error(error: StopIteration, what: str) -> RuntimeError:
    """What an asyncio future holds for the ``StopIteration`` that ``what``
    (``task 3 (f)``) raised: it refuses a ``StopIteration`` (TypeError), as
    a coroutine cannot raise one, so the ``RuntimeError`` a coroutine
    raises for it instead, with ``error`` as its cause."""
    runtime_error = RuntimeError(f"{what} raised StopIteration")
    runtime_error.__cause__ = error
    return runtime_error


def wrap_task_future(future: concurrent.futures.Future[Any], what: str) -> asyncio.Future[Any]:
    """``asyncio.wrap_future(future)`` for the future of a task, ``what``,
    whose ``StopIteration`` becomes ``stop_iteration_error`` (``wrap_future``
    fails to copy it, and its await waits for ever)."""
    relay: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def copy(done: concurrent.futures.Future[Any]) -> None:
        if relay.cancelled():
            return
        if done.cancelled():
            relay.cancel()
        elif (error := done.exception()) is None:
            relay.set_result(done.result())
        elif isinstance(error, StopIteration):
            relay.set_exception(stop_iteration_error(error, what))
        else:
            relay.set_exception(error)

    def cancel_source(relay: concurrent.futures.Future[Any]) -> None:
        if relay.cancelled():
            future.cancel()

    relay.add_done_callback(cancel_source)
    future.add_done_callback(copy)
    return asyncio.wrap_future(relay)


def cancel_if_cancelled(task: Task, wake: Callable[[], None], future: asyncio.Future[Any]) -> None:
    """Done callback of an asyncio future of ``AsyncFutureSink``: cancelling
    the future cancels its task (one that has not started never runs), and
    ``wake`` makes the broker end it now."""
    if future.cancelled():
        task.cancelled = True
        wake()


class QueueSink:
    """Collects a map's raw results and decides when to wake the map.

    Each wake-up of a waiting thread costs tens of microseconds, so the map
    is woken when it has something worth doing: half its window of results
    is ready, or so few tasks are left in flight that the workers would run
    dry without more input (or the map is ending). Otherwise a timer wakes
    it within ``MAX_DELAY`` seconds, so no result waits longer than that.
    """

    MAX_DELAY = 0.001

    def __init__(
        self, wake: Callable[[], None], loop: asyncio.AbstractEventLoop, batch: int, low_water: int
    ):
        self.results: deque[tuple[Task, int, Any]] = deque()
        #: inputs handed to the broker (counted by the map's thread)
        self.submitted = 0
        self._delivered = 0
        self._wake = wake
        self._loop = loop
        self._batch = batch
        self._low_water = low_water
        self._timer: asyncio.TimerHandle | None = None

    def resize(self, batch: int, low_water: int) -> None:
        """Wake the map at ``batch`` results ready or ``low_water`` tasks left
        in flight from now on (the map's thread: its window changed)."""
        self._batch = batch
        self._low_water = low_water

    def deliver(self, task: Task, status: int, value: Any) -> None:
        self.results.append((task, status, value))
        self._delivered += 1

    def close(self) -> None:
        """Nobody takes the map's results any more (it is over, or never
        iterated; on the map's thread): drop those delivered and those still
        to come. Each holds its task, which holds this sink: kept here, they
        would be freed only by the cyclic garbage collector, which a program
        with many objects runs rarely."""
        # a deque that keeps nothing: a result the pool loop delivers from
        # now on is dropped as it is appended, with no check on its path
        self.results = deque(maxlen=0)

    def flush(self, urgent: bool = False) -> None:
        """``urgent``: wake the map now (the broker has nothing left to send it)."""
        if (
            urgent
            or len(self.results) >= self._batch
            or self.submitted - self._delivered <= self._low_water
        ):
            self.wake_now()
        elif self._timer is None:
            self._timer = self._loop.call_later(self.MAX_DELAY, self.wake_now)

    def wake_now(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wake()
