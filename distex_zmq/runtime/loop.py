"""The pool loop: a daemon thread running the broker and supervising workers.

A ``Runtime`` holds everything that lives on the pool loop and nothing that
refers back to the ``Pool``, so that a pool that is garbage-collected (or
still open at interpreter exit) can be shut down by a finalizer.

Supervision: a launcher per place reports every worker exit at once: the
local launcher through pidfds, an SSH launcher through the agent on its
host. A worker that dies before it is ready fails the start-up of the pool,
or, in a pool already up, counts as a death. A worker that dies while ready is
handed to ``Broker.worker_lost`` (requeue, retry, ``WorkerLostError``) and
replaced; replacements slow down when workers die fast, and the pool gives
up with ``CrashLoopError`` when more than ``max_worker_deaths`` die within a
minute. A lost SSH host (no heartbeat, connection gone) hands its workers
to ``Broker.worker_lost`` without blame, so that their tasks run elsewhere,
and the pool tries to reconnect to it, less and less often.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import itertools
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import deque
from typing import Any

import zmq

from distex_zmq.broker import INIT_TAG, STATUS_LOCAL_ERROR, Broker, Task, WorkerRecord
from distex_zmq.errors import (
    CrashLoopError,
    HostConnectionError,
    PoolClosedError,
    WorkerStartError,
)
from distex_zmq.hostspec import HostSpec
from distex_zmq.launch.local import LocalLauncher, describe_exit
from distex_zmq.launch.remote import RemoteLauncher, RemoteSettings
from distex_zmq.launch.spawner import SpawnerLauncher
from distex_zmq.loops import new_event_loop, run_in_background
from distex_zmq.results import mark_pool_loop
from distex_zmq.security import ClusterKeys, KeyPair, ZapHandler
from distex_zmq.serialization import FunctionCache, dumps, loads, pickle_module
from distex_zmq.tasks import callable_name
from distex_zmq.wire import frames as p

_logger = logging.getLogger("distex_zmq.pool")

#: Seconds a worker may take to finish its tasks after STOP before SIGTERM.
STOP_GRACE = 3.0
#: The same, when the pool failed (start-up, crash loop).
FAILED_STOP_GRACE = 0.5
#: Seconds over which fast deaths slow replacements down.
FAST_DEATH_WINDOW = 10.0
#: Delay of a replacement while workers die fast.
SLOW_REPLACEMENT_DELAY = 1.0
#: Seconds before the first attempt to reconnect to a lost host; it doubles
#: after each failed attempt, up to ``MAX_RECONNECT_DELAY``.
RECONNECT_DELAY = 2.0
MAX_RECONNECT_DELAY = 60.0

Launcher = LocalLauncher | RemoteLauncher
#: Name prefix of a pool's private directory for its ipc socket, followed
#: by the pid of the pool's process.
IPC_PREFIX = "distex_zmq-"


@dataclasses.dataclass
class Options:
    """The settings of one pool, as the runtime needs them."""

    num_workers: int
    hosts: list[HostSpec]
    remote: RemoteSettings
    localport: int
    #: keys from the cluster's shared secret, for spawner hosts (None: no secret)
    cluster_keys: ClusterKeys | None
    qsize: int
    initializer: Any
    initargs: tuple[Any, ...]
    worker_loop: int
    func_pickle: int
    data_pickle: int
    max_retries: int
    task_timeout: float | None
    max_worker_deaths: int

    @property
    def total_workers(self) -> int:
        return self.num_workers + sum(h.num_workers for h in self.hosts)


class Runtime:
    """Starts the pool loop thread, the broker and the workers; shuts them down."""

    def __init__(self, options: Options, functions: FunctionCache, next_task_id: Any):
        self.options = options
        self.functions = functions
        #: the process that made the runtime: the only one that may use it
        self.pid = os.getpid()
        self._fork_generation = _fork_generation
        self._next_task_id = next_task_id
        self.loop = new_event_loop()
        self.closing = False
        self.closed = False
        #: why the pool cannot take tasks any more (start-up failure, crash loop)
        self.error: BaseException | None = None
        self._ready_count = 0
        #: identities of workers that are starting (no hello or initializer yet)
        self._starting: set[bytes] = set()
        #: identities of workers this pool killed itself (task_timeout)
        self._killed: set[bytes] = set()
        #: where each worker runs
        self._launcher_of: dict[bytes, Launcher] = {}
        self._worker_ids = itertools.count(1)
        #: connected SSH hosts
        self.remote: list[RemoteLauncher] = []
        self._reconnects: set[asyncio.Task[None]] = set()
        self._deaths: deque[float] = deque()
        sweep_stale_ipc_dirs()
        self._ipc_dir = tempfile.mkdtemp(prefix=f"{IPC_PREFIX}{os.getpid()}-")
        self._ctx = zmq.Context()
        self.broker = Broker(
            self.loop, self._ctx, options.max_retries, options.task_timeout, hooks=self
        )
        self._thread = threading.Thread(
            target=self._run_loop, name="distex_zmq pool loop", daemon=True
        )
        self._thread.start()
        self.launcher: LocalLauncher
        self._worker_args: list[str] = []
        self._broker_port = 0
        self._zap: ZapHandler | None = None
        #: the keys a remote worker needs to reach the broker (JSON-ready)
        self.worker_keys: dict[str, str] = {}
        self.started: concurrent.futures.Future[None] = asyncio.run_coroutine_threadsafe(
            self._start(), self.loop
        )

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    @property
    def inherited(self) -> bool:
        """True in a forked child: the runtime is its parent's (a pid check
        would cost a system call on every submit; this compares two ints)."""
        return self._fork_generation != _fork_generation

    def _run_loop(self) -> None:
        mark_pool_loop()
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    # start-up

    async def _start(self) -> None:
        opts = self.options
        broker = self.broker
        endpoint = broker.bind(f"ipc://{self._ipc_dir}/broker")
        worker_args = [
            *("--credits", str(opts.qsize)),
            *("--func-pickle", str(int(opts.func_pickle))),
            *("--data-pickle", str(int(opts.data_pickle))),
            *("--loop", str(int(opts.worker_loop))),
        ]
        self._worker_args = worker_args
        self.launcher = LocalLauncher(self.loop, endpoint, worker_args, self._on_exit)
        self._all_ready: asyncio.Future[None] = self.loop.create_future()
        for _ in range(opts.num_workers):
            self._spawn(self.launcher)
        try:
            if opts.hosts:
                self._bind_tcp()
                hosts = await asyncio.gather(
                    *(self._connect(spec) for spec in opts.hosts), return_exceptions=True
                )
                for result in hosts:
                    if isinstance(result, BaseException):
                        raise result
            await self._all_ready
        except BaseException:
            await self._teardown()
            raise

    def _bind_tcp(self) -> None:
        """The broker's TCP endpoint for remote workers: a CURVE server that
        admits only the key pair this pool hands to its own remote workers."""
        remote, port = self.options.remote, self.options.localport
        broker_keys, worker_keys = KeyPair.random(), KeyPair.random()
        self._zap = ZapHandler(self._ctx, self.loop)
        self._zap.allow(worker_keys.public)
        self.worker_keys = {
            "server": broker_keys.public.decode(),
            "public": worker_keys.public.decode(),
            "secret": worker_keys.secret.decode(),
        }
        # only through the SSH tunnels, from this machine; else from anywhere
        public = not remote.tunnel or any(not h.is_ssh for h in self.options.hosts)
        address = (remote.localhost or "0.0.0.0") if public else "127.0.0.1"
        endpoint = self.broker.bind(f"tcp://{address}:{port}", curve=broker_keys)
        self._broker_port = int(endpoint.rsplit(":", 1)[1])

    async def _connect(self, spec: HostSpec) -> RemoteLauncher:
        """Connect to a remote host and start its workers."""
        opts = self.options
        launcher: RemoteLauncher
        if spec.is_ssh:
            # imported here: paramiko takes longer to import than the rest of
            # the pool, and only SSH hosts need it
            from distex_zmq.launch.ssh import SSHLauncher

            launcher = SSHLauncher(
                self.loop,
                spec,
                opts.remote,
                self._broker_port,
                [*self._worker_args, "--curve-keys-on-stdin"],
                self.worker_keys,
                self._on_exit,
                self._on_host_lost,
            )
        else:
            launcher = SpawnerLauncher(
                self.loop,
                self._ctx,
                spec,
                opts.cluster_keys,
                self._broker_port,
                opts.remote.localhost,
                {
                    "credits": opts.qsize,
                    "func_pickle": opts.func_pickle,
                    "data_pickle": opts.data_pickle,
                    "loop": opts.worker_loop,
                },
                self.worker_keys,
                opts.remote.heartbeat_timeout,
                opts.remote.connect_timeout,
                self._on_exit,
                self._on_host_lost,
            )
        self.remote.append(launcher)
        try:
            await launcher.start()
        except BaseException:
            if launcher in self.remote:
                self.remote.remove(launcher)
            raise
        for _ in range(spec.num_workers):
            self._spawn(launcher)
        return launcher

    def _spawn(self, launcher: Launcher) -> None:
        if self.closing or self.error is not None or launcher.lost:
            return
        identity = b"%s-%d" % (launcher.label.encode(), next(self._worker_ids))
        launcher.spawn(identity)
        self._launcher_of[identity] = launcher
        self._starting.add(identity)
        self.broker.expect(identity)

    def on_hello(self, rec: WorkerRecord) -> Task | None:
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
            tag=INIT_TAG,
            name=callable_name(init),
        )

    def on_ready(self, rec: WorkerRecord) -> None:
        self._starting.discard(rec.identity)
        self._ready_count += 1
        if self._ready_count >= self.options.total_workers and not self._all_ready.done():
            self._all_ready.set_result(None)

    def on_init_failed(self, rec: WorkerRecord, status: int, value: Any) -> None:
        if self.closing:
            return
        if status == STATUS_LOCAL_ERROR:
            cause = value
        else:
            try:
                cause = loads(value[0], value[1], pickle_module(self.options.data_pickle).loads)
            except Exception as e:  # noqa: BLE001
                cause = e
        error = WorkerStartError(
            f"the initializer {callable_name(self.options.initializer)!r} raised on {rec}: "
            f"{type(cause).__name__}: {cause}"
        )
        error.__cause__ = cause if isinstance(cause, BaseException) else None
        if not self._all_ready.done():
            self._fail(error)
        else:
            # a replacement: it dies, which counts against max_worker_deaths
            _logger.error("%s", error)
            self._kill(rec.identity)

    def _fail(self, error: BaseException) -> None:
        """The pool cannot go on: fail what waits and refuse new tasks."""
        if self.error is None:
            self.error = error
        if not self._all_ready.done():
            self._all_ready.set_exception(error)
        else:
            self.broker.fail_all(lambda task: error)

    # supervision

    def on_task_timeout(self, rec: WorkerRecord, task: Task | None) -> None:
        self._killed.add(rec.identity)
        self._kill(rec.identity)
        how = f"killed by the pool after task_timeout={self.options.task_timeout} s"
        self.broker.worker_lost(rec, how, timed_out=task)

    def on_unreachable(self, rec: WorkerRecord) -> None:
        # alive without a connection (no exit was reported): replace it
        self._killed.add(rec.identity)
        self._kill(rec.identity)

    def _kill(self, identity: bytes) -> None:
        launcher = self._launcher_of.get(identity)
        if launcher is not None:
            launcher.kill(identity)

    def _on_exit(self, identity: bytes, pid: int, returncode: int, tail: str) -> None:
        launcher = self._launcher_of.pop(identity, None)
        if self.closing or launcher is None:
            return
        how = describe_exit(returncode)
        if tail:
            how += "; its last stderr lines:\n" + tail
        rec = self.broker.registry.get(identity)
        if identity in self._killed:
            self._killed.discard(identity)
            self._spawn(launcher)
            return
        if identity in self._starting:
            self._starting.discard(identity)
            if not self._all_ready.done():
                self._fail(
                    WorkerStartError(f"{launcher.describe_worker(pid)} failed to start: {how}")
                )
                return
        if rec is not None:
            self.broker.worker_lost(rec, how)
        self._replace_after_death(how, launcher)

    def _on_host_lost(self, launcher: RemoteLauncher, reason: str, identities: set[bytes]) -> None:
        """Every worker of a lost host is gone: their tasks go elsewhere, unblamed."""
        if self.closing:
            return
        how = f"its host {launcher.where} was lost: {reason}"
        for identity in identities:
            self._launcher_of.pop(identity, None)
            self._starting.discard(identity)
            self._killed.discard(identity)
            self.broker.forget(identity)
            rec = self.broker.registry.get(identity)
            if rec is not None:
                self.broker.worker_lost(rec, how, blameless=True)
        if launcher in self.remote:
            self.remote.remove(launcher)
        if not self._all_ready.done():
            self._fail(
                HostConnectionError(f"{launcher.where} was lost while the pool started: {reason}")
            )
            return
        self._reconnect_later(launcher.spec, RECONNECT_DELAY)

    def _reconnect_later(self, spec: HostSpec, delay: float) -> None:
        async def reconnect() -> None:
            await asyncio.sleep(delay)
            if self.closing or self.error is not None:
                return
            try:
                launcher = await self._connect(spec)
            except Exception as e:  # noqa: BLE001 - logged, and tried again later
                _logger.warning("cannot reconnect to %s: %s", spec, e)
                self._reconnect_later(spec, min(delay * 2, MAX_RECONNECT_DELAY))
                return
            if self.closing:
                await launcher.stop(0)
            else:
                _logger.warning("reconnected to %s", launcher.where)

        run_in_background(self.loop, reconnect(), self._reconnects)

    def _replace_after_death(self, how: str, launcher: Launcher) -> None:
        now = time.monotonic()
        deaths = self._deaths
        deaths.append(now)
        while deaths and deaths[0] < now - 60:
            deaths.popleft()
        if len(deaths) > self.options.max_worker_deaths:
            self._fail(
                CrashLoopError(
                    f"{len(deaths)} workers died within a minute (the last: {how}); the pool "
                    f"stopped replacing them (max_worker_deaths="
                    f"{self.options.max_worker_deaths}). Fix the cause and create a new Pool."
                )
            )
            return
        recent = sum(1 for t in deaths if t > now - FAST_DEATH_WINDOW)
        if recent > self.options.total_workers:
            self.loop.call_later(SLOW_REPLACEMENT_DELAY, self._spawn, launcher)
        else:
            self._spawn(launcher)

    # shut-down

    def close(
        self,
        wait: bool = True,
        cancel_futures: bool = False,
        drain: bool = True,
        timeout: float | None = None,
    ) -> concurrent.futures.Future[None] | None:
        """Shut down; idempotent. Returns the future of the shutdown, if started.

        ``drain``: let every submitted task finish first, for at most
        ``timeout`` seconds. ``wait``: return only when every worker has
        exited (not possible on the pool loop itself). In a forked child it
        does nothing: the workers are the parent's.
        """
        if self.inherited:
            return None
        done = None
        if not self.closing:
            try:
                done = asyncio.run_coroutine_threadsafe(
                    self._shutdown(drain, cancel_futures, timeout), self.loop
                )
            except RuntimeError:  # loop already closed
                pass
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()
        return done

    async def _shutdown(self, drain: bool, cancel_futures: bool, timeout: float | None) -> None:
        try:
            await asyncio.wrap_future(self.started)
        except BaseException:  # noqa: BLE001 - start-up failed; it cleaned up
            return
        if self.closing:
            return
        broker = self.broker
        if cancel_futures:
            broker.fail_all(
                lambda task: concurrent.futures.CancelledError(
                    f"the pool was shut down with cancel_futures=True before {task.describe()} "
                    "started"
                )
            )
        if drain:
            drained: asyncio.Future[None] = self.loop.create_future()

            def on_drained() -> None:
                if not drained.done():
                    drained.set_result(None)

            broker.when_drained(on_drained)
            try:
                await asyncio.wait_for(drained, timeout)
            except asyncio.TimeoutError:
                _logger.warning("shutdown: tasks still running after %s s; stopping", timeout)
        if self.closing:
            return
        await self._teardown()

    async def _teardown(self) -> None:
        self.closing = True
        broker = self.broker
        broker.stop_workers()
        if self._reconnects:
            # a reconnection under way disconnects as it is cancelled
            for task in self._reconnects:
                task.cancel()
            await asyncio.wait(list(self._reconnects), timeout=STOP_GRACE + 5)
        # after a failed start-up nothing is worth waiting for
        grace = STOP_GRACE if self.error is None else FAILED_STOP_GRACE
        await asyncio.gather(
            self.launcher.stop(grace), *(launcher.stop(grace) for launcher in self.remote)
        )
        start_error = self.error

        def error(task: Task) -> BaseException:
            if start_error is not None:
                return start_error
            return PoolClosedError(f"the pool was shut down before {task.describe()} finished")

        broker.close(error)
        if self._zap is not None:
            self._zap.close()
        self._ctx.term()
        shutil.rmtree(self._ipc_dir, ignore_errors=True)
        self.closed = True
        # a shutdown that waited for start-up, say: end it before the loop
        for task in asyncio.all_tasks(self.loop):
            if task is not asyncio.current_task():
                task.cancel()
        self.loop.call_soon(self.loop.stop)


def sweep_stale_ipc_dirs() -> None:
    """Remove the ipc directories of pools whose process died without cleaning
    up (a SIGKILL): ours, named with a pid that no longer runs."""
    tmp = tempfile.gettempdir()
    try:
        names = os.listdir(tmp)
    except OSError:
        return
    for name in names:
        pid = name[len(IPC_PREFIX) :].split("-", 1)[0]
        if not name.startswith(IPC_PREFIX) or not pid.isdigit():
            continue
        path = os.path.join(tmp, name)
        try:
            if os.lstat(path).st_uid != os.getuid():
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue  # alive (or not ours to judge)


class _NoSink:
    def deliver(self, task: Task, status: int, value: Any) -> None:
        pass

    def flush(self, urgent: bool = False) -> None:
        pass


_NO_SINK = _NoSink()


def shutdown_runtime(runtime: Runtime) -> None:
    """Finalizer of a pool: stop its workers without waiting for its tasks."""
    runtime.close(wait=True, cancel_futures=True, drain=False)


#: Bumped in every forked child: a runtime made before the fork belongs to
#: an ancestor process. Its pool loop thread did not survive the fork, and its
#: sockets and workers are the ancestor's to use and to stop.
_fork_generation = 0


def _after_fork_in_child() -> None:
    global _fork_generation
    _fork_generation += 1


os.register_at_fork(after_in_child=_after_fork_in_child)
