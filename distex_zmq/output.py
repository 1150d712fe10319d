"""What the client does with its workers' output and log records.

``WorkerOutput`` writes the lines that workers print, as they arrive, to the
client's own ``sys.stdout`` (a worker's stdout) or ``sys.stderr`` (its
stderr): tagged ``[host:pid] `` (``output="prefixed"``), as they are
(``"raw"``), or not at all (``"off"``). A line a worker has begun and not
ended (a progress bar, ``print(x, end="")``) arrives in parts, and each part
is written as it comes (see ``WorkerOutput.write`` for where the tags go).
``emit_log`` re-emits a worker's log
record (a ``frames.LOG`` body) through the client's logger of the same name,
as a ``LogRecord`` with ``host``, ``pid`` and ``worker`` attributes, so that
the user's levels, handlers and formatters apply.

The lines are written, and the records handled, on a thread of their own
(``OutputWriter``), in the order they came, not on the pool loop: a client
whose stdout blocks (a pipe nobody reads, a paused terminal) or whose log
handler is slow (a network handler, a lock the caller holds while it waits
for a result) must not stall the broker. Local workers' pipes are not read
while ``PAUSE_AT`` characters wait (the workers wait in their ``print``,
nothing is lost); lines and records from other hosts cannot wait there, and
beyond ``MAX_PENDING`` they are dropped, with a line (a warning) in their
place that says how many. So a task's result may reach its caller before its
last records are handled; the pool's shutdown handles them first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from distex_zmq.errors import ProtocolError
from distex_zmq.wire import frames

#: The values of ``Pool(output=...)``.
OUTPUT_MODES = ("prefixed", "raw", "off")
#: Characters of output that may wait for the writer thread; beyond, lines
#: are dropped (and counted) rather than queued.
MAX_PENDING = 4 << 20
#: Characters waiting at which local workers' pipes are no longer read
#: (``full``); they are read again once half as many wait.
PAUSE_AT = 1 << 20
#: Seconds a pool's shutdown waits for the writer to write (or handle) the
#: next of what waits: it waits as long as the writer goes on.
FLUSH_TIMEOUT = 2.0

_logger = logging.getLogger("distex_zmq.output")


class OutputWriter:
    """A thread that writes text to ``sys.stdout`` and ``sys.stderr``, and
    hands log records to the client's loggers (``emit_log``), in the order
    they were put, for the pool loop, which only ever appends (``put`` and
    ``put_log`` never block). Started on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        #: ``(stream, size, what)``: "out" or "err", and the text to write or
        #: a one-item list: how many lines were dropped there; or "log", and
        #: ``emit_log``'s arguments or a one-item list: how many records
        #: were dropped there
        self._items: deque[tuple[str, int, Any]] = deque()
        #: characters in ``_items``
        self._pending = 0
        self._busy = False
        self._closed = False
        self._thread: threading.Thread | None = None
        #: items put and items written (or dropped), since the start
        self._put_count = 0
        self._done_count = 0
        #: called (on their loop) once less than half of ``PAUSE_AT`` waits
        self._room_waiters: list[tuple[asyncio.AbstractEventLoop, Callable[[], None]]] = []
        #: ``(count, loop, callback)``: called once ``count`` items are done
        self._done_waiters: list[tuple[int, asyncio.AbstractEventLoop, Callable[[], None]]] = []
        #: the streams that failed to take a write, said once each
        self._failed: set[str] = set()

    def put(self, stream: str, text: str, lines: int) -> int:
        """Write ``text`` (``lines`` lines) to ``stream``, "out" or "err";
        return its ticket, as ``put_log``."""
        return self._put(stream, len(text), text, lines)

    def put_log(self, host: str, pid: int, worker: str, body: bytes) -> int:
        """Re-emit a worker's log record (``emit_log``); return its ticket:
        the record is handled (or dropped) once ``handled`` reaches it."""
        return self._put("log", len(body), (host, pid, worker, body), 1)

    def _put(self, stream: str, size: int, what: Any, lines: int) -> int:
        with self._lock:
            if self._closed:
                return 0
            items = self._items
            if self._pending + size <= MAX_PENDING:
                self._pending += size
                items.append((stream, size, what))
            elif items and items[-1][0] == stream and isinstance(items[-1][2], list):
                items[-1][2][0] += lines
                return self._put_count
            else:
                # in the order of what was written: after what waits
                items.append((stream, 0, [lines]))
            self._put_count += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="distex_zmq output", daemon=True
                )
                self._thread.start()
            self._ready.notify()
            return self._put_count

    @property
    def handled(self) -> int:
        """Items written or handled (or dropped) since the start: a ticket of
        ``put_log`` up to this is done."""
        return self._done_count

    def when_handled(
        self, ticket: int, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]
    ) -> None:
        """Call ``callback`` on ``loop`` once the item of ``ticket`` and all
        before it are done, or the writer is closed (at once if so already)."""
        with self._lock:
            if self._done_count < ticket and not self._closed:
                self._done_waiters.append((ticket, loop, callback))
                return
        loop.call_soon(callback)

    def full(self) -> bool:
        """Lines that can wait should not be read for now (``PAUSE_AT``)."""
        return self._pending >= PAUSE_AT

    def when_room(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        """Call ``callback`` on ``loop`` once fewer than half of ``PAUSE_AT``
        characters wait (at once if so already)."""
        with self._lock:
            if self._pending >= PAUSE_AT // 2 and not self._closed:
                self._room_waiters.append((loop, callback))
                return
        loop.call_soon(callback)

    @property
    def idle(self) -> bool:
        """Nothing waits and nothing is being written."""
        with self._lock:
            return not self._items and not self._busy

    async def written(self, timeout: float = FLUSH_TIMEOUT) -> None:
        """Return once what was put so far is written (or handled), or once
        nothing more has been for ``timeout`` seconds: a stream that never
        drains, a log handler that hangs (on the pool loop)."""
        with self._lock:
            target = self._put_count
        done = self._done_count
        deadline = time.monotonic() + timeout
        while self._done_count < target and not self._closed:
            if self._done_count != done:
                done = self._done_count
                deadline = time.monotonic() + timeout
            elif time.monotonic() >= deadline:
                return
            await asyncio.sleep(0.002)

    async def close(self, timeout: float = FLUSH_TIMEOUT) -> None:
        """Let what waits be written and handled, as long as the thread goes
        on (``written``), then end the thread (on the pool loop, as the pool
        stops). A thread stuck in a write to a stream that never drains, or
        in a log handler, is left behind (a daemon)."""
        await self.written(timeout)
        with self._lock:
            self._closed = True
            self._items.clear()
            self._ready.notify()
            thread, stuck = self._thread, self._busy
            waiters, self._done_waiters = self._done_waiters, []
        _call_soon_all([(loop, callback) for _, loop, callback in waiters])
        if thread is not None and not stuck:
            thread.join(1.0)

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._busy:
                    self._busy = False
                    self._done_count += 1
                    if self._done_waiters:
                        self._call_done_waiters()
                while not self._items and not self._closed:
                    self._ready.wait()
                if self._closed:
                    return
                stream, size, what = self._items.popleft()
                self._pending -= size
                self._busy = True
                if self._room_waiters and self._pending < PAUSE_AT // 2:
                    self._call_room_waiters()
            if stream == "log":
                self._emit(what)
                continue
            if isinstance(what, list):
                what = (
                    f"[distex_zmq: {what[0]} lines of the workers' output dropped: "
                    f"this process's std{stream} took them too slowly]\n"
                )
            self._write(stream, what)

    def _call_room_waiters(self) -> None:
        waiters, self._room_waiters = self._room_waiters, []
        _call_soon_all(waiters)

    def _call_done_waiters(self) -> None:
        done = self._done_count
        due = [(loop, callback) for ticket, loop, callback in self._done_waiters if ticket <= done]
        if due:
            self._done_waiters = [w for w in self._done_waiters if w[0] > done]
            _call_soon_all(due)

    @staticmethod
    def _emit(what: tuple[str, int, str, bytes] | list[int]) -> None:
        try:
            if isinstance(what, list):
                _logger.warning(
                    "%d log records of the tasks dropped: this process's log handlers "
                    "took them too slowly",
                    what[0],
                )
            else:
                emit_log(*what)
        except Exception:  # noqa: BLE001 - a filter that raises: as logging reports a handler's
            traceback.print_exc()

    def _write(self, stream: str, text: str) -> None:
        out = sys.stdout if stream == "out" else sys.stderr
        try:
            try:
                out.write(text)
            except UnicodeEncodeError:
                # what the stream's encoding cannot take (an ASCII locale),
                # escaped, as Python writes it to stderr
                encoding = out.encoding or "utf-8"
                out.write(text.encode(encoding, "backslashreplace").decode(encoding))
            out.flush()
        except BrokenPipeError:
            pass  # the reader went away (``| head``): nothing to say
        except OSError as e:
            # a full disk, an I/O error
            self._lost(stream, e.strerror or str(e))
        except ValueError:
            self._lost(stream, "it is closed")
        except AttributeError:
            pass  # the client dropped its stream (None, as under pythonw)

    def _lost(self, stream: str, why: str) -> None:
        """Say once, on the other stream, that the lines of ``stream`` are
        lost (nothing if that one fails too)."""
        if stream in self._failed:
            return
        self._failed.add(stream)
        other = sys.stderr if stream == "out" else sys.stdout
        with contextlib.suppress(Exception):
            other.write(
                f"distex_zmq: the workers' output could not be written to this "
                f"process's std{stream} ({why}); lines are lost while it fails\n"
            )
            other.flush()


def _call_soon_all(callbacks: list[tuple[asyncio.AbstractEventLoop, Callable[[], None]]]) -> None:
    """Call each callback on its loop, from any thread."""
    for loop, callback in callbacks:
        try:
            loop.call_soon_threadsafe(callback)
        except RuntimeError:  # that loop is closed: the pool is gone
            pass


#: A worker's stream: ``(host, pid, stream)``.
Source = tuple[str, int, str]


def _tagged(text: str, prefix: str, due: bool) -> str:
    """``text``, a part of a line without its end, with ``prefix`` before its
    first character if ``due`` (it starts a line, or follows a ``\\r``) and
    after each ``\\r`` that more text follows."""
    if "\r" not in text:
        return prefix + text if due and text else text
    first, *redrawn = text.split("\r")
    parts = [prefix + first if due and first else first]
    parts += [prefix + part if part else part for part in redrawn]
    return "\r".join(parts)


def _begun(line: str, prefix: str) -> str:
    """``line``, or the start of one, at the start of a line of the client:
    the prefix first (an empty line's too), or, if it begins with ``\\r``,
    after that ``\\r``; and after each ``\\r`` that more text follows."""
    return prefix + line if "\r" not in line else _tagged(line, prefix, True)


class WorkerOutput:
    """Writes workers' output lines to the client's stdout and stderr."""

    def __init__(self, mode: str):
        if mode not in OUTPUT_MODES:
            raise ValueError(f"output must be one of {OUTPUT_MODES}, not {mode!r}")
        self.mode = mode
        #: writes the lines, off the pool loop
        self.writer = OutputWriter()
        #: the workers' streams whose last line is not ended yet; True where
        #: it ended in ``\r`` (its next text gets a prefix)
        self._open: dict[Source, bool] = {}
        #: by stream of the client: the worker's stream whose line it ends in,
        #: or None where it is at the start of a line
        self._at: dict[str, Source | None] = {"out": None, "err": None}

    def write(
        self,
        host: str,
        pid: int,
        stream: str,
        lines: Sequence[str],
        dropped: int = 0,
        partial: bool = False,
    ) -> int:
        """Write ``lines`` that worker ``pid`` on ``host`` wrote to ``stream``
        (``"out"`` or ``"err"``), after ``dropped`` lines its host dropped;
        with ``partial`` the last one is not ended yet. Return the ticket of
        the write (``OutputWriter.put``; 0: none, with ``output="off"``).

        The prefix comes at the start of each line and after each ``\\r`` that
        more text follows (a progress bar redrawn keeps it); a line that
        begins with ``\\r`` has it only after the ``\\r``. The rest of a
        partial line continues it, with no prefix, unless another worker's
        output came in between: then the other's line was ended there, and
        the rest comes on a line of its own, with its prefix.
        """
        if self.mode == "off":
            return 0
        prefix = f"[{host}:{pid}] " if self.mode == "prefixed" else ""
        if partial or self._open:
            return self._write_parts((host, pid, stream), prefix, lines, dropped, partial)
        text = "".join([f"{prefix}{line}\n" for line in lines])
        if prefix and "\r" in text:
            text = "".join([f"{_begun(line, prefix)}\n" for line in lines])
        if dropped:
            text = f"{prefix}[{dropped} lines dropped: the worker wrote too fast]\n" + text
        return self.writer.put(stream, text, len(lines))

    def _write_parts(
        self, source: Source, prefix: str, lines: Sequence[str], dropped: int, partial: bool
    ) -> int:
        """``write`` where a line is or was not ended (``_open``)."""
        stream = source[2]
        at = self._at[stream]
        #: None: a new line; else this source's line goes on (prefix due or not)
        due = self._open.pop(source, None)
        parts: list[str] = []
        if at is not None and (at != source or dropped):
            parts.append("\n")  # a line is not ended: end it, as another begins
            at = None
        if dropped:
            parts.append(f"{prefix}[{dropped} lines dropped: the worker wrote too fast]\n")
            due = None
        last = len(lines) - 1
        for i, line in enumerate(lines):
            if i == 0 and due is not None:
                if at == source:
                    parts.append(_tagged(line, prefix, due))
                elif line:  # the rest of its line, on a line of its own
                    parts.append(_begun(line, prefix))
                else:
                    continue  # its line was ended already
            else:
                parts.append(_begun(line, prefix))
            if i < last or not partial:
                parts.append("\n")
        if partial and lines:
            self._open[source] = lines[-1].endswith("\r")
            self._at[stream] = source
        else:
            self._at[stream] = None
        return self.writer.put(stream, "".join(parts), len(lines))

    def log(self, host: str, pid: int, worker: str, body: bytes) -> int:
        """Re-emit a log record of worker ``pid`` on ``host`` (a ``frames.LOG``
        body), after the lines that came before it, whatever ``mode``; return
        its ticket (``OutputWriter.put_log``)."""
        return self.writer.put_log(host, pid, worker, body)

    async def close(self) -> None:
        """Write and handle what waits (``OutputWriter.close``); write no more."""
        await self.writer.close()

    def local(self, host: str, note: Callable[[bytes, int], None]) -> LocalOutput:
        """The ``on_output`` of a local launcher whose workers run on
        ``host``; ``note(identity, ticket)``: a worker wrote lines."""
        return LocalOutput(self, host, note)


class LocalOutput:
    """A launcher's ``on_output(identity, pid, stream, lines, partial)`` for
    ``WorkerOutput``, which tells ``note(identity, ticket)`` the ticket of
    each worker's lines: the broker holds the worker's next results until
    they are written, so that what a task printed shows before its caller
    has the result (and prints after it)."""

    def __init__(self, output: WorkerOutput, host: str, note: Callable[[bytes, int], None]):
        self._output = output
        self._host = host
        self._note = note

    def __call__(
        self, identity: bytes, pid: int, stream: str, lines: list[str], partial: bool = False
    ) -> None:
        ticket = self._output.write(self._host, pid, stream, lines, partial=partial)
        if ticket:
            self._note(identity, ticket)


def _enabled(logger: logging.Logger, level: int) -> bool:
    """``logger.isEnabledFor(level)``, but for the root logger's level, whose
    place the pool's ``log_level`` takes (the worker applied it)."""
    if logging.root.manager.disable >= level:
        return False
    current: logging.Logger | None = logger
    while current is not None and current is not logging.root:
        if current.level:
            return level >= current.level
        current = current.parent
    return True


def emit_log(host: str, pid: int, worker: str, body: bytes) -> None:
    """Re-emit a worker's log record (a ``frames.LOG`` body) in the client, if
    its logger there is enabled for its level (see ``_enabled``)."""
    try:
        fields = frames.read_log(body)
    except ProtocolError as e:
        _logger.warning("dropped a log record from %s:%d: %s", host, pid, e)
        return
    name = fields["name"]
    if name == "distex_zmq" or name.startswith("distex_zmq."):
        return  # the pool's own loggers are never fed from workers
    logger = logging.getLogger(None if name == "root" else name)
    if not _enabled(logger, fields["levelno"]):
        return
    filename = os.path.basename(fields["pathname"])
    created = float(fields["created"])
    extra = fields.pop("extra")
    record = logging.makeLogRecord(
        {
            **fields,
            "levelname": logging.getLevelName(fields["levelno"]),
            "args": None,
            "filename": filename,
            "module": os.path.splitext(filename)[0],
            "created": created,
            "msecs": (created - int(created)) * 1000,
            "process": pid,
            "processName": "distex_zmq worker",
            "host": host,
            "pid": pid,
            "worker": worker,
        }
    )
    for name, value in extra.items():
        # as ``Logger.makeRecord`` takes ``extra=``, and none that would
        # hide a method of the record or the pool's own
        if _free_attribute(record, name):
            setattr(record, name, value)
    logger.handle(record)


def _free_attribute(record: logging.LogRecord, name: Any) -> bool:
    """Whether ``extra=`` of a worker's record may set attribute ``name``
    on its copy ``record``: a plain name that it has not, nor its class."""
    return (
        isinstance(name, str)
        and name.isidentifier()
        and not name.startswith("_")
        and name not in ("message", "asctime")
        and name not in record.__dict__
        and not hasattr(type(record), name)
    )
