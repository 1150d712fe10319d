"""Adaptive chunks of a map: how many inputs each of its tasks carries.

With no ``chunksize`` given, a map starts with one input per task and, from
how long the workers say its tasks ran, groups inputs that take well under
``GROUP_BELOW`` seconds into chunks of about ``BATCH_TIME`` seconds of work;
inputs that take longer are never grouped, nor those that are large or
whose results are (``LARGE_RESULT``). An explicit ``chunksize`` is kept.

A pool remembers what the inputs of its recent maps' functions took
(``RunTimes``): a later map of the same function starts with the chunks that
its earlier one ended with. Programs that map one function many times over a
few dozen inputs (an optimizer's generations, scipy's ``workers=pool.map``)
would otherwise send most of each map one input per task. A remembered time
that no longer holds costs little: a chunk that runs past its budget hands
back the inputs it has not started (``CHUNK_BUDGET_US``).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from distex_zmq.broker import Task
from distex_zmq.wire import frames as p

#: Inputs that run at least this long (seconds) are never grouped.
GROUP_BELOW = p.GROUP_BELOW_US / 1e6
#: Seconds of work an adaptive chunk aims at.
BATCH_TIME = 0.002
#: The largest adaptive chunk.
MAX_BATCH = 256
#: Pickled bytes of an input's result from which inputs are not grouped:
#: beside moving that much a message per input costs little, and a chunk
#: would hold all its results until its last is done, which the map's
#: bound on the results waiting for its consumer counts as one.
LARGE_RESULT = 1 << 20
#: Pickled bytes of an input from which inputs are not grouped: the map
#: reads its inputs ahead of its consumer by the task, so that a chunk of
#: many would read that many at once, past the map's bound (``BYTES_AHEAD``).
LARGE_INPUT = 1 << 20


#: Functions whose run times a pool remembers, the most recently mapped.
REMEMBERED_FUNCTIONS = 256


class RunTimes:
    """Seconds an input of each function took in the pool's recent maps, by
    function id (``FunctionCache``: the same pickle, the same id)."""

    def __init__(self, max_items: int = REMEMBERED_FUNCTIONS):
        self._items: dict[int, float] = {}
        self._max_items = max_items

    def __len__(self) -> int:
        return len(self._items)

    def get(self, func_id: int) -> float | None:
        return self._items.get(func_id)

    def note(self, func_id: int, per_input: float) -> None:
        items = self._items
        items.pop(func_id, None)  # the newest last, the oldest dropped first
        items[func_id] = per_input
        if len(items) > self._max_items:
            items.pop(next(iter(items)), None)


class ChunkSizer:
    """The inputs per task of one map, adapted to its run times if ``adaptive``.

    ``run_times``, if given, holds what the inputs of ``func_id`` took in
    earlier maps: the map starts from that, and leaves its own there."""

    def __init__(
        self,
        chunksize: int | None,
        may_chunk: bool,
        run_times: RunTimes | None = None,
        func_id: int = 0,
    ):
        #: adapt the chunk size to the tasks' run time (no chunksize given)
        self.adaptive = chunksize is None and may_chunk
        #: inputs per task now
        self.chunksize = chunksize or 1
        #: what this map measured: moving averages of a task's seconds and
        #: of its inputs (0: none yet), whose ratio is the seconds an input
        #: takes, so that each task weighs by its inputs. A last chunk of one
        #: input whose worker lost its core for a few milliseconds counts as
        #: one input beside the hundred of a chunk before it, not as a whole
        #: measurement that a tiny function is slow
        self._seconds = 0.0
        self._inputs = 0.0
        #: the inputs are ``LARGE_INPUT`` or larger: one per task
        self._large_inputs = False
        self._run_times = run_times if self.adaptive else None
        self._func_id = func_id
        if self._run_times is not None:
            known = self._run_times.get(func_id)
            if known is not None:
                # where the map starts, not a measurement of its own: the
                # first run time it learns replaces it. A time remembered
                # wrong (the last map's tasks lost their cores to a loaded
                # machine, or the function's inputs now take another time)
                # would otherwise keep the map one input per task for a
                # dozen tasks while the average came down
                self.chunksize = _inputs_per_chunk(known, MAX_BATCH)

    def sample(self, results: deque[tuple[Task, int, Any]], sizes: dict[int, int]) -> None:
        """Size the next chunks from the newest few of ``results`` (they say
        enough about the run time); ``sizes``: inputs per chunk task, by its
        sequence number (``Task.tag``).

        The pool loop appends to ``results`` meanwhile, so they are read by
        index, not iterated: an iterator of a deque that grows raises
        ``RuntimeError``. Only the map's thread takes results out, so an
        index from the end stays valid."""
        count = min(4, len(results))
        for back in range(1, count + 1):
            task, status, value = results[-back]
            if status != p.STATUS_PARTIAL and type(value) is tuple and len(value) < 4:
                self.note_run(value[2], sizes.get(task.tag, 1) or 1, result_bytes(value))

    def note_inputs(self, size: int, inputs: int) -> None:
        """The latest task took ``size`` bytes pickled for ``inputs`` inputs:
        large inputs go one per task from now on."""
        if self.adaptive:
            self._large_inputs = size >= LARGE_INPUT * inputs
            if self._large_inputs:
                self.chunksize = 1

    def note_run(self, elapsed_us: int, inputs: int, results_size: int = 0) -> None:
        """Size the next chunks from ``inputs`` that ran ``elapsed_us`` and
        whose results took ``results_size`` bytes pickled (0: not known)."""
        seconds = elapsed_us / 1e6
        count = float(inputs)
        if self._inputs:
            seconds = 0.7 * self._seconds + 0.3 * seconds
            count = 0.7 * self._inputs + 0.3 * count
        self._seconds, self._inputs = seconds, count
        per_input = seconds / count
        self.chunksize = _inputs_per_chunk(per_input, 2 * self.chunksize)
        if results_size >= LARGE_RESULT * inputs or self._large_inputs:
            self.chunksize = 1
        if self._run_times is not None:
            self._run_times.note(self._func_id, per_input)


def result_bytes(value: Any) -> int:
    """The pickled bytes of a delivered result (an error made in the client,
    which holds no pickle, counts none)."""
    if type(value) is not tuple:
        return 0
    buffers = value[1]
    size = len(value[0])
    return size + sum(memoryview(b).nbytes for b in buffers) if buffers else size


def _inputs_per_chunk(per_input: float, most: int) -> int:
    """Inputs of ``per_input`` seconds each in a chunk, at most ``most``."""
    if per_input >= GROUP_BELOW:
        return 1
    return max(1, min(int(BATCH_TIME / max(per_input, 1e-7)), most, MAX_BATCH))
