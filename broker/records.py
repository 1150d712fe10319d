"""What the broker keeps and whom it talks to: ``Task``, ``WorkerRecord``, the
sentinels, and the interfaces of its users (``ResultSink``, ``BrokerHooks``).

Every other module of the broker builds on this one; it imports none of them.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from distex_zmq.wire import frames as p
from distex_zmq.wire.frames import RecentFunctions

#: Status of a result made by the broker itself (never on the wire): the
#: value is an exception instance.
STATUS_LOCAL_ERROR = 255

#: ``Task.tag`` of an initializer task: the broker reports its end to
#: ``BrokerHooks.on_init_failed`` or makes the worker ready, not to a sink.
INIT_TAG: Any = object()


class ResultSink(Protocol):
    """Receives results on the pool loop; ``flush`` ends a batch of them."""

    def deliver(self, task: Task, status: int, value: Any) -> None:
        """``value`` is ``(pickle, buffers, microseconds it ran)`` as received, or
        an exception made locally."""

    def flush(self, urgent: bool = False) -> None:
        """Wake whoever waits for the results delivered since the last flush.

        ``urgent``: errors that end waits (lost workers, a closing pool): wake
        at once, without any delay the sink may add to batch wake-ups."""


class InitNotSent(Exception):
    """Raised by ``BrokerHooks.on_hello``: the initializer task could not be
    made (it does not pickle), and the pool was told; the worker is not
    made ready."""


class BrokerHooks(Protocol):
    """What the broker asks of the pool that runs it (on the pool loop)."""

    def on_hello(self, rec: WorkerRecord) -> Task | None:
        """A worker connected: an initializer task to pin to it (tagged
        ``INIT_TAG``), or None to make it ready at once; ``InitNotSent``
        if the initializer cannot be sent."""

    def on_ready(self, rec: WorkerRecord) -> None:
        """The worker may take any task now."""

    def on_init_failed(self, rec: WorkerRecord, status: int, value: Any) -> None:
        """The worker's initializer raised or was lost (``value`` as in
        ``ResultSink.deliver``)."""

    def on_unreachable(self, rec: WorkerRecord) -> None:
        """The worker lost its connection but not its life: kill and replace it
        (the broker then counts it lost)."""

    def on_log(self, rec: WorkerRecord, body: bytes) -> int:
        """The worker sent a log record: a ``LOG`` body, as it came (JSON,
        see ``wire/frames.py``). Return its ticket: the worker's results
        that come after it wait until ``logs_handled()`` reaches it."""

    def read_output(self, rec: WorkerRecord) -> bool:
        """Read what the worker (one that wrote output lately, ``prints``)
        wrote and was not read yet, now: its results came, and the lines its
        tasks wrote before them (on this machine) go before them
        (``Broker.note_output``). Whether there was any."""

    def logs_handled(self) -> int:
        """How far the records have been handled (a ticket of ``on_log``)."""

    def when_logs_handled(self, ticket: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` on the pool loop once ``logs_handled()`` reaches
        ``ticket``, or once no record will be handled any more."""

    def on_task_timeout(self, rec: WorkerRecord, task: Task | None) -> None:
        """The worker ran past ``task_timeout``: kill it, then call
        ``Broker.worker_lost`` with the task to blame (None: not known)."""

    def on_spent(self, rec: WorkerRecord) -> None:
        """The worker has been given ``max_tasks_per_child`` tasks: it takes
        no more and gets STOP once they are done; start a fresh one in its
        place (only called with ``max_tasks_per_child``)."""

    def on_stopped(self, rec: WorkerRecord) -> None:
        """The worker leaves the running pool (a renewal, a retire): it got
        STOP, its tasks done, and is to exit now (only called for those)."""


class Task:
    """One unit of work: a function call, or a chunk of calls of one function.

    Made in the caller's thread with its payload already pickled; after
    ``Broker.submit`` only the pool loop touches it, except ``cancelled``,
    which any thread may set.
    """

    __slots__ = (
        "id",
        "func_id",
        "func_pickle",
        "flags",
        "data",
        "buffers",
        "sink",
        "tag",
        "index",
        "cancelled",
        "claim",
        "worker",
        "pinned",
        "tries",
        "max_retries",
        "name",
        "suspect",
        "may_group",
        "group",
        "flush_first",
        "skip",
        "first",
        "in_pieces",
        "refs",
    )

    def __init__(
        self,
        task_id: int,
        func_id: int,
        func_pickle: bytes,
        flags: int,
        data: bytes,
        buffers: list[Any],
        sink: ResultSink,
        tag: Any = None,
        name: str = "",
        may_group: bool = False,
        *,
        index: int | None = None,
        refs: tuple[p.ScriptRef, ...] = (),
    ):
        self.id = task_id
        self.func_id = func_id
        self.func_pickle = func_pickle
        self.flags = flags
        #: the pickled arguments and their out-of-band buffers
        self.data = data
        self.buffers = buffers
        #: the functions of the script that ``data`` or ``func_pickle`` refers to by id
        self.refs = refs
        self.sink = sink
        #: the sink's own reference (a future, a map's sequence number), or
        #: ``INIT_TAG``
        self.tag = tag
        #: a map's task: the number of its input, or of its chunk (``FLAG_CHUNK``)
        self.index = index
        #: the function's name, for error messages
        self.name = name
        self.cancelled = False
        #: called on the pool loop as it goes to a worker: False if it was
        #: cancelled first, atomically with that cancel (a ``TaskFuture``,
        #: which then counts as running and can no longer be cancelled);
        #: ``claim(False)`` when its worker gives it back unrun (pending again)
        self.claim: Callable[..., bool] | None = None
        #: the worker it was sent to last (kept after its result: where it ran)
        self.worker: WorkerRecord | None = None
        #: only this worker may run it (run_on_all, initializer)
        self.pinned: WorkerRecord | None = None
        self.tries = 0
        #: how often it may kill its worker and run again; None: the pool's
        #: ``max_retries``
        self.max_retries: int | None = None
        #: it was on a worker that died with several tasks: it runs alone
        #: until it finishes, so that a death can be blamed on the right task
        self.suspect = False
        #: the broker may send it in one credit with other tiny tasks
        #: (submit and run_async with qsize > 1; never a map's task)
        self.may_group = may_group
        #: while it runs in a group: ``[tasks of the group not answered]``,
        #: shared by the group, whose credit is free when it drops to 0
        self.group: list[int] | None = None
        #: sent with ``FLAG_FLUSH_FIRST``: its worker sent the results it held
        #: before starting it
        self.flush_first = False
        #: a chunk's inputs of its payload answered so far (sent as ``skip``)
        self.skip = 0
        #: a chunk's first input not answered, counted in the chunk as made
        #: (it moves on with each piece of results and each hand-back)
        self.first = 0
        #: a chunk whose inputs were handed back, or a part of one
        #: (``TaskPart``): each of its answers is a piece, with ``first``,
        #: even when that is 0 (none answered before)
        self.in_pieces = False

    def __repr__(self) -> str:
        return f"<Task {self.id} {self.name}>"

    @property
    def shown_id(self) -> int:
        """The id that messages show (a part of a chunk shows its chunk's)."""
        return self.id

    @property
    def is_piece(self) -> bool:
        """A chunk that answered some of its inputs or handed them back, or
        a part of one: given back unrun, it goes ahead of new tasks, where its
        map's later results wait for it."""
        return bool(self.first or self.in_pieces)

    def describe(self) -> str:
        """``task 12 (f, input #3 of a map)``, for error messages."""
        what = self.name or "?"
        if self.index is not None:
            if self.flags & p.FLAG_ONE_BY_ONE:
                # the map, which knows where its chunks start, names the input
                what += f", input {self.first} of chunk #{self.index} of a map"
            else:
                part = "chunk" if self.flags & p.FLAG_CHUNK else "input"
                what += f", {part} #{self.index} of a map"
        return f"task {self.shown_id} ({what})"


class WorkerRecord:
    """The broker's view of one connected worker."""

    __slots__ = (
        "identity",
        "pid",
        "host",
        "capacity",
        "running",
        "known_funcs",
        "ready",
        "pinned",
        "bucket",
        "head_since",
        "exclusive",
        "runs_long",
        "used",
        "unreachable",
        "done",
        "failed",
        "draining",
        "tasks_given",
        "spend_pending",
        "python",
        "busy_since",
        "sync_round",
        "log_ticket",
        "prints",
        "remote",
    )

    def __init__(
        self, identity: bytes, pid: int, host: str, capacity: int, python: str | None = None
    ):
        self.identity = identity
        self.pid = pid
        self.host = host
        #: its Python version (``3.12.1``), from its hello (None: it did not say)
        self.python = python
        #: credits granted in the worker's hello: tasks it may hold at once
        self.capacity = capacity
        #: task id -> task, for the tasks sent to it and not yet answered
        self.running: dict[int, Task] = {}
        #: credits in use: a task each, or one for a group of tiny tasks
        self.used = 0
        #: ids of the functions this worker holds (it keeps the recent ones)
        self.known_funcs = RecentFunctions()
        #: False until its initializer has run
        self.ready = False
        #: tasks that only this worker may run, sent before any other
        self.pinned: deque[Task] = deque()
        #: its place in ``Registry``'s buckets (-1: in none)
        self.bucket = -1
        #: when the oldest task it runs began (roughly), for task_timeout
        self.head_since = 0.0
        #: since when it holds tasks and has answered none (``time.time()``):
        #: when it got one while it held none, or last answered one while it
        #: held more; for ``Pool.status()``
        self.busy_since = 0.0
        #: it runs a suspect task alone, or one that may run long
        #: (``Dispatcher._may_run_long``): it gets nothing else meanwhile
        self.exclusive = False
        #: it said that its task runs long and gave back the tasks it held
        #: behind it (``STATUS_LONG``): it gets nothing, pinned tasks
        #: included, until it holds no task
        self.runs_long = False
        #: a send to it failed: it gets nothing more (``Losses.unreachable``)
        self.unreachable = False
        #: tasks it answered with a result, and with an error
        self.done = 0
        self.failed = 0
        #: it leaves the pool: it finishes what it holds and gets nothing new
        #: (``Broker.retire``)
        self.draining = False
        #: tasks given to it, pinned ones aside (counted with ``max_tasks_per_child``)
        self.tasks_given = 0
        #: it was given its last task while it held grouped ones, which may
        #: come back unrun: whether it is spent is known once they are
        #: answered (``Dispatcher.settle``)
        self.spend_pending = False
        #: the round of the latest ``CHECK`` sent to it (its connection
        #: dropped that many times); only that round's ``MISSING`` counts
        self.sync_round = 0
        #: the ticket of its latest log record (``BrokerHooks.on_log``) or,
        #: on this machine, line of output (``Broker.note_output``); 0: none
        self.log_ticket = 0
        #: it wrote output lately (on this machine: ``Broker.note_output``), so
        #: that its results are read after what it wrote: the messages of
        #: results that may still find none before it stops (``PRINTS_WATCH``)
        self.prints = 0
        #: it connects over TCP, from another host: a dropped connection
        #: may come back (``Losses.unreachable``)
        self.remote = False

    @property
    def free(self) -> int:
        return self.capacity - self.used

    def __str__(self) -> str:
        return f"worker pid {self.pid} on {self.host}"

    def __repr__(self) -> str:
        return f"<WorkerRecord {self.identity!r} pid={self.pid} host={self.host}>"


@dataclasses.dataclass
class BrokerCounts:
    """``Broker.counts()``: its workers and counters at one moment.

    The records are the broker's own: read them on the pool loop only.
    """

    #: the connected workers
    workers: list[WorkerRecord]
    #: the workers lost most recently, oldest first
    lost: list[WorkerRecord]
    queued: int
    in_flight: int
    done: int
    failed: int
    retried: int
    workers_lost: int
    grouped_tasks: int
