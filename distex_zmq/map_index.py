"""Which input of a map a task stands for, to mark the errors it ends with.

A map numbers its tasks (``Task.tag``); with chunks of several inputs, and
with adaptive chunks that come and go, a task's number is not its input's.
``InputNumbers`` keeps what it takes to tell: the first input of each chunk
not yet yielded, and where the difference between the two numbers changes
for single tasks.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

from distex_zmq.errors import RemoteException, TaskOrigin


class InputNumbers:
    """The input numbers of a map's tasks, kept as they are submitted."""

    def __init__(self) -> None:
        #: inputs submitted so far
        self._inputs = 0
        #: the number of the first input of each chunk task not yet yielded
        self._starts: dict[int, int] = {}
        #: ``(task number, input number minus it)`` from where that
        #: difference holds, for single tasks (chunks before them change it)
        self._offsets: list[tuple[int, int]] = [(0, 0)]

    def chunks(self, first: int, chunks: Sequence[Any]) -> None:
        """Tasks ``first``, ``first + 1``, ... were submitted, one per chunk."""
        starts = self._starts
        start = self._inputs
        for seq, chunk in enumerate(chunks, first):
            starts[seq] = start
            start += len(chunk)
        self._inputs = start

    def singles(self, first: int, made: int) -> None:
        """Tasks ``first`` to ``first + made - 1`` were submitted, one input each."""
        offset = self._inputs - first
        if offset != self._offsets[-1][1]:
            self._offsets.append((first, offset))
        self._inputs += made

    @property
    def submitted(self) -> int:
        """Inputs submitted so far."""
        return self._inputs

    def chunk_done(self, seq: int) -> int:
        """The first input of chunk task ``seq``, which is done with."""
        return self._starts.pop(seq, 0)

    def of(self, seq: int, chunk: bool) -> int:
        """The input of task ``seq`` (of a chunk: its first input)."""
        if chunk:
            return self._starts.get(seq, 0)
        offsets = self._offsets
        i = bisect.bisect_right(offsets, (seq, float("inf"))) - 1
        return seq + offsets[i][1]


def mark_input(error: BaseException, index: int) -> BaseException:
    """``error`` (and its remote cause) marked with the map input it is for."""
    if isinstance(error, TaskOrigin) and error.index is None:
        error.index = index
    cause = error.__cause__
    if isinstance(cause, RemoteException) and cause.index is None:
        cause.index = index
        if isinstance(error, TaskOrigin):
            error.set_origin(cause.host, cause.pid)
    return error
