"""CurveZMQ keys and their checking: who may talk to a spawner or a broker.

Two kinds of credentials:

- **The shared secret** of a cluster (``DISTEX_ZMQ_SECRET``, a secret file,
  or ``Pool(secret=...)``). Client and spawner both derive from it, with
  scrypt, the spawner's CURVE keypair and the clients' keypair: set-up is
  one secret copied to every host, no key files. A spawner admits only
  connections that prove they hold the clients' key, and a client knows the
  spawner by its key, so neither side can be impersonated without the secret.
- **Per-pool keys**, random for each pool: the broker's TCP endpoint is a
  CURVE server that admits only the key pair the pool gave its own remote
  workers (through the spawner's or the SSH agent's encrypted channel, then
  a pipe, never a command line). Another process that reaches the broker's
  port cannot take tasks or send results.

Admission is a ZAP handler (ZeroMQ's authentication protocol, RFC 27) that
runs on the owner's event loop: one per ZeroMQ context.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import logging
import os
import stat
from typing import Any

import zmq
from zmq.utils import z85

from distex_zmq.wire.zmqio import EdgeReader

_logger = logging.getLogger("distex_zmq.security")

#: Environment variable that holds the shared secret.
SECRET_ENV = "DISTEX_ZMQ_SECRET"
#: Environment variable in which a local worker gets the client's
#: ``multiprocessing`` key (see ``LocalLauncher``).
MP_AUTHKEY_ENV = "DISTEX_ZMQ_MP_AUTHKEY"
#: Shortest secret accepted: a guessable secret would make CURVE pointless.
MIN_SECRET_BYTES = 16
#: scrypt's cost parameters for the keys of a secret: 16 MiB and tens of
#: milliseconds, once per pool or spawner, and as much for each guess at the
#: secret that a captured handshake lets an attacker test offline.
SCRYPT_COST = {"n": 1 << 14, "r": 8, "p": 1}
#: scrypt's salt: fixed, as every host derives the same keys from the
#: secret alone; it makes tables made for other uses of scrypt useless.
SCRYPT_SALT = b"distex_zmq cluster keys 1"
ZAP_ENDPOINT = "inproc://zeromq.zap.01"


@dataclasses.dataclass(frozen=True)
class KeyPair:
    """A CURVE key pair, Z85-encoded as ZeroMQ's socket options take them."""

    public: bytes
    #: left out of ``repr``, as the secret of ``Options`` is (a traceback's
    #: locals, a debugger)
    secret: bytes = dataclasses.field(repr=False)

    @classmethod
    def from_seed(cls, seed: bytes) -> KeyPair:
        secret = z85.encode(seed)
        return cls(zmq.curve_public(secret), secret)

    @classmethod
    def random(cls) -> KeyPair:
        return cls.from_seed(os.urandom(32))


@dataclasses.dataclass(frozen=True)
class ClusterKeys:
    """The key pairs that a shared secret stands for."""

    spawner: KeyPair
    client: KeyPair

    @classmethod
    def from_secret(cls, secret: bytes, source: str = "") -> ClusterKeys:
        """The key pairs of ``secret``; ``source`` says where it came from in
        the error for a short one (``secret_source``)."""
        if len(secret) < MIN_SECRET_BYTES:
            where = f" {source}" if source else ""
            raise ValueError(
                f"the shared secret{where} is {len(secret)} bytes; use at least {MIN_SECRET_BYTES} "
                "random bytes, e.g. python -c 'import secrets; print(secrets.token_urlsafe())'"
            )

        seeds = _key_seeds(secret)
        return cls(spawner=KeyPair.from_seed(seeds[:32]), client=KeyPair.from_seed(seeds[32:]))


@functools.lru_cache(maxsize=8)
def _key_seeds(secret: bytes) -> bytes:
    """The spawner's and the clients' key seeds (32 bytes each) of
    ``secret``, by scrypt (``SCRYPT_COST``), once per secret in a process."""
    return hashlib.scrypt(secret, salt=SCRYPT_SALT, maxmem=1 << 26, dklen=64, **SCRYPT_COST)


def secret_source(secret: str | bytes | None = None, secret_file: str | None = None) -> str:
    """Where ``load_secret`` takes the secret from, for an error: ``in the
    secret file F``, ``given as secret=`` or ``in DISTEX_ZMQ_SECRET``."""
    if secret_file is not None:
        return f"in the secret file {secret_file}"
    if secret is not None:
        return "given as secret="
    return f"in {SECRET_ENV}"


def exposed_secret_file(secret_file: str, mode: int) -> str | None:
    """What is wrong with a secret file of this mode, which group or others
    may read or write, as OpenSSH asks of a private key; ``None`` if nothing."""
    if not mode & 0o077:
        return None
    who = " and ".join(w for w, bits in (("its group", 0o070), ("others", 0o007)) if mode & bits)
    return (
        f"the secret file {secret_file} is open to {who} (mode {stat.S_IMODE(mode):04o}): "
        "whoever can read it can run any code, as the spawners' user, on every spawner "
        f"of the cluster; make it private with `chmod 600 {secret_file}`"
    )


def load_secret(
    secret: str | bytes | None = None,
    secret_file: str | None = None,
    refuse_exposed: bool = False,
) -> bytes | None:
    """The shared secret: given, read from ``secret_file``, or from the
    environment; without the whitespace around it, whatever its source (a
    file's last newline, say), so that every source gives the same keys.

    A secret file that group or others may access (``exposed_secret_file``)
    is a warning on the ``distex_zmq.security`` logger, or, with
    ``refuse_exposed`` (the spawner), a ``ValueError``."""
    if secret is not None and secret_file is not None:
        raise ValueError("give the shared secret or a secret file, not both")
    if secret_file is not None:
        try:
            with open(os.path.expanduser(secret_file), "rb") as f:
                exposed = exposed_secret_file(secret_file, os.fstat(f.fileno()).st_mode)
                if exposed is not None and refuse_exposed:
                    raise ValueError(
                        f"{exposed}, then start again (a secret that a container platform "
                        "mounts has the mode of its mount: give that mode 0400)"
                    )
                value = f.read().strip()
        except OSError as e:
            raise ValueError(f"cannot read the secret file {secret_file}: {e.strerror}") from e
        if exposed is not None:
            _logger.warning("%s", exposed)
        if not value:
            raise ValueError(f"the secret file {secret_file} is empty")
        return value
    if secret is None:
        secret = os.environ.get(SECRET_ENV) or None
    if secret is None:
        return None
    value = (secret.encode() if isinstance(secret, str) else bytes(secret)).strip()
    if not value:
        raise ValueError("the shared secret is empty (or only whitespace)")
    return value


#: The monitor events of a ZeroMQ handshake that failed.
HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


def explain_handshake_failure(
    where: str, event: int, value: int, secret: bool, how: str, for_pool: bool = True
) -> str:
    """Why the handshake with the spawner at ``where`` failed, from its
    monitor ``event`` and ``value``, for a client with or without the
    ``secret``; ``how``: how the user sets one; ``for_pool``: the client is
    a pool (whose host may have been meant as an SSH host).

    A spawner closes the connection of a client without its secret or with
    another one, as a peer that is no ZeroMQ socket does: the messages name
    both. Only a peer that reports the mechanisms' mismatch is sure to be a
    ZeroMQ socket.
    """
    not_a_spawner = "or it is not a distex_zmq spawner (is the port right?" + (
        " an SSH host is written ssh://host/N)" if for_pool else ")"
    )
    mismatch = value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return (
            f"{where} refused this client's key: it has another shared secret (or it "
            "runs another version of distex_zmq, which derives other keys from it)"
        )
    if not secret:
        needs = f"{where} requires the cluster's shared secret (CURVE): set {how}"
        return needs if mismatch else f"{needs}; {not_a_spawner}"
    if mismatch:
        return (
            f"{where} runs without a shared secret: give it the cluster's secret "
            "(DISTEX_ZMQ_SECRET, --secret-file), or, if it is not your spawner, find out "
            "who holds that port"
        )
    return (
        f"{where} did not accept the CURVE handshake: it has another shared secret, "
        "or none (give it the cluster's), " + not_a_spawner
    )


def make_server(sock: zmq.Socket[Any], keys: KeyPair) -> None:
    """Make the endpoints that ``sock`` binds from now on CURVE servers."""
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
    sock.setsockopt(zmq.ZAP_DOMAIN, b"distex_zmq")


def make_client(sock: zmq.Socket[Any], server_public: bytes, keys: KeyPair) -> None:
    """Make the connections that ``sock`` opens from now on CURVE clients."""
    sock.setsockopt(zmq.CURVE_SERVERKEY, server_public)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)


class ZapHandler:
    """Admits CURVE clients whose public key is allowed; refuses the rest.

    Serves ZAP requests of every socket of ``ctx`` on ``loop`` (RFC 27). A
    refused connection never reaches the socket; each refusal is logged
    once per address, so a flood cannot fill the log.
    """

    def __init__(self, ctx: zmq.Context[Any], loop: asyncio.AbstractEventLoop):
        self.allowed: set[bytes] = set()
        self._logged: set[bytes] = set()
        self._sock = ctx.socket(zmq.REP)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind(ZAP_ENDPOINT)
        self._reader = EdgeReader(loop, self._sock, self._on_request)

    def allow(self, public_key: bytes) -> None:
        """Admit clients with this Z85 public key."""
        self.allowed.add(z85.decode(public_key))

    def _on_request(self, request: list[zmq.Frame]) -> None:
        # a REP socket: each request is answered before the next is read
        self._sock.send_multipart(self._answer([frame.bytes for frame in request]))

    def _answer(self, request: list[bytes]) -> list[bytes]:
        if len(request) < 6:
            return [b"1.0", b"", b"500", b"malformed ZAP request", b"", b""]
        version, request_id, _domain, address, _identity, mechanism = request[:6]
        if version != b"1.0":
            return [b"1.0", request_id, b"500", b"unknown ZAP version", b"", b""]
        if mechanism == b"CURVE" and len(request) == 7 and request[6] in self.allowed:
            return [version, request_id, b"200", b"OK", b"", b""]
        if address not in self._logged and len(self._logged) < 1024:
            self._logged.add(address)
            _logger.warning(
                "refused a %s connection from %s: not a key of this cluster or pool",
                mechanism.decode(errors="replace"),
                address.decode(errors="replace"),
            )
        return [version, request_id, b"400", b"key not allowed", b"", b""]

    def close(self) -> None:
        self._reader.close()
        self._sock.close(linger=0)
