"""The pool loop: a daemon thread running the broker and the launchers.

A ``Runtime`` holds everything that lives on the pool loop and nothing that
refers back to the ``Pool``, so that a pool that is garbage-collected (or
still open at interpreter exit) can be shut down by a finalizer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import deque
from typing import Any

import zmq

from distex_zmq import protocol as p
from distex_zmq.broker import Broker, Task, WorkerRecord
from distex_zmq.broker.broker import STATUS_LOCAL_ERROR, initializer_tag
from distex_zmq.errors import DistexError, PoolClosedError, WorkerStartError
from distex_zmq.local_launcher import LocalLauncher, describe_exit
from distex_zmq.loops import new_event_loop
from distex_zmq.serialization import FunctionCache, dumps, loads, pickle_module

_logger = logging.getLogger("distex_zmq.pool")

#: Seconds a worker may take to finish its tasks after STOP before SIGTERM.
STOP_GRACE = 3.0
#: Workers dying faster than this many per minute make a crash loop.
CRASH_LOOP_DEATHS_PER_MINUTE = 30


class Options:
    """The settings of one pool, as the runtime needs them."""

    def __init__(self, **kwargs: Any):
        self.num_workers: int = kwargs["num_workers"]
        self.qsize: int = kwargs["qsize"]
        self.initializer: Any = kwargs["initializer"]
        self.initargs: tuple[Any, ...] = kwargs["initargs"]
        self.worker_loop: int = kwargs["worker_loop"]
        self.func_pickle: int = kwargs["func_pickle"]
        self.data_pickle: int = kwargs["data_pickle"]
        self.max_retries: int = kwargs["max_retries"]


class Runtime:
    """Starts the pool loop thread, the broker and the workers; shuts them down."""

    def __init__(self, options: Options, functions: FunctionCache, next_task_id: Any):
        self.options = options
        self.functions = functions
        self._next_task_id = next_task_id
        self.loop = new_event_loop()
        self.closing = False
        self.closed = False
        self.error: BaseException | None = None
        self._ready_count = 0
        self._deaths: deque[float] = deque()
        self._ipc_dir = tempfile.mkdtemp(prefix="distex_zmq-")
        self._ctx = zmq.Context()
        self.broker = Broker(self.loop, self._ctx, options.max_retries)
        self._thread = threading.Thread(
            target=self._run_loop, name="distex_zmq pool loop", daemon=True
        )
        self._thread.start()
        self.launcher: LocalLauncher
        self.started: concurrent.futures.Future[None] = asyncio.run_coroutine_threadsafe(
            self._start(), self.loop
        )

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    # start-up

    async def _start(self) -> None:
        opts = self.options
        self.broker.on_hello = self._on_hello
        self.broker.on_ready = self._on_ready
        self.broker.on_init_failed = self._on_init_failed
        endpoint = self.broker.bind(f"ipc://{self._ipc_dir}/broker")
        worker_args = [
            "--credits",
            str(opts.qsize),
            "--func-pickle",
            str(int(opts.func_pickle)),
            "--data-pickle",
            str(int(opts.data_pickle)),
            "--loop",
            str(int(opts.worker_loop)),
        ]
        self.launcher = LocalLauncher(self.loop, endpoint, worker_args, self._on_exit)
        self._all_ready: asyncio.Future[None] = self.loop.create_future()
        for _ in range(opts.num_workers):
            self._spawn()
        if opts.num_workers == 0:
            self._all_ready.set_result(None)
        try:
            await self._all_ready
        except BaseException:
            await self._teardown()
            raise

    def _spawn(self) -> None:
        proc = self.launcher.spawn()
        self.broker.expect(proc.identity)

    def _on_hello(self, rec: WorkerRecord) -> Task | None:
        init = self.options.initializer
        if init is None:
            return None
        func_id, func_pickle = self.functions.get(init)
        data, buffers = dumps(self.options.initargs, pickle_module(self.options.data_pickle).dumps)
        return Task(
            next(self._next_task_id),
            func_id,
            func_pickle,
            p.FLAG_STAR,
            data,
            buffers,
            sink=_NO_SINK,
            tag=initializer_tag(),
        )

    def _on_ready(self, rec: WorkerRecord) -> None:
        self._ready_count += 1
        if self._ready_count >= self.options.num_workers and not self._all_ready.done():
            self._all_ready.set_result(None)

    def _on_init_failed(self, rec: WorkerRecord, status: int, value: Any) -> None:
        if status == STATUS_LOCAL_ERROR:
            cause = value
        else:
            try:
                cause = loads(value[0], value[1], pickle_module(self.options.data_pickle).loads)
            except Exception as e:  # noqa: BLE001
                cause = e
        error = WorkerStartError(
            f"the initializer {getattr(self.options.initializer, '__name__', '')!r} "
            f"raised on {rec}: {type(cause).__name__}: {cause}"
        )
        error.__cause__ = cause if isinstance(cause, BaseException) else None
        self._fail_start(error)

    def _fail_start(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        if not self._all_ready.done():
            self._all_ready.set_exception(error)
        else:
            self.broker.fail_all(lambda task: error)

    # supervision

    def _on_exit(self, identity: bytes, returncode: int, tail: str) -> None:
        if self.closing:
            return
        rec = self.broker.registry.get(identity)
        how = describe_exit(returncode)
        if tail:
            how += "; its last stderr lines:\n" + tail
        if rec is None or not rec.ready:
            pid = rec.pid if rec else "?"
            self._fail_start(WorkerStartError(f"a local worker (pid {pid}) failed to start: {how}"))
            return
        self.broker.worker_lost(rec, how)
        now = time.monotonic()
        self._deaths.append(now)
        while self._deaths and self._deaths[0] < now - 60:
            self._deaths.popleft()
        if len(self._deaths) > CRASH_LOOP_DEATHS_PER_MINUTE:
            self._fail_start(
                DistexError(
                    f"workers are dying in a loop ({len(self._deaths)} in the last minute; "
                    f"the last: {rec} {how}); the pool stopped replacing them"
                )
            )
            return
        self._spawn()

    # shut-down

    def close(
        self,
        wait: bool = True,
        cancel_futures: bool = False,
        drain: bool = True,
        timeout: float | None = None,
    ) -> None:
        """Shut down; idempotent.

        ``drain``: let every submitted task finish first. ``wait``: return
        only when every worker has exited (not possible on the pool loop).
        """
        if self.closing:
            if wait and threading.current_thread() is not self._thread:
                self._thread.join(timeout)
            return
        try:
            done = asyncio.run_coroutine_threadsafe(
                self._shutdown(drain, cancel_futures), self.loop
            )
        except RuntimeError:  # loop already closed
            return
        if wait and threading.current_thread() is not self._thread:
            try:
                done.result(timeout)
            except concurrent.futures.TimeoutError:
                _logger.error("pool shutdown took longer than %s s", timeout)
            self._thread.join(timeout)

    async def _shutdown(self, drain: bool, cancel_futures: bool) -> None:
        try:
            self.started.result(0) if self.started.done() else await asyncio.wrap_future(
                self.started
            )
        except BaseException:  # noqa: BLE001 - start-up failed; still clean up
            pass
        if self.closing:
            return
        broker = self.broker
        if cancel_futures:
            broker.fail_all(lambda task: concurrent.futures.CancelledError())
        if drain:
            drained: asyncio.Future[None] = self.loop.create_future()

            def on_drained() -> None:
                if not drained.done():
                    drained.set_result(None)

            broker.when_drained(on_drained)
            await drained
        self.closing = True
        await self._teardown()

    async def _teardown(self) -> None:
        self.closing = True
        broker = self.broker
        broker.stop_workers()
        await self.launcher.stop(STOP_GRACE)
        start_error = self.error

        def error(task: Task) -> BaseException:
            if start_error is not None:
                return start_error
            return PoolClosedError(f"the pool was shut down before task {task.id} finished")

        broker.close(error)
        self._ctx.term()
        shutil.rmtree(self._ipc_dir, ignore_errors=True)
        self.closed = True
        self.loop.call_soon(self.loop.stop)


class _NoSink:
    def deliver(self, task: Task, status: int, value: Any) -> None:
        pass

    def flush(self) -> None:
        pass


_NO_SINK = _NoSink()


def shutdown_runtime(runtime: Runtime) -> None:
    """Finalizer of a pool: stop its workers without waiting for its tasks."""
    if os.getpid() != runtime_pid:
        return  # a forked child must not touch its parent's pool
    runtime.close(wait=True, cancel_futures=True, drain=False, timeout=10)


runtime_pid = os.getpid()
