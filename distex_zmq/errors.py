"""The exceptions of distex_zmq: one hierarchy with ``DistexError`` at its root."""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import linecache
import pickle
import re
import sys
import traceback
from concurrent.futures.process import BrokenProcessPool
from typing import Any


class DistexError(Exception):
    """Base class of every error that distex_zmq raises itself."""


class PoolClosedError(DistexError, RuntimeError):
    """The pool was shut down; create a new ``Pool`` to run more tasks."""


#: What a call of a pool that was shut down raises (``PoolClosedError``).
SHUT_DOWN = "the pool was shut down; create a new Pool"


class ProtocolError(DistexError):
    """A peer spoke another protocol or version, or sent a malformed message."""


class WorkerStartError(DistexError, BrokenProcessPool):
    """A worker could not start, or its initializer raised.

    The message carries the worker's own error output. Also a
    ``BrokenProcessPool`` (and so a ``BrokenExecutor``): what
    ``ProcessPoolExecutor`` raises when its initializer fails, which code
    written for it catches to make a new pool.
    """


class HostConnectionError(WorkerStartError):
    """A remote host could not be reached, refused the connection, or could
    not start distex_zmq; the message names the host and what to do."""


class TaskOrigin:
    """Where a task failed: its worker's ``host`` and ``pid``, and ``index``,
    the number of the input for a task of a map (None: not known, or not a
    map's task). Set on the errors that a task ends with."""

    host: str | None = None
    pid: int | None = None
    index: int | None = None

    def set_origin(self, host: str | None, pid: int | None) -> None:
        """Record the worker, unless it is known already."""
        if self.host is None:
            self.host, self.pid = host, pid


class SerializationError(TaskOrigin, DistexError, pickle.PicklingError, TypeError):
    """A task or its result could not be pickled or unpickled in a worker,
    or a result in the client.

    Also a ``pickle.PicklingError`` and a ``TypeError``: where
    ``ProcessPoolExecutor`` hands the caller the pickler's own error (a
    ``TypeError`` for a lock, a generator or a socket, a ``PicklingError``
    for what the pickler refuses), code written for it catches this one too.
    """


class WorkerLostError(TaskOrigin, DistexError, BrokenProcessPool):
    """The worker that ran a task died before it returned a result.

    Also a ``BrokenProcessPool``, what ``ProcessPoolExecutor`` raises for a
    worker that "terminated in a non-clean fashion", so that code written
    for it catches this one too. Unlike that executor, the pool is not
    broken by it: the worker is replaced, the other tasks go on, and the
    pool takes new ones."""


if sys.version_info >= (3, 11):
    AnyTimeoutError = TimeoutError
else:

    class AnyTimeoutError(concurrent.futures.TimeoutError, asyncio.TimeoutError, TimeoutError):
        """The ``TimeoutError`` of Python 3.11 and later, where
        ``concurrent.futures``'s and ``asyncio``'s are the builtin. Before,
        they are classes of their own: this one is all three, so that the
        timeouts of the pool are caught where the stdlib's are, as on a
        newer Python."""


class TaskTimeoutError(TaskOrigin, DistexError, AnyTimeoutError):
    """A task ran longer than the pool's ``task_timeout``; its worker was killed."""


class CrashLoopError(DistexError, BrokenProcessPool):
    """Workers died faster than the pool's limit; it stopped replacing them
    (a ``BrokenProcessPool``: the pool takes no more tasks)."""


def fresh_error(error: BaseException) -> BaseException:
    """A copy of ``error`` for one caller to raise: its type, message,
    attributes, cause and traceback as they are.

    An error that the pool keeps (the one its start ended with, a crash
    loop's) is raised as such copies, never itself: a raise adds the frames
    it goes through to the exception's traceback, and with them their
    locals, the pool among them, which the pool's loop would then keep
    alive, so that a pool dropped after a crash loop would never be freed.
    An error whose class takes other arguments than its ``args``
    (``DiskError(code, path)``) is made without its ``__init__``, as
    ``rebuild_without_init`` makes it from a pickle; one that does not copy
    even so (its class's ``__new__`` takes other arguments too) is
    returned as it is."""
    try:
        fresh = copy.copy(error)
    except Exception:  # noqa: BLE001 - its class does not take its args
        try:
            fresh = rebuild_without_init(type(error), error.args, getattr(error, "__dict__", {}))
        except Exception:  # noqa: BLE001 - raised as it is, then
            return error
    if type(fresh) is not type(error):
        return error
    fresh.__cause__ = error.__cause__
    fresh.__context__ = error.__context__
    fresh.__suppress_context__ = error.__suppress_context__
    return fresh.with_traceback(error.__traceback__)


class RemoteException(TaskOrigin, DistexError):
    """Proxy for an exception that occurred remotely while running a task.

    It never reaches the caller by itself: when unpickled, the original
    exception is returned with a ``RemoteException`` holding the remote
    traceback text as its ``__cause__`` (as in distex). It names the worker
    that raised it (``host``, ``pid``) and, for a map's input, its ``index``.
    """

    def __init__(
        self,
        exc: BaseException | None,
        tb: str | None = None,
        host: str | None = None,
        pid: int | None = None,
    ):
        super().__init__()
        self.exc = exc
        if tb is None and exc is not None:
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.tb = tb or ""
        self.host = host
        self.pid = pid

    def __str__(self) -> str:
        where = "" if self.pid is None else f"raised on worker pid {self.pid} on {self.host}"
        if self.index is not None:
            where += f" (input #{self.index} of a map)"
        return where + "\n\nRemote traceback:\n" + self.tb

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild_remote_exception, (self.exc, self.tb, self.host, self.pid)


def _rebuild_remote_exception(
    exc: BaseException | None, tb: str, host: str | None = None, pid: int | None = None
) -> BaseException:
    """Unpickle to the original exception, with the remote traceback as cause."""
    cause = RemoteException(None, with_interactive_source(tb), host, pid)
    if exc is None:
        return cause
    exc.__cause__ = cause
    return exc


class WithoutInit:
    """Pickles exception ``exc`` as its class, ``args`` and attributes, to be
    rebuilt without a call of its class's ``__init__``.

    An exception pickles as its class called with its ``args``, and a class
    whose ``__init__`` takes other arguments (``DiskError(code, path)``
    passing one message to ``Exception``) fails to load so; rebuilt this
    way, the caller gets that class, and ``except DiskError`` catches it.
    """

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException):
        self.exc = exc

    def __reduce__(self) -> tuple[Any, ...]:
        exc = self.exc
        return rebuild_without_init, (type(exc), exc.args, getattr(exc, "__dict__", {}))


def rebuild_without_init(
    cls: type[BaseException], args: tuple[Any, ...], attrs: dict[str, Any]
) -> BaseException:
    """An exception of ``cls`` with ``args`` and ``attrs``, its ``__init__`` not called."""
    exc = cls.__new__(cls, *args)
    exc.args = args
    exc.__dict__.update(attrs)
    return exc


#: A frame's line of a formatted traceback, and the source line after it.
_FRAME = re.compile(r'^  File "(?P<file>[^"]+)", line (?P<line>\d+), in .*$')


def with_interactive_source(tb: str) -> str:
    """``tb`` (a traceback formatted in a worker) with the source lines of
    this process's code that the worker could not show: a function defined
    in a Jupyter cell or at an IPython prompt, whose "file" exists only in
    this process's ``linecache``, or one of the script that went by value to
    a host that has no copy of its file. Frames whose lines the worker
    showed are left as it formatted them."""
    lines = tb.split("\n")
    out: list[str] = []
    for i, line in enumerate(lines):
        out.append(line)
        match = _FRAME.match(line)
        if match is None or (i + 1 < len(lines) and lines[i + 1].startswith("    ")):
            continue
        source = linecache.getline(match["file"], int(match["line"])).strip()
        if source:
            out.append("    " + source)
    return "\n".join(out)
