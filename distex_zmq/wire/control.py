"""Control messages between a pool and the supervisor of its workers on a host:
a spawner (``spawner/daemon.py``, over ZeroMQ) or an SSH agent
(``agent/daemon.py``, over the SSH session). The one place that defines them:
a small class per kind, one JSON encoding, one validation, one version.

Commands name their kind in ``"op"``, events in ``"ev"``. On ZeroMQ a message
is two frames, ``b"DZSP"`` with a 2-byte version, then the JSON object; on a
stream it is one line, the JSON object with the version in ``"v"``.
``decode`` and ``decode_line`` check what a side reads against the kinds it
accepts and raise ``ProtocolError`` (``VersionError`` for another version).

pool -> host:  open (spawner: serve a pool)  keys (agent: the workers' CURVE keys)
               spawn  kill  ping  stop
host -> pool:  hello (agent: its first line)  opened (spawner: the answer to open)
               refused (with an id: a worker not started)  exit  pong  stopped
               output (lines a worker wrote to its stdout or stderr)

An ``output`` carries lines of one worker's stream, at most ``MAX_OUTPUT``
characters in all (``output_events`` batches lines and splits long ones), so
that at up to 6 bytes per character in JSON it stays under ``MAX_MESSAGE``;
with ``partial`` its last line is not ended yet and the stream's next
``output`` continues it (a line the worker has not ended for a while, or a
piece of a long one); ``dropped`` counts the lines its host dropped before
these (a worker that wrote faster than the host forwards, see
``launch/relay.py``).

A status request (``python -m distex_zmq.spawner status``) opens no pool:
status -> spawner, status_reply (or refused) -> the asker.
"""

from __future__ import annotations

import dataclasses
import json
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, cast

from distex_zmq.errors import ProtocolError
from distex_zmq.wire.frames import load_json

MAGIC = b"DZSP"
VERSION = 4
HEAD = MAGIC + struct.pack("!H", VERSION)
#: Largest message a spawner or an agent accepts; ZeroMQ drops the
#: connection of a peer that sends a larger one, before it is buffered.
MAX_MESSAGE = 16 * 1024
#: Largest worker count one pool may ask of one spawner.
MAX_WORKERS_PER_POOL = 4096
#: Bounds on the heartbeat timeout a pool may ask of a spawner.
MIN_HEARTBEAT, MAX_HEARTBEAT = 1.0, 1200.0
#: Longest grace a pool may give its workers to stop.
MAX_GRACE = 60.0
#: Characters of stderr an exit carries at most (its end): at up to 6 bytes
#: per character in JSON, an exit stays under ``MAX_MESSAGE``.
MAX_TAIL = 2000
#: Characters of output lines one ``Output`` carries at most (a line counts
#: one more, for its quotes and comma): under ``MAX_MESSAGE`` at 6 bytes each.
MAX_OUTPUT = 2400
#: The streams of a worker that ``Output`` names.
STREAMS = ("out", "err")

_ENDPOINT = re.compile(r"^tcp://(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-]+):\d{1,5}$")
_Z85_KEY = re.compile(r"^[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}$")
_IDENTITY = re.compile(r"^(?:[0-9a-f]{2}){1,64}$")
#: The workers' settings in ``open``, and their bounds.
_WORKER_SETTINGS = {"credits": (1, 1 << 16), "func_pickle": (0, 2), "data_pickle": (0, 3)}
_WORKER_SETTINGS["loop"] = (0, 4)
#: the level of the task's log records sent to the pool; -1: none
_WORKER_SETTINGS["log_level"] = (-1, 100)
#: how long the connection to the broker may be dead before it is closed;
#: 0: TCP's own (``zmqio.keep_alive``). Optional: a pool that sends none.
_OPTIONAL_WORKER_SETTINGS = {"heartbeat_ms": (0, int(MAX_HEARTBEAT * 2000))}

#: Checks the field ``name`` of a message and returns its value.
Check = Callable[[dict[str, Any], str], Any]


class VersionError(ProtocolError):
    """The peer speaks another version of the control protocol: ``theirs``
    (``"none"`` if its message names none, ``"?"`` if it cannot be read),
    and ``release``, the distex_zmq version its message names (a hello
    does), if any."""

    def __init__(self, theirs: object, release: str | None = None):
        super().__init__(
            f"the peer speaks control protocol version {theirs}, this side {VERSION}: "
            "install the same distex_zmq version on both"
        )
        self.theirs = theirs
        self.release = release


def _field(message: dict[str, Any], name: str, kind: type, low: float = 0, high: float = 0) -> Any:
    """``message[name]``, checked to be a ``kind`` (and within ``low..high`` if numeric)."""
    value: Any = message.get(name)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ProtocolError(f"{name!r} must be a {kind.__name__}")
    if kind in (int, float) and high and not low <= cast(float, value) <= high:
        raise ProtocolError(f"{name!r} = {value} is out of range {low}..{high}")
    return value


def _a(kind: type, low: float = 0, high: float = 0) -> Check:
    """The check of a field of this type (and range)."""
    return lambda message, name: _field(message, name, kind, low, high)


_INT, _STR = _a(int), _a(str)


def _identity(message: dict[str, Any], name: str) -> bytes:
    """A worker's routing id: ``"id"`` in hex on the wire."""
    value = _field(message, "id", str)
    if not _IDENTITY.match(value):
        raise ProtocolError("'id' must be 1 to 64 bytes in hex")
    return bytes.fromhex(value)


def _optional_identity(message: dict[str, Any], name: str) -> bytes | None:
    return _identity(message, name) if "id" in message else None


def _returncode(message: dict[str, Any], name: str) -> int | None:
    """A worker's return code; ``null`` where its exit status is unknown."""
    if name in message and message[name] is None:
        return None
    return cast(int, _field(message, name, int, -255, 255))


def _endpoint(message: dict[str, Any], name: str) -> str:
    value = _field(message, name, str)
    if not _ENDPOINT.match(value):
        raise ProtocolError(f"bad broker endpoint {value[:100]!r}")
    return value


def _keys(message: dict[str, Any], name: str) -> dict[str, str]:
    """The workers' CURVE keys to the broker: server, public, secret."""
    value = _field(message, name, dict)
    checked = {}
    for role in ("server", "public", "secret"):
        key = value.get(role)
        if not isinstance(key, str) or not _Z85_KEY.match(key):
            raise ProtocolError(f"{name}.{role} must be a Z85-encoded CURVE key")
        checked[role] = key
    return checked


def _stream(message: dict[str, Any], name: str) -> str:
    value = _field(message, name, str)
    if value not in STREAMS:
        raise ProtocolError(f"{name!r} must be one of {STREAMS}")
    return value


def _lines(message: dict[str, Any], name: str) -> list[str]:
    value = _field(message, name, list)
    if not all(isinstance(line, str) for line in value):
        raise ProtocolError(f"{name!r} must be a list of strings")
    if sum(len(line) + 1 for line in value) > MAX_OUTPUT:
        raise ProtocolError(f"{name!r} holds more than {MAX_OUTPUT} characters")
    return cast(list[str], value)


def _worker(message: dict[str, Any], name: str) -> dict[str, int]:
    value = _field(message, name, dict)
    checked = {key: _field(value, key, int, *bounds) for key, bounds in _WORKER_SETTINGS.items()}
    for key, bounds in _OPTIONAL_WORKER_SETTINGS.items():
        if key in value:
            checked[key] = _field(value, key, int, *bounds)
    return checked


def _pools(message: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """A spawner's pools in a status reply: id, capacity, workers (pid, age),
    and, from a spawner that tells them, the pool's address and silence."""
    value = _field(message, name, list)
    pools = []
    for pool in value:
        if not isinstance(pool, dict):
            raise ProtocolError(f"{name} must hold objects")
        workers = _field(pool, "workers", list)
        if not all(isinstance(w, dict) for w in workers):
            raise ProtocolError(f"{name}.workers must hold objects")
        checked = {
            "id": _field(pool, "id", str),
            "capacity": _field(pool, "capacity", int),
            "workers": [
                {"pid": _field(w, "pid", int), "age": _field(w, "age", float)} for w in workers
            ],
        }
        # added after the first version: optional
        if "address" in pool:
            checked["address"] = _field(pool, "address", str)
        if "silent" in pool:
            checked["silent"] = _field(pool, "silent", float)
        pools.append(checked)
    return pools


class Message:
    """Base of the message classes: a ``KIND``, sent under ``KEY``, and checked ``FIELDS``."""

    #: its kind, the value of ``KEY`` on the wire
    KIND: ClassVar[str]
    #: ``"op"`` for commands, ``"ev"`` for events
    KEY: ClassVar[str]
    #: each field's check, in order; ``identity`` is ``"id"`` on the wire
    FIELDS: ClassVar[dict[str, Check]] = {}

    def body(self) -> dict[str, Any]:
        """The message as the JSON object that carries it."""
        fields = dataclasses.asdict(cast(Any, self))
        identity = fields.pop("identity", None)
        if identity is not None:
            fields["id"] = identity.hex()
        return {self.KEY: self.KIND, **fields}

    @classmethod
    def parse(cls, message: dict[str, Any]) -> Message:
        """The message of this kind in ``message``, each field checked."""
        values = {name: check(message, name) for name, check in cls.FIELDS.items()}
        return cast(Message, cast(Any, cls)(**values))


class Command(Message):
    KEY = "op"


class Event(Message):
    KEY = "ev"


@dataclasses.dataclass(frozen=True)
class Open(Command):
    """Spawner: serve a pool with at most ``workers`` workers."""

    KIND = "open"
    #: the version of the broker-worker frames (``wire/frames.py``) the workers speak
    protocol: int
    #: the broker as the host reaches it
    endpoint: str
    keys: dict[str, str]
    #: the workers' settings: credits, func_pickle, data_pickle, loop, log_level,
    #: heartbeat_ms (optional)
    worker: dict[str, int]
    workers: int
    #: seconds of silence after which the spawner stops the pool's workers
    heartbeat: float
    FIELDS = {
        "protocol": _INT,
        "endpoint": _endpoint,
        "keys": _keys,
        "worker": _worker,
        "workers": _a(int, 1, MAX_WORKERS_PER_POOL),
        "heartbeat": _a(float, MIN_HEARTBEAT, MAX_HEARTBEAT),
    }

    def worker_args(self) -> list[str]:
        """The workers' command-line options, from the checked numbers."""
        return [f"--{name.replace('_', '-')}={value}" for name, value in self.worker.items()]


@dataclasses.dataclass(frozen=True)
class Keys(Command):
    """Agent: the workers' CURVE keys to the broker (server, public, secret)."""

    KIND = "keys"
    keys: dict[str, str]
    FIELDS = {"keys": _keys}


@dataclasses.dataclass(frozen=True)
class Spawn(Command):
    """Start a worker with this routing id."""

    KIND = "spawn"
    identity: bytes
    FIELDS = {"identity": _identity}


@dataclasses.dataclass(frozen=True)
class Kill(Command):
    """SIGKILL a worker; its exit is reported as usual."""

    KIND = "kill"
    identity: bytes
    FIELDS = {"identity": _identity}


@dataclasses.dataclass(frozen=True)
class Ping(Command):
    KIND = "ping"


@dataclasses.dataclass(frozen=True)
class Stop(Command):
    """Stop the workers (SIGTERM after ``grace`` seconds); an agent then exits."""

    KIND = "stop"
    grace: float
    FIELDS = {"grace": _a(float, 0, MAX_GRACE)}


@dataclasses.dataclass(frozen=True)
class Status(Command):
    """Spawner: say what you serve (changes nothing, needs no open pool)."""

    KIND = "status"


@dataclasses.dataclass(frozen=True)
class Hello(Event):
    """Agent: who it is, its first line. ``protocol``: its workers' frames version."""

    KIND = "hello"
    host: str
    #: the distex_zmq version
    version: str
    protocol: int
    python: str
    pid: int
    FIELDS = {"host": _STR, "version": _STR, "protocol": _INT, "python": _STR, "pid": _INT}


@dataclasses.dataclass(frozen=True)
class Opened(Hello):
    """Spawner: the pool is open; who it is."""

    KIND = "opened"


@dataclasses.dataclass(frozen=True)
class Refused(Event):
    """A command refused, and why; with an identity, a worker that was not started."""

    KIND = "refused"
    reason: str
    identity: bytes | None = None
    FIELDS = {"reason": _STR, "identity": _optional_identity}


@dataclasses.dataclass(frozen=True)
class Exit(Event):
    """A worker ended: its pid, return code (``None``: its exit status is
    unknown, as where the host ignores SIGCHLD) and last lines of stderr."""

    KIND = "exit"
    identity: bytes
    pid: int
    rc: int | None
    tail: str
    FIELDS = {"identity": _identity, "pid": _INT, "rc": _returncode, "tail": _STR}

    def __post_init__(self) -> None:
        object.__setattr__(self, "tail", self.tail[-MAX_TAIL:])


@dataclasses.dataclass(frozen=True)
class Output(Event):
    """Lines a worker wrote to its stdout (``"out"``) or stderr (``"err"``)."""

    KIND = "output"
    identity: bytes
    pid: int
    stream: str
    lines: list[str]
    #: lines of this worker its host dropped before these
    dropped: int = 0
    #: the last line is not ended yet: the next lines of the stream continue it
    partial: bool = False
    FIELDS = {
        "identity": _identity,
        "pid": _INT,
        "stream": _stream,
        "lines": _lines,
        "dropped": _a(int, 0, 1 << 62),
        "partial": _a(bool),
    }


def output_events(
    identity: bytes,
    pid: int,
    stream: str,
    lines: Sequence[str],
    dropped: int = 0,
    partial: bool = False,
) -> list[Output]:
    """``Output`` events that carry ``lines`` in order, each within ``MAX_OUTPUT``:
    lines batched, and a line too long for one split into pieces, each but
    its last ending a partial event. With ``partial``, the last line is not
    ended yet."""
    piece = MAX_OUTPUT - 1
    events: list[Output] = []
    batch: list[str] = []
    size = 0
    for whole in lines:
        for start in range(0, max(len(whole), 1), piece):
            line = whole[start : start + piece]
            if size + len(line) + 1 > MAX_OUTPUT:
                events.append(Output(identity, pid, stream, batch, dropped))
                batch, size, dropped = [], 0, 0
            batch.append(line)
            size += len(line) + 1
            if start + piece < len(whole):  # the line goes on in the next event
                events.append(Output(identity, pid, stream, batch, dropped, True))
                batch, size, dropped = [], 0, 0
    if batch or dropped:
        events.append(Output(identity, pid, stream, batch, dropped, partial))
    return events


@dataclasses.dataclass(frozen=True)
class Pong(Event):
    KIND = "pong"


@dataclasses.dataclass(frozen=True)
class Stopped(Event):
    """The workers are stopped."""

    KIND = "stopped"


@dataclasses.dataclass(frozen=True)
class StatusReply(Event):
    """Spawner: the answer to status: who it is, since when, and the pools it serves."""

    KIND = "status_reply"
    host: str
    version: str
    pid: int
    #: seconds since the spawner started
    uptime: float
    max_workers: int
    #: per pool: ``id`` (short), ``capacity``, ``workers`` (``pid``, ``age`` in
    #: seconds), ``address`` it opened from and ``silent``, seconds since its
    #: last request (these two absent from the replies of older spawners)
    pools: list[dict[str, Any]]
    FIELDS = {
        "host": _STR,
        "version": _STR,
        "pid": _INT,
        "uptime": _a(float),
        "max_workers": _INT,
        "pools": _pools,
    }


@dataclasses.dataclass(frozen=True)
class Reads:
    """The kinds of message that one side reads: under ``key``, by kind."""

    key: str
    kinds: Mapping[str, type[Message]]


def _reads(*classes: type[Message]) -> Reads:
    return Reads(classes[0].KEY, {cls.KIND: cls for cls in classes})


#: What a spawner reads, an agent reads, a pool reads from either, and a status asker.
SPAWNER_READS = _reads(Open, Spawn, Kill, Ping, Stop, Status)
AGENT_READS = _reads(Keys, Spawn, Kill, Ping, Stop)
POOL_READS = _reads(Hello, Opened, Refused, Exit, Output, Pong, Stopped)
STATUS_READS = _reads(StatusReply, Refused)


def encode(message: Message) -> list[bytes]:
    """``message`` as ZeroMQ frames."""
    return [HEAD, json.dumps(message.body(), ensure_ascii=False).encode()]


def encode_line(message: Message) -> bytes:
    """``message`` as a line of a stream."""
    body = {"v": VERSION, **message.body()}
    return json.dumps(body, ensure_ascii=False).encode() + b"\n"


def decode(frames: Sequence[bytes], reads: Reads) -> Message:
    """The message in ``frames``, checked to be one of ``reads``; or ``ProtocolError``."""
    if len(frames) != 2:
        raise ProtocolError(f"expected 2 frames, got {len(frames)}")
    head, body = frames
    if head[:4] != MAGIC:
        raise ProtocolError("not a distex_zmq control message")
    if head != HEAD:
        theirs = struct.unpack("!H", head[4:6])[0] if len(head) == 6 else "?"
        raise VersionError(theirs, _release(body))
    return _parse(_json_object(body), reads)


def decode_line(line: bytes, reads: Reads) -> Message:
    """The message in a line of a stream, checked to be one of ``reads``; or ``ProtocolError``."""
    message = _json_object(line)
    if message.get("v") != VERSION:
        if "v" not in message and reads.key not in message:
            raise ProtocolError("a JSON object that is not a control message")
        raise VersionError(message.get("v", "none"), _release(message))
    return _parse(message, reads)


def _release(message: bytes | dict[str, Any]) -> str | None:
    """The distex_zmq version a message of another protocol version names in
    ``"version"`` (a hello or an opened does), if it names one."""
    if isinstance(message, bytes):
        try:
            message = _json_object(message)
        except ProtocolError:
            return None
    release = message.get("version")
    return release if isinstance(release, str) and len(release) <= 100 else None


def _json_object(data: bytes) -> dict[str, Any]:
    try:
        message = load_json(data)
    except ValueError as e:  # UnicodeDecodeError is one
        raise ProtocolError(f"malformed JSON: {e}") from None
    if not isinstance(message, dict):
        raise ProtocolError("a message must be a JSON object")
    return message


def _parse(message: dict[str, Any], reads: Reads) -> Message:
    kind = message.get(reads.key)
    cls = reads.kinds.get(kind) if isinstance(kind, str) else None
    if cls is None:
        if kind is None:
            raise ProtocolError(f"a message without {reads.key!r}")
        raise ProtocolError(f"unknown {reads.key} {str(kind)[:40]!r}")
    return cls.parse(message)
