"""``map`` and ``map_async``: lazy input, bounded work in flight, ordered output.

A map keeps at most ``window`` tasks between reading and yielding: it reads
more input only as results are yielded, so unbounded and async iterables
work and memory stays bounded. Input is pickled in the caller's thread and
handed to the broker in batches; results come back through a ``QueueSink``
with one wake-up per batch.

Adaptive batching: when no ``chunksize`` is given, a map starts with one
input per task and, from how long the workers say its tasks ran, groups
inputs that take well under ``GROUP_BELOW`` seconds into chunks of about
``BATCH_TIME`` seconds of work. Each input keeps its own result, exception
and place in the order; inputs that take longer are never grouped; an
explicit ``chunksize`` and ``qsize=1`` are honoured exactly.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from distex_zmq.broker import Task
from distex_zmq.broker.task import callable_name
from distex_zmq.results import QueueSink, decode
from distex_zmq.serialization import ItemError, dumps
from distex_zmq.task_errors import note_unpicklable
from distex_zmq.wire import frames as p

#: Inputs that run at least this long (seconds) are never grouped.
GROUP_BELOW = p.GROUP_BELOW_US / 1e6
#: Seconds of work an adaptive chunk aims at.
BATCH_TIME = 0.002
#: The largest adaptive chunk.
MAX_BATCH = 256
#: Bytes of pickled input a map reads ahead of its consumer, about: large
#: inputs need few tasks in flight to keep the workers busy, and every one
#: read ahead costs memory (with 10 MiB inputs, 6 tasks ahead instead of 32
#: move about 20% more MB/s on a 2-core VM).
BYTES_AHEAD = 64 * 1024 * 1024

if TYPE_CHECKING:
    from distex_zmq.pool import Pool


def is_sync_iterable(it: Any) -> bool:
    return hasattr(it, "__iter__") or hasattr(it, "__next__")


def sync_input(iterables: tuple[Any, ...]) -> Iterator[Any]:
    """One iterator over the inputs (tuples when several iterables are zipped)."""
    if len(iterables) > 1:
        return zip(*iterables, strict=False)
    return iter(iterables[0])


async def zip_async(*iterables: Any) -> AsyncIterator[tuple[Any, ...]]:
    """Zip sync and async iterables into an async iterator of tuples."""
    nexts: list[tuple[Callable[[], Any], bool]] = []
    for it in iterables:
        if hasattr(it, "__aiter__"):
            nexts.append((it.__aiter__().__anext__, False))
        elif hasattr(it, "__anext__"):
            nexts.append((it.__anext__, False))
        else:
            nexts.append((iter(it).__next__, True))
    while True:
        values = []
        for nxt, sync in nexts:
            # not a comprehension: there StopIteration would become RuntimeError
            try:
                values.append(nxt() if sync else await nxt())
            except (StopIteration, StopAsyncIteration):
                return
        yield tuple(values)


async def chunk_async(ait: AsyncIterator[Any], chunksize: int) -> AsyncIterator[tuple[Any, ...]]:
    chunk: list[Any] = []
    async for item in ait:
        chunk.append(item)
        if len(chunk) == chunksize:
            yield tuple(chunk)
            chunk = []
    if chunk:
        yield tuple(chunk)


def async_input(iterables: tuple[Any, ...], chunksize: int) -> AsyncIterator[Any]:
    if len(iterables) > 1:
        ait: AsyncIterator[Any] = zip_async(*iterables)
    elif hasattr(iterables[0], "__aiter__"):
        ait = iterables[0].__aiter__()
    else:
        ait = iterables[0]
    return chunk_async(ait, chunksize) if chunksize > 1 else ait


class MapRun:
    """The state of one running map, shared by its sync and async drivers."""

    #: pickled bytes of the latest task (None: none submitted yet)
    _task_bytes: int | None = None

    def __init__(
        self,
        pool: Pool,
        func: Callable[..., Any],
        iterables: tuple[Any, ...],
        timeout: float | None,
        chunksize: int | None,
        ordered: bool,
        star: bool,
        wake: Callable[[], None],
    ):
        runtime = pool._live_runtime()
        self._broker = runtime.broker
        self._next_id = pool._task_ids.__next__
        self._dumps = pool._data_dumps
        self._loads = pool._data_loads
        self._func_id, self._func_pickle = pool._functions.get(func)
        self._func_name = callable_name(func)
        zipped = len(iterables) > 1
        self._flags = p.FLAG_STAR if star or zipped else 0
        #: adapt the chunk size to the tasks' run time (no chunksize given)
        self.adaptive = chunksize is None and pool._options.qsize > 1
        #: inputs per task now
        self.chunksize = chunksize or 1
        self._per_input: float | None = None
        #: inputs in each chunk task not yet yielded, by sequence number
        self._sizes: dict[int, int] = {}
        self._window = pool._map_window()
        self._chunk_window = min(self._window, 2 * pool._capacity() + 2)
        #: the fewest tasks a map keeps ahead, however large: every credit and two
        self._min_window = pool._capacity() + 2
        self._ordered = ordered
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._timeout = timeout
        capacity = pool._capacity()
        self.sink = QueueSink(wake, runtime.loop, max(1, self._window // 2), 2 * capacity)
        self._outstanding: dict[int, Task] = {}
        self._held: dict[int, tuple[Task, int, Any]] = {}
        self._ready: deque[tuple[Task, int, Any]] = deque()
        self._next_seq = 0
        self._next_out = 0
        self._unyielded = 0
        self.input_done = False
        self.input_error: BaseException | None = None

    @property
    def room(self) -> int:
        """Tasks that may be submitted now.

        Chunks need fewer tasks in flight (each carries many inputs), and a
        smaller window keeps what a map reads ahead of its consumer small.
        """
        window = self._window if self.chunksize == 1 else self._chunk_window
        task_bytes = self._task_bytes
        if task_bytes and task_bytes * window > BYTES_AHEAD:
            window = max(self._min_window, BYTES_AHEAD // task_bytes)
        return window - self._unyielded

    def submit(self, inputs: list[Any], chunked: bool = False) -> None:
        """Pickle the inputs and queue them as tasks (each a chunk if ``chunked``)."""
        tasks = []
        dumps_, sink = self._dumps, self.sink
        flags = self._flags | (p.FLAG_CHUNK if chunked else 0)
        func_id, func_pickle, name = self._func_id, self._func_pickle, self._func_name
        try:
            for args in inputs:
                seq = self._next_seq
                try:
                    data, buffers = dumps(args, dumps_)
                except Exception as e:
                    what = f"{'chunk' if chunked else 'input'} #{seq} of a map of {name}"
                    note_unpicklable(e, what, dumps_)
                    raise
                self._task_bytes = len(data) + (sum(b.nbytes for b in buffers) if buffers else 0)
                task = Task(
                    self._next_id(), func_id, func_pickle, flags, data, buffers, sink, seq, name
                )
                self._next_seq = seq + 1
                if chunked:
                    self._sizes[seq] = len(args)
                self._unyielded += 1
                sink.submitted += 1
                self._outstanding[seq] = task
                tasks.append(task)
        finally:
            if tasks:
                self._broker.submit(tasks)

    def feed_sync(self, it: Iterator[Any]) -> None:
        if self._task_bytes is None and self.room > 0:
            # the first input alone: its size tells how many to read ahead
            self._feed_sync(it, 1)
        room = self.room
        if room > 0:
            self._feed_sync(it, room)

    def _feed_sync(self, it: Iterator[Any], room: int) -> None:
        if self.input_done:
            return
        size = self.chunksize
        if size == 1:
            inputs = list(itertools.islice(it, room))
            if len(inputs) < room:
                self.input_done = True
            if inputs:
                self.submit(inputs)
            return
        chunks = []
        for _ in range(room):
            chunk = tuple(itertools.islice(it, size))
            if chunk:
                chunks.append(chunk)
            if len(chunk) < size:
                self.input_done = True
                break
        if chunks:
            self.submit(chunks, chunked=True)

    def _adapt(self, task: Task, value: Any) -> None:
        """Size the next chunks from how long this task ran in its worker."""
        if type(value) is not tuple:
            return
        inputs = self._sizes.get(task.tag, 1) or 1
        per_input = value[2] / 1e6 / inputs
        old = self._per_input
        self._per_input = per_input = per_input if old is None else 0.7 * old + 0.3 * per_input
        if per_input >= GROUP_BELOW:
            self.chunksize = 1
        else:
            target = int(BATCH_TIME / max(per_input, 1e-7))
            self.chunksize = max(1, min(target, 2 * self.chunksize, MAX_BATCH))

    def collect(self) -> bool:
        """Take delivered results; return whether any can be yielded now."""
        results = self.sink.results
        outstanding = self._outstanding
        if self.adaptive and results:
            # the newest few results say enough about the run time
            for task, _, value in itertools.islice(reversed(results), 4):
                self._adapt(task, value)
        if self._ordered:
            held = self._held
            while results:
                entry = results.popleft()
                seq = entry[0].tag
                outstanding.pop(seq, None)
                held[seq] = entry
            ready = self._ready
            while self._next_out in held:
                ready.append(held.pop(self._next_out))
                self._next_out += 1
        else:
            while results:
                entry = results.popleft()
                outstanding.pop(entry[0].tag, None)
                self._ready.append(entry)
        return bool(self._ready)

    def pop_values(self) -> list[Any]:
        """Decode the ready results into values, last first, for the caller
        to ``pop()`` as it yields them: the map then holds no result its
        consumer has had (a large one is freed when dropped). Keep the first
        error, in order."""
        values: list[Any] = []
        self._decode_ready(values)
        values.reverse()
        return values

    def _decode_ready(self, values: list[Any]) -> None:
        ready = self._ready
        loads = self._loads
        while ready:
            task, status, value = ready.popleft()
            self._unyielded -= 1
            try:
                result = decode(task, status, value, loads)
            except BaseException as e:  # noqa: BLE001 - raised in order, after values
                self._pending_error = e
                return
            if not task.flags & p.FLAG_CHUNK:
                values.append(result)
                continue
            self._sizes.pop(task.tag, None)
            for item in result:
                if type(item) is ItemError:
                    self._pending_error = item.error
                    return
                values.append(item)

    _pending_error: BaseException | None = None

    def raise_pending(self) -> None:
        error = self._pending_error
        if error is not None:
            self._pending_error = None
            raise error

    @property
    def finished(self) -> bool:
        return self.input_done and not self._outstanding and not self._held and not self._ready

    def remaining(self) -> float | None:
        """Seconds left before the timeout; raise ``TimeoutError`` when none are."""
        if self._deadline is None:
            return None
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise concurrent.futures.TimeoutError(
                f"map did not finish within its timeout of {self._timeout} s"
            )
        return left

    def cancel(self) -> None:
        """Cancel what has not been yielded (tasks queued are dropped)."""
        if self._outstanding:
            for task in self._outstanding.values():
                task.cancelled = True
            self._outstanding.clear()
            self._broker.wake()
        self._held.clear()
        self._ready.clear()


def map_sync(
    pool: Pool,
    func: Callable[..., Any],
    iterables: tuple[Any, ...],
    timeout: float | None,
    chunksize: int | None,
    ordered: bool,
    star: bool,
) -> Iterator[Any]:
    """The generator behind ``Pool.map``."""
    if not all(is_sync_iterable(it) for it in iterables):
        yield from _map_sync_over_async(pool, func, iterables, timeout, chunksize, ordered, star)
        return
    event = threading.Event()
    run = MapRun(pool, func, iterables, timeout, chunksize, ordered, star, event.set)
    it = sync_input(iterables)
    try:
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
                return
            if not event.wait(run.remaining()):
                run.remaining()
    finally:
        run.cancel()


def _map_sync_over_async(
    pool: Pool,
    func: Callable[..., Any],
    iterables: tuple[Any, ...],
    timeout: float | None,
    chunksize: int | None,
    ordered: bool,
    star: bool,
) -> Iterator[Any]:
    """Sync ``map`` of async iterables: iterate them on a private loop."""
    loop = asyncio.new_event_loop()
    agen = map_async(pool, func, iterables, timeout, chunksize, ordered, star)
    try:
        while True:
            try:
                yield loop.run_until_complete(agen.__anext__())
            except StopAsyncIteration:
                return
    finally:
        loop.run_until_complete(agen.aclose())
        loop.close()


async def map_async(
    pool: Pool,
    func: Callable[..., Any],
    iterables: tuple[Any, ...],
    timeout: float | None,
    chunksize: int | None,
    ordered: bool,
    star: bool,
) -> AsyncGenerator[Any, None]:
    """The async generator behind ``Pool.map_async``."""
    loop = asyncio.get_running_loop()
    waker = _AsyncWaker(loop)
    run = MapRun(pool, func, iterables, timeout, chunksize, ordered, star, waker.wake_threadsafe)
    feeder: asyncio.Task[None] | None = None
    it: Iterator[Any] | None = None
    if all(is_sync_iterable(i) for i in iterables):
        it = sync_input(iterables)
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
            if run.input_error is not None:
                raise run.input_error
            if run.finished:
                return
            await waker.wait(run.remaining())
            run.remaining()
    finally:
        if feeder is not None:
            feeder.cancel()
        run.cancel()


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
    except asyncio.CancelledError:
        raise
    except BaseException as e:  # noqa: BLE001 - the consumer raises it
        run.input_error = e
    finally:
        run.input_done = True
        waker.wake()


class _AsyncWaker:
    """Wakes a map's async consumer, from the pool loop (threadsafe) or its own."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._waiter: asyncio.Future[None] | None = None
        self._room: asyncio.Future[None] | None = None
        self._scheduled = False

    def arm(self) -> None:
        self._waiter = None

    def wake_threadsafe(self) -> None:
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
        if timeout is None:
            await waiter
            return
        handle = self._loop.call_later(timeout, self.wake)
        try:
            await waiter
        finally:
            handle.cancel()

    def room_freed(self) -> None:
        room = self._room
        if room is not None and not room.done():
            room.set_result(None)

    async def wait_for_room(self) -> None:
        self._room = self._loop.create_future()
        await self._room
        self._room = None


def check_map_args(iterables: Iterable[Any], chunksize: int | None) -> None:
    if not iterables:
        raise TypeError("map() needs at least one iterable")
    for number, it in enumerate(iterables, 1):
        if not (is_sync_iterable(it) or hasattr(it, "__aiter__") or hasattr(it, "__anext__")):
            raise TypeError(
                f"map() argument {number} must be an iterable or an async iterable, "
                f"not {type(it).__name__}"
            )
    if chunksize is not None and (
        not isinstance(chunksize, int) or isinstance(chunksize, bool) or chunksize < 1
    ):
        raise ValueError(f"chunksize must be a positive integer or None, not {chunksize!r}")
