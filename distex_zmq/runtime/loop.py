"""The pool loop: a daemon thread that runs the broker and starts the workers.

A ``Runtime`` holds everything that lives on the pool loop and nothing that
refers back to the ``Pool``, so that a pool that is garbage-collected (or
still open at interpreter exit) can be shut down by a finalizer; the exit
waits for the tasks of every pool (``wait_at_exit``). It starts
the loop thread, binds the broker (its TCP endpoints: ``RemoteEndpoints``),
has the ``Supervisor`` start the workers and keep them running, gives the
broker its hooks (``PoolHooks``), hands changes of the running pool to
``Elastic``, and tears it all down.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import importlib
import logging
import multiprocessing.util
import os
import shutil
import signal
import sys
import threading
import time
import weakref
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn

import zmq

from distex_zmq.broker import Broker, Task
from distex_zmq.errors import PoolClosedError, fresh_error
from distex_zmq.hostspec import HostSpec
from distex_zmq.loops import new_event_loop
from distex_zmq.options import Options
from distex_zmq.results import mark_pool_loop
from distex_zmq.runtime import exits, forks
from distex_zmq.runtime.elastic import Elastic
from distex_zmq.runtime.endpoints import RemoteEndpoints
from distex_zmq.runtime.hooks import PoolHooks
from distex_zmq.runtime.ipc import make_ipc_dir, socket_path, sweep_stale_ipc_dirs
from distex_zmq.runtime.snapshot import stopped, take_status
from distex_zmq.runtime.startup import StartGate, start_workers
from distex_zmq.runtime.stdfds import hold_standard_fds
from distex_zmq.runtime.supervisor import Supervisor
from distex_zmq.tasks import TaskMaker

if TYPE_CHECKING:
    from distex_zmq.status import PoolStatus

_logger = logging.getLogger("distex_zmq.pool")

#: Seconds a worker may take to finish its tasks after STOP before SIGTERM.
STOP_GRACE = 3.0
#: The same, when the pool failed (start-up, crash loop), drops the tasks
#: that run (the exit of a program that a Ctrl-C ended), or its shutdown's
#: ``timeout`` ended before they did.
FAILED_STOP_GRACE = 0.5
#: Seconds a shutdown waits for the tasks submitted while no worker is
#: ready (every host lost, say): then it stops, and they fail.
DRAIN_WITHOUT_WORKERS = 30.0
#: Seconds a shutdown with no task left waits for a start still going on
#: (the last workers starting) before it cuts the start short.
IDLE_START_GRACE = 5.0


class Runtime:
    """Starts the pool loop thread, the broker and the workers; shuts them down."""

    def __init__(self, options: Options, tasks: TaskMaker):
        self.options = options
        self._tasks = tasks
        #: the process that made the runtime: the only one that may use it
        self.pid = os.getpid()
        self._fork_generation = forks.generation
        # The status classes are imported now, not when the teardown takes
        # the last status: an import at the interpreter's exit runs the
        # ``exec`` of dataclasses, which forgets a KeyboardInterrupt that is
        # ending the program (exit status 1 instead of 130).
        importlib.import_module("distex_zmq.status")
        hold_standard_fds()
        sweep_stale_ipc_dirs()
        self._ipc_dir = make_ipc_dir()
        self.loop = new_event_loop()
        self.closing = False
        #: why the pool cannot take tasks any more (start-up failure, crash loop)
        self.error: BaseException | None = None
        #: the traceback ``error`` had when it was set (``raise_error``)
        self._error_traceback: TracebackType | None = None
        #: a call raised ``error``, or a task failed with it (``log_untold_error``)
        self._error_told = False
        #: why a shutdown stopped waiting for the tasks (no worker for long)
        self._no_workers: str | None = None
        #: the ids of the tasks a shutdown waited for (None: it waited for none)
        self._waited_for: set[int] | None = None
        #: what stopped the workers at once (``terminate_workers``, ``kill_workers``)
        self._forced: str | None = None
        #: the pool's last status, taken as it was torn down
        self._final_status: PoolStatus | None = None
        self._ctx = zmq.Context()
        self.loop.set_exception_handler(self._on_loop_error)
        hooks = PoolHooks(options, tasks, self)
        self.broker = Broker(
            self.loop,
            self._ctx,
            options.max_retries,
            options.task_timeout,
            hooks,
            options.max_tasks_per_child,
            options.remote.heartbeat_timeout,
        )
        #: ``broker.wake``, bound once: each future of ``submit`` holds it
        self.wake_broker = self.broker.wake
        self.supervisor = Supervisor(self.loop, self._ctx, self.broker, options, self)
        self._endpoints = RemoteEndpoints(self._ctx, self.loop, self.broker, options)
        self._gate = StartGate(self.loop, options)
        # set as the loop thread ends: waited for instead of ``Thread.join``,
        # which Python before 3.13 leaves thinking the thread ended when a
        # KeyboardInterrupt interrupts it (a later join returns at once)
        self._loop_ended = threading.Event()
        self._thread = threading.Thread(
            target=self._run_loop, name="distex_zmq pool loop", daemon=True
        )
        self._thread.start()
        _running.add(self)
        _wait_at_multiprocessing_exit()
        #: the keys a remote worker needs to reach the broker (JSON-ready)
        self.worker_keys = self._endpoints.worker_keys
        self.elastic = Elastic(self.loop, self.supervisor, self.broker, options, self)
        self.started: concurrent.futures.Future[None] = asyncio.run_coroutine_threadsafe(
            self._start(), self.loop
        )

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    @property
    def loop_running(self) -> bool:
        """The pool loop thread has not ended (``Thread.is_alive`` can be
        wrong after a join that a Ctrl-C interrupted). In a forked child it
        does not run: it is the parent's."""
        return not self.inherited and not self._loop_ended.is_set()

    def wait_loop_ended(self, timeout: float | None = None) -> bool:
        """Wait until the pool loop thread has ended; False after ``timeout``."""
        return self.inherited or self._loop_ended.wait(timeout)

    @property
    def inherited(self) -> bool:
        """True in a forked child: the runtime is its parent's (a pid check
        would cost a system call on every submit; this compares two ints)."""
        return self._fork_generation != forks.generation

    @property
    def is_up(self) -> bool:
        """Every worker was ready once: the start-up is over."""
        return self._gate.is_over

    @property
    def ready_workers(self) -> int:
        """Workers ready for tasks now (any thread)."""
        return self.broker.registry.ready_count

    def failure(self) -> BaseException | None:
        """Why the pool failed: its start-up or later, or, in a forked child
        of a pool that ran, that the pool is its parent's (None: it did not)."""
        if self.error is not None:
            return self.error
        started = self.started
        if started.done() and not started.cancelled() and started.exception() is not None:
            return started.exception()
        if self.inherited and not self.closing and self._final_status is None:
            return self.inherited_error()
        return None

    def inherited_error(self) -> PoolClosedError:
        """What using the pool raises in a forked child."""
        return PoolClosedError(
            f"this pool belongs to process {self.pid}; this process "
            f"(pid {os.getpid()}) is a fork of it, where the pool's workers and "
            "threads do not exist. Create a new Pool in the child"
        )

    def pool_state(self, shut_down: bool = False) -> str:
        """``"starting"``, ``"ready"``, ``"hosts lost"``, ``"failed"`` or
        ``"shut down"`` (any thread); ``shut_down``: the user shut the pool
        down."""
        if shut_down:
            return "shut down"
        if self.failure() is not None:
            return "failed"
        if self._final_status is not None or self.closing:
            return "shut down"
        if not self.is_up:
            return "starting"
        return "hosts lost" if self.supervisor.roster.all_lost() else "ready"

    def status(self, shut_down: bool = False) -> PoolStatus:
        """A snapshot of the pool: on the pool loop while it runs, else the
        last one, taken as it was torn down."""
        if self.inherited:
            # the parent's pool, as it was at the fork: nothing of it runs here
            state = self.pool_state(shut_down)
            status = take_status(
                self.broker,
                self.supervisor.roster,
                self._tasks,
                state,
                self.failure() if state == "failed" else None,
                self.options.total_workers,
            )
            totals = dataclasses.replace(status.totals, queued=0, in_flight=0)
            return dataclasses.replace(status, workers=(), hosts=(), totals=totals)
        final = self._final_status
        if final is not None:
            state, error = self.pool_state(shut_down), self.failure()
            if final.state == state and final.error is error:
                return final
            return dataclasses.replace(final, state=state, error=error)
        return take_status(
            self.broker,
            self.supervisor.roster,
            self._tasks,
            self.pool_state(shut_down),
            self.failure(),
            self.options.total_workers,
        )

    def _run_loop(self) -> None:
        mark_pool_loop(self.loop)
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            try:
                self.loop.close()
            finally:
                self._loop_ended.set()

    # start-up

    async def _start(self) -> None:
        """Bind, start the workers and wait until each is ready. Whatever
        fails on the way (a bind, a spawn, a host, a worker, an exception on
        the pool loop) becomes ``error`` and tears everything down."""
        try:
            ipc = f"ipc://{socket_path(self._ipc_dir)}"
            began = time.monotonic()
            await start_workers(
                self.options, self.broker, ipc, self._endpoints, self.supervisor, self._gate
            )
            _logger.debug(
                "up: %d workers ready in %.2f s, the broker at %s",
                self.options.total_workers,
                time.monotonic() - began,
                ipc,
            )
        except BaseException as e:
            if self.error is None and not isinstance(e, asyncio.CancelledError):
                self._set_error(e)
            await self._teardown(FAILED_STOP_GRACE)
            raise

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """An exception that escaped a callback on the pool loop: logged, and
        during start-up the end of the start, which would wait forever."""
        loop.default_exception_handler(context)
        error = context.get("exception")
        if isinstance(error, Exception) and not self.closing and not self._gate.is_over:
            self.fail(error)

    def local_endpoint(self) -> str:
        """The broker's ipc endpoint for a new local worker.

        A cleaner of ``TMPDIR`` may remove the socket's directory of a pool
        that runs for days. The broker then binds again in a new directory,
        so that new workers (replacements, renewals, a ``resize``) reach it;
        the workers connected already keep their connections.
        """
        ipc = f"ipc://{socket_path(self._ipc_dir)}"
        if os.path.exists(socket_path(self._ipc_dir)):
            return ipc
        gone, self._ipc_dir = self._ipc_dir, make_ipc_dir()
        shutil.rmtree(gone, ignore_errors=True)
        _logger.warning(
            "the pool's socket %s was removed; new workers connect to %s instead",
            socket_path(gone),
            socket_path(self._ipc_dir),
        )
        return self.broker.bind(f"ipc://{socket_path(self._ipc_dir)}")

    def broker_port(self, spec: HostSpec) -> int:
        """The broker's TCP port for workers on ``spec``, bound on first need."""
        return self._endpoints.port_for(spec)

    # elasticity (see ``Elastic``), once the pool is up

    def add_hosts(self, specs: list[HostSpec]) -> concurrent.futures.Future[None]:
        return self.elastic.when_up(self.started, lambda: self.elastic.add_hosts(specs))

    def remove_hosts(
        self, names: list[str], drain: bool, timeout: float | None
    ) -> concurrent.futures.Future[None]:
        return self.elastic.when_up(
            self.started, lambda: self.elastic.remove_hosts(names, drain, timeout)
        )

    def resize(
        self, num_workers: int, drain: bool, timeout: float | None
    ) -> concurrent.futures.Future[None]:
        return self.elastic.when_up(
            self.started, lambda: self.elastic.resize(num_workers, drain, timeout)
        )

    def worker_ready(self) -> None:
        """A worker became ready (a replacement too): the start-up ends once
        ``total_workers`` have."""
        self._gate.worker_ready()

    def _set_error(self, error: BaseException) -> None:
        self.error = error
        self._error_traceback = error.__traceback__

    def raise_error(self) -> NoReturn:
        """Raise ``error`` to a caller: a copy (``fresh_error``), with the
        traceback it had when it was set (and this call's frames). Raised as
        it is from every later call, it would add each call's frames to its
        traceback and keep them, their locals too (the arguments of each
        task submitted, the pool), for as long as the pool lives."""
        error = self.error
        assert error is not None
        self._error_told = True
        raise fresh_error(error).with_traceback(self._error_traceback)

    def note_error_told(self) -> None:
        """A caller got ``error`` other than from ``raise_error`` (a future
        that was waiting for the start)."""
        self._error_told = True

    def log_untold_error(self) -> None:
        """Log ``error`` if no call has raised it and no task failed with it
        (at ``Pool.shutdown``, or when the pool is dropped; once). A pool
        whose start failed after the last call that used it (a host that
        could not be reached, while the workers that were up ran the tasks)
        would otherwise end without a word of it but in its ``repr``."""
        error = self.error
        if error is None or self._error_told:
            return
        self._error_told = True
        _logger.warning(
            "shutdown: the pool had failed, and none of its calls raised the error: %s: %s",
            type(error).__name__,
            error,
        )

    def _fail_task(self, error: BaseException) -> BaseException:
        """What a task waiting when the pool failed with ``error`` fails with."""
        self._error_told = True
        return fresh_error(error)

    def fail(self, error: BaseException) -> None:
        """The pool cannot go on: fail what waits and refuse new tasks."""
        if self.error is None:
            self._set_error(error)
        if not self._gate.fail(error):
            self.broker.fail_all(lambda task: self._fail_task(error))

    # shut-down

    def close(
        self,
        wait: bool = True,
        cancel_futures: bool = False,
        drain: bool = True,
        timeout: float | None = None,
        force: signal.Signals | None = None,
    ) -> concurrent.futures.Future[None] | None:
        """Shut down; idempotent. Returns the future of the shutdown, if started.

        ``drain``: let every submitted task finish first, for at most
        ``timeout`` seconds; without it the tasks that run are dropped, their
        workers stopped after a short grace. ``force`` (SIGTERM or SIGKILL):
        the tasks that run are dropped and their workers get the signal now,
        a shutdown already under way included. ``wait``: return only when
        every worker has exited (not possible on the pool loop itself). In a
        forked child it does nothing: the workers are the parent's.
        """
        if self.inherited:
            return None
        done = None
        if not self.closing or force is not None:
            try:
                done = asyncio.run_coroutine_threadsafe(
                    self._shutdown(drain, cancel_futures, timeout, force), self.loop
                )
            except RuntimeError:  # loop already closed
                pass
        if wait and threading.current_thread() is not self._thread:
            self.wait_loop_ended()
        return done

    async def _shutdown(
        self,
        drain: bool,
        cancel_futures: bool,
        timeout: float | None,
        force: signal.Signals | None = None,
    ) -> None:
        if force is not None:
            self._note_forced(force)
        if self._stopping_already(force):
            return
        deadline = None if timeout is None else self.loop.time() + timeout
        if cancel_futures:
            # also while the start goes on (an initializer that does not
            # return): the tasks that wait for it never started
            self._cancel_queued()
        if not drain:
            # nothing is waited for (a Ctrl-C): not the start-up either, which
            # tears down what it started when cancelled
            self.started.cancel()
        if not self.started.done():
            # The start goes on (an initializer that does not return, say):
            # wait for it, but no longer than ``timeout``, nor once no task
            # is left to run (none was submitted, or all were cancelled).
            start = self._when_started()
            nothing_left = self._drained()
            await asyncio.wait(
                [start, nothing_left], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            idle = nothing_left.done()
            nothing_left.cancel()
            if idle and not start.done():
                # a start that is about to end (the last workers importing)
                # ends as usual, its workers stopped as those of a pool up
                left = None if deadline is None else max(0.0, deadline - self.loop.time())
                grace = IDLE_START_GRACE if left is None else min(left, IDLE_START_GRACE)
                await asyncio.wait([start], timeout=grace)
            if not start.done():
                start.cancel()
                if not self.started.cancelled():  # (a second shutdown may wait here too)
                    # a pool shut down as it starts, with nothing to run, is
                    # no news; a start that outlasts the timeout is
                    _logger.log(
                        logging.DEBUG if idle else logging.WARNING,
                        "shutdown: the pool's start did not end (%s); stopping",
                        "no task is left" if idle else f"within {timeout:g} s",
                    )
                    self.started.cancel()  # the start tears down what it started
                with contextlib.suppress(BaseException):
                    await asyncio.wrap_future(self.started)
                return
        try:
            await asyncio.wrap_future(self.started)
        except BaseException:  # noqa: BLE001 - start-up failed; it cleaned up
            return
        if self._stopping_already(force):
            return
        if cancel_futures:
            self._cancel_queued()  # those put back since (their worker lost)
        timed_out = False
        if drain:
            timeout = None if deadline is None else max(0.0, deadline - self.loop.time())
            self._waited_for = self.broker.active_ids()
            try:
                await asyncio.wait_for(self._drain(self._drained()), timeout)
            except asyncio.TimeoutError:
                timed_out = True
                _logger.warning("shutdown: tasks still running after %s s; stopping", timeout)
        if self._stopping_already(force):
            return
        # after a failure, for tasks dropped, or once the timeout is over
        # (what still runs has failed), nothing is worth waiting for
        calm = drain and not timed_out and self.error is None
        if force is not None:
            await self._teardown(0.0, force)
        else:
            await self._teardown(STOP_GRACE if calm else FAILED_STOP_GRACE)

    def _note_forced(self, sig: signal.Signals) -> None:
        """Say why the tasks that run fail: ``sig`` stops their workers."""
        if self._forced is None:
            name = "terminate_workers" if sig == signal.SIGTERM else "kill_workers"
            self._forced = f"the pool's workers were stopped by {name}() ({sig.name})"

    def _stopping_already(self, force: signal.Signals | None) -> bool:
        """Whether a teardown stops the workers already; with ``force``
        SIGKILL, they are killed now. (A SIGTERM changes nothing there: it
        follows the STOP within ``STOP_GRACE``.)"""
        if self.closing and force == signal.SIGKILL:
            self.supervisor.kill_all()
        return self.closing

    def _when_started(self) -> asyncio.Future[None]:
        """A future done once the start has ended, however it ended. It
        carries no error, which an ``asyncio.wrap_future`` of ``started``
        would: one that the loop ends before it reads it (the start that
        failed stops the loop) is logged as "never retrieved". Cancelling it
        leaves the start alone."""
        ended: asyncio.Future[None] = self.loop.create_future()

        def on_ended() -> None:
            if not ended.done():
                ended.set_result(None)

        def on_started(_: object) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed
                self.loop.call_soon_threadsafe(on_ended)

        self.started.add_done_callback(on_started)
        return ended

    def _drained(self) -> asyncio.Future[None]:
        """A future done once every task submitted so far has finished."""
        drained: asyncio.Future[None] = self.loop.create_future()

        def on_drained() -> None:
            if not drained.done():
                drained.set_result(None)

        self.broker.when_drained(on_drained)
        return drained

    def _cancel_queued(self) -> None:
        """Cancel the tasks that no worker holds (``cancel_futures``)."""
        self.broker.fail_all(
            lambda task: concurrent.futures.CancelledError(
                f"the pool was shut down with cancel_futures=True before {task.describe()} started"
            )
        )

    async def _drain(self, drained: asyncio.Future[None]) -> None:
        """Until ``drained``, or until no worker was ready for
        ``DRAIN_WITHOUT_WORKERS`` seconds (their hosts lost): no task could
        finish then, and the exit of a program would wait for ever."""
        registry = self.broker.registry
        idle_since = None
        while not drained.done():
            await asyncio.wait([drained], timeout=1.0)
            if registry.ready_count:
                idle_since = None
                continue
            now = self.loop.time()
            if idle_since is None:
                idle_since = now
            elif now - idle_since >= DRAIN_WITHOUT_WORKERS and not drained.done():
                self._no_workers = (
                    "the pool was shut down after no worker was left to run it for "
                    f"{DRAIN_WITHOUT_WORKERS:g} s (its hosts lost)"
                )
                _logger.warning(
                    "shutdown: no worker for %g s (the hosts lost); the tasks left fail",
                    DRAIN_WITHOUT_WORKERS,
                )
                return

    async def _teardown(self, grace: float, force: signal.Signals | None = None) -> None:
        """Stop the workers, giving each ``grace`` seconds to finish its
        tasks (with ``force`` SIGKILL, none: they are killed first), and end
        the pool loop."""
        self.closing = True  # before a kill: their exits are no deaths then
        if force == signal.SIGKILL:
            self.supervisor.kill_all()
        try:
            await self._stop_all(grace)
        finally:
            # the socket of a launcher that failed half-way included
            self._ctx.destroy(linger=0)
            shutil.rmtree(self._ipc_dir, ignore_errors=True)
            # a shutdown that waited for start-up, say: end it before the loop
            for task in asyncio.all_tasks(self.loop):
                if task is not asyncio.current_task():
                    task.cancel()
            self.loop.call_soon(self.loop.stop)

    async def _stop_all(self, grace: float) -> None:
        broker = self.broker
        broker.stop_workers()
        try:
            await self.supervisor.stop(grace, reconnect_grace=STOP_GRACE + 5)
        finally:
            start_error = self.error

            no_workers = self._no_workers
            waited_for = self._waited_for
            forced = self._forced

            def error(task: Task) -> BaseException:
                if start_error is not None:
                    self._error_told = True
                    return start_error
                if no_workers is not None:
                    return PoolClosedError(f"{task.describe()} did not run: {no_workers}")
                if forced is not None:
                    return PoolClosedError(f"{task.describe()} did not finish: {forced}")
                if (
                    task.index is not None
                    and waited_for is not None
                    and task.shown_id not in waited_for
                ):
                    # a map that another thread reads on, say
                    return PoolClosedError(
                        f"the pool was shut down before {task.describe()} ran: a map "
                        "submits its inputs as its results are taken, and took this one "
                        "after the shutdown began; read a map to its end before its pool "
                        "shuts down"
                    )
                return PoolClosedError(f"the pool was shut down before {task.describe()} finished")

            broker.close(error)
            last = self.status()
            self._final_status = stopped(last, "failed" if last.error is not None else "shut down")
            totals = last.totals
            _logger.debug(
                "%s: %d tasks done (a map's chunk counts once), %d failed, %d retried; "
                "%d workers lost, %d replaced",
                self._final_status.state,
                totals.done,
                totals.failed,
                totals.retried,
                totals.workers_lost,
                totals.replacements,
            )
            self._endpoints.close()


def shutdown_runtime(runtime_ref: weakref.ref[Runtime]) -> None:
    """Finalizer of a pool no longer referenced: shut it down once the tasks
    submitted have finished, without waiting here (the futures of a dropped
    pool still complete, as a dropped ``ProcessPoolExecutor``'s do).

    It holds the runtime weakly: while the pool loop runs, its thread holds
    the runtime, and once the loop has ended there is nothing to shut down.
    Held strongly, by the finalizer registry (a global), a runtime would
    keep alive what it refers to, and through it the pool: the error of a
    pool whose start failed holds the frames it was raised through, which
    hold the pool, so that such a pool, dropped, would never be freed (nor its
    runtime, broker and tasks)."""
    runtime = runtime_ref()
    if runtime is not None:
        runtime.close(wait=False)
        runtime.log_untold_error()


#: Seconds the interpreter's exit waits for the pools' tasks before it says so.
EXIT_NOTICE_AFTER = 10.0


#: What a pool shut down by ``wait_at_exit`` raises when it is used later.
CLOSED_AT_EXIT = (
    "the pool was shut down at the interpreter's exit, before this call: atexit runs "
    "the handlers registered last first, so one that uses a pool must be registered "
    "after distex_zmq was imported"
)


def wait_at_exit() -> None:
    """At the interpreter's exit, wait until every pool has finished the
    tasks submitted and stopped its workers, as the exit does for the
    futures of a ``ProcessPoolExecutor``: also after ``shutdown(wait=False)``
    or none at all. Ctrl-C drops what is left, and so does the exit of a
    program that a Ctrl-C ended (its ``KeyboardInterrupt`` went unhandled):
    its user asked it to stop. A Ctrl-C while the pools drop their tasks
    ends the wait: the pools are left to stop as the process ends (their
    workers die with it)."""
    global _exit_cut_short
    if _exit_cut_short:
        return  # (it runs twice: at the exit, then among multiprocessing's finalizers)
    interrupted = _ended_by_ctrl_c()
    try:
        for runtime in list(_running):
            runtime.broker.closed_message = CLOSED_AT_EXIT
            if not interrupted:
                try:
                    runtime.close(wait=False)
                    if not runtime.wait_loop_ended(EXIT_NOTICE_AFTER):
                        print(
                            "distex_zmq: the interpreter exits once the pool's tasks have "
                            "finished; Ctrl-C drops them",
                            file=sys.stderr,
                            flush=True,
                        )
                        runtime.wait_loop_ended()
                    continue
                except KeyboardInterrupt:
                    interrupted = True  # this pool's tasks, and every other's
            runtime.close(wait=True, cancel_futures=True, drain=False)
    except KeyboardInterrupt:
        _exit_cut_short = True
        for runtime in list(_running):
            with contextlib.suppress(KeyboardInterrupt):
                runtime.close(wait=False, cancel_futures=True, drain=False)


#: A Ctrl-C came as the pools dropped their tasks at the exit (``wait_at_exit``).
_exit_cut_short = False


def _ended_by_ctrl_c() -> bool:
    """A Ctrl-C ended the program: its ``KeyboardInterrupt`` went unhandled
    (``sys.last_value``), or came as the exit waited for threads that are
    not daemons (``exits.ctrl_c_came``). An interactive session (Python's
    REPL, IPython, a Jupyter kernel) keeps in ``sys.last_value`` the last
    error it showed and goes on, so in one a statement interrupted earlier
    does not count."""
    if exits.ctrl_c_came():
        return True
    if not isinstance(getattr(sys, "last_value", None), KeyboardInterrupt):
        return False
    return not _interactive()


def _interactive() -> bool:
    """This process runs Python's REPL or an IPython shell (Jupyter's too)."""
    if hasattr(sys, "ps1") or sys.flags.interactive:
        return True
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    return get_ipython is not None and get_ipython() is not None


#: Runtimes whose loop thread runs (it holds its runtime while it does).
_running: weakref.WeakSet[Runtime] = weakref.WeakSet()
exits.register(wait_at_exit)

#: Before multiprocessing's own finalizers at its exit (its pools': 15), as
#: ``wait_at_exit`` runs before them at the interpreter's exit.
EXIT_PRIORITY = 100
#: ``forks.generation`` of the process whose multiprocessing finalizers
#: hold ``wait_at_exit`` (-1: none yet).
_finalized_generation = -1


def _wait_at_multiprocessing_exit() -> None:
    """Have ``wait_at_exit`` run also where a process ends without the atexit
    hooks: a child of multiprocessing's ``fork`` (or ``forkserver``) start
    method runs its finalizers, then ``os._exit``. Once in each process, and
    anew in a forked child: its parent's finalizers are not its own (the
    child clears them, or they ignore another pid), and they run nowhere but
    in the process that registered them, so a child never waits for or stops
    its parent's pools (which ``Runtime.close`` leaves alone there as well)."""
    global _finalized_generation
    if _finalized_generation != forks.generation:
        multiprocessing.util.Finalize(None, wait_at_exit, exitpriority=EXIT_PRIORITY)
        _finalized_generation = forks.generation
