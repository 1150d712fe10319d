"""What the client does with its workers' output and log records.

``WorkerOutput`` writes the lines that workers print, as they arrive, to the
client's own ``sys.stdout`` (a worker's stdout) or ``sys.stderr`` (its
stderr): tagged ``[host:pid] `` (``output="prefixed"``), as they are
(``"raw"``), or not at all (``"off"``). ``emit_log`` re-emits a worker's log
record (a ``frames.LOG`` body) through the client's logger of the same name,
as a ``LogRecord`` with ``host``, ``pid`` and ``worker`` attributes, so that
the user's handlers and formatters apply. Both run on the pool loop.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from distex_zmq.errors import ProtocolError
from distex_zmq.wire import frames

#: The values of ``Pool(output=...)``.
OUTPUT_MODES = ("prefixed", "raw", "off")

_logger = logging.getLogger("distex_zmq.output")


class WorkerOutput:
    """Writes workers' output lines to the client's stdout and stderr."""

    def __init__(self, mode: str):
        if mode not in OUTPUT_MODES:
            raise ValueError(f"output must be one of {OUTPUT_MODES}, not {mode!r}")
        self.mode = mode

    def write(
        self, host: str, pid: int, stream: str, lines: Sequence[str], dropped: int = 0
    ) -> None:
        """Write ``lines`` that worker ``pid`` on ``host`` wrote to ``stream``
        (``"out"`` or ``"err"``), after ``dropped`` lines its host dropped."""
        if self.mode == "off":
            return
        prefix = f"[{host}:{pid}] " if self.mode == "prefixed" else ""
        text = "".join([f"{prefix}{line}\n" for line in lines])
        if dropped:
            text = f"{prefix}[{dropped} lines dropped: the worker wrote too fast]\n" + text
        out = sys.stdout if stream == "out" else sys.stderr
        try:
            out.write(text)
            out.flush()
        except (OSError, ValueError, AttributeError):
            pass  # the client closed or dropped its stream

    def local(self, host: str) -> LocalOutput:
        """The ``on_output`` of a local launcher whose workers run on ``host``."""
        return LocalOutput(self, host)


class LocalOutput:
    """A launcher's ``on_output(identity, pid, stream, lines)`` for ``WorkerOutput``."""

    def __init__(self, output: WorkerOutput, host: str):
        self._output = output
        self._host = host

    def __call__(self, identity: bytes, pid: int, stream: str, lines: list[str]) -> None:
        self._output.write(self._host, pid, stream, lines)


def emit_log(host: str, pid: int, worker: str, body: bytes) -> None:
    """Re-emit a worker's log record (a ``frames.LOG`` body) in the client."""
    try:
        fields = frames.read_log(body)
    except ProtocolError as e:
        _logger.warning("dropped a log record from %s:%d: %s", host, pid, e)
        return
    name = fields["name"]
    if name == "distex_zmq" or name.startswith("distex_zmq."):
        return  # the pool's own loggers are never fed from workers
    logger = logging.getLogger(None if name == "root" else name)
    filename = os.path.basename(fields["pathname"])
    created = float(fields["created"])
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
    logger.handle(record)
