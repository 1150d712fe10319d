"""One running map: its window, and its input read, pickled and submitted.

A map keeps at most ``window`` tasks submitted and not yielded, besides the
answered ones that wait for an earlier one, and reads at most
``HOLD_AHEAD`` windows ahead of the first result not yielded, so unbounded
and async iterables work and memory stays bounded. It sees its pool
only through a ``MapContext``: where tasks go, the task maker, the pool loop
and the workers' capacity. How many inputs a task carries is the
``ChunkSizer``'s (``map_sizing``); its results, in order and decoded, are
``MapResults``' (``map_results``). Each input keeps its own result,
exception and place in the order; an explicit ``chunksize`` and ``qsize=1``
are honoured exactly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from distex_zmq.broker import Task
from distex_zmq.errors import SHUT_DOWN, AnyTimeoutError, PoolClosedError
from distex_zmq.map_results import MapResults
from distex_zmq.map_sizing import ChunkSizer, RunTimes
from distex_zmq.progress import Progress
from distex_zmq.results import QueueSink
from distex_zmq.serialization import ScriptGuess
from distex_zmq.task_errors import note_unpicklable
from distex_zmq.tasks import TaskMaker
from distex_zmq.wire import frames as p

#: Bytes of pickled input a map reads ahead of its consumer, about: large
#: inputs need few tasks in flight to keep the workers busy, and every one
#: read ahead costs memory and memory bandwidth.
BYTES_AHEAD = 64 * 1024 * 1024

#: How many windows of tasks an ordered map runs ahead of the first result
#: it has not yielded, while the results after it wait for it: a slow input
#: holds only its own worker, as in ``ProcessPoolExecutor`` (which submits
#: every input at once), while memory stays bounded (also by
#: ``BYTES_AHEAD`` of those results). Not with a ``buffersize``, which
#: bounds the tasks not yielded, nor for inputs so large that ``BYTES_AHEAD``
#: bounds how many of them are read ahead.
HOLD_AHEAD = 16


class TaskQueue(Protocol):
    """Where a map's tasks go: the broker."""

    def submit(self, tasks: Iterable[Task]) -> None:
        """Queue tasks (thread-safe)."""

    def wake(self) -> None:
        """Make the pool loop look at the tasks cancelled since (thread-safe)."""

    #: the maps whose consumer waits for results now, its thread idle: the
    #: pool loop may poll for the next result instead of sleeping
    consumers_waiting: set[object]


@dataclasses.dataclass(frozen=True)
class MapContext:
    """What a map needs of its pool."""

    queue: TaskQueue
    tasks: TaskMaker
    #: the pool loop, which delivers the results
    loop: asyncio.AbstractEventLoop
    #: tasks the workers hold at once now, the sum of their credits: it
    #: changes while a map runs (``add_hosts``, ``remove_hosts``, ``resize``)
    capacity: Callable[[], int]
    #: inputs may be grouped into chunks when no chunksize is given
    may_chunk: bool
    #: the pool, kept alive while its map runs: ``Pool(2).map(f, xs)`` is
    #: the only reference to its pool, whose finalizer would shut it down
    pool: object = None
    #: the pool's sync maps that may be left unread, by their results: what
    #: submits the inputs each has not read (see ``maps.map_sync``)
    unread: weakref.WeakKeyDictionary[Any, Callable[[], None]] | None = None
    #: what the inputs of the pool's recent maps took, by function
    run_times: RunTimes | None = None


#: Tasks ``submit_rest`` hands over at once.
SUBMIT_REST_BATCH = 256

#: Seconds a sync map reads its input before it submits what it read and
#: takes the results that came meanwhile, once its input proved slow (a
#: generator that waits on a socket or a queue): the results of the first
#: inputs then do not wait for the window of inputs after them.
READ_BUDGET = 0.01
#: Seconds per input above which an input counts as slow to read (see above):
#: a chunk of quick inputs whose read was preempted stays well below it.
SLOW_INPUT = 200e-6


def map_window(capacity: int) -> int:
    """Inputs a map keeps between reading and yielding, for workers that hold
    ``capacity`` tasks at once."""
    return 4 * capacity + 16


class MapRun:
    """The state of one running map, shared by its sync and async drivers."""

    #: pickled bytes of the latest task (None: none submitted yet)
    _task_bytes: int | None = None
    #: the latest read of the input was slow (``_note_read``): it is read an
    #: input at a time, with the time watched (``_feed_slowly``)
    _slow_input = False

    def __init__(
        self,
        ctx: MapContext,
        func: Callable[..., Any],
        iterables: tuple[Any, ...],
        timeout: float | None,
        chunksize: int | None,
        ordered: bool,
        star: bool,
        wake: Callable[[], None],
        progress: Progress | None = None,
        buffersize: int | None = None,
    ):
        self._queue = ctx.queue
        self._tasks = ctx.tasks
        self._pool = ctx.pool
        self._func = ctx.tasks.function(func)
        #: which pickler ``PickleType.auto`` tries first for its inputs
        self._guess = ScriptGuess()
        zipped = len(iterables) > 1
        self._flags = p.FLAG_STAR if star or zipped else 0
        #: the most tasks submitted and not yet yielded, if the caller says
        #: (``Executor.map``'s ``buffersize``): without a chunksize, one
        #: input a task, so that it bounds the inputs read ahead
        self._buffersize = buffersize
        may_chunk = ctx.may_chunk and buffersize is None
        self._sizer = ChunkSizer(chunksize, may_chunk, ctx.run_times, self._func.func_id)
        self._capacity_now = ctx.capacity
        # Chunks in flight: an adaptive chunk runs about 2 ms; an explicit one
        # of a quick function may run a tenth of that, and with the adaptive
        # window its consumer, woken to read more once 2 * capacity tasks are
        # left in flight, would be woken every few chunks. Explicit chunks get
        # twice the window, so that each wake-up of the caller reads and
        # submits more at once.
        self._per_credit = 2 if chunksize is None else 4
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._timeout = timeout
        self.sink = QueueSink(wake, ctx.loop, *self._fit(ctx.capacity()))
        self._results = MapResults(self.sink, ctx.tasks.data_loads, self._sizer, ordered, progress)
        self._progress = progress
        self._next_seq = 0
        self.input_done = False
        self.input_error: BaseException | None = None

    @property
    def adaptive(self) -> bool:
        """Whether the chunk size adapts to the tasks' run time."""
        return self._sizer.adaptive

    @adaptive.setter
    def adaptive(self, value: bool) -> None:
        if self._sizer.adaptive and not value:
            self._sizer.chunksize = 1  # not the chunks of an earlier map
        self._sizer.adaptive = value

    @property
    def func_name(self) -> str:
        """The name of the mapped function, for messages."""
        return self._func.name

    @property
    def chunksize(self) -> int:
        """Inputs per task now."""
        return self._sizer.chunksize

    def _fit(self, capacity: int) -> tuple[int, int]:
        """Size the window to workers that hold ``capacity`` tasks at once;
        return when the sink is to wake the map: at how many results ready,
        or how few tasks left in flight (``QueueSink.resize``)."""
        self._capacity = capacity
        self._window = map_window(capacity)
        self._chunk_window = min(self._window, self._per_credit * capacity + 2)
        #: the fewest tasks a map keeps ahead, however large: every credit and two
        self._min_window = capacity + 2
        if self._buffersize is not None:
            self._window = min(self._window, self._buffersize)
            self._chunk_window = min(self._chunk_window, self._buffersize)
            self._min_window = min(self._min_window, self._buffersize)
        return max(1, self._window // 2), 2 * capacity

    @property
    def room(self) -> int:
        """Tasks that may be submitted now.

        Chunks need fewer tasks in flight (each carries many inputs), and a
        smaller window keeps what a map reads ahead of its consumer small.
        The window follows the workers: hosts added while the map runs get
        its tasks too, as many as their credits take. Results answered that
        wait for an earlier one are not in flight: a slow input does not
        keep the other workers idle (up to ``HOLD_AHEAD`` windows).
        """
        capacity = self._capacity_now()
        if capacity != self._capacity:
            self.sink.resize(*self._fit(capacity))
        window = self._window if self._sizer.chunksize == 1 else self._chunk_window
        results = self._results
        unyielded = results.unyielded
        result_bytes = results.result_bytes
        if result_bytes is None:
            # how large the results are shows with the first: until then,
            # what keeps every worker's credits busy (results of 50 MB, a
            # whole window of them, would all wait for a slow consumer)
            window = min(window, self._min_window)
        # the larger of the latest input and result, pickled
        task_bytes = max(self._task_bytes or 0, result_bytes or 0)
        if task_bytes * window > BYTES_AHEAD:
            # large inputs or results: about BYTES_AHEAD of them ahead of
            # the consumer (read ahead, or answered and waiting for it),
            # and no fewer tasks than keep every worker's credits busy
            return max(self._min_window, BYTES_AHEAD // task_bytes) - unyielded
        held = results.held
        if not held or self._buffersize is not None or results.held_bytes >= BYTES_AHEAD:
            return window - unyielded
        # the answered results that wait for an earlier one are not in flight
        return min(window - unyielded + held, HOLD_AHEAD * window - unyielded)

    def submit(self, inputs: list[Any], chunked: bool = False) -> None:
        """Pickle the inputs and queue them as tasks (each a chunk if ``chunked``).

        An input that does not pickle ends the map there, as one that cannot
        be read does: its error is ``input_error``, raised after the results
        of the inputs before it, which run (those of its chunk too)."""
        tasks: list[Task] = []
        flags = self._flags | (p.FLAG_CHUNK if chunked else 0)
        first = self._next_seq
        error = None
        try:
            self._tasks.map_tasks(self._func, flags, inputs, self.sink, first, tasks, self._guess)
        except Exception as e:  # noqa: BLE001 - raised by the map, in its place
            error = e
        finally:
            made = len(tasks)
            if made:
                last = tasks[-1]
                buffers = last.buffers
                self._task_bytes = len(last.data) + (
                    sum(b.nbytes for b in buffers) if buffers else 0
                )
                self._sizer.note_inputs(self._task_bytes, len(inputs[made - 1]) if chunked else 1)
                # queued before they are counted: a pool shut down meanwhile
                # raises here, and the map then waits for no result of theirs
                # (their results reach the sink, but the map takes them only
                # in ``collect``, on this thread, after this)
                try:
                    self._queue.submit(tasks)
                except PoolClosedError as e:
                    raise _closed_while_read(e, self._results.inputs_submitted) from None
                self._results.submitted(first, tasks, inputs, chunked)
                self._next_seq = first + made
                self.sink.submitted += made
        if error is None:
            return
        if chunked:
            # its chunk again, an input a task, up to the one that fails
            self.submit(list(inputs[made]))
            return
        where = f"input #{self._results.inputs_submitted} of a map of {self._func.name}"
        note_unpicklable(error, where, self._tasks.data_dumps)
        self.input_error = error
        self.input_done = True

    def feed_sync(self, it: Iterator[Any]) -> None:
        if self._task_bytes is None and self.room > 0:
            # the first task alone: its size tells how many to read ahead;
            # read an input at a time, so that an input slow to read shows
            # before a whole chunk of them was read
            self._feed_slowly(it, 1)
        room = self.room
        if room > 0:
            self._feed_sync(it, room)

    def submit_rest(self, it: Iterator[Any]) -> None:
        """Submit every input left, beyond the window: nobody reads the
        results (a map run for its effects). Not with a ``buffersize``: such
        a map reads its input only as it is iterated, as ``Executor.map``'s
        does (its input may be endless)."""
        while not self.input_done and self._buffersize is None:
            self._feed_sync(it, SUBMIT_REST_BATCH)

    def _feed_sync(self, it: Iterator[Any], room: int) -> None:
        if self.input_done:
            return
        if self._slow_input:
            self._feed_slowly(it, room)
            return
        began = time.monotonic()
        size = self._sizer.chunksize
        if size == 1:
            inputs = list(itertools.islice(it, room))
            self._note_read(began, len(inputs))
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
        self._note_read(began, sum(map(len, chunks)))
        if chunks:
            self.submit(chunks, chunked=True)

    def _note_read(self, began: float, read: int) -> None:
        """``read`` inputs were read since ``began``. A C loop reads quick
        inputs, where a time check per input would cost more than a task of
        theirs; while reads take long (and not as a preempted quick loop
        does, which passes the budget too), the input is read an input at a
        time, the time watched."""
        took = time.monotonic() - began
        self._slow_input = took > READ_BUDGET and took > read * SLOW_INPUT

    def _feed_slowly(self, it: Iterator[Any], room: int) -> None:
        """Read up to ``room`` tasks' inputs, but submit what was read once
        ``READ_BUDGET`` has passed (a chunk cut short then goes shorter)."""
        if self.input_done:
            return
        began = time.monotonic()
        until = began + READ_BUDGET
        size = self._sizer.chunksize
        chunks: list[list[Any]] = []
        chunk: list[Any] = []
        read = 0
        while len(chunks) < room:
            try:
                item = next(it)
            except StopIteration:
                self.input_done = True
                break
            read += 1
            chunk.append(item)
            if len(chunk) == size:
                chunks.append(chunk)
                chunk = []
            if time.monotonic() >= until:
                break
        self._note_read(began, read)
        if chunk:
            chunks.append(chunk)
        if not chunks:
            return
        if size == 1:
            self.submit([inputs[0] for inputs in chunks])
        else:
            self.submit([tuple(inputs) for inputs in chunks], chunked=True)

    def collect(self) -> bool:
        """Take delivered results; return whether any can be yielded now."""
        return self._results.collect()

    def pop_values(self) -> list[Any]:
        """The values ready, last first, for the caller to ``pop()`` as it
        yields them (see ``MapResults.pop_values``)."""
        return self._results.pop_values()

    def raise_pending(self) -> None:
        """Raise the error met in ``pop_values``, if any, after its values."""
        self._results.raise_pending()

    @property
    def finished(self) -> bool:
        return self.input_done and self._results.finished

    def remaining(self) -> float | None:
        """Seconds left before the timeout; raise ``TimeoutError`` when none are."""
        if self._deadline is None:
            return None
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise AnyTimeoutError(f"map did not finish within its timeout of {self._timeout} s")
        return left

    def wait_time(self) -> float | None:
        """How long the map may wait for results (None: as long as it takes):
        ``remaining()``, or less while a progress count waits to be reported,
        so that the map's thread wakes to report it (``collect``)."""
        left = self.remaining()
        due = None if self._progress is None else self._progress.due()
        if due is None:
            return left
        return due if left is None else min(left, due)

    def cancel(self) -> None:
        """Cancel what has not been yielded (tasks queued are dropped); the
        map is over: its progress says so."""
        if self._results.cancel():
            self._queue.wake()


def _closed_while_read(error: PoolClosedError, index: int) -> PoolClosedError:
    """The error of a map whose pool was shut down before it could submit
    its input ``index`` (a map read on in another thread, say), in place of
    ``error``'s ``SHUT_DOWN``, which tells a call to create a new Pool."""
    if str(error) != SHUT_DOWN:
        return error  # at the interpreter's exit, say: that says why
    return PoolClosedError(
        f"the pool was shut down before input #{index} of a map was submitted: a map "
        "submits its inputs as its results are taken; read a map to its end before its "
        "pool shuts down"
    )
