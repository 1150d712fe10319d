"""Tasks of the soak and many-hosts runs, imported by reference in the workers.

Every task that takes a ``tag`` writes ``tag host time`` to a journal when
it starts: a file per worker process in the directory named by the
environment variable ``DZS_JOURNAL`` (the namespaces share this machine's
file system, so every host writes to the same directory). A tag that
appears twice is a task that was run again: on another worker after its
first one died or its host was cut off. That is how the runs count retries
and see when a lost host's tasks moved elsewhere, with the public API only.
"""

from __future__ import annotations

import os
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

_journal: Any = None
_host = socket.gethostname()


def _note(tag: str) -> None:
    global _journal
    if _journal is None:
        directory = os.environ.get("DZS_JOURNAL")
        if not directory:
            _journal = False
            return
        path = Path(directory) / f"{_host}-{os.getpid()}"
        _journal = open(path, "a", buffering=1)  # noqa: SIM115  (open for the worker's life)
    if _journal:
        _journal.write(f"{tag} {_host} {time.time():.4f}\n")


def square(tag: str, x: int, pause: float = 0.0) -> int:
    """``x * x`` after ``pause`` seconds asleep; a negative ``pause``: that
    long computing, holding the GIL, as a CPU-bound task does."""
    _note(tag)
    if pause > 0:
        time.sleep(pause)
    elif pause < 0:
        end = time.perf_counter() - pause
        while time.perf_counter() < end:
            pass
    return x * x


def where(tag: str, x: int, pause: float = 0.0) -> tuple[str, int]:
    """``(host name, x + 1)``: shows where each input ran."""
    _note(tag)
    if pause:
        time.sleep(pause)
    return _host, x + 1


def array_sum(tag: str, a: Any) -> tuple[float, int]:
    """The sum of a (large) numpy array and its size."""
    _note(tag)
    return float(a.sum()), a.size


def array_double(tag: str, a: Any) -> Any:
    _note(tag)
    return a * 2


async def async_square(tag: str, x: int) -> int:
    import asyncio

    _note(tag)
    await asyncio.sleep(0.001)
    return x * x


def hostname() -> str:
    return _host


def read_journal(directory: str | Path) -> list[tuple[str, str, float]]:
    """Every ``(tag, host, time)`` line of the journal, in no set order."""
    entries = []
    for path in Path(directory).iterdir():
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3:
                    entries.append((parts[0], parts[1], float(parts[2])))
    return entries


def reruns(entries: list[tuple[str, str, float]]) -> int:
    """How many task starts were a second (third, ...) start of the same tag."""
    return sum(n - 1 for n in Counter(tag for tag, _, _ in entries).values() if n > 1)
