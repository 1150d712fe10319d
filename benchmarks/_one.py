"""Run ONE (pool, workload) measurement in this fresh interpreter.

Started by ``run.py`` as ``python benchmarks/_one.py --pool P --workload W``
with ``benchmarks/`` on ``PYTHONPATH``. Prints a single line
``RESULT {json}`` on stdout before it shuts the pool down; any exception
propagates (traceback on stderr, non-zero exit status) and ``run.py`` reports
it as an error.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import itertools
import json
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractContextManager
from itertools import repeat
from typing import Any

import tasks
from _spec import NUM_WORKERS, PAYLOAD_BYTES, POOLS, WORKLOADS, Workload

#: Number of warm-up tasks run before any timed measurement but start-up.
WARM_UP_TASKS = 4 * NUM_WORKERS
#: Seconds that shutdown and interpreter exit may take after the result.
EXIT_GRACE_S = 30.0

OnResult = Callable[[Any], None]


class Client(ABC):
    """The operations the workloads need, on one pool or executor."""

    #: Per-workload footnotes on how this client deviates from the row title.
    notes: dict[str, str]
    #: The pool's name in ``_spec.POOLS``.
    kind = ""

    @abstractmethod
    def open(self, sync: bool, qsize: int | None = None) -> None:
        """Create the pool (with ``qsize``, where it has one) and wait until
        its workers are up."""

    @abstractmethod
    def warm_up(self, func: Callable[..., Any], arg: Any) -> None:
        """Run a few tasks so that workers are up and ``func`` is cached."""

    @abstractmethod
    def map_consume(
        self,
        func: Callable[..., Any],
        items: Iterable[Any],
        chunksize: int | None,
        on_result: OnResult,
    ) -> None:
        """Map ``func`` (async API where there is one) feeding ``on_result``."""

    @abstractmethod
    def sync_map_consume(
        self, func: Callable[..., Any], items: Iterable[Any], on_result: OnResult
    ) -> None:
        """Map with the synchronous API at its default settings."""

    @abstractmethod
    def submit_all(self, func: Callable[..., Any], args: Iterable[Any]) -> list[Any]:
        """Submit one task per argument, then wait for all of them."""

    @abstractmethod
    def latencies(self, func: Callable[..., Any], args: Iterable[Any]) -> list[float]:
        """Run tasks one at a time (async API where there is one, unless the
        pool was opened ``sync``); return each round trip in seconds."""

    @abstractmethod
    def startup(self, func: Callable[[], Any]) -> float:
        """Create the pool and run ``func``; return seconds to its result."""

    @abstractmethod
    def close(self) -> None:
        """Shut the pool down (no-op if it was never created)."""


class AsyncPoolClient(Client):
    """distex or distex_zmq, with the client on a uvloop event loop.

    Async workloads run as coroutines on that loop (pool created inside it);
    ``sync`` workloads create the pool from plain code with the loop set as
    the current (not running) loop, as a synchronous user of distex would.
    """

    def __init__(self, kind: str) -> None:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.kind = kind
        self.pool_class = _import_pool_class(kind)
        self.pool: Any = None
        self.sync = False
        self.notes: dict[str, str] = {}
        if kind == "distex":
            self.notes = {
                "submit": "`asyncio.gather(*(pool.run_async(g, i) ...))`"
                " on its loop; its `submit` futures only complete while that"
                " loop runs."
            }

    def _run(self, awaitable: Awaitable[Any]) -> Any:
        """Run a coroutine to completion on the client loop."""
        return self.loop.run_until_complete(awaitable)

    async def _create(self, kwargs: dict[str, Any]) -> Any:
        """Create the pool from inside the running loop and wait for it."""
        pool = self.pool_class(NUM_WORKERS, **kwargs)
        await pool
        return pool

    def open(self, sync: bool, qsize: int | None = None) -> None:
        self.sync = sync
        kwargs = {} if qsize is None else {"qsize": qsize}
        if sync:
            self.pool = self.pool_class(NUM_WORKERS, **kwargs)
        else:
            self.pool = self._run(self._create(kwargs))

    def warm_up(self, func: Callable[..., Any], arg: Any) -> None:
        if self.sync:
            list(self.pool.map(func, repeat(arg, WARM_UP_TASKS)))
        else:
            runs = [self.pool.run_async(func, arg) for _ in range(WARM_UP_TASKS)]
            self._run(asyncio.gather(*runs))

    async def _map(
        self,
        func: Callable[..., Any],
        items: Iterable[Any],
        chunksize: int | None,
        on_result: OnResult,
    ) -> None:
        """Consume ``pool.map_async`` into ``on_result``."""
        kwargs = {} if chunksize is None else {"chunksize": chunksize}
        async for result in self.pool.map_async(func, items, **kwargs):
            on_result(result)

    def map_consume(
        self,
        func: Callable[..., Any],
        items: Iterable[Any],
        chunksize: int | None,
        on_result: OnResult,
    ) -> None:
        self._run(self._map(func, items, chunksize, on_result))

    def sync_map_consume(
        self, func: Callable[..., Any], items: Iterable[Any], on_result: OnResult
    ) -> None:
        for result in self.pool.map(func, items):
            on_result(result)

    def submit_all(self, func: Callable[..., Any], args: Iterable[Any]) -> list[Any]:
        if self.kind == "distex":
            runs = [self.pool.run_async(func, arg) for arg in args]
            return self._run(asyncio.gather(*runs))
        futures = [self.pool.submit(func, arg) for arg in args]
        concurrent.futures.wait(futures)
        return [future.result() for future in futures]

    async def _latencies(self, func: Callable[..., Any], args: Iterable[Any]) -> list[float]:
        """Await one ``run_async`` after the other on the loop, timing each."""
        clock = time.perf_counter
        run_async = self.pool.run_async
        out = []
        for arg in args:
            t0 = clock()
            await run_async(func, arg)
            out.append(clock() - t0)
        return out

    def latencies(self, func: Callable[..., Any], args: Iterable[Any]) -> list[float]:
        if not self.sync:
            return self._run(self._latencies(func, args))
        # sync: the pool's own blocking ``run`` from plain code, no running loop
        clock = time.perf_counter
        run = self.pool.run
        out = []
        for arg in args:
            t0 = clock()
            run(func, arg)
            out.append(clock() - t0)
        return out

    async def _startup(self, func: Callable[[], Any]) -> float:
        """Time ``Pool(n)`` to the first ``run_async`` result, on the loop."""
        t0 = time.perf_counter()
        self.pool = self.pool_class(NUM_WORKERS)
        await self.pool.run_async(func)
        return time.perf_counter() - t0

    def startup(self, func: Callable[[], Any]) -> float:
        return self._run(self._startup(func))

    def close(self) -> None:
        if self.pool is None:
            return
        shutdown_async = getattr(self.pool, "shutdown_async", None)
        if shutdown_async is not None and not self.sync:
            self._run(shutdown_async())
        else:
            self.pool.shutdown()
        self.pool = None


class ExecutorClient(Client):
    """``concurrent.futures.ProcessPoolExecutor`` or ``loky``: sync API only."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.executor_class = _import_executor_class(kind)
        self.executor: concurrent.futures.Executor | None = None
        sync_map = "no async API: sync `executor.map` (same chunksize)."
        self.notes = {
            "map_cs1": sync_map,
            "map_cs1_q16": "no qsize: sync `executor.map` with chunksize=1.",
            "map_cs100": sync_map,
            "bytes_arg": sync_map,
            "echo": sync_map,
            "cpu": sync_map,
            "latency": "`executor.submit(g, i).result()` one after the other.",
            "latency_sync": "`executor.submit(g, i).result()` one after the other.",
        }
        if kind == "process":
            self.notes["startup"] = (
                "fork start method (Linux default): no fresh interpreter, nothing to import."
            )

    def _new(self) -> concurrent.futures.Executor:
        """Create a new executor with ``NUM_WORKERS`` processes."""
        return self.executor_class(max_workers=NUM_WORKERS)

    @property
    def ex(self) -> concurrent.futures.Executor:
        """The open executor."""
        assert self.executor is not None, "open() first"
        return self.executor

    def open(self, sync: bool, qsize: int | None = None) -> None:
        self.executor = self._new()

    def warm_up(self, func: Callable[..., Any], arg: Any) -> None:
        list(self.ex.map(func, repeat(arg, WARM_UP_TASKS)))

    def map_consume(
        self,
        func: Callable[..., Any],
        items: Iterable[Any],
        chunksize: int | None,
        on_result: OnResult,
    ) -> None:
        for result in self.ex.map(func, items, chunksize=chunksize or 1):
            on_result(result)

    def sync_map_consume(
        self, func: Callable[..., Any], items: Iterable[Any], on_result: OnResult
    ) -> None:
        for result in self.ex.map(func, items):
            on_result(result)

    def submit_all(self, func: Callable[..., Any], args: Iterable[Any]) -> list[Any]:
        futures = [self.ex.submit(func, arg) for arg in args]
        concurrent.futures.wait(futures)
        return [future.result() for future in futures]

    def latencies(self, func: Callable[..., Any], args: Iterable[Any]) -> list[float]:
        clock = time.perf_counter
        submit = self.ex.submit
        out = []
        for arg in args:
            t0 = clock()
            submit(func, arg).result()
            out.append(clock() - t0)
        return out

    def startup(self, func: Callable[[], Any]) -> float:
        t0 = time.perf_counter()
        self.executor = self._new()
        self.executor.submit(func).result()
        return time.perf_counter() - t0

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True)
            self.executor = None


class RawZmqClient(Client):
    """Plain pyzmq: a ROUTER here, ``NUM_WORKERS`` echo processes with a
    DEALER each (``_rawzmq_worker.py``), over ipc as distex_zmq's local
    workers. It runs no functions: the ``map_cs1`` rows compute ``g`` on
    decimal strings, the echo row sends bytes back (which the client turns
    into ``bytes``, one copy), and other rows raise."""

    def __init__(self) -> None:
        import zmq

        self.zmq = zmq
        self.notes = {
            "map_cs1": "g on decimal strings, no pickling; a message per task, 2 in flight"
            " per worker.",
            "map_cs1_q16": "as chunksize=1, with 16 in flight per worker.",
            "map_cs100": "a pickled tuple of 100 ints per message, g in a plain loop, the"
            " list of results pickled back; 2 in flight per worker.",
            "latency": "plain ROUTER/DEALER ipc round trip of an 8-byte frame, no pickling.",
            "latency_sync": "plain ROUTER/DEALER ipc round trip of an 8-byte frame, no pickling.",
            "echo": "the workers send the frames back unpickled, without a copy; the client"
            " copies each one into `bytes` on arrival (as a pool owes its caller); 2 in"
            " flight per worker.",
        }
        #: messages in flight per worker, as qsize
        self.in_flight = 2
        self.ctx: Any = None
        self.sock: Any = None
        self.procs: list[subprocess.Popen[bytes]] = []
        self.workers: list[bytes] = []
        self.tmpdir = ""

    def open(self, sync: bool, qsize: int | None = None) -> None:
        self.in_flight = qsize or 2
        zmq = self.zmq
        self.tmpdir = tempfile.mkdtemp(prefix="rawzmq-")
        endpoint = f"ipc://{self.tmpdir}/router"
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_rawzmq_worker.py")
        self.procs = [
            subprocess.Popen([sys.executable, script, endpoint]) for _ in range(NUM_WORKERS)
        ]
        self.workers = [self.sock.recv_multipart()[0] for _ in range(NUM_WORKERS)]

    def warm_up(self, func: Callable[..., Any], arg: Any) -> None:
        for _ in range(WARM_UP_TASKS // NUM_WORKERS):
            for worker in self.workers:
                self.sock.send_multipart([worker, b"warm-up"])
            for _ in self.workers:
                self.sock.recv_multipart()

    def latencies(self, func: Callable[..., Any], args: Iterable[Any]) -> list[float]:
        clock = time.perf_counter
        sock, worker = self.sock, self.workers[0]
        out = []
        for _ in args:
            t0 = clock()
            sock.send_multipart([worker, b"12345678"])
            sock.recv_multipart(copy=False)
            out.append(clock() - t0)
        return out

    def map_consume(
        self,
        func: Callable[..., Any],
        items: Iterable[Any],
        chunksize: int | None,
        on_result: OnResult,
    ) -> None:
        sock = self.sock
        free = [w for w in self.workers for _ in range(self.in_flight)]
        busy = 0
        it = iter(items)
        first = next(it, None)
        # ints: the g rows, as decimal strings; anything else goes as it is
        numbers = isinstance(first, int)

        def take() -> bytes:
            worker, frame = sock.recv_multipart(copy=False)
            # the echo row: ``frame.bytes`` is the one copy into ``bytes`` that a
            # pool owes its caller, so the floor hands back what a pool does
            on_result(int(frame.bytes) if numbers else frame.bytes)
            return bytes(worker.bytes)

        def take_chunk() -> bytes:
            worker, frame = sock.recv_multipart(copy=False)
            for result in pickle.loads(frame.buffer):
                on_result(result)
            return bytes(worker.bytes)

        items = itertools.chain([first], it) if first is not None else iter(())
        receive = take
        if chunksize and chunksize > 1:
            receive = take_chunk
            dumps, protocol = pickle.dumps, pickle.HIGHEST_PROTOCOL
            messages: Iterable[list[Any]] = (
                [b"chunk", dumps(chunk, protocol)]
                for chunk in iter(lambda: tuple(itertools.islice(items, chunksize)), ())
            )
        else:
            messages = ([b"+%d" % item if numbers else item] for item in items)
        for message in messages:
            if not free:
                free.append(receive())
                busy -= 1
            sock.send_multipart([free.pop(), *message], copy=False)
            busy += 1
        for _ in range(busy):
            receive()

    def sync_map_consume(
        self, func: Callable[..., Any], items: Iterable[Any], on_result: OnResult
    ) -> None:
        raise NotImplementedError("pyzmq runs no functions")

    def submit_all(self, func: Callable[..., Any], args: Iterable[Any]) -> list[Any]:
        raise NotImplementedError("pyzmq runs no functions")

    def startup(self, func: Callable[[], Any]) -> float:
        raise NotImplementedError("pyzmq runs no functions")

    def close(self) -> None:
        if self.sock is None:
            return
        for worker in self.workers:
            self.sock.send_multipart([worker, b"stop"])
        for proc in self.procs:
            proc.wait(timeout=10)
        self.sock.close()
        self.ctx.term()
        self.sock = None
        shutil.rmtree(self.tmpdir, ignore_errors=True)


def _import_pool_class(kind: str) -> type:
    """Import ``Pool`` from distex or distex_zmq."""
    if kind == "distex":
        from distex import Pool
    else:
        from distex_zmq import Pool
    return Pool


def _import_executor_class(kind: str) -> Callable[..., concurrent.futures.Executor]:
    """Import the executor class of ``process`` or ``loky``."""
    if kind == "loky":
        import loky

        return loky.ProcessPoolExecutor
    return concurrent.futures.ProcessPoolExecutor


def make_client(pool: str) -> Client:
    """Return the client for a pool name of ``_spec.POOLS``."""
    if pool in ("distex", "distex_zmq"):
        return AsyncPoolClient(pool)
    if pool == "pyzmq":
        return RawZmqClient()
    return ExecutorClient(pool)


# ----------------------------------------------------------------- workloads


class Collector:
    """Result sink that counts results and sums them (or their lengths)."""

    def __init__(self, measure: Callable[[Any], int] = int) -> None:
        self.measure = measure
        self.count = 0
        self.total = 0

    def __call__(self, result: Any) -> None:
        self.count += 1
        self.total += self.measure(result)

    def expect(self, count: int, total: int) -> None:
        """Raise if the results were not the expected ones."""
        if (self.count, self.total) != (count, total):
            raise AssertionError(
                f"wrong results: got count={self.count} total={self.total},"
                f" expected count={count} total={total}"
            )


def _g_total(n: int) -> int:
    """Sum of ``g(i)`` over ``range(n)``."""
    return n * (n - 1) // 2 + 2 * n


#: Entered around the timed part of every workload that ``cpu_threads.py``
#: measures; it swaps in a probe that reads every thread's CPU time before
#: and after. Here it does nothing.
timed_section: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext


def _timed(func: Callable[[], object]) -> float:
    """Call ``func`` and return how many seconds it took."""
    with timed_section():
        t0 = time.perf_counter()
        func()
        return time.perf_counter() - t0


def _map_rate(client: Client, n: int, chunksize: int | None) -> float:
    """Tasks/s of mapping ``g`` over ``range(n)`` at ``chunksize`` (None: the pool's default)."""
    sink = Collector()
    seconds = _timed(lambda: client.map_consume(tasks.g, range(n), chunksize, sink))
    sink.expect(n, _g_total(n))
    return n / seconds


def wl_map_default(client: Client, n: int) -> dict[str, float]:
    """``map_async`` over ``g`` at the pool's default settings."""
    return {"map_default": _map_rate(client, n, None)}


def wl_map_cs1(client: Client, n: int) -> dict[str, float]:
    """``map_async`` over ``g`` with chunksize 1."""
    return {"map_cs1": _map_rate(client, n, 1)}


def wl_map_cs1_q16(client: Client, n: int) -> dict[str, float]:
    """``map_async`` over ``g`` with chunksize 1 on a pool with qsize 16."""
    return {"map_cs1_q16": _map_rate(client, n, 1)}


def wl_map_cs100(client: Client, n: int) -> dict[str, float]:
    """``map_async`` over ``g`` with chunksize 100."""
    return {"map_cs100": _map_rate(client, n, 100)}


def wl_sync_map(client: Client, n: int) -> dict[str, float]:
    """Synchronous ``map`` over ``g`` at its default settings."""
    sink = Collector()
    seconds = _timed(lambda: client.sync_map_consume(tasks.g, range(n), sink))
    sink.expect(n, _g_total(n))
    return {"sync_map": n / seconds}


#: Inputs of each map of ``small_maps``: a generation of an optimizer.
SMALL_MAP = 60


def wl_small_maps(client: Client, n: int) -> dict[str, float]:
    """``n`` synchronous maps of ``g`` over ``SMALL_MAP`` inputs each, one
    after the other, as an optimizer maps each generation (scipy's
    ``workers=pool.map``); tasks/s over all of them."""
    sink = Collector()

    def maps() -> None:
        for _ in range(n):
            client.sync_map_consume(tasks.g, range(SMALL_MAP), sink)

    seconds = _timed(maps)
    sink.expect(n * SMALL_MAP, n * _g_total(SMALL_MAP))
    return {"small_maps": n * SMALL_MAP / seconds}


def wl_submit(client: Client, n: int) -> dict[str, float]:
    """Submit ``n`` tasks, then wait for all of them."""
    results: list[Any] = []
    seconds = _timed(lambda: results.extend(client.submit_all(tasks.g, range(n))))
    sink = Collector()
    for result in results:
        sink(result)
    sink.expect(n, _g_total(n))
    return {"submit": n / seconds}


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0..100) of already sorted values."""
    rank = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values)) - 1))
    return sorted_values[rank]


def _latency_percentiles(client: Client, n: int, prefix: str) -> dict[str, float]:
    """p50 and p99 in microseconds of ``n`` tasks run one at a time."""
    lat: list[float] = []
    with timed_section():
        lat.extend(client.latencies(tasks.g, range(n)))
    lat.sort()
    return {
        f"{prefix}_p50": _percentile(lat, 50) * 1e6,
        f"{prefix}_p99": _percentile(lat, 99) * 1e6,
    }


def wl_latency(client: Client, n: int) -> dict[str, float]:
    """Round trip of one task at a time, ``await run_async`` on the client loop."""
    return _latency_percentiles(client, n, "latency")


def wl_latency_sync(client: Client, n: int) -> dict[str, float]:
    """Round trip of one task at a time, sync ``run`` from plain code."""
    return _latency_percentiles(client, n, "latency_sync")


def wl_bytes_arg(client: Client, n: int) -> dict[str, float]:
    """A 10 MiB ``bytes`` argument per task; the task returns its length."""
    data = os.urandom(PAYLOAD_BYTES)
    sink = Collector()
    seconds = _timed(lambda: client.map_consume(tasks.size, repeat(data, n), 1, sink))
    sink.expect(n, n * PAYLOAD_BYTES)
    return {"bytes_arg": n * PAYLOAD_BYTES / seconds / 1e6}


def wl_echo(client: Client, n: int) -> dict[str, float]:
    """A 10 MiB ``bytes`` argument that the task sends back."""
    data = os.urandom(PAYLOAD_BYTES)
    sink = Collector(len)
    seconds = _timed(lambda: client.map_consume(tasks.echo, repeat(data, n), 1, sink))
    sink.expect(n, n * PAYLOAD_BYTES)
    return {"echo": n * PAYLOAD_BYTES / seconds / 1e6}


def wl_startup(client: Client, n: int) -> dict[str, float]:
    """Milliseconds from ``Pool(2)`` to the first result of ``noop``."""
    return {"startup": client.startup(tasks.noop) * 1e3}


#: What a program writes to use each pool, timed by the ``import`` workload.
IMPORTS = {
    "distex_zmq": "from distex_zmq import Pool",
    "distex": "from distex import Pool",
    "process": "from concurrent.futures import ProcessPoolExecutor",
    "loky": "from loky import ProcessPoolExecutor",
}


def wl_import(client: Client, n: int) -> dict[str, float]:
    """Milliseconds to import the pool in a fresh interpreter, median of ``n``.

    Every pool is imported from its bytecode, as from an install (pip
    compiles what it installs): an untimed import first writes the bytecode
    of sources that have none (an editable checkout, or a machine that sets
    ``PYTHONDONTWRITEBYTECODE``), and the timed ones may read it.
    """
    code = (
        "import time; t = time.perf_counter(); "
        f"{IMPORTS[client.kind]}; print(time.perf_counter() - t)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, timeout=60, check=True
    )
    seconds = []
    for _ in range(n):
        proc = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        seconds.append(float(proc.stdout))
    return {"import": statistics.median(seconds) * 1e3}


def _serial_cpu_seconds(n: int) -> float:
    """Serial time of ``cpu`` over ``range(n)`` in the client.

    It is ``n`` times the median of per-call times, so that a burst of
    load from elsewhere on the machine during one call does not count.
    """
    per_call = []
    for i in range(n):
        t0 = time.perf_counter()
        tasks.cpu(i)
        per_call.append(time.perf_counter() - t0)
    return n * statistics.median(per_call)


def wl_cpu(client: Client, n: int) -> dict[str, float]:
    """Speedup of mapping ``cpu`` on the pool over running it in the client."""
    serial = _serial_cpu_seconds(n)
    sink = Collector()
    pooled = _timed(lambda: client.map_consume(tasks.cpu, range(n), 1, sink))
    sink.expect(n, sum(tasks.cpu(i) for i in range(n)))
    return {
        "cpu_speedup": serial / pooled,
        "cpu_serial_s": serial,
        "cpu_pool_s": pooled,
    }


WorkloadFunc = Callable[[Client, int], dict[str, float]]

#: Workload name -> (measure function, warm-up function, warm-up argument).
RUNNERS: dict[str, tuple[WorkloadFunc, Callable[..., Any], Any]] = {
    "map_default": (wl_map_default, tasks.g, 1),
    "map_cs1": (wl_map_cs1, tasks.g, 1),
    "map_cs1_q16": (wl_map_cs1_q16, tasks.g, 1),
    "map_cs100": (wl_map_cs100, tasks.g, 1),
    "sync_map": (wl_sync_map, tasks.g, 1),
    "small_maps": (wl_small_maps, tasks.g, 1),
    "submit": (wl_submit, tasks.g, 1),
    "latency": (wl_latency, tasks.g, 1),
    "latency_sync": (wl_latency_sync, tasks.g, 1),
    "bytes_arg": (wl_bytes_arg, tasks.size, b"x"),
    "echo": (wl_echo, tasks.echo, b"x"),
    "startup": (wl_startup, tasks.noop, None),
    "import": (wl_import, tasks.noop, None),
    "cpu": (wl_cpu, tasks.cpu, 0),
}


def measure(client: Client, workload: Workload, n: int) -> dict[str, float]:
    """Open the pool and warm it up (except for start-up), then measure."""
    func, warm_func, warm_arg = RUNNERS[workload.name]
    if workload.name not in ("startup", "import"):
        client.open(workload.sync_client, workload.qsize)
        client.warm_up(warm_func, warm_arg)
    return func(client, n)


def _arm_exit_watchdog(seconds: float) -> None:
    """Hard-exit the process if shutdown and exit take longer than ``seconds``."""
    timer = threading.Timer(seconds, os._exit, args=(3,))
    timer.daemon = True
    timer.start()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pool", required=True, choices=POOLS)
    parser.add_argument("--workload", required=True, choices=sorted(WORKLOADS))
    parser.add_argument("--quick", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the measurement and print its ``RESULT`` line."""
    args = _parse_args(argv)
    workload = WORKLOADS[args.workload]
    n = workload.size(args.quick)
    client = make_client(args.pool)
    metrics = measure(client, workload, n)
    loop = getattr(client, "loop", None)
    result = {
        "pool": args.pool,
        "workload": workload.name,
        "n": n,
        "metrics": metrics,
        "note": client.notes.get(workload.name),
        "client_loop": type(loop).__module__ + "." + type(loop).__name__
        if loop is not None
        else None,
    }
    print("RESULT " + json.dumps(result), flush=True)
    _arm_exit_watchdog(EXIT_GRACE_S)
    client.close()


if __name__ == "__main__":
    main(sys.argv[1:])
