"""The broker: a ROUTER socket that hands tasks to workers as credits allow.

::

    caller threads                     pool loop (this module)
    --------------                     -----------------------
    Task (pickled) --submit()--> inbox --> queue --dispatch()--> ROUTER --> workers
                                                                   |
    sinks <--flush() once per batch-- deliver() <-- running <------+ RESULT

Only the pool loop touches the socket, the queue and the registry. Other
threads hand over tasks with ``submit`` (a deque append and at most one
wake-up per batch) and cancel with ``Task.cancelled``. The broker never
unpickles a task or a result: it routes on headers only.

A task takes one credit of its worker, except that tiny tasks from
``submit`` and ``run_async`` that queue up behind busy credits share one
(``_take_group``): what the broker knows of a function's run time comes
from the run times that workers report with each result.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import zmq

from distex_zmq.errors import PoolClosedError, ProtocolError, TaskTimeoutError, WorkerLostError
from distex_zmq.security import KeyPair, make_server
from distex_zmq.wire import frames as p
from distex_zmq.wire.zmqio import readable, recv_frames, send_frames

from .registry import Registry, WorkerRecord
from .task import ResultSink, Task

#: Status of a result made by the broker itself (never on the wire): the
#: value is an exception instance.
STATUS_LOCAL_ERROR = 255

#: Messages read per wake-up before giving other callbacks a turn.
MAX_READS_PER_WAKEUP = 256
#: Seconds to wait, after a send to a worker failed, for its supervisor to
#: report how it ended, before the broker gives up on it (``_unreachable``).
UNREACHABLE_GRACE = 0.5

# Grouping: queued tasks that may be grouped (``Task.may_group``) and whose
# function ran for less than GROUP_BELOW_US in its recent tasks share one
# credit, up to GROUP_TIME_US of work and MAX_GROUP tasks. It happens only
# when more tasks wait than the workers have credits, and spares a round trip
# per task: with qsize=2, 20,000 tiny tasks submitted at once otherwise cost
# 10,000 round trips. Run times are a guess from the past: a worker that finds
# a grouped task slow gives back the later ones of its function (they go back
# to the head of the queue) instead of running them one after the other.
GROUP_BELOW_US = p.GROUP_BELOW_US
GROUP_TIME_US = 2000
MAX_GROUP = 256
#: Functions whose run times the broker keeps (it forgets them all beyond).
MAX_RUN_TIMES = 10_000

_logger = logging.getLogger("distex_zmq.broker")


class Broker:
    """Routes tasks to workers and results back to their sinks.

    Hooks (set by the pool):

    - ``on_hello(rec)``: a worker connected; return an initializer task to
      pin to it, or ``None`` to make it ready at once.
    - ``on_ready(rec)`` / ``on_init_failed(rec, status, value)``.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        ctx: zmq.Context[Any],
        max_retries: int,
        task_timeout: float | None = None,
    ):
        self.loop = loop
        self.registry = Registry()
        self.max_retries = max_retries
        #: seconds a task may run before its worker is killed (None: no limit)
        self.task_timeout = task_timeout
        #: tasks submitted and not finished, by id
        self.active: dict[int, Task] = {}
        self.on_hello: Callable[[WorkerRecord], Task | None] = lambda rec: None
        self.on_ready: Callable[[WorkerRecord], None] = lambda rec: None
        self.on_init_failed: Callable[[WorkerRecord, int, Any], None] = lambda *a: None
        #: a worker lost its connection but not its life: kill and replace it
        self.on_unreachable: Callable[[WorkerRecord], None] = lambda rec: None
        #: a worker ran past ``task_timeout``: kill it, then call ``worker_lost``
        #: with the task to blame, or None when which one runs is not known
        self.on_task_timeout: Callable[[WorkerRecord, Task | None], None] = lambda rec, task: None
        self._timeout_timer: asyncio.TimerHandle | None = None
        self._inbox: deque[Task] = deque()
        self._queue: deque[Task] = deque()
        #: workers with tasks pinned to them not sent yet (run_on_all, initializer)
        self._pinned_to: dict[WorkerRecord, None] = {}
        #: function id -> microseconds its recent tasks ran (see ``_note_run_time``)
        self._run_times: dict[int, float] = {}
        #: function id -> microseconds its latest task ran, any task (a
        #: map's chunk whole): whether a task may run long (``FLAG_FLUSH_FIRST``)
        self._last_run: dict[int, int] = {}
        #: tasks sent in groups that shared a credit, since the start
        self.grouped_tasks = 0
        self._wake_pending = False
        self._starving = True
        self._stopping = False
        self._expected: set[bytes] = set()
        self._barriers: list[_Barrier] = []
        self._closed = False
        self._ctx = ctx
        self._sock: zmq.Socket[Any] | None = None  # made on the pool loop by bind()
        self.endpoints: list[str] = []

    # set-up and tear-down (pool loop)

    def bind(self, endpoint: str, curve: KeyPair | None = None) -> str:
        """Bind the socket; return the endpoint with the port actually taken.

        With ``curve`` keys the endpoint is a CURVE server: encrypted, and
        open only to the clients that the context's ZAP handler admits.
        Options apply to the endpoints bound after them, so plain endpoints
        must be bound first.
        """
        if self._sock is None:
            self._sock = self._ctx.socket(zmq.ROUTER)
            self._sock.setsockopt(zmq.LINGER, 0)
            self._sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            self._fd = int(self._sock.getsockopt(zmq.FD))
            self.loop.add_reader(self._fd, self._on_readable)
        if curve is not None:
            make_server(self._sock, curve)
        elif self._sock.getsockopt(zmq.CURVE_SERVER):
            raise ValueError("bind plain endpoints before CURVE ones")
        if endpoint.startswith("tcp://") and endpoint.endswith(":0"):
            port = self._sock.bind_to_random_port(endpoint.rsplit(":", 1)[0])
            endpoint = f"{endpoint.rsplit(':', 1)[0]}:{port}"
        else:
            self._sock.bind(endpoint)
        self.endpoints.append(endpoint)
        return endpoint

    def expect(self, identity: bytes) -> None:
        """Admit a worker with this identity (given to it by its launcher)."""
        self._expected.add(identity)

    def forget(self, identity: bytes) -> None:
        """Admit this identity no more (its worker will never connect)."""
        self._expected.discard(identity)

    def close(self, error_factory: Callable[[Task], BaseException]) -> None:
        """Close the socket; fail every task not finished (pool loop)."""
        if self._closed:
            return
        # Closed first: a submitter that appends after the inbox is taken
        # below sees the flag and raises instead of waiting forever.
        self._closed = True
        if self._timeout_timer is not None:
            self._timeout_timer.cancel()
        self._take_inbox()
        tasks = list(self.active.values())
        self.active.clear()
        self._queue.clear()
        sinks: set[ResultSink] = set()
        for task in tasks:
            if not task.cancelled and task.tag is not INIT_TAG:
                task.sink.deliver(task, STATUS_LOCAL_ERROR, error_factory(task))
                sinks.add(task.sink)
        _flush_now(sinks)
        if self._sock is not None:
            self.loop.remove_reader(self._fd)
            self._sock.close(linger=0)

    # any thread

    def submit(self, tasks: Iterable[Task]) -> None:
        """Queue tasks (thread-safe); they are dispatched on the pool loop.

        The pool loop is woken only when it waits for work: while every
        credit is in use it takes the new tasks when the next result comes
        in, which spares a thread wake-up per batch.
        """
        self._inbox.extend(tasks)
        if self._closed:
            raise PoolClosedError("the pool was shut down; create a new Pool")
        if self._starving:
            self.wake()

    def wake(self) -> None:
        """Make the pool loop look at the inbox and the cancelled tasks."""
        if not self._wake_pending:
            self._wake_pending = True
            try:
                self.loop.call_soon_threadsafe(self._on_wake)
            except RuntimeError:  # loop closed: the pool is gone
                pass

    # pool loop

    def _on_wake(self) -> None:
        self._wake_pending = False
        self.dispatch()

    def _take_inbox(self) -> None:
        inbox, queue, active = self._inbox, self._queue, self.active
        while inbox:
            task = inbox.popleft()
            active[task.id] = task
            queue.append(task)

    def dispatch(self) -> None:
        """Send queued tasks to workers with free credits, idle workers first."""
        if self._closed or self._sock is None:
            return
        registry = self.registry
        queue = self._queue
        batches: dict[WorkerRecord, list[Task]] = {}
        for rec in list(self._pinned_to):
            while rec.pinned and rec.free > 0:
                task = rec.pinned.popleft()
                if task.cancelled:
                    self._finish(task)
                    continue
                self._assign(rec, [task], batches)
            if not rec.pinned:
                del self._pinned_to[rec]
        while True:
            self._take_inbox()
            while queue:
                task = queue[0]
                target = registry.idle() if task.suspect else registry.least_loaded()
                if target is None:
                    break
                queue.popleft()
                if task.cancelled:
                    self._finish(task)
                    continue
                if task.may_group and not task.suspect and len(queue) >= registry.ready_capacity:
                    self._assign(target, self._take_group(task), batches)
                else:
                    self._assign(target, [task], batches)
            # Starving: a credit is free and nothing waits. Submitters wake
            # the loop only then; look at the inbox once more after saying
            # so, or a task handed over meanwhile would wait unseen.
            self._starving = not queue and registry.least_loaded() is not None
            if not (self._starving and self._inbox):
                break
        for rec, tasks in batches.items():
            self._send_tasks(rec, tasks)
        if batches:
            self._read_soon_if_pending()

    def _assign(
        self, rec: WorkerRecord, tasks: list[Task], batches: dict[WorkerRecord, list[Task]]
    ) -> None:
        """Send ``tasks`` to ``rec`` on one credit: a task, or a group of tiny ones."""
        if not rec.running and self.task_timeout is not None:
            rec.head_since = time.monotonic()
            self._watch_timeouts()
        running = rec.running
        group = None
        if len(tasks) > 1:
            group = [len(tasks)]
            self.grouped_tasks += len(tasks)
        for task in tasks:
            running[task.id] = task
            task.worker = rec
            task.group = group
            if task.suspect:
                rec.exclusive = True
        rec.used += 1
        self.registry.place(rec)
        batch = batches.get(rec)
        if batch is None:
            batches[rec] = tasks
        else:
            batch.extend(tasks)

    def _take_group(self, first: Task) -> list[Task]:
        """``first`` and the tiny tasks queued after it that may share its
        credit (only ``first`` when it is not known to be tiny).

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
        share = min(MAX_GROUP, 1 + len(queue) // max(1, self.registry.ready_capacity))
        group = [first]
        work = max(took, 1.0)
        while queue and len(group) < share:
            task = queue[0]
            took = run_times.get(task.func_id) if task.may_group and not task.suspect else None
            if took is None or took >= GROUP_BELOW_US or work + took > GROUP_TIME_US:
                break
            queue.popleft()
            if task.cancelled:
                self._finish(task)
                continue
            group.append(task)
            work += max(took, 1.0)
        return group

    def _note_run_time(self, task: Task, elapsed: int) -> None:
        """Keep how long tasks of ``task``'s function run: the latest of any
        (whether the next may run long, ``FLAG_FLUSH_FIRST``) and, from tasks
        that may be grouped, a figure that a slow one raises at once (no more
        grouping) and fast ones lower gradually."""
        func_id = task.func_id
        last_run = self._last_run
        if len(last_run) >= MAX_RUN_TIMES and func_id not in last_run:
            last_run.clear()  # every function in _run_times is in here too
            self._run_times.clear()
        last_run[func_id] = elapsed
        if not task.may_group:
            return
        run_times = self._run_times
        old = run_times.get(func_id)
        if old is None or elapsed >= old:
            run_times[func_id] = elapsed
        else:
            run_times[func_id] = 0.8 * old + 0.2 * elapsed

    def _send_tasks(self, rec: WorkerRecord, tasks: list[Task]) -> None:
        msg = p.Writer(p.TASK)
        known = rec.known_funcs
        pack = p.TASK_ENTRY.pack
        last_run = self._last_run
        # nothing else in the pool: the caller waits for this one alone
        lone = len(tasks) == 1 and len(self.active) == 1 and not self._inbox
        for task in tasks:
            flags = task.flags if task.group is None else task.flags | p.FLAG_GROUPED
            if lone:
                flags |= p.FLAG_LONE
            took = last_run.get(task.func_id)
            task.flush_first = took is None or took >= GROUP_BELOW_US
            if task.flush_first:
                flags |= p.FLAG_FLUSH_FIRST
            func_len = 0
            if not known.use(task.func_id):
                flags |= p.FLAG_FUNC
                msg.inline.append(task.func_pickle)
                func_len = len(task.func_pickle)
                known.add(task.func_id, None, func_len)
            data_len = msg.body(task.data, task.buffers)
            msg.entries.append(
                pack(task.id, task.func_id, flags, func_len, data_len, len(task.buffers))
            )
        self._send(rec, msg.frames_out())

    def _send(self, rec: WorkerRecord, frames: list[Any]) -> None:
        assert self._sock is not None
        try:
            send_frames(self._sock, [rec.identity, *frames])
        except zmq.ZMQError as e:
            self._unreachable(rec, f"its connection failed ({e})")

    def _unreachable(self, rec: WorkerRecord, how: str) -> None:
        """The worker's connection is gone: it gets nothing more.

        If it died, its supervisor reports how in a moment (exit code or
        signal, its last stderr lines), which says more than ``how``: that
        report hands it to ``worker_lost``. If none comes within
        ``UNREACHABLE_GRACE``, it lives on without a connection: it is lost
        now, and ``on_unreachable`` has it killed and replaced.
        """
        if rec.unreachable:
            return
        rec.unreachable = True
        self.registry.place(rec)
        _logger.warning("could not send to %s: %s", rec, how)

        def give_up() -> None:
            if not self._closed and self.registry.get(rec.identity) is rec:
                self.on_unreachable(rec)
                self.worker_lost(rec, how)

        self.loop.call_later(UNREACHABLE_GRACE, give_up)

    def _read_soon_if_pending(self) -> None:
        # the socket's FD is edge-triggered and a send can consume the edge
        if self._sock is not None and readable(self._sock):
            self.loop.call_soon(self._on_readable)

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None or self._closed:
            return
        for _ in range(MAX_READS_PER_WAKEUP):
            if not readable(sock):
                return
            frames = recv_frames(sock)
            if len(frames) < 2:
                continue
            identity = frames[0].bytes
            try:
                self._handle(identity, frames[1:])
            except ProtocolError as e:
                _logger.warning("dropped a message from %r: %s", identity, e)
                if "version" in str(e):
                    self._refuse(identity, str(e))
            except Exception:
                _logger.exception("error handling a message from %r", identity)
            if self._closed:
                return
        self.loop.call_soon(self._on_readable)

    def _handle(self, identity: bytes, frames: list[Any]) -> None:
        kind, count, buf = p.check(frames[0])
        rec = self.registry.get(identity)
        if kind == p.RESULT:
            if rec is None:
                raise ProtocolError("result from an unknown worker")
            self._on_results(rec, buf, count, frames)
        elif kind == p.HELLO:
            self._on_hello(identity, buf)
        elif kind == p.BYE:
            if rec is not None:
                self.worker_lost(rec, "it said goodbye")
        else:
            raise ProtocolError(f"unknown message type {kind!r}")

    def _refuse(self, identity: bytes, reason: str) -> None:
        if self._sock is None:
            return
        try:
            self._sock.send_multipart([identity, *p.control(p.REFUSE, reason.encode())])
        except zmq.ZMQError:
            pass

    def _on_hello(self, identity: bytes, buf: memoryview) -> None:
        if self._stopping and self._sock is not None:
            self._sock.send_multipart([identity, *p.control(p.STOP)])
            return
        if identity not in self._expected:
            self._refuse(identity, "unknown worker identity")
            raise ProtocolError("hello from a worker this pool did not start")
        if identity in self.registry.workers:
            raise ProtocolError("second hello from a connected worker")
        info = p.json_body(buf)
        try:
            pid, host, credits = int(info["pid"]), str(info["host"]), int(info["credits"])
        except (KeyError, TypeError, ValueError):
            raise ProtocolError(f"malformed hello {info!r}") from None
        if not 0 < credits <= 1 << 16:
            raise ProtocolError(f"hello with bad credits {credits}")
        rec = WorkerRecord(identity, pid, host, credits, info)
        self.registry.add(rec)
        _logger.debug("hello from %s, %d credits", rec, credits)
        init = self.on_hello(rec)
        if init is None:
            self._make_ready(rec)
        else:
            init.pinned = rec
            rec.pinned.append(init)
            self._pinned_to[rec] = None
            self.dispatch()

    def _make_ready(self, rec: WorkerRecord) -> None:
        self.registry.set_ready(rec)
        self.on_ready(rec)
        self.dispatch()

    def _on_results(
        self, rec: WorkerRecord, buf: memoryview, count: int, frames: list[Any]
    ) -> None:
        sinks: set[ResultSink] = set()
        running = rec.running
        returned: list[Task] = []
        reader = p.Reader(buf, p.body(buf, count, p.RESULT_ENTRY), frames)
        for task_id, status, elapsed, data_len, nbuffers in p.result_entries(buf, count):
            data, buffers = reader.data(data_len, nbuffers)
            value = (data, buffers, elapsed)
            task = running.pop(task_id, None)
            if task is None:
                _logger.warning("result for unknown task %d from %s", task_id, rec)
                continue
            task.worker = None
            group = task.group
            if group is None:
                rec.used -= 1
            else:
                task.group = None
                group[0] -= 1
                if not group[0]:
                    rec.used -= 1
            if status == p.STATUS_RETURNED:
                if task.cancelled:
                    self._finish(task)
                else:
                    returned.append(task)
                continue
            self._note_run_time(task, elapsed)
            self._finish(task)
            if task.tag is INIT_TAG and task.pinned is rec:
                if status == p.STATUS_OK:
                    self._make_ready(rec)
                else:
                    self.on_init_failed(rec, status, value)
                continue
            if not task.cancelled:
                task.sink.deliver(task, status, value)
                sinks.add(task.sink)
        if returned:
            # given back unrun, ahead of everything that came later
            self._queue.extendleft(reversed(returned))
        if not running:
            rec.exclusive = False
        elif self.task_timeout is not None:
            rec.head_since = time.monotonic()  # the next task starts about now
        self.registry.place(rec)
        self.dispatch()
        for sink in sinks:
            sink.flush()

    def _finish(self, task: Task) -> None:
        self.active.pop(task.id, None)
        # a future holds its task: it must not hold the payload too (the
        # buffers are views of the caller's objects, which they keep alive)
        task.func_pickle = task.data = b""
        task.buffers = []
        if self._barriers:
            for barrier in self._barriers:
                barrier.discard(task.id)
            self._fire_barriers()

    # losing workers

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
        ``max_retries``. A worker that dies with several tasks leaves the
        blame open: they go back to the front of the queue as suspects, each
        to run alone, so that a second death names the task that caused it.
        A ``timed_out`` task fails with ``TaskTimeoutError`` and is not retried.
        ``blameless``: the worker was cut off with its host, which no task
        caused; its tasks go back to the queue as they were.
        """
        if self.registry.get(rec.identity) is not rec:
            return
        self.registry.remove(rec)
        self._expected.discard(rec.identity)
        tasks = []
        for task in rec.running.values():
            if task.cancelled:
                self._finish(task)
            else:
                tasks.append(task)
        rec.running.clear()
        rec.used = 0
        sinks: set[ResultSink] = set()
        requeue = []
        for task in tasks:
            task.worker = None
            task.group = None
            error: BaseException | None = None
            if task is timed_out:
                error = TaskTimeoutError(
                    f"{task.describe()} ran longer than task_timeout={self.task_timeout} s "
                    f"on {rec}, which was killed; the task is not retried"
                )
            elif task.pinned is not None:
                error = WorkerLostError(f"{task.describe()} was lost: {rec} died: {how}")
            elif blameless:
                pass
            elif len(tasks) == 1 or task.suspect:
                task.tries += 1
                if task.tries > self.max_retries:
                    error = WorkerLostError(
                        f"{task.describe()} killed its worker {task.tries} times "
                        f"(max_retries={self.max_retries}); the last: {rec} died: {how}"
                    )
            else:
                task.suspect = True
            if error is None:
                requeue.append(task)
                continue
            self._finish(task)
            if task.tag is INIT_TAG:
                self.on_init_failed(rec, STATUS_LOCAL_ERROR, error)
            else:
                task.sink.deliver(task, STATUS_LOCAL_ERROR, error)
                sinks.add(task.sink)
        for task in rec.pinned:
            self._finish(task)
            if task.tag is not INIT_TAG and not task.cancelled:
                error = WorkerLostError(f"{task.describe()} was lost: {rec} died: {how}")
                task.sink.deliver(task, STATUS_LOCAL_ERROR, error)
                sinks.add(task.sink)
        rec.pinned.clear()
        self._pinned_to.pop(rec, None)
        self._queue.extendleft(reversed(requeue))
        failed = len(tasks) - len(requeue)
        _logger.log(
            logging.DEBUG if blameless else logging.WARNING,
            "%s was lost: %s; %s",
            rec,
            how,
            f"of its tasks, {len(requeue)} will run again and {failed} failed"
            if tasks
            else "it was running no task",
        )
        self.dispatch()
        _flush_now(sinks)

    def _watch_timeouts(self) -> None:
        if self._timeout_timer is None and self.task_timeout is not None:
            interval = min(max(self.task_timeout / 4, 0.01), 0.5)
            self._timeout_timer = self.loop.call_later(interval, self._check_timeouts)

    def _check_timeouts(self) -> None:
        self._timeout_timer = None
        if self._closed or self.task_timeout is None:
            return
        now = time.monotonic()
        busy = False
        for rec in list(self.registry.workers.values()):
            if not rec.running or not rec.ready:
                continue
            if now - rec.head_since > self.task_timeout:
                self.on_task_timeout(rec, self._running_task(rec))
            else:
                busy = True
        if busy:
            self._watch_timeouts()

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

    def fail_all(self, error_factory: Callable[[Task], BaseException]) -> None:
        """Fail every task that waits in the queue (no worker can run them)."""
        self._take_inbox()
        sinks: set[ResultSink] = set()
        while self._queue:
            task = self._queue.popleft()
            self._finish(task)
            if not task.cancelled:
                task.sink.deliver(task, STATUS_LOCAL_ERROR, error_factory(task))
                sinks.add(task.sink)
        _flush_now(sinks)

    # barriers: run_on_all and shutdown wait for what was submitted before them

    def when_drained(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once every task submitted so far has finished."""
        self._take_inbox()
        self.dispatch()
        barrier = _Barrier(self.active, callback)
        self._barriers.append(barrier)
        self._fire_barriers()

    def _fire_barriers(self) -> None:
        done = [b for b in self._barriers if not b.waiting]
        if done:
            self._barriers = [b for b in self._barriers if b.waiting]
            for barrier in done:
                barrier.callback()

    def pin_to_all(self, make_task: Callable[[WorkerRecord], Task]) -> list[Task]:
        """Give each ready worker a task of its own; return the tasks."""
        tasks = []
        for rec in self.registry.ready_workers():
            task = make_task(rec)
            task.pinned = rec
            rec.pinned.append(task)
            self._pinned_to[rec] = None
            self.active[task.id] = task
            tasks.append(task)
        self.dispatch()
        return tasks

    def stop_workers(self) -> None:
        """Ask every worker to finish and exit, and those that connect later."""
        self._stopping = True
        if self._sock is None:
            return
        for rec in list(self.registry.workers.values()):
            try:
                self._sock.send_multipart([rec.identity, *p.control(p.STOP)])
            except zmq.ZMQError:
                pass


def _flush_now(sinks: Iterable[ResultSink]) -> None:
    """Flush without the delay a sink may add: errors that end waits."""
    for sink in sinks:
        wake_now = getattr(sink, "wake_now", None)
        (wake_now or sink.flush)()


#: ``Task.tag`` of an initializer task.
INIT_TAG = object()


class _Barrier:
    __slots__ = ("waiting", "callback")

    def __init__(self, active: dict[int, Task], callback: Callable[[], None]):
        self.waiting = set(active)
        self.callback = callback

    def discard(self, task_id: int) -> None:
        self.waiting.discard(task_id)
