"""The exceptions of distex_zmq: one hierarchy with ``DistexError`` at its root."""

from __future__ import annotations

import traceback
from typing import Any


class DistexError(Exception):
    """Base class of every error that distex_zmq raises itself."""


class PoolClosedError(DistexError, RuntimeError):
    """The pool was shut down; create a new ``Pool`` to run more tasks."""


class ProtocolError(DistexError):
    """A peer spoke another protocol or version, or sent a malformed message."""


class WorkerStartError(DistexError):
    """A worker could not start, or its initializer raised.

    The message carries the worker's own error output.
    """


class HostConnectionError(WorkerStartError):
    """A remote host could not be reached, refused the connection, or could
    not start distex_zmq; the message names the host and what to do."""


class SerializationError(DistexError):
    """A task or its result could not be pickled or unpickled in a worker."""


class WorkerLostError(DistexError):
    """The worker that ran a task died before it returned a result."""


class TaskTimeoutError(DistexError, TimeoutError):
    """A task ran longer than the pool's ``task_timeout``; its worker was killed."""


class CrashLoopError(DistexError):
    """Workers died faster than the pool's limit; it stopped replacing them."""


class RemoteException(DistexError):
    """Proxy for an exception that occurred remotely while running a task.

    It never reaches the caller by itself: when unpickled, the original
    exception is returned with a ``RemoteException`` holding the remote
    traceback text as its ``__cause__`` (as in distex).
    """

    def __init__(self, exc: BaseException | None, tb: str | None = None):
        super().__init__()
        self.exc = exc
        if tb is None and exc is not None:
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.tb = tb or ""

    def __str__(self) -> str:
        return "\n\nRemote traceback:\n" + self.tb

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild_remote_exception, (self.exc, self.tb)


def _rebuild_remote_exception(exc: BaseException | None, tb: str) -> BaseException:
    """Unpickle to the original exception, with the remote traceback as cause."""
    cause = RemoteException(None, tb)
    if exc is None:
        return cause
    exc.__cause__ = cause
    return exc
