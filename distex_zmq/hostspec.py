"""Host specifications: ``[ssh://][user@]host[:port]/num_workers``."""

from __future__ import annotations

from typing import Any

#: Port of the spawner on a host, as distex's server.
DEFAULT_SPAWNER_PORT = 8899


class HostSpec:
    """A parsed host specification.

    ``ssh://user@maxi:10022/8`` means 8 workers on ``maxi`` started over SSH
    as ``user`` on port 10022; ``mini/2`` means 2 workers on ``mini`` started
    by the spawner there on its default port.
    """

    __slots__ = ("num_workers", "is_ssh", "user", "host", "port")

    def __init__(self, url: str):
        if not isinstance(url, str):
            raise TypeError(f"host specification must be a string, not {url!r}")
        parts = url.replace(",", " ").split()
        if len(parts) > 1 and all("/" in part for part in parts):
            raise ValueError(
                f"host specification {url!r} names several hosts: give them as a list, {parts!r}"
            )
        scheme, sep, rest = url.partition("://")
        if not sep:
            scheme, rest = "", url
        elif scheme.lower() != "ssh":
            raise ValueError(
                f"host specification {url!r}: unknown scheme {scheme + '://'!r}; write "
                "ssh://[user@]host[:port]/N for an SSH host, host[:port]/N for a spawner host"
            )
        self.is_ssh = bool(scheme)
        address, sep, count = rest.rpartition("/")
        if not sep:
            raise ValueError(
                f"host specification {url!r} lacks the number of workers: write "
                "ssh://[user@]host[:port]/N for an SSH host, host[:port]/N for a spawner host"
            )
        if count.startswith("-") and _is_number(count[1:]):
            raise ValueError(f"host specification {url!r}: number of workers must be >= 1")
        if not _is_number(count):
            raise ValueError(
                f"host specification {url!r}: number of workers {count!r} is not an integer"
            )
        self.num_workers = int(count)
        if self.num_workers < 1:
            raise ValueError(f"host specification {url!r}: number of workers must be >= 1")
        if "/" in address:
            raise ValueError(
                f"host specification {url!r}: a '/' in the address; write "
                "ssh://[user@]host[:port]/N for an SSH host, host[:port]/N for a spawner host"
            )
        user, at, hostport = address.rpartition("@")
        if at and not user:
            raise ValueError(f"host specification {url!r}: empty user name")
        self.user = user or None
        if hostport.startswith("["):
            raise ValueError(
                f"host specification {url!r}: IPv6 addresses are not supported; "
                "use a host name or an IPv4 address"
            )
        host, colon, port = hostport.partition(":")
        if not host or any(c.isspace() for c in host):
            raise ValueError(f"host specification {url!r}: missing or bad host name")
        self.host = host
        if colon:
            if not _is_number(port):
                raise ValueError(f"host specification {url!r}: bad port {port!r}")
            self.port: int | None = int(port)
            if not 0 < self.port < 65536:
                raise ValueError(f"host specification {url!r}: port out of range")
        else:
            self.port = None if self.is_ssh else DEFAULT_SPAWNER_PORT

    def __str__(self) -> str:
        """The specification as written, as messages name the host."""
        scheme = "ssh://" if self.is_ssh else ""
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port is not None else ""
        return f"{scheme}{user}{self.host}{port}/{self.num_workers}"

    def __repr__(self) -> str:
        return f"HostSpec('{self}')"

    def same_host(self, other: HostSpec) -> bool:
        """Whether ``other`` names the same place (host, kind and port),
        whatever its number of workers or user."""
        return self.host == other.host and self.is_ssh == other.is_ssh and self.port == other.port

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HostSpec):
            return NotImplemented
        return all(getattr(self, k) == getattr(other, k) for k in self.__slots__)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, k) for k in self.__slots__))


def _is_number(text: str) -> bool:
    """Whether ``text`` is a plain decimal number (``int()`` also takes
    spaces, signs and underscores, which a host specification has no use for)."""
    return text.isascii() and text.isdigit()


def parse_hosts(hosts: Any) -> list[HostSpec]:
    """The specifications of ``hosts`` for a pool: one string, or an
    iterable of them. A user on a spawner host is refused: the spawner
    runs its workers as its own user, and would silently not log in as it."""
    if isinstance(hosts, str):
        specs = [HostSpec(hosts)]
    else:
        try:
            specs = [HostSpec(h) for h in hosts]
        except TypeError:
            if hasattr(hosts, "__iter__"):
                raise  # an item that is not a string: HostSpec says which
            raise TypeError(
                "hosts must be a host specification ([ssh://][user@]host[:port]/num_workers) "
                f"or a list of them, not {hosts!r}"
            ) from None
    for spec in specs:
        if spec.user and not spec.is_ssh:
            raise ValueError(
                f"host specification {str(spec)!r}: a user applies to SSH hosts only "
                f"(ssh://{spec.user}@{spec.host}/{spec.num_workers}); the spawner on "
                f"{spec.host} runs its workers as the user it runs as: write "
                f"{spec.host}:{spec.port}/{spec.num_workers}"
            )
    return specs


def tcp_host(address: str) -> str:
    """``address`` as the host part of a ``tcp://`` endpoint (IPv6 in brackets)."""
    return f"[{address}]" if ":" in address else address
