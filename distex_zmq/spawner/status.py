"""``python -m distex_zmq.spawner status [HOST[:PORT]]``: ask a running spawner what it serves.

It connects to the spawner's port as a pool would (CURVE with the shared
secret's client key, or in the clear without a secret), sends one
``status`` command and waits a few seconds for the ``status_reply``: the
pools the spawner serves, their workers with pids and ages, its uptime and
version. It opens no pool and starts nothing. A socket monitor tells a
refused CURVE handshake (another secret) and a first connection that
failed (where ZeroMQ would retry in silence; a plain connection attempt
then tells a port where nothing listens from a host out of reach) from a
spawner that does not answer at all.
"""

from __future__ import annotations

import math
import os
import socket
import time
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from distex_zmq.errors import ProtocolError
from distex_zmq.hostspec import DEFAULT_SPAWNER_PORT
from distex_zmq.reachability import probe
from distex_zmq.security import (
    HANDSHAKE_FAILED,
    ClusterKeys,
    explain_handshake_failure,
    make_client,
)
from distex_zmq.wire import control

#: Seconds the status command waits for an answer by default.
DEFAULT_TIMEOUT = 5.0
#: Bytes a status reply may take: room for thousands of workers, and a
#: bound on what a peer that is not a spawner can make this process hold.
MAX_REPLY = 4 * 1024 * 1024

#: What the monitor reports: a refused handshake, a peer gone without a
#: reply, and whether the first connection succeeded or failed at once.
_MONITORED = (
    HANDSHAKE_FAILED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECTED | zmq.EVENT_CONNECT_RETRIED
)


class StatusError(Exception):
    """The spawner did not answer, or refused."""


def split_address(address: str) -> tuple[str, int]:
    """``host[:port]`` (``[v6]:port`` for IPv6) as host and port (default 8899)."""
    if "/" in address:
        # a pool's host specification, host[:port]/N
        raise ValueError(
            f"{address!r} is a pool's host specification: status takes HOST[:PORT], "
            f"{address.rpartition('/')[0]!r}"
        )
    host, port = address, ""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif address.count(":") == 1:
        host, _, port = address.partition(":")
    if not host:
        raise ValueError(f"no host in {address!r}")
    if not port:
        return host, DEFAULT_SPAWNER_PORT
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad port {port!r} in {address!r}")
    return host, int(port)


def query(
    host: str, port: int, keys: ClusterKeys | None, timeout: float = DEFAULT_TIMEOUT
) -> control.StatusReply:
    """The status of the spawner at ``host:port``; ``StatusError`` if it does not answer."""
    where = f"{host}:{port}"
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        ip = str(address[0])
    except socket.gaierror as e:
        raise StatusError(f"cannot resolve {host!r}: {e.strerror}") from None
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    monitor = None
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTING_ID, os.urandom(16))
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_REPLY)
        if keys is not None:
            make_client(sock, keys.spawner.public, keys.client)
        monitor = sock.get_monitor_socket(_MONITORED)
        sock.connect(f"tcp://{f'[{ip}]' if ':' in str(ip) else ip}:{port}")
        sock.send_multipart(control.encode(control.Status()), flags=zmq.NOBLOCK)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        deadline = time.monotonic() + timeout
        connected = False
        while (left := deadline - time.monotonic()) > 0:
            ready = dict(poller.poll(max(1, math.ceil(left * 1000))))
            if sock in ready:
                try:
                    reply = control.decode(sock.recv_multipart(), control.STATUS_READS)
                except ProtocolError as e:
                    raise StatusError(f"the spawner at {where} answered with {e}") from None
                if isinstance(reply, control.Refused):
                    raise StatusError(f"the spawner at {where} refused: {reply.reason}")
                assert isinstance(reply, control.StatusReply)
                return reply
            if monitor not in ready:
                continue
            event = parse_monitor_message(monitor.recv_multipart())
            if event["event"] == zmq.EVENT_CONNECTED:
                connected = True
                continue
            if event["event"] == zmq.EVENT_CONNECT_RETRIED:
                if connected:
                    continue  # it went away after the handshake: the disconnect told
                # the first connection failed; libzmq does not say why
                failure = probe(host, family, ip, port, max(0.1, deadline - time.monotonic()))
                if failure is None:
                    continue  # it takes connections now: ZeroMQ's next attempt goes in
                raise StatusError(f"cannot connect to {where}: {failure}; {failure.hint}")
            if event["event"] == zmq.EVENT_DISCONNECTED:
                raise StatusError(
                    f"the peer at {where} closed the connection without a status reply, "
                    f"or sent one over {MAX_REPLY // 2**20} MiB: is a distex_zmq spawner "
                    "listening there?"
                )
            raise StatusError(
                explain_handshake_failure(
                    f"the spawner at {where}",
                    event["event"],
                    event["value"],
                    keys is not None,
                    "DISTEX_ZMQ_SECRET or --secret-file",
                    for_pool=False,
                )
            )
        raise StatusError(
            f"no spawner answered at {where} within {timeout:g} s: is it running there, "
            "on that port, and reachable from here?"
        )
    finally:
        if monitor is not None:
            sock.disable_monitor()
            monitor.close(linger=0)
        sock.close(linger=0)
        ctx.term()


def format_status(address: str, reply: control.StatusReply) -> str:
    """The reply as lines for people."""
    used = sum(len(pool["workers"]) for pool in reply.pools)
    lines = [
        f"spawner {address}: distex_zmq {reply.version} on {reply.host}, pid {reply.pid}, "
        f"up {_duration(reply.uptime)}",
        f"{len(reply.pools)} pool(s), {used} of at most {reply.max_workers} workers running",
    ]
    for pool in reply.pools:
        workers = pool["workers"]
        line = f"  pool {pool['id']}: {len(workers)} of {pool['capacity']} workers"
        if "address" in pool:
            line += f", from {pool['address']}"
        if "silent" in pool:
            line += f", last heard {_duration(pool['silent'])} ago"
        lines.append(line)
        for worker in workers:
            lines.append(f"    pid {worker['pid']:>7}  up {_duration(worker['age'])}")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    """``3.2 s``, ``4 min 05 s``, ``2 h 03 min``, ``3 d 4 h``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"
