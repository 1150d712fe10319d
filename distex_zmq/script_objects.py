"""Objects of the user's script (``__main__``) sent by value.

A worker's ``__main__`` is not the user's script, so a pickle that names
``__main__.Job`` does not load there. Data is pickled with standard pickle
first; only when that pickle refers to ``__main__`` (or fails) is the object
pickled again with cloudpickle, which pickles classes, enums and functions of
``__main__`` by value (the next inputs of a map, and the next results of a
function in a worker, then go to cloudpickle first:
``serialization.ScriptGuess``). cloudpickle tags each class it sends with a
tracker id, and a class that comes back with that id unpickles as the
sender's own class: a worker's result of a script-defined class is an
instance of the client's class. Functions pickled by dill (the default
``func_pickle``) send classes of ``__main__`` the same way, so that the
function, its arguments and its result agree on one class in the worker and
in the client.

cloudpickle and dill are imported when first needed: a program whose data
never refers to its script, and whose functions all pickle by reference,
imports neither.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import sys
import types
from typing import TYPE_CHECKING, Any

from .script_rebuild import RefSink

if TYPE_CHECKING:
    from .script_pickler import ScriptPickler

_MAIN = b"__main__"


#: What multiprocessing names the script in the processes it spawns.
_MP_MAIN = "__mp_main__"


def adopt_spawned_script() -> None:
    """In a process that multiprocessing spawned (a worker of
    ``ProcessPoolExecutor``, a spawn ``Process``), mark the script's own
    functions and classes as the script's (``__main__``), so that a pool
    made there sends them by value, as from the script itself. There the
    script runs as ``__mp_main__``, which is also ``sys.modules["__main__"]``,
    and its objects say ``__mp_main__``: pickle, cloudpickle and dill send
    them by name, which a worker of the pool, whose script is not that one,
    cannot load (multiprocessing's own children run the script again). The
    objects stay what they are for pickle there: ``__main__`` names the same
    module in that process and in the one that spawned it."""
    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__name__", None) != _MP_MAIN:
        return
    for value in list(vars(main).values()):
        if not isinstance(value, (type, types.FunctionType)):
            continue
        if getattr(value, "__module__", None) != _MP_MAIN:
            continue
        value.__module__ = "__main__"
        if isinstance(value, type):
            for member in list(vars(value).values()):
                function = getattr(member, "__func__", member)  # classmethod, staticmethod
                if getattr(function, "__module__", None) == _MP_MAIN:
                    with contextlib.suppress(AttributeError, TypeError):
                        function.__module__ = "__main__"


class PickleByValue(Exception):
    """Raised by ``dumps_main_by_value`` to have the object pickled by
    ``dumps_by_value`` instead (``serialization.dumps`` catches it)."""


def dumps_main_by_value(obj: Any, protocol: int, buffer_callback: Any = None) -> bytes:
    """Pickle ``obj`` with standard pickle; raise ``PickleByValue`` if the
    pickle refers to ``__main__`` or standard pickle cannot pickle it."""
    try:
        data = pickle.dumps(obj, protocol=protocol, buffer_callback=buffer_callback)
    except Exception as error:  # noqa: BLE001 - lambdas, local functions, ...: by value
        raise PickleByValue from error
    if _MAIN in data:
        raise PickleByValue
    return data


#: ``script_pickler.ScriptPickler`` once imported (by ``_import_script_pickler``):
#: an import statement in each call of the functions below would cost more
#: than a small pickle does
_script_pickler: type[ScriptPickler] | None = None


def _import_script_pickler() -> type[ScriptPickler]:
    """Import ``script_pickler`` (and so cloudpickle); return its pickler."""
    global _script_pickler
    from .script_pickler import ScriptPickler

    _script_pickler = ScriptPickler
    return ScriptPickler


def dumps_by_value(
    obj: Any, protocol: int, buffer_callback: Any = None, refs: RefSink | None = None
) -> bytes:
    """Pickle ``obj`` with ``__main__`` objects by value (cloudpickle); but
    for the functions of ``__main__``, which go by id to ``refs`` if given."""
    pickler = _script_pickler or _import_script_pickler()
    file = io.BytesIO()
    pickler(file, protocol=protocol, buffer_callback=buffer_callback, refs=refs).dump(obj)
    return file.getvalue()


def dumps_main_to_client(obj: Any, protocol: int, buffer_callback: Any = None) -> bytes:
    """``dumps_main_by_value`` for a worker's results, which
    ``serialization.dumps`` pickles again by ``dumps_by_value_to_client``."""
    return dumps_main_by_value(obj, protocol, buffer_callback)


def dumps_by_value_to_client(
    obj: Any, protocol: int, buffer_callback: Any = None, refs: RefSink | None = None
) -> bytes:
    """``dumps_by_value`` for a worker's results: a class of the script that
    the worker holds by id goes as the client's own (``script_rebuild.client_class``)."""
    pickler = _script_pickler or _import_script_pickler()
    file = io.BytesIO()
    pickler(
        file, protocol=protocol, buffer_callback=buffer_callback, refs=refs, to_client=True
    ).dump(obj)
    return file.getvalue()


def dill_data_dumps(
    obj: Any, protocol: int, buffer_callback: Any = None, refs: RefSink | None = None
) -> bytes:
    """dill's ``dumps`` for data, with classes and functions of ``__main__``
    as ``dumps_by_value`` sends them (see ``dill_script.ScriptDataPickler``),
    but for the functions of ``__main__``, which go by id to ``refs`` if given."""
    from .dill_script import ScriptDataPickler

    file = io.BytesIO()
    ScriptDataPickler(file, protocol, buffer_callback=buffer_callback, refs=refs).dump(obj)
    return file.getvalue()


def dill_data_dumps_to_client(
    obj: Any, protocol: int, buffer_callback: Any = None, refs: RefSink | None = None
) -> bytes:
    """``dill_data_dumps`` for a worker's results: a class of the script that
    the worker holds by id goes as the client's own (``script_rebuild.client_class``)."""
    from .dill_script import ScriptDataPickler

    file = io.BytesIO()
    pickler = ScriptDataPickler(
        file, protocol, buffer_callback=buffer_callback, refs=refs, to_client=True
    )
    pickler.dump(obj)
    return file.getvalue()


def dill_loads(data: Any, **kwargs: Any) -> Any:
    """``dill.loads``, importing dill on first use."""
    import dill

    return dill.loads(data, **kwargs)


def dill_dumps(obj: Any, protocol: int, refs: RefSink | None = None) -> bytes:
    """``dill.dumps(obj, recurse=True)`` with classes of ``__main__`` by
    cloudpickle's rules (see ``dill_script.ScriptClassesPickler``); the
    functions of ``__main__`` inside ``obj`` go by id to ``refs`` if given."""
    from .dill_script import ScriptClassesPickler

    file = io.BytesIO()
    ScriptClassesPickler(file, protocol, recurse=True, refs=refs).dump(obj)
    return file.getvalue()
