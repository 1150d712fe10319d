"""Pickling of functions and data, with large buffers out of band.

Data is pickled with protocol 5: buffers of at least ``OOB_THRESHOLD`` bytes
(numpy arrays, ``PickleBuffer``; large ``bytes`` and ``bytearray`` objects
passed as arguments or returned as results) are not copied into the pickle
but travel as frames of their own, sent without a copy and handed to
``loads`` on the other side (which copies bytes and bytearrays once, to
make objects of their own).
"""

from __future__ import annotations

import functools
import importlib
import pickle
import threading
from collections.abc import Callable
from enum import IntEnum
from types import ModuleType
from typing import Any

from .protocol import RecentFunctions

PROTOCOL = 5
#: Buffers at least this large travel as their own frames.
OOB_THRESHOLD = 32 * 1024


class PickleType(IntEnum):
    """Serializer for functions or data (the values of distex)."""

    pickle = 0
    cloudpickle = 1
    dill = 2


def pickle_module(kind: int) -> ModuleType:
    """The module for a ``PickleType``, imported on first use."""
    try:
        name = PickleType(kind).name
    except ValueError:
        raise ValueError(
            f"unknown PickleType {kind!r}; use one of "
            + ", ".join(f"{t.name}={t.value}" for t in PickleType)
        ) from None
    return pickle if name == "pickle" else importlib.import_module(name)


def dumps(obj: Any, dumper: Callable[..., bytes] = pickle.dumps) -> tuple[bytes, list[Any]]:
    """Pickle ``obj``; return the pickle and its out-of-band buffers."""
    buffers: list[Any] = []
    obj = _bytes_out_of_band(obj)

    def keep_large(buf: pickle.PickleBuffer) -> bool:
        try:
            view = buf.raw()
        except BufferError:  # not contiguous: pickle it in band
            return True
        if view.nbytes < OOB_THRESHOLD:
            return True
        buffers.append(view)
        return False

    return dumper(obj, protocol=PROTOCOL, buffer_callback=keep_large), buffers


_BYTES_TYPES = (bytes, bytearray)


def _bytes_out_of_band(obj: Any) -> Any:
    """Let large ``bytes`` and ``bytearray`` objects travel out of band.

    Pickle copies both into the pickle (only ``PickleBuffer`` objects and
    types that reduce to one, such as numpy arrays, go out of band), and its
    ``reducer_override`` hook is not called for them. So one that is the
    object itself, or an item of an arguments tuple, is wrapped to be
    pickled as a buffer: a copy less on the sending side, and still the
    same type on the other. Deeper ones are pickled as usual.
    """
    kind = type(obj)
    if kind in _BYTES_TYPES:
        return _LargeBytes(obj) if len(obj) >= OOB_THRESHOLD else obj
    if kind is tuple and 0 < len(obj) <= 8:
        for item in obj:
            if type(item) in _BYTES_TYPES and len(item) >= OOB_THRESHOLD:
                return tuple(_LargeBytes(item) if _is_large_bytes(item) else item for item in obj)
    return obj


def _is_large_bytes(obj: Any) -> bool:
    return type(obj) in _BYTES_TYPES and len(obj) >= OOB_THRESHOLD


def call_out_of_band(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``(args, kwargs)`` of a call, ready for ``dumps``: large ``bytes`` and
    ``bytearray`` arguments go out of band whether passed by position or by
    keyword (``dumps`` itself looks only one level down)."""
    if len(kwargs) <= 8 and any(_is_large_bytes(value) for value in kwargs.values()):
        kwargs = {k: _LargeBytes(v) if _is_large_bytes(v) else v for k, v in kwargs.items()}
    return _bytes_out_of_band(args), kwargs


class _LargeBytes:
    """Pickles a ``bytes`` or ``bytearray`` as a buffer (out of band with
    protocol 5); it unpickles as a copy of the same type."""

    __slots__ = ("data",)

    def __init__(self, data: bytes | bytearray):
        self.data = data

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        # made only inside dumps, which pickles with protocol 5
        return type(self.data), (pickle.PickleBuffer(self.data),)


def loads(data: Any, buffers: list[Any], loader: Callable[..., Any] = pickle.loads) -> Any:
    """Unpickle what ``dumps`` made, from bytes or buffers of received frames."""
    if buffers:
        return loader(data, buffers=buffers)
    return loader(data)


class ItemError:
    """Stands in a chunk's list of results for an input that raised."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException):
        self.error = error

    def __reduce__(self) -> tuple[Any, ...]:
        return ItemError, (self.error,)


def _checked_callable(func: Any) -> Any:
    """Return ``func``; raise here, not in a worker, if it cannot be called."""
    if not callable(func):
        raise TypeError(
            f"{func!r} is not callable: pass the function to run first, then its arguments"
        )
    return func


class FunctionCache:
    """Client side: pickle each function once per pool and give it an id.

    Workers are sent a function's pickle the first time they meet its id and
    refer to it by id after that. Functions that cannot be dictionary keys
    get id 0 and travel with every task. It keeps at most ``max_size``
    functions and, but for the newest, ``max_bytes`` of their pickles, so
    that closures made per call, and the data they capture, are let go.
    """

    def __init__(self, func_pickle: int, max_size: int = 1024, max_bytes: int = 64 << 20):
        module = pickle_module(func_pickle)
        if module.__name__ == "dill":
            # recurse: take the globals a function of __main__ uses along,
            # so it runs in a worker whose __main__ is another script
            self._dumps = functools.partial(module.dumps, recurse=True)
        else:
            self._dumps = module.dumps
        #: function -> (id, pickle), the oldest dropped first; it gets a new
        #: id if it comes back
        self._by_func = RecentFunctions(max_size, max_bytes)
        self._next_id = 1
        self._lock = threading.Lock()

    def get(self, func: Callable[..., Any]) -> tuple[int, bytes]:
        """Return ``(function id, pickled function)``."""
        try:
            entry: tuple[int, bytes] | None = self._by_func.get(func)
        except TypeError:  # unhashable callable
            return 0, self._dumps(_checked_callable(func), protocol=PROTOCOL)
        if entry is not None:
            return entry
        pickled = self._dumps(_checked_callable(func), protocol=PROTOCOL)
        with self._lock:
            entry = self._by_func.get(func)
            if entry is None:
                entry = (self._next_id, pickled)
                self._next_id += 1
                self._by_func.add(func, entry, len(pickled))
        return entry

    def __len__(self) -> int:
        return len(self._by_func)
