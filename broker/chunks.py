"""Chunks that answer in pieces: results of some of their inputs while they
run on (``STATUS_PARTIAL``), and inputs handed back unstarted, when they
stop (``STATUS_HANDED_BACK``) or while they run on with fewer inputs
(``STATUS_SPLIT``), in parts that become tasks of their own
(``TaskPart``). Headers only: the broker never unpickles a piece.

A chunk task keeps ``first``, its first input not answered (counted in the
chunk as the map made it), and ``skip``, the inputs of its payload answered,
which a worker that runs it again does not run.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

from distex_zmq.errors import ProtocolError
from distex_zmq.wire import frames as p

from .records import Task, WorkerRecord

#: The first id of the tasks made here, apart from the ids the pool gives.
PART_IDS = 1 << 62

_logger = logging.getLogger("distex_zmq.broker")


class TaskPart(Task):
    """A part of a chunk's inputs handed back: a task of its own whose
    results go where its chunk's go, and which is cancelled with it."""

    __slots__ = ("chunk",)

    def __init__(
        self, task_id: int, source: Task, first: int, data: Any, buffers: list[Any]
    ) -> None:
        """A part of the inputs that ``source`` (the chunk, or a part of it,
        which runs) hands back, from input ``first`` of the chunk on."""
        #: the chunk this is a part of
        self.chunk: Task = source.chunk if isinstance(source, TaskPart) else source
        super().__init__(
            task_id,
            source.func_id,
            # the source's, not the chunk's: a chunk that has finished holds
            # its function no more (``Ledger.finish``), its parts still run
            source.func_pickle,
            source.flags,
            data,
            buffers,
            source.sink,
            source.tag,
            source.name,
            index=source.index,
            # the chunk's function may name script functions by id: the
            # worker that takes the part may not hold them yet
            refs=source.refs,
        )
        self.first = first
        # its answers are pieces of its chunk's, each naming where it starts:
        # also the part from the chunk's first input, which a chunk split
        # before it took one hands back, and whose answer, taken for the
        # whole chunk's, would stand in for all of it
        self.in_pieces = True
        # its inputs were in the chunk when it killed a worker, if it did
        self.tries = source.tries
        self.max_retries = source.max_retries

    @property
    def shown_id(self) -> int:
        return self.chunk.id

    @property
    def cancelled(self) -> bool:
        return self.chunk.cancelled

    @cancelled.setter
    def cancelled(self, value: bool) -> None:
        if value:
            self.chunk.cancelled = True


class ChunkPieces:
    """Takes the pieces of chunks' results and the inputs they hand back."""

    def __init__(self) -> None:
        self._ids = itertools.count(PART_IDS)

    def piece(
        self,
        rec: WorkerRecord,
        task_id: int,
        status: int,
        value: tuple[Any, list[Any], int],
        mark: int,
    ) -> tuple[Task | None, int]:
        """Take ``STATUS_PARTIAL`` (delivered at once) or the first
        ``STATUS_HANDED_BACK`` of a task (its payload replaced: it then
        counts as returned). Return the task and the status to go on with
        (``STATUS_PARTIAL``: nothing more to do)."""
        task = rec.running.get(task_id)
        if task is None or mark < task.skip:
            _logger.warning("bad chunk piece for task %d from %s", task_id, rec)
            return None, p.STATUS_PARTIAL  # dropped
        first = task.first
        task.first = first + mark - task.skip
        data, buffers, elapsed = value
        if status == p.STATUS_PARTIAL:
            task.skip = mark
            if not task.cancelled:
                task.sink.deliver(task, p.STATUS_PARTIAL, (data, buffers, elapsed, first))
                task.sink.flush()
            return task, p.STATUS_PARTIAL
        _new_payload(task, data, buffers)  # the inputs from mark on
        return task, p.STATUS_RETURNED

    def split(self, task: Task, mark: int, data: Any, buffers: list[Any]) -> None:
        """Take ``STATUS_SPLIT``: ``task`` runs on with its inputs from
        ``mark`` on up to the one it runs, whose payload is ``data``; the
        inputs after them come as parts (``part``). A ``mark`` other than
        the first input not answered is a ``ProtocolError``: it ends the
        message, whose parts would be taken as the task's own hand-back."""
        if mark != task.skip:
            raise ProtocolError(f"split of task {task.id} at input {mark}, not {task.skip}")
        _new_payload(task, data, buffers)

    def part(self, task: Task, first: int, data: Any, buffers: list[Any]) -> Task:
        """A task for a further part of ``task``'s inputs handed back, from
        its input ``first`` on."""
        data = bytes(data) if isinstance(data, memoryview) else data
        return TaskPart(next(self._ids), task, first, data, buffers)


def _new_payload(task: Task, data: Any, buffers: list[Any]) -> None:
    """Make ``data`` (a memoryview of a worker's message is copied) the
    payload of chunk ``task``: inputs of it, from ``task.first`` on, none
    answered yet; its answers come as pieces, each naming its first input."""
    task.skip = 0
    task.in_pieces = True
    task.data = bytes(data) if isinstance(data, memoryview) else data
    task.buffers = buffers
