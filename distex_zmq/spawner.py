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

import argparse
import asyncio
import errno
import ipaddress
import json
import logging
import os
import signal
import socket
import sys
import time
from typing import Any

import zmq

from distex_zmq import protocol
from distex_zmq import spawner_protocol as sp
from distex_zmq._zmqio import readable
from distex_zmq.errors import ProtocolError
from distex_zmq.hostspec import DEFAULT_SPAWNER_PORT
from distex_zmq.local_launcher import LocalLauncher
from distex_zmq.loops import run_in_background
from distex_zmq.security import ClusterKeys, ZapHandler, load_secret, make_server
from distex_zmq.version import __version__

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


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m distex_zmq.spawner",
        description="Start distex_zmq workers on this host for the pools that ask. "
        "Pools and spawner share a secret: the DISTEX_ZMQ_SECRET environment variable "
        "or --secret-file.",
    )
    parser.add_argument(
        "--host", help="address to listen on (default: all with a secret, 127.0.0.1 without)"
    )
    parser.add_argument("--port", type=int, default=DEFAULT_SPAWNER_PORT)
    parser.add_argument("--secret-file", help="file holding the cluster's shared secret")
    parser.add_argument(
        "--max-workers",
        type=int,
        default=max(os.cpu_count() or 1, 1) * 4,
        help="workers this host runs at most, for all pools (default 4 per CPU)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="listen beyond loopback without a secret: anyone who reaches "
        "the port can run any code here",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    if args.max_workers < 1:
        parser.error("--max-workers must be at least 1")
    if not 0 < args.port < 65536:
        # libzmq would take the port modulo 65536 and listen elsewhere
        parser.error(f"--port must be from 1 to 65535, not {args.port}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        secret = load_secret(secret_file=args.secret_file)
        keys = ClusterKeys.from_secret(secret) if secret is not None else None
    except ValueError as e:
        sys.exit(f"distex_zmq spawner: {e}")
    host = args.host or ("0.0.0.0" if keys is not None else "127.0.0.1")
    if keys is None and not _is_loopback(host):
        if not args.insecure:
            sys.exit(
                f"distex_zmq spawner: refusing to listen on {host} without a secret: anyone "
                "who reaches the port could run any code here. Set DISTEX_ZMQ_SECRET or "
                "--secret-file (and the same secret for the pools), or pass --insecure on a "
                "network you trust entirely."
            )
        _logger.warning(
            "INSECURE: listening on %s without a secret; anyone who reaches "
            "the port can run any code on this host",
            host,
        )
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # handled on the loop below
    from distex_zmq.loops import new_event_loop

    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        spawner = Spawner(loop, host, args.port, keys, args.max_workers)
    except zmq.ZMQError as e:
        hint = ""
        if e.errno == errno.ENODEV:  # libzmq's word for a name it cannot resolve
            hint = f" ({host!r} is not an address, a host name known here, or a network interface)"
        sys.exit(f"distex_zmq spawner: cannot listen on {host}:{args.port}: {e}{hint}")
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, spawner.stop, f"got {signal.Signals(sig).name}")
    _logger.info(
        "distex_zmq %s spawner (pid %d) on %s, %s, at most %d workers",
        __version__,
        os.getpid(),
        spawner.endpoint,
        "CURVE with the shared secret" if keys else "NO authentication",
        args.max_workers,
    )
    try:
        reason = loop.run_until_complete(spawner.serve())
    finally:
        loop.close()
    _logger.info("stopped: %s", reason)


if __name__ == "__main__":
    main()
