"""The async API: run_async, map_async, run_on_all_async, await/async with,
sync calls inside a running loop, run_in_executor, and eventkit's poolmap."""

from __future__ import annotations

import asyncio
import bz2
import collections
import collections.abc
import concurrent.futures
import gc
import itertools
import os
import statistics
import threading
import time
import weakref

import eventkit as ev
import pytest

from distex_zmq import LoopType, Pool, PoolClosedError, PoolMap, RemoteException
from tests import tasks
from tests.helpers import child_pids, pool_threads

pytestmark = pytest.mark.timeout(60)


async def agen(n, delay=0.0):
    for i in range(n):
        await asyncio.sleep(delay)
        yield i


def test_every_async_api_matches_builtin_map(shared_pool):
    xs = list(range(-10, 40))
    expected = list(map(tasks.square, xs))

    async def main():
        assert [await shared_pool.run_async(tasks.square, x) for x in xs] == expected
        assert await asyncio.gather(*(shared_pool.run_async(tasks.square, x) for x in xs)) == (
            expected
        )
        assert [r async for r in shared_pool.map_async(tasks.square, xs)] == expected
        for chunksize in (2, 9, 100):
            assert [
                r async for r in shared_pool.map_async(tasks.square, xs, chunksize=chunksize)
            ] == expected
        pairs = list(zip(xs, xs, strict=True))
        assert [r async for r in shared_pool.map_async(tasks.add, pairs, star=True)] == list(
            itertools.starmap(tasks.add, pairs)
        )
        assert [r async for r in shared_pool.map_async(tasks.add, xs, reversed(xs))] == list(
            map(tasks.add, xs, reversed(xs))
        )
        loop = asyncio.get_running_loop()
        assert (
            await asyncio.gather(*(loop.run_in_executor(shared_pool, tasks.square, x) for x in xs))
            == expected
        )

    asyncio.run(main())


def test_run_async_with_kwargs(shared_pool):
    async def main():
        return await shared_pool.run_async(tasks.with_kwargs, 2, scale=10, offset=3)

    assert asyncio.run(main()) == 23


def test_run_async_raises_the_remote_exception(shared_pool):
    async def main():
        with pytest.raises(tasks.CustomError, match="async boom") as info:
            await shared_pool.run_async(tasks.raise_custom, "async boom")
        assert isinstance(info.value.__cause__, RemoteException)
        assert "raise_custom" in str(info.value.__cause__)

    asyncio.run(main())


def test_an_async_task_that_exits_fails_alone_as_a_sync_one_does(pool):
    # asyncio re-raises SystemExit and KeyboardInterrupt out of the loop: they
    # ended the worker, and the task failed with WorkerLostError
    pids = pool.run_on_all(tasks.pid)
    with pytest.raises(SystemExit, match="3"):
        pool.run(tasks.async_exit, 3)
    with pytest.raises(SystemExit, match="4"):
        list(pool.map(tasks.async_exit, [4]))
    with pytest.raises(KeyboardInterrupt, match="from an async task"):
        pool.submit(tasks.async_interrupt).result()
    assert pool.run(tasks.async_square, 3) == 9
    assert pool.run_on_all(tasks.pid) == pids
    assert pool.status().totals.workers_lost == 0


def test_a_cancelled_error_an_async_task_raises_keeps_its_message(shared_pool):
    # the task was taken as cancelled: "task 1 was cancelled", the message
    # and the traceback of the task's own CancelledError lost
    with pytest.raises(asyncio.CancelledError, match="^upstream went away$") as info:
        shared_pool.run(tasks.async_cancelled, "upstream went away")
    assert "async_cancelled" in str(info.value.__cause__)

    async def main():
        with pytest.raises(asyncio.CancelledError, match="^gone$") as info:
            await shared_pool.run_async(tasks.async_cancelled, "gone")
        assert "async_cancelled" in str(info.value.__cause__)

    asyncio.run(main())
    assert shared_pool.run(tasks.async_square, 3) == 9


def test_map_async_of_mixed_sync_and_async_iterables(shared_pool):
    async def main():
        expected = list(map(tasks.add3, range(12), range(100, 200), range(50)))
        got = [
            r
            async for r in shared_pool.map_async(
                tasks.add3, agen(12), range(100, 200), agen(50, 0.001)
            )
        ]
        assert got == expected
        got = [
            r
            async for r in shared_pool.map_async(
                tasks.add3, agen(12), range(100, 200), range(50), chunksize=5
            )
        ]
        assert got == expected
        got = [r async for r in shared_pool.map_async(tasks.square, agen(30), ordered=False)]
        assert sorted(got) == [i * i for i in range(30)]

    asyncio.run(main())


def test_map_async_of_mixed_iterables_sync_shortest(shared_pool):
    async def main():
        return [r async for r in shared_pool.map_async(tasks.add, range(10), agen(100))]

    assert asyncio.run(main()) == [2 * i for i in range(10)]


def test_map_async_of_unbounded_input_with_early_break(shared_pool):
    async def forever():
        for i in itertools.count():
            if i % 10 == 0:
                await asyncio.sleep(0)
            yield i

    async def main():
        results = []
        async for r in shared_pool.map_async(tasks.square, forever()):
            results.append(r)
            if len(results) == 50:
                break
        assert results == [i * i for i in range(50)]
        results = []
        mapping = shared_pool.map_async(tasks.square, itertools.count(), chunksize=10)
        async for r in mapping:
            results.append(r)
            if len(results) == 200:
                break
        await mapping.aclose()
        assert results == [i * i for i in range(200)]
        return await shared_pool.run_async(tasks.square, 7)

    assert asyncio.run(main()) == 49
    assert shared_pool.run_on_all(tasks.square, 1) == [1, 1]


def test_a_map_async_that_ended_has_left_its_async_input(shared_pool):
    """Once a map_async has ended (a break and aclose, a timeout), it reads
    its input no more: the read it waited for was cancelled and is over, so
    the caller may close the source or read on at once, instead of finding
    it still running in the map."""
    ended = []

    async def source(n):
        try:
            for i in range(n):
                yield i
            await asyncio.Event().wait()  # nothing more for now
        finally:
            ended.append(n)

    async def main():
        src = source(3)
        mapping = shared_pool.map_async(tasks.square, src)
        results = []
        async for r in mapping:
            results.append(r)
            if len(results) == 3:
                break
        await mapping.aclose()
        assert results == [0, 1, 4]
        assert not src.ag_running and ended == [3]
        await src.aclose()

        src = source(2)

        async def consume():
            async for _ in shared_pool.map_async(tasks.square, src):
                pass

        # asyncio.wait_for, not asyncio.timeout: Python 3.10 has no timeout
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(consume(), 0.5)
        assert not src.ag_running and ended == [3, 2]
        await src.aclose()
        return await shared_pool.run_async(tasks.square, 5)

    assert asyncio.run(main()) == 25


def test_map_async_unordered_yields_in_completion_order(pool):
    delays = [1.0] + [0.02] * 5

    async def main():
        return [
            r async for r in pool.map_async(tasks.sleep_return, delays, range(6), ordered=False)
        ]

    got = asyncio.run(main())
    assert sorted(got) == list(range(6))
    assert got[0] != 0


def test_map_async_timeout(pool):
    async def main():
        results = []
        with pytest.raises(Pool.TimeoutError):
            async for r in pool.map_async(
                tasks.sleep_return, [0.01, 0.01, 3, 3], "abcd", timeout=0.5
            ):
                results.append(r)
        return results

    assert asyncio.run(main()) == ["a", "b"]
    assert pool.run(tasks.square, 2) == 4


def test_map_async_chunk_error_raises_at_its_item(shared_pool):
    async def main():
        results = []
        with pytest.raises(ValueError, match="bad input 6"):
            async for r in shared_pool.map_async(tasks.fail_on, range(12), [6] * 12, chunksize=4):
                results.append(r)
        return results

    assert asyncio.run(main()) == [0, 10, 20, 30, 40, 50]


def test_map_async_error_in_async_input_propagates(shared_pool):
    async def broken():
        yield 1
        await asyncio.sleep(0)
        raise LookupError("async input broke")

    async def main():
        with pytest.raises(LookupError, match="async input broke"):
            async for _ in shared_pool.map_async(tasks.square, broken()):
                pass

    asyncio.run(main())


def test_a_map_async_iterated_without_async_for_or_awaited_says_what_to_use(shared_pool):
    # it raised Python's "'async_generator' object is not iterable" (for,
    # list()) or "can't be used in 'await' expression", with no hint
    mapping = shared_pool.map_async(tasks.square, range(3))
    with pytest.raises(TypeError, match=r"iterate it with 'async for result in pool\.map_async"):
        for _ in mapping:
            pass
    with pytest.raises(TypeError, match=r"in sync code use pool\.map\(\.\.\.\)"):
        list(mapping)

    async def main() -> list[int]:
        with pytest.raises(TypeError, match="not an awaitable.*async for"):
            await mapping
        first = await mapping.__anext__()  # the map starts at its first result
        return [first] + [r async for r in mapping]

    assert asyncio.run(main()) == [0, 1, 4]


def test_a_sync_map_in_tqdm_asyncio_iterates_with_for(pool):
    # tqdm.auto's class in a notebook is tqdm.asyncio's, which calls
    # __aiter__ of what it wraps when it is made: a map's __aiter__ raised
    # ("in a coroutine use async for"), so sum(tqdm(pool.map(...))) failed
    tqdm_asyncio = pytest.importorskip("tqdm.asyncio")
    bar = tqdm_asyncio.tqdm(pool.map(tasks.square, range(20)), total=20, disable=True)
    assert sum(bar) == sum(x * x for x in range(20))


@pytest.mark.parametrize("misuse", ["await", "async for"])
def test_a_map_awaited_or_iterated_with_async_for_says_what_to_use_and_stops(
    pool, tmp_path, misuse
):
    # it raised Python's "object generator can't be used in 'await'
    # expression" (or "'async for' requires an object with __aiter__"), and
    # the map, started at the call and dropped unread, then ran all its inputs
    trace = str(tmp_path / "ran")

    async def main() -> None:
        if misuse == "await":
            with pytest.raises(
                TypeError,
                match=r"not an awaitable: in a coroutine use "
                r"'async for result in pool\.map_async",
            ):
                await pool.map(tasks.touch_then_sleep, [trace] * 100, [0.02] * 100)
        else:
            with pytest.raises(
                TypeError,
                match=r"in a coroutine use "
                r"'async for result in pool\.map_async",
            ):
                async for _ in pool.map(tasks.touch_then_sleep, [trace] * 100, [0.02] * 100):
                    pass

    asyncio.run(main())
    gc.collect()
    pool.run_on_all(tasks.pid)  # after the tasks submitted before it
    assert tasks.traces(trace) < 100, "the map awaited ran all its inputs"
    assert pool.run(tasks.square, 3) == 9


def test_the_results_of_pool_map_are_a_generator_for_executor_map_code(shared_pool):
    mapping = shared_pool.map(tasks.square, range(4))
    assert isinstance(mapping, collections.abc.Generator) and iter(mapping) is mapping
    assert next(mapping) == 0 and mapping.send(None) == 1
    assert list(mapping) == [4, 9]
    mapping = shared_pool.map(tasks.square, range(10))
    assert next(mapping) == 0
    mapping.close()
    with pytest.raises(StopIteration):
        next(mapping)


def test_a_map_reads_the_results_of_another_map(shared_pool):
    # map_async's results as the input of a map were taken for a sync
    # iterable, which refuses 'for': TypeError "iterate it with 'async for'"
    fourth = [x**4 for x in range(5)]
    inner = shared_pool.map_async(tasks.square, range(5))
    assert list(shared_pool.map(tasks.square, inner)) == fourth

    async def main() -> tuple[list[int], list[int], list[int]]:
        inner = shared_pool.map_async(tasks.square, range(5))
        chained = [r async for r in shared_pool.map_async(tasks.square, inner)]
        # a sync map beside an async iterable: read with 'for', not 'async for'
        mixed = shared_pool.map_async(tasks.add, shared_pool.map(tasks.square, range(5)), agen(5))
        both = shared_pool.map_async(
            tasks.add, shared_pool.map_async(tasks.square, range(5)), range(5)
        )
        return chained, [r async for r in mixed], [r async for r in both]

    squares_plus = [x * x + x for x in range(5)]
    assert asyncio.run(main()) == (fourth, squares_plus, squares_plus)


def test_coroutine_function_through_every_api(shared_pool):
    async def main():
        assert await shared_pool.run_async(tasks.async_square, 7) == 49
        assert [r async for r in shared_pool.map_async(tasks.async_square, range(6))] == [
            i * i for i in range(6)
        ]
        assert [
            r async for r in shared_pool.map_async(tasks.async_square, range(6), chunksize=4)
        ] == [i * i for i in range(6)]
        with pytest.raises(ValueError, match="async failure 3") as info:
            await shared_pool.run_async(tasks.async_fail, 3)
        assert isinstance(info.value.__cause__, RemoteException)

    asyncio.run(main())
    assert shared_pool.run(tasks.async_square, 8) == 64
    assert shared_pool.submit(tasks.async_square, 9).result() == 81
    assert shared_pool.run_on_all(tasks.running_loop_class_name) != []


@pytest.mark.parametrize("func", [tasks.double_by_asyncio_run, tasks.double_on_a_new_loop])
def test_sync_tasks_run_event_loops_of_their_own(pool, func):
    # a sync function that runs async code with asyncio.run (or a loop of its
    # own) works as in ProcessPoolExecutor (test_clients has the control): no
    # event loop runs in its thread, though the worker's runs the task
    assert list(pool.map(func, range(4))) == [0, 2, 4, 6]
    assert list(pool.map(func, range(4), chunksize=2)) == [0, 2, 4, 6]
    assert pool.run_on_all(tasks.worker_event_loop_is_running) == [False, False]
    # the worker's own loop runs async tasks as before, on the same workers
    assert list(pool.map(tasks.async_square, range(4))) == [0, 1, 4, 9]
    assert pool.run(tasks.async_square_later, 3) == 9


@pytest.mark.parametrize(
    "loop_type", [LoopType.asyncio, LoopType.uvloop], ids=["asyncio", "uvloop"]
)
def test_a_sync_tasks_loop_leaves_the_worker_loop_its_signals(make_pool, loop_type, tmp_path):
    # a loop of a sync task that removed its last signal handler cleared the
    # signal wakeup fd that the worker's loop had set (uvloop always sets one),
    # so the worker's loop heard no signal after that
    if loop_type is LoopType.uvloop:
        pytest.importorskip("uvloop")
    pool = make_pool(1, worker_loop=loop_type, qsize=2)
    assert pool.run(tasks.signal_handled_by_worker_loop)
    assert pool.run(tasks.signal_handler_by_asyncio_run)
    assert pool.run(tasks.signal_handled_by_worker_loop)
    # a signal that comes while a sync task runs reaches the handler after it
    # (the coroutine and the sync task share the worker)
    ready = str(tmp_path / "handler_added")
    waiting = pool.submit(tasks.signal_handled_by_worker_loop, ready)
    while not os.path.exists(ready):
        time.sleep(0.01)
    assert pool.run(tasks.signal_worker_when_exists, ready) == pool.run(tasks.pid)
    assert waiting.result(timeout=20)


@pytest.mark.parametrize(
    "loop_type", [LoopType.asyncio, LoopType.uvloop], ids=["asyncio", "uvloop"]
)
def test_a_signal_handler_an_awaited_task_left_hears_signals_after_sync_tasks(make_pool, loop_type):
    # the worker reads its loop's signal wakeup fd again only after awaited
    # tasks ran (which may add a handler, and with it asyncio's fd): a handler
    # added by one that has ended, then sync tasks, then a signal in a sync
    # task reaches it
    if loop_type is LoopType.uvloop:
        pytest.importorskip("uvloop")
    pool = make_pool(1, worker_loop=loop_type, qsize=2)
    pool.run(tasks.keep_signal_handler)
    for _ in range(3):
        assert pool.run(tasks.identity, 1) == 1
    assert pool.run(tasks.signal_self) == pool.run(tasks.pid)
    assert pool.run(tasks.heard_signal, 10)


def test_run_on_all_async(shared_pool):
    async def main():
        return await shared_pool.run_on_all_async(tasks.pid)

    pids = asyncio.run(main())
    assert len(pids) == 2 and len(set(pids)) == 2
    assert set(pids) == set(shared_pool.run_on_all(tasks.pid))


def test_run_on_all_async_cancelled_while_earlier_tasks_run(pool, tmp_path):
    """Cancelled while its barrier waits for the tasks before it (a wait_for
    timeout, an interrupted Jupyter cell), run_on_all_async runs nowhere,
    and the results of those tasks still arrive."""
    marker = tmp_path / "ran"

    async def main():
        busy = [pool.submit(tasks.sleep_return, 2.0, i) for i in range(2)]
        call = asyncio.ensure_future(pool.run_on_all_async(tasks.touch, str(marker)))
        await asyncio.sleep(0.05)
        call.cancel()
        results = [await asyncio.wait_for(asyncio.wrap_future(f), 20) for f in busy]
        assert results == [0, 1]
        assert len(await pool.run_on_all_async(tasks.pid)) == 2

    asyncio.run(main())
    assert not marker.exists()


def test_run_async_cancellation(pool, tmp_path):
    marker = tmp_path / "slow_pid"

    async def main():
        task = asyncio.ensure_future(pool.run_async(tasks.note_pid_then_sleep, str(marker), 2))
        while not marker.exists():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()
        # the other worker is idle: the next task goes there, not behind the cancelled one
        return await pool.run_async(tasks.pid)

    next_pid = asyncio.run(main())
    assert next_pid != int(marker.read_text())
    assert pool.run_on_all(tasks.square, 2) == [4, 4]


def test_run_async_cancellation_of_a_queued_task_drops_it(tmp_path, make_pool):
    marker = tmp_path / "ran"

    async def main(pool):
        busy = asyncio.ensure_future(pool.run_async(tasks.sleep_return, 0.4, "busy"))
        queued = asyncio.ensure_future(pool.run_async(tasks.touch, str(marker)))
        await asyncio.sleep(0.1)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert await busy == "busy"
        await pool.run_on_all_async(tasks.pid)

    pool = make_pool(1, qsize=1)
    pool.run_on_all(int, 0)
    asyncio.run(main(pool))  # ends with a run_on_all: after every task before it
    assert not marker.exists()


def test_wait_for_timeout_cancels_run_async(pool):
    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(pool.run_async(tasks.sleep_return, 0.5), 0.1)
        return await pool.run_async(tasks.square, 3)

    assert asyncio.run(main()) == 9


def test_a_cancelled_wait_for_the_start_leaves_the_pool_starting(make_pool):
    """A wait for the workers that times out (or an interrupted ``await pool``
    in Jupyter) stops waiting; the pool goes on starting and runs tasks."""

    async def main():
        pool = make_pool(2, initializer=time.sleep, initargs=(1.0,))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(pool.create(), 0.1)
        assert await pool.run_async(tasks.square, 3) == 9
        assert await pool is pool and pool.is_ready()

    asyncio.run(main())


def test_the_async_api_without_an_asyncio_loop_says_what_to_do_before_it_acts(pool, tmp_path):
    # as under trio, which runs no asyncio loop (coroutines driven by send):
    # some methods failed with 'no running event loop', others at their first
    # await with trio's TypeError, after they had acted (run_on_all_async ran
    # its function on every worker, resize_async resized the pool)
    marker = str(tmp_path / "ran")
    calls = {
        "create": lambda: pool.create(),
        "run_async": lambda: pool.run_async(tasks.touch, marker),
        "map_async": lambda: pool.map_async(tasks.touch, [marker]).__anext__(),
        "run_on_all_async": lambda: pool.run_on_all_async(tasks.touch, marker),
        "status_async": lambda: pool.status_async(),
        "resize_async": lambda: pool.resize_async(1),
        "shutdown_async": lambda: pool.shutdown_async(),
    }
    for api, call in calls.items():
        with pytest.raises(RuntimeError, match=rf"Pool\.{api} needs a running asyncio .*trio"):
            call().send(None)
    assert len(pool.run_on_all(tasks.pid)) == 2
    assert not os.path.exists(marker)
    assert pool.run(tasks.square, 3) == 9


def test_await_pool_and_create_wait_for_the_workers():
    before = child_pids()

    async def main():
        pool = Pool(2, lazy_create=True)
        try:
            assert not pool.is_ready()
            assert await pool is pool
            assert pool.is_ready()
            assert pool.ready.is_set()
            assert len(child_pids() - before) == 2
            assert await pool.create() is pool
            assert await pool.ready.wait()
            return await pool.run_on_all_async(tasks.pid)
        finally:
            await pool.shutdown_async()

    pids = asyncio.run(main())
    assert len(set(pids)) == 2


def test_async_with_starts_and_shuts_down():
    threads_before = set(pool_threads())

    async def main():
        async with Pool(2) as pool:
            assert pool.is_ready()
            pids = await pool.run_on_all_async(tasks.pid)
            assert await pool.run_async(tasks.add, 1, 2) == 3
        assert set(pool_threads()) <= threads_before
        with pytest.raises(PoolClosedError):
            await pool.run_async(tasks.square, 1)
        return pids

    pids = asyncio.run(main())
    assert not set(pids) & child_pids()


def test_shutdown_async_waits_for_tasks_and_workers():
    async def main():
        pool = Pool(2)
        await pool
        pids = await pool.run_on_all_async(tasks.pid)
        futures = [pool.submit(tasks.sleep_return, 0.1, i) for i in range(4)]
        await pool.shutdown_async()
        assert [f.result(timeout=0) for f in futures] == [0, 1, 2, 3]
        return pids

    pids = asyncio.run(main())
    assert not set(pids) & child_pids()


def test_sync_api_inside_asyncio_run(shared_pool):
    async def main():
        assert shared_pool.run(tasks.square, 4) == 16
        assert shared_pool.submit(tasks.add, 1, 2).result() == 3
        assert list(shared_pool.map(tasks.square, range(5))) == [0, 1, 4, 9, 16]
        assert list(shared_pool.map(tasks.add, range(5), range(5), chunksize=2)) == [0, 2, 4, 6, 8]
        assert len(shared_pool.run_on_all(tasks.pid)) == 2
        # async inputs too: they are read on a loop in a thread of its own
        assert list(shared_pool.map(tasks.add, agen(5, 0.001), range(5))) == [0, 2, 4, 6, 8]
        for x in shared_pool.map(tasks.square, agen(1000)):
            if x == 4:
                break  # stops that loop and its thread
        # and the loop still runs async work around the sync calls
        assert await shared_pool.run_async(tasks.square, 5) == 25

    threads = threading.active_count()
    asyncio.run(main())
    assert threading.active_count() == threads


def test_run_in_executor(shared_pool):
    async def main():
        loop = asyncio.get_running_loop()
        one = await loop.run_in_executor(shared_pool, tasks.add, 2, 3)
        many = await asyncio.gather(
            *(loop.run_in_executor(shared_pool, tasks.square, i) for i in range(10))
        )
        with pytest.raises(ValueError, match="bad input 3"):
            await loop.run_in_executor(shared_pool, tasks.fail_on, 3)
        return one, many

    assert asyncio.run(main()) == (5, [i * i for i in range(10)])


def test_async_api_from_several_loops_in_threads_at_once(shared_pool):
    def in_thread(i):
        async def main():
            results = await asyncio.gather(
                *(shared_pool.run_async(tasks.add, i, j) for j in range(20))
            )
            results += [r async for r in shared_pool.map_async(tasks.add, [i] * 10, range(10))]
            return results

        return asyncio.run(main())

    with concurrent.futures.ThreadPoolExecutor(4) as executor:
        results = list(executor.map(in_thread, range(4)))
    for i, result in enumerate(results):
        assert result == [i + j for j in range(20)] + [i + j for j in range(10)]


def test_the_loops_that_awaited_run_async_are_let_go(shared_pool):
    # a program that runs asyncio.run per request, or a test suite, makes a
    # new loop each time: the pool must not keep them all
    loops = []

    async def main(i):
        loops.append(weakref.ref(asyncio.get_running_loop()))
        return await shared_pool.run_async(tasks.square, i)

    assert [asyncio.run(main(i)) for i in range(50)] == [i * i for i in range(50)]
    gc.collect()
    assert sum(ref() is not None for ref in loops) == 0


def test_a_result_for_a_loop_closed_meanwhile_is_dropped(shared_pool):
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(lambda loop, context: None)  # "destroyed but pending"
    call = loop.create_task(shared_pool.run_async(tasks.sleep_return, 0.3, "late"))
    loop.run_until_complete(asyncio.sleep(0.05))  # submitted: the task runs
    loop.close()  # without waiting for it; its result comes to a closed loop
    assert not call.done()
    time.sleep(0.5)

    async def main():
        return await shared_pool.run_async(tasks.square, 7)

    assert asyncio.run(main()) == 49
    assert list(shared_pool.map(tasks.square, range(5))) == [0, 1, 4, 9, 16]


def test_eventkit_readme_example(shared_pool):
    data = [bytes(range(256)) * (i + 1) + b"x" * (1000 * i) for i in range(20)]
    expected = statistics.mean(len(bz2.compress(d)) for d in data)

    async def main():
        return await ev.Sequence(data).poolmap(shared_pool, bz2.compress).map(len).mean().last()

    assert asyncio.run(main()) == pytest.approx(expected)


def test_eventkit_poolmap_emits_every_result_in_order(shared_pool):
    async def main():
        return await ev.Sequence(range(20)).poolmap(shared_pool, tasks.square).list()

    assert asyncio.run(main()) == [i * i for i in range(20)]


def test_eventkit_poolmap_unordered_and_chunked(shared_pool):
    async def main():
        source = ev.Sequence(range(30))
        mapped = PoolMap(shared_pool, tasks.square, chunksize=4, ordered=False, source=source)
        return await mapped.list()

    got = asyncio.run(main())
    assert collections.Counter(got) == collections.Counter(i * i for i in range(30))


def test_eventkit_poolmap_keeps_what_its_source_emitted_as_it_was_made(shared_pool):
    # eventkit's aiter() connects at its first step, once the map's task
    # runs: the values emitted in the step that made the map were lost, as
    # was the source's end if it came then too (the map never ended)
    async def main():
        live = ev.Event()
        mapped = asyncio.ensure_future(live.poolmap(shared_pool, tasks.square).list())
        for i in range(3):
            live.emit(i)
        await asyncio.sleep(0.1)
        live.emit(3)
        live.set_done()
        ended = ev.Event()
        at_once = asyncio.ensure_future(ended.poolmap(shared_pool, tasks.square).list())
        ended.emit(5)
        ended.set_done()
        return await asyncio.wait_for(mapped, 30), await asyncio.wait_for(at_once, 30)

    assert asyncio.run(main()) == ([0, 1, 4, 9], [25])


def test_eventkit_poolmap_of_a_slow_source(shared_pool):
    async def main():
        source = ev.Timer(0.01, count=10)
        return await source.poolmap(shared_pool, tasks.identity).list()

    got = asyncio.run(main())
    assert len(got) == 10
