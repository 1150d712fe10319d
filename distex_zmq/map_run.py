"""The state of one running map: its window, its tasks, its results in order.

A map keeps at most ``window`` tasks between reading and yielding, so
unbounded and async iterables work and memory stays bounded. It sees its pool
only through a ``MapContext``: where tasks go, the task maker, the pool loop
and the workers' capacity.

Adaptive batching: when no ``chunksize`` is given, a map starts with one
input per task and, from how long the workers say its tasks ran, groups
inputs that take well under ``GROUP_BELOW`` seconds into chunks of about
``BATCH_TIME`` seconds of work. Each input keeps its own result, exception
and place in the order; inputs that take longer are never grouped; an
explicit ``chunksize`` and ``qsize=1`` are honoured exactly. A chunk's
results may come in pieces (``STATUS_PARTIAL``, while the chunk runs on);
each piece names its first input, and is yielded in its place.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from distex_zmq.broker import Task
from distex_zmq.map_index import InputNumbers, mark_input
from distex_zmq.progress import Progress
from distex_zmq.results import QueueSink, decode
from distex_zmq.serialization import ItemError
from distex_zmq.tasks import TaskMaker
from distex_zmq.wire import frames as p

#: Inputs that run at least this long (seconds) are never grouped.
GROUP_BELOW = p.GROUP_BELOW_US / 1e6
#: Seconds of work an adaptive chunk aims at.
BATCH_TIME = 0.002
#: The largest adaptive chunk.
MAX_BATCH = 256
#: The status of a ready entry whose value is a decoded piece of a chunk.
_DECODED = -1
#: Bytes of pickled input a map reads ahead of its consumer, about: large
#: inputs need few tasks in flight to keep the workers busy, and every one
#: read ahead costs memory and memory bandwidth.
BYTES_AHEAD = 64 * 1024 * 1024


class TaskQueue(Protocol):
    """Where a map's tasks go: the broker."""

    def submit(self, tasks: Iterable[Task]) -> None:
        """Queue tasks (thread-safe)."""

    def wake(self) -> None:
        """Make the pool loop look at the tasks cancelled since (thread-safe)."""


@dataclasses.dataclass(frozen=True)
class MapContext:
    """What a map needs of its pool."""

    queue: TaskQueue
    tasks: TaskMaker
    #: the pool loop, which delivers the results
    loop: asyncio.AbstractEventLoop
    #: tasks the workers hold at once: the sum of their credits
    capacity: int
    #: inputs may be grouped into chunks when no chunksize is given
    may_chunk: bool

    @property
    def window(self) -> int:
        return map_window(self.capacity)


def map_window(capacity: int) -> int:
    """Inputs a map keeps between reading and yielding, for workers that hold
    ``capacity`` tasks at once."""
    return 4 * capacity + 16


class MapRun:
    """The state of one running map, shared by its sync and async drivers."""

    #: pickled bytes of the latest task (None: none submitted yet)
    _task_bytes: int | None = None

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
    ):
        self._queue = ctx.queue
        self._progress = progress
        self._tasks = ctx.tasks
        self._loads = ctx.tasks.data_loads
        self._func = ctx.tasks.function(func)
        zipped = len(iterables) > 1
        self._flags = p.FLAG_STAR if star or zipped else 0
        #: adapt the chunk size to the tasks' run time (no chunksize given)
        self.adaptive = chunksize is None and ctx.may_chunk
        #: inputs per task now
        self.chunksize = chunksize or 1
        self._per_input: float | None = None
        #: inputs in each chunk task not yet yielded, by sequence number
        self._sizes: dict[int, int] = {}
        #: which input each task stands for (to mark errors with it)
        self._numbers = InputNumbers()
        capacity = ctx.capacity
        self._window = ctx.window
        self._chunk_window = min(self._window, 2 * capacity + 2)
        #: the fewest tasks a map keeps ahead, however large: every credit and two
        self._min_window = capacity + 2
        self._ordered = ordered
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._timeout = timeout
        self.sink = QueueSink(wake, ctx.loop, max(1, self._window // 2), 2 * capacity)
        self._outstanding: dict[int, Task] = {}
        self._held: dict[int, tuple[Task, int, Any]] = {}
        #: chunks answered in pieces: sequence number -> {first input: results}
        self._pieces: dict[int, dict[int, list[Any]]] = {}
        #: chunks answered in pieces: sequence number -> inputs answered
        self._answered: dict[int, int] = {}
        #: chunks in ``_pieces`` whose every input is answered
        self._whole: set[int] = set()
        #: the next input of chunk ``_next_out`` to yield, if it came in pieces
        self._cursor = 0
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
        tasks: list[Task] = []
        flags = self._flags | (p.FLAG_CHUNK if chunked else 0)
        first = self._next_seq
        try:
            self._tasks.map_tasks(self._func, flags, inputs, self.sink, first, tasks)
        finally:
            made = len(tasks)
            if made:
                last = tasks[-1]
                buffers = last.buffers
                self._task_bytes = len(last.data) + (
                    sum(b.nbytes for b in buffers) if buffers else 0
                )
                seqs = range(first, first + made)
                self._outstanding.update(zip(seqs, tasks, strict=True))
                if chunked:
                    self._sizes.update(zip(seqs, map(len, inputs), strict=False))
                    self._numbers.chunks(first, inputs[:made])
                else:
                    self._numbers.singles(first, made)
                self._next_seq = first + made
                self._unyielded += made
                self.sink.submitted += made
                self._queue.submit(tasks)

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
        self._note_run(value[2], self._sizes.get(task.tag, 1) or 1)

    def _note_run(self, elapsed_us: int, inputs: int) -> None:
        """Size the next chunks from ``inputs`` that ran ``elapsed_us``."""
        per_input = elapsed_us / 1e6 / inputs
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
            for task, status, value in itertools.islice(reversed(results), 4):
                if status != p.STATUS_PARTIAL and (type(value) is not tuple or len(value) < 4):
                    self._adapt(task, value)
        answered = self._answered
        if self._ordered:
            held = self._held
            while results:
                entry = results.popleft()
                task, status, value = entry
                seq = task.tag
                if task.flags & p.FLAG_CHUNK and (
                    seq in answered
                    or status == p.STATUS_PARTIAL
                    or (type(value) is tuple and len(value) > 3)
                ):
                    self._add_piece(task, status, value)
                    continue
                outstanding.pop(seq, None)
                held[seq] = entry
            self._move_ordered()
        else:
            while results:
                entry = results.popleft()
                task, status, value = entry
                seq = task.tag
                if task.flags & p.FLAG_CHUNK and (
                    seq in answered
                    or status == p.STATUS_PARTIAL
                    or (type(value) is tuple and len(value) > 3)
                ):
                    offset, items, whole = self._add_piece(task, status, value)
                    self._ready.append((task, _DECODED, items))
                    if whole:
                        self._chunk_done(seq)
                    continue
                outstanding.pop(seq, None)
                self._ready.append(entry)
        return bool(self._ready)

    def _add_piece(self, task: Task, status: int, value: Any) -> tuple[int, list[Any], bool]:
        """Decode a piece of a chunk's results (``value[3]``: its first input);
        keep it in its place (ordered maps); return ``(offset, items, whether
        the chunk is answered whole now)``."""
        seq = task.tag
        if type(value) is tuple:
            offset = value[3] if len(value) > 3 else 0
        else:  # an error made by the broker: the task failed as it stood
            offset = task.first
        error = False
        try:
            items = decode(
                task, p.STATUS_OK if status == p.STATUS_PARTIAL else status, value, self._loads
            )
        except BaseException as e:  # noqa: BLE001 - raised in its place
            items = [ItemError(e)]
            error = True
        if not error and self.adaptive and items:
            self._note_run(value[2], len(items))
        answered = self._answered.get(seq, 0) + len(items)
        self._answered[seq] = answered
        whole = error or answered >= self._sizes.get(seq, 1)
        if self._ordered:
            self._pieces.setdefault(seq, {})[offset] = items
            if whole:
                self._whole.add(seq)
        return offset, items, whole

    def _chunk_done(self, seq: int) -> None:
        """Every input of chunk ``seq`` is answered."""
        self._answered.pop(seq, None)
        self._sizes.pop(seq, None)
        self._outstanding.pop(seq, None)
        self._unyielded -= 1

    def _move_ordered(self) -> None:
        """Move what is next in order to the ready results."""
        held, pieces, ready = self._held, self._pieces, self._ready
        while True:
            seq = self._next_out
            mine = pieces.get(seq)
            if mine is not None:
                while self._cursor in mine:
                    items = mine.pop(self._cursor)
                    ready.append((None, _DECODED, items))
                    self._cursor += len(items) or 1
                if mine or seq not in self._whole:
                    return
                del pieces[seq]
                self._whole.discard(seq)
                self._chunk_done(seq)
                self._cursor = 0
                self._next_out += 1
                continue
            if seq not in held:
                return
            ready.append(held.pop(seq))
            self._next_out += 1

    def pop_values(self) -> list[Any]:
        """Decode the ready results into values, last first, for the caller
        to ``pop()`` as it yields them: the map then holds no result its
        consumer has had (a large one is freed when dropped). Keep the first
        error, in order."""
        values: list[Any] = []
        self._decode_ready(values)
        if self._progress is not None:
            self._progress.add(len(values) + (self._pending_error is not None))
        values.reverse()
        return values

    def _decode_ready(self, values: list[Any]) -> None:
        ready = self._ready
        loads = self._loads
        while ready:
            task, status, value = ready.popleft()
            if status == _DECODED:
                for item in value:
                    if type(item) is ItemError:
                        self._pending_error = item.error
                        return
                    values.append(item)
                continue
            self._unyielded -= 1
            chunk = task.flags & p.FLAG_CHUNK
            try:
                result = decode(task, status, value, loads)
            except BaseException as e:  # noqa: BLE001 - raised in order, after values
                self._pending_error = mark_input(e, self._numbers.of(task.tag, chunk))
                return
            if not chunk:
                values.append(result)
                continue
            self._sizes.pop(task.tag, None)
            start = self._numbers.chunk_done(task.tag)
            for position, item in enumerate(result):
                if type(item) is ItemError:
                    self._pending_error = mark_input(item.error, start + position)
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
        return (
            self.input_done
            and not self._outstanding
            and not self._held
            and not self._ready
            and not self._pieces
            and not self._answered
        )

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
        """Cancel what has not been yielded (tasks queued are dropped); the
        map is over: its progress says so."""
        if self._progress is not None:
            self._progress.close()
        if self._outstanding:
            for task in self._outstanding.values():
                task.cancelled = True
            self._outstanding.clear()
            self._queue.wake()
        self._held.clear()
        self._pieces.clear()
        self._answered.clear()
        self._whole.clear()
        self._ready.clear()
