"""Who listens on a TCP port of this machine: the users that own the
listening sockets, from the kernel's tables (``/proc/net/tcp`` and
``tcp6``; Linux only).

A pool without the cluster's shared secret talks to its spawner in the
clear and unauthenticated: whoever holds the spawner's port gets the pool's
tasks, and the results it sends back are unpickled in the client. On this
machine the kernel says who that is, so such a pool uses a spawner on
loopback only if it runs as the client's own user (or root).
"""

from __future__ import annotations

import ipaddress
import os

#: ``st`` of a listening socket in ``/proc/net/tcp``.
_LISTEN = "0A"


def listener_uids(ip: str, port: int, tables: tuple[str, ...] | None = None) -> set[int] | None:
    """The uids of the sockets that listen on ``port`` at ``ip`` (or at the
    wildcard address, which takes its connections too); None where the
    kernel's tables cannot be read (not Linux)."""
    address = ipaddress.ip_address(ip)
    if tables is None:
        tables = ("/proc/net/tcp", "/proc/net/tcp6")
    uids: set[int] = set()
    read = False
    for table in tables:
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        read = True
        for line in lines:
            fields = line.split()
            if len(fields) < 8 or fields[3] != _LISTEN:
                continue
            local, _, hex_port = fields[1].partition(":")
            if int(hex_port, 16) != port:
                continue
            there = _address(local)
            if there is None or there.is_unspecified or _same(there, address):
                uids.add(int(fields[7]))
    return uids if read else None


def _address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address as ``/proc/net/tcp`` writes it: in hex, each 32-bit word
    in the host's byte order (little-endian on the machines Linux runs
    this on)."""
    try:
        raw = bytes.fromhex(hex_address)
    except ValueError:
        return None
    words = [raw[i : i + 4][::-1] for i in range(0, len(raw), 4)]
    packed = b"".join(words)
    if len(packed) == 4:
        return ipaddress.IPv4Address(packed)
    if len(packed) == 16:
        return ipaddress.IPv6Address(packed)
    return None


def _same(
    there: ipaddress.IPv4Address | ipaddress.IPv6Address,
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> bool:
    if isinstance(there, ipaddress.IPv6Address) and there.ipv4_mapped is not None:
        return there.ipv4_mapped == address
    return there == address


def strangers(uids: set[int]) -> list[int]:
    """The uids among ``uids`` that are neither this process's user nor root."""
    me = os.getuid()
    return sorted(uid for uid in uids if uid not in (me, 0))


def user_name(uid: int) -> str:
    """``name (uid N)``, or ``uid N`` for a uid with no name."""
    import pwd

    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"
