"""Helpers of the tests: child processes, pool threads, polling."""

from __future__ import annotations

import gc
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from distex_zmq.worker.keeper import KEEPER_NAME

if TYPE_CHECKING:
    from distex_zmq import Pool

#: the type of the ``make_pool`` fixture: ``make_pool(*args, **kwargs) -> Pool``
MakePool = Callable[..., "Pool"]


def _is_multiprocessing_server(pid: int) -> bool:
    """Whether ``pid`` is a ``multiprocessing`` resource tracker or fork
    server: a process that lives as long as the one that started it (a
    client whose local workers share its tracker, as ``ProcessPoolExecutor``'s
    spawned workers do; the fork server of a ``ProcessPoolExecutor`` control,
    its default start method from Python 3.14)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return False
    return any(name in cmdline for name in (b"multiprocessing.resource_tracker", b"forkserver"))


def child_pids(parent: int | None = None) -> set[int]:
    """Live (non-zombie) processes whose parent is ``parent`` (default: us),
    but a resource tracker or a fork server."""
    parent = os.getpid() if parent is None else parent
    children = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        fields = stat[stat.rindex(")") + 2 :].split()
        state, ppid = fields[0], int(fields[1])
        if ppid == parent and state != "Z" and not _is_multiprocessing_server(int(entry)):
            children.add(int(entry))
    return children


def orphaned_keepers() -> set[int]:
    """Keepers of the process group of a worker that has ended (see
    ``worker/keeper.py``): each kills its group within a second or so of its
    worker's end, and itself with it."""
    keepers = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        args = command_line(int(entry))
        if (
            len(args) == 5
            and args[:2] == ["/bin/sh", "-c"]
            and args[3] == KEEPER_NAME
            and args[4].isdigit()
            and not pid_alive(int(args[4]))
        ):
            keepers.add(int(entry))
    return keepers


def pool_threads() -> list[threading.Thread]:
    """Threads of pools: their loops, SSH sessions and tunnels, paramiko's transports."""
    import paramiko

    return [
        t
        for t in threading.enumerate()
        if t.is_alive() and (t.name.startswith("distex_zmq") or isinstance(t, paramiko.Transport))
    ]


def command_line(pid: int) -> list[str]:
    """The arguments of process ``pid`` (empty once it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def broker_endpoint(pool: Pool) -> str:
    """The endpoint of ``pool``'s broker, as its local workers got it: the
    ``--connect`` argument of ``python -m distex_zmq.worker``, its public CLI."""
    for pid in sorted(set(pool.run_on_all(os.getpid)) & child_pids()):
        args = command_line(pid)
        if "--connect" in args:
            return args[args.index("--connect") + 1]
    raise LookupError(f"{pool} has no local worker")


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


class LeakCheck:
    """What a test started and left running: new children and pool threads.

    Made before the test; ``leftovers`` after it waits for them to go away,
    ``clean_up`` kills what did not.
    """

    def __init__(self) -> None:
        self.children = child_pids()
        self.threads = set(pool_threads())

    def leftovers(self, timeout: float = 0.0) -> tuple[set[int], list[threading.Thread]]:
        def now() -> tuple[set[int], list[threading.Thread]]:
            return (child_pids() - self.children) | orphaned_keepers(), [
                t for t in pool_threads() if t not in self.threads
            ]

        wait_until(lambda: now() == (set(), []), timeout=timeout, interval=0.05)
        return now()

    @staticmethod
    def describe(pids: set[int]) -> list[str]:
        descriptions = []
        for pid in sorted(pids):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                cmd = "?"
            descriptions.append(f"pid {pid}: {cmd}")
        return descriptions

    @staticmethod
    def clean_up(pids: set[int], threads: list[threading.Thread]) -> None:
        """Kill the leftover processes and shut down the pools of the threads."""
        for pid in pids:
            for kill in (os.killpg, os.kill):  # workers lead their own session
                try:
                    kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        from distex_zmq.runtime.loop import Runtime

        def close(runtime: Runtime) -> None:
            try:
                runtime.close(wait=True, cancel_futures=True, drain=False, timeout=5)
            except Exception:  # noqa: BLE001 - best effort
                pass

        leaked = set(threads)
        for obj in gc.get_objects():
            if isinstance(obj, Runtime) and obj.thread in leaked:
                # in a thread of its own: a pool that cannot close must not hang us
                threading.Thread(target=close, args=(obj,), daemon=True).start()
        wait_until(lambda: not any(t.is_alive() for t in leaked), timeout=10)
        # reap the killed children that nobody waits for, so that they vanish
        wait_until(lambda: not any(pid_alive(pid) for pid in pids), timeout=5)
        for pid in pids:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


#: The ``"control"`` of a test whose script gives ``ProcessPoolExecutor``
#: ``max_tasks_per_child``, which it takes from Python 3.11
CONTROL_WITH_MAX_TASKS = pytest.param(
    "control",
    marks=pytest.mark.skipif(
        sys.version_info < (3, 11),
        reason="ProcessPoolExecutor takes max_tasks_per_child from Python 3.11",
    ),
)


#: ``python -c`` code that runs module ``sys.argv[1]`` as ``-m`` would, with
#: SIGCHLD ignored
IGNORING_SIGCHLD = (
    "import runpy, signal, sys; signal.signal(signal.SIGCHLD, signal.SIG_IGN); "
    "del sys.argv[0]; runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)"
)


#: A command that runs the command after it with SIGINT, SIGQUIT and SIGHUP
#: at their defaults, as a terminal or a service manager starts a program:
#: tests run in the background (by a shell without job control) have SIGINT
#: and SIGQUIT ignored, and nohup ignores SIGHUP; a child would inherit that.
WITH_DEFAULT_SIGNALS = (
    sys.executable,
    "-c",
    "import os, signal, sys\n"
    "for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):\n"
    "    signal.signal(sig, signal.SIG_DFL)\n"
    "os.execvp(sys.argv[1], sys.argv[1:])",
)


class LoopbackSpawner:
    """``python -m distex_zmq.spawner`` on 127.0.0.1 without a secret (unless
    ``args`` has ``--secret-file``), its log in a file; on a free port, or on
    ``port`` (a spawner started again). With ``ignore_sigchld`` it runs with
    SIGCHLD ignored, as a child of a daemon that ignores it may; ``wrapper``
    is a command that runs it (its arguments follow); ``python`` the
    interpreter that runs it (default: this one). Its other signals are
    as a terminal or a service manager leaves them (``WITH_DEFAULT_SIGNALS``)."""

    def __init__(
        self,
        log: Path,
        *args: str,
        port: int | None = None,
        ignore_sigchld: bool = False,
        wrapper: tuple[str, ...] = (),
        python: str = sys.executable,
    ):
        env = {k: v for k, v in os.environ.items() if k != "DISTEX_ZMQ_SECRET"}
        run = ["-m", "distex_zmq.spawner"]
        if ignore_sigchld:
            run = ["-c", IGNORING_SIGCHLD, "distex_zmq.spawner"]
        for _ in range(5):  # another process may take the port between probe and bind
            self.port = free_port() if port is None else port
            self.log = log
            with open(log, "wb") as out:
                self.proc = subprocess.Popen(
                    [
                        *WITH_DEFAULT_SIGNALS,
                        *wrapper,
                        python,
                        *run,
                        "--port",
                        str(self.port),
                        *args,
                    ],
                    env=env,
                    stderr=out,
                )
            wait_until(lambda: self.proc.poll() is not None or self.listening(), timeout=30)
            if self.proc.poll() is None and self.listening():
                return
            self.stop()
        raise RuntimeError(f"no loopback spawner started: {self.read().decode(errors='replace')}")

    def read(self) -> bytes:
        return self.log.read_bytes()

    def listening(self) -> bool:
        return b" spawner (pid " in self.read()  # its log line once it listens

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def other_python() -> str | None:
    """A CPython 3.10 or later of another minor version than this one, that
    runs and can make a venv: one of pyenv's versions (``$PYENV_ROOT``,
    default ``~/.pyenv``, as on the CI machine), else a ``python3.X`` on
    PATH (pyenv's shims of versions not selected fail, and are passed
    over); ``None`` if there is none."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    for minor in range(10, 15):
        if (3, minor) == sys.version_info[:2]:
            continue
        found = [str(p) for p in sorted(pyenv.glob(f"3.{minor}.*/bin/python"))]
        found.append(shutil.which(f"python3.{minor}") or "")
        for python in filter(None, found):
            check = f"import sys, ensurepip, venv; assert sys.version_info[:2] == (3, {minor})"
            run = subprocess.run([python, "-c", check], capture_output=True, timeout=30)
            if run.returncode == 0:
                return python
    return None


def workers_run_sitecustomize(
    directory: Path, source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Make the workers started from now on run ``source`` as their
    ``sitecustomize``, before their own code: it goes to ``directory``,
    put first on the path they get from the client, and the client passes
    for having run it, so that its directory comes before the standard
    library's, where Debian's Python has a ``sitecustomize`` of its own."""
    (directory / "sitecustomize.py").write_text(source)
    monkeypatch.syspath_prepend(str(directory))
    hook = types.ModuleType("sitecustomize")
    hook.__file__ = str(directory / "sitecustomize.py")
    monkeypatch.setitem(sys.modules, "sitecustomize", hook)
