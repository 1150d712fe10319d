"""Running a worker's tasks: unpickling them, calling the function (once, or
over a chunk of inputs), awaiting what is awaitable, and pickling each result
or error into the batch of results that the worker sends next.

An error of a task is its result (a ``RemoteException`` that unpickles to the
original exception); in a chunk, each input that raises has an ``ItemError``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import os
import pickle
import socket
import sys
import time
import traceback
import types
from collections.abc import Callable
from typing import Any, NoReturn, cast

from distex_zmq import script_rebuild
from distex_zmq.chunk_load import Unloaded, load_each
from distex_zmq.errors import RemoteException, SerializationError, WithoutInit
from distex_zmq.process_role import loading_function
from distex_zmq.serialization import (
    PROTOCOL,
    SCALARS,
    ItemError,
    ScriptGuess,
    ScriptGuesses,
    data_pickle_module,
    dumps,
    function_loads,
    loads_rebuilding_errors,
    pickles_scalars_plainly,
    results_dumper,
)
from distex_zmq.task_errors import (
    error_text,
    name_not_found,
    unloadable_hint,
    unpicklable_hint,
)
from distex_zmq.wire import frames as p

from .script_globals import ScriptNamespace
from .watch import ResultWatch, payload_parts


def _described(name: str) -> str:
    """``name`` of a ``script_ref`` as an error names it: "class Job" as it
    is, "run" as "the function run"."""
    return name if name.startswith("class ") else f"the function {name}"


class Runner:
    """Runs tasks and collects their results in ``results`` until taken.

    ``on_async_result()`` is called when an awaited result was added, so that
    the worker sends it soon.
    """

    def __init__(
        self,
        func_pickle: int,
        data_pickle: int,
        loop: asyncio.AbstractEventLoop,
        on_async_result: Callable[[], None],
        send: Callable[[list[Any]], None],
    ):
        self._func_loads = function_loads(func_pickle)
        #: the pickle settings, for hints in error messages
        self._pickles = (func_pickle, data_pickle)
        data_module = data_pickle_module(data_pickle)
        self._data_loads = data_module.loads
        self._data_dumps = results_dumper(data_module.dumps)
        #: scalar results go by ``pickle.dumps`` straight
        self._plain_dumps = pickles_scalars_plainly(self._data_dumps)
        self._loop = loop
        self._on_async_result = on_async_result
        #: the functions it holds, by id (the broker knows which)
        self.functions = p.RecentFunctions()
        #: the globals that the functions of the user's script share
        self._script = ScriptNamespace()
        #: the awaited tasks that have not finished
        self.running: set[asyncio.Future[Any]] = set()
        #: the ids of those tasks
        self.awaiting: set[int] = set()
        #: whether the worker's connection dropped and no ``CHECK`` came
        #: since: a task whose function (or script function) is not held
        #: then lost it on the way, and is dropped unanswered (``CHECK``
        #: has it run again) rather than failed
        self.connection_dropped: Callable[[], bool] = _no
        #: awaited tasks started so far: code that runs on the worker's loop
        self.awaited = 0
        #: results not sent yet
        self.results = p.Writer(p.RESULT)
        #: sends results that would wait behind a long task; its lock is
        #: released while such a task runs (see ``Worker``)
        self.watch = ResultWatch(send, self._batch, self._data_dumps, _is_awaitable)
        #: which pickler ``PickleType.auto`` tries first for each function's
        #: results, by function id
        self._guesses = ScriptGuesses()

    def share_script_globals(self) -> None:
        """Have the script's functions that come in task data made on this
        runner's namespace too, and those that come by id looked up among
        its functions (once per worker process)."""
        self._script.share()
        script_rebuild.held_objects = self._script_ref

    def script_as_main(self, module_name: str | None = None) -> None:
        """Make the script's namespace this process's ``__main__`` module
        (``ScriptNamespace.become_main``; a worker process's, before its
        first task), of the client's module ``module_name`` if it runs one
        as ``__main__``."""
        self._script.become_main(module_name)

    def take_ref(self, ref_id: int, pickled: Any, buffers: list[Any], held: int) -> None:
        """A ``FLAG_REF`` entry: keep the script function ``ref_id`` made
        from ``pickled`` (None: mark the one held as just used), as the
        broker counts it for this worker (see ``wire.frames``)."""
        functions = self.functions
        if pickled is None:
            functions.use(ref_id, ref=True)  # one not held fails the task that uses it
            return
        try:
            # made by the pickler of data (script_refs)
            with loading_function():
                func = self._data_loads(pickled, buffers=buffers)
        except BaseException as e:  # noqa: BLE001 - the tasks that use it fail with it
            why = f"{type(e).__name__}: {e}{unloadable_hint('function', e, *self._pickles)}"
            func = _Broken(why)
        else:
            if isinstance(func, type):
                script_rebuild.client_classes.add(func)
        functions.add(ref_id, func, held, ref=True)

    def _script_ref(self, ref_id: int, name: str) -> Any:
        """The script function ``ref_id`` (``name``) that a task's data or
        function refers to."""
        func = self.functions.get(ref_id)
        if func is None:
            raise p.ProtocolError(
                f"the pickle refers to {_described(name)} of the script by id {ref_id}, "
                f"which this worker does not hold{_OUT_OF_STEP}"
            )
        if type(func) is _Broken:
            raise SerializationError(
                f"{_described(name)} of the script, sent by value once to this worker, "
                f"did not unpickle here: {func}"
            )
        return func

    def forget_functions(self) -> None:
        """Hold no function any more (``CHECK``: the broker counts afresh)."""
        self.functions = p.RecentFunctions()

    def _batch(self) -> p.Writer:
        return self.results

    def take_results(self) -> p.Writer:
        """The results collected so far; collecting starts anew."""
        results = self.results
        self.results = p.Writer(p.RESULT)
        return results

    def give_back(self, task_id: int) -> None:
        """Return ``task_id`` unrun (``STATUS_RETURNED``)."""
        self.results.entries.append(p.RESULT_ENTRY.pack(task_id, p.STATUS_RETURNED, 0, 0, 0, 0))

    def keep_function(self, func_id: int, func_pickle: Any) -> None:
        """Take the function of a task given back unrun as if the task ran:
        mark it as just used, or keep it made from ``func_pickle``."""
        if func_pickle is None:
            self.functions.use(func_id)
            return
        try:
            self._function(func_id, func_pickle)
        except BaseException:  # noqa: BLE001, S110 - the task that runs it fails with it
            pass

    def run(
        self,
        task_id: int,
        func_id: int,
        flags: int,
        func_pickle: Any,
        data: Any,
        buffers: list[Any],
        skip: int = 0,
    ) -> None:
        """Run a task; its result is added now or, if awaitable, once awaited.
        ``skip``: a chunk's inputs answered before, not to run again."""
        started = time.perf_counter()
        func: Any = None
        try:
            func = self._function(func_id, func_pickle)
            # serialization.loads, inlined: a call less per task
            args = self._data_loads(data, buffers=buffers) if buffers else self._data_loads(data)
        except BaseException as e:  # noqa: BLE001 - any unpickling error fails the task
            if isinstance(e, p.ProtocolError) and self.connection_dropped():
                return  # out of step: it runs again after ``CHECK``
            args = self._rebuilt_args(func, data, buffers, e)
            if args is _FAILED:
                if func is None or not flags & p.FLAG_CHUNK:
                    self._fail_unloadable(task_id, func, e, started)
                    return
                star = flags & p.FLAG_STAR
                args = self._inputs_apart(task_id, func, data, buffers, e, started, star)
                if args is _FAILED:
                    return
                func = _failing_unloaded(func)
        guess = self._guesses.of(func_id)
        if flags & p.FLAG_CHUNK:
            if flags & p.FLAG_ONE_BY_ONE and self._hand_back_one_by_one(task_id, args, skip):
                return
            self._run_chunk(task_id, func, args, flags & p.FLAG_STAR, started, skip, guess)
            return
        try:
            if flags & p.FLAG_KWARGS:
                args, kwargs = args
                result = func(*args, **kwargs)
            elif flags & p.FLAG_STAR:
                result = func(*args)
            else:
                result = func(args)
        except BaseException as e:  # noqa: BLE001 - a task's error is its result
            if _forked:
                _end_forked_child(e)
            self._add_result(task_id, p.STATUS_ERROR, self._sendable_error(task_id, e), started)
            return
        if _forked:
            _end_forked_child(None)
        if _is_awaitable(result):
            self._await_result(task_id, result, started, guess=guess)
        else:
            self._add_result(task_id, p.STATUS_OK, result, started, guess=guess)

    def _function(self, func_id: int, func_pickle: Any) -> Any:
        if func_pickle is None:
            func = self.functions.take(func_id)
            if func is p.ABSENT:
                raise p.ProtocolError(
                    f"the task refers to its function by id {func_id}, which this worker "
                    f"does not hold{_OUT_OF_STEP}"
                )
        else:
            try:
                with loading_function():
                    func = self._script.adopt(self._func_loads(func_pickle))
            except BaseException as e:  # noqa: BLE001
                if isinstance(e, p.ProtocolError) and self.connection_dropped():
                    raise  # a script function it refers to was lost: not broken
                why = f"{type(e).__name__}: {e}{unloadable_hint('function', e, *self._pickles)}"
                # remembered, so that later tasks of this function fail alike
                func = _Broken(why)
            self.functions.add(func_id, func, len(func_pickle))
        if type(func) is _Broken:
            raise func
        return func

    def _rebuilt_args(self, func: Any, data: Any, buffers: list[Any], e: BaseException) -> Any:
        """The arguments of a task (of ``func``) that failed to load with
        ``e``, loaded with their exceptions that their classes do not make
        from their ``args`` rebuilt (an error passed to a task); else
        ``_FAILED``."""
        if func is not None and isinstance(e, Exception) and not name_not_found(e):
            try:
                return loads_rebuilding_errors(data, buffers, self._data_loads)
            except Exception:  # noqa: BLE001, S110 - the first failure is the one to name
                pass
        return _FAILED

    def _unloadable(self, task_id: int, part: str, e: BaseException) -> SerializationError:
        """The error of task ``task_id`` whose ``part`` ("function",
        "arguments") did not unpickle with ``e``."""
        why = (
            str(e)
            if type(e) is _Broken
            else f"{type(e).__name__}: {e}{unloadable_hint(part, e, *self._pickles)}"
        )
        error = SerializationError(
            f"{_where()} could not unpickle the {part} of task {task_id}: {why}"
        )
        if type(e) is not _Broken:
            # its traceback goes in the remote one: where the load raised
            # (a __setstate__ or reconstructor of the task's own code)
            error.__cause__ = e
        return error

    def _fail_unloadable(self, task_id: int, func: Any, e: BaseException, started: float) -> None:
        # the part that failed (the client names the task's function)
        part = "function" if func is None else "arguments"
        error = self._unloadable(task_id, part, e)
        self._add_result(task_id, p.STATUS_ERROR, _remote(error), started)

    def _inputs_apart(
        self,
        task_id: int,
        func: Any,
        data: Any,
        buffers: list[Any],
        e: BaseException,
        started: float,
        star: int,
    ) -> Any:
        """The inputs of chunk ``task_id``, whose pickle did not load as a
        whole (with ``e``), loaded one at a time: each that does not load
        is an ``_UnloadedInput`` (the one argument of a starred input),
        whose error is its result, and the others run. Else the chunk fails
        with ``e``, and ``_FAILED``."""
        try:
            items = load_each(data, buffers, self._data_loads)
        except Exception:  # noqa: BLE001 - then the chunk fails as a whole
            items = None
        if not items:
            self._fail_unloadable(task_id, func, e, started)
            return _FAILED
        inputs = []
        for item in items:
            if type(item) is Unloaded:
                item = _UnloadedInput(self._unloadable(task_id, "arguments", item.error))
                if star:
                    item = (item,)
            inputs.append(item)
        return inputs

    def _run_chunk(
        self,
        task_id: int,
        func: Any,
        items: Any,
        star: int,
        started: float,
        skip: int,
        guess: ScriptGuess,
    ) -> None:
        """Run the inputs of a chunk from ``skip`` on; an input's error is its
        own result. While an input runs long, ``ResultWatch`` sends the results
        before it; once the chunk has run ``CHUNK_BUDGET``, it closes the
        chunk's gate and hands back the inputs not started (``STATUS_SPLIT``)
        for idle workers; those it could not, this thread hands back after
        its input (``STATUS_HANDED_BACK``)."""
        results: list[Any] = []
        items = items if isinstance(items, (tuple, list)) else tuple(items)
        # the inputs to run, in a list of their own that the watch empties to
        # stop the chunk between two inputs: a list's iterator ends once its
        # list is empty, which spares a flag per input (itertools.compress)
        gate = list(items[skip:]) if skip else list(items)
        watch = self.watch

        def error(e: BaseException) -> RemoteException:
            return self._sendable_error(task_id, e)

        inputs = iter(gate)
        watch.begin(task_id, results, started, skip, gate, inputs, guess)
        try:
            _run_inputs(func, inputs, star, results, error)
        finally:
            if _forked:
                _end_forked_child(None)
            sent, end = watch.end()
        if end is not None:
            items = items[:end]  # the inputs after them went back while they ran
        count = len(items)
        index = skip + len(results)
        parts = None
        if index < count:
            parts = payload_parts(items, index, 0, self._data_dumps)
            if parts is None:  # they do not pickle: they run here
                _run_inputs(func, iter(items[index:]), star, results, error)
                index = count
        rest = results[sent:] if sent else results
        # one function makes all the results: if the first is awaitable, await them all
        if rest and not sent and _is_awaitable(rest[0]):
            self._await_result(task_id, _settle_all(rest, error), started, True, guess)
        elif parts is not None:
            if rest:
                status = self._add_result(
                    task_id, p.STATUS_PARTIAL, rest, started, index, True, guess
                )
                if status != p.STATUS_PARTIAL:
                    return  # the chunk failed with that error: nothing to hand back
            self._hand_back(task_id, parts)
        else:
            self._add_result(task_id, p.STATUS_OK, rest, started, chunk=True, guess=guess)

    def _hand_back_one_by_one(self, task_id: int, items: Any, skip: int) -> bool:
        """Hand back the inputs of chunk ``task_id`` (``FLAG_ONE_BY_ONE``)
        from ``skip`` on, none run, each as a part of its own; return False
        if there is one (it runs here) or they do not pickle."""
        items = items if isinstance(items, (tuple, list)) else tuple(items)
        if len(items) - skip <= 1:
            return False
        parts = payload_parts(items, skip, 0, self._data_dumps, len(items) - skip)
        if parts is None:
            return False
        self._hand_back(task_id, parts)
        return True

    def _hand_back(self, task_id: int, parts: list[tuple[int, bytes, list[Any]]]) -> None:
        """Add the ``STATUS_HANDED_BACK`` entries of chunk ``task_id``'s
        ``parts`` (``payload_parts``) to the results, all in one: the broker
        takes a part for a task of its own only in the message of its chunk's
        first, and the watch may send the results meanwhile."""
        handed = p.Writer(p.RESULT)
        pack = p.RESULT_ENTRY.pack
        for mark, data, buffers in parts:
            size = handed.body(data, buffers)
            handed.entries.append(pack(task_id, p.STATUS_HANDED_BACK, 0, size, len(buffers), mark))
        self.results.extend(handed)

    def _sendable_error(self, task_id: int, e: BaseException) -> RemoteException:
        """``e``, raised by task ``task_id`` (or an input of that chunk), as
        it is sent. An exception pickles as its class called with its args,
        which its class's ``__init__`` may not take: one whose pickle does
        not load goes to be rebuilt without that call (``WithoutInit``). One
        that holds such exceptions (an ``ExceptionGroup``, an exception with
        one in its ``args``) goes as it is if the client's second load, which
        rebuilds them (``loads_rebuilding_errors``), loads it. One that does
        not pickle, or not load even so, is sent as a stand-in with its text
        and traceback: the caller would get only the error of its load, and
        a chunk's other results would be lost."""
        error = _remote(e)
        try:
            data, buffers = dumps(error, self._data_dumps)
        except BaseException as failure:  # noqa: BLE001
            return _error_stand_in(task_id, error, failure, "pickled")
        try:
            self._data_loads(data, buffers=buffers)
        except BaseException as failure:  # noqa: BLE001
            # pickled in the exception's place, it loads as the exception
            stand_in = cast(BaseException, WithoutInit(e))
            rebuilt = RemoteException(stand_in, error.tb, error.host, error.pid)
            try:
                pickled = dumps(rebuilt, self._data_dumps)
                self._data_loads(pickled[0], buffers=pickled[1])
            except BaseException:  # noqa: BLE001
                try:
                    loads_rebuilding_errors(data, buffers, self._data_loads)
                except BaseException:  # noqa: BLE001
                    return _error_stand_in(task_id, error, failure, "unpickled")
                return error
            return rebuilt
        return error

    def cancel_all(self) -> None:
        """Cancel the tasks awaited: the worker leaves."""
        global _leaving
        _leaving = True
        for fut in self.running:
            fut.cancel()

    def _await_result(
        self,
        task_id: int,
        awaitable: Any,
        started: float,
        chunk: bool = False,
        guess: ScriptGuess | None = None,
    ) -> None:
        fut = asyncio.ensure_future(_contained(awaitable), loop=self._loop)
        self.running.add(fut)
        self.awaiting.add(task_id)
        self.awaited += 1

        def done(fut: asyncio.Future[Any]) -> None:
            self.running.discard(fut)
            self.awaiting.discard(task_id)
            if fut.cancelled():
                error = _remote(asyncio.CancelledError(f"task {task_id} was cancelled"))
                self._add_result(task_id, p.STATUS_ERROR, error, started, p.MARK_AWAITED)
            elif (exc := fut.exception()) is not None:
                if type(exc) is _Held:
                    exc = exc.exc
                error = self._sendable_error(task_id, exc)
                self._add_result(task_id, p.STATUS_ERROR, error, started, p.MARK_AWAITED)
            else:
                result = fut.result()
                mark = p.MARK_AWAITED
                self._add_result(task_id, p.STATUS_OK, result, started, mark, chunk, guess)
            self._on_async_result()

        fut.add_done_callback(done)

    def _add_result(
        self,
        task_id: int,
        status: int,
        value: Any,
        started: float,
        mark: int = 0,
        chunk: bool = False,
        guess: ScriptGuess | None = None,
    ) -> int:
        """Add a result entry; return its status (an error if it did not pickle).
        ``chunk``: ``value`` is the list of a chunk's results, of which each
        that does not pickle becomes an error of its own input; ``guess``:
        that of the results' function (``ScriptGuess``)."""
        elapsed = min(int((time.perf_counter() - started) * 1e6), p.MAX_ELAPSED)
        buffers: list[Any]
        try:
            if self._plain_dumps and type(value) in SCALARS:
                data, buffers = pickle.dumps(value, PROTOCOL), []
            else:
                data, buffers = dumps(value, self._data_dumps, None, guess)
        except BaseException as e:  # noqa: BLE001 - an unpicklable result fails the task
            # of a chunk's results, each that does not pickle fails its input only
            pickled = self._dump_items(task_id, value) if chunk else None
            if pickled is None:
                pickled = _unpicklable(task_id, status, value, e, self._pickles[1])
                status = p.STATUS_ERROR
            data, buffers = pickled
        results = self.results
        size = results.body(data, buffers)
        results.entries.append(
            p.RESULT_ENTRY.pack(task_id, status, elapsed, size, len(buffers), mark)
        )
        return status

    def _dump_items(self, task_id: int, results: list[Any]) -> tuple[bytes, list[Any]] | None:
        """A chunk's ``results`` pickled, each that does not pickle replaced
        by the ``ItemError`` of a ``SerializationError`` that says why (the
        other inputs keep their results, as when an input raises); None if
        they still do not pickle."""
        items = []
        for item in results:
            try:
                dumps(item, self._data_dumps)
            except BaseException as e:  # noqa: BLE001 - that input's error
                error = SerializationError(
                    f"task {task_id} ran on {_where()} but its result, of type "
                    f"{type(item).__name__}, could not be pickled: "
                    f"{error_text(e)}{unpicklable_hint(item, e, self._pickles[1])}"
                )
                item = ItemError(_remote(error))
            items.append(item)
        try:
            return dumps(items, self._data_dumps)
        except BaseException:  # noqa: BLE001 - then the chunk fails as a whole
            return None


def _unpicklable(
    task_id: int, status: int, value: Any, e: BaseException, data_pickle: int
) -> tuple[bytes, list[Any]]:
    """The pickled error that stands for a result or error that did not
    pickle (a task's own errors are checked as they are made: see
    ``Runner._sendable_error``)."""
    if status == p.STATUS_OK:
        what = f"its result of type {type(value).__name__}"
    else:
        what = "its exception"
        if isinstance(value, RemoteException):
            return dumps(_error_stand_in(task_id, value, e, "pickled"))
    error = SerializationError(
        f"task {task_id} ran on {_where()} but {what} could not be pickled: "
        f"{error_text(e)}{unpicklable_hint(value, e, data_pickle)}"
    )
    return dumps(_remote(error))


def _error_stand_in(
    task_id: int, error: RemoteException, failure: BaseException, failed: str
) -> RemoteException:
    """What is sent for ``error``, whose exception could not be ``failed``
    ("pickled", "unpickled"): its text, with its remote traceback as the
    cause; only the exception object is lost."""
    text = (
        f"task {task_id} raised {type(error.exc).__name__}: {error.exc}; on "
        f"{_where()} the exception could not be {failed} "
        f"({type(failure).__name__}: {failure}), so its traceback is the cause"
    )
    return _remote(SerializationError(text), error.tb)


def _run_inputs(
    func: Any,
    inputs: Any,
    star: int,
    results: list[Any],
    error: Callable[[BaseException], RemoteException],
) -> None:
    """Append to ``results`` what ``func`` makes of each input, an
    ``ItemError`` of ``error(e)`` for each that raises ``e``. ``inputs``
    is an iterator over a list or tuple."""
    while True:
        try:
            # map() in extend() is the fast path; after an error it goes on
            # with the inputs that follow
            results.extend(itertools.starmap(func, inputs) if star else map(func, inputs))
        except BaseException as e:  # noqa: BLE001
            if _forked:
                _end_forked_child(e)
            results.append(ItemError(error(e)))
            continue
        # extend() ends at a StopIteration, also one that func raises: then
        # the iterator of inputs is not exhausted (its pickle holds its
        # position), where the end of the inputs, or of the gate, exhausts it
        if len(inputs.__reduce__()) < 3:
            return
        results.append(ItemError(error(_lost_stop_iteration(func))))


def _lost_stop_iteration(func: Any) -> StopIteration:
    """What stands for a ``StopIteration`` that ``func`` raised in a chunk,
    which map() took for the end of its inputs: its value and traceback
    are lost."""
    name = getattr(func, "__qualname__", None) or type(func).__name__
    return StopIteration(
        f"{name} raised StopIteration in a chunk of a map on {_where()}, which "
        "ends the worker's loop over the chunk as if its inputs ended, so its "
        "value and traceback are lost: raise another exception in the function, "
        "or map with chunksize=1"
    )


#: Why a worker lacks a function that a task refers to by id, and what to do.
_OUT_OF_STEP = (
    ", though the broker counts it as sent here: the broker and this worker disagree "
    "on the functions it holds, a bug of distex_zmq, not of the script. Please report "
    "it, with the pool's options; a new pool (close this one) starts afresh"
)


#: True in a process forked from the worker (a task's ``os.fork()``): if the
#: child comes back to the worker's code, it ends (``_end_forked_child``).
_forked = False


def _note_fork() -> None:
    global _forked
    _forked = True


os.register_at_fork(after_in_child=_note_fork)


def _end_forked_child(error: BaseException | None) -> NoReturn:
    """End a child that a task forked and that came back from the task's
    function, which returned (``error`` None) or raised ``error``
    (``sys.exit()`` too), as multiprocessing ends the children it forks.
    Left to go on, the child would run the worker's loop on its parent's
    socket: it would send its own result for the task, take tasks meant
    for the parent, and outlive the pool, while the parent waits for it.
    Its exit code is the one ``sys.exit`` asked for, 1 after another error
    (its traceback printed), else 0."""
    code: Any = 0
    if isinstance(error, SystemExit):
        code = error.code
        if code is None:
            code = 0
        elif not isinstance(code, int):
            print(code, file=sys.stderr)
            code = 1
    elif error is not None:
        traceback.print_exception(type(error), error, error.__traceback__)
        code = 1
    flush_std_streams()
    os._exit(code)


def flush_std_streams() -> None:
    """Flush ``sys.stdout`` and ``sys.stderr``, which a task may have
    closed or replaced (as multiprocessing's children flush them)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass


def _where() -> str:
    return f"worker pid {os.getpid()} on {_HOST}"


#: this worker's host name, which the errors of its tasks carry
_HOST = socket.gethostname()


def _remote(exc: BaseException, tb: str | None = None) -> RemoteException:
    """``exc`` to send as a task's error, marked with this worker's host and pid
    (a ``SerializationError`` made here is marked too)."""
    pid = os.getpid()
    if isinstance(exc, SerializationError):
        exc.set_origin(_HOST, pid)
    return RemoteException(exc, tb, _HOST, pid)


def _is_awaitable(value: Any) -> bool:
    # inspect.isawaitable goes through ABCs: too slow for every result
    if hasattr(value, "__await__"):
        return True
    return isinstance(value, types.GeneratorType) and inspect.isawaitable(value)


class _Held(Exception):
    """Carries the ``SystemExit``, ``KeyboardInterrupt`` or ``CancelledError``
    that an awaited task raised (``exc``) to its result."""

    def __init__(self, exc: BaseException):
        self.exc = exc


async def _contained(awaitable: Any) -> Any:
    """``awaitable`` awaited, a ``SystemExit`` or ``KeyboardInterrupt`` it
    raises held in a ``_Held``: asyncio re-raises those out of the loop,
    which would end the worker, where the same error of a sync task is its
    result. So is a ``CancelledError`` that it raises itself (``raise
    CancelledError("upstream went away")``, or one of what it awaited),
    which would make the task cancelled, its message and traceback lost;
    but when the worker leaves, and cancels what it awaits."""
    try:
        result = await awaitable
    except BaseException as e:
        if _forked:
            _end_forked_child(e)
        if isinstance(e, (SystemExit, KeyboardInterrupt)):
            raise _Held(e) from None
        if isinstance(e, asyncio.CancelledError) and not _leaving:
            raise _Held(e) from None
        raise
    if _forked:
        _end_forked_child(None)
    return result


#: the worker leaves, and cancels the tasks it awaits (``Runner.cancel_all``)
_leaving = False


async def _settle_all(
    results: list[Any], error: Callable[[BaseException], RemoteException]
) -> list[Any]:
    """A chunk's results with the awaitable ones awaited, together."""
    return list(await asyncio.gather(*(_settle(r, error) for r in results)))


async def _settle(value: Any, error: Callable[[BaseException], RemoteException]) -> Any:
    """``value`` awaited if it is awaitable, an ``ItemError`` of ``error(e)``
    if that raised ``e``; else as it is (a plain result, or the ``ItemError``
    of a sync error)."""
    if not inspect.isawaitable(value):
        return value
    try:
        return await value
    except BaseException as e:  # noqa: BLE001 - an input's error is its own result
        return ItemError(error(e))


class _UnloadedInput:
    """Stands in a chunk for an input that did not unpickle (``_inputs_apart``):
    ``error`` is its result."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException):
        self.error = error


def _failing_unloaded(func: Any) -> Any:
    """``func``, but raising the error of an ``_UnloadedInput`` it is given
    (an input, or the one argument of a starred input) in its place."""

    @functools.wraps(func)
    def call(*args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and type(args[0]) is _UnloadedInput:
            raise args[0].error
        return func(*args, **kwargs)

    return call


#: What ``_rebuilt_args`` returns for arguments that do not load.
_FAILED: Any = object()


def _no() -> bool:
    return False


class _Broken(Exception):
    """Stands for a function that could not be unpickled."""
