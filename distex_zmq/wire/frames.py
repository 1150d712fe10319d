"""The wire protocol between broker and workers: the one place that defines it.

A message is a ZeroMQ multipart message whose first frame, the envelope,
carries everything small; large pickles and out-of-band buffers follow as
frames of their own, sent and received without a copy::

    frame 0:  HEAD (magic, version, type, count) | count entries | inline bodies
    frame 1…: large pickles and buffers, in the order of the entries

The magic and version come first, so that a peer of another version is
refused with a clear error instead of being misread. A batch of small tasks
or results travels as one frame, as each frame of a ZeroMQ message costs
about as much to send as a small message of its own. The broker routes on entries
only and never unpickles a body.

worker -> broker:

- ``HELLO`` body = JSON ``{pid, host, credits, version, python}``. A
  worker whose TCP connection dropped before any message came from the
  broker says it again in place of ``SYNC`` (its first may have been lost
  on the way), with ``"again": true``; the broker takes a second ``HELLO``
  of a worker it admitted, with the same pid and host, as ``SYNC``, and
  answers one said again that admits its worker only now with a ``CHECK``
  too (of no task), which ends the worker's wait for one.
- ``RESULT`` one ``RESULT_ENTRY`` per result: how long the task ran, the
  pickled value (inline or the next frame), then its out-of-band buffers. A
  chunk's value is a list with an ``ItemError`` for each input that raised.
  ``STATUS_RETURNED`` (no value) gives back a task the worker did not run.
  ``STATUS_LONG`` (no value, ``elapsed`` how long it has run so far): the
  task still runs and has run ``LONG_TASK_US`` or longer; the entries that
  follow give back the tasks the worker held behind it, and the broker
  sends that worker nothing more until its tasks are answered.
  A chunk may answer in pieces, each entry's ``mark`` an index into the
  chunk's inputs as sent: ``STATUS_PARTIAL`` (the chunk still runs): the
  value holds the results of the inputs up to ``mark`` not answered before;
  ``STATUS_HANDED_BACK`` (the chunk ran past ``CHUNK_BUDGET_US``): the
  inputs from ``mark`` on were not started, and the value is their pickled
  tuple, a chunk payload that the broker requeues at the head of its queue
  in place of the old one; the worker is done with the task.
  ``STATUS_SPLIT`` (the chunk ran past ``CHUNK_BUDGET_US`` and still runs
  an input): the inputs from ``mark`` on that it holds, up to the one it
  runs, are all it runs now; the value is their pickled tuple, the task's
  payload from now on (should it run again elsewhere); the broker sends
  that worker nothing more until the task is answered. Further
  ``STATUS_HANDED_BACK`` entries of a task, after its first or after its
  ``STATUS_SPLIT``, hand back parts of its inputs not started, each a task
  of its own at the head of the queue. A final ``STATUS_OK`` or
  ``STATUS_ERROR`` answers the inputs not answered before.
  A task's entry has ``mark`` 0, or ``MARK_AWAITED`` when the worker
  awaited its result: it ran alongside the worker's other tasks, so its
  run time says nothing of how long it kept its worker from them.
- ``LOG`` body = JSON: a ``logging`` record emitted in the worker at or
  above the pool's ``log_level``, as plain data: ``name``, ``levelno``,
  ``msg`` (the message with its arguments already formatted), ``pathname``,
  ``lineno``, ``funcName``, ``created``, ``exc_text`` (the formatted
  traceback, or null). The broker hands the body to its hooks as bytes;
  the client checks it with ``read_log`` and makes a ``LogRecord`` of it.
  Nothing is pickled, so neither side runs code the other sent.
- ``SYNC`` (no body): the worker's TCP connection dropped and ZeroMQ
  connects it again; what was on its way either way may be lost. The
  broker answers with ``CHECK``.
- ``MISSING`` (ids, see ``CHECK``): the answer to a ``CHECK``, with its
  round: the ids of that ``CHECK`` that the worker does not hold. It sends
  the results it holds before it, so a task of those ids that the broker
  still counts as the worker's lost its TASK or its RESULT on the way: the
  broker runs it again.

broker -> worker:

- ``TASK`` one ``TASK_ENTRY`` per task: the pickled function inline if
  ``FLAG_FUNC`` (when the worker does not hold it: the first time it meets
  it, or after it dropped it, see ``RecentFunctions``), the pickled
  arguments (inline or the next frame), their buffers. ``FLAG_GROUPED``
  marks tiny tasks that share a credit: once one of them runs
  ``GROUP_BELOW_US`` or longer, the worker gives back the later ones of the
  same function in the message, so that they can run elsewhere.
  ``FLAG_FLUSH_FIRST`` marks a task that may run long (its function is new
  to the broker, or lately ran ``GROUP_BELOW_US`` or longer): the worker
  sends the results it holds before starting it, so that none waits behind
  it, and the broker knows which task runs when a worker passes
  ``task_timeout``. ``FLAG_LONE`` marks the only task in the pool (one task
  at a time, say): its worker polls for the next message for up to
  ``LONE_POLL_US`` before its loop sleeps, which spares the wake-up of a
  sleeping thread when the caller is quick, and the broker, which sent it
  from an idle pool, polls as long for its result. ``FLAG_ONE_BY_ONE``
  marks a chunk that killed its worker: a worker hands back its inputs not
  answered, each as a part of its own (``STATUS_HANDED_BACK``), before it
  runs any, so that the next death of a worker names the input to blame
  and the chunk's other inputs run as usual; a chunk of one such input it
  runs. ``skip`` (chunks only): the
  inputs of the payload answered already (by a worker that died since),
  which the worker does not run again. A TASK with no entries is a probe
  (``probe()``): the worker does nothing with it; the broker sends it to a
  worker that holds tasks, as a send to a peer that lost its connection
  fails.
  A task whose data or function pickle refers to functions of the user's
  script by id (``ScriptRef``, see ``script_refs``) is preceded by one ``FLAG_REF`` entry
  per id, in the order the client listed them: task id 0, the id in the
  function id's place, and, when the worker does not hold it
  (``FLAG_FUNC``), the function's pickle as data (inline or the next frame)
  with its buffers and, in ``skip``'s place, the bytes the worker counts
  for it. Ids of functions and of script functions share one
  ``RecentFunctions`` per worker, which both sides update entry by entry:
  a ``FLAG_REF`` entry uses or adds its id as the task's own function
  does, before that task's function, and the ids of one task do not push
  each other out.
- ``STOP`` finish what runs, then exit.
- ``REFUSE`` body = the reason, UTF-8; the worker exits with it.
- ``CHECK`` the answer to ``SYNC``: a round (``ROUND``, counted per worker)
  and one ``ID_ENTRY`` per task sent to the worker and not answered. A
  worker reads it after every TASK sent before it, and answers ``MISSING``.
  Both sides forget the functions the worker holds (``RecentFunctions``)
  at the ``CHECK``, the broker as it sends it, the worker as it reads it: a
  TASK lost on the way took functions with it that the broker counts as
  sent. Until then, a worker whose connection dropped drops unanswered a
  task whose function it lacks (its ``CHECK`` has it run again).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

from distex_zmq.errors import ProtocolError

MAGIC = b"DZMQ"
VERSION = 8

HELLO = b"H"
RESULT = b"R"
TASK = b"T"
STOP = b"S"
REFUSE = b"X"
LOG = b"L"
SYNC = b"Y"
CHECK = b"K"
MISSING = b"M"

#: magic, version, message type, number of entries
HEAD = struct.Struct("!4sHcH")
#: task id, function id, flags, function pickle length, data length, buffers, skip
TASK_ENTRY = struct.Struct("!QIHIIHI")
#: task id, status, microseconds the task ran, data length, buffers, mark
RESULT_ENTRY = struct.Struct("!QBIIHI")
#: the round of a ``CHECK`` and of its ``MISSING``
ROUND = struct.Struct("!I")
#: a task id (``CHECK``, ``MISSING``)
ID_ENTRY = struct.Struct("!Q")
#: The largest run time an entry can say (about 71 minutes).
MAX_ELAPSED = 0xFFFFFFFF

#: The most credits a worker may grant in its hello.
MAX_CREDITS = 1 << 16

#: ``data length`` meaning "the pickle is the next frame, not inline".
IN_FRAME = 0xFFFFFFFF
#: Pickles at least this large travel as frames of their own.
INLINE_MAX = 64 * 1024

# task flags
FLAG_STAR = 1  # call func(*args) instead of func(args)
FLAG_KWARGS = 2  # the payload is (args, kwargs)
FLAG_CHUNK = 4  # the payload is a sequence of inputs; the result a list
FLAG_FUNC = 8  # the pickled function is inline before the data
FLAG_GROUPED = 16  # one of a group of tiny tasks that share a credit
FLAG_FLUSH_FIRST = 32  # send the results done so far before starting this task
FLAG_LONE = 64  # the pool's only task: poll for the next one a moment before sleeping
FLAG_REF = 128  # not a task: a script function that the next task refers to by id
FLAG_ONE_BY_ONE = 256  # a chunk that killed its worker: its inputs go back to run one per task

# result status
STATUS_OK = 0
STATUS_ERROR = 1  # a pickled exception (a RemoteException reduction)
STATUS_RETURNED = 2  # not run: the worker gives the task back (no value)
STATUS_PARTIAL = 3  # a chunk's results for its inputs up to mark; it still runs
STATUS_HANDED_BACK = 4  # a chunk's inputs from mark on, not started (value: their payload)
STATUS_LONG = 5  # the task runs long: the tasks given back after it wait for no one (no value)
STATUS_SPLIT = 6  # a chunk's inputs from mark on that it still runs (value: their payload)
#: ``mark`` of a task's final entry when its result was awaited
MARK_AWAITED = 1

#: Tasks that ran this long (microseconds) are not tiny: the broker groups a
#: function's tasks only while its recent ones ran shorter, and a worker gives
#: back the rest of a group after one that did not.
GROUP_BELOW_US = 1000
#: Microseconds of a chunk's run after which the worker sends the results of
#: the inputs done so far, even while an input still runs (``STATUS_PARTIAL``).
CHUNK_PARTIAL_US = 2000
#: Microseconds of a chunk's run after which the worker hands back the inputs
#: it has not started (``STATUS_SPLIT``, ``STATUS_HANDED_BACK``), so that idle
#: workers take them.
CHUNK_BUDGET_US = 4000
#: Tasks that run this long (microseconds) or longer keep their worker from
#: others: the broker sends no second task to a worker that runs one whose
#: function ran this long last time, and a worker whose task has run this
#: long gives back the tasks it holds and has not started (``STATUS_LONG``).
LONG_TASK_US = 20_000
#: How long a worker polls for the next task after running a ``FLAG_LONE``
#: one, and the broker for the result of one it sent from an idle pool.
LONE_POLL_US = 300

#: Functions a worker keeps: the most recently used ones, at most this many
#: and, but for the newest, at most this many bytes of pickles. The bytes
#: bound what a worker holds of the data that closures capture.
FUNCTION_CACHE = 512
FUNCTION_CACHE_BYTES = 64 * 1024 * 1024


class ScriptRef(NamedTuple):
    """A function of the user's script that task data refers to by id: its
    pickle (by value, with the globals it uses) and out-of-band buffers,
    sent to a worker only when it does not hold the id, and ``held``, the
    bytes that the worker counts for it in its ``RecentFunctions``."""

    ref_id: int
    data: bytes
    buffers: list[Any]
    held: int


#: What ``RecentFunctions.take`` returns for an id it does not hold, by default.
ABSENT = object()


class RecentFunctions:
    """Function id -> function: the most recently used ones (``FUNCTION_CACHE``).

    Each worker keeps its functions in one, and the broker keeps the ids of
    each worker's in another. Both update theirs in the order of the tasks on
    the wire, with the same pickle sizes, so they agree on what the worker
    holds without a word about it: the broker sends a function's pickle
    again (``FLAG_FUNC``) exactly when the worker has dropped it, and a
    worker that meets ever new functions (closures made per call) does not
    grow without bound. The client's ``FunctionCache`` keeps its pickles in
    one too, with limits of its own, keyed by the functions themselves.

    A task's ``FLAG_REF`` entries (``ref=True``) stay until its function is
    used or added: the ids of one task never push each other out, however
    large, or a function and a script function it refers to that hold more
    than the limit between them would each push out the other, and both go
    again with every task.
    """

    __slots__ = ("_items", "_bytes", "_max_items", "_max_bytes", "_task_refs")

    def __init__(
        self, max_items: int = FUNCTION_CACHE, max_bytes: int = FUNCTION_CACHE_BYTES
    ) -> None:
        self._items: dict[Any, tuple[Any, int]] = {}
        self._bytes = 0
        self._max_items = max_items
        self._max_bytes = max_bytes
        #: the ids of the ``FLAG_REF`` entries of the task whose function is next
        self._task_refs: set[Any] = set()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, func_id: Any) -> Any:
        """The value kept for ``func_id``, or None; it does not count as a use."""
        entry = self._items.get(func_id)
        return None if entry is None else entry[0]

    def take(self, func_id: Any, default: Any = ABSENT, ref: bool = False) -> Any:
        """The value kept for ``func_id`` (or ``default``), marked as just
        used; ``ref``: by a ``FLAG_REF`` entry, else by a task's function."""
        if ref:
            self._task_refs.add(func_id)
        items = self._items
        try:
            entry = items.pop(func_id)
        except KeyError:
            return default  # the task's refs stay for the ``add`` that follows
        items[func_id] = entry
        if not ref and self._task_refs:
            self._task_refs.clear()
        return entry[0]

    def use(self, func_id: Any, ref: bool = False) -> bool:
        """Mark ``func_id`` as just used (see ``take``); return whether it is here."""
        return self.take(func_id, ABSENT, ref) is not ABSENT

    def add(self, func_id: Any, value: Any, size: int, ref: bool = False) -> None:
        """Keep ``value`` (its pickle ``size`` bytes long) as the newest; drop
        the oldest beyond the limits, but for the task's own ids (``take``)."""
        items = self._items
        old = items.pop(func_id, None)
        if old is not None:
            self._bytes -= old[1]
        items[func_id] = (value, size)
        self._bytes += size
        keep = self._task_refs
        while len(items) > 1 and (len(items) > self._max_items or self._bytes > self._max_bytes):
            if keep:
                oldest = next((i for i in items if i not in keep and i != func_id), None)
                if oldest is None:
                    break
            else:
                oldest = next(iter(items))
            self._bytes -= items.pop(oldest)[1]
        if ref:
            keep.add(func_id)
        elif keep:
            keep.clear()


def control(kind: bytes, body: bytes = b"") -> list[bytes]:
    """A message without entries: HELLO, STOP, REFUSE."""
    return [HEAD.pack(MAGIC, VERSION, kind, 0) + body]


def probe() -> list[bytes]:
    """A TASK message without tasks, which a worker reads and drops."""
    return control(TASK)


def task_ids(kind: bytes, round_: int, ids: Sequence[int]) -> list[bytes]:
    """A ``CHECK`` or ``MISSING`` of ``round_``, listing ``ids``."""
    pack = ID_ENTRY.pack
    return [
        HEAD.pack(MAGIC, VERSION, kind, len(ids))
        + b"".join([pack(task_id) for task_id in ids])
        + ROUND.pack(round_)
    ]


def read_task_ids(buf: memoryview, count: int) -> tuple[int, list[int]]:
    """A ``CHECK``'s or a ``MISSING``'s round and ids; ``ProtocolError`` if
    it is malformed."""
    offset = body(buf, count, ID_ENTRY)
    if len(buf) != offset + ROUND.size:
        raise ProtocolError("malformed list of task ids")
    ids = [task_id for (task_id,) in ID_ENTRY.iter_unpack(buf[HEAD.size : offset])]
    return ROUND.unpack_from(buf, offset)[0], ids


def hello(info: dict[str, Any]) -> list[bytes]:
    return control(HELLO, json.dumps(info).encode())


#: The fields of a ``LOG`` body and their types (``exc_text`` may be null).
LOG_FIELDS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "levelno": int,
    "msg": str,
    "pathname": str,
    "lineno": int,
    "funcName": str,
    "created": (int, float),
    "exc_text": (str, type(None)),
}
#: Fields a ``LOG`` body may lack (one of a worker of an earlier version),
#: their types and the values they then take.
LOG_OPTIONAL_FIELDS: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "threadName": (str, "MainThread"),
    "stack_info": ((str, type(None)), None),
    # the attributes that the call's ``extra=`` gave the record
    "extra": (dict, {}),
}
#: Characters of a log message, and of its traceback, that a ``LOG`` carries at most.
MAX_LOG_TEXT = 64 * 1024


def log(record: dict[str, Any]) -> list[bytes]:
    """A ``LOG`` message of a record's fields (``LOG_FIELDS``)."""
    return control(LOG, json.dumps(record).encode())


def load_json(data: bytes | str) -> Any:
    """``json.loads(data)``, with ``ValueError`` for JSON nested too deep to
    load (a ``RecursionError`` of the decoder), as for any other that is
    malformed: a peer's message never raises more than ``ValueError``."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("nested too deep") from None


def read_log(body: bytes) -> dict[str, Any]:
    """The checked fields of a ``LOG`` body; ``ProtocolError`` if it is malformed."""
    try:
        record = load_json(body)
    except ValueError as e:
        raise ProtocolError(f"malformed log record: {e}") from None
    if not isinstance(record, dict):
        raise ProtocolError("malformed log record: not an object")
    checked = {}
    for name, kind in LOG_FIELDS.items():
        value = record.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ProtocolError(f"malformed log record: bad {name!r}")
        checked[name] = value
    for name, (kind, default) in LOG_OPTIONAL_FIELDS.items():
        value = record.get(name, default)
        if not isinstance(value, kind):
            raise ProtocolError(f"malformed log record: bad {name!r}")
        checked[name] = value
    return checked


class Writer:
    """Builds one TASK or RESULT message from a batch of entries."""

    __slots__ = ("kind", "entries", "inline", "frames")

    def __init__(self, kind: bytes):
        self.kind = kind
        self.entries: list[bytes] = []
        self.inline: list[Any] = []
        self.frames: list[Any] = []

    def __bool__(self) -> bool:
        return bool(self.entries)

    def body(self, data: Any, buffers: Sequence[Any]) -> int:
        """Add a pickle and its buffers; return the data length for the entry."""
        size = len(data)
        if size >= INLINE_MAX:
            self.frames.append(data)
            size = IN_FRAME
        else:
            self.inline.append(data)
        if buffers:
            self.frames.extend(buffers)
        return size

    def extend(self, other: Writer) -> None:
        """Add the entries of ``other``, with their bodies, as one: another
        thread's ``take_done`` takes all of them or none (under the GIL)."""
        self.inline.extend(other.inline)
        self.frames.extend(other.frames)
        self.entries.extend(other.entries)

    def take_done(self) -> Writer:
        """Move the entries added so far, with their bodies, to a new writer.

        Safe against another thread that adds entries meanwhile (under the
        GIL): bodies are added before their entry, and only whole prefixes
        are taken."""
        taken = Writer(self.kind)
        entries = self.entries
        count = len(entries)
        taken.entries = entries[:count]
        inline = frames = 0
        for *_, size, nbuffers, _mark in RESULT_ENTRY.iter_unpack(b"".join(taken.entries)):
            if size == IN_FRAME:
                frames += 1
            elif size:
                inline += 1
            frames += nbuffers
        taken.inline = self.inline[:inline]
        taken.frames = self.frames[:frames]
        del entries[:count]
        del self.inline[:inline]
        del self.frames[:frames]
        return taken

    def frames_out(self) -> list[Any]:
        head = HEAD.pack(MAGIC, VERSION, self.kind, len(self.entries))
        return [b"".join([head, *self.entries, *self.inline]), *self.frames]


def check(frame: Any) -> tuple[bytes, int, memoryview]:
    """Check the envelope; return ``(type, entry count, envelope view)``.

    Raises ``ProtocolError`` for a message of another protocol or version,
    or the wrong shape, with a text fit for a log line.
    """
    buf = memoryview(frame)
    if len(buf) < HEAD.size:
        raise ProtocolError("not a distex_zmq message (too short)")
    magic, version, kind, count = HEAD.unpack_from(buf)
    if magic != MAGIC:
        raise ProtocolError("not a distex_zmq message")
    if version != VERSION:
        raise ProtocolError(
            f"protocol version mismatch: the peer speaks version {version}, this side "
            f"{VERSION}; install the same distex_zmq version on every host"
        )
    return kind, count, buf


def body(buf: memoryview, count: int, entry: struct.Struct) -> int:
    """Offset of the inline bodies, after ``count`` entries."""
    offset = HEAD.size + count * entry.size
    if offset > len(buf):
        raise ProtocolError("truncated message: entries past its end")
    return offset


def json_body(buf: memoryview) -> dict[str, Any]:
    try:
        info = load_json(bytes(buf[HEAD.size :]))
    except ValueError as e:
        raise ProtocolError(f"malformed body: {e}") from None
    if not isinstance(info, dict):
        raise ProtocolError("malformed body: not an object")
    return info


def read_hello(buf: memoryview) -> tuple[int, str, int, str | None, bool]:
    """A HELLO's ``(pid, host, credits, python, again)`` (``python``: the
    worker's Python version, None if it did not say; ``again``: it says
    hello again after its connection dropped); ``ProtocolError`` if it is
    malformed."""
    info = json_body(buf)
    try:
        pid, host, credits = int(info["pid"]), str(info["host"]), int(info["credits"])
        python = None if info.get("python") is None else str(info["python"])
    except (KeyError, TypeError, ValueError, OverflowError):
        raise ProtocolError(f"malformed hello {info!r:.200}") from None
    if not 0 < credits <= MAX_CREDITS:
        raise ProtocolError(f"hello with bad credits {credits}")
    return pid, host, credits, python, info.get("again") is True


def text_body(buf: memoryview) -> str:
    return bytes(buf[HEAD.size :]).decode(errors="replace")


class Reader:
    """Walks the bodies and extra frames of a TASK or RESULT message."""

    __slots__ = ("buf", "pos", "frames", "next_frame")

    def __init__(self, buf: memoryview, offset: int, frames: Sequence[Any]):
        self.buf = buf
        self.pos = offset
        self.frames = frames
        self.next_frame = 1

    def inline(self, size: int) -> memoryview:
        end = self.pos + size
        if end > len(self.buf):
            raise ProtocolError("truncated message: body past its end")
        view = self.buf[self.pos : end]
        self.pos = end
        return view

    def data(self, size: int, nbuffers: int) -> tuple[Any, list[Any]]:
        if size == IN_FRAME:
            data = self.frame()
        else:
            data = self.inline(size)
        buffers = [self.frame() for _ in range(nbuffers)] if nbuffers else []
        return data, buffers

    def frame(self) -> Any:
        if self.next_frame >= len(self.frames):
            raise ProtocolError("truncated message: fewer frames than its entries say")
        frame = self.frames[self.next_frame]
        self.next_frame += 1
        return getattr(frame, "buffer", frame)


def task_entries(buf: memoryview, count: int) -> Iterator[tuple[int, int, int, int, int, int, int]]:
    """The entries of a TASK message (check their extent with ``body`` first)."""
    return TASK_ENTRY.iter_unpack(buf[HEAD.size : HEAD.size + count * TASK_ENTRY.size])


def result_entries(buf: memoryview, count: int) -> Iterator[tuple[int, int, int, int, int, int]]:
    """The entries of a RESULT message (check their extent with ``body`` first)."""
    return RESULT_ENTRY.iter_unpack(buf[HEAD.size : HEAD.size + count * RESULT_ENTRY.size])
