"""cloudpickle's pickler for objects of the user's script, with classes that
keep their ``__slots__``; imported when an object first needs it (see
``script_objects``).

cloudpickle rebuilds a class of ``__main__`` from an empty class and then
sets its attributes, ``__slots__`` among them, which makes no slots: in a
worker, the class gets a ``__dict__`` and its instances keep their fields
there, and an instance sent back does not load into the client's class,
which has slots and no ``__dict__``. ``class_reduce`` gives the class its
``__slots__`` when it is made, as the ``class`` statement does.

A function of the script is made and given its state by
``script_rebuild``' functions instead of cloudpickle's, which in a worker
make it on the namespace that the script's functions share there. A
function of the script under ``functools.lru_cache`` (or ``cache``), which
pickles by name, goes as its function and the cache's parameters; a
``functools.cached_property`` goes as its function and name; a
``functools.singledispatch`` function as its implementations. A numpy
``memmap`` goes as ``memmaps.memmap_reduce`` reduces it (a large one as
the plain array of its data, out of band).

In the data of a task, a function or a class of the script goes by
reference once the client is given a ``RefSink`` (see ``script_refs``), and
a worker sends such a class back by its tracker id.
"""

from __future__ import annotations

import functools
import io
import random
import sys
import threading
import types
import typing
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import cloudpickle
from cloudpickle import cloudpickle as _cloudpickle

from . import script_rebuild
from .memmaps import memmap_reduce
from .pickle_culprit import closure_values, used_globals
from .process_role import in_worker
from .script_rebuild import (
    RefSink,
    client_class,
    client_function,
    code_with_filename,
    is_singledispatch,
    make_cached_property,
    make_lru_cache,
    make_new_type,
    make_script_class,
    make_script_function,
    make_singledispatch,
    make_type_alias,
    make_type_param,
    may_be_the_clients,
    script_ref,
    set_script_class_state,
    set_script_function_state,
    set_type_alias_value,
    singledispatch_args,
)

_LRU_CACHE_WRAPPER = functools._lru_cache_wrapper
#: the kinds of type parameter (cloudpickle sends the last two by name only)
TYPE_PARAMS: tuple[type, ...] = tuple(
    getattr(typing, name)
    for name in ("TypeVar", "ParamSpec", "TypeVarTuple")
    if hasattr(typing, name)
)
#: the flags of a type parameter that typing's constructors take here
_TYPE_PARAM_FLAGS = ("covariant", "contravariant") + (
    ("infer_variance",) if sys.version_info >= (3, 12) else ()
)
_CODE_REDUCE = cloudpickle.Pickler.dispatch_table[types.CodeType]

#: The type of each object of the script that goes to a worker as a new one
#: -> what makes one: locks, and ``random.SystemRandom``, which has no state
#: (and so does not pickle).
MADE_ANEW: dict[type, Any] = {
    type(threading.Lock()): threading.Lock,
    type(threading.RLock()): threading.RLock,
    random.SystemRandom: random.SystemRandom,
}


class _MadeAnew:
    """Pickled as a new object of its kind: in place of a lock (unlocked) or
    a ``SystemRandom`` that a class of the script or a function's globals
    hold (``_made_anew``)."""

    __slots__ = ("make",)

    def __init__(self, make: Any):
        self.make = make

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return self.make, ()


def _made_anew(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` (a class's attributes, a function's globals) with each lock
    and ``SystemRandom`` as a new one, as the script's ``import`` in a worker
    of ``ProcessPoolExecutor`` under spawn makes it: no pickle takes them,
    and they have no state worth sending to another process."""
    if not any(type(v) in MADE_ANEW for v in values.values()):
        return values
    return {
        k: _MadeAnew(MADE_ANEW[type(v)]) if type(v) in MADE_ANEW else v for k, v in values.items()
    }


def class_reduce(pickler: cloudpickle.Pickler, obj: type) -> Any:
    """cloudpickle's reduction of ``obj``, a class of the script, made with
    its ``__slots__`` by ``make_script_class`` and given its attributes by
    ``set_script_class_state`` (not the client's own class); ``NotImplemented``
    if cloudpickle sends it by reference."""
    reduce = cloudpickle.Pickler.reducer_override(pickler, obj)
    if (
        reduce is not NotImplemented
        and "__slots__" in vars(obj)
        and reduce[0] is _cloudpickle._make_skeleton_class
        # a typing.NamedTuple is made again from that base, which gives it its
        # slots and refuses a __slots__ of the class's own
        and typing.NamedTuple not in getattr(obj, "__orig_bases__", ())
    ):
        args = list(reduce[1])
        args[3] = {**args[3], "__slots__": vars(obj)["__slots__"]}  # type_kwargs
        reduce = (reduce[0], tuple(args), *reduce[2:])
    if reduce is not NotImplemented and reduce[0] is _cloudpickle._make_skeleton_enum:
        reduce = _enum_reduce(obj, reduce)
    if (
        reduce is not NotImplemented
        and len(reduce) == 6
        and reduce[5] is _cloudpickle._class_setstate
        and reduce[0] in (_cloudpickle._make_skeleton_class, _cloudpickle._make_skeleton_enum)
    ):
        clsdict, *rest = reduce[2]
        reduce = (
            make_script_class,
            (reduce[0], reduce[1]),
            (_made_anew(clsdict), *rest),
            None,
            None,
            set_script_class_state,
        )
    return reduce


#: The attributes every enum member has of its own (the others, an enum's
#: ``__init__`` or ``__new__`` set: ``Planet.EARTH.mass``).
_ENUM_MEMBER_KEYS = frozenset({"_value_", "_name_", "__objclass__", "_sort_order_"})


def _enum_reduce(obj: Any, reduce: Any) -> Any:
    """cloudpickle's reduction of ``obj``, an enum of the script, with what
    cloudpickle drops:

    - every member: its aliases, and a ``Flag``'s members that are not a
      single bit (``NONE = 0``, ``RWX = 7``), which iterating a ``Flag``
      skips since Python 3.11 (an ``IntFlag`` of such members only made an
      enum with none, which did not load);
    - each member's attributes, which its ``__init__`` or ``__new__`` set:
      the skeleton enum is made before its methods, so they never run there.
    """
    members = obj.__members__
    args = list(reduce[1])
    args[3] = {name: member.value for name, member in members.items()}  # the members
    clsdict, slotstate = reduce[2]
    clsdict = {k: v for k, v in clsdict.items() if k not in members}
    attrs = {}
    for name, member in members.items():
        own = {k: v for k, v in vars(member).items() if k not in _ENUM_MEMBER_KEYS}
        if own and member.name == name:  # an alias has its member's
            attrs[name] = own
    state = (clsdict, slotstate, attrs) if attrs else (clsdict, slotstate)
    return (reduce[0], tuple(args), state, *reduce[3:])


def _found_by_name(obj: Any, name: str) -> bool:
    """Whether a pickle sends ``obj`` by ``name``, under which its module
    has it, and a worker finds it: not in ``__main__``, nor in a module
    registered with cloudpickle's ``register_pickle_by_value``."""
    found = _cloudpickle._lookup_module_and_qualname(obj, name=name)
    return found is not None and not _cloudpickle._is_registered_pickle_by_value(found[0])


def type_param_reduce(obj: Any) -> Any:
    """The reduction of ``obj``, a ``typing.TypeVar``, ``ParamSpec`` or
    ``TypeVarTuple``, by value if it cannot be found by name (the script's,
    or one made so in a worker) or its module goes by value, as cloudpickle
    sends a ``TypeVar``: a generic class of the script over it has it among
    its parameters. ``NotImplemented`` if it goes by name.

    It keeps what cloudpickle's ``TypeVar`` drops: a default (Python 3.13:
    ``class Pair[A, B = int]``, whose ``Pair[str]`` fails without it) and
    ``infer_variance`` (3.12)."""
    if _found_by_name(obj, obj.__name__):
        return NotImplemented
    kwargs: dict[str, Any] = {}
    if getattr(obj, "__bound__", None) is not None:
        kwargs["bound"] = obj.__bound__
    for flag in _TYPE_PARAM_FLAGS:
        if getattr(obj, f"__{flag}__", False):
            kwargs[flag] = True
    # typing_extensions gives a type parameter a default before Python 3.13,
    # whose typing cannot make one with it
    if sys.version_info >= (3, 13) and obj.has_default():
        kwargs["default"] = obj.__default__
    constraints = getattr(obj, "__constraints__", ())
    tracker_id = _cloudpickle._get_or_create_tracker_id(obj)
    return make_type_param, (type(obj), obj.__name__, kwargs, tracker_id, constraints)


def new_type_reduce(obj: Any) -> Any:
    """The reduction of ``obj``, a ``typing.NewType`` (``UserId =
    NewType("UserId", int)``), by value if it cannot be found by name (the
    script's), as a type parameter goes: pickle sends one by name, and a
    worker's ``__main__`` has none (cloudpickle's issue 520), so a function
    of the script that names it, if only in its annotations, would not load
    there. ``NotImplemented`` if it goes by name."""
    if _found_by_name(obj, obj.__qualname__):
        return NotImplemented
    tracker_id = _cloudpickle._get_or_create_tracker_id(obj)
    return make_new_type, (
        obj.__name__,
        obj.__qualname__,
        obj.__module__,
        obj.__supertype__,
        tracker_id,
    )


def type_alias_reduce(obj: Any) -> Any:
    """The reduction of ``obj``, a type alias of the ``type`` statement
    (Python 3.12: ``type Vector = list[float]``), by value if it cannot be
    found by name (the script's), as ``new_type_reduce`` says; its value as
    the state, so that an alias that names itself loads. ``NotImplemented``
    if it goes by name, or if its value cannot be read (a name not defined
    yet) or its names are not identifiers (one made by calling
    ``TypeAliasType``)."""
    if _found_by_name(obj, obj.__name__):
        return NotImplemented
    params = obj.__type_params__
    if not all(name.isidentifier() for name in (obj.__name__, *(p.__name__ for p in params))):
        return NotImplemented
    try:
        value = obj.__value__
    except Exception:  # noqa: BLE001 - then by name, which fails in the worker as pickle does
        return NotImplemented
    return (
        make_type_alias,
        (obj.__name__, obj.__module__, params),
        value,
        None,
        None,
        set_type_alias_value,
    )


#: The reducers of the kinds of ``typing`` object that a script makes and
#: pickle sends by name: each goes by value if it cannot be found by name,
#: else as pickle sends it.
TYPING_REDUCERS: dict[type, Callable[[Any], Any]] = {
    **{kind: type_param_reduce for kind in TYPE_PARAMS},
    typing.NewType: new_type_reduce,
}
if sys.version_info >= (3, 12):
    TYPING_REDUCERS[typing.TypeAliasType] = type_alias_reduce


#: The names of the script's random generators warned of (once each).
_generators_warned: set[str | tuple[str, int]] = set()


def _is_random_generator(value: Any) -> bool:
    """Whether ``value`` is a random generator with a state of its own: a
    ``random.Random`` (not a ``SystemRandom``, which has none), a numpy
    ``Generator``, ``RandomState`` or bit generator (not a ``SeedSequence``,
    which makes seeds)."""
    if isinstance(value, random.Random):
        return not isinstance(value, random.SystemRandom)
    kind = type(value)
    return kind.__module__.startswith("numpy.random") and kind.__name__ != "SeedSequence"


def warn_of_random_generators(func: types.FunctionType, names: Mapping[str, Any]) -> None:
    """Warn, once per name, of a random generator among what ``func``, a
    function of the script sent by value, uses: ``names`` (the globals it
    uses) and its closure. Each worker gets a copy of its state, so the
    workers draw the same numbers, which the script then draws too, where
    the workers of ``ProcessPoolExecutor`` under spawn make one each, from
    fresh entropy, as they import the script."""
    if in_worker():
        return
    found = {**names, **closure_values(func)}
    for name, value in sorted(found.items()):
        if name in _generators_warned or not _is_random_generator(value):
            continue
        _generators_warned.add(name)
        warnings.warn_explicit(
            f"{func.__qualname__} uses {name}, a random generator of the script "
            f"{_copied_generator(value)}",
            RuntimeWarning,
            func.__code__.co_filename,
            func.__code__.co_firstlineno,
            module="__main__",
        )


def _copied_generator(generator: Any) -> str:
    """What befalls ``generator`` sent to workers, and what to do instead."""
    kind = type(generator)
    module = "numpy.random" if kind.__module__.startswith("numpy.random") else kind.__module__
    return (
        f"({module}.{kind.__qualname__}): each worker gets a copy of its "
        "state, so the workers draw the same numbers (and the script after them); "
        "make the generator in the task, or give each task a seed of its own "
        "(numpy.random.SeedSequence(seed).spawn(n), random.Random(seed))"
    )


def warn_of_a_generators_method(func: Any) -> None:
    """Warn, once per method, if ``func``, a task's function (or a
    ``partial``'s), is a method of a random generator: ``rng.normal``, or
    ``random.gauss`` (a method of the ``random`` module's own generator).
    Its pickle holds the generator, as a global of a function does (see
    ``warn_of_random_generators``)."""
    if isinstance(func, functools.partial):
        func = func.func
    generator = getattr(func, "__self__", None)
    if generator is None or in_worker() or not _is_random_generator(generator):
        return
    owner = "random" if generator is getattr(random, "_inst", None) else type(generator).__name__
    name = f"{owner}.{getattr(func, '__name__', '?')}"
    if (name, id(generator)) in _generators_warned:
        return
    _generators_warned.add((name, id(generator)))
    warnings.warn(
        f"the task's function {name} is a method of a random generator of the "
        f"script {_copied_generator(generator)}",
        RuntimeWarning,
        stacklevel=_outside_this_package(),
    )


def _outside_this_package() -> int:
    """The ``stacklevel`` of the first caller outside distex_zmq (for a
    warning that points at the user's line)."""
    package = __name__.rpartition(".")[0] + "."
    frame: types.FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def warn_of_random_generators_of(func: types.FunctionType) -> None:
    """``warn_of_random_generators`` for a function whose globals are not
    gathered yet (dill's)."""
    warn_of_random_generators(func, used_globals(func))


def function_reduce(pickler: cloudpickle.Pickler, obj: types.FunctionType) -> Any:
    """cloudpickle's reduction of ``obj``, a function sent by value, made by
    ``make_script_function`` if it is one of the script."""
    reduce = cloudpickle.Pickler.reducer_override(pickler, obj)
    if (
        reduce is not NotImplemented
        and len(reduce) == 6
        and reduce[5] is _cloudpickle._function_setstate
        and reduce[1][1].get("__name__") == "__main__"  # the globals it is made on
    ):
        attributes, slots = reduce[2]
        warn_of_random_generators(obj, slots["__globals__"])
        state = (attributes, {**slots, "__globals__": _made_anew(slots["__globals__"])})
        reduce = (make_script_function, reduce[1], state, None, None, set_script_function_state)
    return reduce


def code_reduce(obj: types.CodeType) -> Any:
    """cloudpickle's reduction of a code object, which keeps the name of its
    file: cloudpickle names it ``<dynamic-code>``, and a traceback of a
    worker then shows neither the script's file nor its lines."""
    make, args = _CODE_REDUCE(obj)
    return code_with_filename, (make, args, obj.co_filename)


#: The formats that ``memoryview.cast`` makes: one native item each.
_CASTABLE = frozenset("cbBhHiIlLqQnNfd?P")


def memoryview_reduce(view: memoryview) -> tuple[Any, tuple[Any, ...]]:
    """A memoryview goes as a copy of its bytes, and comes as a read-only
    memoryview of them with its format and shape, where cloudpickle's
    reducer makes it ``bytes`` (a view of int32 items would arrive as four
    bytes an item); a view whose format ``memoryview.cast`` does not make (a
    struct, a big-endian item, numpy's float16) or with no items comes as
    bytes."""
    data = view.tobytes()
    fmt = view.format[1:] if view.format.startswith("@") else view.format
    if fmt in _CASTABLE and data:
        return _memoryview_of, (data, fmt, view.shape)
    return bytes, (data,)


def _memoryview_of(data: bytes, fmt: Any, shape: tuple[int, ...]) -> memoryview:
    return memoryview(data).cast(fmt, shape)


#: The reducers that ``ScriptPickler`` applies before copyreg's: cloudpickle's,
#: and its own; but for cloudpickle's of a text file open for reading, which
#: sends a copy of what is left to read as an ``io.StringIO``: a file does
#: not pickle, as with pickle and ``ProcessPoolExecutor`` (standard pickle
#: fails on it, which sends it here by value).
_REDUCERS = {
    **{k: v for k, v in cloudpickle.Pickler._dispatch_table.items() if k is not io.TextIOWrapper},
    types.CodeType: code_reduce,
    memoryview: memoryview_reduce,
}


#: The types whose objects ``ScriptPickler.reducer_override`` leaves to the
#: pickler, found so by any pickler: whether it does depends on the type
#: alone, and each task's arguments are a pickle of their own. Held strongly,
#: so cleared beyond ``_MAX_PLAIN_TYPES`` (classes made per call would stay
#: alive in it otherwise).
_plain_types: set[type] = set()
_MAX_PLAIN_TYPES = 4096


#: The functions and classes that cloudpickle sends by name (found as an
#: attribute of their module, which is not registered by value), by id:
#: ``reducer_override`` leaves them to the pickler at once, without
#: cloudpickle's look-up, while their module's attribute of that name is
#: still the object (a name rebound since sends the object as cloudpickle
#: finds then). Most pickles name some: pickle's ``copyreg.__newobj__``,
#: which ``object.__reduce_ex__`` names for most objects, cloudpickle's and
#: ``script_rebuild``'s functions; a task of dask or joblib a few functions
#: and classes of the library in each pickle of its data. Held strongly, with
#: their module's namespace and name; cleared beyond ``_MAX_BY_NAME`` and
#: when the modules registered with cloudpickle's
#: ``register_pickle_by_value`` change.
_by_name: dict[int, tuple[Any, dict[str, Any], str]] = {}
_MAX_BY_NAME = 4096
#: the modules registered by value when ``_by_name`` was last checked
_by_name_registered: set[str] = set()


def _check_by_name() -> None:
    """Clear ``_by_name`` if the modules registered by value changed."""
    global _by_name_registered
    registered = _cloudpickle._PICKLE_BY_VALUE_MODULES
    if registered != _by_name_registered:
        _by_name.clear()
        _by_name_registered = set(registered)


def _goes_by_name(obj: Any) -> bool:
    """Whether ``obj`` (a function or a class) is in ``_by_name``, still
    the attribute of its module under its name."""
    found = _by_name.get(id(obj))
    return found is not None and found[0] is obj and found[1].get(found[2]) is obj


def _remember_by_name(obj: Any) -> None:
    """Put ``obj``, a function or a class that cloudpickle sends by name,
    in ``_by_name`` if it is a top-level attribute of its module."""
    name = getattr(obj, "__qualname__", None)
    module = sys.modules.get(getattr(obj, "__module__", None))  # type: ignore[arg-type]
    if not isinstance(name, str) or "." in name or module is None:
        return
    namespace = getattr(module, "__dict__", None)
    if not isinstance(namespace, dict) or namespace.get(name) is not obj:
        return
    if len(_by_name) >= _MAX_BY_NAME:
        _by_name.clear()
    _by_name[id(obj)] = (obj, namespace, name)


class ScriptPickler(cloudpickle.Pickler):
    """cloudpickle, with classes made with their ``__slots__`` and functions
    of the script made on a worker's namespace.

    Given ``refs`` (the client pickling a task's data), a function or a
    class of the script goes as its id instead, ``script_ref(id)``, and
    ``refs`` keeps what the worker needs to make it (``script_refs``).
    ``to_client`` (a worker pickling results): a class that came by id goes
    back as the client's own, ``client_class(name, tracker id)``.

    Many objects of a few types (a list of a script's dataclass) cost
    little each: ``reducer_override``, called for every object but a few
    builtin ones, returns at once for a type it has found to need none of
    its reductions (``_plain_types``), and the C pickler looks each type up
    in ``copyreg.dispatch_table`` as it does for a pickler without a
    ``dispatch_table`` (a lookup that misses raises no ``KeyError``), not in
    cloudpickle's ``ChainMap``, whose lookup is Python code that raises
    ``KeyError`` at each of its maps. ``reducer_override`` applies the
    reducers of ``_REDUCERS`` itself, before copyreg's, as the ``ChainMap``
    does; copyreg's table is the live one, so that a reducer registered
    with ``copyreg.pickle`` at any time applies, and a pickler costs no
    copy of either table when it is made."""

    @property
    def dispatch_table(self) -> Mapping[type, Any]:
        """Missing: the C pickler, which reads this attribute when it is
        made, then takes ``copyreg.dispatch_table`` (see above); cloudpickle's
        class has one."""
        raise AttributeError("dispatch_table")

    def __init__(
        self, *args: Any, refs: RefSink | None = None, to_client: bool = False, **kwargs: Any
    ):
        super().__init__(*args, **kwargs)
        self._refs = refs
        self._to_client = to_client
        _check_by_name()

    def _by_value(self, func: types.FunctionType) -> bytes:
        """``func`` pickled by value, for the client (``client_function``)."""
        file = io.BytesIO()
        # (its functions by value too: a function in several of these
        # copies, each of its own, would go once per path that reaches it)
        ScriptPickler(file, protocol=self.proto).dump(func)
        return file.getvalue()

    def reducer_override(self, obj: Any) -> Any:
        kind = type(obj)
        if kind in _plain_types:
            return NotImplemented
        if isinstance(obj, type):
            if _goes_by_name(obj):
                return NotImplemented
            refs = self._refs
            if refs is not None:
                ref_id = refs.known(obj)
                if ref_id:  # met before: no need to reduce it again
                    return script_ref, (ref_id, f"class {obj.__qualname__}")
            elif self._to_client and obj in script_rebuild.client_classes:
                return client_class, (obj.__qualname__, _cloudpickle._get_or_create_tracker_id(obj))
            reduce = class_reduce(self, obj)
            if reduce is NotImplemented:
                _remember_by_name(obj)
            elif refs is not None and reduce[0] is make_script_class:
                return script_ref, (refs.ref(obj, reduce), f"class {obj.__qualname__}")
            return reduce
        if kind is types.FunctionType:
            if _goes_by_name(obj):
                return NotImplemented
            if is_singledispatch(obj):
                return make_singledispatch, singledispatch_args(obj)
            if self._to_client and may_be_the_clients(obj):
                return client_function_reduce(obj, self._by_value)
            refs = self._refs
            if refs is not None:
                ref_id = refs.known(obj)
                if ref_id:  # met before: no need to reduce it again
                    return script_ref, (ref_id, obj.__qualname__)
            reduce = function_reduce(self, obj)
            if reduce is NotImplemented:
                _remember_by_name(obj)
            elif refs is not None and reduce[0] is make_script_function:
                return script_ref, (refs.ref(obj, reduce), obj.__qualname__)
            return reduce
        if kind is _LRU_CACHE_WRAPPER and getattr(obj, "__module__", None) == "__main__":
            cache = obj.cache_parameters()
            return make_lru_cache, (obj.__wrapped__, cache["maxsize"], cache["typed"])
        if kind is functools.cached_property:
            return make_cached_property, (obj.func, obj.attrname)
        typing_reduce = TYPING_REDUCERS.get(kind)
        if typing_reduce is not None:
            reduce = typing_reduce(obj)
            if reduce is not NotImplemented:
                return reduce
        reduce = memmap_reduce(obj, self.proto)
        if reduce is not NotImplemented:
            return reduce
        # cloudpickle's reduces only classes and functions; what came this
        # far goes by the reducer of its type in _REDUCERS, else is left to
        # the pickler for its type, but for an lru_cache wrapper and the
        # typing objects of TYPING_REDUCERS, left so for where they are found
        reduce = super().reducer_override(obj)
        if reduce is NotImplemented:
            reducer = _REDUCERS.get(kind)
            if reducer is not None:
                return reducer(obj)
            if kind is not _LRU_CACHE_WRAPPER and kind not in TYPING_REDUCERS:
                if len(_plain_types) >= _MAX_PLAIN_TYPES:
                    _plain_types.clear()
                _plain_types.add(kind)
        return reduce


def client_function_reduce(
    func: types.FunctionType, by_value: Callable[[types.FunctionType], bytes]
) -> Any:
    """How a worker sends ``func``, a function of the script, in a result:
    as the client's own of its name, if the client has it
    (``client_function``), else as the copy that ``by_value`` pickles."""
    code = func.__code__
    return client_function, (
        func.__qualname__,
        code.co_filename,
        code.co_firstlineno,
        by_value(func),
    )


def reduce_class(obj: type, protocol: int) -> Any:
    """``class_reduce`` for a pickler other than cloudpickle's (dill's)."""
    return class_reduce(ScriptPickler(io.BytesIO(), protocol=protocol), obj)
