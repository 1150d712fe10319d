"""The settings of a pool: ``Options`` and ``RemoteSettings``, checked once.

``pool_options`` validates the arguments of ``Pool`` and returns the
``Options`` that the runtime, the launchers and the task maker read.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

from distex_zmq.hostspec import HostSpec, parse_hosts
from distex_zmq.loops import loop_factory, loop_type
from distex_zmq.output import OUTPUT_MODES
from distex_zmq.security import ClusterKeys, load_secret, secret_source
from distex_zmq.serialization import pickle_type

#: ``Pool(log_level=...)``'s default: the client's root logger's level at the
#: pool's start
CLIENT_LEVEL = "client"

#: Seconds to connect and log in to an SSH host whose entry in
#: ``~/.ssh/config`` has no ``ConnectTimeout``, or to hear from a spawner.
DEFAULT_CONNECT_TIMEOUT = 10.0
#: Seconds an SSH host's agent has to say hello once its command runs: the
#: SSH user's login shell, its start-up files, then the interpreter's imports.
DEFAULT_AGENT_START_TIMEOUT = 30.0


@dataclasses.dataclass(frozen=True)
class RemoteSettings:
    """How a pool reaches its remote hosts."""

    #: workers reach the broker through a reverse SSH tunnel (else: directly)
    tunnel: bool = True
    #: the command that runs Python on a host: one for all, or by host name
    python: str | Mapping[str, str] = "python3"
    heartbeat_timeout: float = 10.0
    accept_new_hosts: bool = False
    #: as given to the pool; None: an SSH host's ``ConnectTimeout`` in
    #: ``~/.ssh/config`` (``ssh_connect.resolve``), else ``DEFAULT_CONNECT_TIMEOUT``
    connect_timeout: float | None = None
    #: address the remote workers connect to in direct mode ("" = as SSH sees us)
    localhost: str = ""
    #: seconds an SSH host's agent has to say hello once its command runs
    agent_start_timeout: float = DEFAULT_AGENT_START_TIMEOUT

    def python_for(self, host: str) -> str:
        """The command that runs Python on the SSH host ``host`` (as its spec
        names it); a ``ValueError`` if the dict of commands has none for it:
        ``python3`` in its place would fail there as "not installed", with
        no word of the dict."""
        if isinstance(self.python, str):
            return self.python
        python = self.python.get(host, self.python.get("*"))
        if python is None:
            raise ValueError(
                f"remote_python has no command for the SSH host {host!r}: its keys are "
                f"{sorted(self.python)!r}; they are host names as the host specs give "
                "them (ssh://NAME/4 -> 'NAME'), and '*' is for the other hosts"
            )
        return python


@dataclasses.dataclass
class Options:
    """The settings of one pool, as the runtime needs them."""

    #: local workers
    num_workers: int
    hosts: list[HostSpec]
    remote: RemoteSettings
    localport: int
    #: keys from the cluster's shared secret, for spawner hosts (None: no secret)
    cluster_keys: ClusterKeys | None
    qsize: int
    initializer: Callable[..., Any] | None
    initargs: tuple[Any, ...]
    worker_loop: int
    func_pickle: int
    data_pickle: int
    max_retries: int
    task_timeout: float | None
    max_worker_deaths: int
    #: tasks a worker runs before a fresh one replaces it (None: no limit)
    max_tasks_per_child: int | None = None
    #: what becomes of the workers' stdout and stderr: prefixed, raw or off
    output: str = "prefixed"
    #: the level of the tasks' log records re-emitted in the client (None:
    #: none; ``CLIENT_LEVEL`` until the pool starts, see ``fix_log_level``)
    log_level: int | str | None = CLIENT_LEVEL
    #: the secret as given, for spawner hosts added later (``spawner_keys``)
    secret: str | bytes | None = dataclasses.field(default=None, repr=False)
    secret_file: str | None = None
    #: ``cluster_keys`` was loaded from the secret (a pool without spawner
    #: hosts loads it when it gets one)
    keys_loaded: bool = False

    def spawner_keys(self) -> ClusterKeys | None:
        """``cluster_keys``, loaded from the secret on first need."""
        if not self.keys_loaded:
            secret_bytes = load_secret(self.secret, self.secret_file)
            source = secret_source(self.secret, self.secret_file)
            self.cluster_keys = (
                ClusterKeys.from_secret(secret_bytes, source) if secret_bytes else None
            )
            self.keys_loaded = True
        return self.cluster_keys

    def fix_log_level(self) -> None:
        """Take the client's root logger's level for ``CLIENT_LEVEL``, as the
        pool starts: every worker, replacements and hosts added later too,
        forwards at the same level."""
        if self.log_level == CLIENT_LEVEL:
            self.log_level = logging.getLogger().getEffectiveLevel()

    @property
    def worker_log_level(self) -> int:
        """The level the workers forward records at, -1 for none."""
        self.fix_log_level()
        return self.log_level if isinstance(self.log_level, int) else -1

    @property
    def total_workers(self) -> int:
        """Workers in the pool, local and remote."""
        return self.num_workers + sum(h.num_workers for h in self.hosts)

    @property
    def capacity(self) -> int:
        """Tasks the workers hold at once: the sum of their credits."""
        return self.total_workers * self.qsize


#: ``ProcessPoolExecutor``'s positional parameters, for ``_check_executor_order``.
_EXECUTOR_ORDER = "ProcessPoolExecutor(max_workers, mp_context, initializer, initargs)"


def _check_executor_order(hosts: Any, qsize: Any) -> None:
    """Raise a ``TypeError`` that says so for the arguments of code written
    for ``ProcessPoolExecutor`` given by position: a ``multiprocessing``
    context for ``hosts``, an initializer for ``qsize``."""
    wrong = None
    if hasattr(hosts, "get_start_method"):
        wrong = f"a multiprocessing context ({hosts!r}) as hosts"
    elif callable(qsize):
        wrong = f"a function ({getattr(qsize, '__qualname__', qsize)!r}) as qsize"
    if wrong is not None:
        raise TypeError(
            f"Pool got {wrong}: Pool takes (num_workers, hosts, qsize, initializer, "
            f"initargs, ...) by position, where {_EXECUTOR_ORDER} does not; give them "
            "by name (max_workers=, mp_context=, initializer=, initargs=)"
        )


def executor_workers(num_workers: int | None, max_workers: int) -> int:
    """The ``num_workers`` that ``Pool(max_workers=...)`` means, as
    ``ProcessPoolExecutor`` takes it (``num_workers`` left as it is)."""
    if num_workers != 0:
        raise TypeError(
            f"Pool got num_workers={num_workers!r} and max_workers={max_workers!r}: "
            "give one of them (max_workers is ProcessPoolExecutor's name for num_workers)"
        )
    if not isinstance(max_workers, int) or isinstance(max_workers, bool):
        raise TypeError(f"max_workers must be an integer or None, not {max_workers!r}")
    if max_workers <= 0:
        raise ValueError("max_workers must be greater than 0")
    return max_workers


def local_workers(num_workers: int | None) -> int:
    """The local workers that ``Pool(num_workers)`` and ``Pool.resize`` mean:
    0 is one per CPU, ``None`` none at all."""
    if num_workers is None:
        return 0
    if not isinstance(num_workers, int) or isinstance(num_workers, bool) or num_workers < 0:
        # Pool(False) would be one worker per CPU
        raise ValueError(f"num_workers must be an integer >= 0 or None, not {num_workers!r}")
    return num_workers or os.cpu_count() or 1


def check_spawner_heartbeat(heartbeat_timeout: float, specs: list[HostSpec]) -> None:
    """Raise ``ValueError`` if a spawner host among ``specs`` would refuse
    ``heartbeat_timeout``, outside the bounds of its protocol, at the pool's
    start."""
    spawner = next((s for s in specs if not s.is_ssh), None)
    if spawner is None:
        return
    # imported here: a pool without spawner hosts does without it
    from distex_zmq.wire.control import MAX_HEARTBEAT, MIN_HEARTBEAT

    if not MIN_HEARTBEAT <= heartbeat_timeout <= MAX_HEARTBEAT:
        raise ValueError(
            f"heartbeat_timeout must be from {MIN_HEARTBEAT:g} to {MAX_HEARTBEAT:g} seconds "
            f"for a pool with spawner hosts such as {spawner} (a spawner stops the pool's "
            f"workers after that silence), not {heartbeat_timeout!r}"
        )


def check_flag(name: str, value: object) -> None:
    """Raise ``TypeError`` unless ``value`` is True or False: any object has
    a truth value, and ``"no"`` or ``"false"`` (read from a configuration)
    is true, the opposite of what it says."""
    if value is not True and value is not False:
        raise TypeError(f"{name} must be True or False, not {value!r}")


def drain_timeout(timeout: float | None) -> float | None:
    """The ``timeout`` of ``shutdown``, ``remove_hosts`` and ``resize``:
    seconds to wait for the tasks that run, or None (no bound)."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
        raise ValueError(f"timeout must be a number of seconds >= 0 or None, not {timeout!r}")
    return float(timeout)


def pool_options(
    num_workers: int | None,
    hosts: str | list[str] | None,
    qsize: int,
    initializer: Callable[..., Any] | None,
    initargs: tuple[Any, ...],
    localhost: str,
    localport: int,
    worker_loop: int | str,
    func_pickle: int | str,
    data_pickle: int | str,
    max_retries: int,
    task_timeout: float | None,
    max_worker_deaths: int,
    remote_python: str | Mapping[str, str],
    ssh_tunnel: bool,
    heartbeat_timeout: float,
    ssh_accept_new_hosts: bool,
    connect_timeout: float | None,
    secret: str | bytes | None,
    secret_file: str | None,
    output: str = "prefixed",
    log_level: int | str | None = CLIENT_LEVEL,
    max_tasks_per_child: int | None = None,
    agent_start_timeout: float = DEFAULT_AGENT_START_TIMEOUT,
) -> Options:
    """Check the arguments of ``Pool`` (see its docstring); raise ``ValueError``
    or ``TypeError`` for a bad one, now rather than in a worker later."""
    _check_executor_order(hosts, qsize)
    local = local_workers(num_workers)
    check_flag("ssh_tunnel", ssh_tunnel)
    check_flag("ssh_accept_new_hosts", ssh_accept_new_hosts)
    if not isinstance(localport, int) or not 0 <= localport < 65536:
        # libzmq would take it modulo 65536 and listen on another port
        raise ValueError(f"localport must be from 0 (any) to 65535, not {localport!r}")
    if not isinstance(qsize, int) or isinstance(qsize, bool) or qsize < 1:
        raise ValueError(f"qsize must be an integer >= 1, not {qsize!r}")
    if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
        raise ValueError(f"max_retries must be an integer >= 0, not {max_retries!r}")
    if task_timeout is not None and (
        not isinstance(task_timeout, (int, float))
        or isinstance(task_timeout, bool)
        or not task_timeout > 0
    ):
        raise ValueError(
            f"task_timeout must be a positive number of seconds or None, not {task_timeout!r}"
        )
    if (
        not isinstance(max_worker_deaths, int)
        or isinstance(max_worker_deaths, bool)
        or max_worker_deaths < 1
    ):
        raise ValueError(f"max_worker_deaths must be an integer >= 1, not {max_worker_deaths!r}")
    if max_tasks_per_child is not None:
        # the errors of ProcessPoolExecutor, whose argument it is
        if not isinstance(max_tasks_per_child, int) or isinstance(max_tasks_per_child, bool):
            raise TypeError(
                f"max_tasks_per_child must be an integer or None, not {max_tasks_per_child!r}"
            )
        if max_tasks_per_child < 1:
            raise ValueError(f"max_tasks_per_child must be >= 1, not {max_tasks_per_child!r}")
    if output not in OUTPUT_MODES:
        raise ValueError(
            f"output must be one of {', '.join(map(repr, OUTPUT_MODES))}, not {output!r}"
        )
    if isinstance(log_level, str) and log_level != CLIENT_LEVEL:
        # a level's name, as ``Logger.setLevel`` takes it ("DEBUG")
        level = logging.getLevelName(log_level)
        log_level = level if isinstance(level, int) else log_level
    if (
        log_level is not None
        and log_level != CLIENT_LEVEL
        and (
            not isinstance(log_level, int)
            or isinstance(log_level, bool)
            or not 0 <= log_level <= 100
        )
    ):
        raise ValueError(
            f"log_level must be a logging level (0 to 100, or its name: 'DEBUG'), "
            f"{CLIENT_LEVEL!r} (the client's root logger's level when the pool starts) or "
            f"None, not {log_level!r}"
        )
    if not isinstance(localhost, str):
        raise TypeError(
            f"localhost must be this machine's address or name as the hosts reach it (a "
            f"string), not {localhost!r}"
        )
    if initializer is not None and not callable(initializer):
        raise TypeError(f"initializer must be callable, not {initializer!r}")
    if isinstance(initargs, (str, bytes)) or not hasattr(initargs, "__iter__"):
        raise TypeError(
            f"initargs must be a tuple of the initializer's arguments, not {initargs!r}; "
            "for one argument write (arg,)"
        )
    specs = parse_hosts(hosts if hosts is not None else [])
    for i, spec in enumerate(specs):
        twin = next((s for s in specs[:i] if s.same_host(spec)), None)
        if twin is not None:
            # two sessions on one host, which the pool could tell apart
            # neither in its status nor in remove_hosts
            raise ValueError(
                f"hosts name {twin.host} twice ({twin} and {spec}); give it once, "
                "with all its workers"
            )
    if (
        not isinstance(heartbeat_timeout, (int, float))
        or isinstance(heartbeat_timeout, bool)
        or not 0 < heartbeat_timeout < math.inf
    ):
        raise ValueError(
            "heartbeat_timeout must be a positive, finite number of seconds, "
            f"not {heartbeat_timeout!r}"
        )
    check_spawner_heartbeat(heartbeat_timeout, specs)
    if connect_timeout is not None and (
        not isinstance(connect_timeout, (int, float)) or not connect_timeout > 0
    ):
        raise ValueError(
            "connect_timeout must be a positive number of seconds or None (an SSH host's "
            f"ConnectTimeout in ~/.ssh/config, else {DEFAULT_CONNECT_TIMEOUT:g}), "
            f"not {connect_timeout!r}"
        )
    if (
        not isinstance(agent_start_timeout, (int, float))
        or isinstance(agent_start_timeout, bool)
        or not 0 < agent_start_timeout < math.inf
    ):
        raise ValueError(
            "agent_start_timeout must be a positive, finite number of seconds, "
            f"not {agent_start_timeout!r}"
        )
    if not isinstance(remote_python, (str, Mapping)) or not remote_python:
        raise TypeError(
            f"remote_python must be a command or a dict of commands, not {remote_python!r}"
        )
    if secret is not None and not isinstance(secret, (str, bytes, bytearray)):
        # bytes(32) would be 32 zero bytes: a secret anyone can guess
        raise TypeError(f"secret must be a string or bytes, not {secret!r}")
    if secret_file is not None and not isinstance(secret_file, (str, os.PathLike)):
        raise TypeError(f"secret_file must be a path, not {secret_file!r}")
    if num_workers is None and not specs:
        raise ValueError("num_workers=None (no local workers) needs hosts to run the tasks")
    worker_loop = loop_type(worker_loop)
    loop_factory(worker_loop)
    func_pickle = pickle_type(func_pickle)
    data_pickle = pickle_type(data_pickle)
    options = Options(
        num_workers=local,
        hosts=specs,
        remote=RemoteSettings(
            tunnel=ssh_tunnel,
            python=remote_python if isinstance(remote_python, str) else dict(remote_python),
            heartbeat_timeout=float(heartbeat_timeout),
            accept_new_hosts=ssh_accept_new_hosts,
            connect_timeout=None if connect_timeout is None else float(connect_timeout),
            localhost=localhost,
            agent_start_timeout=float(agent_start_timeout),
        ),
        localport=localport,
        cluster_keys=None,
        qsize=qsize,
        initializer=initializer,
        initargs=tuple(initargs),
        worker_loop=int(worker_loop),
        func_pickle=int(func_pickle),
        data_pickle=int(data_pickle),
        max_retries=max_retries,
        task_timeout=task_timeout,
        max_worker_deaths=max_worker_deaths,
        max_tasks_per_child=max_tasks_per_child,
        output=output,
        log_level=log_level,
        secret=secret,
        secret_file=secret_file,
    )
    for spec in specs:
        if spec.is_ssh:
            options.remote.python_for(spec.host)  # one for each, or a ValueError now
    if any(not h.is_ssh for h in specs):
        # only spawner hosts use the secret: a pool without them loads it when
        # it gets one (``add_hosts``)
        options.spawner_keys()
    return options
