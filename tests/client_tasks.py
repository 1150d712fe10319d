"""Functions that the tests of real clients (joblib, scikit-learn) run in workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Any


def square(x: int) -> int:
    return x * x


def slow_square(x: int, seconds: float) -> int:
    time.sleep(seconds)
    return x * x


def fail_on(x: int, bad: int) -> int:
    if x == bad:
        raise KeyError(x)
    return x


def exit_on(x: int, bad: int) -> int:
    """``x``, but the worker exits at once for ``bad``."""
    if x == bad:
        os._exit(1)
    return x


def a_lock() -> Any:
    """A result that does not pickle."""
    return threading.Lock()


def mark_and_sleep(folder: str, x: int, seconds: float) -> int:
    """Leave a file named ``x`` in ``folder``, then sleep."""
    open(os.path.join(folder, str(x)), "w").close()
    time.sleep(seconds)
    return x


def arange(n: int) -> Any:
    import numpy as np

    return np.arange(n, dtype=np.float64)


def array_kind(arr: Any, start: int) -> tuple[str, bool, float]:
    """The type of the array the worker got, whether it is writable, and
    the sum of its items from ``start`` on."""
    return type(arr).__name__, bool(arr.flags.writeable), float(arr[start:].sum())


def pid(_: object = None) -> int:
    return os.getpid()


def report(queue: Any, shared: Any, x: int) -> int:
    """Put ``x`` on a ``multiprocessing.Manager``'s queue, its square in its dict."""
    queue.put(x)
    shared[x] = x * x
    return x


def blas_threads(values: Any) -> list[int]:
    """The thread counts of the BLAS and OpenMP libraries loaded in this
    process (``values``, a numpy array, has loaded numpy's BLAS)."""
    from threadpoolctl import threadpool_info

    return sorted({info["num_threads"] for info in threadpool_info()})


def _wait_for(path: str, seconds: float = 30) -> None:
    """Wait until ``path`` exists (``seconds`` at most)."""
    end = time.monotonic() + seconds
    while not os.path.exists(path) and time.monotonic() < end:
        time.sleep(0.01)


def mark_then_exit(folder: str, go: str = "") -> None:
    """Leave a file of this run in ``folder``; wait for the file ``go``, if
    given; then the worker exits at once."""
    open(os.path.join(folder, f"run-{os.getpid()}-{time.monotonic_ns()}"), "w").close()
    if go:
        _wait_for(go)
    os._exit(1)


def fail_once_marked(folder: str) -> None:
    """Raise ``KeyError`` once ``folder`` holds a file (another call started)."""
    end = time.monotonic() + 30
    while not os.listdir(folder) and time.monotonic() < end:
        time.sleep(0.01)
    raise KeyError(folder)


def env_var(name: str) -> str | None:
    return os.environ.get(name)


def child_env(*names: str) -> list[str | None]:
    """The values of ``names`` in the environment of a process the task starts."""
    code = f"import json, os; print(json.dumps([os.environ.get(n) for n in {list(names)!r}]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return list(json.loads(out.stdout))
