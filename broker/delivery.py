"""RESULT messages: each task leaves its worker's running set and its result
goes to its sink (each sink flushed once per message), or waits for the log
records its worker sent before it (``HeldResults``); chunks' pieces and
inputs handed back, tasks returned unrun, tasks whose TASK or RESULT a
dropped connection lost (``MISSING``), and the counts of tasks answered.
Headers only: the broker never unpickles a result.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from distex_zmq.errors import ProtocolError
from distex_zmq.wire import frames as p

from .chunks import ChunkPieces
from .dispatch import Dispatcher
from .held import HeldResults
from .ledger import Ledger
from .losses import TaskTimeouts
from .membership import Membership
from .records import INIT_TAG, BrokerHooks, ResultSink, Task, WorkerRecord
from .registry import Registry

_logger = logging.getLogger("distex_zmq.broker")

# module constants: a global each, not a global and an attribute, per result
_IN_FRAME = p.IN_FRAME
_OK = p.STATUS_OK
_RETURNED = p.STATUS_RETURNED
_PARTIAL = p.STATUS_PARTIAL
_HANDED_BACK = p.STATUS_HANDED_BACK
_LONG = p.STATUS_LONG
_SPLIT = p.STATUS_SPLIT
_AWAITED = p.MARK_AWAITED


class Delivery:
    """Takes the RESULT messages of workers, on the pool loop.

    ``dispatch()`` sends what the queue holds to workers with free credits.
    """

    def __init__(
        self,
        registry: Registry,
        ledger: Ledger,
        dispatcher: Dispatcher,
        membership: Membership,
        timeouts: TaskTimeouts | None,
        hooks: BrokerHooks,
        dispatch: Callable[[], None],
        held: HeldResults,
    ):
        self._registry = registry
        self._ledger = ledger
        self._dispatcher = dispatcher
        self._membership = membership
        self._timeouts = timeouts
        self._hooks = hooks
        self._dispatch = dispatch
        self._held = held
        self._pieces = ChunkPieces()
        #: tasks answered with a result and with an error, since the start
        self.done = 0
        self.failed = 0

    def on_results(self, rec: WorkerRecord, buf: memoryview, count: int, frames: list[Any]) -> None:
        """Take a RESULT message of ``count`` entries from ``rec``."""
        sinks: set[ResultSink] = set()
        running = rec.running
        returned: list[Task] = []
        answered = failed = unrun = 0
        #: the chunk task handed back in this message, and its payload's offset
        handed: tuple[Task, int] | None = None
        #: a task of the message runs long (``STATUS_LONG``)
        runs_long = False
        note_run_time = self._dispatcher.note_run_time
        finish = self._ledger.finish
        offset = p.body(buf, count, p.RESULT_ENTRY)
        reader = p.Reader(buf, offset, frames)
        end = len(buf)
        if rec.prints and not self._hooks.read_output(rec):
            # what its task printed before these results comes first (its
            # lines found now set ``prints`` again); a worker that prints
            # no more soon pays no read per message
            rec.prints -= 1
        # the worker logged records (or printed lines) not handled yet: its
        # results wait for them
        ticket = rec.log_ticket
        hold = ticket and self._held.must_wait(ticket)
        # a malformed entry (``ProtocolError``) ends the message: what came
        # before it is taken, and the worker's counts and credits are kept right
        try:
            for task_id, status, elapsed, data_len, nbuffers, mark in p.result_entries(buf, count):
                if nbuffers or data_len == _IN_FRAME:
                    data, buffers = reader.data(data_len, nbuffers)
                else:
                    # ``reader.data`` inline for a small result (most of them):
                    # two calls less per result
                    at = reader.pos
                    reader.pos = stop = at + data_len
                    if stop > end:
                        raise ProtocolError("truncated message: body past its end")
                    data, buffers = buf[at:stop], []
                if status >= _PARTIAL:
                    if status == _LONG:
                        # it still runs; the tasks given back after it must
                        # not come back here before it ends
                        task = running.get(task_id)
                        if task is not None:
                            runs_long = True
                            rec.exclusive = rec.runs_long = True
                            note_run_time(task, elapsed)
                        continue
                    if status == _SPLIT:
                        # a chunk that runs on with fewer inputs: those it
                        # handed back (the entries that follow) go elsewhere
                        # first, not behind it here
                        task = running.get(task_id)
                        if task is not None:
                            self._pieces.split(task, mark, data, buffers)
                            runs_long = True
                            rec.exclusive = rec.runs_long = True
                            handed = (task, task.first - mark)
                        continue
                    # a piece of a chunk's results, or its inputs handed back
                    if status == _HANDED_BACK and handed and handed[0].id == task_id:
                        # a further part of the inputs handed back: a task of its own
                        part = self._pieces.part(handed[0], handed[1] + mark, data, buffers)
                        self._ledger.add(part)
                        returned.append(part)
                        continue
                    task = running.get(task_id)
                    base = 0 if task is None else task.first - task.skip
                    piece = self._pieces.piece(rec, task_id, status, (data, buffers, elapsed), mark)
                    task, status = piece
                    if status == _PARTIAL:
                        continue
                    assert task is not None
                    handed = (task, base)
                task = running.pop(task_id, None)
                if task is None:
                    _logger.warning("result for unknown task %d from %s", task_id, rec)
                    continue
                # a piece names where it starts (``Task.is_piece``, inline:
                # a property call less per result)
                value = (
                    (data, buffers, elapsed)
                    if not task.first and not task.in_pieces
                    else (data, buffers, elapsed, task.first)
                )
                group = _free_credit(rec, task)
                if status == _RETURNED:
                    if group is not None:
                        unrun += 1  # a task of a group, given back
                    if task.cancelled:
                        finish(task)
                    else:
                        if task.claim is not None:
                            task.claim(False)  # it never ran: it may be cancelled again
                        returned.append(task)
                    continue
                answered += 1
                if status != _OK:
                    failed += 1
                note_run_time(task, elapsed, mark == _AWAITED)
                if hold and task.tag is not INIT_TAG:
                    self._held.hold(ticket, task, status, value)
                    continue
                finish(task)
                if task.tag is INIT_TAG and task.pinned is rec:
                    if status == _OK:
                        self._membership.make_ready(rec)
                    else:
                        self._hooks.on_init_failed(rec, status, value)
                    continue
                if not task.cancelled:
                    sink = task.sink
                    sink.deliver(task, status, value)
                    sinks.add(sink)
        finally:
            rec.done += answered - failed
            rec.failed += failed
            self.done += answered - failed
            self.failed += failed
            if unrun:
                self._dispatcher.uncount(rec, unrun)
            if returned:
                # given back unrun, ahead of everything that came later
                parts = [task for task in returned if task.is_piece]
                if parts:
                    returned = [task for task in returned if not task.is_piece]
                    self._dispatcher.hand_back(parts)
                if runs_long:
                    # held behind a long task: a pinned one waits for it there
                    pinned = [task for task in returned if task.pinned is rec]
                    if pinned:
                        returned = [task for task in returned if task.pinned is not rec]
                        for task in reversed(pinned):
                            self._dispatcher.pin(rec, task, first=True)
                self._dispatcher.requeue(returned)
            # a task that runs long goes on: its start stays (task_timeout)
            self._settle(rec, answered > 0, not runs_long)
            for sink in sinks:
                sink.flush()

    def _settle(self, rec: WorkerRecord, answered: bool, restart: bool = True) -> None:
        """``rec`` holds fewer tasks: whether it is spent, idle (no longer
        running alone; drained if it drains) or busy since now (``answered``:
        it answered some) and, for ``task_timeout``, with which task
        (``restart``: the next one starts about now), then its place in the
        registry and a dispatch to its free credits."""
        if rec.spend_pending:
            self._dispatcher.settle(rec)
        if not rec.running:
            rec.exclusive = rec.runs_long = False
            if rec.draining and not rec.pinned:
                self._membership.drained(rec)
        else:
            if answered:
                rec.busy_since = time.time()
            if restart and self._timeouts is not None:
                self._timeouts.started(rec)  # the next task starts about now
        self._registry.place(rec)
        self._dispatch()

    def on_missing(self, rec: WorkerRecord, round_: int, ids: list[int]) -> None:
        """Take ``rec``'s ``MISSING`` of ``round_``: the tasks of its
        ``CHECK`` that it does not hold. Those it is still counted to hold
        lost their TASK or their RESULT with its dropped connection: they
        run again, without counting a try (no task was to blame), a pinned
        one on ``rec`` again. A ``MISSING`` of an earlier round is stale: a
        ``CHECK`` after it asks again."""
        if round_ != rec.sync_round:
            return
        running = rec.running
        lost = []
        for task_id in ids:
            task = running.pop(task_id, None)
            if task is not None:
                lost.append(task)
        if not lost:
            return
        finish = self._ledger.finish
        requeue = []
        pinned = []
        for task in lost:
            _free_credit(rec, task)
            task.worker = None
            if task.cancelled:
                finish(task)
            elif task.pinned is rec:
                pinned.append(task)
            else:
                requeue.append(task)
        _logger.warning(
            "the connection of %s dropped and came back, which lost the messages of "
            "%d of its tasks on their way; they run again",
            rec,
            len(lost),
        )
        for task in reversed(pinned):
            self._dispatcher.pin(rec, task, first=True)
        self._dispatcher.uncount(rec, len(requeue))
        self._dispatcher.requeue(requeue)
        self._settle(rec, False)


def _free_credit(rec: WorkerRecord, task: Task) -> list[int] | None:
    """Take ``task``, answered or lost, off ``rec``'s credits: its own, or
    its share of its group's, which is free once the group's last task is
    off; return its group (None: it had a credit of its own)."""
    group = task.group
    if group is None:
        rec.used -= 1
    else:
        task.group = None
        group[0] -= 1
        if not group[0]:
            rec.used -= 1
    return group
