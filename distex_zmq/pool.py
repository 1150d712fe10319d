"""The pool: run functions, sync or async, on worker processes.

::

    caller threads and loops              pool loop (daemon thread)
    ------------------------              -------------------------
    submit / run / map / run_async        Broker (ROUTER, credits, queue)
      pickle args, make Task  --submit-->   dispatch --> workers (DEALER)
      wait: cf.Future, asyncio future,      results <-- workers
            a map's queue  <--one wake-up per batch--  sinks
                                          LocalLauncher: spawn, supervise
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import os
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping
from typing import Any

from distex_zmq.broker import Task
from distex_zmq.errors import PoolClosedError
from distex_zmq.hostspec import HostSpec
from distex_zmq.loops import LoopType
from distex_zmq.maps import MapContext, check_map_args, map_async, map_sync
from distex_zmq.options import pool_options
from distex_zmq.progress import make_progress
from distex_zmq.results import (
    AsyncFutureSink,
    FutureSink,
    LoopPort,
    TaskFuture,
    refuse_wait_on_pool_loop,
)
from distex_zmq.runtime.loop import Runtime, shutdown_runtime
from distex_zmq.runtime.snapshot import status_async, status_threadsafe
from distex_zmq.serialization import PickleType
from distex_zmq.status import PoolStatus, Totals
from distex_zmq.tasks import TaskMaker


class Pool(concurrent.futures.Executor):
    """Pool of worker processes that run tasks.

    To create a pool of 4 local workers::

        pool = Pool(4)

    ``Pool`` implements ``concurrent.futures.Executor`` and the API of
    distex: every sync method has an ``_async`` twin, the pool is a sync and
    an async context manager, and it can be awaited (``await pool`` waits
    until its workers are up).

    A pool whose start fails (a host that cannot be reached, a worker that
    cannot start) raises the error that ended its start from every later
    call, and ``repr`` says ``failed``; ``PoolClosedError`` comes only after
    ``shutdown``. ``with`` and ``async with`` wait at entry until the
    workers are up, so they raise that error at entry.

    Args:
        num_workers: Number of local worker processes; 0 means one per CPU
            (as in distex), ``None`` none at all: a pool of remote workers
            only.
        hosts: Remote host specifications
            ``[ssh://][user@]host[:port]/num_workers``. ``ssh://`` hosts are
            reached with SSH (see ``remote_python`` and the ``ssh_*``
            options); the others run ``python -m distex_zmq.spawner``
            (default port 8899), which the pool reaches with the cluster's
            shared secret (``secret``).
        qsize: Tasks each worker may hold at once (its credits). Raise it for
            many small tasks; 1 means no queueing at the workers. Tiny
            tasks from ``submit`` and ``run_async`` that wait for a credit
            may share one (see the README's "Adaptive batching"), unless
            qsize is 1.
        initializer: Called in each worker (also in a replacement) before
            its first task.
        initargs: Arguments for ``initializer``.
        localhost: Address of this machine that remote workers connect to
            in direct mode (default: the one the SSH connection comes from);
            the broker listens on it.
        localport: Port the broker listens on for remote workers (0: any).
        lazy_create: Start no workers until the first task, ``create()`` or
            a ``with`` block.
        worker_loop: ``LoopType`` of the workers' event loops.
        func_pickle: ``PickleType`` for functions (default dill).
        data_pickle: ``PickleType`` for arguments and results. The default,
            ``PickleType.auto``, is standard pickle, except that what refers
            to the script (``__main__``: its classes, dataclasses, enums,
            functions, lambdas) is pickled by cloudpickle and sent by value,
            in both directions, as ``ProcessPoolExecutor`` can use them; a
            result of a script class arrives as an instance of the script's
            own class. ``PickleType.pickle`` given explicitly is standard
            pickle only: objects of ``__main__`` fail to load in a worker.
        max_retries: How often a task whose worker died is run again on
            another worker before it fails with ``WorkerLostError``.
        task_timeout: Seconds a task may run; a task that runs longer fails
            with ``TaskTimeoutError`` (a ``TimeoutError``), its worker is
            killed and replaced, and the task is not retried.
        max_worker_deaths: Workers that may die within a minute before the
            pool stops replacing them and fails what waits with
            ``CrashLoopError``.
        remote_python: The command that runs Python on the SSH hosts, as the
            remote shell reads it (``/opt/venv/bin/python``,
            ``env PYTHONPATH=/srv/app python3``); a dict maps host names to
            commands, with ``"*"`` for the rest.
        ssh_tunnel: Remote workers reach the broker through a reverse tunnel
            over the SSH connection (default). With ``False`` they connect
            straight to the broker's TCP port (``localhost``/``localport``):
            faster, if the hosts can reach it, and as safe, as that port is a
            CurveZMQ server that admits only the keys this pool gives its
            own workers.
        heartbeat_timeout: Seconds of silence after which a remote host
            counts as lost: its tasks run elsewhere, and the pool reconnects
            to it when it can. An SSH agent stops its workers after as long
            without word from the pool, a spawner after half as long.
        ssh_accept_new_hosts: Trust and remember the key of a host that is
            not in ``~/.ssh/known_hosts`` (OpenSSH's ``accept-new``); by
            default such a host is refused.
        connect_timeout: Seconds allowed to connect and log in to an SSH
            host, or to hear from a spawner.
        secret: The cluster's shared secret, which the spawners have too;
            by default the ``DISTEX_ZMQ_SECRET`` environment variable. Without
            one, only spawners that run without one (on loopback, or with
            ``--insecure``) serve the pool.
        secret_file: A file that holds the shared secret, instead.
        output: What becomes of what the workers write to their stdout and
            stderr, on every host: each line is written, as it arrives, to
            the client's ``sys.stdout`` or ``sys.stderr``, tagged with its
            host and worker pid (``"prefixed"``: ``[host:pid] text``), as it
            is (``"raw"``), or not at all (``"off"``).
        log_level: ``logging`` records that tasks emit at this level or
            above are re-emitted in the client through the logger of the
            same name, with ``host``, ``pid`` and ``worker`` attributes;
            ``None``: none are.
    """

    TimeoutError = concurrent.futures.TimeoutError

    def __init__(
        self,
        num_workers: int | None = 0,
        hosts: str | list[str] | None = None,
        qsize: int = 2,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        localhost: str = "",
        localport: int = 0,
        lazy_create: bool = False,
        worker_loop: int = LoopType.default,
        func_pickle: int = PickleType.dill,
        data_pickle: int = PickleType.auto,
        *,
        max_retries: int = 2,
        task_timeout: float | None = None,
        max_worker_deaths: int = 30,
        remote_python: str | Mapping[str, str] = "python3",
        ssh_tunnel: bool = True,
        heartbeat_timeout: float = 10.0,
        ssh_accept_new_hosts: bool = False,
        connect_timeout: float = 10.0,
        secret: str | bytes | None = None,
        secret_file: str | None = None,
        output: str = "prefixed",
        log_level: int | None = logging.WARNING,
    ):
        self._options = pool_options(
            num_workers,
            hosts,
            qsize,
            initializer,
            initargs,
            localhost,
            localport,
            worker_loop,
            func_pickle,
            data_pickle,
            max_retries,
            task_timeout,
            max_worker_deaths,
            remote_python,
            ssh_tunnel,
            heartbeat_timeout,
            ssh_accept_new_hosts,
            connect_timeout,
            secret,
            secret_file,
            output,
            log_level,
        )
        opts = self._options
        self._tasks = TaskMaker(opts.func_pickle, opts.data_pickle, may_group=opts.qsize > 1)
        self._lock = threading.Lock()
        self._runtime: Runtime | None = None
        self._finalizer: weakref.finalize | None = None
        self._is_shutdown = False
        self._future_sink = FutureSink(self._tasks.data_loads)
        self._loop_sinks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncFutureSink] = (
            weakref.WeakKeyDictionary()
        )
        self.ready = _Ready(self)
        if not lazy_create:
            self._start()

    def __repr__(self) -> str:
        runtime = self._runtime
        configured = self._options.total_workers
        if runtime is None:
            state = "shut down" if self._is_shutdown else "not started"
            return f"<Pool 0/{configured} workers up, {state}>"
        up = 0 if runtime.closing else runtime.ready_workers
        state = runtime.pool_state(self._is_shutdown)
        error = runtime.failure()
        if state == "failed" and error is not None:
            state = f"failed: {type(error).__name__}: {error}"
        return f"<Pool {up}/{configured} workers up, {state}>"

    def __reduce__(self) -> Any:
        # pickle would fail anyway, deep inside, with a message about a socket
        raise TypeError(
            "a Pool cannot be pickled: its workers, threads and sockets belong to the "
            "process that made it, so a task cannot use the pool that runs it. Give the "
            "task the data it needs, or run the follow-up work from the caller"
        )

    # life cycle

    def _start(self) -> Runtime:
        with self._lock:
            if self._is_shutdown:
                raise PoolClosedError("the pool was shut down; create a new Pool")
            if self._runtime is None:
                self._runtime = Runtime(self._options, self._tasks)
                self._finalizer = weakref.finalize(self, shutdown_runtime, self._runtime)
            return self._runtime

    def _live_runtime(self) -> Runtime:
        """The runtime, started if need be; raise if the pool cannot take tasks."""
        runtime = self._runtime
        if runtime is None or self._is_shutdown:
            runtime = self._start()
        if runtime.error is not None:
            raise runtime.error
        if runtime.inherited:
            raise PoolClosedError(
                f"this pool belongs to process {runtime.pid}; this process "
                f"(pid {os.getpid()}) is a fork of it, where the pool's workers and "
                "threads do not exist. Create a new Pool in the child"
            )
        return runtime

    async def create(self) -> Pool:
        """Start the workers (if not started) and wait until they are ready.

        Raises ``WorkerStartError`` if a worker cannot start or its
        initializer raises.
        """
        runtime = self._live_runtime()
        if not runtime.started.done():
            await asyncio.wrap_future(runtime.started)
        if runtime.started.exception() is not None:
            # the start cleaned up after itself; its thread is about to end
            while runtime.thread.is_alive():
                await asyncio.sleep(0.005)
        runtime.started.result()
        return self

    def __await__(self) -> Generator[Any, None, Pool]:
        return self.create().__await__()

    def __enter__(self) -> Pool:
        # as ``async with``: wait for the workers, so that a pool whose start
        # fails raises its error here, not at the first task
        refuse_wait_on_pool_loop("Pool.__enter__")
        runtime = self._live_runtime()
        try:
            runtime.started.result()
        except BaseException:
            if runtime.error is not None:
                runtime.thread.join()  # the start cleaned up; its thread ends
            raise
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.shutdown()

    async def __aenter__(self) -> Pool:
        return await self.create()

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.shutdown_async()

    def is_ready(self) -> bool:
        """True when the workers are up and ready for tasks (see also ``ready``)."""
        runtime = self._runtime
        return (
            runtime is not None
            and not self._is_shutdown
            and not runtime.inherited
            and runtime.started.done()
            and runtime.started.exception() is None
        )

    def total_workers(self) -> int:
        """Number of workers ready for tasks now, local and remote (the
        processors in use, as in distex): a worker that died counts again
        once its replacement is ready.

        Until the pool has started (``lazy_create``, or while its workers
        start) it is the number configured, so that what sizes itself from
        it (dask, joblib) sees the pool it will get; after a failure or a
        shutdown it is 0.
        """
        runtime = self._runtime
        if runtime is None:
            return 0 if self._is_shutdown else self._options.total_workers
        if self._is_shutdown or runtime.closing or runtime.failure() is not None:
            return 0
        if not runtime.started.done():
            return self._options.total_workers
        return runtime.ready_workers

    @property
    def _max_workers(self) -> int:
        """``total_workers()``, under the name that dask (``scheduler=pool``)
        reads from a ``concurrent.futures`` executor to size itself; the
        number configured when no worker is up (never 0)."""
        return self.total_workers() or self._options.total_workers

    def status(self) -> PoolStatus:
        """A snapshot of the pool: its workers, hosts and counters (see
        ``PoolStatus``). Taken on the pool loop, so it is consistent; cheap
        enough to call in a loop. After shutdown: the last status."""
        runtime = self._runtime
        if runtime is None:
            return self._unstarted_status()
        return status_threadsafe(runtime, self._is_shutdown)

    async def status_async(self) -> PoolStatus:
        """Async version of ``status``."""
        runtime = self._runtime
        if runtime is None:
            return self._unstarted_status()
        return await status_async(runtime, self._is_shutdown)

    def _unstarted_status(self) -> PoolStatus:
        tasks = self._tasks
        return PoolStatus(
            state="shut down" if self._is_shutdown else "not started",
            error=None,
            configured_workers=self._options.total_workers,
            workers=(),
            hosts=(),
            totals=Totals(0, 0, 0, 0, 0, 0, 0, 0, len(tasks.functions), tasks.made),
            taken_at=time.time(),
        )

    def shutdown(
        self, wait: bool = True, *, cancel_futures: bool = False, timeout: float | None = None
    ) -> None:
        """Shut down the pool: stop every worker and free every resource.

        With ``wait`` (default) it returns when the submitted tasks have run
        and every worker process has exited; ``cancel_futures`` cancels the
        tasks that have not started. ``timeout`` bounds the wait for tasks:
        after it the workers are stopped (STOP, then SIGTERM, then SIGKILL)
        and what did not finish fails with ``PoolClosedError``. Idempotent;
        afterwards ``submit`` and every other method raise ``PoolClosedError``
        (a ``RuntimeError``).
        """
        runtime = self._mark_shutdown()
        if runtime is not None:
            runtime.close(wait=wait, cancel_futures=cancel_futures, timeout=timeout)

    async def shutdown_async(
        self, wait: bool = True, *, cancel_futures: bool = False, timeout: float | None = None
    ) -> None:
        """Async version of ``shutdown``."""
        runtime = self._mark_shutdown()
        if runtime is None or runtime.inherited:
            return
        runtime.close(wait=False, cancel_futures=cancel_futures, timeout=timeout)
        if wait:
            while runtime.thread.is_alive():
                await asyncio.sleep(0.005)

    def _mark_shutdown(self) -> Runtime | None:
        with self._lock:
            self._is_shutdown = True
            runtime = self._runtime
        if self._finalizer is not None:
            self._finalizer.detach()
        return runtime

    # elasticity

    def add_hosts(self, hosts: str | list[str]) -> None:
        """Add remote hosts (``[ssh://][user@]host[:port]/num_workers``, as
        in ``Pool(hosts=...)``) to the running pool.

        Returns when their workers are ready: each has run the initializer
        and takes tasks at once, those of a ``map`` already running included.
        All or nothing: if a host cannot be reached (``HostConnectionError``)
        or a worker fails to start (``WorkerStartError``), what this call
        added leaves again and that error is raised; the pool runs on as it
        was. A host in the pool already raises ``ValueError``.
        """
        refuse_wait_on_pool_loop("Pool.add_hosts")
        _elastic_result(self._live_runtime().add_hosts(_host_specs(hosts)))

    async def add_hosts_async(self, hosts: str | list[str]) -> None:
        """Async version of ``add_hosts``."""
        await _elastic_wait(self._live_runtime().add_hosts(_host_specs(hosts)))

    def remove_hosts(self, hosts: str | list[str], drain: bool = True) -> None:
        """Remove remote hosts from the running pool, by host name (``"maxi"``)
        or specification (``"ssh://maxi/8"``).

        Their workers take no new task. With ``drain`` (default) the tasks
        they run finish there; otherwise those tasks go back to the queue and
        run on other workers, without counting as a retry (``max_retries``).
        Then the workers stop and the pool leaves nothing on the host: its
        SSH agent exits, its spawner session ends, and the pool does not
        reconnect to it. Returns when that is done. A name that is not in the
        pool raises ``ValueError``, and so does removing the last workers.
        """
        refuse_wait_on_pool_loop("Pool.remove_hosts")
        _elastic_result(self._live_runtime().remove_hosts(_host_names(hosts), drain))

    async def remove_hosts_async(self, hosts: str | list[str], drain: bool = True) -> None:
        """Async version of ``remove_hosts``."""
        await _elastic_wait(self._live_runtime().remove_hosts(_host_names(hosts), drain))

    def resize(self, num_workers: int | None, drain: bool = True) -> None:
        """Change the number of local workers of the running pool.

        ``num_workers`` means what it means for ``Pool``: 0 is one per CPU,
        ``None`` none at all (the pool then needs remote hosts). New workers
        run the initializer and take tasks at once; it returns when they are
        ready, and if one fails to start, the new ones leave again and the
        error (``WorkerStartError``) is raised. Shrinking retires the least
        busy workers as ``remove_hosts`` does, ``drain`` included, and returns
        when their processes have exited.
        """
        refuse_wait_on_pool_loop("Pool.resize")
        count = _local_count(num_workers)
        _elastic_result(self._live_runtime().resize(count, drain))

    async def resize_async(self, num_workers: int | None, drain: bool = True) -> None:
        """Async version of ``resize``."""
        count = _local_count(num_workers)
        await _elastic_wait(self._live_runtime().resize(count, drain))

    # running tasks

    def submit(
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:
        """Run ``fn(*args, **kwargs)`` in the pool; return a ``concurrent.futures.Future``.

        The future completes without the caller running any event loop.
        Arguments that cannot be pickled raise here, in the caller.
        """
        runtime = self._live_runtime()
        task = self._tasks.call(fn, args, kwargs, self._future_sink)
        future = TaskFuture(task)
        try:
            runtime.broker.submit((task,))
        except PoolClosedError:
            _raise_start_error(runtime)
        return future

    def run(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``func(*args, **kwargs)`` in the pool and return its result.

        Interrupted while it waits (Ctrl-C), it cancels the task: one that
        has not started never runs.
        """
        future = self.submit(func, *args, **kwargs)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # no-op once it is done: a task's own error, say
            raise

    async def run_async(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Async version of ``run``; cancelling it cancels the task."""
        runtime = self._live_runtime()
        loop = asyncio.get_running_loop()
        sink = self._loop_sinks.get(loop)
        if sink is None:
            sink = self._loop_sinks[loop] = AsyncFutureSink(LoopPort(loop), self._tasks.data_loads)
        future = loop.create_future()
        task = self._tasks.call(func, args, kwargs, sink, future)
        future.add_done_callback(functools.partial(_cancel_if_cancelled, task))
        try:
            runtime.broker.submit((task,))
        except PoolClosedError:
            _raise_start_error(runtime)
        return await future

    def map(
        self,
        func: Callable[..., Any],
        *iterables: Any,
        timeout: float | None = None,
        chunksize: int | None = None,
        ordered: bool = True,
        star: bool = False,
        progress: bool | Callable[[int, int | None], Any] = False,
    ) -> Iterator[Any]:
        """Map ``func`` over the iterables; return an iterator of the results.

        Args:
            func: Function to map. If it returns an awaitable, the worker
                awaits it and the result is what it yields.
            iterables: Sync or async iterables, in any mix, read lazily (they
                may be unbounded). With several, they are zipped.
            timeout: Seconds from the start of the map until
                ``Pool.TimeoutError``.
            chunksize: Inputs sent to a worker as one task; larger chunks
                make small tasks much cheaper. ``None`` (the default): start
                with one and group inputs that run well under a millisecond
                into chunks of about 2 ms of work, from the run times the
                workers report; each input keeps its own result, error and
                place. An explicit chunksize (1 included) is kept exactly.
            ordered: ``True``: results in input order; ``False``: in order
                of completion.
            star: ``True``: the one iterable yields argument tuples, which
                are unpacked into ``func``.
            progress: ``True``: show a tqdm progress bar (``pip install
                'distex_zmq[progress]'``); a callable: called with
                ``(done, total)``, the inputs whose results or errors reached
                the map and the length of the input (None if it has none; of
                several iterables, the shortest), at most every 0.1 s and
                once at the end. Off by default.

        Breaking out of the iteration cancels what is still pending. A task
        that raised raises here when iteration reaches it.
        """
        check_map_args(iterables, chunksize)
        refuse_wait_on_pool_loop("Pool.map")
        counter = make_progress(progress, iterables)
        ctx = self._map_context()
        return map_sync(ctx, func, iterables, timeout, chunksize, ordered, star, counter)

    def map_async(
        self,
        func: Callable[..., Any],
        *iterables: Any,
        timeout: float | None = None,
        chunksize: int | None = None,
        ordered: bool = True,
        star: bool = False,
        progress: bool | Callable[[int, int | None], Any] = False,
    ) -> AsyncIterator[Any]:
        """Async version of ``map``: ``async for result in pool.map_async(...)``."""
        check_map_args(iterables, chunksize)
        counter = make_progress(progress, iterables)
        ctx = self._map_context()
        return map_async(ctx, func, iterables, timeout, chunksize, ordered, star, counter)

    def _map_context(self) -> MapContext:
        runtime = self._live_runtime()
        opts = self._options
        return MapContext(runtime.broker, self._tasks, runtime.loop, opts.capacity, opts.qsize > 1)

    def run_on_all(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> list[Any]:
        """Run ``func`` once on every worker, after the tasks submitted before
        it have finished; return the results in the order of the workers.

        Every worker means the workers that are ready once those tasks have
        finished: a worker that starts later (a host added with
        ``add_hosts``, a ``resize``, a replacement of a worker that died)
        does not run it; to set up every worker, those included, use
        ``initializer``. A worker removed with ``drain=False`` before it ran
        ``func`` fails it with ``WorkerLostError``.

        Raises the first error if it fails on any worker.
        """
        refuse_wait_on_pool_loop("Pool.run_on_all")
        futures = self._run_on_all(func, args, kwargs).result()
        return [f.result() for f in futures]

    async def run_on_all_async(
        self, func: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> list[Any]:
        """Async version of ``run_on_all``."""
        futures = await asyncio.wrap_future(self._run_on_all(func, args, kwargs))
        return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))

    def _run_on_all(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> concurrent.futures.Future[list[TaskFuture]]:
        runtime = self._live_runtime()
        template = self._tasks.call(func, args, kwargs, self._future_sink, alone=True)
        return _pin_to_all_after_drain(runtime, self._tasks, template)


def _pin_to_all_after_drain(
    runtime: Runtime, tasks: TaskMaker, template: Task
) -> concurrent.futures.Future[list[TaskFuture]]:
    """Copies of ``template``, one pinned to each worker once the tasks before
    them have finished; the future of their futures.

    (Not a method: the callbacks must not hold the pool, which would then
    never be garbage-collected.)
    """
    batch: concurrent.futures.Future[list[TaskFuture]] = concurrent.futures.Future()

    def make_task() -> Task:
        # (the broker passes the worker's record; the task is the same for all)
        task = tasks.copy(template)
        TaskFuture(task)  # the future becomes the task's tag
        return task

    def pin() -> None:
        pinned = runtime.broker.pin_to_all(make_task)
        batch.set_result([task.tag for task in pinned])

    def after_start(started: concurrent.futures.Future[None]) -> None:
        error = started.exception()
        if error is not None:
            batch.set_exception(error)
        else:
            runtime.loop.call_soon_threadsafe(runtime.broker.when_drained, pin)

    if runtime.started.done():
        after_start(runtime.started)
    else:
        runtime.started.add_done_callback(after_start)
    return batch


def _raise_start_error(runtime: Runtime) -> None:
    """A submit found the broker closed: the start failed as it ran (raise
    its error), or the pool was shut down (raise ``PoolClosedError``)."""
    if runtime.error is not None:
        raise runtime.error
    raise


def _host_specs(hosts: str | list[str]) -> list[HostSpec]:
    specs = [HostSpec(h) for h in ([hosts] if isinstance(hosts, str) else hosts)]
    if not specs:
        raise ValueError("no hosts given")
    return specs


def _host_names(hosts: str | list[str]) -> list[str]:
    names = [hosts] if isinstance(hosts, str) else list(hosts)
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"a host is named by a string, not {name!r}")
    return names


def _local_count(num_workers: int | None) -> int:
    """Local workers, as ``Pool(num_workers)`` reads the argument."""
    if num_workers is None:
        return 0
    if not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an integer >= 0 or None, not {num_workers!r}")
    return num_workers or os.cpu_count() or 1


def _elastic_result(change: concurrent.futures.Future[None]) -> None:
    try:
        change.result()
    except concurrent.futures.CancelledError:
        raise PoolClosedError("the pool was shut down during the change") from None


async def _elastic_wait(change: concurrent.futures.Future[None]) -> None:
    try:
        # the change goes on if the caller is cancelled: half a change is worse
        await asyncio.shield(asyncio.wrap_future(change))
    except asyncio.CancelledError:
        if not change.cancelled():
            raise  # the caller's own cancellation
        raise PoolClosedError("the pool was shut down during the change") from None


def _cancel_if_cancelled(task: Task, future: asyncio.Future[Any]) -> None:
    if future.cancelled():
        task.cancelled = True


class _Ready:
    """``pool.ready``: whether the workers are up, as ``is_set`` and ``wait``."""

    def __init__(self, pool: Pool):
        self._pool = weakref.ref(pool)

    def is_set(self) -> bool:
        pool = self._pool()
        return pool is not None and pool.is_ready()

    async def wait(self) -> bool:
        pool = self._pool()
        if pool is not None:
            await pool.create()
        return True
