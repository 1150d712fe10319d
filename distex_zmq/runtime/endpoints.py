"""The broker's TCP endpoints for remote workers, bound on first need.

Each is a CURVE server that admits only the key pair the pool hands to its
own remote workers (through a ZAP handler): one reachable from other
machines, one from this machine only (through SSH tunnels).
"""

from __future__ import annotations

import asyncio
import errno
from typing import Any

import zmq

from distex_zmq.broker import Broker
from distex_zmq.hostspec import HostSpec, tcp_host
from distex_zmq.options import Options
from distex_zmq.security import KeyPair, ZapHandler


class RemoteEndpoints:
    """The broker's TCP endpoints and the keys of the pool's remote workers."""

    def __init__(
        self,
        ctx: zmq.Context[Any],
        loop: asyncio.AbstractEventLoop,
        broker: Broker,
        options: Options,
    ):
        self._ctx = ctx
        self._loop = loop
        self._broker = broker
        self._options = options
        self._zap: ZapHandler | None = None
        #: the keys a remote worker needs to reach the broker (JSON-ready)
        self.worker_keys: dict[str, str] = {}
        self._broker_keys: KeyPair | None = None
        #: the TCP ports: reachable from other machines (True) or through
        #: SSH tunnels only (False)
        self._tcp_ports: dict[bool, int] = {}

    def port_for(self, spec: HostSpec) -> int:
        """The broker's TCP port for the workers on ``spec``, bound on first
        need (a host added to a pool that had none, or the first spawner
        host of a pool whose SSH hosts use tunnels)."""
        public = not self._options.remote.tunnel or not spec.is_ssh
        port = self._tcp_ports.get(True) or (None if public else self._tcp_ports.get(False))
        return port or self.bind(public)

    def bind(self, public: bool) -> int:
        """Bind a TCP endpoint: a CURVE server that admits only the key pair
        this pool hands to its own remote workers; ``public``: reachable from
        other machines, else from this one only (through SSH tunnels).
        Returns its port."""
        remote, port = self._options.remote, self._options.localport
        if self._broker_keys is None:
            self._broker_keys, worker_keys = KeyPair.random(), KeyPair.random()
            self._zap = ZapHandler(self._ctx, self._loop)
            self._zap.allow(worker_keys.public)
            self.worker_keys.update(
                server=self._broker_keys.public.decode(),
                public=worker_keys.public.decode(),
                secret=worker_keys.secret.decode(),
            )
        elif port:
            port = 0  # the one asked for is taken by the first endpoint
        # public: IPv6 too, for hosts that reach this one by an IPv6 address
        # (libzmq takes IPv4 alone where the machine has no IPv6)
        address = (
            (tcp_host(remote.localhost) if remote.localhost else "*") if public else "127.0.0.1"
        )
        try:
            endpoint = self._broker.bind(
                f"tcp://{address}:{port}", curve=self._broker_keys, ipv6=public
            )
        except zmq.ZMQError as e:
            raise zmq.ZMQError(e.errno, _bind_error(e, address, port, remote.localhost)) from e
        self._tcp_ports[public] = int(endpoint.rsplit(":", 1)[1])
        return self._tcp_ports[public]

    def close(self) -> None:
        """Stop admitting workers (the ZAP handler, if any)."""
        if self._zap is not None:
            self._zap.close()


def _bind_error(e: zmq.ZMQError, address: str, port: int, localhost: str) -> str:
    """What a failed bind of the endpoint for remote workers means, and what to do."""
    where = f"tcp://{address}:{port or '*'}"
    if e.errno == errno.EADDRINUSE:
        hint = f"port {port} is taken: give Pool(..., localport=...) another one, or 0 for any"
    elif localhost and e.errno in (errno.EADDRNOTAVAIL, errno.ENODEV):
        hint = (
            f"localhost={localhost!r} is not an address of this machine: give "
            "Pool(..., localhost=...) one of its own addresses (or names) that the hosts reach"
        )
    else:
        hint = "check Pool(..., localhost=..., localport=...)"
    why = zmq.strerror(e.errno) if e.errno is not None else str(e)
    return f"the broker cannot listen for remote workers on {where} ({why}): {hint}"
