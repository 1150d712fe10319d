"""Where each worker runs: the launchers and the workers started through them.

The local launcher starts workers on this machine; a remote launcher (an
SSH agent or a spawner session) per connected host starts them there.
``Placement`` makes the launchers, names each new worker, remembers its
launcher until it is gone and whether it is still starting, and stops them
all. It decides nothing: the ``Supervisor`` says when to start or kill.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import zmq

from distex_zmq.hostspec import HostSpec
from distex_zmq.launch.local import LocalLauncher
from distex_zmq.loops import run_in_background
from distex_zmq.options import DEFAULT_CONNECT_TIMEOUT, Options
from distex_zmq.output import WorkerOutput
from distex_zmq.runtime import exits
from distex_zmq.runtime.state import PoolState

if TYPE_CHECKING:
    # the remote launchers and their control messages are imported when a
    # pool first adds a host (``add_remote``): a local pool needs none
    from distex_zmq.launch.remote import RemoteLauncher
    from distex_zmq.launch.spawner import SpawnerLauncher
    from distex_zmq.launch.ssh import SSHLauncher

Launcher: TypeAlias = "LocalLauncher | RemoteLauncher"
#: a worker exited: identity, pid, return code, its last stderr lines
OnExit = Callable[[bytes, int, int | None, str], None]
#: a remote host was lost: its launcher, why, the identities of its workers
OnHostLost: TypeAlias = "Callable[[RemoteLauncher, str, set[bytes]], None]"


@dataclasses.dataclass(frozen=True)
class BrokerAccess:
    """How workers reach the broker."""

    #: the broker's ipc endpoint, for local workers
    local_endpoint: str
    #: the command-line options of every worker
    worker_args: list[str]
    #: the CURVE keys a remote worker needs (JSON-ready; empty: no remote hosts)
    worker_keys: dict[str, str] = dataclasses.field(default_factory=dict)


def worker_args(opts: Options) -> list[str]:
    """The command-line options of every worker of a pool."""
    return [
        *("--credits", str(opts.qsize)),
        *("--func-pickle", str(int(opts.func_pickle))),
        *("--data-pickle", str(int(opts.data_pickle))),
        *("--loop", str(int(opts.worker_loop))),
        *("--log-level", str(opts.worker_log_level)),
        *("--heartbeat-ms", str(heartbeat_ms(opts))),
    ]


def heartbeat_ms(opts: Options) -> int:
    """How long a remote worker's connection to the broker may be dead
    before it is closed: the pool's ``heartbeat_timeout``."""
    return max(int(opts.remote.heartbeat_timeout * 1000), 1)


class Placement:
    """The pool's launchers and which worker runs where (on the pool loop)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        ctx: zmq.Context[Any],
        options: Options,
        pool: PoolState,
        on_exit: OnExit,
        on_host_lost: OnHostLost,
    ):
        self._loop = loop
        self._ctx = ctx
        self._options = options
        self._pool = pool
        self._report_exit = on_exit
        #: exits waiting for the output written before them (``_on_exit``)
        self._exits: set[asyncio.Task[None]] = set()
        self._on_host_lost = on_host_lost
        self._access: BrokerAccess | None = None
        #: set by ``start_local``
        self.local: LocalLauncher | None = None
        #: connected remote hosts
        self.remote: list[RemoteLauncher] = []
        #: where each worker runs
        self._launcher_of: dict[bytes, Launcher] = {}
        #: identities of workers that are starting (no hello or initializer yet)
        self._starting: set[bytes] = set()
        self._worker_ids = itertools.count(1)
        #: where the workers' stdout and stderr lines go
        self.output = WorkerOutput(options.output)

    def _on_exit(self, identity: bytes, pid: int, returncode: int | None, tail: str) -> None:
        """A worker exited (its launcher tells after the last of its output):
        report it once that output is written, so that the lines a worker
        wrote before it died come out before the error its death causes."""
        writer = self.output.writer
        if writer.idle:
            self._report_exit(identity, pid, returncode, tail)
            return

        async def after_output() -> None:
            await writer.written()
            self._report_exit(identity, pid, returncode, tail)

        run_in_background(self._loop, after_output(), self._exits)

    def start_local(
        self, access: BrokerAccess, note_output: Callable[[bytes, int], None]
    ) -> LocalLauncher:
        """Make the local launcher (on the pool loop); ``note_output(identity,
        ticket)``: a worker wrote lines (``output.LocalOutput``)."""
        self._access = access
        self.local = LocalLauncher(
            self._loop,
            access.local_endpoint,
            access.worker_args,
            self._on_exit,
            on_output=self.output.local(socket.gethostname(), note_output),
            output_flow=self.output.writer,
            of_client=True,
        )
        return self.local

    def add_remote(self, spec: HostSpec) -> SSHLauncher | SpawnerLauncher:
        """Make the launcher of a remote host, not started yet, and hold it."""
        opts, access = self._options, self._access
        assert access is not None, "start_local() comes first"
        launcher: SSHLauncher | SpawnerLauncher
        if spec.is_ssh:
            # imported here: paramiko takes longer to import than the rest of
            # the pool, and only SSH hosts need it; its exit handler must run
            # after the pools' (``runtime/exits.py``)
            from distex_zmq.launch.ssh import SSHLauncher

            exits.run_first()

            launcher = SSHLauncher(
                self._loop,
                spec,
                opts.remote,
                self._pool.broker_port(spec),
                [*access.worker_args, "--curve-keys-on-stdin"],
                access.worker_keys,
                self._on_exit,
                self._on_host_lost,
                self.output.write,
            )
        else:
            from distex_zmq.launch.spawner import SpawnerLauncher

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
                    "log_level": opts.worker_log_level,
                    "heartbeat_ms": heartbeat_ms(opts),
                },
                access.worker_keys,
                opts.remote.heartbeat_timeout,
                # a spawner host has no ~/.ssh/config entry to take it from
                opts.remote.connect_timeout or DEFAULT_CONNECT_TIMEOUT,
                self._on_exit,
                self._on_host_lost,
                self.output.write,
            )
        self.remote.append(launcher)
        return launcher

    def drop_remote(self, launcher: RemoteLauncher) -> None:
        """Let go of a remote host's launcher (lost, removed, failed to start)."""
        if launcher in self.remote:
            self.remote.remove(launcher)

    def spawn(self, launcher: Launcher) -> bytes:
        """Start a worker there, starting until ``started``; return its identity."""
        identity = b"%s-%d" % (launcher.label.encode(), next(self._worker_ids))
        launcher.spawn(identity)
        self._launcher_of[identity] = launcher
        self._starting.add(identity)
        return identity

    def started(self, identity: bytes) -> None:
        """The worker is no longer starting: ready, or gone."""
        self._starting.discard(identity)

    @property
    def starting_count(self) -> int:
        """How many workers have not said hello or run their initializer yet."""
        return len(self._starting)

    def is_starting(self, identity: bytes) -> bool:
        """The worker has not said hello or run its initializer yet."""
        return identity in self._starting

    def launcher_of(self, identity: bytes) -> Launcher | None:
        """Where the worker runs (None: it is gone)."""
        return self._launcher_of.get(identity)

    def forget(self, identity: bytes) -> Launcher | None:
        """The worker is gone: return where it ran (None: already forgotten)."""
        return self._launcher_of.pop(identity, None)

    def identities(self) -> list[bytes]:
        """Identities of every worker started and not gone."""
        return list(self._launcher_of)

    def workers_of(self, launcher: Launcher | None) -> list[bytes]:
        """Identities of the workers started there and not gone."""
        return [i for i, where in self._launcher_of.items() if where is launcher]

    def kill(self, identity: bytes) -> None:
        launcher = self._launcher_of.get(identity)
        if launcher is not None:
            launcher.kill(identity)

    async def stop(self, grace: float) -> None:
        """Stop every launcher's workers, giving each ``grace`` seconds."""
        launchers: list[Launcher] = [] if self.local is None else [self.local]
        launchers.extend(self.remote)
        try:
            await asyncio.gather(*(launcher.stop(grace) for launcher in launchers))
        finally:
            # what waits to be written, the last lines of the workers included
            await self.output.close()
