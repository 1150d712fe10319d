"""A map's input: which iterables it takes, and one iterator over them.

Sync iterables are zipped and chunked in the caller's thread; async ones (or
a mix) through async generators.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

#: The containers whose items a map takes at its call (see ``taken_at_call``).
_CHANGEABLE = (list, dict, set, bytearray, collections.deque)


def taken_at_call(iterables: tuple[Any, ...]) -> tuple[Any, ...]:
    """``iterables``, each list, dict, set, deque and bytearray among them a
    tuple of what it holds now (its items, not copies of them).

    A map reads its input as it goes, but ``Executor.map`` takes its inputs
    at the call: code that reuses its list once the call returns
    (``maps.append(pool.map(f, batch)); batch.clear()``) would lose the
    inputs not read yet, in silence, or map what it appends next. A
    generator, or any other iterable, is read as the map goes."""
    if not any(isinstance(it, _CHANGEABLE) for it in iterables):
        return iterables
    return tuple(tuple(it) if isinstance(it, _CHANGEABLE) else it for it in iterables)


def refuses(method: F) -> F:
    """Mark ``method`` as one that only raises a ``TypeError`` saying what to
    use instead (``__iter__`` of ``Pool.map_async``'s results, ``__aiter__``
    of ``Pool.map``'s): as a map's input, such an object is read with its
    other protocol."""
    method._refuses = True  # type: ignore[attr-defined]
    return method


def _offers(cls: type, name: str) -> bool:
    method = getattr(cls, name, None)
    return method is not None and not getattr(method, "_refuses", False)


def is_sync_iterable(it: Any) -> bool:
    """Whether ``iter(it)`` accepts ``it``, judged as ``iter`` does, from its type:
    an ``__iter__`` that is not None, or else a ``__getitem__`` (the sequence
    protocol). An iterator without ``__iter__`` is not iterable. An
    ``__iter__`` marked with ``refuses`` does not count."""
    cls = type(it)
    if hasattr(cls, "__iter__"):
        return _offers(cls, "__iter__")
    return hasattr(cls, "__getitem__")


def is_async_iterable(it: Any) -> bool:
    """Whether ``it`` has an ``__aiter__`` (not one marked with ``refuses``)."""
    return _offers(type(it), "__aiter__")


def sync_input(iterables: tuple[Any, ...]) -> Iterator[Any]:
    """One iterator over the inputs (tuples when several iterables are zipped)."""
    if len(iterables) != 1:
        return zip(*iterables, strict=False)
    return iter(iterables[0])


async def zip_async(*iterables: Any) -> AsyncIterator[tuple[Any, ...]]:
    """Zip sync and async iterables into an async iterator of tuples."""
    nexts: list[tuple[Callable[[], Any], bool]] = []
    for it in iterables:
        if is_async_iterable(it):
            nexts.append((it.__aiter__().__anext__, False))
        elif hasattr(it, "__anext__"):
            nexts.append((it.__anext__, False))
        else:
            nexts.append((iter(it).__next__, True))
    while True:
        values = []
        for nxt, sync in nexts:
            # not a comprehension: there StopIteration would become RuntimeError
            try:
                values.append(nxt() if sync else await nxt())
            except (StopIteration, StopAsyncIteration):
                return
        yield tuple(values)


async def chunk_async(ait: AsyncIterator[Any], chunksize: int) -> AsyncIterator[tuple[Any, ...]]:
    chunk: list[Any] = []
    async for item in ait:
        chunk.append(item)
        if len(chunk) == chunksize:
            yield tuple(chunk)
            chunk = []
    if chunk:
        yield tuple(chunk)


def async_input(iterables: tuple[Any, ...], chunksize: int) -> AsyncIterator[Any]:
    if len(iterables) > 1:
        ait: AsyncIterator[Any] = zip_async(*iterables)
    elif is_async_iterable(iterables[0]):
        ait = iterables[0].__aiter__()
    else:
        ait = iterables[0]
    return chunk_async(ait, chunksize) if chunksize > 1 else ait


def check_buffersize(buffersize: int | None) -> None:
    """``buffersize`` of a map: None or a positive int, as ``Executor.map``
    takes it (Python 3.14)."""
    if buffersize is None:
        return
    if not isinstance(buffersize, int) or isinstance(buffersize, bool):
        raise TypeError(f"buffersize must be an int or None, not {buffersize!r}")
    if buffersize < 1:
        raise ValueError(f"buffersize must be None or >= 1, not {buffersize}")


def check_map_args(
    iterables: Iterable[Any], chunksize: int | None, timeout: float | None = None
) -> None:
    # no iterable at all: an empty map, as with ``Executor.map``
    for number, it in enumerate(iterables, 1):
        if not (is_sync_iterable(it) or is_async_iterable(it) or hasattr(it, "__anext__")):
            hint = ""
            if number > 1 and type(it) is int:
                # multiprocessing.Pool.map(func, iterable, chunksize)
                hint = (
                    f" (chunksize is a keyword argument: map(func, iterable, chunksize={it}); "
                    "multiprocessing.Pool.map takes it as its third argument)"
                )
            raise TypeError(
                f"map() argument {number} must be an iterable or an async iterable, "
                f"not {type(it).__name__}{hint}"
            )
    if chunksize is not None and (
        not isinstance(chunksize, int) or isinstance(chunksize, bool) or chunksize < 1
    ):
        raise ValueError(f"chunksize must be a positive integer or None, not {chunksize!r}")
    if timeout is not None and (
        not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout != timeout
    ):
        raise TypeError(f"timeout must be a number of seconds or None, not {timeout!r}")
