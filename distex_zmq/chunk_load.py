"""A chunk's results unpickled one at a time, for when their pickle does not
load as a whole in the client: each result that does not load fails its
own input only, and the others keep theirs. So are a chunk's inputs in a
worker (a pickled tuple), when they do not load there as a whole.

A chunk's results travel as one pickle of a list (the fast path unpickles
it in one call). That pickle is read opcode by opcode (``pickletools``) to
find where each result's opcodes start and end; each result is then
unpickled on its own, in order, by one unpickler whose memo carries the
objects that results share (a class, a string) from one to the next. A
result that fails leaves the memo entries it did not get to make; stand-ins
fill their places, and a later result that refers to one of them, or to an
object (not a class or a string) of the failed result, fails too.
"""

from __future__ import annotations

import functools
import io
import pickle
import pickletools
from bisect import bisect_left
from collections.abc import Callable
from typing import Any, cast

from .script_objects import dill_loads

#: Opcodes that push an object which is whole once pushed: a class or
#: function by name, a string, a number. Objects made of them later (a
#: result that failed halfway) may not be whole.
_WHOLE = frozenset(
    {
        "GLOBAL",
        "STACK_GLOBAL",
        "SHORT_BINUNICODE",
        "BINUNICODE",
        "BINUNICODE8",
        "UNICODE",
        "SHORT_BINBYTES",
        "BINBYTES",
        "BINBYTES8",
        "SHORT_BINSTRING",
        "BINSTRING",
        "STRING",
        "BININT",
        "BININT1",
        "BININT2",
        "INT",
        "LONG",
        "LONG1",
        "LONG4",
        "BINFLOAT",
        "FLOAT",
        "NONE",
        "NEWTRUE",
        "NEWFALSE",
    }
)

#: Opcodes whose memo index is explicit, and persistent ids: the pickles a
#: pool makes (protocol 5) have none; with them, results are not split.
_UNSPLIT = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "PERSID", "BINPERSID"})

_MARK, _OBJECT, _WHOLE_OBJECT = 0, 1, 2
_TUPLES = frozenset({"TUPLE", "TUPLE1", "TUPLE2", "TUPLE3"})
_GETS = frozenset({"GET", "BINGET", "LONG_BINGET"})


class Unloaded:
    """Stands for a result that did not unpickle: its ``error``, and
    ``shared``, the position of the earlier result in the chunk whose
    failure it shares (it refers to an object of that result), or None."""

    __slots__ = ("error", "shared")

    def __init__(self, error: BaseException, shared: int | None = None):
        self.error = error
        self.shared = shared


class _Layout:
    """Where each result of a pickled list is: ``spans`` (start, end) of
    their opcodes; the memo indices (``memo_whole``: whether each holds a
    whole object, ``memo_at``: where each is made); ``gets`` (position,
    index) of memo look-ups; ``buffers_at``: where each out-of-band buffer
    is taken; ``frames``: positions of ``FRAME`` opcodes (9 bytes each)."""

    def __init__(self) -> None:
        self.spans: list[tuple[int, int]] = []
        self.memo_whole: list[bool] = []
        self.memo_at: list[int] = []
        self.gets: list[tuple[int, int]] = []
        self.buffers_at: list[int] = []
        self.frames: list[int] = []


def _layout(data: bytes) -> _Layout | None:
    """The layout of ``data``, a pickled list or tuple (a chunk's inputs);
    None if it is neither, or if it uses opcodes that a pool's pickles do
    not."""
    layout = _Layout()
    # a tuple is made last, of what the stack holds: the spans of the last
    # one that emptied the stack, and where it was made
    tuple_spans: list[tuple[int, int]] = []
    tuple_at = -1
    last = -1  # where the last opcode but MEMOIZE and FRAME is
    # (start of the opcodes that made it, kind) of each object on the stack
    stack: list[tuple[int, int]] = []
    # height -> start of the opcodes of objects dropped there (``POP``): they
    # belong to the next object made at that height, or to what consumes it
    dropped: dict[int, int] = {}
    stopped = False
    for opcode, arg, at in pickletools.genops(data):
        pos = cast(int, at)  # a position: ``data`` is bytes
        name = opcode.name
        if name == "FRAME":
            layout.frames.append(pos)
            continue
        if name == "PROTO":
            continue
        if name == "STOP":
            stopped = len(stack) == 1
            break
        if name in _UNSPLIT:
            return None
        if name != "MEMOIZE":
            last = pos
        if name == "MEMOIZE":
            layout.memo_whole.append(stack[-1][1] == _WHOLE_OBJECT)
            layout.memo_at.append(pos)
            continue
        before = opcode.stack_before
        popped: list[tuple[int, int]] = []
        items: list[tuple[int, int]] = []
        if pickletools.markobject in before or (name == "POP" and stack[-1][1] == _MARK):
            while stack and stack[-1][1] != _MARK:
                items.append(stack.pop())
            if not stack:
                return None
            items.reverse()
            popped = [stack.pop(), *items]
            count = before.index(pickletools.markobject) if name != "POP" else 0
        else:
            count = len(before)
        if count > len(stack):
            return None
        if count:
            popped.extend(stack[-count:])
            del stack[-count:]
        if name in ("APPEND", "APPENDS") and not stack:
            # the list itself: what it appends are the results
            results = items if name == "APPENDS" else popped[1:]
            starts = [start for start, _ in results]
            if layout.spans and starts and starts[0] <= layout.spans[-1][1]:
                return None
            layout.spans.extend(zip(starts, [*starts[1:], pos], strict=True))
        elif name in _TUPLES and not stack:
            # a tuple of what the stack held: the whole pickle's, if last
            starts = [start for start, _ in (items if name == "TUPLE" else popped)]
            tuple_spans = list(zip(starts, [*starts[1:], pos], strict=True))
            tuple_at = pos
        start = min([pos, *(entry[0] for entry in popped)])
        height = len(stack)
        for level in [level for level in dropped if level >= height]:
            start = min(start, dropped.pop(level))
        if name in _GETS:
            index = cast(int, arg)
            if index >= len(layout.memo_whole):
                return None
            layout.gets.append((pos, index))
            stack.append((start, _WHOLE_OBJECT if layout.memo_whole[index] else _OBJECT))
            continue
        if name == "NEXT_BUFFER":
            layout.buffers_at.append(pos)
        after = opcode.stack_after
        if not after:
            dropped[height] = start
        for pushed in after:
            if pushed is pickletools.markobject:
                stack.append((pos, _MARK))
            else:
                stack.append((start, _WHOLE_OBJECT if name in _WHOLE else _OBJECT))
    if not stopped:
        return None
    if not layout.spans:
        if tuple_at < 0 or tuple_at != last:
            return None  # neither a list nor a tuple
        layout.spans = tuple_spans
    # only the list itself is in the memo before its first result
    first = layout.spans[0][0] if layout.spans else len(data)
    if bisect_left(layout.memo_at, first) > 1:
        return None
    return layout


def _opcodes(data: bytes, start: int, end: int, frames: list[int]) -> bytes:
    """``data[start:end]`` without its ``FRAME`` opcodes."""
    parts = []
    at = start
    for frame in frames[bisect_left(frames, start) : bisect_left(frames, end)]:
        parts.append(data[at:frame])
        at = frame + 9
    parts.append(data[at:end])
    return b"".join(parts)


class _Buffers:
    """The out-of-band buffers, from a position that can be set."""

    def __init__(self, buffers: list[Any]):
        self._buffers = buffers
        self.next = 0

    def __iter__(self) -> _Buffers:
        return self

    def __next__(self) -> Any:
        if self.next >= len(self._buffers):
            raise StopIteration
        self.next += 1
        return self._buffers[self.next - 1]


def load_each(
    data: Any,
    buffers: list[Any],
    loads: Callable[..., Any],
    unpickler: Callable[..., Any] | None = None,
    last: int | None = None,
) -> list[Any] | None:
    """The list that ``data`` (with out-of-band ``buffers``) pickles,
    unpickled as ``loads`` does but one item at a time: an ``Unloaded`` for
    each that fails. None if ``data`` is not a pickled list that can be
    split (or ``loads`` is not a loader of the pool's).

    ``unpickler(file, buffers=...)``, if given, makes the unpickler (a
    subclass of ``pickle.Unpickler``) instead; ``last``: the items up to
    that position only."""
    if unpickler is not None:
        pass
    elif loads is pickle.loads:
        unpickler = pickle.Unpickler
    elif loads is dill_loads:
        import dill

        unpickler = dill.Unpickler
    else:
        return None
    data = bytes(data)
    try:
        layout = _layout(data)
    except Exception:  # noqa: BLE001 - not a pickle it can read: not split
        return None
    if layout is None:
        return None
    head = b"\x80\x05"
    stream = io.BytesIO()
    # the list itself, first in the memo (a stand-in: results that refer
    # to it are not split)
    listed = bool(layout.memo_at) and (not layout.spans or layout.memo_at[0] < layout.spans[0][0])
    if listed and any(index == 0 for _, index in layout.gets):
        return None
    stream.write(head + b"]\x94." if listed else head + b"N.")
    offsets = []
    for start, end in layout.spans:
        offsets.append(stream.tell())
        stream.write(head + _opcodes(data, start, end, layout.frames) + b".")
    source = _Buffers(buffers)
    loader = unpickler(stream, buffers=source)
    # the load of the standard unpickler (or of Python's own, for an
    # unpickler written in Python, as ``task_errors.TolerantUnpickler``):
    # dill's also gives an object of a class of ``__main__`` the client's
    # class, which the whole list's load does not do for the objects in it
    standard: Any = pickle._Unpickler if isinstance(loader, pickle._Unpickler) else pickle.Unpickler
    load = functools.partial(standard.load, loader)
    stream.seek(0)
    load()
    #: memo index -> (position of the result whose failure it carries, error)
    failed: dict[int, tuple[int, BaseException]] = {}
    get_at = [pos for pos, _ in layout.gets]
    items: list[Any] = []
    made = int(listed)  # memo entries so far
    for position, (start, end) in enumerate(layout.spans):
        if last is not None and position > last:
            break
        stream.seek(offsets[position])
        source.next = bisect_left(layout.buffers_at, start)
        error: BaseException | None = None
        try:
            items.append(load())
        except Exception as e:  # noqa: BLE001 - that result's error
            error = e
        shared = None
        if failed:
            gets = layout.gets[bisect_left(get_at, start) : bisect_left(get_at, end)]
            shared = next((failed[index] for _, index in gets if index in failed), None)
        expected = bisect_left(layout.memo_at, end)
        if error is None and shared is None:
            made = expected
            continue
        have = len(loader.memo.copy())
        if have > expected:
            return None
        if have < expected:
            # stand-ins for the memo entries it did not make, so that the
            # next results' entries get their own indices
            stream.seek(0, io.SEEK_END)
            at = stream.tell()
            stream.write(head + b"N" + b"\x94" * (expected - have) + b".")
            stream.seek(at)
            load()
        if error is None:
            items.pop()
            assert shared is not None
            items.append(Unloaded(shared[1], shared[0]))
            cause = shared
        else:
            items.append(Unloaded(error))
            cause = (position, error)
        for index in range(made, expected):
            if index >= have or not layout.memo_whole[index]:
                failed[index] = cause
        made = expected
    return items
