"""A task as the broker sees it: ids, flags, pickled frames and where its result goes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from distex_zmq.wire import frames as p

if TYPE_CHECKING:
    from .registry import WorkerRecord


class ResultSink(Protocol):
    """Receives results on the pool loop; ``flush`` ends a batch of them."""

    def deliver(self, task: Task, status: int, value: Any) -> None:
        """``value`` is ``(pickle, buffers, microseconds it ran)`` as received, or
        an exception made locally."""

    def flush(self) -> None:
        """Wake whoever waits for the results delivered since the last flush."""


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
        "cancelled",
        "worker",
        "pinned",
        "tries",
        "name",
        "suspect",
        "may_group",
        "group",
        "flush_first",
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
    ):
        self.id = task_id
        self.func_id = func_id
        self.func_pickle = func_pickle
        self.flags = flags
        #: the pickled arguments and their out-of-band buffers
        self.data = data
        self.buffers = buffers
        self.sink = sink
        #: the sink's own reference: a map's sequence number, a future
        self.tag = tag
        #: the function's name, for error messages
        self.name = name
        self.cancelled = False
        #: the worker it was sent to, while it runs there
        self.worker: WorkerRecord | None = None
        #: only this worker may run it (run_on_all, initializer)
        self.pinned: WorkerRecord | None = None
        self.tries = 0
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

    def __repr__(self) -> str:
        return f"<Task {self.id} {self.name}>"

    def describe(self) -> str:
        """``task 12 (f, input #3 of a map)``, for error messages."""
        what = self.name or "?"
        if isinstance(self.tag, int) and not isinstance(self.tag, bool):
            what += f", input #{self.tag} of a map"
            if self.flags & p.FLAG_CHUNK:  # the chunk's number, not the input's
                what = what.replace("input", "chunk")
        return f"task {self.id} ({what})"


def callable_name(func: Any) -> str:
    """A short name for a callable, cheap to compute."""
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None)
    if name is None:
        inner = getattr(func, "func", None)  # functools.partial
        name = callable_name(inner) if inner is not None else type(func).__name__
    return str(name)
