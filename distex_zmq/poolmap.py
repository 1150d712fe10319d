"""``PoolMap``: map a function over an eventkit event stream with a pool."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from distex_zmq.eventkit_hook import import_eventkit

import_eventkit()  # also where there is no current event loop

from eventkit import Event, Op  # noqa: E402 - imported by import_eventkit

if TYPE_CHECKING:
    from distex_zmq.pool import Pool


class PoolMap(Op):
    """Map a function using a distributed pool with
    `eventkit <https://github.com/erdewit/eventkit>`_.

    Args:
        pool: The pool to run ``func`` in.
        func: Function to map. If it returns an awaitable, the worker awaits
            it and emits its result.
        timeout: Timeout in seconds since the map started.
        chunksize: Source emits are chunked up to this size.
        ordered: ``True``: results in source order; ``False``: in order of
            completion.
        source: The source event (set when used as ``Event.poolmap``).
    """

    __slots__ = ("_pool", "_func", "_task", "_kwargs")

    def __init__(
        self,
        pool: Pool,
        func: Any,
        timeout: float | None = None,
        chunksize: int = 1,
        ordered: bool = True,
        source: Event | None = None,
    ):
        self._pool = pool
        self._func = func
        self._task: asyncio.Task[None] | None = None
        self._kwargs: dict[str, Any] = dict(
            timeout=timeout, chunksize=chunksize, ordered=ordered, star=True
        )
        Op.__init__(self, source)

    def set_source(self, source: Event) -> None:
        inputs = _connected(source)

        async def looper() -> None:
            try:
                async for result in self._pool.map_async(self._func, inputs, **self._kwargs):
                    self.emit(result)
            except Exception as error:
                self.error_event.emit(self, error)
            self._task = None
            self.set_done()

        self._task = asyncio.ensure_future(looper())

    def __del__(self) -> None:
        task = getattr(self, "_task", None)
        if task:
            task.cancel()


def _connected(source: Event) -> AsyncIterator[tuple[Any, ...]]:
    """What ``source.aiter(tuples=True)`` yields, from now on.

    eventkit's ``aiter`` connects to the source at its first ``__anext__``,
    once the map's task runs: what the source emitted before (emits in the
    step that made the map), and its end, would be lost.
    """
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def on_event(*args: Any) -> None:
        queue.put_nowait(("", args))

    def on_error(_source: Event, error: Exception) -> None:
        queue.put_nowait(("ERROR", error))

    def on_done(_source: Event) -> None:
        queue.put_nowait(("DONE", None))

    async def values() -> AsyncIterator[tuple[Any, ...]]:
        try:
            while True:
                what, value = await queue.get()
                if not what:
                    yield value
                elif what == "ERROR":
                    raise value
                else:
                    return
        finally:
            source.disconnect(on_event, on_error, on_done)

    if source.done():
        on_done(source)
    else:
        source.connect(on_event, on_error, on_done)
    return values()


def poolmap(
    self: Event,
    pool: Pool,
    func: Any,
    timeout: float | None = None,
    chunksize: int = 1,
    ordered: bool = True,
) -> PoolMap:
    return PoolMap(pool, func, timeout, chunksize, ordered, self)


poolmap.__doc__ = PoolMap.__doc__
Event.poolmap = poolmap
