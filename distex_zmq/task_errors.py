"""Messages of ``SerializationError``: what failed to (un)pickle, and a hint
that holds for the pickle settings in use.

The worker builds the message (it knows where and what failed, but not the
function's name nor the map input); the client names the task in it when it
decodes the error (``name_task``).
"""

from __future__ import annotations

import importlib.machinery
import io
import pickle
import re
import sys
import types
from typing import Any, TypeVar

from .errors import SerializationError
from .serialization import DillRebuildingUnpickler, PickleType

#: How pickle and dill say that a name they look up is not there.
_NOT_THERE = re.compile(r"Can't get attribute|module '.*' has no attribute")


def _kind(value: int) -> str:
    try:
        return f"PickleType.{PickleType(value).name}"
    except ValueError:
        return str(value)


def name_not_found(error: BaseException) -> bool:
    """Whether ``error`` of unpickling is a name looked up and not found (a
    module not there, or one without that attribute), not an error of the
    object's own code."""
    return isinstance(error, ImportError) or (
        isinstance(error, AttributeError) and _NOT_THERE.search(str(error)) is not None
    )


def unloadable_hint(part: str, error: BaseException, func_pickle: int, data_pickle: int) -> str:
    """What to do when the ``part`` ("function" or "arguments") of a task
    does not unpickle in a worker with ``error``."""
    if not name_not_found(error):
        return ""
    if "__main__" in str(error):
        # an object of the script went by name: only pickle by name does that
        if part == "function" and func_pickle == PickleType.pickle:
            return (
                ". Functions of the script (__main__) do not exist in a worker; with "
                "func_pickle=PickleType.pickle they go by name: leave func_pickle at its "
                "default (PickleType.dill) or pass PickleType.cloudpickle to send them by value"
            )
        if part == "arguments" and data_pickle in (PickleType.pickle, PickleType.dill):
            return (
                ". Objects of the script (__main__) do not exist in a worker; with "
                f"data_pickle={_kind(data_pickle)} they go by name: leave data_pickle at "
                "its default (PickleType.auto) to send them by value"
            )
    verb = "refer" if part == "arguments" else "refers"
    if isinstance(error, AttributeError) and "__main__" not in str(error):
        # the module imported: it lacks the name, which the client's has
        return (
            f". The {part} {verb} by name to an attribute of a module that this worker "
            "imports but that has no such attribute there. A class or function that the "
            "client's script (or a library it called, as deap's creator.create does) "
            "set on that module at run time is not in a worker, which does not run the "
            "script's top level (a process of ProcessPoolExecutor, forked from the "
            "script or running it as __mp_main__, does): set it in the workers too, in "
            "the pool's initializer (Pool(initializer=...)). If this worker has another "
            "version of that module than the client, install the client's version there"
        )
    return (
        f". The {part} {verb} by name to a module, class or function that this worker "
        "cannot import: install that module (the version the client has) where the "
        "worker runs, or add its directory to the workers' path (local workers: the "
        "client's sys.path when the pool started; an SSH host: "
        "remote_python='env PYTHONPATH=... python3'; a spawner host: PYTHONPATH in the "
        "environment of the spawner, which its workers inherit), or send the module by "
        "value: cloudpickle.register_pickle_by_value(module) in the client, with "
        "func_pickle=PickleType.cloudpickle and data_pickle=PickleType.cloudpickle"
    )


def result_unloadable_hint(error: BaseException) -> str:
    """What to do when a result does not unpickle in the client with ``error``."""
    if not name_not_found(error):
        return (
            ". It pickled in the worker, but rebuilding it raised in the client (its "
            "class's __reduce__ reconstructor or __setstate__, say): make that code "
            "work where the client runs, or return (and raise) objects the client can rebuild"
        )
    if isinstance(error, AttributeError):
        # the module imported: it lacks the name, which the worker's has
        return (
            ". The result refers by name to an attribute of a module that the client "
            "imports but that has no such attribute here. A class or function that the "
            "task or the pool's initializer set on that module at run time in the worker "
            "is not in the client: set it in the client too, or return objects of types "
            "the client has. If the worker has another version of that module than the "
            "client, install the worker's version where the client runs"
        )
    return (
        ". The result refers by name to a module, class or function that the client "
        "cannot import, but the worker could: install that module (the version the "
        "worker has) where the client runs, or return (and raise) objects of types the "
        "client has"
    )


class _Unimportable(Exception):
    """Stands for a class the client cannot import (an exception's, or an
    object's inside one); ``TolerantUnpickler`` makes a subclass that names
    it."""

    missing = "?"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args)

    def __setstate__(self, state: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<{self.missing}: not importable in the client>"


class _Unloadable:
    """Stands for an object inside a task's error that the client could not
    make (its class's reconstructor raised): ``what`` names its maker."""

    def __init__(self, what: str):
        self.what = what

    def __repr__(self) -> str:
        return f"<{self.what}: could not be unpickled in the client>"


def _name_of(maker: Any) -> str:
    module = getattr(maker, "__module__", None)
    name = getattr(maker, "__qualname__", None) or type(maker).__name__
    return name if module in (None, "builtins") else f"{module}.{name}"


class TolerantUnpickler(DillRebuildingUnpickler):
    """Unpickles what it can of a task's error that did not unpickle in the
    client: a class it cannot import as ``_Unimportable`` (noted in
    ``missing``), an object whose reconstructor raises as ``_Unloadable``,
    and one whose ``__setstate__`` raises without that state; the remote
    traceback, which the worker sent as text, comes whole. Python's own
    unpickler (slower), for the errors that failed to load only."""

    dispatch = dict(DillRebuildingUnpickler.dispatch)

    def __init__(self, file: Any, buffers: Any):
        super().__init__(file, buffers=buffers or None)
        self.missing: list[str] = []

    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            self.missing.append(f"{module}.{name}")
            return type(name, (_Unimportable,), {"missing": f"{module}.{name}"})

    def load_reduce(self) -> None:
        make = self.stack[-2]
        try:
            super().load_reduce()  # takes the arguments off the stack first
        except Exception:  # noqa: BLE001 - what it stands for is named
            self.stack[-1] = _Unloadable(_name_of(make))

    dispatch[pickle.REDUCE[0]] = load_reduce  # type: ignore[assignment]

    def load_build(self) -> None:
        try:
            super().load_build()  # type: ignore[misc] # takes the state off the stack first
        except Exception:  # noqa: BLE001, S110 - the object stays as it was made
            pass

    dispatch[pickle.BUILD[0]] = load_build  # type: ignore[assignment]


def unloadable_error(
    description: str, data: Any, buffers: Any, failure: BaseException
) -> SerializationError | None:
    """The error for the pickled error of a task (``description``) that did
    not unpickle in the client with ``failure``: the exception's class, text
    and what to do, with the remote traceback as its cause. None if it does
    not unpickle so either."""
    try:
        unpickler = TolerantUnpickler(io.BytesIO(data), buffers)
        exc = unpickler.load()
    except Exception:  # noqa: BLE001 - the caller's error stands
        return None
    return tolerated_error(description, exc, unpickler.missing, failure)


def tolerated_error(
    description: str, exc: Any, missing: list[str], failure: BaseException
) -> SerializationError | None:
    """The error of ``unloadable_error`` for ``exc``, the error of a task
    (``description``) that ``TolerantUnpickler`` unpickled, which did not
    find the classes in ``missing``, where the client's load failed with
    ``failure``. None unless ``exc`` stands for an exception."""
    if isinstance(exc, _Unimportable) and missing:
        error = SerializationError(
            f"{description} raised {exc.missing}: {exc}; that exception could not be "
            "unpickled in the client, which cannot import its module (the worker could): "
            "install that module (the version the worker has) where the client runs, or "
            "raise exceptions of types the client has; the remote traceback is the cause"
        )
    elif isinstance(exc, (BaseException, _Unloadable)):
        if isinstance(exc, _Unloadable):
            raised = exc.what
        else:
            try:
                text = str(exc)
            except Exception:  # noqa: BLE001
                text = "<its str() failed>"
            raised = f"{_name_of(type(exc))}: {text}" if text else _name_of(type(exc))
        error = SerializationError(
            f"{description} raised {raised}; that exception could not be unpickled in "
            f"the client ({type(failure).__name__}: {failure}){result_unloadable_hint(failure)}"
            "; the remote traceback is the cause"
        )
    else:
        return None
    error.__cause__ = getattr(exc, "__cause__", None)
    return error


def _raised_in_pickling(error: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``error`` of pickling is, or was caused by, a ``kind`` (cloudpickle
    raises a ``PicklingError`` from the ``RecursionError`` of a pickle too deep)."""
    seen = 0
    cause: BaseException | None = error
    while cause is not None and seen < 10:
        if isinstance(cause, kind):
            return True
        cause = cause.__cause__ or cause.__context__
        seen += 1
    return False


def _too_deep_or_too_large(error: BaseException, where: str, send: str) -> str:
    """The hint, in lower case, for an object that did not pickle because
    it is nested too deeply, or because the process (``where``: "the
    worker") ran out of memory; "" for other errors. ``send``: how to send
    it instead ("return", "pass")."""
    if _raised_in_pickling(error, RecursionError):
        return (
            "it is nested too deeply to pickle, as the pickler goes one level down per "
            "nested list, dict or object (a linked list or tree thousands of levels "
            f"deep): {send} it flattened (its nodes in a list, linked by index)"
        )
    if _raised_in_pickling(error, MemoryError):
        return (
            f"{where} ran out of memory while pickling it (a memory limit: ulimit -v, "
            f"a container's or cgroup's): {send} it in smaller parts (a map over them), "
            "or raise the limit"
        )
    return ""


def error_text(error: BaseException) -> str:
    """``Type: message`` of ``error``, without the full stop of the message
    (a hint follows); ``Type`` alone if it has no message (``MemoryError``)."""
    text = str(error).rstrip(".")
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def unpicklable_hint(value: Any, error: BaseException, data_pickle: int) -> str:
    """What to do when a result ``value`` does not pickle in a worker."""
    hint = _too_deep_or_too_large(error, "the worker", "return")
    if hint:
        return f". {hint[0].upper()}{hint[1:]}"
    if data_pickle == PickleType.pickle and "__main__" in str(error):
        return (
            ". It refers to an object of the script (__main__), which standard pickle "
            "cannot send from a worker: leave data_pickle at its default (PickleType.auto)"
        )
    if isinstance(value, (types.GeneratorType, types.AsyncGeneratorType)):
        # a generator function's call returns at once, having run nothing
        if isinstance(value, types.AsyncGeneratorType):
            kind, items = "an async generator", "[y async for y in f(x)]"
        else:
            kind, items = "a generator", "list(f(x))"
        return (
            f". It is {kind}, as {kind} function's call returns without running it: "
            f"have the task return the items instead (a function that returns {items})"
        )
    return (
        ". Return data that pickles (not a lock, socket, open file or generator), "
        "or give its class a __reduce__ method"
    )


def note_unpicklable(error: BaseException, what: str, dumper: Any) -> None:
    """Add a note to ``error``, raised in the client by pickling ``what``
    (``the arguments of f``, ``input #3 of a map of f``) with ``dumper``,
    that names it and says what to do (Python 3.11+; the error keeps its type)."""
    if not hasattr(error, "add_note"):
        return
    hint = _too_deep_or_too_large(error, "the client", "pass")
    if hint:
        pass  # whatever the pickler
    elif dumper is pickle.dumps and _BY_NAME_ONLY.search(str(error)):
        hint = (
            "data_pickle=PickleType.pickle sends functions and classes by name, so not "
            "lambdas, local functions, nor objects of the script: leave data_pickle at "
            "its default (PickleType.auto) to send them by value"
        )
    else:
        hint = (
            "no pickle takes some objects (locks, sockets, open files, generators): "
            "pass data they are made from instead, or give their class a __reduce__ method"
        )
    error.add_note(f"distex_zmq: while pickling {what} in the client; {hint}")


#: Errors of standard pickle for objects it pickles by name only.
_BY_NAME_ONLY = re.compile(r"lambda|local object|__main__|attribute lookup")


def name_task(error: SerializationError, task_id: int, description: str) -> SerializationError:
    """``error`` with ``task N`` in its message replaced by the task's
    ``description`` (``task 12 (f, input #3 of a map)``), and the cause
    added that only the client knows (``_client_only_module``)."""
    renamed(error, f"task {task_id}", description)
    cause = _client_only_module(error)
    if cause and error.args and isinstance(error.args[0], str):
        error.args = (f"{error.args[0]}. {cause}", *error.args[1:])
    return error


#: How a worker's error names a module it could not import.
_NO_MODULE = re.compile(r"No module named '([^']+)'")


def _client_only_module(error: SerializationError) -> str:
    """Why a worker could not import the module that ``error`` names, if
    the client holds that module but no import by its name finds it: made
    from a file by importlib or ``runpy.run_path`` (a plugin, say), which a
    forked process inherits and any other imports in vain. Else ""."""
    found = _NO_MODULE.search(str(error))
    if found is None:
        return ""
    name = found.group(1)
    module = sys.modules.get(name)
    if module is None or _importable(name):
        return ""
    origin = getattr(module, "__file__", None)
    made = f" from {origin}" if origin else ""
    return (
        f"In the client, {name!r} is a module made{made} under a name that no import "
        "finds (importlib's spec_from_file_location, runpy.run_path): import it by its "
        "name instead, with its directory on sys.path before the pool starts (local "
        "workers take the client's sys.path then), or with runpy, pass "
        "run_name='__main__', whose functions go by value"
    )


def _importable(name: str) -> bool:
    """Whether an import of module ``name`` finds it on ``sys.path`` (its
    top-level package, for a dotted name), not only in ``sys.modules``."""
    top = name.partition(".")[0]
    if not top.isidentifier():
        return False  # runpy's "<run_path>"
    try:
        return importlib.machinery.PathFinder.find_spec(top, sys.path) is not None or (
            top in sys.builtin_module_names
        )
    except (ImportError, ValueError):
        return False


_E = TypeVar("_E", bound=BaseException)


def renamed(error: _E, old: str, new: str) -> _E:
    """``error`` with the first ``old`` in its message replaced by ``new``."""
    if error.args and isinstance(error.args[0], str):
        error.args = (error.args[0].replace(old, new, 1), *error.args[1:])
    return error
