"""Workload functions for the benchmarks.

They live in their own importable module (the harness puts ``benchmarks/`` on
``PYTHONPATH``) so that every pool, whatever its pickler, sends them to the
workers by reference, as ``tasks.g`` and so on.
"""

from __future__ import annotations

import time

#: Iterations of the loop in ``cpu``: about 20 ms of pure Python on a
#: 2020s x86 server core.
CPU_LOOPS = 300_000


def g(x: int) -> int:
    """Return ``x + 2``: the smallest task that still does something."""
    return x + 2


def echo(x: object) -> object:
    """Return the argument unchanged, so that it travels both ways."""
    return x


def size(b: bytes) -> int:
    """Return the length of ``b``, so that only the argument is large."""
    return len(b)


def cpu(x: int, loops: int = CPU_LOOPS) -> int:
    """Burn about 20 ms of CPU in a pure-Python loop (holds the GIL)."""
    total = x
    for i in range(loops):
        total = (total * 31 + i) % 1_000_003
    return total


def noop() -> None:
    """Do nothing; used for warm-up and start-up timing."""


def nap(delay: float) -> float:
    """Sleep ``delay`` seconds (0: return at once); return it."""
    if delay:
        time.sleep(delay)
    return delay
