"""One namespace in a worker for the functions of the user's script:
``ScriptNamespace``.

A function of ``__main__`` cannot be imported in a worker, so it arrives by
value with the globals it uses (dill's ``recurse``, cloudpickle), in a dict
of its own. Left so, a global that the initializer or ``run_on_all`` sets
would be seen by no other function, where a forked ``ProcessPoolExecutor``
worker has one module that all of them share. So the worker moves each such
function onto one namespace. A name it brings is added, or replaces the
value the client sent before (the script's latest); a name that a task
assigned in the worker keeps the worker's value, and so does one whose value
a task changed in place (a dict the initializer fills) while the client's
stayed as it was sent: the worker keeps a digest of each value the client
sent (``_digest``) to tell.

Functions of the script inside a task's data (a dask graph, a joblib batch)
are made on that namespace as they are unpickled (``script_rebuild``), once
the worker has called ``share``.

The worker also makes the namespace the globals of its ``__main__`` module
(``become_main``), as the script's are in a worker of
``ProcessPoolExecutor``: a task that starts processes of its own (a
``ProcessPoolExecutor``, a ``multiprocessing.Pool``) pickles the script's
functions by name, ``__main__.f``, which the worker and its forked children
then find; and once a function of the script names its file, the children
that ``spawn`` or ``forkserver`` start run that file as ``__mp_main__``, as
they do in the client.
"""

from __future__ import annotations

import builtins
import functools
import hashlib
import importlib.machinery
import marshal
import os
import pickle
import sys
import types
from typing import Any

from distex_zmq import script_rebuild

_FunctionType = types.FunctionType
_LRU_CACHE_WRAPPER = functools._lru_cache_wrapper

#: Values that no task changes in place: they need no digest.
_UNCHANGING = (
    type(None),
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    range,
    frozenset,
    type,
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
)
#: Values whose pickle is larger than this many bytes get no digest: a
#: value that comes again then replaces the worker's, changed or not.
DIGEST_MAX = 1 << 20


class ScriptNamespace:
    """The globals that the script's functions share in this worker."""

    def __init__(self) -> None:
        self.globals: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
        #: name -> the value the client sent last (a value not this one was
        #: assigned by a task: it stays)
        self._sent: dict[str, Any] = {}
        #: name -> the digest of that value as it came (``_digest``)
        self._digests: dict[str, bytes | None] = {}

    def share(self) -> None:
        """Have the functions of the script that come in task data made on
        this namespace (see ``script_rebuild.make_script_function``)."""
        script_rebuild.script_namespace = self

    def become_main(self, module_name: str | None = None) -> None:
        """Make these globals those of this process's ``__main__`` module,
        in place of the worker's own (once, before any task).

        ``module_name``: the module that the client runs as ``__main__``
        (``python -m pkg.script``), given as spawn gives it to its children
        (``__spec__``, but for a spec's loader, which would import its
        package at the worker's start): a relative import in a function of
        the script finds its package (``__package__``), and a task that
        starts processes with ``spawn`` has them import the script by that
        name, as the client's own spawned children do."""
        module = types.ModuleType("__main__")
        if module_name:
            module.__spec__ = importlib.machinery.ModuleSpec(module_name, None)
            module.__package__ = module.__spec__.parent
        module.__dict__.update(self.globals)
        self.globals = module.__dict__
        sys.modules["__main__"] = module

    def adopt(self, func: Any) -> Any:
        """``func`` on this namespace if it is a function of the script (or a
        method or ``functools.partial`` of one); anything else as it is."""
        if type(func) is _FunctionType:
            return self._function(func, {})
        if isinstance(func, types.MethodType) and type(func.__func__) is _FunctionType:
            return types.MethodType(self._function(func.__func__, {}), func.__self__)
        if type(func) is functools.partial:
            adopted = self.adopt(func.func)
            if adopted is not func.func:
                return functools.partial(adopted, *func.args, **func.keywords)
        return func

    def _function(self, func: types.FunctionType, done: dict[int, Any]) -> Any:
        ns = self.globals
        if func.__module__ != "__main__" or func.__globals__ is ns or _of_a_module(func):
            return func
        new = _FunctionType(func.__code__, ns, func.__name__, func.__defaults__, func.__closure__)
        new.__kwdefaults__ = func.__kwdefaults__
        new.__qualname__ = func.__qualname__
        new.__module__ = func.__module__
        new.__doc__ = func.__doc__
        new.__annotations__ = func.__annotations__
        new.__dict__.update(func.__dict__)
        done[id(func)] = new  # a function that uses itself (recursion)
        self.bring(func.__globals__, done)
        if "__file__" not in ns:
            # the script's file, for the children that multiprocessing spawns
            path = func.__code__.co_filename
            if os.path.isabs(path) and os.path.isfile(path):
                ns["__file__"] = path
        return new

    def offer(self, name: str, value: Any) -> None:
        """Take ``value`` as the global ``name`` if there is none of that
        name (``script_rebuild``: a class or a function of the script that
        came in a task's data, not among a function's globals), or if
        ``value`` wraps the one there; as one the client sent, which the
        next one it sends replaces."""
        held = self.globals.get(name, self)
        if held is self or (
            # a decorator's wrapper, which the script has under the name of
            # the function it wraps, offered before it
            held is self._sent.get(name) and getattr(value, "__wrapped__", None) is held
        ):
            self.globals[name] = self._sent[name] = value
            self._digests[name] = None

    def bring(self, values: dict[str, Any], done: dict[int, Any] | None = None) -> None:
        """Take the globals a function of the script brings (``values``),
        but for the names that a task assigned in this worker, and those
        whose value a task changed in place while the client's did not
        change (the same digest as the value sent before)."""
        ns = self.globals
        sent = self._sent
        digests = self._digests
        done = {} if done is None else done
        for name, value in values.items():
            if name == "__builtins__":
                continue
            if type(value) is _FunctionType:
                value = done.get(id(value)) or self._function(value, done)
            if name not in ns:
                ns[name] = sent[name] = value
                digests[name] = _digest(value)
            elif ns[name] is sent.get(name, ns) and value is not ns[name]:
                digest = _digest(value)
                if digest is None or digest != digests.get(name):
                    ns[name] = sent[name] = value
                    digests[name] = digest


def _digest(value: Any) -> bytes | None:
    """A digest of ``value``'s pickle, to tell whether the client sent the
    same value again; None for a value that cannot change in place, or whose
    pickle fails or passes ``DIGEST_MAX``.

    The script's classes, functions and cached functions count by their
    name and code (``_ScriptDigestPickler``): an object of a class of the
    script (a model that loads on first use) and a cached function of the
    script (``functools.lru_cache``) that two functions use stay as the
    worker has them, their cache included, as in the script."""
    if isinstance(value, _UNCHANGING):
        return None
    sink = _DigestSink()
    try:
        _ScriptDigestPickler(sink, protocol=5, buffer_callback=sink.buffer).dump(value)
    except Exception:  # noqa: BLE001 - too large, or not for standard pickle
        return None
    return sink.hash.digest()


class _ScriptDigestPickler(pickle.Pickler):
    """Standard pickle, for ``_digest``, with the classes, functions and
    cached functions of the script as what tells them apart: their name and
    code. Their pickle by value would name the worker's globals they use
    (which change as functions bring theirs), and standard pickle finds
    them by name only if the worker's ``__main__`` has them under it."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, type) and obj.__module__ == "__main__":
            return _same, ("class", obj.__qualname__, id(obj))
        if type(obj) is _FunctionType and obj.__module__ == "__main__":
            return _same, ("function", obj.__qualname__, marshal.dumps(obj.__code__))
        if type(obj) is _LRU_CACHE_WRAPPER and type(obj.__wrapped__) is _FunctionType:
            wrapped = obj.__wrapped__
            code = marshal.dumps(wrapped.__code__)
            return _same, ("cached", wrapped.__qualname__, code, repr(obj.cache_parameters()))
        return NotImplemented


def _same(*what: Any) -> None:
    """Never called: the digest's stand-in for an object of the script."""


class _DigestSink:
    """A file for ``pickle`` that hashes what is written (buffers too, not
    copied), up to ``DIGEST_MAX`` bytes."""

    def __init__(self) -> None:
        self.hash = hashlib.blake2b(digest_size=16)
        self.size = 0

    def write(self, data: Any) -> None:
        self.size += len(data)
        if self.size > DIGEST_MAX:
            raise OverflowError("too large for a digest")
        self.hash.update(data)

    def buffer(self, buffer: pickle.PickleBuffer) -> None:
        self.write(buffer.raw())


def _of_a_module(func: types.FunctionType) -> bool:
    """Whether ``func`` runs on the globals of a module of the worker: a
    library's wrapper of a function of the script (``functools.singledispatch``
    makes one in the worker), named after the script's function but no
    function of the script."""
    module = sys.modules.get(func.__globals__.get("__name__", ""))
    return module is not None and vars(module) is func.__globals__
