"""The executor contract: submit, run, run_async, run_on_all, errors, payloads, wait.

Every test runs on each kind of pool (``tests/contract/conftest.py``) and
shares one pool per kind: none leaves a task running or a future pending.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import gc
import os
import weakref

import numpy as np
import pytest

from distex_zmq import RemoteException
from tests import tasks
from tests.contract.conftest import WORKERS

pytestmark = pytest.mark.timeout(60)


def assert_remote(error: BaseException, function: str) -> None:
    """``error`` came from a worker: its cause is the remote traceback, naming ``function``."""
    assert isinstance(error.__cause__, RemoteException)
    assert function in str(error.__cause__)


# submit and run


def test_submit(executor):
    future = executor.submit(pow, 2, 8)
    assert isinstance(future, cf.Future)
    assert future.result(timeout=30) == 256


def test_submit_keyword(executor):
    assert executor.submit(tasks.with_kwargs, 2, scale=3, offset=1).result(30) == 7
    # the names of submit's own parameters are free for the function
    assert executor.submit(tasks.identity, x=5).result(30) == 5
    with pytest.raises(TypeError):
        executor.submit(fn=tasks.identity, x=1)  # fn is positional-only


def test_submit_many(executor):
    futures = [executor.submit(tasks.square, i) for i in range(300)]
    assert [f.result(timeout=30) for f in futures] == [i * i for i in range(300)]


def test_many_threads_share_the_pool(executor):
    def work(i):
        futures = [executor.submit(tasks.add, i, j) for j in range(20)]
        mapped = list(executor.map(tasks.add, [i] * 20, range(20), ordered=i % 2 == 0))
        return (
            [f.result(timeout=30) for f in futures],
            sorted(mapped),
            executor.run(tasks.square, i),
        )

    with cf.ThreadPoolExecutor(6) as threads:
        results = list(threads.map(work, range(6)))
    assert results == [
        ([i + j for j in range(20)], [i + j for j in range(20)], i * i) for i in range(6)
    ]


def test_run(executor):
    assert executor.run(tasks.add, 2, 3) == 5
    assert executor.run(tasks.with_kwargs, 2, scale=5) == 10


def test_run_of_a_coroutine_function(executor):
    assert executor.run(tasks.async_square, 4) == 16


def test_run_async(executor):
    async def main():
        one = await executor.run_async(tasks.add, 1, 2)
        many = await asyncio.gather(*(executor.run_async(tasks.square, i) for i in range(50)))
        awaited = await executor.run_async(tasks.async_square, 3)
        return one, many, awaited

    assert asyncio.run(main()) == (3, [i * i for i in range(50)], 9)


def test_run_on_all(executor):
    pids = executor.run_on_all(os.getpid)
    assert len(pids) == WORKERS == executor.total_workers()
    assert len(set(pids)) == WORKERS and os.getpid() not in pids
    assert executor.run_on_all(tasks.with_kwargs, 3, scale=2) == [6] * WORKERS


def test_run_on_all_async(executor):
    async def main():
        return await executor.run_on_all_async(tasks.add, 2, 2)

    assert asyncio.run(main()) == [4] * WORKERS


def test_run_on_all_runs_after_what_was_submitted_before(executor, tmp_path):
    path = str(tmp_path / "traces")
    futures = [executor.submit(tasks.sleep_touch, path, 0.05) for _ in range(6)]
    assert executor.run_on_all(tasks.traces, path) == [6] * WORKERS
    assert all(f.done() for f in futures)


# errors


def test_submit_error_is_the_remote_exception(executor):
    future = executor.submit(tasks.raise_custom, "boom")
    error = future.exception(timeout=30)
    assert type(error) is tasks.CustomError and "boom" in str(error)
    assert_remote(error, "raise_custom")
    with pytest.raises(tasks.CustomError):
        future.result()


def _dropped_futures_freed(executor) -> list[bool]:
    """Whether futures of ``executor`` that failed are freed as they are
    dropped, with the cycle collector off: one read with ``result()``, one
    with ``exception()``, and (a pool's) an awaited ``run_async``."""
    freed = []
    gc.collect()
    gc.disable()
    try:
        for read in ("result", "exception"):
            future = executor.submit(tasks.raise_custom, "boom")
            with contextlib.suppress(tasks.CustomError):
                getattr(future, read)(timeout=30)
            dropped = weakref.ref(future)
            del future
            freed.append(dropped() is None)
        if hasattr(executor, "run_async"):

            async def main() -> weakref.ref[asyncio.Future[None]]:
                task = asyncio.ensure_future(executor.run_async(tasks.raise_custom, "boom"))
                with contextlib.suppress(tasks.CustomError):
                    await task
                awaited = weakref.ref(task)
                del task  # which the error's traceback holds through this frame
                return awaited

            freed.append(asyncio.run(main())() is None)
    finally:
        gc.enable()
    return freed


def test_a_dropped_future_that_failed_is_freed_at_once(executor):
    # its error held the pool loop's frames that delivered it, which held
    # the future: freed only by the cycle collector (never with it off),
    # with everything it held (a client's memory grew by 1 GB in 30 s of
    # tasks that raised large errors); as ProcessPoolExecutor frees it
    with cf.ProcessPoolExecutor(1) as control:
        assert _dropped_futures_freed(control) == [True, True]
    assert _dropped_futures_freed(executor) == [True, True, True]


def test_run_raises_the_remote_exception(executor):
    with pytest.raises(KeyError) as info:
        executor.run(tasks.raise_key_error)
    assert_remote(info.value, "raise_key_error")
    with pytest.raises(ValueError, match="async failure 5") as info:
        executor.run(tasks.async_fail, 5)
    assert_remote(info.value, "async_fail")


def test_run_async_raises_the_remote_exception(executor):
    async def main():
        with pytest.raises(ValueError, match="bad input 3") as info:
            await executor.run_async(tasks.fail_on, 3)
        return info.value

    assert_remote(asyncio.run(main()), "fail_on")


def test_run_on_all_raises_the_remote_exception(executor):
    with pytest.raises(tasks.CustomError) as info:
        executor.run_on_all(tasks.raise_custom, "everywhere")
    assert_remote(info.value, "raise_custom")


def test_pool_keeps_working_after_errors(executor):
    futures = [executor.submit(tasks.fail_on, i) for i in range(20)]
    errors = [f.exception(timeout=30) for f in futures]
    assert [type(e) for e in errors].count(ValueError) == 1
    assert executor.run(tasks.square, 9) == 81


# large payloads, both ways


def test_large_numpy_arrays(executor):
    arr = np.arange(1 << 20, dtype=np.float64)  # 8 MB
    nbytes, checksum, _ = executor.run(tasks.array_checksum, arr)
    assert (nbytes, checksum) == (arr.nbytes, float(arr[::4096].sum()))
    back = executor.submit(tasks.array_plus_one, arr).result(timeout=60)
    np.testing.assert_array_equal(back, arr + 1)
    for echoed in executor.map(tasks.array_echo, [arr, arr[::-1]]):
        assert echoed.shape == arr.shape
    np.testing.assert_array_equal(echoed, arr[::-1])


def test_large_bytes(executor):
    blob = os.urandom(4 << 20)
    assert executor.run_on_all(tasks.bytes_len, blob) == [len(blob)] * WORKERS
    assert executor.run(tasks.identity, blob) == blob
    assert list(executor.map(tasks.identity, [blob, blob[::-1]])) == [blob, blob[::-1]]

    async def main():
        return await executor.run_async(tasks.identity, blob)

    assert asyncio.run(main()) == blob


# concurrent.futures.wait and as_completed


def test_wait_first_completed_and_all_completed(executor):
    fast = executor.submit(tasks.sleep_return, 0.0, "fast")
    fast.result(timeout=30)
    slow = executor.submit(tasks.sleep_return, 1.0, "slow")
    done, not_done = cf.wait([slow, fast], timeout=30, return_when=cf.FIRST_COMPLETED)
    assert fast in done and slow in not_done
    done, not_done = cf.wait([slow, fast], timeout=30)
    assert done == {slow, fast} and not not_done
    assert slow.result() == "slow"


def test_wait_first_exception(executor):
    failed = executor.submit(tasks.fail_on, 3)
    failed.exception(timeout=30)
    slow = executor.submit(tasks.sleep_return, 1.0)
    done, not_done = cf.wait([slow, failed], timeout=30, return_when=cf.FIRST_EXCEPTION)
    assert failed in done and slow in not_done
    slow.result(timeout=30)


def test_as_completed(executor):
    futures = {executor.submit(tasks.sleep_return, d, i): i for i, d in enumerate([0.3, 0.1, 0.0])}
    futures[executor.submit(tasks.fail_on, 3)] = 3
    order = [futures[f] for f in cf.as_completed(futures, timeout=30)]
    assert sorted(order) == [0, 1, 2, 3]
