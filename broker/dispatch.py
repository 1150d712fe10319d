"""The broker's queue and credits: which task goes to which worker, and the
TASK messages that carry them.

A task takes one credit of its worker, except that tiny tasks from
``submit`` and ``run_async`` that queue up behind busy credits share one
(``_take_group``): what the broker knows of a function's run time comes
from the run times that workers report with each result.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from distex_zmq.wire import frames as p

from .ledger import Ledger
from .records import Task, WorkerRecord
from .registry import Registry

# Grouping: queued tasks that may be grouped (``Task.may_group``) and whose
# function ran for less than GROUP_BELOW_US in its recent tasks share one
# credit, up to GROUP_TIME_US of work and MAX_GROUP tasks. It happens only
# when more tasks wait than the workers have credits, and spares a round trip
# per task (with qsize=2, N tiny tasks submitted at once would otherwise take
# N/2 round trips). Run times are a guess from the past: a worker that finds a
# grouped task slow gives back the later ones of its function (they go back
# to the head of the queue) instead of running them one after the other.
GROUP_BELOW_US = p.GROUP_BELOW_US
GROUP_TIME_US = 2000
MAX_GROUP = 256
#: Functions whose run times the broker keeps (it forgets them all beyond).
MAX_RUN_TIMES = 10_000
#: A worker that runs a task whose function ran this long or longer last
#: time, or never ran, gets no other task until it is done: one queued
#: behind it would wait while other workers may be free. Credits beyond the
#: first spare round trips, which matter only for tasks far shorter than
#: this (a local round trip takes a fraction of a millisecond). A task that
#: runs this long although its function ran shorter before has its worker
#: give back what it holds behind it (``STATUS_LONG``, ``Delivery``).
LONG_TASK_US = p.LONG_TASK_US


class Dispatcher:
    """The inbox from other threads, the queue, pinned tasks and run times.

    Cancelled tasks end in the ``ledger`` as they come out of the queue;
    ``send(rec, frames)`` sends a TASK message; ``on_busy(rec)``, if given,
    is told when a worker that ran nothing gets a task. With ``max_tasks``,
    a worker that has been given that many tasks (pinned ones aside) drains,
    and ``on_spent(rec)`` is told.
    """

    def __init__(
        self,
        registry: Registry,
        ledger: Ledger,
        send: Callable[[WorkerRecord, list[Any]], None],
        on_busy: Callable[[WorkerRecord], None] | None,
        max_tasks: int | None = None,
        on_spent: Callable[[WorkerRecord], None] | None = None,
    ):
        self._registry = registry
        self._max_tasks = max_tasks
        self._on_spent = on_spent
        self._active = ledger.active
        self._finish = ledger.finish
        self._send = send
        self._on_busy = on_busy
        #: tasks handed over by other threads (``Broker.submit``)
        self.inbox: deque[Task] = deque()
        #: a credit is free and nothing waits: submitters must wake the loop
        self.starving = True
        #: a ``FLAG_LONE`` task went out (the broker clears it)
        self.lone_sent = False
        #: tasks sent in groups that shared a credit, since the start
        self.grouped_tasks = 0
        self._queue: deque[Task] = deque()
        #: workers with tasks pinned to them not sent yet (run_on_all, initializer)
        self._pinned_to: dict[WorkerRecord, None] = {}
        #: function id -> microseconds its recent tasks ran (see ``note_run_time``)
        self._run_times: dict[int, float] = {}
        #: function id -> microseconds its latest task ran, any task (a
        #: map's chunk whole; 0 if awaited): whether a task may run long
        #: (``FLAG_FLUSH_FIRST``, ``LONG_TASK_US``)
        self._last_run: dict[int, int] = {}
        #: microseconds the latest task answered ran (``LONG_TASK_US`` for a
        #: chunk or an awaited task): whether the next result is due soon
        self.latest_run = 0

    @property
    def queued(self) -> int:
        """Tasks waiting for a worker (pinned ones not counted)."""
        return len(self._queue) + len(self.inbox)

    def take_inbox(self) -> None:
        """Move the tasks handed over to the queue (and count them active)."""
        inbox, queue, active = self.inbox, self._queue, self._active
        while inbox:
            task = inbox.popleft()
            active[task.id] = task
            queue.append(task)

    def take_queued(self) -> list[Task]:
        """Empty the inbox and the queue; return what they held."""
        self.take_inbox()
        tasks = list(self._queue)
        self._queue.clear()
        return tasks

    def requeue(self, tasks: list[Task]) -> None:
        """Put ``tasks`` back at the head of the queue, in their order."""
        self._queue.extendleft(reversed(tasks))

    def hand_back(self, tasks: list[Task]) -> None:
        """Queue the parts of chunks handed back (``Task.is_piece``) ahead of
        new tasks but behind the parts handed back before them, so that a
        map's results come in order about as soon as they would have."""
        queue = self._queue
        at = 0
        while at < len(queue) and queue[at].is_piece:
            at += 1
        for task in tasks:
            queue.insert(at, task)
            at += 1

    def pin(self, rec: WorkerRecord, task: Task, first: bool = False) -> None:
        """Only ``rec`` may run ``task``; it goes before anything else there
        (``first``: before the tasks pinned to it already)."""
        task.pinned = rec
        if first:
            rec.pinned.appendleft(task)
        else:
            rec.pinned.append(task)
        self._pinned_to[rec] = None

    def unpin(self, rec: WorkerRecord) -> list[Task]:
        """Take back the tasks pinned to ``rec`` and not sent (it is gone)."""
        tasks = list(rec.pinned)
        rec.pinned.clear()
        self._pinned_to.pop(rec, None)
        return tasks

    def dispatch(self) -> bool:
        """Send queued tasks to workers with free credits, idle workers first;
        return whether anything was sent."""
        registry = self._registry
        queue = self._queue
        inbox = self.inbox
        batches: dict[WorkerRecord, list[Task]] = {}
        if self._pinned_to:
            for rec in list(self._pinned_to):
                while rec.pinned and rec.free > 0 and not rec.runs_long:
                    task = rec.pinned.popleft()
                    if self._dropped(task):
                        continue
                    self._assign_one(rec, task, batches)
                if not rec.pinned:
                    del self._pinned_to[rec]
        least_loaded = registry.least_loaded
        while True:
            if inbox:
                self.take_inbox()
            while queue:
                task = queue[0]
                target = registry.idle() if task.suspect else least_loaded()
                if target is None:
                    break
                queue.popleft()
                if self._dropped(task):
                    continue
                if task.may_group and not task.suspect and len(queue) >= registry.ready_capacity:
                    group = self._take_group(task, self._group_limit(target))
                    self._assign_group(target, group, batches)
                else:
                    self._assign_one(target, task, batches)
            # Starving: a credit is free and nothing waits. Submitters wake
            # the loop only then; look at the inbox once more after saying
            # so, or a task handed over meanwhile would wait unseen.
            self.starving = not queue and least_loaded() is not None
            if not (self.starving and inbox):
                break
        if not batches:
            return False
        send, message = self._send, self._task_message
        for rec, tasks in batches.items():
            send(rec, message(rec, tasks))
        return True

    def _dropped(self, task: Task) -> bool:
        """Whether ``task``, about to go to a worker, was cancelled: then it
        ends here. Otherwise its ``claim`` says it runs from now on."""
        claim = task.claim
        if task.cancelled or (claim is not None and not claim()):
            self._finish(task)
            return True
        return False

    def drop_cancelled(self) -> None:
        """End the queued tasks that were cancelled, now rather than when a
        worker is free for them: none may be, and a shutdown waits for them."""
        self.take_inbox()
        queue = self._queue
        if any(task.cancelled for task in queue):
            kept = [task for task in queue if not task.cancelled]
            for task in queue:
                if task.cancelled:
                    self._finish(task)
            queue.clear()
            queue.extend(kept)

    def _assign_one(
        self, rec: WorkerRecord, task: Task, batches: dict[WorkerRecord, list[Task]]
    ) -> None:
        """Send ``task`` to ``rec`` on one credit."""
        if not rec.running:
            rec.busy_since = time.time()
            if self._on_busy is not None:
                self._on_busy(rec)
        rec.running[task.id] = task
        task.worker = rec
        task.group = None
        if task.suspect or self._may_run_long(task):
            rec.exclusive = True
        rec.used += 1
        self._registry.place(rec)
        batch = batches.get(rec)
        if batch is None:
            batches[rec] = [task]
        else:
            batch.append(task)
        if self._max_tasks is not None and task.pinned is None:
            self._count_tasks(rec, 1)

    def _assign_group(
        self, rec: WorkerRecord, tasks: list[Task], batches: dict[WorkerRecord, list[Task]]
    ) -> None:
        """Send ``tasks``, tiny ones of ``_take_group``, to ``rec`` on one
        credit (``_assign_one`` when the group is a single task)."""
        if len(tasks) == 1:
            self._assign_one(rec, tasks[0], batches)
            return
        if not rec.running:
            rec.busy_since = time.time()
            if self._on_busy is not None:
                self._on_busy(rec)
        running = rec.running
        group = [len(tasks)]
        self.grouped_tasks += len(tasks)
        for task in tasks:
            running[task.id] = task
            task.worker = rec
            task.group = group
        rec.used += 1
        self._registry.place(rec)
        batch = batches.get(rec)
        if batch is None:
            batches[rec] = tasks
        else:
            batch.extend(tasks)
        if self._max_tasks is not None:
            self._count_tasks(rec, len(tasks))

    def _count_tasks(self, rec: WorkerRecord, count: int) -> None:
        """``rec`` got ``count`` more tasks: at ``max_tasks`` it takes no
        more (it leaves once it has run them, ``Delivery``), and ``on_spent``
        is told, to start a fresh worker in its place."""
        rec.tasks_given += count
        limit = self._max_tasks
        if limit is not None and rec.tasks_given >= limit and not rec.draining:
            self._registry.drain(rec)
            if any(task.group is not None for task in rec.running.values()):
                rec.spend_pending = True  # they may come back unrun: ``settle``
            elif self._on_spent is not None:
                self._on_spent(rec)

    def settle(self, rec: WorkerRecord) -> None:
        """``rec`` got its last task while it held grouped ones: once they
        are answered, it is spent if it ran them all, or takes tasks again
        if some came back unrun (``uncount``)."""
        if any(task.group is not None for task in rec.running.values()):
            return
        rec.spend_pending = False
        limit = self._max_tasks
        if limit is not None and rec.tasks_given < limit:
            self._registry.undrain(rec)
        elif self._on_spent is not None:
            self._on_spent(rec)

    def uncount(self, rec: WorkerRecord, count: int) -> None:
        """``count`` tasks of a group came back from ``rec`` unrun: they
        count no more."""
        if self._max_tasks is not None:
            rec.tasks_given -= count

    def _group_limit(self, rec: WorkerRecord) -> int | None:
        """The most tasks a group for ``rec`` may hold (None: no limit): one
        fewer than it may still be given. A group's tasks may come back
        unrun, a lone task always runs: so only a lone task takes a worker to
        ``max_tasks``, and a worker leaves having run them all."""
        if self._max_tasks is None:
            return None
        return self._max_tasks - rec.tasks_given - 1

    def _may_run_long(self, task: Task) -> bool:
        """Whether ``task``'s function ran ``LONG_TASK_US`` or longer last
        time, or never ran (pinned tasks aside: each worker gets its own)."""
        took = self._last_run.get(task.func_id)
        return (took is None or took >= LONG_TASK_US) and task.pinned is None

    def _take_group(self, first: Task, limit: int | None) -> list[Task]:
        """``first`` and the tiny tasks queued after it that may share its
        credit (only ``first`` when it is not known to be tiny), ``limit``
        tasks at most, ``first`` always (None: no limit but the group's own).

        A group takes its share of the queue (so that every credit gets
        some), and no more than ``GROUP_TIME_US`` of work as the recent run
        times of the functions tell it. Suspects are never grouped: each
        runs alone, to be blamed alone.
        """
        run_times = self._run_times
        took = run_times.get(first.func_id)
        if took is None or took >= GROUP_BELOW_US:
            return [first]
        queue = self._queue
        share = min(MAX_GROUP, 1 + len(queue) // max(1, self._registry.ready_capacity))
        if limit is not None:
            share = min(share, limit)
        group = [first]
        work = max(took, 1.0)
        while queue and len(group) < share:
            task = queue[0]
            took = run_times.get(task.func_id) if task.may_group and not task.suspect else None
            if took is None or took >= GROUP_BELOW_US or work + took > GROUP_TIME_US:
                break
            queue.popleft()
            if self._dropped(task):
                continue
            group.append(task)
            work += max(took, 1.0)
        return group

    def note_run_time(self, task: Task, elapsed: int, awaited: bool = False) -> None:
        """Keep how long tasks of ``task``'s function run: the latest of any
        (whether the next may run long, ``FLAG_FLUSH_FIRST``) and, from tasks
        that may be grouped, a figure that a slow one raises at once (no more
        grouping) and fast ones lower gradually. A task whose result its
        worker ``awaited`` ran alongside the others there: it never runs long
        in the first sense."""
        func_id = task.func_id
        last_run = self._last_run
        if len(last_run) >= MAX_RUN_TIMES and func_id not in last_run:
            last_run.clear()  # every function in _run_times is in here too
            self._run_times.clear()
        last_run[func_id] = 0 if awaited else elapsed
        # a chunk's wake-up is spread over its inputs; an awaited task's
        # time is what it waited for
        self.latest_run = LONG_TASK_US if awaited or task.flags & p.FLAG_CHUNK else elapsed
        if not task.may_group:
            return
        run_times = self._run_times
        old = run_times.get(func_id)
        if old is None or elapsed >= old:
            run_times[func_id] = elapsed
        else:
            run_times[func_id] = 0.8 * old + 0.2 * elapsed

    def _task_message(self, rec: WorkerRecord, tasks: list[Task]) -> list[Any]:
        """The TASK message that sends ``tasks`` to ``rec``."""
        msg = p.Writer(p.TASK)
        known = rec.known_funcs
        entries = msg.entries
        body = msg.body
        pack = p.TASK_ENTRY.pack
        last_run = self._last_run
        # nothing else in the pool: the caller waits for this one alone
        lone = len(tasks) == 1 and len(self._active) == 1 and not self.inbox
        #: the function of the task before: ``known`` holds it as its newest
        #: already, so using it again would change nothing (a map's tasks)
        newest = None
        for task in tasks:
            if task.refs:
                # before the task's function, as the worker takes them
                self._ref_entries(msg, known, task.refs)
                newest = None
            func_id = task.func_id
            flags = task.flags if task.group is None else task.flags | p.FLAG_GROUPED
            if lone:
                flags |= p.FLAG_LONE
                self.lone_sent = True
            took = last_run.get(func_id)
            flush_first = task.flush_first = took is None or took >= GROUP_BELOW_US
            if flush_first:
                flags |= p.FLAG_FLUSH_FIRST
            func_len = 0
            if func_id != newest and not known.use(func_id):
                flags |= p.FLAG_FUNC
                msg.inline.append(task.func_pickle)
                func_len = len(task.func_pickle)
                known.add(func_id, None, func_len)
            newest = func_id
            buffers = task.buffers
            data_len = body(task.data, buffers)
            entries.append(
                pack(task.id, func_id, flags, func_len, data_len, len(buffers), task.skip)
            )
        return msg.frames_out()

    @staticmethod
    def _ref_entries(msg: p.Writer, known: p.RecentFunctions, refs: Sequence[p.ScriptRef]) -> None:
        """Add the ``FLAG_REF`` entries of a task's script functions: each
        with its pickle if the worker does not hold it (see ``wire.frames``)."""
        pack = p.TASK_ENTRY.pack
        for ref_id, data, buffers, held in refs:
            if known.use(ref_id, ref=True):
                msg.entries.append(pack(0, ref_id, p.FLAG_REF, 0, 0, 0, 0))
            else:
                size = msg.body(data, buffers)
                flags = p.FLAG_REF | p.FLAG_FUNC
                msg.entries.append(pack(0, ref_id, flags, 0, size, len(buffers), held))
                known.add(ref_id, None, held, ref=True)
