"""The pool: run functions, sync or async, on worker processes.

::

    caller threads and loops              pool loop (daemon thread)
    ------------------------              -------------------------
    submit / run / map / run_async        Broker (ROUTER, credits, queue)
      pickle args, make Task  --submit-->   dispatch --> workers (DEALER)
      wait: cf.Future, asyncio future,      results <-- workers
            a map's queue  <--one wake-up per batch--  sinks
                                          LocalLauncher: spawn, supervise

``Pool`` is the one public class. Here: its arguments, life cycle and single
tasks. Its other methods come from parts grouped by area, on the shared state
of pool_base.py: pool_status.py (state, size, status), pool_hosts.py (elastic
changes) and pool_maps.py (map, run_on_all).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import signal
import threading
import weakref
from collections.abc import Callable, Generator, Mapping
from typing import TYPE_CHECKING, Any

from distex_zmq.errors import PoolClosedError
from distex_zmq.loops import LoopType, running_loop
from distex_zmq.options import (
    CLIENT_LEVEL,
    DEFAULT_AGENT_START_TIMEOUT,
    check_flag,
    drain_timeout,
    executor_workers,
    pool_options,
)
from distex_zmq.pool_base import raise_start_error
from distex_zmq.pool_hosts import HostsMixin
from distex_zmq.pool_maps import MapsMixin
from distex_zmq.pool_status import Ready, StatusMixin
from distex_zmq.process_role import in_worker
from distex_zmq.results import (
    AsyncFutureSink,
    LoopPort,
    TaskFuture,
    cancel_if_cancelled,
)
from distex_zmq.script_objects import adopt_spawned_script
from distex_zmq.serialization import PickleType, check_callable


class Pool(StatusMixin, HostsMixin, MapsMixin):
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
    workers are up, so they raise that error at entry. At its end, a
    ``with`` block shuts the pool down, waiting for the tasks submitted, but
    for a block that a ``KeyboardInterrupt`` (Ctrl-C) or a cancellation
    leaves (``asyncio.run`` cancels its main task at a Ctrl-C): that drops
    them, those that run too; so does the end of an ``async with`` block.

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
            many small tasks; 1 means no queueing at the workers. A worker
            gets no second task while it runs one whose function is known
            to run 20 ms or longer, and a worker whose task has run 20 ms
            gives back the tasks it holds behind it, unrun, for the next
            free worker: no task waits behind a long one. Tiny
            tasks from ``submit`` and ``run_async`` that wait for a credit
            may share one (see "Adaptive batching" in the usage guide),
            unless qsize is 1.
        initializer: Called in each worker (also in a replacement) before
            its first task.
        initargs: A tuple of arguments for ``initializer``.
        localhost: Address of this machine that remote workers connect to
            when they reach the broker straight (spawner hosts, and SSH
            hosts in direct mode); the broker listens on it. Default: the
            broker listens on all addresses and each host gets the one its
            connection comes from.
        localport: Port the broker listens on for remote workers (0: any).
        lazy_create: Start no workers until the first task, ``create()`` or
            a ``with`` block. A pool made in a worker process (by a task,
            or when a worker imports the module of a task's function and
            that module makes a pool) starts so whatever this says: a
            module that makes a pool at its import does not give every
            worker a pool of its own, with workers of its own, that it
            never uses.
        worker_loop: ``LoopType`` of the workers' event loops, or its
            name: ``"uvloop"``.
        func_pickle: ``PickleType`` for functions (default dill), or its
            name: ``"cloudpickle"``, as for ``data_pickle``.
        data_pickle: ``PickleType`` for arguments and results. The default,
            ``PickleType.auto``, is standard pickle, except that what refers
            to the script (``__main__``: its classes, dataclasses, enums,
            functions, lambdas) is pickled by cloudpickle and sent by value,
            in both directions, as ``ProcessPoolExecutor`` can use them; a
            result of a script class arrives as an instance of the script's
            own class. ``PickleType.cloudpickle`` and ``PickleType.dill``
            pickle all data with that pickler, and the script's objects as
            ``auto`` does (its functions share the worker's globals of the
            script). ``PickleType.pickle`` given explicitly is standard
            pickle only: objects of ``__main__`` fail to load in a worker.
        max_retries: How often a task whose worker died is run again on
            another worker before it fails with ``WorkerLostError``.
        task_timeout: Seconds a task may run; a task that runs longer fails
            with ``TaskTimeoutError`` (a ``TimeoutError``), its worker is
            killed and replaced, and the task is not retried. Time during
            which this process stood still (Ctrl-Z, a debugger) does not count.
        max_worker_deaths: Workers that may die within a minute before the
            pool stops replacing them and fails what waits with
            ``CrashLoopError``.
        max_tasks_per_child: Tasks a worker runs before it exits and a
            fresh one takes its place, as with ``ProcessPoolExecutor``: for
            tasks that leak memory or other resources. The replacement starts
            as soon as the worker has its last task (the initializer runs in
            it again); the exit counts as no death. ``run_on_all`` and the
            initializer do not count; a map's chunk counts as one task.
            ``None`` (the default): no limit.
        remote_python: The command that runs Python on the SSH hosts, as the
            remote shell reads it (``/opt/venv/bin/python``,
            ``env PYTHONPATH=/srv/app python3``); a dict maps host names (as
            the specs give them: ``"maxi"`` for ``ssh://maxi/8``) to
            commands, with ``"*"`` for the rest; a host it has no command
            for is refused (``ValueError``).
        ssh_tunnel: Remote workers reach the broker through a reverse tunnel
            over the SSH connection (default). With ``False`` they connect
            straight to the broker's TCP port (``localhost``/``localport``):
            faster, if the hosts can reach it, and as safe, as that port is a
            CurveZMQ server that admits only the keys this pool gives its
            own workers.
        heartbeat_timeout: Seconds of silence after which a remote host
            counts as lost: its tasks run elsewhere, and the pool reconnects
            to it when it can. An SSH agent or a spawner stops its workers
            after as long without word from the pool (a spawner after half
            as long once a connection to it closed, as a killed client's
            does). Time during which this process stood still (Ctrl-Z, a
            debugger) is no silence of a host's, but is silence of the
            pool's to the hosts.
            A pool with spawner hosts takes one from 1 to 1200 s. It also
            bounds how long a remote worker's connection to the pool may be
            dead unseen (a NAT that forgot it, a firewall that drops it)
            before both ends close it and the worker connects again, and
            how long a remote worker whose connection failed may take to
            connect again before it is killed and replaced.
        ssh_accept_new_hosts: Trust and remember the key of a host that is
            not in ``~/.ssh/known_hosts`` (OpenSSH's ``accept-new``); by
            default such a host is refused.
        connect_timeout: Seconds allowed to connect and log in to an SSH
            host (each step; the whole login at most twice that), or to
            hear from a spawner. Default: an SSH host's ``ConnectTimeout``
            in ``~/.ssh/config``, else 10 s; one given here wins over the
            config's, as ``ssh -o ConnectTimeout=`` does.
        agent_start_timeout: Seconds the distex_zmq agent on an SSH host has
            to start once logged in: the SSH user's login shell runs its
            start-up files (``~/.bashrc``), then the interpreter imports
            distex_zmq. Raise it for hosts where that is slow (a shared file
            system, a start-up file that loads modules); default 30 s.
        secret: The cluster's shared secret, which the spawners have too;
            by default the ``DISTEX_ZMQ_SECRET`` environment variable. Without
            one, only spawners that run without one (on loopback, or with
            ``--insecure``) serve the pool.
        secret_file: A file that holds the shared secret, instead; one
            that its group or others may read is logged as a warning.
        output: What becomes of what the workers write to their stdout and
            stderr, on every host: each line is written, as it arrives, to
            the client's ``sys.stdout`` or ``sys.stderr``, tagged with its
            host and worker pid (``"prefixed"``: ``[host:pid] text``), as it
            is (``"raw"``), or not at all (``"off"``). A line not ended yet
            (a progress bar) is written in parts as it comes.
        log_level: ``logging`` records that tasks emit at this level or
            above are re-emitted in the client through the logger of the
            same name, with ``host``, ``pid`` and ``worker`` attributes,
            where the client's logger levels (but the root logger's),
            handlers and filters apply as to its own records. ``"client"``
            (default): the level of the client's root logger when the pool
            starts (``logging.basicConfig(level=logging.INFO)`` before it
            brings the tasks' INFO records; a later change of the root's
            level does not reach the workers); ``None``: none are. The
            user's handlers run on a thread of the pool, in the order the
            records came, not on the pool loop: a slow one does not hold up
            the tasks; ``shutdown`` returns once the records that came
            before it are handled.
        max_workers: ``ProcessPoolExecutor``'s name for the local workers,
            so that code written for it runs: ``max_workers=4`` is
            ``num_workers=4``; ``None`` (the default) leaves
            ``num_workers`` to say. Greater than 0, as there.
        mp_context: ``ProcessPoolExecutor``'s, taken and not used: the
            workers start as fresh processes whatever it says, as with
            ``"spawn"``, and what a task needs of the script travels with
            it (``data_pickle``).
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
        worker_loop: int | str = LoopType.default,
        func_pickle: int | str = PickleType.dill,
        data_pickle: int | str = PickleType.auto,
        *,
        max_retries: int = 2,
        task_timeout: float | None = None,
        max_worker_deaths: int = 30,
        remote_python: str | Mapping[str, str] = "python3",
        ssh_tunnel: bool = True,
        heartbeat_timeout: float = 10.0,
        ssh_accept_new_hosts: bool = False,
        connect_timeout: float | None = None,
        secret: str | bytes | None = None,
        secret_file: str | None = None,
        output: str = "prefixed",
        log_level: int | str | None = CLIENT_LEVEL,
        max_tasks_per_child: int | None = None,
        agent_start_timeout: float = DEFAULT_AGENT_START_TIMEOUT,
        max_workers: int | None = None,
        mp_context: Any = None,
    ):
        check_flag("lazy_create", lazy_create)
        if max_workers is not None:
            num_workers = executor_workers(num_workers, max_workers)
        # (in a process that multiprocessing spawned: the script's objects)
        adopt_spawned_script()
        super().__init__(
            pool_options(
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
                max_tasks_per_child,
                agent_start_timeout,
            )
        )
        self._loop_sinks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncFutureSink] = (
            weakref.WeakKeyDictionary()
        )
        self.ready = Ready(self)
        if not lazy_create and not in_worker():
            self._start()

    def __reduce__(self) -> Any:
        # pickle would fail anyway, deep inside, with a message about a socket
        raise TypeError(
            "a Pool cannot be pickled: its workers, threads and sockets belong to the "
            "process that made it, so a task cannot use the pool that runs it. Give the "
            "task the data it needs, or run the follow-up work from the caller"
        )

    if not TYPE_CHECKING:  # for type checkers, a missing attribute stays an error

        def __getattr__(self, name: str) -> Any:
            """Called for a missing attribute only: a method of
            ``multiprocessing.Pool`` raises the usual ``AttributeError`` (so
            ``hasattr`` is False), saying what to use instead."""
            hint = _MULTIPROCESSING_POOL.get(name)
            message = f"{type(self).__name__!r} object has no attribute {name!r}"
            if hint is not None:
                message += (
                    ": Pool is a concurrent.futures.Executor with the API of distex, "
                    f"not a multiprocessing.Pool; {hint}"
                )
            raise AttributeError(message, name=name, obj=self)

    # life cycle

    async def create(self) -> Pool:
        """Start the workers (if not started) and wait until they are ready.

        Raises ``WorkerStartError`` if a worker cannot start or its
        initializer raises.
        """
        running_loop("create")
        runtime = self._live_runtime()
        if not runtime.started.done():
            self._refuse_wait_on_own_loop("Pool.create")
            # shielded: a wait that is cancelled (a timeout, an interrupted
            # cell) stops waiting; the start goes on, as the sync
            # ``__enter__``'s does (cancelling the wrapped future would
            # cancel the start itself and tear the pool down). Its error is
            # raised below, as the pool's (and counted as told).
            with contextlib.suppress(Exception):
                await asyncio.shield(asyncio.wrap_future(runtime.started))
        if runtime.started.exception() is not None:
            # the start cleaned up after itself; its thread is about to end
            while runtime.loop_running:
                await asyncio.sleep(0.005)
            if runtime.error is not None:
                runtime.raise_error()
        runtime.started.result()
        return self

    def __await__(self) -> Generator[Any, None, Pool]:
        return self.create().__await__()

    def __enter__(self) -> Pool:
        # as ``async with``: wait for the workers, so that a pool whose start
        # fails raises its error here, not at the first task
        self._refuse_wait_on_own_loop("Pool.__enter__")
        runtime = self._live_runtime()
        try:
            runtime.started.result()
        except BaseException:
            if runtime.error is None:
                raise
        else:
            return self
        # raised out of the except block: inside it, the error would carry
        # the one the start raised (itself) as its context, and its
        # traceback would show the error twice
        runtime.wait_loop_ended()  # the start cleaned up; its thread ends
        runtime.raise_error()

    def __exit__(self, *exc_info: Any) -> None:
        if _cancelled(exc_info[1]):
            # Ctrl-C: its user asked the program to stop, as at the exit of
            # a program that a Ctrl-C ended (``wait_at_exit``): the tasks,
            # those that run too, are dropped instead of waited for
            runtime = self._mark_shutdown()
            if runtime is not None:
                runtime.close(wait=True, cancel_futures=True, drain=False)
            return
        self.shutdown()

    async def __aenter__(self) -> Pool:
        return await self.create()

    async def __aexit__(self, *exc_info: Any) -> None:
        if _cancelled(exc_info[1]):
            await self._close_async(True, cancel_futures=True, drain=False)
            return
        await self.shutdown_async()

    def shutdown(
        self, wait: bool = True, *, cancel_futures: bool = False, timeout: float | None = None
    ) -> None:
        """Shut down the pool: stop every worker and free every resource.

        With ``wait`` (default) it returns when the submitted tasks have run
        and every worker process has exited; ``cancel_futures`` cancels the
        tasks that have not started. ``timeout`` bounds the wait for tasks:
        after it what did not finish fails with ``PoolClosedError``, and the
        workers are stopped (STOP, then SIGTERM half a second later, then
        SIGKILL). A start that has not ended (an initializer that does not
        return) is waited for only while tasks are left to run, and within
        ``timeout``. Idempotent; afterwards ``submit`` and every other method
        raise ``PoolClosedError`` (a ``RuntimeError``). A bad ``timeout``
        raises ``ValueError``, and a ``wait`` or ``cancel_futures`` other
        than True or False ``TypeError``, before anything stops.
        """
        check_flag("wait", wait)
        check_flag("cancel_futures", cancel_futures)
        timeout = drain_timeout(timeout)
        if not cancel_futures and not self._is_shutdown:
            self._submit_unread_maps()
        runtime = self._mark_shutdown()
        if runtime is not None:
            runtime.close(wait=wait, cancel_futures=cancel_futures, timeout=timeout)
            runtime.log_untold_error()

    def terminate_workers(self) -> None:
        """Shut down at once: SIGTERM every worker now, as
        ``ProcessPoolExecutor.terminate_workers`` (Python 3.14) does.

        The tasks that have not started are cancelled, those that run fail
        with ``PoolClosedError``, and nothing waits: a ``shutdown`` after it
        waits for the workers' exit. A worker that ignores SIGTERM gets
        SIGKILL a second later. After a ``shutdown(wait=False)`` that still
        waits for its tasks, this stops them. The pool takes no more tasks.
        """
        self._stop_workers_now(signal.SIGTERM)

    def kill_workers(self) -> None:
        """As ``terminate_workers``, with SIGKILL: a worker's ``atexit``
        handlers and finalizers do not run (``ProcessPoolExecutor.kill_workers``)."""
        self._stop_workers_now(signal.SIGKILL)

    def _stop_workers_now(self, sig: signal.Signals) -> None:
        runtime = self._mark_shutdown()
        if runtime is not None:
            runtime.close(wait=False, cancel_futures=True, drain=False, force=sig)

    async def shutdown_async(
        self, wait: bool = True, *, cancel_futures: bool = False, timeout: float | None = None
    ) -> None:
        """Async version of ``shutdown``."""
        running_loop("shutdown_async", "shutdown")
        check_flag("wait", wait)
        check_flag("cancel_futures", cancel_futures)
        timeout = drain_timeout(timeout)
        if not cancel_futures and not self._is_shutdown:
            self._submit_unread_maps()
        await self._close_async(wait, cancel_futures=cancel_futures, timeout=timeout)

    async def _close_async(
        self,
        wait: bool,
        *,
        cancel_futures: bool,
        drain: bool = True,
        timeout: float | None = None,
    ) -> None:
        """Shut down as ``Runtime.close`` does, and with ``wait`` wait
        without blocking the event loop."""
        runtime = self._mark_shutdown()
        if runtime is None or runtime.inherited:
            return
        runtime.close(wait=False, cancel_futures=cancel_futures, drain=drain, timeout=timeout)
        # on the pool's own thread (in a done callback) the loop cannot end
        # while it waits: there, as ``shutdown``, it returns at once
        if wait and threading.current_thread() is not runtime.thread:
            while runtime.loop_running:
                await asyncio.sleep(0.005)
        runtime.log_untold_error()

    # running tasks

    def submit(
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:
        """Run ``fn(*args, **kwargs)`` in the pool; return a ``concurrent.futures.Future``.

        The future completes without the caller running any event loop. It
        can be cancelled until a worker holds its task (each holds up to
        ``qsize``); from then on it is running. A function or arguments that
        cannot be pickled fail the future with the pickler's error, as under
        ``ProcessPoolExecutor``: no task is made, and code that handles
        errors future by future meets it where it looks.
        """
        return self._submit_named(None, fn, args, kwargs)

    def _submit_named(
        self,
        name: str | None,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        max_retries: int | None = None,
    ) -> concurrent.futures.Future[Any]:
        """``submit``, with ``name`` for the task in error messages instead
        of ``fn``'s name (the joblib backend names the functions of a batch),
        and ``max_retries`` for the task instead of the pool's."""
        runtime = self._live_runtime()
        check_callable(fn)  # a call that is wrong in itself raises here
        try:
            task = self._tasks.call(fn, args, kwargs, self._future_sink, name=name)
        except Exception as e:  # the pickler's
            failed: concurrent.futures.Future[Any] = concurrent.futures.Future()
            failed.set_exception(e)
            return failed
        task.max_retries = max_retries
        future = TaskFuture(task, runtime.loop, runtime.wake_broker)
        try:
            runtime.broker.submit((task,))
        except PoolClosedError:
            raise_start_error(runtime)
        return future

    def run(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``func(*args, **kwargs)`` in the pool and return its result.

        Interrupted while it waits (Ctrl-C), it cancels the task if no
        worker holds it yet.
        """
        future = self.submit(func, *args, **kwargs)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # no-op once it is done: a task's own error, say
            raise

    async def run_async(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Async version of ``run``; cancelling it drops the task if no
        worker holds it yet (the result of one that does is discarded)."""
        loop = running_loop("run_async", "run")
        self._refuse_wait_on_own_loop("Pool.run_async")
        runtime = self._live_runtime()
        sink = self._loop_sinks.get(loop)
        if sink is None:
            sink = self._loop_sinks[loop] = AsyncFutureSink(LoopPort(loop), self._tasks.data_loads)
        future = loop.create_future()
        task = self._tasks.call(func, args, kwargs, sink, future)
        future.add_done_callback(functools.partial(cancel_if_cancelled, task, runtime.broker.wake))
        try:
            runtime.broker.submit((task,))
        except PoolClosedError:
            raise_start_error(runtime)
        return await future


def _cancelled(error: BaseException | None) -> bool:
    """A ``with`` block ends with ``error`` because its program or task was
    told to stop: a Ctrl-C, which ``asyncio.run`` turns into the
    cancellation of its main task, or a cancellation (a timeout, say)."""
    return isinstance(error, (KeyboardInterrupt, asyncio.CancelledError))


#: What to use instead of the methods of ``multiprocessing.Pool`` that
#: ``Pool`` does not have (see "scipy, emcee, ..." in docs/clients.md).
_MULTIPROCESSING_POOL = {
    "apply": "use pool.run(func, *args, **kwds), which returns the result",
    "apply_async": (
        "use pool.submit(func, *args, **kwds), which returns a concurrent.futures.Future "
        "(.result() where multiprocessing has .get())"
    ),
    "imap": "use pool.map(func, iterable), which returns a lazy iterator of the results",
    "imap_unordered": (
        "use pool.map(func, iterable, ordered=False), an iterator of the results as they come"
    ),
    "starmap": (
        "use pool.map(func, iterable, star=True), an iterator of the results "
        "(list() of it is the list multiprocessing returns)"
    ),
    "starmap_async": (
        "use pool.map(func, iterable, star=True), an iterator of the results, which "
        "starts at the call (in a coroutine: async for over pool.map_async(..., star=True))"
    ),
    "close": (
        "use pool.shutdown(), which waits for the tasks submitted and stops the workers, "
        "as close() and join() do, or a 'with Pool(...) as pool:' block"
    ),
    "join": (
        "use pool.shutdown(), which waits for the tasks submitted and stops the workers, "
        "as close() and join() do, or a 'with Pool(...) as pool:' block"
    ),
    "terminate": (
        "use pool.terminate_workers(), which cancels the tasks not started and stops "
        "the workers at once (SIGTERM), then pool.shutdown() to wait for their exit"
    ),
}
