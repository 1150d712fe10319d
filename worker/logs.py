"""Sends the ``logging`` records of a worker's tasks to the pool.

``LogForwarder`` is a handler on the worker's root logger at the pool's
``log_level``. It turns each record into plain data (``frames.LOG``: the
message formatted with its arguments, where and on which thread it was
emitted, the formatted traceback and ``stack_info``, and the attributes
that ``extra=`` gave it) and sends it to the broker, which hands it to the
client; a record emitted on another thread of a task is sent from the
worker's loop.
The worker's own loggers (``distex_zmq.*``) are not forwarded: their
warnings and errors go to the worker's stderr, which reaches the client as
its other output.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

from distex_zmq.wire import frames as p

#: The attributes that every record has, and those a formatter adds to it:
#: the others are what the call's ``extra=`` (or a filter) put there.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
#: Characters of an extra value's ``repr`` sent, at most, when the extras
#: as JSON would pass ``MAX_LOG_TEXT``.
_SHORT_REPR = 200


class LogForwarder(logging.Handler):
    """Forwards records to ``send(frames)``, called on the worker's loop thread."""

    def __init__(
        self, level: int, send: Callable[[list[bytes]], None], loop: asyncio.AbstractEventLoop
    ):
        super().__init__(level)
        self._send = send
        self._loop = loop
        self._thread = threading.get_ident()
        self._local = threading.local()

    def install(self) -> None:
        """Handle the root logger's records at this handler's level and above."""
        root = logging.getLogger()
        root.addHandler(self)
        if root.level > self.level or root.level == logging.NOTSET:
            root.setLevel(self.level)

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._local, "busy", False):
            return  # a record emitted while sending one
        self._local.busy = True
        try:
            if record.name == "distex_zmq" or record.name.startswith("distex_zmq."):
                if record.levelno >= logging.WARNING:  # as logging's last resort would
                    sys.stderr.write(self.format(record) + "\n")
                return
            message = p.log(self._fields(record))
            if threading.get_ident() == self._thread:
                self._send(message)
            elif not self._loop.is_closed():  # a thread that outlives the worker's loop
                self._loop.call_soon_threadsafe(self._send, message)
        except Exception:  # noqa: BLE001 - logging must not break the task
            self.handleError(record)
        finally:
            self._local.busy = False

    @staticmethod
    def _fields(record: logging.LogRecord) -> dict[str, Any]:
        exc_text = record.exc_text
        if record.exc_info and not exc_text:
            exc_text = logging.Formatter().formatException(record.exc_info)
        stack_info = record.stack_info
        return {
            "name": record.name,
            "levelno": record.levelno,
            "msg": record.getMessage()[: p.MAX_LOG_TEXT],
            "pathname": record.pathname,
            "lineno": record.lineno,
            "funcName": record.funcName or "",
            "created": record.created,
            "exc_text": exc_text[-p.MAX_LOG_TEXT :] if exc_text else None,
            "threadName": str(record.threadName),
            "stack_info": stack_info[-p.MAX_LOG_TEXT :] if stack_info else None,
            "extra": _extra(record),
        }


def _extra(record: logging.LogRecord) -> dict[str, Any]:
    """The attributes that ``extra=`` gave ``record`` (``user_id=42``): as they
    are where JSON keeps them (a number, a string, a list or dict of
    those), else their ``repr``; shortened reprs if they are too long
    together, and none past ``MAX_LOG_TEXT``."""
    extra: dict[str, Any] = {}
    for name, value in record.__dict__.items():
        if name in _STANDARD or name.startswith("_"):
            continue
        try:
            json.dumps(value)
        except (TypeError, ValueError, RecursionError):
            value = repr(value)
        extra[name] = value
    if not extra or len(json.dumps(extra)) <= p.MAX_LOG_TEXT:
        return extra
    short = {name: repr(value)[:_SHORT_REPR] for name, value in extra.items()}
    while short and len(json.dumps(short)) > p.MAX_LOG_TEXT:
        short.popitem()
    return short
