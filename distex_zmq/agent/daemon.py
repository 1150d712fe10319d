"""The supervising agent of one pool on one remote host: ``python -m distex_zmq.agent``.

A pool starts one agent on each SSH host, over the SSH session
(``launch/ssh.py``). The agent starts that host's workers (which connect to
the pool's broker), learns at once when one exits (``launch/local.py``'s
pidfd) and tells the pool. It speaks the control messages of
``wire/control.py`` one per line: commands on stdin (keys, spawn, kill,
ping, stop), events on stdout (hello first, then exit, output, refused,
pong, stopped). A command that does not pass gets a refusal and a line on
stderr.

The agent exits, and its workers with it, when told to stop, when its stdin
closes (the SSH connection dropped, or the pool's process died) and when no
command has come for ``--heartbeat-timeout`` seconds (the pool's host is
cut off or hangs). Workers are started with the agent as their parent, so
Linux kills them if the agent itself is killed. Their stdout and stderr are
read line by line and sent as output events (``launch/relay.py``): the agent
alone writes its stdout, one whole event per line, so a task that prints
cannot garble the event stream. The agent's own stderr carries only its own
errors.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time

from distex_zmq.errors import ProtocolError
from distex_zmq.launch.local import LocalLauncher
from distex_zmq.launch.relay import OutputRelay
from distex_zmq.loops import run_in_background
from distex_zmq.version import __version__
from distex_zmq.wire import control, frames

#: Why the agent ends when the pool stops it.
STOPPED = "stopped by the pool"
#: Grace given to the workers when the agent ends without a stop command.
ABANDON_GRACE = 1.0
#: Why a spawn before the workers' keys is refused.
NO_KEYS = (
    "the workers' keys did not come before this spawn: did something on this host read "
    "the agent's stdin, such as a start-up file of the SSH user's login shell (~/.bashrc) "
    "that reads it in the background?"
)


class Agent:
    """Starts workers on this host on the pool's behalf and reports their exits."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        endpoint: str,
        worker_args: list[str],
        heartbeat_timeout: float,
        events_fd: int,
    ):
        self._loop = loop
        self._tasks: set[asyncio.Task[None]] = set()
        self._heartbeat_timeout = heartbeat_timeout
        self._events_fd = events_fd
        self._relay = OutputRelay(self._send)
        self._launcher = LocalLauncher(
            loop, endpoint, worker_args, self._on_exit, on_output=self._relay.forward
        )
        self._buffer = b""
        self._last_heard = time.monotonic()
        #: when the next heartbeat check is due
        self._check_due = self._last_heard
        self._done: asyncio.Future[str] = loop.create_future()
        self._stopping = False

    async def run(self) -> str:
        """Serve commands until told to stop or abandoned; return why it ended."""
        hello = control.Hello(
            host=socket.gethostname(),
            version=__version__,
            protocol=frames.VERSION,
            python=sys.version.split()[0],
            pid=os.getpid(),
        )
        self._send(hello)
        os.set_blocking(0, False)
        self._loop.add_reader(0, self._on_stdin)
        self._check_due = time.monotonic() + self._heartbeat_timeout / 4
        self._loop.call_later(self._heartbeat_timeout / 4, self._check_heartbeat)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._loop.add_signal_handler(sig, self._end, f"got {signal.Signals(sig).name}")
        reason = await self._done
        self._loop.remove_reader(0)
        if not self._stopping:
            await self._launcher.stop(ABANDON_GRACE)
        return reason

    def _send(self, event: control.Event) -> bool:
        data = control.encode_line(event)
        try:
            while data:
                written = os.write(self._events_fd, data)
                data = data[written:]
        except OSError:  # the pool is gone
            self._end("the pool's connection closed")
            return False
        return True

    def _end(self, reason: str) -> None:
        if not self._done.done():
            self._done.set_result(reason)

    def _on_stdin(self) -> None:
        try:
            data = os.read(0, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._end("the pool's connection closed")
            return
        self._last_heard = time.monotonic()
        lines = (self._buffer + data).split(b"\n")
        self._buffer = lines.pop()
        if len(self._buffer) > control.MAX_MESSAGE:
            self._end(f"a command line longer than {control.MAX_MESSAGE} bytes")
            return
        for line in lines:
            if line.strip():
                self._command(line)

    def _command(self, line: bytes) -> None:
        try:
            command = control.decode_line(line, control.AGENT_READS)
        except ProtocolError as e:
            print(f"distex_zmq agent: refused {line[:200]!r}: {e}", file=sys.stderr)
            self._send(control.Refused(str(e)))
            return
        if isinstance(command, control.Spawn):
            if self._launcher.worker_stdin is None:  # its worker could not reach the broker
                self._send(control.Refused(NO_KEYS, command.identity))
                return
            try:
                self._launcher.spawn(command.identity)
            except OSError as e:  # reported as a worker that died at once
                self._send(control.Refused(f"cannot start a worker: {e}", command.identity))
        elif isinstance(command, control.Kill):
            self._launcher.kill(command.identity)
        elif isinstance(command, control.Keys):
            self._launcher.worker_stdin = json.dumps(command.keys).encode() + b"\n"
        elif isinstance(command, control.Ping):
            self._send(control.Pong())
        elif isinstance(command, control.Stop):
            run_in_background(self._loop, self._stop(command.grace), self._tasks)

    async def _stop(self, grace: float) -> None:
        if self._stopping:
            return
        self._stopping = True
        await self._launcher.stop(grace)
        self._send(control.Stopped())
        self._end(STOPPED)

    def _check_heartbeat(self) -> None:
        now = time.monotonic()
        # a check that comes late: this process stood still (stopped, its
        # VM paused), and what the pool sent meanwhile waits unread; that
        # time counts as no silence of the pool's
        late = max(now - self._check_due, 0.0)
        self._last_heard = min(self._last_heard + late, now)
        silent = now - self._last_heard
        if silent > self._heartbeat_timeout:
            self._end(f"no word from the pool for {silent:.1f} s")
            return
        self._check_due = now + self._heartbeat_timeout / 4
        self._loop.call_later(self._heartbeat_timeout / 4, self._check_heartbeat)

    def _on_exit(self, identity: bytes, pid: int, returncode: int | None, tail: str) -> None:
        self._relay.forget(identity)
        self._send(control.Exit(identity, pid, returncode, tail))
