"""The methods of ``Pool`` that run many tasks for one call: ``map`` and
``map_async`` (over inputs, see maps.py) and ``run_on_all`` (over the
workers, see runtime/barrier.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from distex_zmq.loops import running_loop
from distex_zmq.map_input import taken_at_call
from distex_zmq.maps import (
    AsyncMap,
    MapContext,
    check_buffersize,
    check_map_args,
    map_async,
    map_sync,
)
from distex_zmq.options import check_flag
from distex_zmq.pool_base import PoolBase
from distex_zmq.progress import make_progress
from distex_zmq.results import TaskFuture, wrap_task_future
from distex_zmq.runtime.barrier import pin_to_all_after_drain


class MapsMixin(PoolBase):
    """Maps over inputs and over the workers of a ``Pool``."""

    def map(
        self,
        func: Callable[..., Any],
        *iterables: Any,
        timeout: float | None = None,
        chunksize: int | None = None,
        ordered: bool = True,
        star: bool = False,
        progress: bool | Callable[[int, int | None], Any] = False,
        buffersize: int | None = None,
    ) -> Iterator[Any]:
        """Map ``func`` over the iterables; return an iterator of the results.

        Args:
            func: Function to map. If it returns an awaitable, the worker
                awaits it and the result is what it yields.
            iterables: Sync or async iterables, in any mix, read lazily (they
                may be unbounded). With several, they are zipped.
            timeout: Seconds from the call until
                ``Pool.TimeoutError``.
            chunksize: Inputs sent to a worker as one task; larger chunks
                make small tasks much cheaper. ``None`` (the default): start
                with one and group inputs that run well under a millisecond
                into chunks of about 2 ms of work, from the run times the
                workers report; each input keeps its own result, error and
                place. An explicit chunksize (1 included) is kept exactly.
            ordered: ``True``: results in input order; ``False``: in order
                of completion.
            star: ``True``: the one iterable yields argument tuples, which
                are unpacked into ``func``.
            progress: ``True``: show a tqdm progress bar (``pip install
                'distex_zmq[progress]'``); a callable: called with
                ``(done, total)``, the inputs whose results or errors reached
                the map and the length of the input (None if it has none; of
                several iterables, the shortest), at most every 0.1 s and
                once at the end. Off by default.
            buffersize: The most tasks submitted whose results have not
                been yielded yet, as ``Executor.map``'s (Python 3.14): the
                input is read that far ahead of the iteration and no
                further. Without a ``chunksize`` each input is then a task
                of its own; with one, a chunk counts once, as in
                ``ProcessPoolExecutor``. A map never iterated runs only
                those. ``None`` (the default): the pool picks the window,
                a few tasks per worker.

        The map starts at the call, as ``Executor.map`` does; never
        iterated, it runs all its inputs. It reads its input as it goes,
        but takes the items of a list (a dict, set, deque, bytearray) at
        the call: changing it afterwards does not change the map. Breaking
        out of the iteration cancels what no worker holds yet, once the
        iterator is closed (at once in ``for x in pool.map(...)``; else by
        ``close()`` or when it is dropped). A task that raised raises here
        when iteration reaches it. The iterator is a
        ``collections.abc.Generator``; awaited or iterated with ``async
        for``, it raises ``TypeError`` saying to use ``map_async``, and the
        map stops.
        """
        check_map_args(iterables, chunksize, timeout)
        check_buffersize(buffersize)
        check_flag("ordered", ordered)
        check_flag("star", star)
        self._refuse_wait_on_own_loop("Pool.map")
        iterables = taken_at_call(iterables)
        counter = make_progress(progress, iterables)
        ctx = self._map_context()
        return map_sync(
            ctx, func, iterables, timeout, chunksize, ordered, star, counter, buffersize
        )

    def map_async(
        self,
        func: Callable[..., Any],
        *iterables: Any,
        timeout: float | None = None,
        chunksize: int | None = None,
        ordered: bool = True,
        star: bool = False,
        progress: bool | Callable[[int, int | None], Any] = False,
        buffersize: int | None = None,
    ) -> AsyncIterator[Any]:
        """Async version of ``map``: ``async for result in pool.map_async(...)``."""
        check_map_args(iterables, chunksize, timeout)
        check_buffersize(buffersize)
        check_flag("ordered", ordered)
        check_flag("star", star)
        self._refuse_wait_on_own_loop("Pool.map_async")
        iterables = taken_at_call(iterables)
        counter = make_progress(progress, iterables)
        ctx = self._map_context()
        return AsyncMap(
            map_async(ctx, func, iterables, timeout, chunksize, ordered, star, counter, buffersize)
        )

    def _map_context(self) -> MapContext:
        runtime = self._live_runtime()
        opts = self._options
        return MapContext(
            runtime.broker,
            self._tasks,
            runtime.loop,
            lambda: opts.capacity,
            opts.qsize > 1,
            self,
            self._unread_maps,
            self._run_times,
        )

    def run_on_all(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> list[Any]:
        """Run ``func`` once on every worker, after the tasks submitted before
        it have finished; return the results in the order of the workers.

        Every worker means the workers that are ready once those tasks have
        finished (if none is, while replacements of workers that died start,
        those ready once one of them is): a worker that starts later (a host
        added with ``add_hosts``, a ``resize``, a replacement of a worker that
        died) does not run it; to set up every worker, those included, use
        ``initializer``. A worker removed with ``drain=False`` before it ran
        ``func`` fails it with ``WorkerLostError``; a shutdown that stops the
        pool before it ran (its ``timeout`` passed) fails it with
        ``PoolClosedError``.

        Raises the first error if it fails on any worker.
        """
        self._refuse_wait_on_own_loop("Pool.run_on_all")
        futures = self._run_on_all(func, args, kwargs).result()
        return [f.result() for f in futures]

    async def run_on_all_async(
        self, func: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> list[Any]:
        """Async version of ``run_on_all``."""
        running_loop("run_on_all_async", "run_on_all")
        self._refuse_wait_on_own_loop("Pool.run_on_all_async")
        futures = await asyncio.wrap_future(self._run_on_all(func, args, kwargs))
        what = f"run_on_all({getattr(func, '__qualname__', func)!s})"
        return list(await asyncio.gather(*(wrap_task_future(f, what) for f in futures)))

    def _run_on_all(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> concurrent.futures.Future[list[TaskFuture]]:
        runtime = self._live_runtime()
        template = self._tasks.call(func, args, kwargs, self._future_sink, alone=True)
        return pin_to_all_after_drain(runtime, self._tasks, template)
