"""The spawner daemon: ``python -m distex_zmq.spawner`` (or ``distex-zmq-spawner``).

Run it once on each host. Pools that know the cluster's shared secret ask
it for workers; it starts them (they connect back to that pool's broker),
supervises them, reports their exits, and kills them when the pool stops,
goes silent for its heartbeat timeout, or the spawner itself is stopped.

::

    pool (DEALER) --CURVE, secret-derived keys--> spawner (ROUTER, port 8899)
                                                    |  one Session per pool:
                                                    |  a LocalLauncher
    pool's broker <--CURVE, per-pool keys--------- workers

Security (DESIGN §8): with a secret (``DISTEX_ZMQ_SECRET`` or
``--secret-file``) the port is a CURVE server that admits only clients
holding the secret's client key. Without one it binds to loopback only,
unless ``--insecure`` says otherwise (with a warning). Every request is
checked (``spawner_protocol``); a bad one gets a refusal and one log line,
never a crash or a process. Messages over ``MAX_MESSAGE`` bytes drop their
connection inside ZeroMQ, and worker counts are capped by ``--max-workers``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import socket
import sys
import time
from typing import Any

import zmq

from distex_zmq.errors import ProtocolError
from distex_zmq.launch.local import LocalLauncher
from distex_zmq.loops import run_in_background
from distex_zmq.security import ClusterKeys, ZapHandler, make_server
from distex_zmq.version import __version__
from distex_zmq.wire import control as sp
from distex_zmq.wire import frames as protocol
from distex_zmq.wire.zmqio import readable

_logger = logging.getLogger("distex_zmq.spawner")

#: Grace for a pool's workers when the pool went silent or the spawner stops.
ABANDON_GRACE = 1.0
#: Bounds on the heartbeat timeout a pool may ask for.
MIN_HEARTBEAT, MAX_HEARTBEAT = 0.5, 600.0
#: Log lines about bad requests, at most, per peer (a flood must not fill the disk).
MAX_LOGGED_PER_PEER = 5


class Session:
    """One pool served by this spawner: its workers and its heartbeat."""

    def __init__(
        self,
        spawner: Spawner,
        peer: bytes,
        message: dict[str, Any],
        loop: asyncio.AbstractEventLoop,
    ):
        self.peer = peer
        self.capacity = sp.field(message, "workers", int, 1, sp.MAX_WORKERS_PER_POOL)
        self.heartbeat = sp.field(message, "heartbeat", float, MIN_HEARTBEAT, MAX_HEARTBEAT)
        keys = sp.keys(message)
        self.launcher = LocalLauncher(
            loop,
            sp.endpoint(message),
            [*sp.worker_args(message), "--curve-keys-on-stdin"],
            lambda identity, pid, rc, tail: spawner.on_exit(self, identity, pid, rc, tail),
            worker_stdout=sys.stderr.fileno(),
            worker_stdin=json.dumps(keys).encode() + b"\n",
        )
        self.last_heard = time.monotonic()
        self.stopping = False

    def __str__(self) -> str:
        return f"pool {self.peer.hex()[:12]}"


class Spawner:
    """Serves spawn requests on a ROUTER socket until stopped."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        keys: ClusterKeys | None,
        max_workers: int,
    ):
        self._loop = loop
        self._tasks: set[asyncio.Task[None]] = set()
        self.max_workers = max_workers
        self.sessions: dict[bytes, Session] = {}
        self._logged: dict[bytes, int] = {}
        self._ctx: zmq.Context[Any] = zmq.Context()
        self._zap: ZapHandler | None = None
        sock = self._sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, sp.MAX_MESSAGE)
        sock.setsockopt(zmq.RCVHWM, 1000)
        sock.setsockopt(zmq.SNDHWM, 1000)
        if keys is not None:
            self._zap = ZapHandler(self._ctx, loop)
            self._zap.allow(keys.client.public)
            make_server(sock, keys.spawner)
        address = f"[{host}]" if ":" in host else host
        sock.bind(f"tcp://{address}:{port}")
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._fd = int(sock.getsockopt(zmq.FD))
        loop.add_reader(self._fd, self._on_readable)
        self._stopped: asyncio.Future[str] = loop.create_future()
        loop.call_later(MIN_HEARTBEAT / 2, self._check_heartbeats)

    @property
    def workers(self) -> int:
        """Workers reserved by the pools served now."""
        return sum(s.capacity for s in self.sessions.values())

    async def serve(self) -> str:
        """Serve until ``stop``; stop every pool's workers; return why."""
        reason = await self._stopped
        self._loop.remove_reader(self._fd)
        sessions = list(self.sessions.values())
        self.sessions.clear()
        await asyncio.gather(*(s.launcher.stop(ABANDON_GRACE) for s in sessions))
        if self._zap is not None:
            self._zap.close()
        self._sock.close(linger=0)
        self._ctx.term()
        return reason

    def stop(self, reason: str) -> None:
        if not self._stopped.done():
            self._stopped.set_result(reason)

    # requests

    def _on_readable(self) -> None:
        sock = self._sock
        for _ in range(100):
            if not readable(sock):
                return
            frames = sock.recv_multipart(copy=True)
            if len(frames) < 2:
                continue
            peer = frames[0]
            try:
                self._handle(peer, sp.decode(frames[1:]))
            except ProtocolError as e:
                self._refuse(peer, str(e))
            except Exception as e:  # noqa: BLE001 - a request must not stop the spawner
                _logger.exception("error serving a request from %s", peer.hex()[:12])
                self._refuse(peer, f"internal error: {type(e).__name__}")
        self._loop.call_soon(self._on_readable)

    def _handle(self, peer: bytes, message: dict[str, Any]) -> None:
        op = message.get("op")
        session = self.sessions.get(peer)
        if op == "open":
            self._open(peer, message)
            return
        if session is None:
            raise ProtocolError(f"{op!r} before open")
        session.last_heard = time.monotonic()
        if op == "ping":
            self._send(peer, ev="pong")
        elif op == "spawn":
            identity = sp.identity(message)
            if session.stopping:
                raise ProtocolError("the pool is stopping")
            if len(session.launcher.processes) >= session.capacity:
                self._send(
                    peer,
                    ev="refused",
                    id=identity.hex(),
                    reason=f"the pool opened {session.capacity} workers here",
                )
                return
            if identity in session.launcher.processes:
                raise ProtocolError("that worker runs already")
            session.launcher.spawn(identity)
        elif op == "kill":
            session.launcher.kill(sp.identity(message))
        elif op == "stop":
            grace = sp.field(message, "grace", float, 0, 60)
            why = "stopped by its pool"
            run_in_background(self._loop, self._stop_session(session, grace, why), self._tasks)
        else:
            raise ProtocolError(f"unknown op {str(op)[:40]!r}")

    def _open(self, peer: bytes, message: dict[str, Any]) -> None:
        if peer in self.sessions:
            raise ProtocolError("this pool is open already")
        if message.get("protocol") != protocol.VERSION:
            raise ProtocolError(
                f"worker protocol version {message.get('protocol')!r}; this spawner runs "
                f"distex_zmq {__version__} with version {protocol.VERSION}"
            )
        session = Session(self, peer, message, self._loop)
        free = self.max_workers - self.workers
        if session.capacity > free:
            raise ProtocolError(
                f"{session.capacity} workers asked, {free} free on {socket.gethostname()} "
                f"(--max-workers {self.max_workers})"
            )
        self.sessions[peer] = session
        _logger.info("%s opened: up to %d workers", session, session.capacity)
        self._send(
            peer,
            ev="opened",
            host=socket.gethostname(),
            version=__version__,
            protocol=protocol.VERSION,
            pid=os.getpid(),
        )

    def _refuse(self, peer: bytes, reason: str) -> None:
        count = self._logged.get(peer, 0)
        if count < MAX_LOGGED_PER_PEER:
            if len(self._logged) > 10_000:
                self._logged.clear()  # bounded memory, whatever the peers
            self._logged[peer] = count + 1
            _logger.warning("refused a request from %s: %s", peer.hex()[:12], reason)
        self._send(peer, ev="refused", reason=reason)

    def _send(self, peer: bytes, **message: Any) -> None:
        try:
            self._sock.send_multipart([peer, *sp.encode(message)], flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # gone, or not reading: it learns nothing more

    # workers and pools

    def on_exit(self, session: Session, identity: bytes, pid: int, rc: int, tail: str) -> None:
        if self.sessions.get(session.peer) is session and not session.stopping:
            self._send(session.peer, ev="exit", id=identity.hex(), pid=pid, rc=rc, tail=tail)

    async def _stop_session(self, session: Session, grace: float, why: str) -> None:
        if session.stopping:
            return
        session.stopping = True
        _logger.info(
            "%s: %s; stopping its %d workers", session, why, len(session.launcher.processes)
        )
        await session.launcher.stop(grace)
        if self.sessions.get(session.peer) is session:
            del self.sessions[session.peer]
            self._send(session.peer, ev="stopped")

    def _check_heartbeats(self) -> None:
        if self._stopped.done():
            return
        # ZeroMQ's descriptor is edge-triggered and sends can consume an
        # edge: a look now and then makes sure no request waits unseen
        self._on_readable()
        now = time.monotonic()
        for session in list(self.sessions.values()):
            silent = now - session.last_heard
            if silent > session.heartbeat and not session.stopping:
                why = f"silent for {silent:.1f} s"
                stop = self._stop_session(session, ABANDON_GRACE, why)
                run_in_background(self._loop, stop, self._tasks)
        self._loop.call_later(MIN_HEARTBEAT / 2, self._check_heartbeats)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
