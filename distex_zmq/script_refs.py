"""Client side: functions and classes of the user's script inside task
data, sent to each worker once and referred to by id after that.

A function of ``__main__`` cannot be imported in a worker, so it travels by
value, with the globals it uses. The task's own function does so once per
worker (``FunctionCache``); one inside the task's data (a dask graph's
function, a joblib call, a ``functools.partial`` argument) or inside the
task's function (a submitted partial, a bound method) would travel with
every task, its globals with it. So the pickle refers to it by id
(``script_rebuild.script_ref``), and the task carries a ``ScriptRef`` per
such function: its id, its pickle by value, and the bytes a worker
counts for it. The broker sends a worker the pickle of an id only when
that worker does not hold it (a new worker, one that replaced a lost one,
one that dropped it among its least recently used), as it sends the task's
own function (see ``wire.frames``).

A class of the script goes so too: a map over a dataclass of the script
would carry the class, its methods' code among it, in every chunk. A worker
sends a result of a class it holds by id as the client's own class, by its
tracker id (``script_rebuild.client_class``); so the client keeps each such
class alive while it keeps its pickle, where a function is held weakly.

``ScriptRefs`` pickles each function and class once per pool, the first
time it meets it, as ``FunctionCache`` does for the task's own function:
what its globals (a class's attributes) hold then is what every worker
gets, and a change the script makes to them later is not sent. Pickles
with the same bytes share an id. It pickles them as the pool's
``data_pickle`` sends functions of the script in data: with
``script_pickler`` (cloudpickle), or with dill
(``dill_script.ScriptDataPickler``) if that is ``PickleType.dill``, which
sends globals that cloudpickle does not take (a lock); a worker loads them
with its ``loads`` for data.
"""

from __future__ import annotations

import hashlib
import threading
import types
import weakref
from collections.abc import Callable
from typing import Any

from .script_objects import dill_data_dumps, dumps_by_value
from .serialization import dumps
from .wire.frames import RecentFunctions, ScriptRef

#: Functions of the script whose pickles the client keeps, at most, and the
#: bytes of those pickles (but for the newest; buffers out of band are views
#: of the script's own objects and are not counted).
REFS_KEPT = 256
REFS_KEPT_BYTES = 256 * 1024 * 1024
#: The most bytes a ref entry can say a worker holds for a function.
MAX_HELD = 0xFFFFFFFF

#: What goes by id: a function or a class of the script.
ScriptObject = types.FunctionType | type


class ScriptRefs:
    """The pickles of the functions and classes of the script met inside
    tasks, by object (a function held weakly, a class not), each with an id
    from ``new_id``; ``by_dill``: pickled with dill
    (``data_pickle=PickleType.dill``), else cloudpickle."""

    def __init__(
        self,
        new_id: Callable[[], int],
        max_size: int = REFS_KEPT,
        max_bytes: int = REFS_KEPT_BYTES,
        by_dill: bool = False,
    ):
        self._new_id = new_id
        self._dumps: Callable[..., bytes] = dill_data_dumps if by_dill else dumps_by_value
        #: id(object) -> (a weak reference to the function or the class itself,
        #: its ScriptRef)
        self._by_func = RecentFunctions(max_size, max_bytes)
        #: digest of a pickle -> its id
        self._by_digest = RecentFunctions(max_size)
        self._lock = threading.Lock()

    def known(self, func: ScriptObject) -> ScriptRef | None:
        """The ``ScriptRef`` of ``func`` if it has one already."""
        entry = self._by_func.get(id(func))
        if entry is not None:
            held = entry[0]
            if (held if isinstance(held, type) else held()) is func:
                ref: ScriptRef = entry[1]
                return ref
        return None

    def get(self, func: ScriptObject, reduce: tuple[Any, ...]) -> ScriptRef:
        """The ``ScriptRef`` of ``func``, made if it has none; ``reduce``: its
        reduction by value (``script_pickler.function_reduce`` or
        ``class_reduce``)."""
        ref = self.known(func)
        if ref is not None:
            return ref
        data, buffers = dumps(func, self._dumps)
        digest = hashlib.blake2b(data, digest_size=16)
        for buffer in buffers:
            digest.update(buffer)
        key = digest.digest()
        if isinstance(func, type):
            size = len(data) + sum(memoryview(buffer).nbytes for buffer in buffers)
            keep: Any = func
        else:
            size = _held_bytes(reduce, self._dumps)
            keep = weakref.ref(func)
        held = min(size, MAX_HELD)
        with self._lock:
            ref_id = self._by_digest.get(key)
            if ref_id is None:
                ref_id = self._new_id()
            self._by_digest.add(key, ref_id, 0)
            ref = ScriptRef(ref_id, data, buffers, held)
            self._by_func.add(id(func), (keep, ref), len(data))
        return ref

    def __len__(self) -> int:
        return len(self._by_func)


def _held_bytes(reduce: tuple[Any, ...], dumper: Callable[..., bytes]) -> int:
    """The bytes a worker counts for a function of the script: the size of
    its pickle without the globals it brings, which join the namespace that
    the script's functions share in the worker (one value a name, held
    whether or not the function is) and so do not count. Its code, defaults
    and closure do: a closure that captured a large object is let go when
    the worker drops the function. ``dumper``: what pickles the function."""
    state, slots = reduce[2]
    data, buffers = dumps((reduce[1], state, {**slots, "__globals__": {}}), dumper)
    return len(data) + sum(memoryview(buffer).nbytes for buffer in buffers)


class RefCollector:
    """The ``ScriptRef`` objects that one task's function or data refers
    to, in the order the pickler met them (the order the worker is sent
    them in)."""

    __slots__ = ("_cache", "refs")

    def __init__(self, cache: ScriptRefs, first: tuple[ScriptRef, ...] = ()):
        self._cache = cache
        #: by id; ``first``: those of the task's own function, sent before
        self.refs: dict[int, ScriptRef] = {ref.ref_id: ref for ref in first}

    def known(self, func: ScriptObject) -> int:
        """The id that ``func`` goes by if it has one already, else 0."""
        ref = self._cache.known(func)
        if ref is None:
            return 0
        self.refs.setdefault(ref.ref_id, ref)
        return ref.ref_id

    def ref(self, func: ScriptObject, reduce: tuple[Any, ...]) -> int:
        """The id that ``func`` goes by in the task's pickle."""
        ref = self._cache.get(func, reduce)
        self.refs.setdefault(ref.ref_id, ref)
        return ref.ref_id

    def taken(self) -> tuple[ScriptRef, ...]:
        """The refs collected, for the task."""
        return tuple(self.refs.values()) if self.refs else ()
