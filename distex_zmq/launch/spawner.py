"""Starts and supervises the workers of one pool on one spawner host (``host[:port]/N``).

The launcher is a DEALER socket on the pool loop, connected to the spawner's
ROUTER. With the cluster's shared secret it is a CURVE client with the
secret's client key, and it knows the spawner by the secret's spawner key;
without a secret it speaks in the clear, which only a loopback or
``--insecure`` spawner accepts. It opens a session for the pool (the
broker's address as the host reaches it, the workers' per-pool CURVE keys,
their settings and count), then behaves as every ``RemoteLauncher``
(``launch/remote.py``); the messages are those of ``wire/control.py``.

A socket monitor turns what ZeroMQ keeps to itself into clear errors: a
connection that fails before it was ever made (ZeroMQ would retry in silence
until ``connect_timeout``; one plain connection attempt then tells whether
nothing listens on the port or the host cannot be reached), a failed CURVE
handshake (another secret, or none where one is needed), and a dropped
connection (a spawner that died), which loses the host at once.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from distex_zmq.errors import HostConnectionError, ProtocolError
from distex_zmq.hostspec import DEFAULT_SPAWNER_PORT, HostSpec, tcp_host
from distex_zmq.launch.port_owner import listener_uids, strangers, user_name
from distex_zmq.launch.remote import RemoteLauncher, RemoteOutput
from distex_zmq.reachability import probe_async
from distex_zmq.security import (
    HANDSHAKE_FAILED,
    ClusterKeys,
    explain_handshake_failure,
    make_client,
)
from distex_zmq.wire import control, frames
from distex_zmq.wire.zmqio import EdgeReader

_logger = logging.getLogger("distex_zmq.launch.spawner")


class SpawnerLauncher(RemoteLauncher):
    """The workers of one pool on one host that runs ``python -m distex_zmq.spawner``."""

    opened_workers_only = True

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        ctx: zmq.Context[Any],
        spec: HostSpec,
        keys: ClusterKeys | None,
        broker_port: int,
        broker_address: str,
        worker: dict[str, int],
        worker_keys: dict[str, str],
        heartbeat_timeout: float,
        connect_timeout: float,
        on_exit: Callable[[bytes, int, int | None, str], None],
        on_lost: Callable[[SpawnerLauncher, str, set[bytes]], None],
        on_output: RemoteOutput | None = None,
    ):
        super().__init__(loop, spec, heartbeat_timeout, on_exit, on_lost, on_output)
        self._ctx = ctx
        self._keys = keys
        self._broker_port = broker_port
        self._broker_address = broker_address
        self._worker = worker
        self._worker_keys = worker_keys
        self._connect_timeout = connect_timeout
        self.where = f"spawner {spec.host}:{spec.port}"
        self.label = f"spawner-{spec.host}"
        self.python = "started by the spawner"
        self._sock: zmq.Socket[Any] | None = None
        self._monitor: zmq.Socket[Any] | None = None
        self._readers: list[EdgeReader] = []
        self._handshake_failure = ""
        #: a TCP connection to the spawner was made once
        self._connected = False
        #: the spawner's address: family, ip, port
        self._address: tuple[int, str, int] | None = None
        #: the connection attempt that tells why ZeroMQ's first one failed
        self._probe: asyncio.Task[None] | None = None

    # start-up

    async def start(self) -> None:
        """Connect, open a session for the pool, and wait until the spawner agrees."""
        spec = self.spec
        port = spec.port or DEFAULT_SPAWNER_PORT
        try:
            infos = await self._loop.getaddrinfo(
                spec.host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
        except socket.gaierror as e:
            raise HostConnectionError(
                f"{self.where}: cannot resolve the host name {spec.host!r} ({e.strerror})"
            ) from None
        family, _, _, _, address = infos[0]
        ip = str(address[0])
        self._address = (family, ip, port)
        if self._keys is None:
            self._check_unkeyed(ip, port)
        endpoint = f"tcp://{tcp_host(ip)}:{port}"
        broker = self._broker_address or _local_address_towards(family, ip, port)
        sock = self._sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTING_ID, os.urandom(16))
        sock.setsockopt(zmq.MAXMSGSIZE, control.MAX_MESSAGE)
        if self._keys is not None:
            make_client(sock, self._keys.spawner.public, self._keys.client)
        self._monitor = sock.get_monitor_socket(
            HANDSHAKE_FAILED
            | zmq.EVENT_DISCONNECTED
            | zmq.EVENT_CONNECTED
            | zmq.EVENT_CONNECT_RETRIED
        )
        self._readers = [
            EdgeReader(self._loop, sock, self._on_frames),
            EdgeReader(self._loop, self._monitor, self._on_monitor),
        ]
        sock.connect(endpoint)
        open_ = control.Open(
            protocol=frames.VERSION,
            endpoint=f"tcp://{tcp_host(broker)}:{self._broker_port}",
            keys=self._worker_keys,
            worker=self._worker,
            workers=spec.num_workers,
            # the pool pings every quarter of its timeout; the spawner stops
            # the pool's workers after as long a silence as the pool waits
            # before it gives the host up (half of it once a connection
            # closed, as a killed client's does)
            heartbeat=self._heartbeat_timeout,
        )
        self._send(open_)
        try:
            # the answer, or a failed handshake from the monitor
            await asyncio.wait_for(asyncio.shield(self._hello), self._connect_timeout)
        except asyncio.TimeoutError:
            await self._close()
            raise HostConnectionError(self._no_answer()) from None
        except BaseException:
            await self._close()
            raise
        self._start_heartbeats()

    def _check_unkeyed(self, ip: str, port: int) -> None:
        """A pool without the cluster's shared secret talks to the spawner at
        ``ip`` in the clear, unauthenticated: whoever holds that port gets the
        pool's tasks, and the results it sends back are unpickled here. On
        this machine, raise unless the port is the client's own user's (or
        root's); elsewhere, warn."""
        what = (
            "gets the pool's tasks and can run any code in this process through "
            "the results it sends back"
        )
        secret = "give the pool and the spawner the cluster's shared secret (DISTEX_ZMQ_SECRET)"
        if not ipaddress.ip_address(ip).is_loopback:
            _logger.warning(
                "%s: the pool has no shared secret, so it talks to that spawner in the "
                "clear and unchecked: whoever listens at %s:%d, or is on the way, %s; %s",
                self.where,
                ip,
                port,
                what,
                secret,
            )
            return
        uids = listener_uids(ip, port)
        others = strangers(uids) if uids else []
        if others:
            raise HostConnectionError(
                f"{self.where}: the port is held by the user {user_name(others[0])}, not by "
                f"this one; without a shared secret, whoever holds it {what}, so the pool "
                f"takes only a spawner of its own user here; run the spawner as this user, "
                f"or {secret}"
            )

    def _python_hint(self, minor: str) -> str:
        return f"run the spawner there with Python {minor} (python{minor} -m distex_zmq.spawner)"

    def _install_hint(self) -> str:
        return f"{super()._install_hint()} and restart the spawner there"

    def _no_answer(self) -> str:
        if self._handshake_failure:
            return self._handshake_failure
        return (
            f"no spawner answered at {self.spec.host}:{self.spec.port} within "
            f"{self._connect_timeout:g} s: is `python -m distex_zmq.spawner` running there, "
            "on that port, and reachable from here?"
        )

    # on the pool loop

    def _send(self, command: control.Command) -> None:
        if self._sock is None or self._sock.closed:
            return
        try:
            self._sock.send_multipart(control.encode(command), flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # not connected (yet): heartbeats tell
        self._readers[0].poke()

    def _on_frames(self, frames: list[zmq.Frame]) -> None:
        try:
            event = control.decode([f.bytes for f in frames], control.POOL_READS)
        except ProtocolError as e:
            self._on_bad_message(e)
        else:
            self._on_message(event)

    def _on_monitor(self, frames: list[zmq.Frame]) -> None:
        event = parse_monitor_message([f.bytes for f in frames])
        kind = event["event"]
        if kind & HANDSHAKE_FAILED:
            self._handshake_failure = explain_handshake_failure(
                f"the spawner at {self.spec.host}:{self.spec.port}",
                kind,
                event["value"],
                self._keys is not None,
                "DISTEX_ZMQ_SECRET or Pool(secret=...) / Pool(secret_file=...)",
            )
            if not self._hello.done():
                self._hello.set_exception(HostConnectionError(self._handshake_failure))
        elif kind == zmq.EVENT_CONNECTED:
            self._connected = True
        elif kind == zmq.EVENT_CONNECT_RETRIED and not self._connected:
            # the first connection failed; libzmq does not say why
            if not self._hello.done() and self._probe is None:
                self._probe = self._loop.create_task(self._why_not_connected())
        elif kind == zmq.EVENT_DISCONNECTED:
            if self._hello.done():
                self._lose("its connection closed (the spawner stopped or died)")
            else:
                # the handshake passed (a peer that is no ZeroMQ socket can
                # pass for a ZMTP 1.0 one), and then no hello came
                where = f"{self.spec.host}:{self.spec.port}"
                self._hello.set_exception(
                    HostConnectionError(
                        f"the peer at {where} closed the connection before saying hello: "
                        "it is not a distex_zmq spawner (is the port right? an SSH host "
                        "is written ssh://host/N), or it stopped just then"
                    )
                )

    async def _why_not_connected(self) -> None:
        """Fail the start with why the spawner's port took no connection:
        nothing listens there, or the host cannot be reached. A port that
        takes one now (a spawner just started) or stays silent leaves the
        start to ZeroMQ's next attempts and to ``connect_timeout``."""
        assert self._address is not None
        family, ip, port = self._address
        failure = await probe_async(self.spec.host, family, ip, port, self._connect_timeout)
        if failure is None or failure.kind == "silent" or self._hello.done():
            return
        self._hello.set_exception(
            HostConnectionError(f"{self.where}: cannot connect: {failure}; {failure.hint}")
        )

    async def _close(self) -> None:
        self._closing = True
        if self._probe is not None:
            self._probe.cancel()
        for reader in self._readers:
            reader.close()
        if self._sock is not None and not self._sock.closed:
            self._sock.disable_monitor()
            self._sock.close(linger=0)
        if self._monitor is not None and not self._monitor.closed:
            self._monitor.close(linger=0)


def _local_address_towards(family: int, ip: str, port: int) -> str:
    """This machine's address on the route to ``ip``: where its workers find the broker.

    Connecting a UDP socket sends nothing; it only picks the route.
    """
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((ip, port))
        return str(probe.getsockname()[0])
