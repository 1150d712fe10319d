"""Why a TCP connection to a host's port fails: refused, no route, or no answer.

libzmq retries a connection that failed in silence, and its socket monitor
says only that it retried, not why. Where a spawner's port took no
connection, one plain connection attempt (which sends nothing once made)
tells an operator which of these it is: nothing listens on the port, the
host cannot be reached at all, or it does not answer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
import socket

#: errnos of a host that cannot be reached, rather than of a port closed
UNREACHABLE = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN})


@dataclasses.dataclass(frozen=True)
class Failure:
    """Why a connection to ``host`` at ``where`` (``host:port``) failed."""

    kind: str  #: "refused", "unreachable" or "silent"
    host: str
    where: str
    #: the system's words for the error ("No route to host"), or the
    #: seconds waited in vain, for "silent"
    detail: str

    def __str__(self) -> str:
        if self.kind == "refused":
            return f"nothing listens on {self.where} (the connection was refused)"
        if self.kind == "unreachable":
            return f"there is no route to {self.host} ({self.detail})"
        return f"{self.host} did not answer a connection to {self.where} within {self.detail} s"

    @property
    def hint(self) -> str:
        """What to check, as a question."""
        if self.kind == "refused":
            return "is `python -m distex_zmq.spawner` running there, on that port?"
        if self.kind == "unreachable":
            return "is the host up, and on a network this machine reaches?"
        return "is the host down, or does a firewall drop connections to that port?"


def classify(error: OSError, host: str, where: str) -> Failure:
    """What a failed ``connect`` says about ``host``: refused or unreachable."""
    # (asyncio's strerror names the address, not the error)
    detail = os.strerror(error.errno) if error.errno else str(error)
    if error.errno in UNREACHABLE:
        return Failure("unreachable", host, where, detail)
    return Failure("refused", host, where, detail)


def probe(host: str, family: int, ip: str, port: int, timeout: float) -> Failure | None:
    """Connect to ``ip:port`` once, for at most ``timeout`` seconds: why it
    failed, or None if it connected (something listens there now)."""
    where = f"{host}:{port}"
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((ip, port))
        except TimeoutError:
            return Failure("silent", host, where, f"{timeout:g}")
        except OSError as e:
            return classify(e, host, where)
    return None


async def probe_async(host: str, family: int, ip: str, port: int, timeout: float) -> Failure | None:
    """:func:`probe` on the running event loop."""
    where = f"{host}:{port}"
    loop = asyncio.get_running_loop()
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (ip, port)), timeout)
        except asyncio.TimeoutError:
            return Failure("silent", host, where, f"{timeout:g}")
        except OSError as e:
            return classify(e, host, where)
    return None
