"""What the launchers of remote hosts share: an SSH agent's and a spawner's.

A remote launcher speaks with one supervisor on one host (the agent it
started over SSH, or the spawner there) in the control messages of
``wire/control.py``: it sends spawn, kill, ping and stop; it hears hello
(opened from a spawner), an exit for every worker that ends, pong and
stopped. Like the local launcher it reports each exit with
``on_exit(identity, pid, returncode, stderr_tail)``; the lines its workers
print arrive as output events, handed to ``on_output(host, pid, stream,
lines, dropped, partial)`` with the host's name from its hello.

Heartbeats: the launcher pings every quarter of ``heartbeat_timeout``; a
host that has said nothing for ``heartbeat_timeout`` is lost then (a timer
set for that moment, re-armed lazily as messages come), and so is one whose
connection ends while it is not stopping, or that sends a malformed
message. ``on_lost(launcher, reason, identities)`` then hands its workers
to the pool at once. Time during which this process stood still (stopped
by Ctrl-Z or a debugger, a suspended VM, a loop held up), which a ping
that goes out late measures, counts as no silence of the host: it could
not answer pings that were not sent, and what it said meanwhile waits
unread.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from distex_zmq.errors import HostConnectionError, ProtocolError
from distex_zmq.hostspec import HostSpec
from distex_zmq.loops import run_in_background
from distex_zmq.options import DEFAULT_CONNECT_TIMEOUT as DEFAULT_CONNECT_TIMEOUT
from distex_zmq.options import RemoteSettings as RemoteSettings
from distex_zmq.version import __version__
from distex_zmq.wire import control, frames

_logger = logging.getLogger("distex_zmq.launch.remote")

#: ``on_output(host, pid, stream, lines, dropped, partial)``: lines a remote
#: worker wrote to ``stream`` (``"out"`` or ``"err"``), after ``dropped`` lost
#: ones; with ``partial`` the last is not ended yet (the next lines continue it).
RemoteOutput = Callable[[str, int, str, list[str], int, bool], object]

#: Seconds, beyond the grace, that a stopping host may take to stop its workers.
STOP_MARGIN = 5.0

#: This client's Python version, major.minor: the one every host must run.
PYTHON_MINOR = "{}.{}".format(*sys.version_info)


class RemoteLauncher:
    """The workers of one pool on one remote host, through its supervisor."""

    #: where its workers run, for messages; set by subclasses
    where = ""
    #: prefix of its workers' identities
    label = ""
    #: the interpreter of its workers, for messages
    python = ""
    #: the host starts no more workers at once than the pool opened there
    #: (a spawner): a renewal's replacement waits for the worker it replaces
    #: to exit
    opened_workers_only = False

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        spec: HostSpec,
        heartbeat_timeout: float,
        on_exit: Callable[[bytes, int, int | None, str], None],
        on_lost: Callable[[Any, str, set[bytes]], None],
        on_output: RemoteOutput | None = None,
    ):
        self._loop = loop
        self._on_output = on_output
        self._tasks: set[asyncio.Task[None]] = set()
        self.spec = spec
        self._heartbeat_timeout = heartbeat_timeout
        self._on_exit = on_exit
        self._on_lost = on_lost
        #: identities of the workers started and not exited
        self.workers: set[bytes] = set()
        self.lost = False
        #: it is up: the supervisor said hello and heartbeats run
        self.started = False
        self._closing = False
        self._hello: asyncio.Future[control.Hello] = loop.create_future()
        #: the supervisor is done: it stopped, or its connection ended
        self._ended: asyncio.Future[None] = loop.create_future()
        self._last_heard = time.monotonic()
        #: when the next ping is due
        self._ping_due = self._last_heard

    def __str__(self) -> str:
        return self.where

    @property
    def python_version(self) -> str | None:
        """The version of the Python its agent or spawner runs (``3.12.1``),
        once it said hello (None before, or if it was refused)."""
        hello = self._hello
        if not hello.done() or hello.cancelled() or hello.exception() is not None:
            return None
        return hello.result().python

    def describe_worker(self, pid: int) -> str:
        return f"a worker on {self.where} (pid {pid}, {self.python})"

    # for subclasses

    def _send(self, command: control.Command) -> None:
        raise NotImplementedError

    async def _close(self) -> None:
        """Disconnect, idempotently."""
        raise NotImplementedError

    def _on_message(self, event: control.Message) -> None:
        """A checked message from the supervisor (on the pool loop)."""
        self._last_heard = time.monotonic()
        if isinstance(event, control.Hello):  # and control.Opened
            self._on_hello(event)
        elif isinstance(event, control.Exit):
            if event.identity in self.workers:
                self.workers.discard(event.identity)
                self._on_exit(event.identity, event.pid, event.rc, event.tail)
        elif isinstance(event, control.Output):
            if self._on_output is not None and self._hello.done():
                host = self._hello.result().host
                self._on_output(
                    host, event.pid, event.stream, event.lines, event.dropped, event.partial
                )
        elif isinstance(event, control.Refused):
            self._on_refused(event)
        elif isinstance(event, control.Stopped):
            self._end()

    def _on_hello(self, hello: control.Hello) -> None:
        if self._hello.done():
            return
        if hello.protocol != frames.VERSION:
            self._hello.set_exception(
                HostConnectionError(
                    f"distex_zmq {hello.version} on {self.where} runs workers of protocol "
                    f"version {hello.protocol}, this client version {frames.VERSION}: "
                    f"install the same distex_zmq version on both (this client has {__version__})"
                )
            )
        elif hello.python.split(".")[:2] != PYTHON_MINOR.split("."):
            self._hello.set_exception(HostConnectionError(self._python_mismatch(hello.python)))
        else:
            self._hello.set_result(hello)

    def _python_mismatch(self, theirs: str) -> str:
        """Why this host, whose Python is ``theirs``, cannot serve the pool.

        Functions, lambdas and classes of the user's script travel by value,
        as bytecode, which only the same minor version of Python reads:
        another one fails them with ``SystemError`` or ``TypeError``, or its
        worker crashes on them.
        """
        ours = sys.version.split()[0]
        return (
            f"{self.where} runs Python {theirs}, this client Python {ours}: every host of a "
            f"pool needs the client's Python {PYTHON_MINOR}, as the functions and classes of "
            "your script travel to it as bytecode, which another version of Python misreads "
            f"(an error or a crashed worker); {self._python_hint(PYTHON_MINOR)}"
        )

    def _python_hint(self, minor: str) -> str:
        """What to do about a host whose Python is not ``minor``."""
        return f"run its workers with Python {minor}"

    def _version_mismatch(self, error: control.VersionError) -> str:
        """Why this host, whose supervisor speaks another version of the
        control protocol, cannot serve the pool, and what to do."""
        release = f"distex_zmq {error.release}" if error.release else "another distex_zmq"
        return (
            f"{self.where} runs {release} (control protocol version {error.theirs}), this "
            f"client distex_zmq {__version__} (control protocol version {control.VERSION}): "
            f"{self._install_hint()}"
        )

    def _install_hint(self) -> str:
        """What to do about a host whose distex_zmq is not the client's."""
        return f"install the client's version there (pip install distex_zmq=={__version__})"

    def _on_refused(self, refused: control.Refused) -> None:
        reason = refused.reason
        if not self._hello.done():
            self._hello.set_exception(
                HostConnectionError(f"{self.where} refused the pool: {reason}")
            )
        elif refused.identity is not None:  # a worker it would not start: one that died at once
            if refused.identity in self.workers:
                self.workers.discard(refused.identity)
                message = f"{self.where} refused to start it: {reason}"
                self._on_exit(refused.identity, 0, 255, message)
        else:
            # the host does not serve this pool as it did: a spawner that
            # gave up on it after a short outage ("'ping' before 'open'")
            # stopped its workers; lost, it is reconnected
            self._lose(f"it refused a request ({reason})")

    def _on_bad_message(self, error: ProtocolError) -> None:
        """A message from the supervisor that does not pass: the host is unusable."""
        if not self._hello.done():
            if isinstance(error, control.VersionError):
                message = self._version_mismatch(error)
            else:
                message = f"{self.where}: {error}"
            self._hello.set_exception(HostConnectionError(message))
        else:
            self._lose(f"it sent a malformed message ({error})")

    def _end(self) -> None:
        if not self._ended.done():
            self._ended.set_result(None)

    def _start_heartbeats(self) -> None:
        self.started = True
        self._last_heard = time.monotonic()
        timeout = self._heartbeat_timeout
        self._ping_due = self._last_heard + timeout / 4
        self._loop.call_later(timeout / 4, self._ping)
        self._loop.call_later(timeout, self._check_silence)

    def _stood_still(self) -> None:
        """Count no silence of the host while a ping was overdue: this
        process stood still (or its loop was held up) and sent none."""
        now = time.monotonic()
        late = now - self._ping_due
        if late > 0:
            self._last_heard = min(self._last_heard + late, now)
            self._ping_due = now

    def _ping(self) -> None:
        if self._closing or self.lost:
            return
        self._stood_still()
        self._send(control.Ping())
        self._ping_due = time.monotonic() + self._heartbeat_timeout / 4
        self._loop.call_later(self._heartbeat_timeout / 4, self._ping)

    def _check_silence(self) -> None:
        """Lose the host ``heartbeat_timeout`` after the last message heard.

        Messages only note when they came; this timer re-arms itself for
        the deadline the latest of them set, so a loss is noticed on time
        without a timer per message.
        """
        if self._closing or self.lost:
            return
        self._stood_still()  # the overdue ping may come after this check
        timeout = self._heartbeat_timeout
        silent = time.monotonic() - self._last_heard
        if silent >= timeout:
            self._lose(f"no heartbeat for {silent:.1f} s (heartbeat_timeout={timeout:g} s)")
        else:
            self._loop.call_later(timeout - silent, self._check_silence)

    def _lose(self, reason: str) -> None:
        if self.lost or self._closing or not self.started:
            return
        self.lost = True
        workers = set(self.workers)
        self.workers.clear()
        _logger.warning("host %s lost: %s", self.where, reason)
        run_in_background(self._loop, self._close(), self._tasks)
        self._on_lost(self, reason, workers)

    # the launcher's interface

    def spawn(self, identity: bytes) -> None:
        """Start a worker with this identity on the host."""
        self.workers.add(identity)
        self._send(control.Spawn(identity))

    def kill(self, identity: bytes) -> None:
        """SIGKILL a worker; its exit is reported as usual."""
        if identity in self.workers:
            self._send(control.Kill(identity))

    async def stop(self, grace: float) -> None:
        """Stop the workers (the supervisor escalates after ``grace``), then disconnect."""
        self._closing = True
        if self.started and not self.lost:
            self._send(control.Stop(grace))
            try:
                await asyncio.wait_for(asyncio.shield(self._ended), grace + STOP_MARGIN)
            except asyncio.TimeoutError:
                _logger.warning("%s did not stop its workers in time", self.where)
        await self._close()
