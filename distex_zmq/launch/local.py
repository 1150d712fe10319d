"""Starts and supervises worker processes on this machine.

Each worker is a ``python -m distex_zmq.worker`` child in a session of its
own (so a Ctrl-C in the terminal reaches only the client, and the whole
process tree can be signalled at once). Its exit is seen at once through a
pidfd on the pool loop. Its stdout and stderr are read line by line as they
are written (workers run unbuffered) and handed to ``on_output`` (or, without
one, passed through to ours); the last lines of stderr are kept for the error
that reports its death. At its exit both pipes are read to their end, so the
last line a killed worker wrote is not lost.

A line the worker has begun and not ended (a progress bar redrawn after
``\\r``, ``print(x, end="")``) is handed on as a partial line once it has
waited ``PARTIAL_DELAY`` seconds for its end (or at once when it reaches
``MAX_LINE`` bytes); what follows continues it. A ``print`` writes its text
and its line end separately: the delay keeps such a line whole.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import multiprocessing.process
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from distex_zmq.process_role import (
    CLIENT_ENV_ENV,
    CLIENT_PATH_ENV,
    SCRIPT_ARGV_ENV,
    SCRIPT_MODULE_ENV,
    TRACKER_FD_ENV,
)
from distex_zmq.security import MP_AUTHKEY_ENV

_logger = logging.getLogger("distex_zmq.launch.local")

#: Lines of a worker's stderr kept for error messages.
STDERR_TAIL_LINES = 20
#: How a ``faulthandler`` dump begins.
_FATAL = "Fatal Python error"
#: How a frame of the C stack begins, which ``faulthandler`` writes after the
#: Python stack from Python 3.14: the stderr tail leaves them out, or they
#: would push the Python stack, where the task crashed, out of it.
_C_FRAME = '  Binary file "'
#: A line longer than this is handed on in partial pieces of about this many bytes.
MAX_LINE = 64 * 1024
#: Seconds a line a worker has begun waits for its end before what there is
#: of it is handed on as a partial line.
PARTIAL_DELAY = 0.1
#: The longest ``sys.argv`` (as JSON) that local workers take from the client:
#: Linux refuses to start a process with an environment string of 128 KiB.
SCRIPT_ARGV_MAX = 64 * 1024

#: Held while a worker is spawned, and by every ``os.fork()`` of the client
#: as it forks (multiprocessing's fork, a ``ProcessPoolExecutor``): a child
#: forked during ``Popen`` would inherit the write end of its exec-status
#: pipe (and of the worker's stdin), and ``Popen`` would wait on the pool
#: loop until that child exits.
_spawning = threading.Lock()
os.register_at_fork(
    before=_spawning.acquire,
    after_in_parent=_spawning.release,
    after_in_child=_spawning.release,
)

#: ``on_output(identity, pid, stream, lines, partial)``: lines (without their
#: line ends) a worker wrote to ``stream``, ``"out"`` or ``"err"``; with
#: ``partial`` the last one is not ended yet, and the next lines of that
#: stream continue it (the first of them may be empty: only its end).
OutputCallback = Callable[[bytes, int, str, list[str], bool], None]


#: ``on_exit(identity, pid, returncode, stderr_tail)``: a worker ended;
#: ``returncode`` is ``None`` where its exit status is unknown.
ExitCallback = Callable[[bytes, int, int | None, str], None]


class OutputFlow(Protocol):
    """Where ``on_output``'s lines wait to be written: ``full()`` when the
    workers' pipes should not be read for now; ``when_room(loop, callback)``
    calls ``callback`` on ``loop`` once they may be read again."""

    def full(self) -> bool: ...

    def when_room(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None: ...


def interpreter_args() -> list[str]:
    """The client's interpreter options, for its workers, as multiprocessing
    passes them (``-X dev``, ``-W error``, ``-O``, ...), but ``-E`` and ``-I``:
    a worker needs its environment (``PYTHONPATH``); and ``-P``, which
    ``START_WORKER`` gives where it exists."""
    ignored = ("-E", "-I", "-P")
    # private, but what multiprocessing's spawn uses for the same purpose
    flags = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]
    args = [arg for arg in flags if arg not in ignored]
    if sys.flags.isolated:
        args.append("-s")  # what -I implies but the environment
    return args


#: What runs ``distex_zmq.worker`` on a worker's command line, as ``python
#: -m`` does, but for the directory it starts in: that comes first
#: on its path only if it does on the client's (``''``), and shadows nothing
#: else (a script ``argparse.py`` there would stand in for the module the
#: worker imports). ``-P`` keeps it off the path (Python 3.11 and later);
#: before, the ``-c`` code takes it off (``''``, first) before any import.
START_WORKER: tuple[str, ...] = (
    ("-P", "-m", "distex_zmq.worker")
    if sys.version_info >= (3, 11)
    else (
        "-c",
        "import sys; del sys.path[0]; import runpy; "
        "runpy.run_module('distex_zmq.worker', run_name='__main__', alter_sys=True)",
    )
)


def main_module_name() -> str | None:
    """The name of the module that this process runs as ``__main__``
    (``python -m pkg.script``: ``pkg.script``), which the workers' ``__main__``
    takes, as spawn's children do: a relative import in a function of the
    script is relative to its package. None for a script run by its path,
    the REPL, ``python -c``."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = getattr(spec, "name", None)
    return name if isinstance(name, str) and name != "__main__" else None


def resource_tracker_fd() -> int | None:
    """The descriptor of this process's ``multiprocessing`` resource tracker,
    started if need be (a process that lives as long as this one), which
    the workers share, as the children that multiprocessing spawns do: a
    ``shared_memory`` block that a task attaches to is then unlinked when
    the client exits, not when the worker does (a worker's own tracker would
    unlink the client's block at the worker's exit). None where it does not
    start."""
    try:
        from multiprocessing import resource_tracker

        fd = resource_tracker.getfd()
    except (OSError, ValueError):
        return None
    _forget_tracker_pid_in_forks()
    return fd


@functools.cache
def _forget_tracker_pid_in_forks() -> None:
    """Have a forked child of this process forget the resource tracker's
    pid: the tracker is this process's child, not the fork's. Python 3.12.10
    and later reap it at the exit (``ResourceTracker.__del__``), and in a
    fork that ``waitpid`` fails with a traceback ("Exception ignored ...
    ChildProcessError", CPython gh-140485). Without the pid, the child keeps
    the descriptor and uses the tracker, as spawn's children do (they get
    only the descriptor)."""

    def in_child() -> None:
        from multiprocessing import resource_tracker

        resource_tracker._resource_tracker._pid = None  # type: ignore[attr-defined]

    os.register_at_fork(after_in_child=in_child)


def _cwd() -> str | None:
    """The directory this process runs in; None where it was removed."""
    try:
        return os.getcwd()
    except OSError:
        return None


def client_path(cwd: str | None) -> list[str]:
    """This process's ``sys.path`` for its workers: ``''`` as the directory
    ``cwd``; what the import system skips (what is neither ``str`` nor
    ``bytes``, a ``pathlib.Path`` too) left out."""
    paths = []
    for entry in sys.path:
        if not isinstance(entry, (str, bytes)):
            continue
        path = os.fsdecode(entry)
        if not path:
            if cwd is None:
                continue
            path = cwd
        paths.append(path)
    return list(dict.fromkeys(paths))


def start_path(paths: list[str]) -> list[str]:
    """``paths`` (the client's) for a worker's start, the standard library
    first: the worker imports modules that the client may not have
    (``argparse``), and a script's directory, first on the client's path,
    would stand in for them with a script of that name (``argparse.py``),
    and the worker would fail to start. Its tasks get the client's order
    (the worker's ``_take_client_path``), as spawn's children do.

    But the directory of the client's own ``sitecustomize`` (a project's,
    coverage's) comes before the standard library, where Debian's and
    Ubuntu's Pythons have one that would stand in for it."""
    # (not "platstdlib": in a virtual environment, the directory of its
    # site-packages)
    stdlib = os.path.normpath(sysconfig.get_path("stdlib"))

    def of_stdlib(path: str) -> bool:
        path = os.path.normpath(path)
        # the directory, lib-dynload in it, and the zip beside it
        return path in (stdlib, os.path.join(stdlib, "lib-dynload")) or (
            path.endswith(".zip") and os.path.dirname(path) == os.path.dirname(stdlib)
        )

    hooks = {d for d in map(_site_hook_dir, ("sitecustomize", "usercustomize")) if d}
    hooks = {d for d in hooks if not of_stdlib(d)}

    def rank(path: str) -> int:
        return 0 if os.path.normpath(path) in hooks else 1 if of_stdlib(path) else 2

    return sorted(paths, key=rank)


def _site_hook_dir(name: str) -> str | None:
    """The directory on the path that this process's module ``name`` (one
    that ``site`` imports at the start) came from; None without one."""
    file = getattr(sys.modules.get(name), "__file__", None)
    if not isinstance(file, str):
        return None
    directory = os.path.dirname(file)
    if os.path.basename(file).startswith("__init__."):  # a package
        directory = os.path.dirname(directory)
    return os.path.normpath(directory)


@functools.cache
def die_with_parent() -> tuple[str, ...]:
    """The command that starts a worker asking Linux for SIGKILL when the
    thread that starts it (the pool loop) ends, and so when the client dies,
    even by SIGKILL: util-linux's ``setpriv --pdeathsig KILL --``; nothing
    where there is no ``setpriv`` with that option (util-linux before 2.33).

    Set before the interpreter starts, it covers a worker that hangs before
    its code runs (a slow ``sitecustomize`` or ``.pth`` file, a stalled file
    system), which asks for the same only once its code runs.
    """
    setpriv = shutil.which("setpriv")
    if setpriv is None or not sys.platform.startswith("linux"):
        return ()
    wrapper = (setpriv, "--pdeathsig", "KILL", "--")
    try:
        # once, through itself: the option exists and the signal can be set
        with _spawning:
            check = subprocess.run(
                [*wrapper, setpriv, "--help"],
                capture_output=True,
                stdin=subprocess.DEVNULL,
                timeout=10,
            )
    except (OSError, subprocess.SubprocessError):
        return ()
    if check.returncode != 0 or b"--pdeathsig" not in check.stdout:
        return ()
    return wrapper


def describe_exit(returncode: int | None, here: bool = True) -> str:
    """``exit code 3``, ``killed by SIGSEGV``, or, for ``None``, why the exit
    status is unknown; ``here``: the process was a child of this one."""
    if returncode is None:
        if here and signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN:
            return (
                "exit status unknown: this process ignores SIGCHLD (signal.SIG_IGN), so "
                "the kernel discards its children's exit status; to see it, leave SIGCHLD "
                "at signal.SIG_DFL"
            )
        if here:
            return (
                "exit status unknown: something else in this process reaped it first "
                "(an os.wait(), say), or the kernel kept none"
            )
        return (
            "exit status unknown: the supervisor on its host could not collect it "
            "(SIGCHLD is ignored there, or something else reaped the process first)"
        )
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exit code {returncode}"


#: signals that a crash in native code sends, on which faulthandler writes
#: the Python stack of every thread
CRASH_SIGNALS = frozenset(
    {signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGABRT}
)


def crash_hint(returncode: int | None, tail: str) -> str:
    """For a worker that a crash in native code killed (``killed by
    SIGSEGV``) and that wrote no Python stack (``faulthandler`` was off in
    it): how to see where it crashed; else ``""``. (A stack longer than the
    lines kept of ``tail`` keeps its heading, see ``WorkerProcess.tail``.)"""
    if returncode is None or -returncode not in CRASH_SIGNALS:
        return ""
    if "Fatal Python error" in tail or "(most recent call first)" in tail:
        return ""
    return (
        " (to see the Python stack where it crashed in this error, enable faulthandler in "
        "the workers: Pool(initializer=faulthandler.enable), or, for local workers, run "
        "the client with python -X faulthandler or PYTHONFAULTHANDLER=1)"
    )


#: The assertions of libzmq (``Bad file descriptor (src/epoll.cpp:73)``) and
#: of libuv (``src/unix/linux.c:1455: uv__io_poll: Assertion ...``) in a
#: worker's last stderr lines.
_IO_ASSERTION = re.compile(r"\(src/[\w/]+\.cpp:\d+\)|src/unix/\w+\.c:\d+: uv__")


def abort_hint(returncode: int | None, tail: str) -> str:
    """What a worker's abort (SIGABRT) in an assertion of its ZeroMQ or of
    its event loop (``tail``: its last stderr lines) most likely means; ""
    for other exits."""
    if returncode != -signal.SIGABRT or not _IO_ASSERTION.search(tail):
        return ""
    if "OUT OF MEMORY" in tail:  # libzmq's alloc_assert: not a descriptor's
        return ""
    return (
        "; an assertion of the worker's ZeroMQ or event loop failed, as it does when "
        "the file descriptors they use are closed or replaced under them: does the "
        "task close or dup2 over file descriptors it did not open (os.closerange, a "
        "library that daemonizes)? Have it close only its own"
    )


def reap(popen: subprocess.Popen[bytes], block: bool = True) -> tuple[bool, int | None]:
    """``(ended, returncode)`` of a child, reaped if it ended (waited for with
    ``block``). ``returncode`` is ``None`` where the exit status is unknown:
    the kernel kept none (SIGCHLD ignored) or something else reaped it, where
    ``Popen`` itself would say 0."""
    try:
        pid, status = os.waitpid(popen.pid, 0 if block else os.WNOHANG)
    except ChildProcessError:
        popen.returncode = 0  # what Popen says: it does not wait for it again
        return True, None
    if pid == 0:
        return False, None
    popen.returncode = os.waitstatus_to_exitcode(status)
    return True, popen.returncode


def _whole_chars(data: bytes) -> int:
    """The length of ``data`` without an incomplete UTF-8 character at its end."""
    for back in range(1, min(len(data), 4) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:
            continue  # a continuation byte: look further back for its lead
        needs = 2 if byte >= 0xC0 else 1
        needs += (byte >= 0xE0) + (byte >= 0xF0)
        return len(data) - back if needs > back else len(data)
    return len(data)


class WorkerProcess:
    """One local worker process and what it wrote to stderr."""

    def __init__(self, identity: bytes, popen: subprocess.Popen[bytes]):
        self.identity = identity
        self.popen = popen
        self.pid = popen.pid
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        #: the heading of a ``faulthandler`` dump it wrote (``Fatal Python
        #: error: ...``), kept if its threads' stacks push it out of the tail
        self._fatal = ""
        #: by stream: what was read of a line not ended yet and not handed on
        self._partial = {"out": b"", "err": b""}
        #: by stream: a part of the line not ended yet was handed on
        self._open = {"out": False, "err": False}
        #: the part of the stderr line not ended yet that was handed on
        self._err_line = ""
        #: by stream: the timer that hands on a partial line (``PARTIAL_DELAY``)
        self.timers: dict[str, asyncio.TimerHandle | None] = {"out": None, "err": None}
        #: its return code once it ended (``None``: unknown, see ``reap``)
        self.exited: asyncio.Future[int | None] | None = None

    def feed(self, stream: str, data: bytes) -> list[str]:
        """The lines that ``data`` ends, read from ``stream`` (the first one
        continues a partial line handed on before); at the end of the stream
        (``data`` empty), what is left of the last line, or an empty one that
        ends a partial line handed on."""
        if data:
            raw = (self._partial[stream] + data).split(b"\n")
            self._partial[stream] = raw.pop()
        else:
            rest, self._partial[stream] = self._partial[stream], b""
            raw = [rest] if rest or self._open[stream] else []
        if not raw:
            return []
        self._open[stream] = False
        lines = [line.decode(errors="replace") for line in raw]
        if stream == "err":
            if not self._fatal:
                self._fatal = next((line for line in lines if line.startswith(_FATAL)), "")
            tail = lines
            if self._err_line:
                tail = [self._err_line + lines[0], *lines[1:]]
                self._err_line = ""
            if self._fatal:
                tail = [line for line in tail if not line.startswith(_C_FRAME)]
            self.stderr_tail.extend(tail)
        return lines

    def waiting(self, stream: str) -> int:
        """Bytes of a line not ended yet that were not handed on."""
        return len(self._partial[stream])

    def take_partial(self, stream: str) -> str:
        """What waits of the line not ended yet (up to its last whole
        character), to hand on as a partial line: what follows continues it."""
        data = self._partial[stream]
        end = _whole_chars(data)
        self._partial[stream] = data[end:]
        piece = data[:end].decode(errors="replace")
        if piece:
            self._open[stream] = True
            if stream == "err":
                self._err_line = (self._err_line + piece)[-MAX_LINE:]
        return piece

    def tail(self) -> str:
        lines = list(self.stderr_tail)
        last = self._err_line + self._partial["err"].decode(errors="replace")
        if last:
            lines.append(last)
        lines = lines[-STDERR_TAIL_LINES:]
        if self._fatal and self._fatal not in lines:
            # the stacks of its threads follow the heading, which says why
            lines = [self._fatal, "..."] + lines[2:]
        return "\n".join(lines)

    def signal_tree(self, sig: int) -> None:
        """Signal the worker and everything it started (its process group)."""
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


class LocalLauncher:
    """Starts local workers that connect to ``endpoint``; reports their exits.

    ``on_exit(identity, pid, returncode, stderr_tail)`` is called on the pool loop
    when a worker process ends, whatever the reason, after the last of its
    output; ``returncode`` is ``None`` where its exit status is unknown
    (``reap``). With ``on_output`` the workers' stdout and stderr go to it line by
    line (a line not ended after ``PARTIAL_DELAY`` in parts); without, both go
    to ours. With an ``output_flow`` the pipes are not read while it is full:
    a worker that writes faster than its lines are written waits in its
    ``print``, as it would on a terminal of its own.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        endpoint: str,
        worker_args: list[str],
        on_exit: ExitCallback,
        worker_stdin: bytes | None = None,
        on_output: OutputCallback | None = None,
        output_flow: OutputFlow | None = None,
        of_client: bool = False,
    ):
        self._loop = loop
        self._on_output = on_output
        self._flow = output_flow
        #: the workers are the client's own: they share its resource tracker
        #: and know the module it runs as ``__main__`` (an agent's or a
        #: spawner's have a tracker of their own, and no script)
        self.of_client = of_client
        #: pipes not read while the output flow is full: ``(proc, stream, fd)``
        self._paused: list[tuple[WorkerProcess, str, int]] = []
        #: written to each worker's stdin, then closed (its CURVE keys)
        self.worker_stdin = worker_stdin
        #: the broker's endpoint that new workers connect to
        self.endpoint = endpoint
        self._worker_args = worker_args
        self._on_exit = on_exit
        #: the interpreter of the workers: the client's own
        self.python = sys.executable
        #: prefix of its workers' identities, and where they run
        self.label = "local"
        self.where = "localhost"
        #: a local launcher is never cut off from the pool
        self.lost = False
        #: it starts as many workers at once as the pool asks for (see
        #: ``RemoteLauncher.opened_workers_only``)
        self.opened_workers_only = False
        self.processes: dict[bytes, WorkerProcess] = {}
        self._env = dict(os.environ)
        #: the directory the workers run in, the client's when the pool
        #: started, as their path and environment are the client's then
        self.cwd = _cwd()
        # for the worker's start only: it puts this process's values back,
        # which the processes that its tasks start inherit (another Python
        # given this one's whole path as PYTHONPATH fails to start)
        started_with = {"PYTHONPATH", "PYTHONUNBUFFERED"}
        if sys.flags.ignore_environment:
            # the client's interpreter ignored the PYTHON* variables (-E,
            # -I): its workers' ignore them too (PYTHONOPTIMIZE would turn
            # their asserts off), and have the options of the client's
            started_with |= {name for name in os.environ if name.startswith("PYTHON")}
        self._env[CLIENT_ENV_ENV] = json.dumps({k: os.environ.get(k) for k in started_with})
        for name in started_with:
            self._env.pop(name, None)
        # the workers import what the client can: its path (JSON, which the
        # worker takes as it is), where '' is the directory it runs in
        # (``python -c``, ``-m``, the REPL); PYTHONPATH, which cannot hold a
        # directory whose name has a ':', finds this package for the start
        paths = client_path(self.cwd)
        self._env[CLIENT_PATH_ENV] = json.dumps(paths)
        self._env["PYTHONPATH"] = os.pathsep.join(
            p for p in start_path(paths) if os.pathsep not in p
        )
        self._python_args = interpreter_args()
        # each line a task prints leaves the worker at once
        self._env["PYTHONUNBUFFERED"] = "1"

    def spawn(self, identity: bytes) -> WorkerProcess:
        """Start one worker with this routing id, new to the pool; return it.

        The worker gets this process's ``multiprocessing`` key (the
        client's, for local workers), as a worker that
        ``ProcessPoolExecutor`` forks or spawns has it: the proxies of the
        client's ``multiprocessing.Manager`` (a ``Queue`` for progress, a
        ``dict``) passed to its tasks connect with it. It goes in the
        environment, which only this user can read, never the command line.
        So does the client's ``sys.argv``, which the worker takes as its own,
        as a worker of ``ProcessPoolExecutor`` has the script's, unless it
        passes ``SCRIPT_ARGV_MAX``; the name of the module the client runs
        as ``__main__`` (``main_module_name``); and the descriptor of the
        client's resource tracker (``resource_tracker_fd``).
        """
        self._env[MP_AUTHKEY_ENV] = multiprocessing.process.current_process().authkey.hex()
        tracker = resource_tracker_fd() if self.of_client else None
        if tracker is None:
            self._env.pop(TRACKER_FD_ENV, None)
        else:
            self._env[TRACKER_FD_ENV] = str(tracker)
        script_module = main_module_name() if self.of_client else None
        if script_module is None:
            self._env.pop(SCRIPT_MODULE_ENV, None)
        else:
            self._env[SCRIPT_MODULE_ENV] = script_module
        argv = json.dumps(sys.argv)
        if len(argv) < SCRIPT_ARGV_MAX:
            self._env[SCRIPT_ARGV_ENV] = argv
        else:
            self._env.pop(SCRIPT_ARGV_ENV, None)
        cmd = [
            *die_with_parent(),
            self.python,
            *self._python_args,
            *START_WORKER,
            "--connect",
            self.endpoint,
            "--identity",
            identity.hex(),
            "--parent-pid",
            str(os.getpid()),
            *self._worker_args,
        ]
        with _spawning:
            popen = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL if self.worker_stdin is None else subprocess.PIPE,
                stdout=None if self._on_output is None else subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self._env,
                # (where that directory was removed since: the client's now)
                cwd=self.cwd if self.cwd and os.path.isdir(self.cwd) else None,
                pass_fds=() if tracker is None else (tracker,),
                start_new_session=True,
            )
            if popen.stdin is not None:
                # a few hundred bytes: the pipe takes them without blocking
                try:
                    popen.stdin.write(self.worker_stdin or b"")
                    popen.stdin.close()
                except OSError:
                    pass  # it died already: its exit is reported as usual
        proc = WorkerProcess(identity, popen)
        proc.exited = self._loop.create_future()
        self.processes[identity] = proc
        for stream, pipe in self._pipes(proc):
            os.set_blocking(pipe.fileno(), False)
            self._loop.add_reader(pipe.fileno(), self._read, proc, stream, pipe.fileno())
        self._watch_exit(proc)
        return proc

    def read_now(self, identity: bytes) -> bool:
        """Read what worker ``identity`` wrote and was not read yet, now
        rather than when the loop next sees its pipes: its results came, and
        what its task printed before them is to show first. The worker has
        written it already (it runs unbuffered), so it waits in the pipe.
        Whether there was any."""
        proc = self.processes.get(identity)
        if proc is None:
            return False
        read = False
        for stream, pipe in self._pipes(proc):
            paused = any(p is proc and s == stream for p, s, _ in self._paused)
            if not pipe.closed and not paused:
                read = self._read(proc, stream, pipe.fileno()) or read
        return read

    def describe_worker(self, pid: int) -> str:
        return f"a local worker (pid {pid}, {self.python})"

    def kill(self, identity: bytes) -> None:
        """SIGKILL a worker and everything it started; its exit is reported as usual."""
        proc = self.processes.get(identity)
        if proc is not None:
            proc.signal_tree(signal.SIGKILL)

    @staticmethod
    def _pipes(proc: WorkerProcess) -> list[tuple[str, Any]]:
        """The worker's pipes that are read: ``(stream, file)``."""
        pipes = [("out", proc.popen.stdout), ("err", proc.popen.stderr)]
        return [(stream, pipe) for stream, pipe in pipes if pipe is not None]

    def _read(self, proc: WorkerProcess, stream: str, fd: int) -> bool:
        """Read what waits in a pipe of ``proc`` (whether there was any)."""
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:
            self._loop.remove_reader(fd)
        self._pass_on(proc, stream, data)
        flow = self._flow
        if data and flow is not None and flow.full():
            self._loop.remove_reader(fd)
            if not self._paused:
                flow.when_room(self._loop, self._resume)
            self._paused.append((proc, stream, fd))
        return bool(data)

    def _resume(self) -> None:
        """Read the pipes paused while the output flow was full (those of
        workers that exited were read to their end then)."""
        paused, self._paused = self._paused, []
        for proc, stream, fd in paused:
            if self.processes.get(proc.identity) is proc:
                self._loop.add_reader(fd, self._read, proc, stream, fd)

    def _pass_on(self, proc: WorkerProcess, stream: str, data: bytes) -> None:
        """Hand on what the worker wrote (``b""``: the end of the stream)."""
        lines = proc.feed(stream, data)
        if self._on_output is None:
            if proc.waiting(stream) > MAX_LINE:
                proc.take_partial(stream)  # only the tail keeps it
            try:
                sys.stderr.write(data.decode(errors="replace"))
            except (OSError, ValueError):
                pass
            return
        ended = bool(lines)
        if data and proc.waiting(stream) > MAX_LINE:
            lines.append(proc.take_partial(stream))
            self._on_output(proc.identity, proc.pid, stream, lines, True)
        elif lines:
            self._on_output(proc.identity, proc.pid, stream, lines, False)
        waiting = proc.waiting(stream) if data else 0
        timer = proc.timers[stream]
        if timer is not None and (ended or not waiting):
            # what waits now, if anything, began after the line it waited for
            timer.cancel()
            proc.timers[stream] = timer = None
        if waiting and timer is None:
            proc.timers[stream] = self._loop.call_later(
                PARTIAL_DELAY, self._pass_on_partial, proc, stream
            )

    def _pass_on_partial(self, proc: WorkerProcess, stream: str) -> None:
        """Hand on the line the worker began and has not ended for ``PARTIAL_DELAY``."""
        proc.timers[stream] = None
        piece = proc.take_partial(stream)
        if piece and self._on_output is not None:
            self._on_output(proc.identity, proc.pid, stream, [piece], True)

    def _watch_exit(self, proc: WorkerProcess) -> None:
        try:
            pidfd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            self._poll_exit(proc)
            return

        def on_pidfd() -> None:
            self._loop.remove_reader(pidfd)
            os.close(pidfd)
            self._reap(proc)

        self._loop.add_reader(pidfd, on_pidfd)

    def _poll_exit(self, proc: WorkerProcess) -> None:
        # where there are no pidfds: look every 50 ms
        ended, returncode = reap(proc.popen, block=False)
        if ended:
            self._reaped(proc, returncode)
        else:
            self._loop.call_later(0.05, self._poll_exit, proc)

    def _reap(self, proc: WorkerProcess) -> None:
        self._reaped(proc, reap(proc.popen)[1])

    def _reaped(self, proc: WorkerProcess, returncode: int | None) -> None:
        for stream, pipe in self._pipes(proc):
            # what the worker wrote last, up to the end (or what its own
            # children, killed below, have not written yet)
            fd = pipe.fileno()
            self._loop.remove_reader(fd)
            try:
                while data := os.read(fd, 65536):
                    self._pass_on(proc, stream, data)
            except OSError:
                pass
            self._pass_on(proc, stream, b"")
            pipe.close()
        # anything the worker started goes with it
        proc.signal_tree(signal.SIGKILL)
        self.processes.pop(proc.identity, None)
        if proc.exited is not None and not proc.exited.done():
            proc.exited.set_result(returncode)
        _logger.debug("worker pid %d: %s", proc.pid, describe_exit(returncode))
        self._on_exit(proc.identity, proc.pid, returncode, proc.tail())

    async def stop(self, grace: float) -> None:
        """Wait ``grace`` seconds for workers to exit, then SIGTERM, then SIGKILL."""
        procs = list(self.processes.values())
        waiters: list[Any] = [proc.exited for proc in procs if proc.exited]
        if not waiters:
            return
        _, pending = await asyncio.wait(waiters, timeout=grace)
        for sig, wait in ((signal.SIGTERM, 1.0), (signal.SIGKILL, 5.0)):
            if not pending:
                return
            for proc in procs:
                if proc.exited in pending:
                    if sig == signal.SIGKILL:
                        _logger.warning(
                            "%s did not exit after the pool's shutdown (%s): killed with "
                            "SIGKILL. A task still ran there, or something a task left never "
                            "returns at the exit (an atexit handler, a finalizer, a write to "
                            "a full pipe), and SIGTERM is ignored or blocked there",
                            self.describe_worker(proc.pid),
                            f"STOP, then SIGTERM {grace:g} s later" if grace else "SIGTERM",
                        )
                    proc.signal_tree(sig)
            _, pending = await asyncio.wait(pending, timeout=wait)
        if pending:
            _logger.error("%d worker processes did not exit after SIGKILL", len(pending))
