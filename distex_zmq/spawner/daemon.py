"""The spawner daemon: ``python -m distex_zmq.spawner`` (or ``distex-zmq-spawner``).

Run it once on each host. Pools that know the cluster's shared secret ask
it for workers; it starts them (they connect back to that pool's broker),
supervises them, reports their exits, forwards what they print to their
pool (``launch/relay.py``: line by line, dropped rather than queued when the
pool does not keep up), and kills them when the pool stops, goes silent for
its heartbeat timeout (half of it once a connection closed: a killed
client's closes, while a network that is down closes none), or the spawner
itself is stopped.

::

    pool (DEALER) --CURVE, secret-derived keys--> spawner (ROUTER, port 8899)
                                                    |  one Session per pool:
                                                    |  a LocalLauncher
    pool's broker <--CURVE, per-pool keys--------- workers

Security (DESIGN §8): with a secret (``DISTEX_ZMQ_SECRET`` or
``--secret-file``) the port is a CURVE server that admits only clients
holding the secret's client key (``security.py``). Without one it binds to
loopback only, unless ``--insecure`` says otherwise (with a warning). Every
request is checked (``wire/control.py``); a bad one gets a refusal and one
log line, never a crash or a process. A socket monitor logs the connections
refused in the CURVE handshake (a client with another secret, or none),
which never reach the socket. Messages over ``MAX_MESSAGE`` bytes
drop their connection inside ZeroMQ, and worker counts are capped by
``--max-workers``.
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
from zmq.utils.monitor import parse_monitor_message

from distex_zmq.errors import ProtocolError
from distex_zmq.launch.local import LocalLauncher, describe_exit
from distex_zmq.launch.relay import OutputRelay
from distex_zmq.loops import run_in_background
from distex_zmq.security import HANDSHAKE_FAILED, ClusterKeys, ZapHandler, make_server
from distex_zmq.version import __version__
from distex_zmq.wire import control, frames
from distex_zmq.wire.zmqio import EdgeReader

_logger = logging.getLogger("distex_zmq.spawner")

#: Grace for a pool's workers when the pool went silent or the spawner stops.
ABANDON_GRACE = 1.0
#: Milliseconds a stopping spawner gives its last messages to reach the pools.
STOP_LINGER_MS = 500
#: Log lines about bad requests, at most, per peer (a flood must not fill the disk).
MAX_LOGGED_PER_PEER = 5
#: Seconds between two looks at the pools' silence.
HEARTBEAT_CHECK = 0.25
#: Refused handshakes logged one by one; after them, one line in this many.
MAX_LOGGED_HANDSHAKES = 10
HANDSHAKE_LOG_EVERY = 1000


class Session:
    """One pool served by this spawner: its workers and its heartbeat."""

    def __init__(
        self,
        spawner: Spawner,
        peer: bytes,
        where: str,
        request: control.Open,
        loop: asyncio.AbstractEventLoop,
    ):
        self.peer = peer
        #: the address the pool opened from
        self.where = where
        self.capacity = request.workers
        self.heartbeat = request.heartbeat
        #: the workers' output, to the pool
        self.relay = OutputRelay(lambda event: spawner.send(peer, event))
        self.launcher = LocalLauncher(
            loop,
            request.endpoint,
            [*request.worker_args(), "--curve-keys-on-stdin"],
            lambda identity, pid, rc, tail: spawner.on_exit(self, identity, pid, rc, tail),
            worker_stdin=json.dumps(request.keys).encode() + b"\n",
            on_output=self.relay.forward,
        )
        self.last_heard = time.monotonic()
        self.stopping = False
        #: when each running worker started (monotonic), by identity
        self.started: dict[bytes, float] = {}

    def __str__(self) -> str:
        return f"pool {self.short_id}"

    @property
    def short_id(self) -> str:
        return self.peer.hex()[:12]

    def status(self, now: float) -> dict[str, Any]:
        """The pool as a status reply tells it: id, capacity, workers' pids and
        ages, the address it opened from, and its silence (seconds since its
        last request)."""
        workers = [
            {"pid": proc.pid, "age": round(now - self.started.get(identity, now), 3)}
            for identity, proc in self.launcher.processes.items()
        ]
        return {
            "id": self.short_id,
            "capacity": self.capacity,
            "workers": workers,
            "address": self.where,
            "silent": round(max(now - self.last_heard, 0.0), 3),
        }


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
        self._started = time.monotonic()
        self.max_workers = max_workers
        self.sessions: dict[bytes, Session] = {}
        self._logged: dict[bytes, int] = {}
        self._ctx: zmq.Context[Any] = zmq.Context()
        self._zap: ZapHandler | None = None
        sock = self._sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, control.MAX_MESSAGE)
        sock.setsockopt(zmq.RCVHWM, 1000)
        sock.setsockopt(zmq.SNDHWM, 1000)
        if keys is not None:
            self._zap = ZapHandler(self._ctx, loop)
            self._zap.allow(keys.client.public)
            make_server(sock, keys.spawner)
        address = f"[{host}]" if ":" in host else host
        sock.bind(f"tcp://{address}:{port}")
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._reader = EdgeReader(loop, sock, self._on_request, max_reads=100)
        #: connections refused in the handshake, which never reach ``sock``
        self.refused_handshakes = 0
        self._monitor = sock.get_monitor_socket(HANDSHAKE_FAILED | zmq.EVENT_DISCONNECTED)
        #: when a pool's connection last closed (monotonic; 0.0: none yet)
        self._closed_at = 0.0
        self._monitor_reader = EdgeReader(loop, self._monitor, self._on_monitor)
        self._stopped: asyncio.Future[str] = loop.create_future()
        self._check_due = time.monotonic() + HEARTBEAT_CHECK
        loop.call_later(HEARTBEAT_CHECK, self._check_heartbeats)

    @property
    def workers(self) -> int:
        """Workers reserved by the pools served now."""
        return sum(s.capacity for s in self.sessions.values())

    async def serve(self) -> str:
        """Serve until ``stop``; stop every pool's workers; return why."""
        reason = await self._stopped
        self._reader.close()
        self._monitor_reader.close()
        self._sock.disable_monitor()
        self._monitor.close(linger=0)
        sessions = list(self.sessions.values())
        self.sessions.clear()
        if sessions:
            _logger.info(
                "%s: stopping %s",
                reason,
                ", ".join(
                    f"{s} (from {s.where}) and its {len(s.launcher.processes)} workers"
                    for s in sessions
                ),
            )
        for session in sessions:
            # the pool loses this host for that reason, not as one that died
            why = f"the spawner on {socket.gethostname()} is stopping: {reason}"
            self.send(session.peer, control.Refused(why))
        await asyncio.gather(*(s.launcher.stop(ABANDON_GRACE) for s in sessions))
        if self._zap is not None:
            self._zap.close()
        self._sock.close(linger=STOP_LINGER_MS if sessions else 0)
        self._ctx.term()
        return reason

    def stop(self, reason: str) -> None:
        if not self._stopped.done():
            self._stopped.set_result(reason)

    # requests

    def _on_request(self, message: list[zmq.Frame]) -> None:
        if len(message) < 2:
            return
        peer, *body = (frame.bytes for frame in message)
        where = peer_address(message[-1])
        try:
            request = control.decode(body, control.SPAWNER_READS)
            if _logger.isEnabledFor(logging.DEBUG):  # --verbose
                _logger.debug(
                    "request from %s (%s): %s", peer.hex()[:12], where, describe_request(request)
                )
            self._handle(peer, where, request)
        except ProtocolError as e:
            self._refuse(peer, where, str(e))
        except Exception as e:  # noqa: BLE001 - a request must not stop the spawner
            _logger.exception("error serving a request from %s (%s)", peer.hex()[:12], where)
            self._refuse(peer, where, f"internal error: {type(e).__name__}")

    def _handle(self, peer: bytes, where: str, request: control.Message) -> None:
        if isinstance(request, control.Open):
            self._open(peer, where, request)
            return
        if isinstance(request, control.Status):
            self.send(peer, self.status())
            return
        session = self.sessions.get(peer)
        if session is None:
            raise ProtocolError(f"{request.KIND!r} before {control.Open.KIND!r}")
        session.last_heard = time.monotonic()
        if isinstance(request, control.Ping):
            self.send(peer, control.Pong())
        elif isinstance(request, control.Spawn):
            if session.stopping:
                raise ProtocolError("the pool is stopping")
            if len(session.launcher.processes) >= session.capacity:
                why = f"the pool opened {session.capacity} workers here"
                self.send(peer, control.Refused(why, request.identity))
                return
            if request.identity in session.launcher.processes:
                raise ProtocolError("that worker runs already")
            proc = session.launcher.spawn(request.identity)
            session.started[request.identity] = time.monotonic()
            _logger.info("%s: worker pid %d started", session, proc.pid)
        elif isinstance(request, control.Kill):
            session.launcher.kill(request.identity)
        elif isinstance(request, control.Stop):
            stop = self._stop_session(session, request.grace, "stopped by its pool")
            run_in_background(self._loop, stop, self._tasks)

    def _open(self, peer: bytes, where: str, request: control.Open) -> None:
        if peer in self.sessions:
            raise ProtocolError("this pool is open already")
        if request.protocol != frames.VERSION:
            raise ProtocolError(
                f"worker protocol version {request.protocol}; this spawner runs "
                f"distex_zmq {__version__} with version {frames.VERSION}"
            )
        free = self.max_workers - self.workers
        if request.workers > free:
            raise ProtocolError(
                f"{request.workers} workers asked, {free} free on {socket.gethostname()} "
                f"(--max-workers {self.max_workers})"
            )
        session = self.sessions[peer] = Session(self, peer, where, request, self._loop)
        _logger.info("%s opened from %s: up to %d workers", session, where, session.capacity)
        opened = control.Opened(
            host=socket.gethostname(),
            version=__version__,
            protocol=frames.VERSION,
            python=sys.version.split()[0],
            pid=os.getpid(),
        )
        self.send(peer, opened)

    def _refuse(self, peer: bytes, where: str, reason: str) -> None:
        count = self._logged.get(peer, 0)
        if count < MAX_LOGGED_PER_PEER:
            if len(self._logged) > 10_000:
                self._logged.clear()  # bounded memory, whatever the peers
            self._logged[peer] = count + 1
            _logger.warning("refused a request from %s (%s): %s", peer.hex()[:12], where, reason)
        self.send(peer, control.Refused(reason))

    def send(self, peer: bytes, event: control.Event) -> bool:
        """Send ``event`` to a pool, if it can take it now; return whether it could."""
        try:
            self._sock.send_multipart([peer, *control.encode(event)], flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            return False  # gone, or not reading: it learns nothing more
        finally:
            self._reader.poke()
        return True

    def _on_monitor(self, frames: list[zmq.Frame]) -> None:
        """A connection closed (noted for ``_check_heartbeats``), or failed its
        handshake: log why (the first ones, then one line in
        ``HANDSHAKE_LOG_EVERY``, so a flood cannot fill the log)."""
        event = parse_monitor_message([frame.bytes for frame in frames])
        if event["event"] == zmq.EVENT_DISCONNECTED:
            self._closed_at = time.monotonic()
            return
        if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            return  # a key the ZAP handler refused: it logged it
        self.refused_handshakes += 1
        count = self.refused_handshakes
        if count <= MAX_LOGGED_HANDSHAKES or count % HANDSHAKE_LOG_EVERY == 0:
            _logger.warning(
                "refused a connection in its handshake (%d so far): %s",
                count,
                explain_refused_handshake(event["event"], event["value"], self._zap is not None),
            )

    # workers and pools

    def status(self) -> control.StatusReply:
        """What this spawner serves now."""
        now = time.monotonic()
        return control.StatusReply(
            host=socket.gethostname(),
            version=__version__,
            pid=os.getpid(),
            uptime=round(now - self._started, 3),
            max_workers=self.max_workers,
            pools=[session.status(now) for session in self.sessions.values()],
        )

    def on_exit(
        self, session: Session, identity: bytes, pid: int, rc: int | None, tail: str
    ) -> None:
        session.relay.forget(identity)
        started = session.started.pop(identity, None)
        ran = f" after {time.monotonic() - started:.1f} s" if started is not None else ""
        _logger.info("%s: worker pid %d ended%s: %s", session, pid, ran, describe_exit(rc))
        if self.sessions.get(session.peer) is session and not session.stopping:
            self.send(session.peer, control.Exit(identity, pid, rc, tail))

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
            self.send(session.peer, control.Stopped())

    def _check_heartbeats(self) -> None:
        if self._stopped.done():
            return
        now = time.monotonic()
        # a check that comes late: this process stood still (stopped, its
        # VM paused), and what the pools sent meanwhile waits unread; that
        # time counts as no silence of theirs
        late = max(now - self._check_due, 0.0)
        for session in list(self.sessions.values()):
            session.last_heard = min(session.last_heard + late, now)
            silent = now - session.last_heard
            # A pool pings every quarter of its timeout. A connection that
            # closed since it was last heard may have been its own, closed
            # by its death (a killed client's): then half the timeout tells
            # it, so that its workers go within seconds. A live pool
            # connects again and pings within a quarter. A network that is
            # down closes no connection: the pool gets the whole timeout,
            # as it gives this host, to ride it out.
            closed = self._closed_at > session.last_heard
            limit = session.heartbeat / 2 if closed else session.heartbeat
            if silent > limit and not session.stopping:
                why = f"silent for {silent:.1f} s"
                stop = self._stop_session(session, ABANDON_GRACE, why)
                run_in_background(self._loop, stop, self._tasks)
        self._check_due = now + HEARTBEAT_CHECK
        self._loop.call_later(HEARTBEAT_CHECK, self._check_heartbeats)


def describe_request(request: control.Message) -> str:
    """``request`` as a log line tells it: its kind and what it asks, never
    the workers' keys of an ``open``."""
    if isinstance(request, control.Open):
        return (
            f"open: up to {request.workers} workers, broker {request.endpoint}, "
            f"heartbeat {request.heartbeat:g} s"
        )
    if isinstance(request, (control.Spawn, control.Kill)):
        return f"{request.KIND} worker {request.identity.hex()}"
    if isinstance(request, control.Stop):
        return f"stop: grace {request.grace:g} s"
    return request.KIND


def peer_address(frame: zmq.Frame) -> str:
    """The address that sent the message of ``frame`` (``?`` if ZeroMQ does not say)."""
    try:
        return str(frame.get("Peer-Address"))
    except zmq.ZMQError:
        return "?"


def explain_refused_handshake(event: int, value: int, secret: bool) -> str:
    """Why a client's handshake failed, from the ``event`` and ``value`` of
    the monitor, on a spawner with or without a ``secret``."""
    if event != zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        # the peer closed the connection (``value``: an errno), as a client
        # does that finds the mechanisms mismatched first
        if secret:
            return (
                "the peer closed the connection: a client without a shared secret, "
                "or not a distex_zmq client"
            )
        return (
            "the peer closed the connection: a client with a shared secret, which "
            "this spawner has not, or not a distex_zmq client"
        )
    if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
        if secret:
            return "the client has no shared secret (or is not a distex_zmq client)"
        return "the client has a shared secret and this spawner none"
    if value == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
        return "the client has another shared secret (or is not a distex_zmq client)"
    return f"the peer is not a distex_zmq client (ZeroMQ protocol error {value:#x})"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
