"""The supervising agent of one pool on one remote host: ``python -m distex_zmq.agent``.

A pool starts one agent on each SSH host, over the SSH session. The agent
starts that host's workers (which connect to the pool's broker), learns at
once when one exits (the local launcher's pidfd) and tells the pool. It
speaks JSON lines, commands on stdin and events on stdout::

    pool -> agent   {"op": "keys", "server", "public", "secret"}
                                                   CURVE keys of the workers, passed
                                                   to each on its stdin
                    {"op": "spawn", "id": HEX}     start a worker with this routing id
                    {"op": "kill", "id": HEX}      SIGKILL it (its exit is reported)
                    {"op": "ping"}                 heartbeat; answered with a pong
                    {"op": "stop", "grace": S}     stop the workers, then exit
    agent -> pool   {"ev": "hello", "version", "protocol", "host", "python", "pid"}
                    {"ev": "exit", "id", "pid", "rc", "tail"}
                    {"ev": "pong"}
                    {"ev": "stopped"}

The agent exits, and its workers with it, when told to stop, when its stdin
closes (the SSH connection dropped, or the pool's process died) and when no
command has come for ``--heartbeat-timeout`` seconds (the pool's host is
cut off or hangs). Workers are started with the agent as their parent, so
Linux kills them if the agent itself is killed. Their standard output goes
to the agent's standard error, which the pool relays, so that a task that
prints cannot garble the event stream.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from typing import Any

from distex_zmq.launch.local import LocalLauncher
from distex_zmq.loops import run_in_background
from distex_zmq.version import __version__
from distex_zmq.wire import frames as protocol

#: Longest command line accepted on stdin; anything longer is a broken peer.
MAX_COMMAND = 4096
#: Why the agent ends when the pool stops it.
STOPPED = "stopped by the pool"
#: Grace given to the workers when the agent ends without a stop command.
ABANDON_GRACE = 1.0


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
        self._launcher = LocalLauncher(
            loop, endpoint, worker_args, self._on_exit, worker_stdout=sys.stderr.fileno()
        )
        self._buffer = b""
        self._last_heard = time.monotonic()
        self._done: asyncio.Future[str] = loop.create_future()
        self._stopping = False

    async def run(self) -> str:
        """Serve commands until told to stop or abandoned; return why it ended."""
        self._send(
            ev="hello",
            version=__version__,
            protocol=protocol.VERSION,
            host=socket.gethostname(),
            python=sys.version.split()[0],
            pid=os.getpid(),
        )
        os.set_blocking(0, False)
        self._loop.add_reader(0, self._on_stdin)
        self._loop.call_later(self._heartbeat_timeout / 4, self._check_heartbeat)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._loop.add_signal_handler(sig, self._end, f"got {signal.Signals(sig).name}")
        reason = await self._done
        self._loop.remove_reader(0)
        if not self._stopping:
            await self._launcher.stop(ABANDON_GRACE)
        return reason

    def _send(self, **event: Any) -> None:
        data = json.dumps(event).encode() + b"\n"
        try:
            while data:
                written = os.write(self._events_fd, data)
                data = data[written:]
        except OSError:  # the pool is gone
            self._end("the pool's connection closed")

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
        if len(self._buffer) > MAX_COMMAND:
            self._end(f"a command line longer than {MAX_COMMAND} bytes")
            return
        for line in lines:
            if line.strip():
                self._command(line)

    def _command(self, line: bytes) -> None:
        try:
            cmd = json.loads(line)
            op = cmd["op"]
            if op == "spawn":
                self._launcher.spawn(bytes.fromhex(cmd["id"]))
            elif op == "kill":
                self._launcher.kill(bytes.fromhex(cmd["id"]))
            elif op == "keys":
                keys = {k: str(cmd[k]) for k in ("server", "public", "secret")}
                self._launcher.worker_stdin = json.dumps(keys).encode() + b"\n"
            elif op == "ping":
                self._send(ev="pong")
            elif op == "stop":
                stop = self._stop(float(cmd.get("grace", 3.0)))
                run_in_background(self._loop, stop, self._tasks)
            else:
                raise ValueError(f"unknown op {op!r}")
        except (ValueError, KeyError, TypeError) as e:
            print(f"distex_zmq agent: bad command {line[:200]!r}: {e}", file=sys.stderr)

    async def _stop(self, grace: float) -> None:
        if self._stopping:
            return
        self._stopping = True
        await self._launcher.stop(grace)
        self._send(ev="stopped")
        self._end(STOPPED)

    def _check_heartbeat(self) -> None:
        silent = time.monotonic() - self._last_heard
        if silent > self._heartbeat_timeout:
            self._end(f"no word from the pool for {silent:.1f} s")
            return
        self._loop.call_later(self._heartbeat_timeout / 4, self._check_heartbeat)

    def _on_exit(self, identity: bytes, pid: int, returncode: int, tail: str) -> None:
        self._send(ev="exit", id=identity.hex(), pid=pid, rc=returncode, tail=tail)
