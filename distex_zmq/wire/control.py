"""Messages between pools and spawners: the one place that defines them.

A message is two ZeroMQ frames: ``b"DZSP"`` and a 2-byte version, then a
JSON object. Everything a spawner reads is checked here before it acts on
it; what does not pass raises ``ProtocolError`` with the reason, which the
spawner sends back as a refusal.

pool -> spawner::

    {"op": "open", "protocol", "endpoint", "keys": {server, public, secret},
     "worker": {credits, func_pickle, data_pickle, loop}, "workers": N,
     "heartbeat": S}                       start serving a pool: N workers at most
    {"op": "spawn", "id": HEX}             start a worker with this routing id
    {"op": "kill", "id": HEX}              SIGKILL it (its exit is reported)
    {"op": "ping"}                         heartbeat, answered by a pong
    {"op": "stop", "grace": S}             stop the pool's workers; forget the pool

spawner -> pool::

    {"ev": "opened", "host", "version", "protocol", "pid"}
    {"ev": "refused", "reason", ["id"]}
    {"ev": "exit", "id", "pid", "rc", "tail"}
    {"ev": "pong"}    {"ev": "stopped"}
"""

from __future__ import annotations

import json
import re
import struct
from typing import Any, cast

from distex_zmq.errors import ProtocolError

MAGIC = b"DZSP"
VERSION = 1
HEAD = MAGIC + struct.pack("!H", VERSION)
#: Largest message a spawner accepts; ZeroMQ drops the connection of a
#: peer that sends a larger one, before it is buffered.
MAX_MESSAGE = 16 * 1024
#: Largest worker count one pool may ask of one spawner.
MAX_WORKERS_PER_POOL = 4096

_ENDPOINT = re.compile(r"^tcp://(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-]+):\d{1,5}$")
_Z85_KEY = re.compile(r"^[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}$")
_IDENTITY = re.compile(r"^[0-9a-f]{2,128}$")


def encode(message: dict[str, Any]) -> list[bytes]:
    return [HEAD, json.dumps(message).encode()]


def decode(frames: list[bytes]) -> dict[str, Any]:
    """The message in ``frames``, or ``ProtocolError``."""
    if len(frames) != 2:
        raise ProtocolError(f"expected 2 frames, got {len(frames)}")
    head, body = frames
    if head[:4] != MAGIC:
        raise ProtocolError("not a distex_zmq spawner message")
    if head != HEAD:
        version = struct.unpack("!H", head[4:6])[0] if len(head) == 6 else "?"
        raise ProtocolError(
            f"spawner protocol version {version}; this side speaks {VERSION}: "
            "install the same distex_zmq version on both"
        )
    try:
        message = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise ProtocolError(f"malformed JSON: {e}") from None
    if not isinstance(message, dict):
        raise ProtocolError("a message must be a JSON object")
    return message


def field(message: dict[str, Any], name: str, kind: type, low: float = 0, high: float = 0) -> Any:
    """``message[name]``, checked to be a ``kind`` (and within ``low..high`` if numeric)."""
    value: Any = message.get(name)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ProtocolError(f"{name!r} must be a {kind.__name__}")
    if kind in (int, float) and high and not low <= cast(float, value) <= high:
        raise ProtocolError(f"{name!r} = {value} is out of range {low}..{high}")
    return value


def identity(message: dict[str, Any]) -> bytes:
    value = field(message, "id", str)
    if not _IDENTITY.match(value):
        raise ProtocolError("'id' must be 1 to 64 bytes in hex")
    return bytes.fromhex(value)


def endpoint(message: dict[str, Any]) -> str:
    value = field(message, "endpoint", str)
    if not _ENDPOINT.match(value):
        raise ProtocolError(f"bad broker endpoint {value[:100]!r}")
    return value


def keys(message: dict[str, Any]) -> dict[str, str]:
    value = field(message, "keys", dict)
    checked = {}
    for name in ("server", "public", "secret"):
        key = value.get(name)
        if not isinstance(key, str) or not _Z85_KEY.match(key):
            raise ProtocolError(f"keys.{name} must be a Z85-encoded CURVE key")
        checked[name] = key
    return checked


def worker_args(message: dict[str, Any]) -> list[str]:
    """The worker's command-line options, from checked numbers only."""
    worker = field(message, "worker", dict)
    return [
        *("--credits", str(field(worker, "credits", int, 1, 1 << 16))),
        *("--func-pickle", str(field(worker, "func_pickle", int, 0, 2))),
        *("--data-pickle", str(field(worker, "data_pickle", int, 0, 3))),
        *("--loop", str(field(worker, "loop", int, 0, 4))),
    ]
