"""A map's tasks in flight and their results, from its ``QueueSink`` to the
values it yields: in order or as they come, a chunk's pieces (each names its
first input) each in its place, decoded last, with the first error raised in
its place and marked with the input it is for.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from typing import Any

from distex_zmq.broker import Task
from distex_zmq.chunk_load import Unloaded, load_each
from distex_zmq.errors import SerializationError, TaskOrigin
from distex_zmq.map_index import InputNumbers, mark_input
from distex_zmq.map_sizing import ChunkSizer, result_bytes
from distex_zmq.progress import Progress
from distex_zmq.results import QueueSink, decode
from distex_zmq.serialization import ItemError
from distex_zmq.task_errors import (
    TolerantUnpickler,
    name_task,
    renamed,
    result_unloadable_hint,
    tolerated_error,
)
from distex_zmq.wire import frames as p

#: The status of a ready entry whose value is a decoded piece of a chunk.
_DECODED = -1

#: Finds the name of ``ItemError`` in a chunk's pickled results. A pickle
#: names the class of the objects it holds (``ItemError`` by reference, with
#: every pickler a pool may use), so results whose pickle does not name it
#: hold none, and their items need not be looked at one by one.
_may_hold_item_error = re.compile(ItemError.__name__.encode()).search


def _input_error(task: Task, error: BaseException, index: int) -> BaseException:
    """The ``error`` of input ``index`` of chunk ``task``, marked with that
    input; one the worker made names it (``task 12 (f, input #3 of a map)``),
    and so does one the broker made of a chunk that ran one input per task
    (which names the input by its place in its chunk)."""
    described = f"task {task.shown_id} ({task.name or '?'}, input #{index} of a map)"
    if type(error) is SerializationError:
        name_task(error, task.id, described)
    elif task.flags & p.FLAG_ONE_BY_ONE and isinstance(error, TaskOrigin):
        renamed(error, task.describe(), described)
    return mark_input(error, index)


def _chunk_error(task: Task, error: BaseException, start: int, size: int) -> BaseException:
    """The ``error`` that chunk ``task`` failed with as a whole (of its
    ``size`` inputs, the first is ``start``), marked with its first input;
    one the broker made says which inputs the chunk held."""
    if isinstance(error, TaskOrigin) and size > 1:
        what = f"{task.name or '?'}, chunk #{task.index} of a map"
        described = f"task {task.shown_id} ({what}: inputs #{start} to #{start + size - 1})"
        renamed(error, task.describe(), described)
    return mark_input(error, start)


def _load_each(
    task: Task, status: int, value: Any, loads: Callable[..., Any], start: int, error: BaseException
) -> list[Any] | None:
    """The results of chunk ``task`` (its first input is input ``start`` of
    the map), whose pickle did not load as a whole in the client (``error``),
    loaded one at a time: each that does not load is the ``ItemError`` of an
    error that says why. None if they cannot be loaded one at a time (then
    the chunk fails as a whole)."""
    if (
        status not in (p.STATUS_OK, p.STATUS_PARTIAL)
        or type(value) is not tuple
        or not isinstance(error, Exception)
    ):
        return None
    try:
        items = load_each(value[0], value[1], loads)
    except Exception:  # noqa: BLE001 - then the chunk fails as a whole
        return None
    if items is None:
        return None
    salvage = True
    for position, item in enumerate(items):
        if type(item) is not Unloaded:
            continue
        e = item.error
        if salvage and item.shared is None:
            # the first that fails, which the map raises: an error keeps its
            # class's name, its text and the remote traceback
            salvage = False
            salvaged = _salvaged_error(task, value, loads, position, e)
            if salvaged is not None:
                items[position] = ItemError(salvaged)
                continue
        why = f"{type(e).__name__}: {e}{result_unloadable_hint(e)}"
        if item.shared is not None:
            why = (
                f"it shares an object with the result of input #{start + item.shared}, "
                f"which could not be unpickled: {why}"
            )
        failed = SerializationError(
            f"the result of task {task.id} could not be unpickled in the client: {why}"
        )
        failed.__cause__ = e
        rec = task.worker  # where it ran
        if rec is not None:
            failed.set_origin(rec.host, rec.pid)
        items[position] = ItemError(failed)
    return items


def _salvaged_error(
    task: Task, value: Any, loads: Callable[..., Any], position: int, failure: BaseException
) -> SerializationError | None:
    """The error of the input at ``position`` of chunk ``task``, the first
    of its results that did not load (with ``failure``), if it is an error
    (``task_errors.unloadable_error``); else None."""
    made: list[TolerantUnpickler] = []

    def tolerant(file: Any, buffers: Any) -> TolerantUnpickler:
        made.append(TolerantUnpickler(file, buffers))
        return made[-1]

    try:
        items = load_each(value[0], value[1], loads, tolerant, position)
    except Exception:  # noqa: BLE001 - the error of the result stands
        return None
    if not items or len(items) <= position or type(items[position]) is not ItemError:
        return None
    # the results before it loaded: the classes missing are of this one
    error = tolerated_error(f"task {task.id}", items[position].error, made[0].missing, failure)
    rec = task.worker  # where it ran
    if error is not None and rec is not None:
        error.set_origin(rec.host, rec.pid)
    return error


def _is_piece(task: Task, status: int, value: Any, answered: dict[int, int]) -> bool:
    """Whether a chunk's result is a piece of it: a part of its results
    (more follow), the rest after an earlier part, or a part handed back and
    run as a task of its own (its value carries where its inputs start; an
    error that the broker made for it does not, the task does)."""
    if task.tag in answered or status == p.STATUS_PARTIAL:
        return True
    if type(value) is tuple:
        return len(value) > 3
    return bool(task.first or task.in_pieces)


class MapResults:
    """The results of one map's tasks, by sequence number (``Task.tag``).

    ``loads`` unpickles data; ``sizer`` learns the run times; ``progress``,
    if any, is told of every value and error taken.
    """

    _pending_error: BaseException | None = None

    def __init__(
        self,
        sink: QueueSink,
        loads: Callable[..., Any],
        sizer: ChunkSizer,
        ordered: bool,
        progress: Progress | None,
    ):
        self._sink = sink
        self._loads = loads
        self._sizer = sizer
        self._ordered = ordered
        self._progress = progress
        #: tasks submitted and not yet yielded (a chunk counts one)
        self.unyielded = 0
        #: inputs in each chunk task not yet yielded, by sequence number
        self._sizes: dict[int, int] = {}
        #: which input each task stands for (to mark errors with it)
        self._numbers = InputNumbers()
        self._outstanding: dict[int, Task] = {}
        #: answered tasks that wait for an earlier one, to be yielded in order
        self._held: dict[int, tuple[Task, int, Any]] = {}
        #: the pickled bytes of their results
        self.held_bytes = 0
        #: the pickled bytes of the latest result taken (of a task: a chunk's
        #: results together; None: none yet), which tells how much memory
        #: the results that wait for the consumer take
        self.result_bytes: int | None = None
        #: chunks answered in pieces: sequence number -> {first input: results}
        self._pieces: dict[int, dict[int, list[Any]]] = {}
        #: chunks answered in pieces: sequence number -> inputs answered
        self._answered: dict[int, int] = {}
        #: chunks in ``_pieces`` whose every input is answered
        self._whole: set[int] = set()
        #: the next input of chunk ``_next_out`` to yield, if it came in pieces
        self._cursor = 0
        self._ready: deque[tuple[Task, int, Any]] = deque()
        self._next_out = 0

    def submitted(self, first: int, tasks: list[Task], inputs: list[Any], chunked: bool) -> None:
        """``tasks``, numbered from ``first``, were made of the first of
        ``inputs`` (each a chunk if ``chunked``) and queued."""
        made = len(tasks)
        seqs = range(first, first + made)
        self._outstanding.update(zip(seqs, tasks, strict=True))
        if chunked:
            self._sizes.update(zip(seqs, map(len, inputs), strict=False))
            self._numbers.chunks(first, inputs[:made])
        else:
            self._numbers.singles(first, made)
        self.unyielded += made

    @property
    def held(self) -> int:
        """Answered tasks that wait for an earlier one (an ordered map)."""
        return len(self._held)

    @property
    def inputs_submitted(self) -> int:
        """Inputs submitted so far."""
        return self._numbers.submitted

    def collect(self) -> bool:
        """Take delivered results; return whether any can be yielded now."""
        results = self._sink.results
        outstanding = self._outstanding
        sizer = self._sizer
        if sizer.adaptive and results:
            sizer.sample(results, self._sizes)
        answered = self._answered
        # A piece of a chunk no longer open (not in ``sizes``) is dropped: the
        # worker's own empty result of a chunk whose every result went in its
        # watch thread's pieces (the watch looked after the last input
        # returned) comes after those, and may come after the map yielded
        # the chunk, which, taken as a piece, it would open again for ever.
        sizes = self._sizes
        # inputs answered by the results taken, for the progress: they count
        # as they arrive, not as they are yielded (an ordered map holds them
        # behind a slow input, whose end would show them all at once)
        progress = self._progress
        arrived = 0
        if self._ordered:
            held = self._held
            while results:
                entry = results.popleft()
                task, status, value = entry
                seq = task.tag
                if task.flags & p.FLAG_CHUNK and _is_piece(task, status, value, answered):
                    if seq in sizes:
                        arrived += len(self._add_piece(task, status, value)[1])
                    continue
                if progress is not None:
                    arrived += sizes.get(seq, 1)  # a chunk's inputs, or one
                outstanding.pop(seq, None)
                held[seq] = entry
                self.result_bytes = size = result_bytes(value)
                self.held_bytes += size
            self._move_ordered()
        else:
            while results:
                entry = results.popleft()
                task, status, value = entry
                seq = task.tag
                if task.flags & p.FLAG_CHUNK and _is_piece(task, status, value, answered):
                    if seq not in sizes:
                        continue  # a late piece of a chunk yielded whole (above)
                    offset, items, whole = self._add_piece(task, status, value)
                    arrived += len(items)
                    self._ready.append((task, _DECODED, items))
                    if whole:
                        self._chunk_done(seq)
                    continue
                if progress is not None:
                    arrived += sizes.get(seq, 1)
                outstanding.pop(seq, None)
                self._ready.append(entry)
            if self._ready:
                self.result_bytes = result_bytes(self._ready[-1][2])
        if progress is not None:
            # also when none arrived: a count held back by the interval
            # between reports is reported once that has passed
            progress.add(arrived)
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
            # of its results, each that does not load fails its input only
            first = self._numbers.of(seq, True) + offset
            loaded = _load_each(task, status, value, self._loads, first, e)
            error = loaded is None
            items = [ItemError(e)] if loaded is None else loaded
        if error or ItemError in map(type, items):
            start = self._numbers.of(seq, True) + offset
            for position, item in enumerate(items):
                if type(item) is ItemError:
                    item.error = _input_error(task, item.error, start + position)
        if not error and self._sizer.adaptive and items:
            self._sizer.note_run(value[2], len(items))
        answered = self._answered.get(seq, 0) + len(items)
        self._answered[seq] = answered
        whole = error or answered >= self._sizes.get(seq, 1)
        if self._ordered:
            pieces = self._pieces.setdefault(seq, {})
            # an empty piece holds no place: a chunk whose every result went
            # in pieces (the worker's watch thread sends those done while its
            # last input ends) finishes with no result, at the offset where
            # its inputs end, the first input of the part handed back after
            # it, whose piece it would replace
            if items:
                pieces[offset] = items
            if whole:
                self._whole.add(seq)
        return offset, items, whole

    def _chunk_done(self, seq: int) -> None:
        """Every input of chunk ``seq`` is answered."""
        self._answered.pop(seq, None)
        self._sizes.pop(seq, None)
        self._outstanding.pop(seq, None)
        self.unyielded -= 1

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
                    self._cursor += len(items)
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
            entry = held.pop(seq)
            self.held_bytes -= result_bytes(entry[2])
            ready.append(entry)
            self._next_out += 1

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
        # A result with out-of-band buffers (a large one) ends the batch: the
        # rest stay ready, decoded when the caller has taken it. The caller
        # then holds one large result at a time, whose memory the next one
        # reuses, where decoding all that are ready grows the heap past
        # malloc's trim threshold and every result faults in fresh pages.
        ready = self._ready
        loads = self._loads
        while ready:
            task, status, value = ready.popleft()
            if status == _DECODED:
                # a C-level scan for errors, then one extend for the items
                if ItemError not in map(type, value):
                    values.extend(value)
                    continue
                for item in value:
                    if type(item) is ItemError:
                        self._pending_error = item.error
                        return
                    values.append(item)
                continue
            self.unyielded -= 1
            chunk = task.flags & p.FLAG_CHUNK
            loaded = None
            try:
                result = decode(task, status, value, loads)
            except BaseException as e:  # noqa: BLE001 - raised in order, after values
                start = self._numbers.of(task.tag, chunk)
                # of a chunk's results, each that does not load fails its input only
                loaded = _load_each(task, status, value, loads, start, e) if chunk else None
                if loaded is None:
                    if chunk:
                        e = _chunk_error(task, e, start, self._sizes.get(task.tag, 0))
                    self._pending_error = mark_input(e, start)
                    return
                result = loaded
            if not chunk:
                values.append(result)
                if value[1]:
                    return  # a large result: see below
                continue
            self._sizes.pop(task.tag, None)
            start = self._numbers.chunk_done(task.tag)
            if loaded is None and (
                not _may_hold_item_error(value[0]) or ItemError not in map(type, result)
            ):
                values.extend(result)
                if value[1]:
                    return  # a large result: see below
                continue
            for position, item in enumerate(result):
                if type(item) is ItemError:
                    self._pending_error = _input_error(task, item.error, start + position)
                    return
                values.append(item)

    def raise_pending(self) -> None:
        """Raise the error met in ``pop_values``, if any, after its values."""
        error = self._pending_error
        if error is not None:
            self._pending_error = None
            raise error

    @property
    def finished(self) -> bool:
        """Every task submitted was answered and yielded."""
        return (
            not self._outstanding
            and not self._held
            and not self._ready
            and not self._pieces
            and not self._answered
        )

    def cancel(self) -> bool:
        """Cancel the tasks not answered and drop every result not yielded;
        the map is over: its progress says so. Return whether a task was
        cancelled (the broker is then to look)."""
        if self._progress is not None:
            self._progress.close()
        cancelled = bool(self._outstanding)
        for task in self._outstanding.values():
            task.cancelled = True
        self._outstanding.clear()
        self._held.clear()
        self.held_bytes = 0
        self._pieces.clear()
        self._answered.clear()
        self._whole.clear()
        self._ready.clear()
        self._sink.close()
        return cancelled
