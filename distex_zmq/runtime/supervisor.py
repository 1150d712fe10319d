"""Supervision: where each worker runs, and keeping the pool's workers running.

A launcher per place reports every worker exit at once: the local launcher
through pidfds, a remote launcher through the agent or spawner on its host.
A worker that dies before it is ready fails the start-up of the pool, or, in
a pool already up, counts as a death. A worker that dies while ready is
handed to ``Broker.worker_lost`` (requeue, retry, ``WorkerLostError``) and
replaced; replacements slow down when workers die fast, and the pool gives
up with ``CrashLoopError`` when more than ``max_worker_deaths`` die within a
minute. A lost remote host (no heartbeat, connection gone) hands its workers
to ``Broker.worker_lost`` without blame, so that their tasks run elsewhere,
and the pool tries to reconnect to it, less and less often. Workers taken out of a running pool
(``retire``, ``remove_host``: see ``runtime/elastic.py``) are neither
counted as deaths nor replaced, and a removed host is not reconnected.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import socket
import time
from collections import deque
from typing import Any, Protocol

import zmq

from distex_zmq.broker import Broker, Task, WorkerRecord
from distex_zmq.errors import CrashLoopError, HostConnectionError, WorkerStartError
from distex_zmq.hostspec import HostSpec
from distex_zmq.launch.local import LocalLauncher, describe_exit
from distex_zmq.launch.remote import RemoteLauncher
from distex_zmq.launch.spawner import SpawnerLauncher
from distex_zmq.loops import run_in_background
from distex_zmq.options import Options
from distex_zmq.output import WorkerOutput
from distex_zmq.runtime.roster import Roster

_logger = logging.getLogger("distex_zmq.pool")

#: Seconds over which fast deaths slow replacements down.
FAST_DEATH_WINDOW = 10.0
#: Delay of a replacement while workers die fast.
SLOW_REPLACEMENT_DELAY = 1.0
#: Seconds before the first attempt to reconnect to a lost host; it doubles
#: after each failed attempt, up to ``MAX_RECONNECT_DELAY``.
RECONNECT_DELAY = 2.0
MAX_RECONNECT_DELAY = 60.0
#: Seconds within which more than ``max_worker_deaths`` deaths are a crash loop.
DEATH_WINDOW = 60.0

Launcher = LocalLauncher | RemoteLauncher


class PoolState(Protocol):
    """What the supervisor needs to know of the pool it keeps running."""

    #: the pool is shutting down: exits are expected, nothing is replaced
    closing: bool
    #: why the pool cannot take tasks any more (None: it can)
    error: BaseException | None

    @property
    def is_up(self) -> bool:
        """Every worker was ready once: the start-up is over."""

    def fail(self, error: BaseException) -> None:
        """The pool cannot go on: fail what waits and refuse new tasks."""

    def broker_port(self, spec: HostSpec) -> int:
        """The broker's TCP port for workers on ``spec``, bound on first need."""


@dataclasses.dataclass(frozen=True)
class BrokerAccess:
    """How workers reach the broker."""

    #: the broker's ipc endpoint, for local workers
    local_endpoint: str
    #: the command-line options of every worker
    worker_args: list[str]
    #: the CURVE keys a remote worker needs (JSON-ready; empty: no remote hosts)
    worker_keys: dict[str, str] = dataclasses.field(default_factory=dict)


class Supervisor:
    """Starts workers where they run, and replaces those that die."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        ctx: zmq.Context[Any],
        broker: Broker,
        options: Options,
        pool: PoolState,
    ):
        self._loop = loop
        self._ctx = ctx
        self._broker = broker
        self._options = options
        self._pool = pool
        self._access: BrokerAccess | None = None
        #: set by ``start``
        self.local: LocalLauncher | None = None
        #: connected remote hosts
        self.remote: list[RemoteLauncher] = []
        #: identities of workers that are starting (no hello or initializer yet)
        self._starting: set[bytes] = set()
        #: identities of workers this pool killed itself (task_timeout)
        self._killed: set[bytes] = set()
        #: where each worker runs
        self._launcher_of: dict[bytes, Launcher] = {}
        self._worker_ids = itertools.count(1)
        self._reconnects: set[asyncio.Task[None]] = set()
        #: the host each reconnection is for
        self._reconnect_specs: dict[asyncio.Task[None], HostSpec] = {}
        self._deaths: deque[float] = deque()
        #: where the workers' stdout and stderr lines go
        self._output = WorkerOutput(options.output)
        #: where the workers run and how the hosts fare, for ``Pool.status()``
        self.roster = Roster()
        #: identities of workers taken out of the pool, until they exit
        self._retiring: set[bytes] = set()
        #: futures of workers waited for: readiness (``wait_ready``) or exit
        #: (``retire``), resolved in ``worker_ready``, ``on_exit`` and
        #: ``on_host_lost``
        self._ready_waiters: dict[bytes, asyncio.Future[None]] = {}
        self._exit_waiters: dict[bytes, asyncio.Future[None]] = {}
        #: remote hosts that are being removed: no reconnection when lost
        self._removing: set[RemoteLauncher] = set()

    def start(self, access: BrokerAccess) -> None:
        """Start the local workers (on the pool loop)."""
        self._access = access
        self.local = LocalLauncher(
            self._loop,
            access.local_endpoint,
            access.worker_args,
            self.on_exit,
            on_output=self._output.local(socket.gethostname()),
        )
        if self._options.num_workers:
            self.roster.host(None).state = "up"
        for _ in range(self._options.num_workers):
            self.spawn(self.local)

    async def connect(self, spec: HostSpec) -> RemoteLauncher:
        """Connect to a remote host and start its workers."""
        opts, access = self._options, self._access
        assert access is not None, "start() comes first"
        launcher: RemoteLauncher
        if spec.is_ssh:
            # imported here: paramiko takes longer to import than the rest of
            # the pool, and only SSH hosts need it
            from distex_zmq.launch.ssh import SSHLauncher

            launcher = SSHLauncher(
                self._loop,
                spec,
                opts.remote,
                self._pool.broker_port(spec),
                [*access.worker_args, "--curve-keys-on-stdin"],
                access.worker_keys,
                self.on_exit,
                self.on_host_lost,
                self._output.write,
            )
        else:
            launcher = SpawnerLauncher(
                self._loop,
                self._ctx,
                spec,
                opts.spawner_keys(),
                self._pool.broker_port(spec),
                opts.remote.localhost,
                {
                    "credits": opts.qsize,
                    "func_pickle": opts.func_pickle,
                    "data_pickle": opts.data_pickle,
                    "loop": opts.worker_loop,
                    "log_level": -1 if opts.log_level is None else opts.log_level,
                },
                access.worker_keys,
                opts.remote.heartbeat_timeout,
                opts.remote.connect_timeout,
                self.on_exit,
                self.on_host_lost,
                self._output.write,
            )
        self.remote.append(launcher)
        self.roster.host_connecting(spec)
        try:
            await launcher.start()
        except BaseException as e:
            if launcher in self.remote:
                self.remote.remove(launcher)
            self.roster.host_lost(spec, f"{type(e).__name__}: {e}", None)
            raise
        self.roster.host_up(spec)
        for _ in range(spec.num_workers):
            self.spawn(launcher)
        return launcher

    def spawn(self, launcher: Launcher) -> bytes | None:
        """Start a worker there; return its identity (None: not now)."""
        pool = self._pool
        if pool.closing or pool.error is not None or launcher.lost:
            return None
        if launcher in self._removing:
            return None
        if launcher is self.local and len(self.workers_of(launcher)) >= self._options.num_workers:
            return None  # a replacement after the pool shrank (``resize``)
        identity = b"%s-%d" % (launcher.label.encode(), next(self._worker_ids))
        launcher.spawn(identity)
        self._launcher_of[identity] = launcher
        self._starting.add(identity)
        self._broker.expect(identity)
        self.roster.spawned(
            identity, None if isinstance(launcher, LocalLauncher) else launcher.spec
        )
        return identity

    def worker_ready(self, identity: bytes) -> None:
        """The worker said hello and ran the initializer, if any."""
        self._starting.discard(identity)
        waiter = self._ready_waiters.pop(identity, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def kill(self, identity: bytes) -> None:
        launcher = self._launcher_of.get(identity)
        if launcher is not None:
            launcher.kill(identity)

    def on_task_timeout(self, rec: WorkerRecord, task: Task | None) -> None:
        """A task ran past ``task_timeout``: kill its worker, fail the task."""
        self._killed.add(rec.identity)
        self.kill(rec.identity)
        how = f"killed by the pool after task_timeout={self._options.task_timeout} s"
        self._broker.worker_lost(rec, how, timed_out=task)

    def on_unreachable(self, rec: WorkerRecord) -> None:
        """Alive without a connection (no exit was reported): replace it."""
        self._killed.add(rec.identity)
        self.kill(rec.identity)

    def on_exit(self, identity: bytes, pid: int, returncode: int, tail: str) -> None:
        launcher = self._launcher_of.pop(identity, None)
        if launcher is not None and not self._pool.closing:
            self.roster.gone(identity)
        how = describe_exit(returncode)
        if tail:
            how += "; its last stderr lines:\n" + tail
        waiter = self._ready_waiters.pop(identity, None)
        if waiter is not None and not waiter.done() and launcher is not None:
            # a worker added to a running pool: the caller that added it learns why
            waiter.set_exception(
                WorkerStartError(f"{launcher.describe_worker(pid)} failed to start: {how}")
            )
            self._retiring.add(identity)
        if identity in self._retiring:
            self._retired_exit(identity, how)
            return
        if self._pool.closing or launcher is None:
            return
        rec = self._broker.registry.get(identity)
        if identity in self._killed:
            self._killed.discard(identity)
            self.roster.replacements += 1
            self.spawn(launcher)
            return
        if identity in self._starting:
            self._starting.discard(identity)
            if not self._pool.is_up:
                self._pool.fail(
                    WorkerStartError(f"{launcher.describe_worker(pid)} failed to start: {how}")
                )
                return
        if rec is not None:
            self._broker.worker_lost(rec, how)
        self._replace_after_death(how, launcher)

    def on_host_lost(self, launcher: RemoteLauncher, reason: str, identities: set[bytes]) -> None:
        """Every worker of a lost host is gone: their tasks go elsewhere, unblamed."""
        if self._pool.closing:
            return
        how = f"its host {launcher.where} was lost: {reason}"
        broker = self._broker
        for identity in identities:
            self.roster.gone(identity)
            waiter = self._ready_waiters.pop(identity, None)
            if waiter is not None and not waiter.done():
                waiter.set_exception(HostConnectionError(f"{launcher.where} was lost: {reason}"))
            self._retiring.discard(identity)
            self._resolve_exit(identity)
            self._launcher_of.pop(identity, None)
            self._starting.discard(identity)
            self._killed.discard(identity)
            broker.forget(identity)
            rec = broker.registry.get(identity)
            if rec is not None:
                broker.worker_lost(rec, how, blameless=True)
        if launcher in self.remote:
            self.remote.remove(launcher)
        if launcher in self._removing:
            return  # it was leaving the pool anyway
        if not self._pool.is_up:
            self.roster.host_lost(launcher.spec, reason, None)
            self._pool.fail(
                HostConnectionError(f"{launcher.where} was lost while the pool started: {reason}")
            )
            return
        self.roster.host_lost(launcher.spec, reason, RECONNECT_DELAY)
        self._reconnect_later(launcher.spec, RECONNECT_DELAY)

    def _reconnect_later(self, spec: HostSpec, delay: float) -> None:
        async def reconnect() -> None:
            await asyncio.sleep(delay)
            if self._pool.closing or self._pool.error is not None:
                return
            if spec not in self._options.hosts:
                return  # removed from the pool meanwhile (``remove_hosts``)
            try:
                launcher = await self.connect(spec)
            except Exception as e:  # noqa: BLE001 - logged, and tried again later
                _logger.warning("cannot reconnect to %s: %s", spec, e)
                delay_next = min(delay * 2, MAX_RECONNECT_DELAY)
                self.roster.host_lost(spec, f"cannot reconnect: {e}", delay_next)
                self._reconnect_later(spec, delay_next)
                return
            if self._pool.closing:
                await launcher.stop(0)
            elif spec not in self._options.hosts:
                await self.remove_host(launcher, drain=False)
            else:
                _logger.warning("reconnected to %s", launcher.where)

        task = run_in_background(self._loop, reconnect(), self._reconnects)
        self._reconnect_specs[task] = spec
        task.add_done_callback(self._reconnect_specs.pop)

    # elasticity: workers and hosts that join or leave a running pool

    def workers_of(self, launcher: Launcher | None) -> list[bytes]:
        """Identities of the workers started there and not leaving."""
        return [
            identity
            for identity, where in self._launcher_of.items()
            if where is launcher and identity not in self._retiring
        ]

    def is_starting(self, identity: bytes) -> bool:
        """The worker has not said hello or run its initializer yet."""
        return identity in self._starting

    async def wait_ready(self, identities: list[bytes | None]) -> None:
        """Wait until these workers (started together, in this step of the
        loop) are ready; raise why one of them failed to start."""
        waiters = [
            self._ready_waiters.setdefault(identity, self._loop.create_future())
            for identity in identities
            if identity is not None and identity in self._starting
        ]
        if not waiters:
            return
        await asyncio.wait(waiters)
        errors = [w.exception() for w in waiters]
        for error in errors:
            if error is not None:
                raise error

    def start_failed(self, identity: bytes, error: BaseException) -> bool:
        """A worker's initializer raised. If the worker was being added
        (``wait_ready``), its adder gets ``error``, the worker is killed and not
        replaced, and this returns True; else it returns False."""
        waiter = self._ready_waiters.pop(identity, None)
        if waiter is None:
            return False
        if not waiter.done():
            waiter.set_exception(error)
        self._retiring.add(identity)
        self._broker.retire(identity, drain=False)
        self.kill(identity)
        return True

    async def retire(self, identities: list[bytes], drain: bool) -> None:
        """Take these workers out of the pool and wait until they have exited.

        With ``drain`` a ready worker finishes its tasks first; otherwise, and
        for a worker still starting, its tasks go back to the queue without
        counting a try and it is killed. No worker replaces them.
        """
        waiters = []
        for identity in identities:
            if identity not in self._launcher_of:
                continue
            self._retiring.add(identity)
            waiters.append(self._exit_waiters.setdefault(identity, self._loop.create_future()))
            self._broker.retire(identity, drain)
            if not drain or identity in self._starting:
                self.kill(identity)
        if waiters:
            await asyncio.wait(waiters)

    async def remove_host(self, launcher: RemoteLauncher, drain: bool) -> None:
        """Take a remote host out of the pool: retire its workers, then end
        the session there (the agent exits, the spawner closes the pool's
        session), which leaves nothing of the pool on the host."""
        self._removing.add(launcher)
        try:
            await self.retire(self.workers_of(launcher), drain)
            if self._pool.closing:
                return  # the shutdown stops it
            if launcher in self.remote:
                self.remote.remove(launcher)
            await launcher.stop(0)
        finally:
            self._removing.discard(launcher)

    async def cancel_reconnects(self, specs: list[HostSpec]) -> None:
        """Stop trying to reconnect to these hosts (removed from the pool)."""
        tasks = [t for t, spec in self._reconnect_specs.items() if any(spec is s for s in specs)]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    def _retired_exit(self, identity: bytes, how: str) -> None:
        """A worker taken out of the pool has exited."""
        self._retiring.discard(identity)
        self._starting.discard(identity)
        self._killed.discard(identity)
        broker = self._broker
        rec = broker.registry.get(identity)
        if rec is not None and not self._pool.closing:
            if rec.ready:
                broker.worker_lost(rec, how)  # it died while it drained: as any death
            else:
                broker.retire(identity, drain=False)
        broker.forget(identity)
        self._resolve_exit(identity)

    def _resolve_exit(self, identity: bytes) -> None:
        waiter = self._exit_waiters.pop(identity, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _replace_after_death(self, how: str, launcher: Launcher) -> None:
        now = time.monotonic()
        deaths = self._deaths
        deaths.append(now)
        while deaths and deaths[0] < now - DEATH_WINDOW:
            deaths.popleft()
        limit = self._options.max_worker_deaths
        if len(deaths) > limit:
            self._pool.fail(
                CrashLoopError(
                    f"{len(deaths)} workers died within a minute (the last: {how}); the pool "
                    f"stopped replacing them (max_worker_deaths={limit}). Fix the cause and "
                    "create a new Pool."
                )
            )
            return
        recent = sum(1 for t in deaths if t > now - FAST_DEATH_WINDOW)
        self.roster.replacements += 1
        if recent > self._options.total_workers:
            self._loop.call_later(SLOW_REPLACEMENT_DELAY, self.spawn, launcher)
        else:
            self.spawn(launcher)

    async def stop(self, grace: float, reconnect_grace: float) -> None:
        """Cancel reconnections and stop every worker, giving each ``grace``
        seconds to finish its tasks."""
        for identity in list(self._exit_waiters):
            self._resolve_exit(identity)
        if self._reconnects:
            # a reconnection under way disconnects as it is cancelled
            for task in self._reconnects:
                task.cancel()
            await asyncio.wait(list(self._reconnects), timeout=reconnect_grace)
        launchers: list[Launcher] = [] if self.local is None else [self.local]
        launchers.extend(self.remote)
        await asyncio.gather(*(launcher.stop(grace) for launcher in launchers))
