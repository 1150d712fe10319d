"""A task as the broker sees it: ids, flags, pickled frames and where its result goes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .registry import WorkerRecord


class ResultSink(Protocol):
    """Receives results on the pool loop; ``flush`` ends a batch of them."""

    def deliver(self, task: Task, status: int, value: Any) -> None:
        """``value`` is ``(pickle, buffers)`` as received, or an exception made locally."""

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
        self.cancelled = False
        #: the worker it was sent to, while it runs there
        self.worker: WorkerRecord | None = None
        #: only this worker may run it (run_on_all, initializer)
        self.pinned: WorkerRecord | None = None
        self.tries = 0

    def __repr__(self) -> str:
        return f"<Task {self.id}>"
