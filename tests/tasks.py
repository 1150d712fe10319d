"""Task functions for the tests, run in the workers.

They live in this importable module (``tests.tasks``) so that every pickler,
plain ``pickle`` included, sends them to the workers by reference; see the
notes at the top of ``conftest.py`` on why this works and what does not.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import decimal
import functools
import logging
import os
import pickle
import signal
import socket
import sys
import threading
import time
from typing import Any

#: set by ``init_state`` in the worker (the initializer test)
STATE: dict[str, Any] = {}


def square(x: int) -> int:
    return x * x


@functools.lru_cache(maxsize=64)
def cached_square(x: int) -> int:
    return x * x


def add(x: int, y: int) -> int:
    return x + y


def add3(x: int, y: int, z: int) -> int:
    return x + y + z


def with_kwargs(x: int, *, scale: int = 1, offset: int = 0) -> int:
    return x * scale + offset


def identity(x: Any) -> Any:
    return x


def pid(*_: Any) -> int:
    return os.getpid()


def pid_after(delay: float, *_: Any) -> int:
    time.sleep(delay)
    return os.getpid()


def minor_faults() -> int:
    """The minor page faults of this worker process so far."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def sleep_return(delay: float, value: Any = None) -> Any:
    time.sleep(delay)
    return value


def log_after(delay: float, logger: str, message: str) -> str:
    """Sleep, then log ``message`` at WARNING (re-emitted in the client)."""
    time.sleep(delay)
    logging.getLogger(logger).warning(message)
    return message


def log_records(logger: str, count: int, level: int = logging.WARNING) -> int:
    """Log ``record 0`` to ``record {count - 1}`` at ``level``; return ``count``."""
    for i in range(count):
        logging.getLogger(logger).log(level, "record %d", i)
    return count


def log_with_extra(logger: str, user_id: int) -> bool:
    """Log at WARNING with ``extra=``: a number, a list and an object."""
    extra = {"user_id": user_id, "tags": ("a", "b"), "payload": object()}
    logging.getLogger(logger).warning("for user %d", user_id, extra=extra)
    return True


def log_with_stack(logger: str) -> str:
    """Log at WARNING with ``stack_info``, from this thread and from a thread
    named ``helper``; return this thread's name."""
    logging.getLogger(logger).warning("from the task", stack_info=True)
    helper = threading.Thread(
        target=lambda: logging.getLogger(logger).warning("from a thread"), name="helper"
    )
    helper.start()
    helper.join()
    return threading.current_thread().name


def sleep_square(x: int) -> int:
    """Sleep longer for small ``x``, so that completion order differs from input order."""
    time.sleep(0.05 * (4 - x % 4))
    return x * x


def fail_on(x: int, bad: int = 3) -> int:
    if x == bad:
        raise ValueError(f"bad input {x}")
    return x * 10


class CustomError(Exception):
    """A user exception type that must come back as itself."""


def raise_custom(msg: str) -> None:
    raise CustomError(msg)


def raise_key_error() -> None:
    {}["missing-key"]  # noqa: B018


def init_state(key: str, value: Any) -> None:
    STATE[key] = value
    STATE["init_pid"] = os.getpid()
    STATE["init_count"] = STATE.get("init_count", 0) + 1


def get_state() -> dict[str, Any]:
    return dict(STATE, pid=os.getpid())


#: set by ``set_context`` (an initializer or a task), read by ``read_context``
CONTEXT_NOTE: contextvars.ContextVar[str] = contextvars.ContextVar("CONTEXT_NOTE", default="unset")


def set_context(note: str, precision: int) -> None:
    """Set ``CONTEXT_NOTE`` and the precision of ``decimal``'s context (a
    ``ContextVar`` of its own)."""
    CONTEXT_NOTE.set(note)
    decimal.getcontext().prec = precision


def read_context(_: object = None) -> tuple[str, int]:
    """What ``set_context`` set, as this task sees it."""
    return CONTEXT_NOTE.get(), decimal.getcontext().prec


async def read_context_async(_: object = None) -> tuple[str, int]:
    """``read_context`` from a coroutine, after it awaited once."""
    await asyncio.sleep(0)
    return read_context()


def init_hang() -> None:
    """An initializer that does not return (for long)."""
    time.sleep(600)


def init_fail() -> None:
    raise RuntimeError("initializer exploded")


def init_fail_at(when: float) -> None:
    """``init_fail`` at ``when`` (``time.time()``): in every worker at once."""
    time.sleep(max(0.0, when - time.time()))
    init_fail()


async def async_square(x: int) -> int:
    await asyncio.sleep(0.01)
    return x * x


def async_square_unless(x: int, bad: int) -> Any:
    """A coroutine that squares ``x``; raises at once (no coroutine) for ``bad``."""
    if x == bad:
        raise ValueError(f"bad input {x}")
    return async_square(x)


async def async_fail(x: int) -> int:
    await asyncio.sleep(0.01)
    raise ValueError(f"async failure {x}")


async def async_exit(code: int) -> None:
    await asyncio.sleep(0.01)
    sys.exit(code)


async def async_interrupt() -> None:
    await asyncio.sleep(0.01)
    raise KeyboardInterrupt("from an async task")


async def async_cancelled(message: str) -> None:
    """Raise ``CancelledError(message)``, as a client library does for a
    call that its server cancelled."""
    await asyncio.sleep(0.01)
    raise asyncio.CancelledError(message)


async def running_loop_class_name() -> str:
    loop = asyncio.get_running_loop()
    return f"{type(loop).__module__}.{type(loop).__name__}"


def array_checksum(arr: Any) -> tuple[int, float, bool]:
    """Size, a checksum and whether the array the worker got is writable."""
    return arr.nbytes, float(arr[::4096].sum()), bool(arr.flags.writeable)


def array_echo(arr: Any) -> Any:
    return arr


def array_kind(arr: Any) -> tuple[str, bool, float]:
    """The type of the array the worker got, whether it is writable, and its sum."""
    return type(arr).__name__, bool(arr.flags.writeable), float(arr.sum())


def load_memmap(path: str, start: int = 0) -> Any:
    """The ``.npy`` file at ``path`` mapped read-only, from item ``start`` on."""
    import numpy as np

    return np.load(path, mmap_mode="r")[start:]


#: what ``fill_kept_array`` and ``fill_kept_bytearray`` fill and return, kept across tasks
_KEPT_ARRAY: Any = None
_KEPT_BYTEARRAY: bytearray | None = None


def fill_kept_array(value: float) -> Any:
    """Fill an array this worker keeps with ``value`` and return it: a later
    task writes into the array this one returned (an output buffer reused)."""
    global _KEPT_ARRAY
    import numpy as np

    if _KEPT_ARRAY is None:
        _KEPT_ARRAY = np.empty(2_000_000, dtype=np.float64)
    _KEPT_ARRAY[:] = value
    return _KEPT_ARRAY


def fill_kept_bytearray(value: int) -> bytearray:
    """``fill_kept_array`` with a ``bytearray`` (out of band, as a buffer)."""
    global _KEPT_BYTEARRAY
    if _KEPT_BYTEARRAY is None:
        _KEPT_BYTEARRAY = bytearray(4_000_000)
    _KEPT_BYTEARRAY[:] = bytes([value]) * len(_KEPT_BYTEARRAY)
    return _KEPT_BYTEARRAY


def array_plus_one(arr: Any) -> Any:
    return arr + 1


def bytes_len(b: bytes) -> int:
    return len(b)


class BadSetstate:
    """Pickles fine in the client; its ``__setstate__`` raises in the worker."""

    def __init__(self, value: int = 1):
        self.value = value

    def __getstate__(self) -> dict[str, Any]:
        return {"value": self.value, "pid": os.getpid()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if state["pid"] != os.getpid():
            raise RuntimeError("setstate refuses to run in another process")
        self.__dict__.update(state)


class Unpicklable:
    """Cannot be pickled at all."""

    def __reduce__(self) -> Any:
        raise pickle.PicklingError("Unpicklable refuses to be pickled")


def make_unpicklable() -> Unpicklable:
    return Unpicklable()


def return_lock() -> Any:
    import threading

    return threading.Lock()


def nested(depth: int) -> list[Any]:
    """A list in a list ... ``depth`` levels deep: too deep for a pickler
    at 100_000."""
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def big_list_within_memory_limit(extra: int) -> list[int]:
    """A list whose pickle does not fit in a memory limit (``RLIMIT_AS``)
    of ``extra`` bytes above what the worker uses now; the limit is lifted
    by ``lift_memory_limit``."""
    import resource

    items = list(range(4_000_000))
    with open("/proc/self/statm") as f:
        size = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    resource.setrlimit(resource.RLIMIT_AS, (size + extra, hard))
    return items


def lift_memory_limit() -> int:
    import resource

    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
    return os.getpid()


class UnpicklableError(Exception):
    """An exception that cannot be pickled (it holds a lock)."""

    def __init__(self, msg: str):
        import threading

        super().__init__(msg)
        self.lock = threading.Lock()


def raise_unpicklable_error() -> None:
    raise UnpicklableError("holds a lock")


class DiskError(Exception):
    """An exception whose pickle does not load as pickle makes it: it passes
    ``__init__`` other arguments than its own to ``Exception``."""

    def __init__(self, code: int, path: str):
        super().__init__(f"code {code} on {path}")
        self.code, self.path = code, path


def raise_disk_error() -> None:
    raise DiskError(28, "/data")


def disk_errors(n: int) -> list[DiskError]:
    """``n`` ``DiskError`` objects, returned (as code that collects errors does)."""
    return [DiskError(i, f"/data/{i}") for i in range(n)]


def disk_error_fields(error: DiskError) -> tuple[str, int, str, str]:
    """What this worker got as ``error``: its class's name, code, path and text."""
    return type(error).__name__, error.code, error.path, str(error)


def wrapped_disk_error_at(x: int, bad: int) -> int:
    """``x``, but for ``bad`` a ``RuntimeError`` that holds a ``DiskError``
    in its ``args`` (in an ``ExceptionGroup`` where there is one)."""
    if x == bad:
        if sys.version_info >= (3, 11):
            raise ExceptionGroup("several", [DiskError(28, "/data"), ValueError(x)])  # noqa: F821
        raise RuntimeError("wrapped", DiskError(28, "/data"))
    return x


class NewArgsError(Exception):
    """An exception that pickles, but that cannot be rebuilt from its pickle
    in any way: its ``__new__`` takes other arguments than its ``args``."""

    def __new__(cls, code: int, path: str) -> NewArgsError:
        return super().__new__(cls, f"code {code} on {path}")

    def __init__(self, code: int, path: str):
        super().__init__(f"code {code} on {path}")


def raise_new_args_error() -> None:
    raise NewArgsError(28, "/data")


def new_args_error_at(x: int, bad: int) -> int:
    """``x``, but ``NewArgsError`` for ``bad``."""
    if x == bad:
        raise NewArgsError(28, "/data")
    return x


async def async_new_args_error_at(x: int, bad: int) -> int:
    """``x``, awaited, but ``NewArgsError`` for ``bad``."""
    await asyncio.sleep(0)
    return new_args_error_at(x, bad)


def _worker_only() -> Any:
    """The module ``worker_only``, which this worker makes and the client
    cannot import (as a package installed on a remote host only)."""
    import types

    module = sys.modules.get("worker_only")
    if module is None:
        module = sys.modules["worker_only"] = types.ModuleType("worker_only")
        module.Thing = type("Thing", (), {"__module__": "worker_only"})  # type: ignore[attr-defined]
        module.WorkerOnlyError = type(  # type: ignore[attr-defined]
            "WorkerOnlyError", (Exception,), {"__module__": "worker_only"}
        )
    return module


def make_run_time_point() -> None:
    """Make ``RunTimePoint`` on this module at run time, as a script makes a
    class on an importable module (deap's ``creator.create``, a namedtuple
    with ``module=``); the initializer that makes it in the workers too."""
    import collections

    globals()["RunTimePoint"] = collections.namedtuple("RunTimePoint", "x y", module=__name__)


def run_time_point_of_the_worker() -> Any:
    """A ``RunTimePoint`` that this worker makes on this module at run time."""
    make_run_time_point()
    return globals()["RunTimePoint"](1, 2)


def of_a_worker_only_module() -> Any:
    """An object of a class of the module ``worker_only``."""
    return _worker_only().Thing()


def raise_worker_only_error() -> None:
    """Raise an exception of a class of the module ``worker_only``."""
    raise _worker_only().WorkerOnlyError("disk full")


class ClientRefusesState(Exception):
    """An exception whose ``__setstate__`` raises outside a worker: it loads
    in the worker that raised it, and not in the client."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        from distex_zmq.process_role import in_worker

        if not in_worker():
            raise RuntimeError("this state loads in workers only")
        self.__dict__.update(state)


def raise_unloadable_in_client_at(i: int, k: int, how: str) -> int:
    """``i``, or at ``k`` raise an exception that does not unpickle in the
    client: ``how`` "attribute" (a ``ValueError`` holding an object of the
    module ``worker_only``) or "state" (a ``ClientRefusesState``)."""
    if i != k:
        return i
    if how == "attribute":
        error = ValueError(f"bad response at {i}")
        error.response = _worker_only().Thing()  # type: ignore[attr-defined]
        raise error
    refused = ClientRefusesState(f"bad key 'timeout' at {i}")
    refused.detail = i  # type: ignore[attr-defined]
    raise refused


def disk_error_at(x: int, bad: int) -> int:
    """``x``, but ``DiskError`` for ``bad``."""
    if x == bad:
        raise DiskError(28, "/data")
    return x


async def async_disk_error_at(x: int, bad: int) -> int:
    """``x``, awaited, but ``DiskError`` for ``bad``."""
    await asyncio.sleep(0)
    return disk_error_at(x, bad)


def stop_at(x: int, bad: int) -> int:
    """``x``, but ``StopIteration`` for ``bad``."""
    if x == bad:
        raise StopIteration(x)
    return x


def apply(func: Any, *args: Any) -> Any:
    return func(*args)


def exit_hard(code: int = 7) -> None:
    os._exit(code)


def stderr_then_exit(text: str, code: int) -> None:
    data = text.encode()
    while data:
        data = data[os.write(2, data) :]
    os._exit(code)


def env_var(name: str) -> str | None:
    return os.environ.get(name)


def touch(path: str, value: Any = None) -> Any:
    """Leave a trace that this task ran (to prove that a cancelled one did not)."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    return value


def touch_later(delay: float, path: str) -> None:
    """``touch(path)`` after ``delay`` seconds."""
    time.sleep(delay)
    touch(path)


class CountingCallable:
    """A callable whose pickling is counted in the process that pickles it."""

    pickles = 0

    def __reduce__(self) -> Any:
        type(self).pickles += 1
        return (CountingCallable, ())

    def __call__(self, x: int) -> int:
        return 2 * x


async def _double_soon(x: int) -> int:
    await asyncio.sleep(0.001)
    return 2 * x


def double_by_asyncio_run(x: int) -> int:
    """A sync function over async code, as libraries with a sync API write them."""
    return asyncio.run(_double_soon(x))


def double_on_a_new_loop(x: int) -> int:
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(_double_soon(x))
    finally:
        loop.close()


def async_square_later(x: int) -> Any:
    """A sync function that returns a coroutine: the worker awaits it."""
    return async_square(x)


def worker_event_loop_is_running() -> bool:
    """Whether an event loop runs in the thread of a sync task."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def count_up(n: int) -> Any:
    """A generator function."""
    yield from range(n)


async def count_up_async(n: int) -> Any:
    """An async generator function."""
    for i in range(n):
        yield i


def signal_handler_by_asyncio_run() -> bool:
    """A sync function whose loop adds and removes a signal handler, as a
    server's ``run`` does (asyncio's loop then clears the wakeup fd)."""

    async def main() -> bool:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR2, lambda: None)
        await asyncio.sleep(0)
        return loop.remove_signal_handler(signal.SIGUSR2)

    return asyncio.run(main())


async def signal_handled_by_worker_loop(ready: str | None = None) -> bool:
    """Whether a signal handler added to the worker's loop runs when the
    worker gets SIGUSR1: sent here, or by another task once the file
    ``ready`` exists."""
    loop = asyncio.get_running_loop()
    handled = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, handled.set)
    try:
        if ready is None:
            os.kill(os.getpid(), signal.SIGUSR1)
        else:
            with open(ready, "w"):
                pass
        try:
            await asyncio.wait_for(handled.wait(), 10)
        except asyncio.TimeoutError:
            return False
        return True
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)


def signal_worker_when_exists(path: str) -> int:
    """Send SIGUSR1 to this worker once ``path`` exists, then sleep a little
    (a sync task during which the signal comes)."""
    deadline = time.monotonic() + 10
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGUSR1)
    time.sleep(0.1)
    return os.getpid()


#: the signals that ``keep_signal_handler``'s handler heard, in this worker
_heard_signals: list[int] = []


async def keep_signal_handler() -> None:
    """Add a handler of SIGUSR1 to the worker's loop, which stays after the
    task ends (``heard_signal`` removes it)."""
    _heard_signals.clear()
    asyncio.get_running_loop().add_signal_handler(
        signal.SIGUSR1, _heard_signals.append, signal.SIGUSR1
    )


def signal_self() -> int:
    """Send SIGUSR1 to this worker (a sync task during which the signal comes)."""
    os.kill(os.getpid(), signal.SIGUSR1)
    return os.getpid()


async def heard_signal(timeout: float) -> bool:
    """Whether ``keep_signal_handler``'s handler heard SIGUSR1 within
    ``timeout`` seconds; removes the handler."""
    deadline = time.monotonic() + timeout
    while not _heard_signals and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    asyncio.get_running_loop().remove_signal_handler(signal.SIGUSR1)
    return bool(_heard_signals)


async def async_sleep_return(delay: float, value: Any = None) -> Any:
    await asyncio.sleep(delay)
    return value


def interval(delay: float) -> tuple[int, float, float]:
    """Sleep; return (pid, start, end) in wall-clock time, comparable across processes."""
    start = time.time()
    time.sleep(delay)
    return os.getpid(), start, time.time()


#: coroutines of concurrency_probe running in this worker right now, and the most seen
_PROBE = {"now": 0, "max": 0}


async def concurrency_probe(delay: float, value: Any = None) -> tuple[Any, int]:
    """Sleep; return the value and how many probes ran at once in this worker at most."""
    _PROBE["now"] += 1
    _PROBE["max"] = max(_PROBE["max"], _PROBE["now"])
    try:
        await asyncio.sleep(delay)
    finally:
        _PROBE["now"] -= 1
    return value, _PROBE["max"]


def note_pid_then_sleep(path: str, delay: float) -> int:
    """Write this worker's pid to ``path``, then sleep. The file appears
    whole (written aside, then renamed): a test that waits for it to exist
    reads the pid, never an empty file."""
    with open(path + ".part", "w") as f:
        f.write(str(os.getpid()))
    os.replace(path + ".part", path)
    time.sleep(delay)
    return os.getpid()


def note_sigterm_then_sleep(path: str, delay: float) -> int:
    """Sleep ``delay`` seconds, through SIGTERMs: each leaves a trace in
    ``path`` (see ``touch``) and the sleep goes on, so that only SIGKILL
    ends the task early. Its start leaves a trace in ``path + ".started"``."""
    signal.signal(signal.SIGTERM, lambda *_: touch(path))
    touch(path + ".started")
    end = time.monotonic() + delay
    while time.monotonic() < end:
        time.sleep(0.05)
    return os.getpid()


def hostname_after(delay: float) -> str:
    """The host name of the worker, after ``delay`` seconds."""
    time.sleep(delay)
    return socket.gethostname()


def host_and_value(delay: float, value: Any) -> tuple[str, Any]:
    """``(host name of the worker, value)`` after ``delay`` seconds."""
    time.sleep(delay)
    return socket.gethostname(), value


class Scaler:
    """An object whose method depends on its state."""

    def __init__(self, factor: int, payload: bytes = b""):
        self.factor = factor
        self.payload = payload

    def scale(self, x: int) -> int:
        return self.factor * x


class Unhashable:
    """A callable that cannot be a dict key (``__eq__`` without ``__hash__``)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Unhashable)

    def __call__(self, x: int) -> int:
        return x + 1


def make_scaler(factor: int) -> Scaler:
    """A result that supports weak references."""
    return Scaler(factor)


def worker_function_count() -> int:
    """How many functions the worker that runs this holds in its cache."""
    import gc

    from distex_zmq.worker.worker import Worker

    (worker,) = [o for o in gc.get_objects() if isinstance(o, Worker)]
    return len(worker.runner.functions)


def nap_pid(delay: float) -> int:
    """Sleep ``delay`` seconds; return the worker's pid."""
    time.sleep(delay)
    return os.getpid()


def meet(path: str, role: str) -> tuple[str, int, bool]:
    """Inputs that meet: ``"come"`` makes the file ``path``, ``"wait"``
    waits for it (20 s at most), ``"pass"`` does nothing; return ``(role,
    this worker's pid, whether the file exists)``."""
    if role == "come":
        open(path, "w").close()
    deadline = time.monotonic() + (20 if role == "wait" else 0)
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.005)
    return role, os.getpid(), os.path.exists(path)


def pid_when_exists(path: str | None) -> int:
    """This worker's pid, once the file ``path`` exists (None: at once; it
    waits 60 s at most)."""
    deadline = time.monotonic() + 60
    while path is not None and not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.getpid()


def bytes_when_exists(path: str | None, size: int) -> bytes:
    """``size`` bytes, once the file ``path`` exists (None: at once; it
    waits 60 s at most)."""
    pid_when_exists(path)
    return b"x" * size


def sleep_touch(path: str, delay: float, value: Any = None) -> Any:
    """Sleep, then leave a trace in ``path`` that this task ran."""
    time.sleep(delay)
    return touch(path, value)


def touch_then_sleep(path: str, delay: float, value: Any = None) -> Any:
    """Leave a trace in ``path`` as the task starts, then sleep: each run counts."""
    touch(path)
    time.sleep(delay)
    return value


def traces(path: str) -> int:
    """How many tasks left a trace in ``path`` (see ``touch``)."""
    try:
        with open(path) as f:
            return len(f.read().splitlines())
    except FileNotFoundError:
        return 0


async def async_fail_on(x: int, bad: int = 2) -> int:
    await asyncio.sleep(0.001)
    if x == bad:
        raise ValueError(f"async failure {x}")
    return x


def capture(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The arguments the task got, as it got them."""
    return args, kwargs


def slow_start_if(path: str, delay: float) -> None:
    """An initializer that takes ``delay`` seconds once ``path`` exists: the
    workers started after that (replacements) are slow to be ready."""
    if os.path.exists(path):
        time.sleep(delay)


def run_interval(delay: float) -> tuple[float, float]:
    """Sleep ``delay`` seconds; return when it started and ended (``time.time``,
    the same clock in every process of a host)."""
    start = time.time()
    time.sleep(delay)
    return start, time.time()


def pid_and_value(delay: float, value: Any) -> tuple[int, Any]:
    """``(pid of the worker, value)`` after ``delay`` seconds."""
    time.sleep(delay)
    return os.getpid(), value


def init_fail_if_exists(path: str) -> None:
    """An initializer that raises once ``path`` exists."""
    if os.path.exists(path):
        raise RuntimeError(f"{path} exists")


def init_fail_nth(directory: str, nth: int, delay: float) -> None:
    """An initializer: the ``nth`` worker to run it (numbered by the files
    it makes in ``directory``) raises after ``delay`` seconds; the others
    return at once."""
    number = 1
    while True:
        try:
            os.close(os.open(os.path.join(directory, f"worker-{number}"), os.O_CREAT | os.O_EXCL))
            break
        except FileExistsError:
            number += 1
    if number == nth:
        time.sleep(delay)
        raise RuntimeError(f"worker {number} fails to start")


def init_fail_where(name: str, delay: float = 0.0) -> None:
    """An initializer that raises after ``delay`` seconds where the
    environment has ``name`` (the workers of a spawner started with it)."""
    if name in os.environ:
        time.sleep(delay)
        raise RuntimeError(f"{name} is set here")


def run_once_noted(directory: str, i: int, seconds: float) -> int:
    """Note a run of input ``i`` (a file in ``directory``), sleep; ``i``."""
    with open(os.path.join(directory, f"run-{i}-{os.getpid()}-{time.monotonic_ns()}"), "w"):
        pass
    time.sleep(seconds)
    return i


def hold_exit_until(path: str) -> int:
    """Make this worker's exit wait (for at most 60 s) until ``path`` exists,
    after it touches ``path.<pid>.exiting``; return its pid."""
    import atexit

    def hold() -> None:
        open(f"{path}.{os.getpid()}.exiting", "w").close()
        deadline = time.monotonic() + 60
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.02)

    atexit.register(hold)
    return os.getpid()


class BreaksOnLoad:
    """Pickles, and raises an AttributeError of its own as it is unpickled."""

    def __reduce__(self) -> Any:
        return _raise_attribute_error, ("BreaksOnLoad has no field 'size'",)


def _raise_attribute_error(text: str) -> None:
    raise AttributeError(text)


def close_std(name: str) -> str:
    """Close ``sys.stdout`` or ``sys.stderr`` (``name``), as some tasks do."""
    getattr(sys, name).close()
    return name


def slow_lock_at(k: int, i: int) -> Any:
    """``i`` after 10 ms, or at ``k`` a lock, which standard pickle refuses:
    a chunk of these sends its results in pieces (``CHUNK_BUDGET_US``)."""
    time.sleep(0.01)
    if i == k:
        return threading.Lock()
    return i


class LoadsNowhere:
    """Pickles in a worker; unpickling it (in the client) raises in its
    reconstructor, as an object whose ``__reduce__`` or ``__setstate__``
    needs what only the worker has."""

    def __init__(self, i: int):
        self.i = i

    def __reduce__(self) -> tuple[Any, ...]:
        return _refuse_to_load, (self.i,)


def _refuse_to_load(i: int) -> Any:
    raise ValueError(f"LoadsNowhere({i}) needs what only the worker has")


def unloadable_at(k: int, i: int) -> Any:
    """``i``, or at ``k`` a ``LoadsNowhere``, which does not unpickle."""
    return LoadsNowhere(i) if i == k else i


def slow_unloadable_at(k: int, i: int) -> Any:
    """``unloadable_at`` after 10 ms: a chunk of these sends its results in
    pieces (``CHUNK_BUDGET_US``)."""
    time.sleep(0.01)
    return unloadable_at(k, i)


def worker_module_at(k: int, i: int) -> Any:
    """``i``, or at ``k`` an object of the module ``worker_only``, which the
    client cannot import."""
    return of_a_worker_only_module() if i == k else i


def worker_only_error_at(k: int, i: int) -> int:
    """``i``, or at ``k`` raise an exception of the module ``worker_only``,
    which the client cannot import."""
    if i == k:
        raise_worker_only_error()
    return i


def leave_thread_running(seconds: float) -> int:
    """Start a thread that is not a daemon and sleeps ``seconds``; return
    the worker's pid at once, the thread still running."""
    threading.Thread(target=time.sleep, args=(seconds,), name="left running").start()
    return os.getpid()


def hang_at_exit(*_: object) -> int:
    """Register an exit handler that ignores SIGTERM and never returns (as
    one stuck in C would); return the worker's pid. The worker cannot exit
    by itself after this."""

    def forever() -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            time.sleep(3600)

    atexit.register(forever)
    return os.getpid()


def pid_once_exists(path: str | None) -> int:
    """This worker's pid, at once (``path`` None) or once the file ``path``
    exists (30 s at most)."""
    deadline = time.monotonic() + 30
    while path is not None and not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.005)
    return os.getpid()


def run_counted(directory: str, i: int, wait_for: int) -> tuple[int, bool]:
    """Append a line to ``directory/i`` (one per run of input ``i``); with
    ``wait_for`` > 0, then wait until ``wait_for`` other inputs ran (30 s at
    most). Return ``i`` and whether they all ran meanwhile."""
    with open(os.path.join(directory, str(i)), "a") as f:
        f.write("ran\n")
    deadline = time.monotonic() + 30
    while wait_for and time.monotonic() < deadline:
        if len(os.listdir(directory)) > wait_for:
            return i, True
        time.sleep(0.005)
    return i, not wait_for


def pid_and_parent() -> tuple[int, int]:
    """This worker's pid and its parent's (its launcher: an agent, a spawner)."""
    return os.getpid(), os.getppid()


def start_sleeper(seconds: float) -> int:
    """Start ``sleep seconds`` and leave it running; return its pid."""
    import subprocess

    return subprocess.Popen(["sleep", str(seconds)], stdout=subprocess.DEVNULL).pid


def has_children() -> bool:
    """Whether this process has a child (a keeper must not be one)."""
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return False
    return True
