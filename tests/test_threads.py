"""One pool shared by many threads, as threaded programs use a process pool:
every API at once, maps read part way and abandoned, a shutdown from
another thread while the others wait."""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import threading

import pytest

from distex_zmq import PoolClosedError
from tests import tasks
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(120)

THREADS = 16
#: what a call whose task a shutdown cancelled raises: a sync call, an await
CANCELLED = (concurrent.futures.CancelledError, asyncio.CancelledError)


def _mixed_calls(pool, i: int) -> None:
    """A few calls of every kind, in an order of thread ``i``'s own."""
    rnd = random.Random(i)
    for _ in range(6):
        op = rnd.choice(["run", "map", "map_part", "submit", "async"])
        if op == "run":
            assert pool.run(tasks.square, i) == i * i
        elif op == "map":
            xs = list(range(rnd.randint(0, 40)))
            assert list(pool.map(tasks.square, xs)) == [x * x for x in xs]
        elif op == "map_part":
            results = pool.map(tasks.square, range(200))
            for k, value in zip(range(rnd.randint(0, 8)), results, strict=False):
                assert value == k * k
            if rnd.random() < 0.5:
                results.close()
            del results  # abandoned: what no worker holds is cancelled
        elif op == "submit":
            futures = [pool.submit(tasks.add, i, k) for k in range(20)]
            assert [f.result(timeout=60) for f in futures] == [i + k for k in range(20)]
        else:

            async def calls() -> None:
                values = [y async for y in pool.map_async(tasks.square, range(30))]
                assert values == [x * x for x in range(30)]
                assert await pool.run_async(tasks.square, 7) == 49
                part = pool.map_async(tasks.square, range(100))
                async for _ in part:
                    break
                await part.aclose()

            asyncio.run(calls())


def test_many_threads_use_every_api_of_one_pool_at_once(pool):
    barrier = threading.Barrier(THREADS)

    def work(i: int) -> None:
        barrier.wait()
        _mixed_calls(pool, i)

    with concurrent.futures.ThreadPoolExecutor(THREADS) as executor:
        for future in [executor.submit(work, i) for i in range(THREADS)]:
            future.result(timeout=90)
    # the abandoned maps left nothing behind
    assert wait_until(lambda: pool.status().totals.queued == 0, timeout=10)
    assert pool.run(tasks.square, 3) == 9


def test_a_shutdown_from_another_thread_ends_every_waiting_call(make_pool):
    """With ``cancel_futures``, each call that waits ends with its results,
    or ``CancelledError`` for what had not started, or ``PoolClosedError``
    for a call made after the shutdown, as with ``ProcessPoolExecutor``."""
    pool = make_pool(2, qsize=1)
    pool.run_on_all(int, 0)
    started = threading.Barrier(5)
    outcomes: dict[str, object] = {}

    def sync_map() -> object:
        return len(list(pool.map(tasks.sleep_return, [0.05] * 100)))

    def runs() -> object:
        return [pool.run(tasks.sleep_return, 0.05, k) for k in range(100)]

    def async_calls() -> object:
        async def calls() -> object:
            gathered = await asyncio.gather(
                *(pool.run_async(tasks.sleep_return, 0.05, k) for k in range(50))
            )
            mapped = [y async for y in pool.map_async(tasks.sleep_return, [0.05] * 100)]
            return gathered, mapped

        return asyncio.run(calls())

    def run_on_all() -> object:
        return [pool.run_on_all(tasks.pid) for _ in range(100)]

    def call(name: str, what) -> None:
        started.wait()
        try:
            outcomes[name] = what()
        except BaseException as e:  # noqa: BLE001 - the test looks at it
            outcomes[name] = e

    calls = {"map": sync_map, "run": runs, "async": async_calls, "run_on_all": run_on_all}
    threads = [threading.Thread(target=call, args=item, daemon=True) for item in calls.items()]
    for thread in threads:
        thread.start()
    started.wait()
    assert wait_until(lambda: pool.status().totals.done > 10, timeout=30)
    pool.shutdown(cancel_futures=True)
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads), outcomes
    for name, outcome in outcomes.items():
        assert isinstance(outcome, (*CANCELLED, PoolClosedError)), (
            name,
            outcome,
        )
