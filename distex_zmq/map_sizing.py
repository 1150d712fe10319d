"""Adaptive chunks of a map: how many inputs each of its tasks carries.

With no ``chunksize`` given, a map starts with one input per task and, from
how long the workers say its tasks ran, groups inputs that take well under
``GROUP_BELOW`` seconds into chunks of about ``BATCH_TIME`` seconds of work;
inputs that take longer are never grouped. An explicit ``chunksize`` is kept.
"""

from __future__ import annotations

import itertools
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


class ChunkSizer:
    """The inputs per task of one map, adapted to its run times if ``adaptive``."""

    def __init__(self, chunksize: int | None, may_chunk: bool):
        #: adapt the chunk size to the tasks' run time (no chunksize given)
        self.adaptive = chunksize is None and may_chunk
        #: inputs per task now
        self.chunksize = chunksize or 1
        self._per_input: float | None = None

    def sample(self, results: deque[tuple[Task, int, Any]], sizes: dict[int, int]) -> None:
        """Size the next chunks from the newest few of ``results`` (they say
        enough about the run time); ``sizes``: inputs per chunk task, by its
        sequence number (``Task.tag``)."""
        for task, status, value in itertools.islice(reversed(results), 4):
            if status != p.STATUS_PARTIAL and type(value) is tuple and len(value) < 4:
                self.note_run(value[2], sizes.get(task.tag, 1) or 1)

    def note_run(self, elapsed_us: int, inputs: int) -> None:
        """Size the next chunks from ``inputs`` that ran ``elapsed_us``."""
        per_input = elapsed_us / 1e6 / inputs
        old = self._per_input
        self._per_input = per_input = per_input if old is None else 0.7 * old + 0.3 * per_input
        if per_input >= GROUP_BELOW:
            self.chunksize = 1
        else:
            target = int(BATCH_TIME / max(per_input, 1e-7))
            self.chunksize = max(1, min(target, 2 * self.chunksize, MAX_BATCH))
