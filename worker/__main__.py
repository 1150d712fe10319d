"""Entry point of a worker process: ``python -m distex_zmq.worker``.

``--check`` prints the installed version and exits 0, so that a launcher can
test a host (distex's ``distex_proc``).
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

from distex_zmq.version import __version__

#: Seconds a worker that leaves (STOP: the pool's shutdown, a renewal, a
#: resize) waits for the threads that its tasks started and left running,
#: not daemons, before it exits without them (as long as a shutdown waits
#: for a worker before it sends SIGTERM).
THREADS_GRACE = 3.0


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux for SIGKILL when the process that started us dies."""
    if not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if parent_pid and os.getppid() != parent_pid:
        os._exit(1)  # the parent is already gone


def _drop_cluster_secret() -> None:
    """Take the cluster's shared secret out of this process's environment,
    where a spawner (or a client) started with ``DISTEX_ZMQ_SECRET`` set
    passes it: a worker needs none, and whoever holds it can run any code on
    every spawner of the cluster, so it is not left to tasks and the
    processes they start (a library, a crash reporter, a shell)."""
    from distex_zmq.security import SECRET_ENV

    os.environ.pop(SECRET_ENV, None)


def _take_multiprocessing_key() -> None:
    """Take the client's ``multiprocessing`` key that a local worker gets
    (see ``LocalLauncher.spawn``), so that the proxies of the client's
    ``multiprocessing.Manager`` that tasks get connect; the processes that
    tasks start do not inherit it."""
    from distex_zmq.security import MP_AUTHKEY_ENV

    key = os.environ.pop(MP_AUTHKEY_ENV, None)
    if key:
        import multiprocessing.process

        multiprocessing.process.current_process().authkey = bytes.fromhex(key)


def _name_process(identity: str) -> None:
    """Give this process, to ``multiprocessing``, the name and number of a
    pool's worker, as a worker of ``ProcessPoolExecutor`` has them
    (``ForkProcess-3``, ``_identity`` ``(3,)``), not those of a main process:
    code that asks ``current_process().name == "MainProcess"`` whether it
    runs in a worker, or takes ``current_process()._identity[0]`` for a
    worker's number (a progress bar's row, a GPU), runs as it does there.
    The number is the pool's count of its workers, from 1 (``identity`` is
    ``<where>-<number>``, in hex); a replaced worker's successor takes the
    next, as under ``multiprocessing``."""
    number = bytes.fromhex(identity).rsplit(b"-", 1)[-1]
    if not number.isdigit():
        return
    import multiprocessing.process

    process = multiprocessing.process.current_process()
    process._identity = (int(number),)
    process.name = f"DistexWorker-{int(number)}"


def _take_json(name: str) -> Any:
    """The JSON value of the environment variable ``name``, which a local
    worker's launcher set for it (see ``LocalLauncher``), taken out of the
    environment, which the processes that tasks start inherit; None where
    it is not set, or not JSON."""
    text = os.environ.pop(name, None)
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _is_strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _take_script_argv() -> None:
    """Take the client's ``sys.argv`` that a local worker gets (see
    ``LocalLauncher.spawn``) as this process's, as a worker that
    ``ProcessPoolExecutor`` forks or spawns has the script's (not the
    worker's command line, with its broker's endpoint)."""
    from distex_zmq.process_role import SCRIPT_ARGV_ENV

    argv = _take_json(SCRIPT_ARGV_ENV)
    if _is_strings(argv):
        sys.argv[:] = argv


def _take_script_module() -> str | None:
    """The name of the module that the client runs as ``__main__``, which a
    local worker gets (see ``LocalLauncher.spawn``), taken out of the
    environment; None if it runs none (a script run by its path)."""
    from distex_zmq.process_role import SCRIPT_MODULE_ENV

    return os.environ.pop(SCRIPT_MODULE_ENV, None) or None


def _restore_client_env() -> None:
    """Put back the environment variables that the launcher set for this
    worker's start (``CLIENT_ENV_ENV``): they did their work as the
    interpreter started, and a task's child processes get the environment
    that a worker of ``ProcessPoolExecutor`` gives them, the client's."""
    from distex_zmq.process_role import CLIENT_ENV_ENV

    restored = _take_json(CLIENT_ENV_ENV)
    if not isinstance(restored, dict):
        return
    for name, value in restored.items():
        if not isinstance(name, str):
            continue
        if value is None:
            os.environ.pop(name, None)
        elif isinstance(value, str):
            os.environ[name] = value


def _take_resource_tracker() -> None:
    """Share the client's ``multiprocessing`` resource tracker, whose
    descriptor a local worker gets (see ``LocalLauncher.spawn``), as a
    child that multiprocessing spawns does: the ``shared_memory`` blocks
    that tasks attach to or make are then the client's to clean up at its
    exit, not this worker's at its own (which would unlink a block of the
    client's that a task only attached to)."""
    from distex_zmq.process_role import TRACKER_FD_ENV

    fd = os.environ.pop(TRACKER_FD_ENV, None)
    if not fd or not fd.isdigit():
        return
    try:
        os.fstat(int(fd))
    except OSError:
        return
    from multiprocessing import resource_tracker

    # as spawn's children take it
    resource_tracker._resource_tracker._fd = int(fd)  # type: ignore[attr-defined]


def _take_client_path() -> None:
    """Put the client's ``sys.path`` that a local worker gets (see
    ``LocalLauncher``) first on this process's, in its order: ``PYTHONPATH``
    brought it too, but for a directory whose name has a ``:``, and not
    under ``-E``."""
    from distex_zmq.process_role import CLIENT_PATH_ENV

    paths = _take_json(CLIENT_PATH_ENV)
    if _is_strings(paths):
        sys.path[:] = dict.fromkeys([*paths, *sys.path])


#: glibc's ``mallopt`` parameters, and the values the worker sets: the
#: ceilings that glibc's own thresholds reach in a process that has freed a
#: 32 MiB block (``DEFAULT_MMAP_THRESHOLD_MAX`` and twice it).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 64 << 20


def _keep_freed_memory() -> None:
    """Have glibc's malloc keep freed blocks of up to ``MMAP_THRESHOLD`` for
    reuse, up to ``TRIM_THRESHOLD`` of them, instead of handing them back
    to the kernel.

    A worker that echoes or makes large payloads allocates each one while
    the last is still on its way out (a result leaves without a copy, and
    is freed once sent). glibc's thresholds, which move with the largest
    block freed, then give the memory back on most frees, and every payload
    pays a page fault per 4 KiB page it writes, which costs more than its
    copy. A user who sets either threshold (``MALLOC_TRIM_THRESHOLD_``,
    ``MALLOC_MMAP_THRESHOLD_`` or ``GLIBC_TUNABLES``) keeps them both.
    """
    if not sys.platform.startswith("linux") or sys.implementation.name != "cpython":
        return
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if (
        "MALLOC_TRIM_THRESHOLD_" in os.environ
        or "MALLOC_MMAP_THRESHOLD_" in os.environ
        or "malloc.trim_threshold" in tunables
        or "malloc.mmap_threshold" in tunables
    ):
        return
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc's, not musl's (which has no mallopt)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m distex_zmq.worker",
        description="A distex_zmq worker process; pools start these, not users.",
    )
    parser.add_argument("--check", action="store_true", help="print the version and exit")
    parser.add_argument("--connect", help="broker endpoint, e.g. ipc:///tmp/x/broker")
    parser.add_argument("--identity", help="routing id, given by the launcher")
    parser.add_argument("--credits", type=int, default=2, help="tasks the broker may send ahead")
    parser.add_argument("--func-pickle", type=int, default=2, help="0=pickle 1=cloudpickle 2=dill")
    parser.add_argument(
        "--data-pickle", type=int, default=0, help="0=pickle 1=cloudpickle 2=dill 3=auto"
    )
    parser.add_argument("--loop", type=int, default=0, help="LoopType of the worker")
    parser.add_argument(
        "--log-level", type=int, default=-1, help="send task log records at this level (-1: none)"
    )
    parser.add_argument(
        "--heartbeat-ms",
        type=int,
        default=0,
        help="close a TCP connection to the broker that is dead for this long (0: TCP's own)",
    )
    parser.add_argument("--parent-pid", type=int, default=0, help="exit when this process dies")
    parser.add_argument(
        "--curve-keys-on-stdin",
        action="store_true",
        help="read the CURVE keys (JSON: server, public, secret) from the first line of stdin",
    )
    args = parser.parse_args(argv)
    if not args.check and not (args.connect and args.identity):
        parser.error("--connect and --identity are required (or --check)")
    if args.credits < 1:
        parser.error("--credits must be >= 1")
    if args.heartbeat_ms < 0:
        parser.error("--heartbeat-ms must be >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    if args.check:
        print(f"distex_zmq {__version__} installed OK (Python {sys.version.split()[0]})")
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the client
    _die_with_parent(args.parent_pid)
    # before any thread starts (a fork copies only the calling thread)
    from distex_zmq.worker.keeper import keep_group

    keep_group()
    _keep_freed_memory()
    _drop_cluster_secret()
    _take_multiprocessing_key()
    _name_process(args.identity)
    _take_script_argv()
    script_module = _take_script_module()
    _restore_client_env()
    _take_resource_tracker()

    from distex_zmq.worker.running import flush_std_streams
    from distex_zmq.worker.worker import Worker

    from distex_zmq.loops import new_event_loop
    from distex_zmq.process_role import mark_worker

    # once this process's own modules are in: a module of the client's
    # that shadows one of them (a script named ``selectors.py``) is the
    # tasks' to import, not the worker's
    _take_client_path()

    # a pool that a task or a module of its function makes starts lazily
    mark_worker()

    try:
        loop = new_event_loop(args.loop)
    except ValueError as e:
        sys.exit(f"distex_zmq worker: {e}")
    # a sync task runs inside a callback of the loop (the read of its
    # message): asyncio's debug mode (``python -X dev``, which workers take
    # from the client) would log each one longer than 0.1 s as a slow
    # callback, a warning about the pool's design, not about the task
    loop.slow_callback_duration = float("inf")
    # not the thread's current loop: a sync task that asks for one
    # (``asyncio.get_event_loop().run_until_complete``) gets a loop of its own,
    # as in a plain process, not the worker's, which runs already
    curve = None
    if args.curve_keys_on_stdin:
        # keys never travel on the command line, which every user can read
        try:
            curve = json.loads(sys.stdin.readline())
            curve = {k: str(curve[k]) for k in ("server", "public", "secret")}
        except (ValueError, KeyError, TypeError) as e:
            sys.exit(f"distex_zmq worker: no CURVE keys on stdin: {e}")
    worker = Worker(
        args.connect,
        bytes.fromhex(args.identity),
        args.credits,
        args.func_pickle,
        args.data_pickle,
        loop,
        args.parent_pid,
        curve,
        args.log_level,
        args.heartbeat_ms,
        script_module,
    )
    code = worker.run()
    flush_std_streams()
    _exit(code, flush_std_streams)


def _exit(code: int, flush: Callable[[], None]) -> NoReturn:
    """Exit with ``code``, as Python does once the threads that are not
    daemons have ended; if some still run after ``THREADS_GRACE``, without
    them (the exit handlers run, then ``os._exit``). Python would wait for
    them for ever, and nothing stops a worker that leaves a pool that goes
    on (a renewal, a resize) as a shutdown does: it would stay, and a
    resize would wait for its exit for ever."""
    deadline = time.monotonic() + THREADS_GRACE
    for thread in _left_running():
        thread.join(max(0.0, deadline - time.monotonic()))
    if _left_running():
        atexit._run_exitfuncs()
        flush()
        os._exit(code)
    sys.exit(code)


def _left_running() -> list[threading.Thread]:
    """The threads, not daemons, that run besides this one."""
    me = threading.current_thread()
    return [t for t in threading.enumerate() if t is not me and not t.daemon and t.is_alive()]


if __name__ == "__main__":
    main()
