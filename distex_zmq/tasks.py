"""The one place a ``Task`` is built: ``TaskMaker``, and ``callable_name``.

A pool has one ``TaskMaker``: it holds the pool's function cache, its data
pickler and its task ids, and pickles each call in the caller's thread.
"""

from __future__ import annotations

import functools
import itertools
import pickle
from collections.abc import Callable
from typing import Any, NamedTuple

from distex_zmq.broker import ResultSink, Task
from distex_zmq.script_refs import RefCollector, ScriptRefs
from distex_zmq.serialization import (
    PROTOCOL,
    SCALARS,
    FunctionCache,
    PickleType,
    ScriptGuess,
    ScriptGuesses,
    call_out_of_band,
    data_pickle_module,
    dumps,
    pickles_scalars_plainly,
)
from distex_zmq.task_errors import note_unpicklable
from distex_zmq.wire import frames as p

#: Where a callable object that wraps a function holds it: a
#: ``functools.partial`` (``func``), scipy's ``_FunctionWrapper`` (``f``), ...
_WRAPPED = ("func", "f", "fun", "function")


def callable_name(func: Any) -> str:
    """A short name for a callable, cheap to compute: a callable object
    that wraps a function is named by it (``_FunctionWrapper of cost``, for
    the function that a scipy optimizer maps)."""
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None)
    if name is not None:
        return str(name)
    if isinstance(func, functools.partial):
        return callable_name(func.func)
    kind = type(func).__name__
    for attribute in _WRAPPED:
        inner = getattr(func, attribute, None)
        inner_name = getattr(inner, "__qualname__", None) if callable(inner) else None
        if inner_name is not None:
            return f"{kind} of {inner_name}"
    return kind


class MappedFunction(NamedTuple):
    """A function pickled once for all the tasks of a map."""

    func_id: int
    func_pickle: bytes
    name: str
    #: the functions of the script inside it, which its pickle names by id
    refs: tuple[p.ScriptRef, ...] = ()


class TaskMaker:
    """Builds the tasks of one pool, in the caller's thread.

    Args:
        func_pickle: ``PickleType`` for functions.
        data_pickle: ``PickleType`` for arguments and results.
        may_group: calls may share a credit with other tiny tasks (qsize > 1).
    """

    def __init__(self, func_pickle: int, data_pickle: int, may_group: bool):
        #: the functions sent so far, by id
        self.functions = FunctionCache(func_pickle)
        #: the functions of the script met in data, by id (``script_refs``)
        self.script_refs = ScriptRefs(self.functions.new_id, by_dill=data_pickle == PickleType.dill)
        self.functions.collector = functools.partial(RefCollector, self.script_refs)
        data = data_pickle_module(data_pickle)
        self.data_dumps: Callable[..., bytes] = data.dumps
        self.data_loads: Callable[..., Any] = data.loads
        #: scalar inputs and arguments go by ``pickle.dumps`` straight
        self._plain_dumps = pickles_scalars_plainly(data.dumps)
        #: task ids, unique in the pool
        self.ids = itertools.count(1)
        self._may_group = may_group
        #: which pickler ``PickleType.auto`` tries first for the arguments of
        #: each function's calls (``call``)
        self._guesses = ScriptGuesses()

    @property
    def made(self) -> int:
        """Tasks made so far (read from the id counter without taking an id)."""
        return int(repr(self.ids)[len("count(") : -1]) - 1

    def call(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        sink: ResultSink,
        tag: Any = None,
        alone: bool = False,
        name: str | None = None,
    ) -> Task:
        """The task of ``func(*args, **kwargs)``; ``alone``: never grouped with
        other tasks (one pinned to a worker, or a template for such);
        ``name``: what error messages call it instead of ``func``'s name."""
        if name is None:
            name = callable_name(func)
        func_id, func_pickle, refs = self.functions.get_with_refs(func)
        try:
            if kwargs:
                flags = p.FLAG_STAR | p.FLAG_KWARGS
                collector = RefCollector(self.script_refs, refs)
                data, buffers = dumps(
                    call_out_of_band(args, kwargs),
                    self.data_dumps,
                    collector,
                    self._guesses.of(func_id),
                )
                refs = collector.taken()
            else:
                flags = p.FLAG_STAR
                if self._plain_dumps and all(type(arg) in SCALARS for arg in args):
                    data, buffers = pickle.dumps(args, PROTOCOL), []
                else:
                    collector = RefCollector(self.script_refs, refs)
                    data, buffers = dumps(
                        args, self.data_dumps, collector, self._guesses.of(func_id)
                    )
                    refs = collector.taken()
        except Exception as e:
            note_unpicklable(e, f"the arguments of {name}", self.data_dumps)
            raise
        return Task(
            next(self.ids),
            func_id,
            func_pickle,
            flags,
            data,
            buffers,
            sink,
            tag,
            name,
            may_group=self._may_group and not alone,
            refs=refs,
        )

    def copy(self, template: Task, tag: Any = None) -> Task:
        """A new task (own id, never grouped) with the call of ``template``."""
        return Task(
            next(self.ids),
            template.func_id,
            template.func_pickle,
            template.flags,
            template.data,
            template.buffers,
            template.sink,
            tag,
            template.name,
            refs=template.refs,
        )

    def function(self, func: Callable[..., Any]) -> MappedFunction:
        """``func`` pickled (or found in the cache) for ``map_tasks``."""
        func_id, func_pickle, refs = self.functions.get_with_refs(func)
        return MappedFunction(func_id, func_pickle, callable_name(func), refs)

    def map_tasks(
        self,
        func: MappedFunction,
        flags: int,
        inputs: list[Any],
        sink: ResultSink,
        first: int,
        out: list[Task],
        guess: ScriptGuess | None = None,
    ) -> None:
        """Append to ``out`` a task per input (its arguments, or a chunk of
        them with ``FLAG_CHUNK``), numbered from ``first``. An input that
        cannot be pickled raises, with the tasks before it in ``out`` (the
        map notes which input it was). ``guess``: the map's, for its inputs
        pickled with ``PickleType.auto``."""
        dumps_, next_id, append = self.data_dumps, self.ids.__next__, out.append
        func_id, func_pickle, name, func_refs = func
        plain = self._plain_dumps
        script_refs = self.script_refs
        buffers: list[Any]
        refs: tuple[p.ScriptRef, ...]
        for seq, args in enumerate(inputs, first):
            refs = func_refs
            if plain and type(args) in SCALARS:
                data, buffers = pickle.dumps(args, PROTOCOL), []
            else:
                collector = RefCollector(script_refs, func_refs)
                data, buffers = dumps(args, dumps_, collector, guess)
                refs = collector.taken()
            append(
                Task(
                    next_id(),
                    func_id,
                    func_pickle,
                    flags,
                    data,
                    buffers,
                    sink,
                    seq,
                    name,
                    index=seq,
                    refs=refs,
                )
            )
