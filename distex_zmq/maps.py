"""``map`` and ``map_async``: lazy input, bounded work in flight, ordered output.

The drivers of a ``MapRun``: they read more input only as results are
yielded. Input is pickled in the caller's thread and handed to the broker in
batches; results come back through a ``QueueSink`` with one wake-up per
batch, to a ``threading.Event`` (``map``) or the caller's event loop
(``map_async``).
"""

from __future__ import annotations

import _signal
import asyncio
import concurrent.futures
import functools
import inspect
import itertools
import logging
import signal
import threading
import weakref
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterator,
    Sized,
)
from typing import TYPE_CHECKING, Any, NoReturn

from distex_zmq.loops import running_loop
from distex_zmq.map_input import (
    async_input,
    check_buffersize,
    check_map_args,
    is_sync_iterable,
    refuses,
    sync_input,
)
from distex_zmq.map_run import MapContext, MapRun
from distex_zmq.progress import Progress

__all__ = [
    "AsyncMap",
    "MapContext",
    "SyncMap",
    "check_buffersize",
    "check_map_args",
    "map_async",
    "map_sync",
]

_logger = logging.getLogger("distex_zmq.map")


def map_sync(
    ctx: MapContext,
    func: Callable[..., Any],
    iterables: tuple[Any, ...],
    timeout: float | None,
    chunksize: int | None,
    ordered: bool,
    star: bool,
    progress: Progress | None = None,
    buffersize: int | None = None,
) -> SyncMap:
    """What ``Pool.map`` returns: the map starts here, at the call, as
    ``Executor.map`` does (its timeout counts from now)."""
    if not all(is_sync_iterable(it) for it in iterables):
        over_async = _map_sync_over_async(
            ctx, func, iterables, timeout, chunksize, ordered, star, progress, buffersize
        )
        return SyncMap(over_async, None)
    event = threading.Event()
    # counted among the pool's consumers that wait while it waits: the pool
    # loop may poll for the next result meanwhile, until it wakes this one
    waiting = ctx.queue.consumers_waiting

    def wake() -> None:
        waiting.discard(event)
        event.set()

    run = MapRun(
        ctx, func, iterables, timeout, chunksize, ordered, star, wake, progress, buffersize
    )
    returned = [False]
    it = _guarded(iterables, run, returned)
    error = None
    try:
        run.feed_sync(it)
    except Exception as e:  # noqa: BLE001 - an input that cannot be pickled, say
        error = e  # raised at the first next, where the results are
    returned[0] = True  # what it reads from now on, it reads after the call
    started = [False]
    results = _sync_results(run, it, event, error, started, waiting)
    weakref.finalize(results, _run_unread, run, it, error, started)
    if ctx.unread is not None and error is None:
        sized = any(isinstance(iterable, Sized) for iterable in iterables)
        ctx.unread[results] = functools.partial(
            _submit_unread, run, it, started, weakref.ref(results) if sized else None
        )
    return SyncMap(results, functools.partial(_abandon, run, started))


def _abandon(run: MapRun, started: list[bool]) -> None:
    """A map that its caller cannot read (it awaited it): its inputs not
    read yet are never submitted, and what no worker holds is cancelled, as
    a ``break`` does."""
    started[0] = True
    run.cancel()


def _submit_unread(
    run: MapRun,
    it: Iterator[Any],
    started: list[bool],
    sized: weakref.ref[Generator[Any, None, None]] | None,
) -> None:
    """At the pool's shutdown: a map kept but never iterated submits the
    inputs it has not read, as ``Executor.map`` submits them all at the
    call, so that they run before the pool stops; their results wait for
    an iteration after it. So does a map iterated in part, of an input of
    known length (``sized``: its results generator; a list, a range), which
    ``Executor.map`` runs to its end too; one of a generator, which may be
    endless, does not: its inputs not read fail where it is read on."""
    if started[0]:
        results = sized() if sized is not None else None
        if results is None or inspect.getgeneratorstate(results) != inspect.GEN_SUSPENDED:
            return  # endless perhaps, read by another thread now, or over
    try:
        run.submit_rest(it)
    except Exception:  # noqa: BLE001 - the pool closed meanwhile: the map raises it
        pass


def _run_unread(
    run: MapRun, it: Iterator[Any], error: Exception | None, started: list[bool]
) -> None:
    """Finalizer of a sync map's results: never iterated, the map runs all
    its inputs and drops their results, as ``Executor.map`` runs every input
    whether its results are read or not (``pool.map(f, xs)`` run for its
    effects). Iterated, its generator cancelled the rest as it ended."""
    if started[0]:
        return
    # nobody takes its results: drop each as it arrives
    run.sink.close()
    try:
        if error is not None:
            raise error
        run.submit_rest(it)
        if run.input_error is not None:
            raise run.input_error
    except Exception:  # noqa: BLE001 - nobody reads this map: say why it stopped
        _logger.exception("a map nobody iterates could not submit all its inputs")
        run.cancel()


def _sync_results(
    run: MapRun,
    it: Iterator[Any],
    event: threading.Event,
    error: Exception | None,
    started: list[bool],
    waiting: set[object],
) -> Generator[Any, None, None]:
    started[0] = True
    try:
        if error is not None:
            raise error
        while True:
            event.clear()
            run.feed_sync(it)
            if run.collect():
                values = run.pop_values()
                while values:
                    yield values.pop()
                run.raise_pending()
                continue
            if run.finished:
                if run.input_error is not None:
                    raise run.input_error
                return
            # results taken that wait for an earlier one made room
            run.feed_sync(it)
            waiting.add(event)
            try:
                woken = event.wait(run.wait_time())
            finally:
                waiting.discard(event)
            if not woken:
                run.remaining()
    finally:
        run.cancel()


def _map_sync_over_async(
    ctx: MapContext,
    func: Callable[..., Any],
    iterables: tuple[Any, ...],
    timeout: float | None,
    chunksize: int | None,
    ordered: bool,
    star: bool,
    progress: Progress | None,
    buffersize: int | None,
) -> Generator[Any, None, None]:
    """Sync ``map`` of async iterables: iterate them on a private loop.

    The loop runs in this thread, or, when this thread runs a loop already
    (a Jupyter cell), in a thread of its own: a thread runs one loop at a
    time. Either way the iterables must not need the caller's loop.
    """
    agen = map_async(ctx, func, iterables, timeout, chunksize, ordered, star, progress, buffersize)
    with _PrivateLoop() as step:
        try:
            while True:
                try:
                    yield step(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            step(agen.aclose())


class _PrivateLoop:
    """A new event loop that runs awaitables to completion for a sync caller:
    ``with _PrivateLoop() as step: step(awaitable)``.

    A step whose wait is interrupted (Ctrl-C, a Jupyter interrupt) is
    cancelled on the loop and has ended when the interruption is raised: the
    caller's next step (a map's ``aclose()``) would otherwise find the
    generator still running in it.
    """

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="distex_zmq map", daemon=True
        )

    def __enter__(self) -> Callable[[Awaitable[Any]], Any]:
        if self._thread is None:
            return self._step_here
        self._thread.start()
        return self._step

    def _step_here(self, awaitable: Awaitable[Any]) -> Any:
        with _SigintCancels(self._loop) as sigint:
            task = asyncio.ensure_future(awaitable, loop=self._loop)
            try:
                sigint.watch(task)
                result = self._loop.run_until_complete(task)
            except BaseException:
                if not task.done():  # interrupted while the loop waited
                    task.cancel()
                    self._loop.run_until_complete(asyncio.wait([task]))
                elif not task.cancelled():
                    task.exception()  # interrupted in the task: raised here, not "never retrieved"
                if sigint.interrupted:
                    raise KeyboardInterrupt from None
                raise
            if sigint.interrupted:  # the step ended before its cancellation
                raise KeyboardInterrupt
            return result

    def _step(self, awaitable: Awaitable[Any]) -> Any:
        # The task is created on the loop, by ``start``, and put in ``steps``
        # there. An interruption may land anywhere here, also once ``start``
        # is queued but before this thread holds anything to wait on; the
        # loop runs ``_cancelled`` after ``start`` all the same (its queue is
        # FIFO), so the step is found, cancelled and over when it is raised.
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        steps: list[asyncio.Task[Any]] = []

        def start() -> None:
            task = asyncio.ensure_future(awaitable, loop=self._loop)
            steps.append(task)
            task.add_done_callback(functools.partial(_hand_over, done))

        try:
            self._loop.call_soon_threadsafe(start)
            return done.result()
        except BaseException:
            asyncio.run_coroutine_threadsafe(_cancelled(steps, awaitable), self._loop).result()
            raise

    def __exit__(self, *exc_info: object) -> None:
        # as asyncio.run ends: the async generators first iterated here (the
        # caller's, left half-read by a break) are closed, so that their
        # ``finally`` runs; once the loop is closed, nothing would run it
        try:
            if self._thread is None:
                self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            elif self._thread.is_alive():
                self._step(self._loop.shutdown_asyncgens())
        finally:
            if self._thread is not None:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join()
            self._loop.close()


#: SIGINT as the C functions behind ``signal``'s take it: ``_SigintCancels``
#: calls those (``_signal``) at each step of a map, as ``signal.signal`` and
#: ``getsignal`` wrap them in enum conversions that cost far more than the
#: calls themselves.
_SIGINT = int(signal.SIGINT)


class _SigintCancels:
    """Ctrl-C while a step runs on a private loop in the main thread cancels
    the step's task, and the step raises ``KeyboardInterrupt`` once the task
    has ended, as ``asyncio.Runner`` does for its main task. Raised at
    whatever line the interpreter is at, inside asyncio, it can leave a task
    half made: scheduled and never run, or run at the next step (the map's
    ``aclose()``, which then finds the map running), or reported "destroyed
    but pending". A second Ctrl-C raises at once.

    Installed only in the main thread, over Python's own handler: a handler
    of the user's is left alone, and other threads get no ``SIGINT``.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._task: asyncio.Task[Any] | None = None
        self._installed = False
        #: whether a Ctrl-C came while the step ran
        self.interrupted = False

    def __enter__(self) -> _SigintCancels:
        if (
            threading.current_thread() is threading.main_thread()
            and _signal.getsignal(_SIGINT) is signal.default_int_handler
        ):
            _signal.signal(_SIGINT, self._on_sigint)
            self._installed = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._installed:
            _signal.signal(_SIGINT, signal.default_int_handler)

    def watch(self, task: asyncio.Task[Any]) -> None:
        """Cancel ``task`` on Ctrl-C (at once, if one came while it was made)."""
        self._task = task
        if self.interrupted:
            task.cancel()

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.interrupted:
            raise KeyboardInterrupt
        self.interrupted = True
        if self._task is not None:
            self._task.cancel()
        # the loop may wait in its selector, with a timeout set before the
        # cancellation scheduled anything: wake it
        self._loop.call_soon_threadsafe(_nothing)


def _nothing() -> None:
    """A callback that wakes a loop."""


async def _ended(tasks: list[asyncio.Task[Any]]) -> None:
    """Return once ``tasks`` have ended (on their loop)."""
    if tasks:
        await asyncio.wait(tasks)


async def _cancelled(steps: list[asyncio.Task[Any]], awaitable: Awaitable[Any]) -> None:
    """Cancel the step of ``_PrivateLoop._step`` and return once it has ended;
    a step never started is closed, not left "never awaited"."""
    if not steps:
        close = getattr(awaitable, "close", None)  # a coroutine, an asend()
        if close is not None:
            close()
        return
    steps[0].cancel()
    await _ended(steps)


def _hand_over(done: concurrent.futures.Future[Any], task: asyncio.Task[Any]) -> None:
    """Set ``done`` as ``task`` ended, for the thread that waits on it."""
    if task.cancelled():
        done.cancel()
    elif task.exception() is not None:
        done.set_exception(task.exception())
    else:
        done.set_result(task.result())


async def map_async(
    ctx: MapContext,
    func: Callable[..., Any],
    iterables: tuple[Any, ...],
    timeout: float | None,
    chunksize: int | None,
    ordered: bool,
    star: bool,
    progress: Progress | None = None,
    buffersize: int | None = None,
) -> AsyncGenerator[Any, None]:
    """The async generator behind ``Pool.map_async``."""
    loop = running_loop("map_async", "map")
    waker = _AsyncWaker(loop, ctx.queue.consumers_waiting)
    run = MapRun(
        ctx,
        func,
        iterables,
        timeout,
        chunksize,
        ordered,
        star,
        waker.wake_threadsafe,
        progress,
        buffersize,
    )
    feeder: asyncio.Task[None] | None = None
    it: Iterator[Any] | None = None
    if all(is_sync_iterable(i) for i in iterables):
        it = _guarded(iterables, run)
    else:
        run.adaptive = False  # async sources are slow to read: one input per task
        chunked = (chunksize or 1) > 1
        ait = async_input(iterables, chunksize or 1)
        # The first input is awaited here, in the consumer's own step, not in
        # the feeder task a loop iteration later: an eventkit source starts
        # to listen on its first __anext__ and would miss what it emits now.
        try:
            run.submit([await ait.__anext__()], chunked)
        except StopAsyncIteration:
            run.input_done = True
        else:
            feeder = loop.create_task(_feed_async(run, ait, waker, chunked))
    try:
        while True:
            waker.arm()
            if it is not None:
                run.feed_sync(it)
            if run.collect():
                values = run.pop_values()
                while values:
                    yield values.pop()
                run.raise_pending()
                waker.room_freed()
                continue
            if run.finished:
                if run.input_error is not None:
                    raise run.input_error
                return
            # results taken that wait for an earlier one made room
            if it is not None:
                run.feed_sync(it)
            else:
                waker.room_freed()
            await waker.wait(run.wait_time())
            run.remaining()
    finally:
        if feeder is not None:
            feeder.cancel()
        run.cancel()
        if feeder is not None:
            # the map has left its input when it ends: a read that the
            # feeder waits for is cancelled and over, so the caller may read
            # on or close the source at once
            await _ended([feeder])


class SyncMap(itertools.chain, Generator[Any, None, None]):
    """What ``Pool.map`` returns: its results, for ``for``, ``next()`` and
    ``list()``, a ``collections.abc.Generator`` as the generator that
    ``Executor.map`` returns (``close()`` stops the map as a ``break``
    does).

    It is the ``itertools.chain`` of one iterable, the generator behind it:
    ``next`` goes straight to that generator, at no cost more per result,
    and ``iter()`` returns the map itself, as it does for any iterator.
    Awaited or iterated with ``async for``, it raises a ``TypeError`` that
    says to use ``Pool.map_async``, not Python's "object generator can't be
    used in 'await' expression", and stops the map: its caller cannot read
    it, and it would otherwise run all its inputs, as a map never iterated
    does."""

    __slots__ = ("_gen", "_abandon")
    _gen: Generator[Any, None, None]
    _abandon: Callable[[], None] | None

    def __new__(
        cls, gen: Generator[Any, None, None], abandon: Callable[[], None] | None
    ) -> SyncMap:
        self = super().__new__(cls, gen)
        self._gen = gen
        self._abandon = abandon
        return self

    def send(self, value: None) -> Any:
        return self._gen.send(value)

    def throw(self, *args: Any) -> Any:
        return self._gen.throw(*args)

    def close(self) -> None:
        """Stop the map: it cancels what no worker holds yet."""
        self._gen.close()

    def _stop(self) -> None:
        self._gen.close()
        if self._abandon is not None:
            self._abandon()

    def __await__(self) -> NoReturn:
        self._stop()
        raise TypeError(
            "Pool.map(...) returns an iterator of the results, not an awaitable: in a "
            "coroutine use 'async for result in pool.map_async(...)', or "
            "'[result async for result in pool.map_async(...)]' for a list; this map "
            "is stopped (its inputs that no worker holds yet do not run)"
        )

    def __getitem__(self, index: Any) -> NoReturn:
        raise TypeError(
            "Pool.map(...) returns an iterator of the results, as Executor.map does, "
            "which cannot be indexed: list(pool.map(...)) is the list of the results, "
            "next(iter(...)) the first one"
        )

    @refuses
    def __aiter__(self) -> _NotAsync:
        # what ``async for`` takes fails at its first step, not here: a
        # wrapper that calls ``__aiter__`` of what it wraps and iterates it
        # with ``for`` (``tqdm.asyncio``'s, which is ``tqdm.auto``'s class in
        # a notebook) then works
        return _NotAsync(self)

    def _refuse_async(self) -> NoReturn:
        self._stop()
        raise TypeError(
            "Pool.map(...) returns a sync iterator, for 'for result in pool.map(...)': "
            "in a coroutine use 'async for result in pool.map_async(...)'; this map "
            "is stopped (its inputs that no worker holds yet do not run)"
        )


class _NotAsync:
    """``async for`` over ``Pool.map``'s results: its first step raises a
    ``TypeError`` that says to use ``map_async`` (and stops the map)."""

    __slots__ = ("_map",)

    def __init__(self, sync_map: SyncMap):
        self._map = sync_map

    def __aiter__(self) -> _NotAsync:
        return self

    async def __anext__(self) -> NoReturn:
        self._map._refuse_async()


class AsyncMap:
    """What ``Pool.map_async`` returns: its results, for ``async for``.

    ``__aiter__`` hands over the async generator ``map_async`` itself, so
    that ``async for`` costs no call more per result. Iterated with ``for``
    or ``list()``, or awaited, it raises a ``TypeError`` that says what to
    use instead, not Python's "'AsyncMap' object is not iterable"; the map
    has not started then (it starts at the first result asked for)."""

    __slots__ = ("_agen",)

    def __init__(self, agen: AsyncGenerator[Any, None]):
        self._agen = agen

    def __aiter__(self) -> AsyncGenerator[Any, None]:
        return self._agen

    def __anext__(self) -> Awaitable[Any]:
        return self._agen.__anext__()

    def aclose(self) -> Awaitable[None]:
        """Stop the map (``async_generator.aclose``): it cancels what no
        worker holds yet."""
        return self._agen.aclose()

    if not TYPE_CHECKING:  # for type checkers, a missing attribute stays an error

        def __getattr__(self, name: str) -> Any:
            """Called for a missing attribute only: a method of
            multiprocessing's ``AsyncResult`` (``get``, ``wait``, ``ready``,
            ``successful``) raises the usual ``AttributeError``, saying what
            to use instead."""
            message = f"{type(self).__name__!r} object has no attribute {name!r}"
            if name in ("get", "wait", "ready", "successful"):
                message += (
                    ": Pool.map_async(...) is an async iterator (the API of distex), not "
                    "multiprocessing's AsyncResult: in sync code, list(pool.map(...)) is "
                    "the list of the results; in a coroutine, "
                    "[result async for result in pool.map_async(...)]"
                )
            raise AttributeError(message, name=name, obj=self)

    @refuses
    def __iter__(self) -> NoReturn:
        raise TypeError(
            "Pool.map_async(...) is an async iterator: iterate it with "
            "'async for result in pool.map_async(...)' in a coroutine; in sync code "
            "use pool.map(...), which returns an iterator of the results"
        )

    def __await__(self) -> NoReturn:
        raise TypeError(
            "Pool.map_async(...) is an async iterator, not an awaitable: iterate it with "
            "'async for result in pool.map_async(...)', or collect its results with "
            "'[result async for result in pool.map_async(...)]'"
        )


#: Iterables whose iteration cannot raise: read as they are, without a guard.
_SAFE_ITERABLES = (range, list, tuple)


def _guarded(
    iterables: tuple[Any, ...], run: MapRun, returned: list[bool] | None = None
) -> Iterator[Any]:
    """One iterator over the inputs, ending where reading them raises: the
    error is kept in ``run.input_error`` and raised after the results of the
    inputs read before it, in its place, as ``map()`` does. Ranges, lists
    and tuples cannot raise, and go without the guard's cost per input.
    ``returned[0]``: the sync ``map`` call has returned (see
    ``_note_closed_input``)."""
    inputs = sync_input(iterables)
    if all(type(it) in _SAFE_ITERABLES for it in iterables):
        return inputs
    return _guard(inputs, run, returned)


def _guard(inputs: Iterator[Any], run: MapRun, returned: list[bool] | None) -> Iterator[Any]:
    try:
        yield from inputs
    except Exception as e:  # noqa: BLE001 - raised by the map, in its place
        if returned is not None and returned[0]:
            _note_closed_input(e, run.func_name)
        run.input_error = e


def _note_closed_input(error: Exception, func_name: str) -> None:
    """Add a note to ``error``, raised by reading a sync map's input after
    the map call returned, if it says that what the input reads is closed
    (a file whose ``with`` block ended, a closed cursor), which it was not
    when ``Executor.map`` would have read it all, at the call (Python 3.11+;
    the error keeps its type)."""
    if "closed" in str(error).lower() and hasattr(error, "add_note"):
        error.add_note(
            f"distex_zmq: raised by the input of a map of {func_name}, read after "
            "pool.map(...) returned: a map reads its input as its results are taken, "
            "not all at the call as Executor.map does; keep what the input reads from "
            "open (the with block of a file or a database cursor) until the map's "
            "results are read, or pass list(...) of the input"
        )


async def _feed_async(
    run: MapRun, ait: AsyncIterator[Any], waker: _AsyncWaker, chunked: bool
) -> None:
    try:
        while True:
            while run.room <= 0:
                await waker.wait_for_room()
            try:
                item = await ait.__anext__()
            except StopAsyncIteration:
                break
            run.submit([item], chunked)
            if run.input_error is not None:  # it did not pickle: the map ends there
                break
    except asyncio.CancelledError:
        raise
    except BaseException as e:  # noqa: BLE001 - the consumer raises it
        run.input_error = e
    finally:
        run.input_done = True
        waker.wake()


class _AsyncWaker:
    """Wakes a map's async consumer, from the pool loop (threadsafe) or its own."""

    def __init__(self, loop: asyncio.AbstractEventLoop, waiting: set[object]):
        self._loop = loop
        #: the pool's consumers that wait, this one among them while it does
        self._waiting = waiting
        self._waiter: asyncio.Future[None] | None = None
        self._room: asyncio.Future[None] | None = None
        self._scheduled = False

    def arm(self) -> None:
        self._waiter = None

    def wake_threadsafe(self) -> None:
        self._waiting.discard(self)
        if not self._scheduled:
            self._scheduled = True
            try:
                self._loop.call_soon_threadsafe(self._wake_scheduled)
            except RuntimeError:
                pass  # the consumer's loop is closed

    def _wake_scheduled(self) -> None:
        self._scheduled = False
        self.wake()

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float | None) -> None:
        self._waiter = waiter = self._loop.create_future()
        self._waiting.add(self)
        try:
            if timeout is None:
                await waiter
                return
            handle = self._loop.call_later(timeout, self.wake)
            try:
                await waiter
            finally:
                handle.cancel()
        finally:
            self._waiting.discard(self)

    def room_freed(self) -> None:
        room = self._room
        if room is not None and not room.done():
            room.set_result(None)

    async def wait_for_room(self) -> None:
        self._room = self._loop.create_future()
        await self._room
        self._room = None
