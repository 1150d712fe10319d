"""When tasks do not end well: lost and unreachable workers, retries and blame
(``Losses``), tasks that run past ``task_timeout`` (``TaskTimeouts``), and
failing tasks that no worker will run (``Losses.fail``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable

from distex_zmq.errors import TaskTimeoutError, WorkerLostError
from distex_zmq.wire import frames as p

from .dispatch import Dispatcher
from .ledger import Ledger
from .records import INIT_TAG, STATUS_LOCAL_ERROR, BrokerHooks, ResultSink, Task, WorkerRecord
from .registry import Registry

#: Seconds to wait, after a send to a local worker failed, for its supervisor
#: to report how it ended, before the broker gives up on it (``unreachable``;
#: a remote worker gets the pool's ``heartbeat_timeout`` to connect again).
UNREACHABLE_GRACE = 0.5
#: Lost workers whose records ``Losses.lost`` keeps, for ``Pool.status()``.
LOST_KEPT = 32

_logger = logging.getLogger("distex_zmq.broker")


def _killed_its_worker(task: Task, rec: WorkerRecord, how: str, limit: int) -> WorkerLostError:
    """The error of ``task``, which killed its worker ``rec`` (``how`` it
    died) the last of the ``limit + 1`` times it may run. After one death
    it says how to have such a task run again; after several, the task
    itself is to blame."""
    if task.max_retries is None:
        limit_is = f"the pool's max_retries={limit}"
        option = "Pool(max_retries=n)"
    else:  # the joblib backend is the one client that gives a task its own
        limit_is = f"parallel_config's max_retries={limit}"
        option = 'parallel_config(backend="distex_zmq", max_retries=n)'
    if task.tries > 1:
        return WorkerLostError(
            f"{task.describe()} killed its worker each of the last {task.tries} times it "
            f"ran ({limit_is}): the last, {rec}, died: {how}"
        )
    if task.max_retries is not None:
        limit_is += ": joblib runs each batch once"
    return WorkerLostError(
        f"{task.describe()} killed its worker and is not run again ({limit_is}; "
        f"{option} runs such a task up to n times more, each time on another "
        f"worker): {rec} died: {how}"
    )


class Losses:
    """Loses workers and fails tasks, on the pool loop.

    ``dispatch()`` sends what the queue holds to the workers left.
    ``heartbeat_timeout``: how long the pool lets a TCP connection be dead
    unseen (None: TCP's own), which a remote worker whose connection failed
    gets to connect again (no less than ``UNREACHABLE_GRACE``).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        registry: Registry,
        ledger: Ledger,
        dispatcher: Dispatcher,
        dispatch: Callable[[], None],
        hooks: BrokerHooks,
        max_retries: int,
        task_timeout: float | None,
        heartbeat_timeout: float | None = None,
    ):
        self._loop = loop
        self._registry = registry
        self._dispatcher = dispatcher
        self._finish = ledger.finish
        self._dispatch = dispatch
        self._hooks = hooks
        self._max_retries = max_retries
        self._task_timeout = task_timeout
        self._remote_grace = max(UNREACHABLE_GRACE, heartbeat_timeout or 0.0)
        self._closed = False
        #: the most recently lost workers, oldest first
        self.lost: deque[WorkerRecord] = deque(maxlen=LOST_KEPT)
        self.workers_lost = 0
        #: tasks that ran again after their worker died (not those of a lost host)
        self.retried = 0
        #: tasks failed here: lost with their worker, timed out, never run
        self.failed = 0

    def close(self) -> None:
        """Give up on no worker any more (the broker is closed)."""
        self._closed = True

    def fail(self, tasks: Iterable[Task], error_for: Callable[[Task], BaseException]) -> None:
        """End ``tasks`` with the error ``error_for(task)`` each, those that
        were not cancelled; initializer tasks end without a word."""
        sinks: set[ResultSink] = set()
        for task in tasks:
            self._finish(task)
            if not task.cancelled and task.tag is not INIT_TAG:
                self.failed += 1
                task.sink.deliver(task, STATUS_LOCAL_ERROR, error_for(task))
                sinks.add(task.sink)
        for sink in sinks:
            sink.flush(urgent=True)

    def worker_lost(
        self,
        rec: WorkerRecord,
        how: str,
        timed_out: Task | None = None,
        blameless: bool = False,
    ) -> None:
        """Forget a worker that is gone; requeue or fail what it was running.

        A worker that dies with one task was killed by it: the task counts a
        try, and fails with ``WorkerLostError`` once it has used up
        ``max_retries``; a chunk's inputs then run one per task
        (``FLAG_ONE_BY_ONE``), so that only the input to blame fails. A
        worker that dies with several tasks, cancelled ones too (they may
        have killed it), leaves the blame open: they go back to the front of
        the queue as suspects, each to run alone, so that a second death
        names the task that caused it.
        A ``timed_out`` task fails with ``TaskTimeoutError`` and is not retried.
        ``blameless``: the worker was cut off with its host, which no task
        caused; its tasks go back to the queue as they were.
        """
        registry = self._registry
        if registry.get(rec.identity) is not rec:
            return
        registry.remove(rec)
        self.lost.append(rec)
        self.workers_lost += 1
        # a cancelled task it held may have killed it as well as another:
        # counted here, although it runs no more
        alone = len(rec.running) == 1
        tasks = []
        for task in rec.running.values():
            if task.cancelled:
                self._finish(task)
            else:
                tasks.append(task)
        rec.running.clear()
        rec.used = 0
        errors: dict[Task, BaseException] = {}
        requeue = []
        for task in tasks:
            task.worker = None
            task.group = None
            error = self._verdict(task, rec, how, timed_out, blameless, alone)
            if error is None:
                requeue.append(task)
            else:
                error.set_origin(rec.host, rec.pid)
                errors[task] = error
        for task in self._dispatcher.unpin(rec):
            error = WorkerLostError(f"{task.describe()} was lost: {rec} died: {how}")
            error.set_origin(rec.host, rec.pid)
            errors[task] = error
        if not blameless:
            self.retried += len(requeue)
        self.fail(errors, errors.__getitem__)
        for task in tasks:
            if task.tag is INIT_TAG:  # it ran there: its worker may not run others
                self._hooks.on_init_failed(rec, STATUS_LOCAL_ERROR, errors[task])
        self._dispatcher.requeue(requeue)
        failed = len(tasks) - len(requeue)
        # what became of its tasks before how it was lost, which may end
        # with the worker's last lines of stderr
        _logger.log(
            logging.DEBUG if blameless else logging.WARNING,
            "%s was lost (%s): %s",
            rec,
            f"of its tasks, {len(requeue)} will run again and {failed} failed"
            if tasks
            else "it was running no task",
            how,
        )
        self._dispatch()

    def withdraw(self, rec: WorkerRecord, why: str) -> None:
        """Take ``rec`` out of the pool at once, without blame: the tasks it
        runs go back to the head of the queue as they were (no try counted),
        its initializer ends without a word, and a task pinned to it
        (``run_on_all``) fails with ``WorkerLostError`` saying ``why``."""
        self._registry.remove(rec)
        requeue = []
        errors: dict[Task, BaseException] = {}
        for task in [*rec.running.values(), *self._dispatcher.unpin(rec)]:
            task.worker = None
            task.group = None
            if task.cancelled or task.tag is INIT_TAG:
                self._finish(task)
            elif task.pinned is not None:
                errors[task] = WorkerLostError(f"{task.describe()} did not finish: {rec} {why}")
            else:
                requeue.append(task)
        rec.running.clear()
        rec.used = 0
        self.fail(errors, errors.__getitem__)
        self._dispatcher.requeue(requeue)
        _logger.debug("%s %s; %d of its tasks will run elsewhere", rec, why, len(requeue))
        self._dispatch()

    def _verdict(
        self,
        task: Task,
        rec: WorkerRecord,
        how: str,
        timed_out: Task | None,
        blameless: bool,
        alone: bool,
    ) -> WorkerLostError | TaskTimeoutError | None:
        """The error ``task`` fails with, as its worker is lost; None: it runs again."""
        if task is timed_out:
            return TaskTimeoutError(
                f"{task.describe()} ran longer than task_timeout={self._task_timeout} s "
                f"on {rec}, which was killed; the task is not retried"
            )
        if task.pinned is not None:
            return WorkerLostError(f"{task.describe()} was lost: {rec} died: {how}")
        if blameless:
            return None
        if alone or task.suspect:
            task.tries += 1
            limit = self._max_retries if task.max_retries is None else task.max_retries
            if task.tries > limit:
                return _killed_its_worker(task, rec, how, limit)
            if task.flags & p.FLAG_CHUNK:
                # which of its inputs killed the worker is not known: they
                # run again one per task (each counts the try), so that the
                # next death names the input, and the others run as usual
                task.flags |= p.FLAG_ONE_BY_ONE
            return None
        task.suspect = True
        return None

    def unreachable(self, rec: WorkerRecord, how: str) -> None:
        """The worker's connection is gone: it gets nothing more.

        If it died, its supervisor reports how in a moment (exit code or
        signal, its last stderr lines), which says more than ``how``: that
        report hands it to ``worker_lost``. If its TCP connection dropped
        and ZeroMQ connects it again, its ``SYNC`` comes (``reconnected``).
        If neither comes within the grace, it lives on without a connection:
        it is lost now, and ``BrokerHooks.on_unreachable`` has it killed and
        replaced. A local worker's grace is ``UNREACHABLE_GRACE``: its
        connection drops only with its process, whose exit is reported at
        once. A remote worker's is ``heartbeat_timeout``: its network may
        be down for a while, as long as the pool lets a connection be dead
        unseen, and ZeroMQ connects again once it is back.
        """
        if rec.unreachable:
            return
        rec.unreachable = True
        self._registry.place(rec)
        grace = self._remote_grace if rec.remote else UNREACHABLE_GRACE
        _logger.warning(
            "could not send to %s: %s; it is given up on unless it connects again within %g s",
            rec,
            how,
            grace,
        )
        sync_round = rec.sync_round

        def give_up() -> None:
            if (
                not self._closed
                and self._registry.get(rec.identity) is rec
                and rec.sync_round == sync_round
            ):
                self._hooks.on_unreachable(rec)
                self.worker_lost(rec, how)

        self._loop.call_later(grace, give_up)

    def reconnected(self, rec: WorkerRecord) -> None:
        """``rec``'s connection dropped and came back (its ``SYNC``): a send
        to it that failed meanwhile does not cut it off; what it lost is
        settled by ``CHECK`` (``Broker._check``)."""
        if rec.unreachable:
            rec.unreachable = False
            self._registry.place(rec)
            _logger.info("%s can be reached again", rec)


class TaskTimeouts:
    """Watches for workers whose oldest task runs past ``limit`` seconds and
    reports them to ``BrokerHooks.on_task_timeout``.

    Time during which the pool loop did not run (the client stopped by
    Ctrl-Z, a debugger or a suspended VM, or a loop held up) counts for no
    task: the results that came in meanwhile wait unread in the socket, so
    a task that ended in time would look like one that ran on. A check that
    comes late moves the start of every running task forward by as much.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        registry: Registry,
        limit: float,
        hooks: BrokerHooks,
    ):
        self._loop = loop
        self._registry = registry
        self.limit = limit
        self._hooks = hooks
        self._timer: asyncio.TimerHandle | None = None
        #: when the next check is due (``time.monotonic()``)
        self._due = 0.0
        self._closed = False

    def started(self, rec: WorkerRecord) -> None:
        """``rec`` starts a task about now: the one it runs next, or its first."""
        rec.head_since = time.monotonic()
        self._watch()

    def _watch(self) -> None:
        if self._timer is None and not self._closed:
            interval = min(max(self.limit / 4, 0.01), 0.5)
            self._due = time.monotonic() + interval
            self._timer = self._loop.call_later(interval, self._check)

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        self._timer = None
        if self._closed:
            return
        now = time.monotonic()
        late = now - self._due
        busy = False
        for rec in list(self._registry.workers.values()):
            if not rec.running or not rec.ready:
                continue
            if late > 0:
                rec.head_since += late
            if now - rec.head_since > self.limit:
                self._hooks.on_task_timeout(rec, self._running_task(rec))
            else:
                busy = True
        if busy:
            self._watch()

    @staticmethod
    def _running_task(rec: WorkerRecord) -> Task | None:
        """The task ``rec`` runs now, if that is known; else None.

        The oldest unanswered task runs, unless it is done and its result
        waits in the worker while the next one runs: a worker sends the
        results of a batch together. It does not hold them past a task sent
        with ``FLAG_FLUSH_FIRST``, so the oldest runs if the next has the flag.
        """
        tasks = iter(rec.running.values())
        oldest = next(tasks)
        following = next(tasks, None)
        return oldest if following is None or following.flush_first else None
