"""Task functions that fail in every way a worker can fail, for test_faults.py.

They run in the workers, so they live in an importable module (see the notes
at the top of conftest.py).
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import sys
import threading
import time
from typing import Any


def square(x: int) -> int:
    return x * x


def slow_square(x: int, delay: float = 0.002) -> int:
    time.sleep(delay)
    return x * x


def pid(*_: Any) -> int:
    return os.getpid()


def sigkill_self(*_: Any) -> None:
    print("about to SIGKILL myself", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def exit_3(*_: Any) -> None:
    print("leaving with os._exit(3)", file=sys.stderr, flush=True)
    os._exit(3)


def segfault(*_: Any) -> None:
    print("about to read address 0", file=sys.stderr, flush=True)
    ctypes.string_at(0)


def dump_with_c_stack_and_die(*_: Any) -> None:
    """Write a crash's dump as ``faulthandler`` writes it from Python 3.14
    (the Python stack, then a long C stack), then die by SIGSEGV."""
    frames = "".join(f'  Binary file "/usr/lib/libc.so.6", at +0x{i:x}\n' for i in range(30))
    sys.stderr.write(
        "Fatal Python error: Segmentation fault\n\n"
        "Current thread 0x00007f408308e200 [python3] (most recent call first):\n"
        '  File "/srv/app/model.py", line 42 in crashing_frame\n\n'
        "Current thread's C stack trace (most recent call first):\n"
        f"{frames}\n"
        "Extension modules: zmq.backend.cython._zmq (total: 1)\n"
    )
    sys.stderr.flush()
    signal.signal(signal.SIGSEGV, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGSEGV)


def close_fds_not_its_own(*_: Any) -> str:
    """Close every file descriptor from 3 on: the worker's sockets, pipes
    and event loop's too."""
    os.closerange(3, 65536)
    return "closed"


def big_bytes(size: int) -> bytes:
    return b"x" * size


def poison_at(x: int, poison: int) -> int:
    """Kill the worker for one input only."""
    if x == poison:
        os._exit(3)
    return x * x


def unpicklable_result(*_: Any) -> Any:
    return threading.Lock()  # no pickle takes a lock


class BadState:
    """Pickles fine; unpickling it raises (in the worker)."""

    def __getstate__(self) -> dict[str, Any]:
        return {"x": 1}

    def __setstate__(self, state: dict[str, Any]) -> None:
        raise ValueError("BadState refuses to be unpickled")


def takes_arg(x: Any) -> str:
    return type(x).__name__


def failing_initializer() -> None:
    raise RuntimeError("initializer failed on purpose")


def catastrophic_regex(n: int) -> bool:
    """Backtracks for about 2**n steps while holding the GIL in C code."""
    return re.match(r"(a+)+$", "a" * n + "b") is not None


def sleep_then(delay: float, value: Any) -> Any:
    time.sleep(delay)
    return value


def sleep_then_exit(delay: float, code: int) -> None:
    """Sleep, then end the worker with exit status ``code`` (0: return)."""
    time.sleep(delay)
    if code:
        os._exit(code)


#: what the initializer left in this worker process
INITIALIZED: dict[str, int] = {}


def mark_initialized() -> None:
    INITIALIZED["pid"] = os.getpid()


def initialized(*_: Any) -> bool:
    """Whether ``mark_initialized`` ran in this very process."""
    return INITIALIZED.get("pid") == os.getpid()


def cut_connection_once(marker: str) -> str:
    """The first time: cut this worker's connection to the broker and leave the
    worker alive (its result can never be sent); later: return at once."""
    if os.path.exists(marker):
        return "second run"
    import gc

    import zmq

    for obj in gc.get_objects():
        if isinstance(obj, zmq.Socket) and not obj.closed and obj.socket_type == zmq.DEALER:
            with open(marker, "w") as f:
                f.write(str(os.getpid()))
            obj.disconnect(obj.get(zmq.LAST_ENDPOINT).decode())
            return "cut"
    raise RuntimeError("no DEALER socket in this worker")


def journal_then(path: str, x: int, die_at: int, delay: float) -> int:
    """Append ``x`` to the file ``path``; at ``die_at``, sleep ``delay`` and
    die (SIGKILL) the first time, as told by a ``path + '.died'`` file."""
    import os
    import signal
    import time

    with open(path, "a") as f:
        f.write(f"{x}\n")
    if x == die_at and not os.path.exists(path + ".died"):
        open(path + ".died", "w").close()
        time.sleep(delay)
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def nap_or_die(x: int, die_at: int, delay: float) -> int:
    """Sleep ``delay`` seconds and return ``x``; at ``die_at``, die (SIGKILL)."""
    import os
    import signal
    import time

    time.sleep(delay)
    if x == die_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def fork_and_wait(how: str, chunk_of: int = 0) -> tuple[str, int | None]:
    """``os.fork()``; the child leaves the task's function ``how``:
    ``"exit"`` (``sys.exit(3)``), ``"raise"`` or ``"return"``. The parent
    waits up to 20 s for it: ``("exited", its exit code)``, or
    ``("running", None)`` (the child is killed then)."""
    child = os.fork()
    if child == 0:
        if how == "exit":
            sys.exit(3)
        if how == "raise":
            raise ValueError("the child fails")
        return "child", chunk_of
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done, status = os.waitpid(child, os.WNOHANG)
        if done:
            return "exited", os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
    return "running", None


def journal_and_sleep(path: str, delay: float) -> int:
    """Append this worker's pid to the file ``path`` (a line per run), sleep
    ``delay`` seconds, and return the pid."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(delay)
    return os.getpid()
