"""Objects of the user's script made again where they are unpickled: the
functions that ``script_pickler`` names in its pickles instead of
cloudpickle's own.

A function of the script inside data (a dask graph, a joblib batch) is made
by ``make_script_function``: in a worker, on the namespace that the script's
functions share there (``worker.script_globals`` registers it as
``script_namespace``), so that it sees what the initializer, ``run_on_all``
or a task set, as the functions that the pool runs do. In the client it
keeps globals of its own, as cloudpickle makes it.

A class of the script is made by ``make_script_class`` and given its
attributes by ``set_script_class_state`` only where a pickle made it: a
class that the process has of its own (the script's class in the client,
which a result of that class names by its tracker id) stays as the script
made it. cloudpickle alone sets the worker's attributes on it, methods
included, whose globals are then a copy of the script's.

A cached function (``functools.lru_cache``, ``cache``) and a
``functools.cached_property`` of the script are made again from their
function.

So is a ``functools.singledispatch`` function, from its implementations
(``dill_script`` sends it so too).

A function or a class of the script that the client sends by reference
(``script_refs``) is the call ``script_ref(id)`` in the task's pickle: the
worker looks it up among the objects it holds by id (``held_objects``),
made once from the pickle that came with the id's first trip there. A
result of such a class is ``client_class(name, tracker id)`` in the
worker's pickle: the client's class under that id. A function of the script
in a result is ``client_function(name, ...)``: the client's own of that name.

It imports no module of the package, and cloudpickle only when a pickle
that needs it is loaded.
"""

from __future__ import annotations

import builtins
import functools
import types
import weakref
from collections.abc import Callable, Mapping
from typing import Any, Protocol


class SharedNamespace(Protocol):
    """The globals that the script's functions share in a worker."""

    globals: dict[str, Any]

    def bring(self, values: dict[str, Any]) -> None:
        """Take the globals a function brings, but for those a task assigned."""

    def offer(self, name: str, value: Any) -> None:
        """Take ``value`` (a class or a function of the script that a pickle
        made) as the global ``name`` if there is none of that name, or if
        ``value`` wraps it (``functools.wraps``)."""


class RefSink(Protocol):
    """Where a pickler of task data puts a function or a class of the
    script that goes by reference (``script_refs.RefCollector``)."""

    def known(self, func: Any) -> int:
        """The id ``func`` (a function or a class) goes by if it went by one
        before, else 0."""

    def ref(self, func: Any, reduce: tuple[Any, ...]) -> int:
        """The id ``func`` goes by; ``reduce``: its reduction by value."""

    def taken(self) -> tuple[Any, ...]:
        """What the functions that went by id need in a worker (``ScriptRef``)."""


#: a worker's lookup of the objects it holds by id (set by the worker); None
#: in the client, which loads no pickle that refers to one
held_objects: Callable[[int, str], Any] | None = None

#: the classes of the script that a worker holds by id: its results send
#: them back by their tracker id (``client_class``)
client_classes: weakref.WeakSet[type] = weakref.WeakSet()


def script_ref(ref_id: int, name: str = "?") -> Any:
    """The function or class of the script that a task's pickle refers to
    by id (``name``, its qualified name, "class Job" for a class, for
    errors), as this worker made it
    when the id first came (see ``wire.frames``)."""
    lookup = held_objects
    if lookup is None:
        raise RuntimeError(
            f"a pickle refers to {name} of the script by id, which only a "
            "worker of distex_zmq can load"
        )
    return lookup(ref_id, name)


#: cloudpickle's classes by tracker id (a weak-valued mapping), once a
#: result first names one (``client_class``)
_tracked_classes: Mapping[str, type] | None = None


def _cloudpickle_tracked_classes() -> Mapping[str, type]:
    """cloudpickle's classes by tracker id, importing cloudpickle."""
    global _tracked_classes
    from cloudpickle import cloudpickle

    _tracked_classes = cloudpickle._DYNAMIC_CLASS_TRACKER_BY_ID
    return _tracked_classes


def client_class(name: str, tracker_id: str) -> type:
    """The class of the script ``name`` that a worker's result names by its
    tracker id: the client's own, which it sent that worker by id."""
    classes = _tracked_classes
    if classes is None:
        classes = _cloudpickle_tracked_classes()
    cls = classes.get(tracker_id)
    if cls is None:
        raise RuntimeError(
            f"a result is of the class {name} of the script, which this process no longer "
            "has: it was deleted (or defined again) while tasks that had it ran; keep the "
            "class (or an object of it) until its tasks are done"
        )
    return cls


def client_function(name: str, filename: str, line: int, by_value: bytes) -> Any:
    """The function of the script ``name`` that a worker's result holds: the
    client's own (as a worker of ``ProcessPoolExecutor`` sends it back, by
    name), so that it is the script's function (a key of its dicts, one that
    ``pickle`` takes) and sees the script's globals as they are now. Unless
    the script has no such function there, defined at ``line`` of
    ``filename``, as the worker's is: then (a function its decorator hides,
    one that the script defined again since, or one that a task made) the
    copy ``by_value`` pickles, as the worker has it."""
    import pickle
    import sys

    found: Any = sys.modules.get("__main__")
    for part in name.split("."):
        found = getattr(found, part, None)
    code = getattr(found, "__code__", None)
    if (
        type(found) is types.FunctionType
        and found.__qualname__ == name
        and isinstance(code, types.CodeType)
        and (code.co_filename, code.co_firstlineno) == (filename, line)
    ):
        return found
    return pickle.loads(by_value)


def may_be_the_clients(func: types.FunctionType) -> bool:
    """Whether ``func``, a function a worker's result holds, may be one of
    the client's script under its name (see ``client_function``)."""
    name = func.__qualname__
    return (
        func.__module__ == "__main__"
        and func.__globals__.get("__name__") == "__main__"
        and "<" not in name  # not "<lambda>", nor one of "f.<locals>"
    )


#: a worker's namespace for the functions of the script (set by the worker);
#: None in the client, where those functions keep globals of their own
script_namespace: SharedNamespace | None = None


def make_script_function(
    code: types.CodeType,
    base_globals: dict[str, Any],
    name: str | None,
    argdefs: tuple[Any, ...] | None,
    closure: tuple[Any, ...] | None,
) -> types.FunctionType:
    """cloudpickle's ``_make_function`` for a function of the script: made
    on the worker's ``script_namespace`` if there is one, else on the
    globals of its own that its pickle brings."""
    namespace = script_namespace
    if namespace is not None:
        base_globals = namespace.globals
    else:
        base_globals["__builtins__"] = builtins
    return types.FunctionType(code, base_globals, name, argdefs, closure)


#: the classes that a pickle made in this process (see ``make_script_class``)
_made_classes: weakref.WeakSet[type] = weakref.WeakSet()


def make_script_class(make: Callable[..., type], args: tuple[Any, ...]) -> type:
    """cloudpickle's ``make(*args)`` (``_make_skeleton_class`` or
    ``_make_skeleton_enum``, whose second last argument is the class's
    tracker id): the class this process has under that id, else a new one,
    which ``set_script_class_state`` fills."""
    from cloudpickle import cloudpickle

    known = cloudpickle._DYNAMIC_CLASS_TRACKER_BY_ID.get(args[-2])
    cls = make(*args)
    if cls is not known:
        _made_classes.add(cls)
        namespace = script_namespace
        name = cls.__qualname__
        if namespace is not None and name.isidentifier():
            # found by name in the worker's __main__, as in a worker of
            # ProcessPoolExecutor: a task that pickles an object of it
            # (pickle.dump to a cache, joblib.dump, a queue) pickles it so
            namespace.offer(name, cls)
    return cls


def set_script_class_state(cls: type, state: Any) -> None:
    """cloudpickle's ``_class_setstate`` for a class that a pickle made in
    this process; a class of the process's own (the script's, in the
    client) keeps its attributes and methods. An enum's state may carry a
    third item: its members' attributes (``script_pickler._enum_reduce``)."""
    if cls in _made_classes:
        from cloudpickle import cloudpickle

        cloudpickle._class_setstate(cls, state[:2])
        if len(state) > 2:
            members = cls.__members__  # type: ignore[attr-defined]
            for name, attrs in state[2].items():
                vars(members[name]).update(attrs)


def make_type_param(
    kind: Callable[..., Any],
    name: str,
    kwargs: dict[str, Any],
    tracker_id: str,
    constraints: tuple[Any, ...] = (),
) -> Any:
    """A ``typing.TypeVar`` (with its ``constraints``), ``ParamSpec`` or
    ``TypeVarTuple`` of the script (``kind``), as cloudpickle makes a
    ``TypeVar``: the one this process has under ``tracker_id`` if any, so
    that it is the same object in each pickle."""
    from cloudpickle import cloudpickle

    return cloudpickle._lookup_class_or_track(tracker_id, kind(name, *constraints, **kwargs))


def make_new_type(name: str, qualname: str, module: str, supertype: Any, tracker_id: str) -> Any:
    """A ``typing.NewType`` of the script, the one this process has under
    ``tracker_id`` if any (the client's own, in a result), as
    ``make_type_param`` makes a type parameter."""
    import typing

    from cloudpickle import cloudpickle

    new_type = typing.NewType(name, supertype)  # type: ignore[misc]
    new_type.__qualname__ = qualname
    new_type.__module__ = module
    return cloudpickle._lookup_class_or_track(tracker_id, new_type)


#: The values of the type aliases that ``make_type_alias`` made, by the
#: alias's id, until ``set_type_alias_value`` gives them (within one load).
_alias_values: dict[int, list[Any]] = {}


def make_type_alias(name: str, module: str, type_params: tuple[Any, ...]) -> Any:
    """A type alias of the script (``type Vector = list[float]``, Python
    3.12) whose value ``set_type_alias_value`` gives once the pickle has
    made what it holds, which may be the alias itself (``type Tree = int |
    list[Tree]``). Its value is read when first asked for, as that of a
    ``type`` statement: the alias is made by one. Its parameters are new
    ones of the same names, bounds, constraints and defaults as
    ``type_params``, which its value holds. In the client, a result's alias
    is the script's own of that name."""
    if held_objects is None:  # the client
        import sys

        own: Any = getattr(sys.modules.get(module), name, None)
        if type(own).__name__ == "TypeAliasType" and own.__name__ == name:
            return own
    value: list[Any] = []
    namespace: dict[str, Any] = {"__name__": module, "__dzq_value__": value}
    params = []
    for i, param in enumerate(type_params):
        kind = type(param).__name__
        text = {"TypeVarTuple": "*", "ParamSpec": "**"}.get(kind, "") + param.__name__
        if getattr(param, "__bound__", None) is not None:
            namespace[f"__dzq_bound{i}__"] = param.__bound__
            text += f": __dzq_bound{i}__"
        elif getattr(param, "__constraints__", ()):
            names = []
            for j, constraint in enumerate(param.__constraints__):
                namespace[f"__dzq_constraint{i}_{j}__"] = constraint
                names.append(f"__dzq_constraint{i}_{j}__")
            text += f": ({', '.join(names)})"
        if getattr(param, "has_default", lambda: False)():  # Python 3.13
            namespace[f"__dzq_default{i}__"] = param.__default__
            text += f" = __dzq_default{i}__"
        params.append(text)
    brackets = f"[{', '.join(params)}]" if params else ""
    source = f"type {name}{brackets} = __dzq_value__[0]"
    exec(compile(source, f"<type alias {name}>", "exec"), namespace)
    alias = namespace[name]
    _alias_values[id(alias)] = value
    return alias


def set_type_alias_value(alias: Any, value: Any) -> None:
    """Give ``alias``, made by ``make_type_alias``, its value."""
    made = _alias_values.pop(id(alias), None)
    if made is not None:
        made.append(value)


def code_with_filename(
    make: Callable[..., types.CodeType], args: tuple[Any, ...], filename: str
) -> types.CodeType:
    """A code object made by cloudpickle's reduction (``make(*args)``),
    with the name of the file it was compiled from (``script_pickler``)."""
    return make(*args).replace(co_filename=filename)


def set_script_function_state(func: types.FunctionType, state: Any) -> None:
    """cloudpickle's ``_function_setstate`` for a function made by
    ``make_script_function``: the globals it brings join the worker's
    namespace as a function that the pool runs brings them."""
    from cloudpickle import cloudpickle

    namespace = script_namespace
    if namespace is None or func.__globals__ is not namespace.globals:
        cloudpickle._function_setstate(func, state)
        return
    attributes, slots = state
    values = slots["__globals__"]
    cloudpickle._function_setstate(func, (attributes, {**slots, "__globals__": {}}))
    namespace.bring(values)
    name = func.__qualname__
    if name.isidentifier():
        # found by name in the worker's __main__, as a class is (see
        # ``make_script_class``): a task that pickles an object that holds
        # it (a model with the script's function, to joblib.dump) pickles
        # it so
        namespace.offer(name, func)


def make_lru_cache(func: Any, maxsize: int | None, typed: bool) -> Any:
    """``functools.lru_cache(maxsize, typed)(func)``: a cached function of
    the script, which standard pickle sends by name only; its cache stays
    behind."""
    return functools.lru_cache(maxsize=maxsize, typed=typed)(func)


def make_cached_property(func: Any, name: str | None) -> Any:
    """A ``functools.cached_property`` of ``func``, named ``name`` as the
    ``class`` statement names it (a class sent by value gets its attributes
    after it is made, which names none). Before Python 3.12 one holds a lock,
    which does not pickle."""
    prop = functools.cached_property(func)
    prop.attrname = name
    return prop


def is_singledispatch(obj: Any) -> bool:
    """Whether ``obj`` is a ``functools.singledispatch`` function of the
    script, which neither cloudpickle nor dill can send by value (its
    dispatch cache holds weak references)."""
    return (
        type(obj) is types.FunctionType
        and obj.__module__ == "__main__"
        and isinstance(getattr(obj, "registry", None), types.MappingProxyType)
        and hasattr(obj, "dispatch")
    )


def singledispatch_args(func: Any) -> tuple[Any, ...]:
    """What ``make_singledispatch`` makes ``func`` again from: its
    implementations, the default one first."""
    registry = func.registry
    return (registry[object], [(cls, impl) for cls, impl in registry.items() if cls is not object])


def make_singledispatch(default: Any, implementations: list[tuple[Any, Any]]) -> Any:
    """A ``functools.singledispatch`` function with these implementations."""
    func = functools.singledispatch(default)
    for cls, impl in implementations:
        func.register(cls, impl)
    return func
