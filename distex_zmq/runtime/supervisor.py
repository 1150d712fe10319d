"""Supervision: keeping the pool's workers running.

A launcher per place (see ``runtime/placement.py``) reports every worker exit
at once. A worker that dies before it is ready fails the start-up of the
pool, or, in a pool already up, counts as a death. A worker that dies while
ready is handed to ``Broker.worker_lost`` (requeue, retry,
``WorkerLostError``) and replaced; replacements slow down when workers die
fast, and the pool gives up with ``CrashLoopError`` when more than
``max_worker_deaths`` die within a minute. A lost remote host (no heartbeat,
connection gone) hands its workers to ``Broker.worker_lost`` without blame,
so that their tasks run elsewhere, and the pool tries to reconnect to it
(``runtime/reconnect.py``). Workers taken out of a running pool
(``runtime/membership.py``) are neither counted as deaths nor replaced, and a
removed host is not reconnected.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import zmq

from distex_zmq.broker import Broker, Task, WorkerRecord
from distex_zmq.errors import CrashLoopError, HostConnectionError, WorkerStartError
from distex_zmq.hostspec import HostSpec
from distex_zmq.launch.local import LocalLauncher, abort_hint, crash_hint, describe_exit
from distex_zmq.options import Options
from distex_zmq.runtime.membership import Membership
from distex_zmq.runtime.open_files import LOCAL_WORKER_FILES, REMOTE_WORKER_FILES, OpenFiles
from distex_zmq.runtime.placement import BrokerAccess, Launcher, Placement
from distex_zmq.runtime.reconnect import RECONNECT_DELAY, Reconnects
from distex_zmq.runtime.roster import Roster
from distex_zmq.runtime.state import PoolState

if TYPE_CHECKING:
    from distex_zmq.launch.remote import RemoteLauncher

_logger = logging.getLogger("distex_zmq.pool")

#: Seconds over which fast deaths slow replacements down.
FAST_DEATH_WINDOW = 10.0
#: Delay of a replacement while workers die fast.
SLOW_REPLACEMENT_DELAY = 1.0
#: Seconds within which more than ``max_worker_deaths`` deaths are a crash loop.
DEATH_WINDOW = 60.0
#: Seconds a worker has to say hello once started: one that does not (its
#: pool's socket is gone, it hangs before its code runs) is killed, and its
#: death fails the start-up or counts as a death.
HELLO_TIMEOUT = 30.0
#: Seconds a worker that leaves the running pool (a renewal, a resize, a
#: host removed) has to exit once it got STOP, its tasks done. It waits up
#: to 3 s (the worker's ``THREADS_GRACE``) for threads its tasks left
#: running, then runs its exit handlers; one still alive after this is
#: stuck (an ``atexit`` handler or a finalizer that never returns, a write
#: to a full pipe) and is killed.
LEAVE_GRACE = 10.0


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
        self._broker = broker
        self._options = options
        self._pool = pool
        #: where each worker runs
        self.placement = Placement(loop, ctx, options, pool, self.on_exit, self.on_host_lost)
        #: workers and hosts that join or leave the running pool
        self.membership = Membership(loop, broker, self.placement, pool)
        #: where the workers run and how the hosts fare, for ``Pool.status()``;
        #: every host listed from the start, remote ones "connecting"
        self.roster = Roster()
        if options.num_workers:
            self.roster.host(None)
        for spec in options.hosts:
            self.roster.host(spec)
        #: reconnections to lost hosts
        self.reconnects = Reconnects(
            loop, options, pool, self.roster, self.connect, self.membership.remove_host
        )
        #: identities of workers this pool killed itself (task_timeout)
        self._killed: set[bytes] = set()
        #: identities of renewed workers whose replacement starts at their
        #: exit (``renew``)
        self._replace_at_exit: set[bytes] = set()
        #: identities of workers killed for saying no hello in time
        self._silent: set[bytes] = set()
        self._deaths: deque[float] = deque()
        #: room for workers under the limit of open files
        self._open_files = OpenFiles()

    def start(self, access: BrokerAccess) -> None:
        """Start the local workers (on the pool loop)."""
        local = self.placement.start_local(access, self._broker.note_output)
        for _ in range(self._options.num_workers):
            self.spawn(local)

    async def connect(self, spec: HostSpec) -> RemoteLauncher:
        """Connect to a remote host and start its workers."""
        launcher = self.placement.add_remote(spec)
        self.roster.host_connecting(spec)
        try:
            await launcher.start()
        except BaseException as e:
            self.placement.drop_remote(launcher)
            self.roster.host_lost(spec, f"{type(e).__name__}: {e}", None)
            raise
        self.roster.host_up(spec, launcher.python_version)
        _logger.info(
            "connected to %s (Python %s): starting %s",
            spec,
            launcher.python_version or "?",
            workers_text(spec.num_workers),
        )
        for _ in range(spec.num_workers):
            self.spawn(launcher)
        return launcher

    def spawn(self, launcher: Launcher) -> bytes | None:
        """Start a worker there; return its identity (None: not now)."""
        pool = self._pool
        if pool.closing or pool.error is not None or launcher.lost:
            return None
        if self.membership.is_removing(launcher):
            return None
        if launcher is not self.placement.local and launcher not in self.placement.remote:
            return None  # its host was removed (a renewal's replacement after it)
        if (
            launcher is self.placement.local
            and len(self.membership.workers_of(launcher)) >= self._options.num_workers
        ):
            return None  # a replacement after the pool shrank (``resize``)
        starting = self.placement.starting_count
        if launcher is self.placement.local:
            self._open_files.make_room(LOCAL_WORKER_FILES, starting, "another local worker")
            launcher.endpoint = pool.local_endpoint()
        else:
            what = f"another worker on {launcher}"
            self._open_files.make_room(REMOTE_WORKER_FILES, starting, what)
        identity = self.placement.spawn(launcher)
        self._broker.expect(identity, remote=launcher is not self.placement.local)
        self._loop.call_later(HELLO_TIMEOUT, self._check_hello, identity)
        self.roster.spawned(
            identity, None if isinstance(launcher, LocalLauncher) else launcher.spec
        )
        return identity

    def replace(self, launcher: Launcher) -> None:
        """Start a worker in place of one that left. One that cannot be
        started (this process is out of file descriptors, or of memory for a
        new process) counts as a death: its replacement is tried again, later
        while they keep failing, until the pool gives up with
        ``CrashLoopError``."""
        try:
            self.spawn(launcher)
        except OSError as e:
            how = f"its replacement could not be started: {type(e).__name__}: {e}"
            _logger.warning("a worker left and %s; trying again", how)
            self._loop.call_soon(self._replace_after_death, how, launcher)

    def _check_hello(self, identity: bytes) -> None:
        """Kill the worker if it is starting still and never said hello."""
        if (
            self._pool.closing
            or not self.placement.is_starting(identity)
            or self._broker.registry.get(identity) is not None
        ):
            return
        self._silent.add(identity)
        self.kill(identity)

    def worker_ready(self, rec: WorkerRecord) -> None:
        """The worker said hello and ran the initializer, if any."""
        identity = rec.identity
        self.roster.ready(identity, rec.pid, rec.host)
        self.placement.started(identity)
        self.membership.worker_ready(identity)

    def start_failed(self, identity: bytes, error: BaseException) -> bool:
        """A worker's initializer raised: see ``Membership.start_failed``."""
        return self.membership.start_failed(identity, error)

    def kill(self, identity: bytes) -> None:
        self.placement.kill(identity)

    def kill_all(self) -> None:
        """SIGKILL every worker, wherever it runs (``kill_workers``)."""
        for identity in self.placement.identities():
            self.placement.kill(identity)

    def on_task_timeout(self, rec: WorkerRecord, task: Task | None) -> None:
        """A task ran past ``task_timeout``: kill its worker, fail the task."""
        self._killed.add(rec.identity)
        self.kill(rec.identity)
        how = f"killed by the pool after task_timeout={self._options.task_timeout} s"
        self._broker.worker_lost(rec, how, timed_out=task)

    def renew(self, identity: bytes) -> None:
        """The worker has been given ``max_tasks_per_child`` tasks (the
        broker drains it): it leaves once they are done, counted as no death,
        and a fresh worker starts in its place now, so that the pool keeps
        its size meanwhile."""
        launcher = self.placement.launcher_of(identity)
        if launcher is None or self._pool.closing:
            return
        self.membership.leaving(identity)
        self.roster.renewals += 1
        if launcher.opened_workers_only:
            # a spawner refuses it while the old one runs, and the refusal
            # would count as a death (and fail a pool still starting)
            self._replace_at_exit.add(identity)
            return
        # after the dispatch that spent the worker, which this runs inside
        self._loop.call_soon(self.replace, launcher)

    def left(self, rec: WorkerRecord) -> None:
        """The worker got STOP and leaves the running pool: kill it if it
        is still alive ``LEAVE_GRACE`` seconds later. Nothing else would:
        the pool goes on, and a ``resize`` would wait for its exit for ever."""
        self._loop.call_later(LEAVE_GRACE, self._kill_if_stuck, rec.identity, rec.pid)

    def _kill_if_stuck(self, identity: bytes, pid: int) -> None:
        launcher = self.placement.launcher_of(identity)
        if launcher is None or self._pool.closing:
            return  # it exited, or the shutdown stops it
        _logger.warning(
            "%s did not exit %g s after it was told to leave the pool (STOP), its tasks "
            "done: killed with SIGKILL. Something a task left in it never returns at its exit "
            "(an atexit handler, a finalizer, a write to a full pipe)",
            launcher.describe_worker(pid),
            LEAVE_GRACE,
        )
        self.kill(identity)

    def on_unreachable(self, rec: WorkerRecord) -> None:
        """Alive without a connection (no exit was reported): replace it."""
        self._killed.add(rec.identity)
        self.kill(rec.identity)

    def on_exit(self, identity: bytes, pid: int, returncode: int | None, tail: str) -> None:
        launcher = self.placement.forget(identity)
        if launcher is not None and not self._pool.closing:
            self.roster.gone(identity)
        here = launcher is None or isinstance(launcher, LocalLauncher)
        closed_under = abort_hint(returncode, tail)
        # an abort on descriptors closed under the worker needs no stack to explain
        how = describe_exit(returncode, here=here) + (
            "" if closed_under else crash_hint(returncode, tail)
        )
        if identity in self._silent:
            self._silent.discard(identity)
            how = (
                f"it did not connect to the pool within {HELLO_TIMEOUT:g} s and was killed "
                "(it hung before its code ran, or cannot reach the pool's socket)"
            )
        if tail:
            # the tail may hold what earlier tasks of this worker wrote
            how += "; its last stderr lines (its earlier tasks' too):\n" + tail + closed_under
        if identity in self._replace_at_exit:
            self._replace_at_exit.discard(identity)
            if launcher is not None and not self._pool.closing:
                self._loop.call_soon(self.replace, launcher)
        if self.membership.exited(identity, launcher, pid, how):
            self._killed.discard(identity)
            return
        if self._pool.closing or launcher is None:
            return
        rec = self._broker.registry.get(identity)
        if identity in self._killed:
            self._killed.discard(identity)
            self.roster.replacements += 1
            self.replace(launcher)
            return
        if self.placement.is_starting(identity):
            self.placement.started(identity)
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
            self._replace_at_exit.discard(identity)
            self.roster.gone(identity)
            self.membership.host_lost(identity, f"{launcher.where} was lost: {reason}")
            self.placement.forget(identity)
            self.placement.started(identity)
            self._killed.discard(identity)
            broker.forget(identity)
            rec = broker.registry.get(identity)
            if rec is not None:
                broker.worker_lost(rec, how, blameless=True)
        self.placement.drop_remote(launcher)
        if self.membership.is_removing(launcher):
            return  # it was leaving the pool anyway
        if not self._pool.is_up:
            self.roster.host_lost(launcher.spec, reason, None)
            self._pool.fail(
                HostConnectionError(f"{launcher.where} was lost while the pool started: {reason}")
            )
            return
        self.roster.host_lost(launcher.spec, reason, RECONNECT_DELAY)
        self.reconnects.later(launcher.spec, RECONNECT_DELAY)

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
            self._loop.call_later(SLOW_REPLACEMENT_DELAY, self.replace, launcher)
        else:
            self.replace(launcher)

    async def stop(self, grace: float, reconnect_grace: float) -> None:
        """Cancel reconnections and stop every worker, giving each ``grace``
        seconds to finish its tasks."""
        self.membership.stop()
        await self.reconnects.stop(reconnect_grace)
        await self.placement.stop(grace)


def workers_text(count: int) -> str:
    """``"1 worker"``, ``"3 workers"``."""
    return f"{count} worker{'' if count == 1 else 's'}"
