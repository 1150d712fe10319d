"""Pickling of functions and data, with large buffers out of band.

Data is pickled with protocol 5: buffers of at least ``OOB_THRESHOLD`` bytes
(numpy arrays, ``PickleBuffer``; numpy ``memmap`` objects, sent as the plain
arrays of their data; large ``bytes`` and ``bytearray`` objects passed as
arguments or returned as results) are not copied into the pickle but travel
as frames of their own, sent without a copy and handed to ``loads`` on the
other side (which copies bytes and bytearrays once, to make objects of
their own).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import io
import pickle
import sys
import threading
import types
import weakref
from collections.abc import Callable
from enum import IntEnum
from typing import Any, cast

from .errors import rebuild_without_init
from .memmaps import MEMMAP_MARK, OOB_THRESHOLD, memmap_reduce, memmap_type, plain_array
from .pickle_culprit import culprit
from .script_objects import (
    PickleByValue,
    dill_data_dumps,
    dill_data_dumps_to_client,
    dill_dumps,
    dill_loads,
    dumps_by_value,
    dumps_by_value_to_client,
    dumps_main_by_value,
    dumps_main_to_client,
)
from .script_rebuild import RefSink
from .wire.frames import FUNCTION_CACHE, RecentFunctions

PROTOCOL = 5


class PickleType(IntEnum):
    """Serializer for functions or data (0 to 2 are the values of distex).

    ``auto`` (the default ``data_pickle``, for data only) is standard pickle,
    but an object that refers to the user's script (``__main__``) is pickled
    by cloudpickle, which sends the script's classes and functions by value.
    """

    pickle = 0
    cloudpickle = 1
    dill = 2
    auto = 3


class _MainByValue:
    """``dumps`` and ``loads`` of ``PickleType.auto``."""

    __name__ = "auto"
    dumps = staticmethod(dumps_main_by_value)
    loads = staticmethod(pickle.loads)


class _CloudpickleData:
    """``dumps`` and ``loads`` of ``PickleType.cloudpickle`` for data:
    cloudpickle, with the script's objects sent as ``PickleType.auto``
    sends them (``script_pickler``)."""

    __name__ = "cloudpickle"
    dumps = staticmethod(dumps_by_value)
    loads = staticmethod(pickle.loads)


class _DillData:
    """``dumps`` and ``loads`` of ``PickleType.dill`` for data: dill, with
    the script's classes and functions sent as ``PickleType.auto`` sends
    them (``dill_script.ScriptDataPickler``)."""

    __name__ = "dill"
    dumps = staticmethod(dill_data_dumps)
    loads = staticmethod(dill_loads)


def pickle_type(kind: int | str) -> PickleType:
    """``kind``, a ``PickleType`` or its name (``"dill"``), as a
    ``PickleType``; ``ValueError`` if it is none (imports nothing)."""
    try:
        if isinstance(kind, str):
            return PickleType[kind.lower()]
        return PickleType(kind)
    except (KeyError, ValueError):
        raise ValueError(
            f"unknown PickleType {kind!r}; use one of "
            + ", ".join(f"{t.name}={t.value} ({t.name!r})" for t in PickleType)
        ) from None


def pickle_module(kind: int) -> Any:
    """The module (``dumps``, ``loads``) for a ``PickleType``, imported on first use."""
    name = pickle_type(kind).name
    if name == "auto":
        return _MainByValue
    return pickle if name == "pickle" else importlib.import_module(name)


def data_pickle_module(kind: int) -> Any:
    """The module (``dumps``, ``loads``) for arguments and results pickled
    with ``kind``: ``pickle_module``'s, but cloudpickle and dill send the
    script's functions so that in a worker they are made on the namespace
    that the script's functions share there, as ``PickleType.auto`` does
    (``script_rebuild``)."""
    name = pickle_type(kind).name
    if name == "cloudpickle":
        return _CloudpickleData
    if name == "dill":
        return _DillData
    return pickle_module(kind)


#: What a pickle made by dill names where it needs dill's unpickler: dill's
#: own functions, the names dill's unpickler maps (``__builtin__``), and
#: objects of ``__main__``, whose class it points at the worker's own.
_DILL_MARKS = (b"dill", b"__builtin__", b"__main__")


def function_loads(kind: int) -> Callable[[Any], Any]:
    """The ``loads`` of a worker for functions pickled with ``kind``.

    With dill, a pickle that names none of ``_DILL_MARKS`` is one that
    standard pickle made (``FunctionCache`` pickles importable functions
    so): standard pickle loads it, as dill would, and the worker imports
    dill when a function first needs it.
    """
    if pickle_type(kind) != PickleType.dill:
        return cast(Callable[[Any], Any], pickle_module(kind).loads)
    return _dill_loads


def _dill_loads(data: Any) -> Any:
    data = bytes(data)
    if any(mark in data for mark in _DILL_MARKS):
        import dill

        return dill.loads(data)
    return pickle.loads(data)


#: Objects whose pickle holds no buffer and names no module: ``dumps`` of
#: one with standard pickle makes what ``pickle.dumps(obj, PROTOCOL)`` makes.
SCALARS = frozenset({int, float, bool, type(None)})


def pickles_scalars_plainly(dumper: Callable[..., bytes]) -> bool:
    """Whether ``dumper`` is standard pickle's (``pickle``, ``auto``), so
    that scalars (``SCALARS``) may be pickled by ``pickle.dumps`` straight,
    the same bytes without ``dumps``' layers: what the hot paths of the
    caller and the worker do for a map's inputs and results."""
    return dumper in (pickle.dumps, dumps_main_by_value, dumps_main_to_client)


def results_dumper(dumper: Callable[..., bytes]) -> Callable[..., bytes]:
    """The ``dumps`` of a worker's results for data pickled with ``dumper``
    (a ``data_pickle_module``'s): with the script's classes that the client
    sent by id sent back as the client's own, by their tracker id."""
    return _TO_CLIENT.get(dumper, dumper)


#: What a pickle of the by-value pickler (``script_pickler.ScriptPickler``)
#: names once it sent an object by value or by id: ``script_rebuild``'s
#: functions (the script's classes and functions) or cloudpickle's.
_BY_VALUE_MARKS = (b"distex_zmq.script_rebuild", b"cloudpickle")


class ScriptGuess:
    """Which pickler ``PickleType.auto`` tries first for one stream of data:
    the inputs of one map in the client, the results of one function in a
    worker (``dumps`` updates it).

    Standard pickle is tried first; a pickle that refers to the script is
    made again by the by-value pickler, so that data of the script's
    classes is pickled twice. Once an object of the stream needed the
    by-value pickler, the next go to it straight; once what it made names
    nothing sent by value (``_BY_VALUE_MARKS``: the stream holds plain data
    again, which standard pickle pickles faster), standard pickle is tried
    first again. Either way the pickle loads as the same objects (but for
    those of a module registered with cloudpickle's
    ``register_pickle_by_value``, which then go by value too)."""

    __slots__ = ("by_value",)

    def __init__(self) -> None:
        #: the next object goes to the by-value pickler straight
        self.by_value = False


class ScriptGuesses:
    """A ``ScriptGuess`` for the data of each function, by function id: the
    arguments of its calls in the client, its results in a worker (one
    function's tend to be of the same types). All are forgotten at once
    beyond ``FUNCTION_CACHE`` functions (functions made per call)."""

    __slots__ = ("_guesses",)

    def __init__(self) -> None:
        self._guesses: dict[int, ScriptGuess] = {}

    def of(self, func_id: int) -> ScriptGuess:
        """The ``ScriptGuess`` of function ``func_id``'s data."""
        guesses = self._guesses
        guess = guesses.get(func_id)
        if guess is None:
            if len(guesses) >= FUNCTION_CACHE:
                guesses.clear()
            guess = guesses[func_id] = ScriptGuess()
        return guess


def dumps(
    obj: Any,
    dumper: Callable[..., bytes] = pickle.dumps,
    refs: RefSink | None = None,
    guess: ScriptGuess | None = None,
) -> tuple[bytes, list[Any]]:
    """Pickle ``obj``; return the pickle and its out-of-band buffers.

    ``refs``: the functions of ``__main__`` that ``PickleType.auto``,
    ``cloudpickle`` or ``dill`` (as data) meets go by id to it
    (``script_refs``) rather than by value. ``guess``: the stream ``obj``
    is of, for ``PickleType.auto`` (``ScriptGuess``)."""
    buffers: list[Any] = []
    if _memmap_unknown and "numpy" in sys.modules:
        _know_memmap()
    if type(obj) in _MAY_HOLD_LARGE:  # a call less for other results
        obj = _out_of_band(obj)

    def keep_large(buf: pickle.PickleBuffer) -> bool:
        try:
            view = buf.raw()
        except BufferError:  # not contiguous: pickle it in band
            return True
        if view.nbytes < OOB_THRESHOLD:
            return True
        buffers.append(view)
        return False

    if dumper in _TAKE_REFS:  # PickleType.cloudpickle or dill, as data
        return dumper(obj, PROTOCOL, keep_large, refs), buffers
    if guess is not None and guess.by_value:  # PickleType.auto, whose stream needed it
        by_value = dumps_by_value_to_client if dumper is dumps_main_to_client else dumps_by_value
        data = by_value(obj, PROTOCOL, keep_large, refs)
        if _BY_VALUE_MARKS[0] not in data and _BY_VALUE_MARKS[1] not in data:
            guess.by_value = False
        return data, buffers
    try:
        data = dumper(obj, protocol=PROTOCOL, buffer_callback=keep_large)
    except PickleByValue:  # PickleType.auto met an object of __main__
        pass
    else:
        if len(data) >= OOB_THRESHOLD and MEMMAP_MARK in data:
            # a large numpy memmap in it, perhaps: pickle.dumps has no hook for it
            buffers.clear()
            data = _dumps_with_memmaps(obj, keep_large)
        return data, buffers
    # out of the handler: an error here is not shown as raised while handling
    # PickleByValue, which tells the user nothing
    buffers.clear()
    by_value = dumps_by_value_to_client if dumper is dumps_main_to_client else dumps_by_value
    data = by_value(obj, PROTOCOL, keep_large, refs)
    if guess is not None:
        guess.by_value = True
    return data, buffers


class _MemmapPickler(pickle.Pickler):
    """Standard pickle, with numpy's memmaps reduced by ``memmap_reduce``."""

    def reducer_override(self, obj: Any) -> Any:
        return memmap_reduce(obj, PROTOCOL)


def _dumps_with_memmaps(obj: Any, buffer_callback: Callable[..., Any]) -> bytes:
    """``pickle.dumps`` of ``obj``, but a large numpy memmap in it goes as
    the plain array of its data, out of band (``memmaps``)."""
    file = io.BytesIO()
    _MemmapPickler(file, PROTOCOL, buffer_callback=buffer_callback).dump(obj)
    return file.getvalue()


#: The dumpers of data that send the functions of ``__main__`` by id to
#: ``refs`` (their fourth argument).
_TAKE_REFS = frozenset(
    (dumps_by_value, dumps_by_value_to_client, dill_data_dumps, dill_data_dumps_to_client)
)
#: ``results_dumper``'s table
_TO_CLIENT: dict[Callable[..., bytes], Callable[..., bytes]] = {
    dumps_main_by_value: dumps_main_to_client,
    dumps_by_value: dumps_by_value_to_client,
    dill_data_dumps: dill_data_dumps_to_client,
}


def _large_bytes(obj: bytes | bytearray) -> Any:
    return _LargeBytes(obj) if len(obj) >= OOB_THRESHOLD else obj


#: The types of objects that ``_out_of_band`` takes out of the pickle when
#: they are large, each with what takes one out: ``bytes`` and ``bytearray``
#: as buffers, and numpy's ``memmap`` (once numpy is imported: see
#: ``_know_memmap``) as the plain array of its data.
_TAKE_OUT: dict[type, Callable[[Any], Any]] = {bytes: _large_bytes, bytearray: _large_bytes}
#: The types ``_out_of_band`` looks into.
_MAY_HOLD_LARGE: set[type] = {bytes, bytearray, tuple}
_memmap_unknown = True


def _know_memmap() -> None:
    """Have ``_out_of_band`` take numpy's ``memmap`` out, once numpy is
    imported (this module does not import it)."""
    global _memmap_unknown
    memmap = memmap_type()
    if memmap is not None:
        _TAKE_OUT[memmap] = plain_array
        _MAY_HOLD_LARGE.add(memmap)
        _memmap_unknown = False


def _out_of_band(obj: Any) -> Any:
    """Let large ``bytes``, ``bytearray`` and numpy ``memmap`` objects
    travel out of band.

    Pickle copies them into the pickle (only ``PickleBuffer`` objects and
    types that reduce to one, such as plain numpy arrays, go out of band),
    and its ``reducer_override`` hook is not called for the first two; pickle
    makes a ``memmap`` again as a ``memmap`` of no file. So one that is the
    object itself, or an item of an arguments tuple, is replaced: a
    ``bytes`` or ``bytearray`` by a wrapper pickled as a buffer (a copy less
    on the sending side, and still the same type on the other), a
    ``memmap`` by the plain array of its data (``memmaps``). Deeper bytes
    are pickled as usual; ``dumps`` finds a large ``memmap`` deeper down in
    the pickle, and pickles the object again.
    """
    take = _TAKE_OUT.get(type(obj))
    if take is not None:
        return take(obj)
    if type(obj) is tuple and 0 < len(obj) <= 8:
        for item in obj:
            if type(item) in _TAKE_OUT and _take_out(item) is not item:
                return tuple(_take_out(item) for item in obj)
    return obj


def _take_out(obj: Any) -> Any:
    """``obj``, or what stands for it if ``_out_of_band`` takes it out."""
    take = _TAKE_OUT.get(type(obj))
    return obj if take is None else take(obj)


def call_out_of_band(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``(args, kwargs)`` of a call, ready for ``dumps``: large ``bytes``,
    ``bytearray`` and numpy ``memmap`` arguments go out of band whether
    passed by position or by keyword (``dumps`` itself looks only one level
    down)."""
    if _memmap_unknown and "numpy" in sys.modules:
        _know_memmap()
    if len(kwargs) <= 8 and any(_take_out(value) is not value for value in kwargs.values()):
        kwargs = {k: _take_out(v) for k, v in kwargs.items()}
    return _out_of_band(args), kwargs


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


def loads_rebuilding_errors(data: Any, buffers: list[Any], loader: Callable[..., Any]) -> Any:
    """Unpickle what ``dumps`` made and ``loader`` failed to load, with each
    exception in it whose class does not take its ``args`` (its
    ``__init__`` takes other arguments, ``DiskError(code, path)`` passing
    one message to ``Exception``) made without a call of its ``__init__``
    (``errors.rebuild_without_init``), its attributes set from the pickle.

    Called only once ``loader`` has failed, so that the loads that succeed
    pay nothing: an exception pickles as its class called with its
    ``args``, which only the load finds out it does not take. Raises what
    this load fails with (an exception whose ``__new__`` does not take its
    ``args`` either, or a failure of another object)."""
    kind = DillRebuildingUnpickler if loader is dill_loads else _RebuildingUnpickler
    return kind(io.BytesIO(data), buffers=buffers or None).load()


class _RebuildingUnpickler(pickle._Unpickler):
    """Python's own unpickler, but an exception that its class does not
    make from its ``args`` is made without a call of its ``__init__``;
    ``BUILD`` then gives it its attributes as for any exception."""

    dispatch = dict(pickle._Unpickler.dispatch)
    stack: list[Any]  # pickle._Unpickler's, which typeshed does not declare

    def load_reduce(self) -> None:
        stack = self.stack
        args = stack.pop()
        make = stack[-1]
        try:
            stack[-1] = make(*args)
        except Exception:
            if not (isinstance(make, type) and issubclass(make, BaseException)):
                raise
            stack[-1] = rebuild_without_init(make, args, {})

    dispatch[pickle.REDUCE[0]] = load_reduce  # type: ignore[assignment]


class DillRebuildingUnpickler(_RebuildingUnpickler):
    """``_RebuildingUnpickler`` for a pickle of dill: it finds the names
    that ``dill.Unpickler`` maps as that one does."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "__builtin__" and name == "__main__":
            return sys.modules["__main__"].__dict__
        if module == "__builtin__" and name == "NoneType":
            return type(None)
        if module == "dill.dill":
            module = "dill._dill"
        return super().find_class(module, name)


class ItemError:
    """Stands in a chunk's list of results for an input that raised."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException):
        self.error = error

    def __reduce__(self) -> tuple[Any, ...]:
        return ItemError, (self.error,)


def _same(obj: Any) -> Any:
    return obj


def check_callable(func: Any) -> None:
    """Raise here, not in a worker, if ``func`` cannot be called."""
    if not callable(func):
        raise TypeError(
            f"{func!r} is not callable: pass the function to run first, then its arguments"
        )


class FunctionCache:
    """Client side: give each function an id and its pickle, once per pool.

    Workers are sent a function's pickle the first time they meet its id and
    refer to it by id after that. Functions are looked up by identity and
    pickled when first seen, so the same function object submitted again
    costs no pickling: its pickle is a snapshot of the state it carries (a
    callable object's attributes, a closure's cells) at its first
    submission, as in distex. A bound method ``obj.method`` is a new object
    at each access, so it is pickled again each time, with ``obj`` as it is
    then. Pickles with the same bytes (the same digest) share an id, so that
    a function sent again unchanged is neither sent to a worker nor
    unpickled there twice.

    The cache does not keep a function alive (it holds it weakly where
    Python allows), nor more than ``max_size`` functions and, but for the
    newest, ``max_bytes`` of their pickles: closures made per call, and the
    data they capture, are let go.

    With dill (the default ``func_pickle``), what standard pickle can pickle
    without referring to ``__main__`` (importable functions, methods of
    importable classes with their objects' state) is pickled by standard
    pickle, as dill would, only many times faster; the rest (lambdas,
    closures, anything of ``__main__``) by dill. cloudpickle is always used
    when chosen: it can be told to pickle importable modules by value.

    With dill, a function of the script inside the function pickled (a
    ``functools.partial``'s, a bound method's) goes by id once
    ``collector`` is set, as in task data (``script_refs``): a partial made
    anew for each call is pickled small, and the function it wraps, with
    its globals, travels to each worker once.
    """

    def __init__(self, func_pickle: int, max_size: int = 1024, max_bytes: int = 64 << 20):
        if func_pickle == PickleType.auto:
            raise ValueError("PickleType.auto is for data_pickle; functions use dill by default")
        #: try standard pickle first (see above)
        self._plain_first = pickle_type(func_pickle) == PickleType.dill
        if self._plain_first:
            # recurse: take the globals a function of __main__ uses along,
            # so it runs in a worker whose __main__ is another script; the
            # script's classes go as cloudpickle sends data (script_objects);
            # dill is imported when a function first needs it
            self._dumps: Callable[..., bytes] = dill_dumps
        else:
            self._dumps = pickle_module(func_pickle).dumps
        #: id(function) -> (reference to it, its id, its pickle), the oldest
        #: dropped first; it gets a new id if it comes back
        self._by_func = RecentFunctions(max_size, max_bytes)
        #: digest of a pickle -> its id
        self._by_digest = RecentFunctions(max_size)
        self._next_id = 1
        self._lock = threading.Lock()
        #: makes the ``RefSink`` that a function's pickle puts the functions
        #: of the script inside it in (set by the pool: ``script_refs``)
        self.collector: Callable[[], RefSink] | None = None

    def new_id(self) -> int:
        """An id no function has had in this pool (script functions that
        data refers to take theirs here too: ``script_refs``)."""
        with self._lock:
            func_id = self._next_id
            self._next_id += 1
        return func_id

    def get(self, func: Callable[..., Any]) -> tuple[int, bytes]:
        """Return ``(function id, pickled function)``."""
        func_id, pickled, _ = self.get_with_refs(func)
        return func_id, pickled

    def get_with_refs(self, func: Callable[..., Any]) -> tuple[int, bytes, tuple[Any, ...]]:
        """Return ``(function id, pickled function, its refs)``: the
        ``ScriptRef`` objects of the functions of the script inside it (a
        partial's, a bound method's), which its pickle names by id when
        ``collector`` is set and functions are pickled with dill."""
        entry = self._by_func.get(id(func))
        if entry is not None and entry[0]() is func:
            return entry[1], entry[2], entry[3]
        check_callable(func)
        target = func.func if isinstance(func, functools.partial) else func
        if not isinstance(getattr(target, "__self__", None), (types.ModuleType, type(None))):
            # a bound method: of a random generator?
            from .script_pickler import warn_of_a_generators_method

            warn_of_a_generators_method(func)
        refs = self.collector() if self.collector is not None and self._plain_first else None
        try:
            pickled = self._pickle(func, refs)
        except Exception as e:
            if hasattr(e, "add_note"):  # Python 3.11+
                name = getattr(func, "__qualname__", None) or repr(func)
                held = culprit(func, lambda value: self._pickle(value, None))
                e.add_note(
                    f"distex_zmq: while pickling the function {name} in the client"
                    f"{f': {held} does not pickle' if held else ''}; what its closure, "
                    "attributes or globals hold must pickle too (not a lock, socket, open "
                    "file or generator)"
                )
            raise
        try:
            ref: Callable[[], Any] = weakref.ref(func)
        except TypeError:  # builtins and objects without weak references
            ref = functools.partial(_same, func)
        digest = hashlib.blake2b(pickled, digest_size=16).digest()
        with self._lock:
            func_id = self._by_digest.get(digest)
            if func_id is None:
                func_id = self._next_id
                self._next_id += 1
            self._by_digest.add(digest, func_id, 0)
            taken = () if refs is None else refs.taken()
            self._by_func.add(id(func), (ref, func_id, pickled, taken), len(pickled))
        return func_id, pickled, taken

    def _pickle(self, func: Callable[..., Any], refs: RefSink | None) -> bytes:
        if self._plain_first:
            try:
                pickled = pickle.dumps(func, protocol=PROTOCOL)
            except Exception:  # noqa: BLE001 - lambdas, closures, ...: func_pickle can
                pass
            else:
                if b"__main__" not in pickled:
                    return pickled
            return dill_dumps(func, PROTOCOL, refs)
        return self._dumps(func, protocol=PROTOCOL)

    def __len__(self) -> int:
        return len(self._by_func)
