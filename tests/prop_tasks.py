"""Task functions of ``test_map_properties``, run by the pool, by a
``ProcessPoolExecutor`` and by the builtin ``map`` alike.

They live in an importable module so that every pickler sends them by
reference (see the notes at the top of ``conftest.py``).
"""

from __future__ import annotations

from typing import Any

#: the kinds of value that ``shaped`` returns
KINDS = ("int", "none", "tuple", "bigint", "bytes", "exception", "nested")


class Bad(ValueError):
    """The error that ``compute`` raises at the indices it is told to."""


def shaped(kind: str, x: int) -> Any:
    """A value of the given kind made from ``x``."""
    if kind == "int":
        return x * x - 3
    if kind == "none":
        return None
    if kind == "tuple":
        return (x, -x, (x,))
    if kind == "bigint":
        return (x + 1) ** 40 + (1 << 200)
    if kind == "bytes":
        return bytes([x % 256]) * (x % 7)
    if kind == "exception":
        # returned, not raised: a result, not an error
        return KeyError(x)
    if kind == "nested":
        return [None, {"x": x}, b""]
    raise AssertionError(kind)


def compute(kind: str, bad: frozenset[int], i: int, *xs: int) -> Any:
    """``shaped(kind, sum(xs))``; raises ``Bad(i)`` when ``i`` is in ``bad``."""
    if i in bad:
        raise Bad(i)
    return shaped(kind, sum(xs))


def star_args(*xs: Any) -> tuple[Any, ...]:
    """Its arguments, as a tuple."""
    return xs


def keywords(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Its positional and keyword arguments."""
    return args, kwargs


def sleep_return(delay: float, value: Any = None) -> Any:
    """``value``, after ``delay`` seconds."""
    import time

    time.sleep(delay)
    return value


def paced(kind: str, bad: frozenset[int], slow: frozenset[int], i: int, *xs: int) -> Any:
    """``compute``, after 5 ms at the indices in ``slow``."""
    if i in slow:
        import time

        time.sleep(0.005)
    return compute(kind, bad, i, *xs)


async def compute_async(kind: str, bad: frozenset[int], i: int, *xs: int) -> Any:
    """``compute``, as a coroutine function."""
    return compute(kind, bad, i, *xs)


def big(kind: str, bad: frozenset[int], i: int, *xs: int) -> Any:
    """``compute``, or at every third index a buffer of 40 KiB (past the
    size at which buffers travel as frames of their own)."""
    if i % 3 == 2 and i not in bad:
        return bytes([sum(xs) % 256]) * 40_000
    return compute(kind, bad, i, *xs)


def record(path: str, x: int, delay: float = 0.0) -> int:
    """Append ``x`` to the file ``path`` (one line each), after ``delay``
    seconds; return ``x``."""
    if delay:
        import time

        time.sleep(delay)
    with open(path, "a") as f:
        f.write(f"{x}\n")
    return x


def recorded(path: str) -> list[int]:
    """The numbers that ``record`` wrote to ``path``."""
    try:
        with open(path) as f:
            return [int(line) for line in f]
    except FileNotFoundError:
        return []


def raise_(name: str, i: int) -> int:
    """``i``, or, at 2, raise the builtin exception named ``name``."""
    if i == 2:
        import builtins

        raise getattr(builtins, name)(i)
    return i


def lock_at(k: int, i: int) -> Any:
    """``i``, or at ``k`` a lock, which standard pickle refuses."""
    if i == k:
        import threading

        return threading.Lock()
    return i


async def lock_at_async(k: int, i: int) -> Any:
    """``lock_at``, as a coroutine function."""
    return lock_at(k, i)


def locks_at(bad: frozenset[int], i: int) -> Any:
    """``i``, or a lock at the indices in ``bad``."""
    return lock_at(i, i) if i in bad else i


def identity(x: Any) -> Any:
    """``x``."""
    return x
