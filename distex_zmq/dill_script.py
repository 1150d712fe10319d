"""dill's pickler for functions, with classes of the user's script sent as
cloudpickle sends them; imported when a function first needs dill (see
``script_objects.dill_dumps``), so that a program that never sends one does
not import dill.
"""

from __future__ import annotations

import functools
import importlib
import io
import pickle
import sys
import threading
import types
from collections.abc import Callable
from typing import Any

import dill
import dill.detect
from cloudpickle import cloudpickle as _cloudpickle

from . import script_rebuild
from .memmaps import memmap_reduce
from .script_pickler import (
    MADE_ANEW,
    TYPING_REDUCERS,
    ScriptPickler,
    client_function_reduce,
    function_reduce,
    reduce_class,
    warn_of_random_generators_of,
)
from .script_rebuild import (
    RefSink,
    client_class,
    is_singledispatch,
    make_cached_property,
    make_script_class,
    make_script_function,
    make_singledispatch,
    may_be_the_clients,
    script_ref,
    singledispatch_args,
)

#: The names dill gives the standard streams, which it sends as the worker's own.
_STD_STREAMS = frozenset({"<stdin>", "<stdout>", "<stderr>"})


def _check_file(obj: io.IOBase) -> None:
    """Raise if ``obj``, a file, must not go to a worker as dill sends it:
    opened there again by name, in its mode. A file opened for writing
    (``"w"``) would be emptied, by each worker, of what the client wrote to
    it; one opened to update (``"r+"``) would be written from its start.
    dill takes one opened to read or to append."""
    mode = getattr(obj, "mode", "")
    name = getattr(obj, "name", None)
    if not isinstance(mode, str) or not isinstance(name, str) or name in _STD_STREAMS:
        return
    if obj.closed or not any(c in mode for c in "wx+"):
        return
    raise pickle.PicklingError(
        f"cannot send the file {name!r}, open in mode {mode!r}, to a worker: it "
        "would be opened there again, which empties it (mode 'w') or writes over "
        "it; open the file in the task (mode 'a' appends), or return what to "
        "write and write it in the client"
    )


#: Items from which a container (a script's table of a million strings, a
#: ``partial``'s list of data) goes through the standard pickler, written
#: in C, where it can, rather than dill's own, written in Python.
LARGE_CONTAINER = 1024
_CONTAINERS = (dict, list, tuple, set, frozenset)


def _plain_pickle(obj: Any, protocol: int) -> bytes | None:
    """``obj`` pickled by the standard pickler, if it takes it and refers to
    nothing of the script (whose objects go by value, which it does not do);
    else None."""
    try:
        data = pickle.dumps(obj, protocol)
    except Exception:  # noqa: BLE001 - dill's pickler then takes it as usual
        return None
    return None if b"__main__" in data else data


def _is_plain_array(obj: Any) -> bool:
    """Whether ``obj`` is a ``numpy.ndarray`` (not of a subclass)."""
    return type(obj) is getattr(sys.modules.get("numpy"), "ndarray", None)


_dill_globalvars = dill.detect.globalvars
#: The functions whose globals ``_globalvars`` gathers now, in this thread,
#: while ``ScriptClassesPickler`` pickles (None when it does not).
_gathering = threading.local()


def _globalvars(func: Any, recurse: bool = True, builtin: bool = False) -> dict[str, Any]:
    """``dill.detect.globalvars``, which dill's ``recurse`` calls for each
    function it pickles, but that stops at a function whose globals it
    gathers already. dill's follows each function a function names, and
    the functions that one names, without end where they come round again:
    two functions that call each other, a recursive function under a
    decorator (its global is the wrapper, which holds it). The function met
    again adds nothing: what it names, its first visit gathers."""
    seen: set[int] | None = getattr(_gathering, "seen", None)
    if seen is None:  # not ours: dill's own, as it was
        return _dill_globalvars(func, recurse, builtin)
    if id(func) in seen:
        return {}
    seen.add(id(func))
    try:
        return _dill_globalvars(func, recurse, builtin)
    finally:
        seen.discard(id(func))


# dill's ``save_function`` imports it from ``dill.detect`` at each call, and
# dill's own recursion calls it there by that name
dill.detect.globalvars = _globalvars


class ScriptClassesPickler(dill.Pickler):
    """dill, but classes of ``__main__`` go as cloudpickle sends them (with
    their tracker ids); dill alone sends a new class each time, and cannot
    send a script's enum. So do a ``typing.TypeVar``, ``ParamSpec`` and
    ``TypeVarTuple`` of the script (a generic class's parameters), a
    ``NewType`` and a type alias (``type Vector = list[float]``), which dill
    sends by name, and a worker's ``__main__`` has none. Modules go by name,
    as cloudpickle sends them: dill sends a module outside the standard
    library and site-packages (one next to the script) with a copy of its
    globals, which fails on the first one that does not pickle (a lock, a
    ``threading.local``) and otherwise overwrites the worker's globals of
    that module at every task. A ``functools.singledispatch`` function of the script goes as its
    implementations (its dispatch cache holds weak references), and a
    ``functools.cached_property`` (of a class sent by value) as its function
    and name (before Python 3.12 one holds an ``RLock``). A ``threading.Lock``
    or ``RLock`` goes as a new one, unlocked, as ``threading.Lock()`` makes
    it: dill makes an unlocked ``RLock`` again held by no thread, so that its
    first ``acquire`` waits for ever, one held in the client held by a thread
    id that means nothing in another process (it fails to unpickle there),
    and a held ``Lock`` held, by no one who will release it. A
    ``random.SystemRandom``, which no pickle takes, goes as a new one. A plain numpy
    array goes as pickle sends it, its data out of band with a
    ``buffer_callback``: dill's own reduction copies it into the pickle (and
    makes it writeable again where it was read-only). A ``memmap`` goes as
    ``memmaps.memmap_reduce`` reduces it (dill fails on the ``mmap`` it holds).
    A large container that the standard pickler takes goes as its pickle
    (``LARGE_CONTAINER``), in a function.

    Given ``refs``, a function of the script inside the object pickled (a
    ``functools.partial``'s function, a bound method's) goes by id, as in
    task data (``script_refs``), and so does a class of the script (one
    that a function's globals name); the object itself goes by value.
    ``to_client`` (a worker pickling results): a class that came by id goes
    back as the client's own (``script_rebuild.client_class``)."""

    #: a large container goes as its standard pickle (``LARGE_CONTAINER``):
    #: in a function's pickle, not in data, whose list of a chunk's results
    #: the client splits to load them one by one (``chunk_load``)
    plain_containers = True

    def __init__(
        self, *args: Any, refs: RefSink | None = None, to_client: bool = False, **kwargs: Any
    ):
        super().__init__(*args, **kwargs)
        self._refs = refs
        self._to_client = to_client
        self._top: Any = None

    def dump(self, obj: Any) -> None:
        self._top = obj
        outer = getattr(_gathering, "seen", None)
        _gathering.seen = set()
        try:
            super().dump(obj)
        finally:
            _gathering.seen = outer

    def save(self, obj: Any, save_persistent_id: bool = True) -> None:
        if isinstance(obj, type) and obj.__module__ == "__main__" and id(obj) not in self.memo:
            ref_id = self._ref(obj) if self._refs is not None and obj is not self._top else 0
            if ref_id:
                self.save_reduce(script_ref, (ref_id, f"class {obj.__qualname__}"), obj=obj)
                return
            if self._to_client and obj in script_rebuild.client_classes:
                tracker_id = _cloudpickle._get_or_create_tracker_id(obj)
                self.save_reduce(client_class, (obj.__qualname__, tracker_id), obj=obj)
                return
            reduce = reduce_class(obj, self.proto)
            if reduce is not NotImplemented:
                self.save_reduce(*reduce, obj=obj)
                return
        elif is_singledispatch(obj) and id(obj) not in self.memo:
            self.save_reduce(make_singledispatch, singledispatch_args(obj), obj=obj)
            return
        elif type(obj) is functools.cached_property and id(obj) not in self.memo:
            self.save_reduce(make_cached_property, (obj.func, obj.attrname), obj=obj)
            return
        elif type(obj) in TYPING_REDUCERS and id(obj) not in self.memo:
            reduce = TYPING_REDUCERS[type(obj)](obj)
            if reduce is not NotImplemented:
                self.save_reduce(*reduce, obj=obj)
                return
        elif isinstance(obj, io.IOBase) and id(obj) not in self.memo:
            _check_file(obj)
        elif type(obj) in MADE_ANEW and id(obj) not in self.memo:
            self.save_reduce(MADE_ANEW[type(obj)], (), obj=obj)
            return
        elif type(obj).__name__ == "ndarray" and _is_plain_array(obj) and id(obj) not in self.memo:
            self.save_reduce(*obj.__reduce_ex__(self.proto), obj=obj)
            return
        elif type(obj).__name__ == "memmap" and id(obj) not in self.memo:
            reduce = memmap_reduce(obj, self.proto)
            if reduce is not NotImplemented:
                self.save_reduce(*reduce, obj=obj)
                return
        elif (
            self._refs is not None
            and type(obj) is types.FunctionType
            and obj is not self._top
            and obj.__module__ == "__main__"
            and id(obj) not in self.memo
        ):
            ref_id = self._ref(obj)
            if ref_id:
                self.save_reduce(script_ref, (ref_id, obj.__qualname__), obj=obj)
                return
        elif (
            type(obj) is types.FunctionType
            and obj.__module__ == "__main__"
            and id(obj) not in self.memo
        ):
            warn_of_random_generators_of(obj)
        elif (
            isinstance(obj, types.ModuleType)
            and obj.__name__ != "__main__"
            and sys.modules.get(obj.__name__) is obj
        ):
            self.save_reduce(importlib.import_module, (obj.__name__,), obj=obj)
            return
        elif (
            self.plain_containers
            and type(obj) in _CONTAINERS
            and len(obj) >= LARGE_CONTAINER
            and id(obj) not in self.memo
            and (plain := _plain_pickle(obj, self.proto)) is not None
        ):
            self.save_reduce(pickle.loads, (plain,), obj=obj)
            return
        super().save(obj, save_persistent_id)

    def _ref(self, func: types.FunctionType | type) -> int:
        """The id ``func`` (a function or a class) goes by; 0 if it goes by
        value here: one that cloudpickle would send by reference, or one
        that ``refs`` cannot pickle (with ``data_pickle`` other than dill it
        pickles with cloudpickle, which takes no lock among the globals)."""
        assert self._refs is not None
        ref_id = self._refs.known(func)
        if ref_id:
            return ref_id
        if isinstance(func, type):
            reduce = reduce_class(func, self.proto)
            made_by: Callable[..., Any] = make_script_class
        else:
            reduce = function_reduce(ScriptPickler(io.BytesIO(), protocol=self.proto), func)
            made_by = make_script_function
        if reduce is NotImplemented or reduce[0] is not made_by:
            return 0
        try:
            return self._refs.ref(func, reduce)
        except Exception:  # noqa: BLE001 - by value then, which raises what dill cannot take
            return 0


class ScriptDataPickler(ScriptClassesPickler):
    """``ScriptClassesPickler`` for data (with dill's settings, as
    ``dill.dumps``), whose functions of ``__main__`` go as ``script_pickler``
    sends them: in a worker they are made on the namespace that the script's
    functions share there. dill alone makes them on the worker's own
    ``__main__``, where the script's globals are not. Given ``refs``, they go
    by id, the object pickled too if it is one (``script_refs``, which
    pickles them with this class)."""

    plain_containers = False

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._script: ScriptPickler | None = None

    def save(self, obj: Any, save_persistent_id: bool = True) -> None:
        if (
            type(obj) is types.FunctionType
            and obj.__globals__.get("__name__") == "__main__"
            and id(obj) not in self.memo
            and not is_singledispatch(obj)
        ):
            if self._to_client and may_be_the_clients(obj):
                self.save_reduce(*client_function_reduce(obj, self._by_value), obj=obj)
                return
            refs = self._refs
            ref_id = 0 if refs is None else refs.known(obj)
            if not ref_id:  # not met before: reduce it
                reduce = function_reduce(self._script_pickler(), obj)
                if reduce is NotImplemented or reduce[0] is not make_script_function:
                    super().save(obj, save_persistent_id)
                    return
                if refs is None:
                    self.save_reduce(*reduce, obj=obj)
                    return
                ref_id = refs.ref(obj, reduce)
            self.save_reduce(script_ref, (ref_id, obj.__qualname__), obj=obj)
            return
        super().save(obj, save_persistent_id)

    def _by_value(self, func: types.FunctionType) -> bytes:
        """``func`` pickled by value, for the client (``client_function``)."""
        file = io.BytesIO()
        ScriptDataPickler(file, self.proto).dump(func)
        return file.getvalue()

    def _script_pickler(self) -> ScriptPickler:
        """The pickler that reduces the script's functions of this pickle
        (one, so that they share the globals they are made on in the client,
        as in one pickle of cloudpickle)."""
        if self._script is None:
            self._script = ScriptPickler(io.BytesIO(), protocol=self.proto)
        return self._script
