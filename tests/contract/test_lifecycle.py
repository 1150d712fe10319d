"""The executor contract: cancellation, shutdown and timeouts on every kind of pool.

These tests leave tasks cancelled, running or a pool shut down, so each
makes a pool of its own (``make_executor``). Whether a task ran is told by
the trace it leaves in a file (``tasks.sleep_touch``): the SSH hosts share
this machine's file system.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import sys
import threading
import time
from collections import Counter

import pytest

from distex_zmq import Pool, PoolClosedError
from tests import tasks
from tests.contract.conftest import WORKERS
from tests.helpers import pid_alive, wait_until

pytestmark = pytest.mark.timeout(90)


def busy(pool: Pool, delay: float) -> list[cf.Future]:
    """Occupy every worker of a ``qsize=1`` pool for ``delay`` seconds."""
    pool.run_on_all(int, 0)  # all workers are up
    return [pool.submit(tasks.sleep_return, delay, i) for i in range(WORKERS)]


# cancellation


def test_cancel_a_waiting_future(make_executor, tmp_path):
    path = str(tmp_path / "traces")
    pool = make_executor(qsize=1)
    blockers = busy(pool, 1.0)
    waiting = pool.submit(tasks.touch, path, "never")
    assert waiting.cancel() and waiting.cancelled()
    with pytest.raises(cf.CancelledError):
        waiting.result()
    assert [b.result(timeout=30) for b in blockers] == list(range(WORKERS))
    assert pool.run_on_all(tasks.traces, path) == [0] * WORKERS
    assert not waiting.cancel() or waiting.cancelled()  # cancelling again changes nothing


def test_cancel_a_finished_future_fails(make_executor):
    pool = make_executor()
    future = pool.submit(tasks.square, 3)
    assert future.result(timeout=30) == 9
    assert not future.cancel() and not future.cancelled()


def test_run_async_cancelled_cancels_its_task(make_executor, tmp_path):
    path = str(tmp_path / "traces")
    pool = make_executor(qsize=1)
    blockers = busy(pool, 1.0)

    async def main():
        task = asyncio.ensure_future(pool.run_async(tasks.touch, path))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    [b.result(timeout=30) for b in blockers]
    assert pool.run_on_all(tasks.traces, path) == [0] * WORKERS


def test_a_running_task_cannot_be_cancelled(make_executor):
    # as with concurrent.futures: its future says so, and the task runs on
    pool = make_executor(qsize=1)
    before = sorted(pool.run_on_all(tasks.pid))
    running = pool.submit(tasks.sleep_return, 0.5, "ran")
    time.sleep(0.2)
    assert running.running()
    assert not running.cancel() and not running.cancelled()
    assert running.result(timeout=30) == "ran"
    assert sorted(pool.run_on_all(tasks.pid)) == before  # not killed, not replaced


def test_run_async_under_wait_for_cancels_its_task(make_executor, tmp_path):
    path = str(tmp_path / "traces")
    pool = make_executor(qsize=1)
    blockers = busy(pool, 1.0)

    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(pool.run_async(tasks.touch, path), 0.1)
        return await pool.run_async(tasks.square, 3)

    assert asyncio.run(main()) == 9
    [b.result(timeout=30) for b in blockers]
    assert pool.run_on_all(tasks.traces, path) == [0] * WORKERS


def test_shutdown_while_another_thread_maps(make_executor):
    pool = make_executor()
    pool.run_on_all(int, 0)
    outcome: list[BaseException | None] = []

    def consume() -> None:
        try:
            for _ in pool.map(tasks.sleep_return, [0.1] * 200):
                pass
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001 - the test looks at it
            outcome.append(e)

    thread = threading.Thread(target=consume)
    thread.start()
    time.sleep(0.3)
    pool.shutdown(cancel_futures=True)
    thread.join(30)
    assert not thread.is_alive(), "the map hangs after the pool was shut down"
    assert isinstance(outcome[0], (cf.CancelledError, PoolClosedError)), outcome


def test_shutdown_with_cancel_futures(make_executor, tmp_path):
    path = str(tmp_path / "traces")
    pool = make_executor(qsize=1)
    blockers = busy(pool, 1.0)
    waiting = [pool.submit(tasks.touch, path, i) for i in range(10)]
    pool.shutdown(cancel_futures=True)
    assert [b.result() for b in blockers] == list(range(WORKERS))  # running tasks finish
    assert all(f.cancelled() for f in waiting)
    assert tasks.traces(path) == 0


def test_breaking_out_of_a_map_cancels_what_is_pending(make_executor, tmp_path):
    path = str(tmp_path / "traces")
    pool = make_executor(qsize=1)
    inputs = [(path, 0.1, i) for i in range(40)]
    for _ in pool.map(tasks.sleep_touch, inputs, star=True, chunksize=1):
        break
    pool.run_on_all(int, 0)  # after what still ran
    assert 1 <= tasks.traces(path) < 40
    assert pool.run(tasks.square, 5) == 25  # and the pool goes on


def test_breaking_out_of_a_map_async_cancels_what_is_pending(make_executor, tmp_path):
    path = str(tmp_path / "traces")
    pool = make_executor(qsize=1)
    inputs = [(path, 0.1, i) for i in range(40)]

    async def main():
        results = pool.map_async(tasks.sleep_touch, inputs, star=True, chunksize=1)
        async for _ in results:
            break
        await results.aclose()
        await pool.run_on_all_async(int, 0)

    asyncio.run(main())
    assert 1 <= tasks.traces(path) < 40


def test_wait_and_as_completed_count_a_cancelled_future_as_done(make_executor):
    pool = make_executor(qsize=1)
    blockers = busy(pool, 0.5)
    cancelled = pool.submit(tasks.square, 2)
    assert cancelled.cancel()
    done, not_done = cf.wait([cancelled, *blockers], timeout=30)
    assert cancelled in done and not not_done
    assert set(cf.as_completed([cancelled, *blockers], timeout=30)) == {cancelled, *blockers}


# shutdown


def test_shutdown_waits_for_submitted_tasks(make_executor):
    pool = make_executor()
    futures = [pool.submit(tasks.sleep_return, 0.05, i) for i in range(10)]
    pool.shutdown(wait=True)
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == list(range(10))


def test_shutdown_without_wait_still_runs_submitted_tasks(make_executor):
    pool = make_executor()
    futures = [pool.submit(tasks.sleep_return, 0.05, i) for i in range(10)]
    pool.shutdown(wait=False)
    assert [f.result(timeout=30) for f in futures] == list(range(10))


def test_shutdown_is_idempotent_and_then_everything_refuses(make_executor):
    pool = make_executor()
    assert pool.run(tasks.square, 2) == 4
    pool.shutdown()
    pool.shutdown()
    pool.shutdown(wait=False, cancel_futures=True)
    for call in (
        lambda: pool.submit(tasks.square, 1),
        lambda: pool.run(tasks.square, 1),
        lambda: pool.map(tasks.square, [1]),
        lambda: pool.run_on_all(int, 0),
        lambda: asyncio.run(pool.run_async(tasks.square, 1)),
        lambda: asyncio.run(pool.run_on_all_async(int, 0)),
    ):
        with pytest.raises(PoolClosedError):
            call()
    with pytest.raises(RuntimeError):  # a PoolClosedError is a RuntimeError, as in the stdlib
        pool.submit(tasks.square, 1)
    assert not pool.is_ready()


@pytest.mark.parametrize("method", ["terminate_workers", "kill_workers"])
def test_stopping_the_workers_now_fails_what_runs_and_cancels_what_waits(
    make_executor, tmp_path, method
):
    # ``ProcessPoolExecutor``'s methods of Python 3.14: a signal to every
    # worker now, without waiting; the tasks that wait are cancelled
    path = str(tmp_path / "sigterms")
    pool = make_executor(qsize=1)
    pids = pool.run_on_all(tasks.pid)
    running = [pool.submit(tasks.note_sigterm_then_sleep, path, 60) for _ in range(WORKERS)]
    waiting = pool.submit(tasks.square, 3)
    assert wait_until(lambda: tasks.traces(path + ".started") == WORKERS, timeout=30)
    getattr(pool, method)()
    assert cf.wait([waiting], timeout=30).done and waiting.cancelled()
    with pytest.raises(PoolClosedError):
        pool.submit(tasks.square, 1)
    for future in running:
        with pytest.raises(PoolClosedError, match=rf"did not finish: .* by {method}\(\)"):
            future.result(timeout=30)
    pool.shutdown()  # waits for their exit, as after any shutdown
    assert not any(pid_alive(pid) for pid in pids)
    # SIGTERM came first, then SIGKILL to the tasks that ignored it; or SIGKILL alone
    assert tasks.traces(path) == (WORKERS if method == "terminate_workers" else 0)


def test_context_managers_shut_down(make_executor):
    with make_executor() as pool:
        assert pool.run(tasks.square, 3) == 9
    with pytest.raises(PoolClosedError):
        pool.submit(tasks.square, 1)

    async def main():
        async with make_executor() as pool:
            assert await pool.run_async(tasks.square, 4) == 16
        return pool

    with pytest.raises(PoolClosedError):
        asyncio.run(main()).submit(tasks.square, 1)


# timeouts


def test_result_timeout(make_executor):
    pool = make_executor()
    future = pool.submit(tasks.sleep_return, 1.0, "late")
    with pytest.raises(cf.TimeoutError):
        future.result(timeout=0.05)
    # the builtin one since Python 3.11, as concurrent.futures' own
    expected = TimeoutError if sys.version_info >= (3, 11) else cf.TimeoutError
    with pytest.raises(expected):
        future.exception(timeout=0.05)
    assert future.result(timeout=30) == "late"


def test_map_timeout(make_executor):
    pool = make_executor()
    pool.run_on_all(int, 0)  # the timeout counts from the start of the map, not of the pool
    results = []
    with pytest.raises(Pool.TimeoutError):
        for r in pool.map(tasks.sleep_return, [0, 0, 2], timeout=1.0):
            results.append(r)
    assert results == [None, None]


def test_map_async_timeout(make_executor):
    pool = make_executor()
    pool.run_on_all(int, 0)

    async def main():
        results = []
        with pytest.raises(Pool.TimeoutError):
            async for r in pool.map_async(tasks.sleep_return, [0, 0, 2], timeout=1.0):
                results.append(r)
        return results

    assert asyncio.run(main()) == [None, None]


# max_tasks_per_child


def test_max_tasks_per_child_renews_each_worker(make_executor):
    # as ProcessPoolExecutor(max_tasks_per_child=3): no process runs more
    # tasks than that, a fresh one takes its place, and every task runs once
    pool = make_executor(max_tasks_per_child=3)
    initial = set(pool.run_on_all(tasks.pid))  # pinned: counts no task
    futures = [pool.submit(tasks.pid_and_value, 0, i) for i in range(8 * WORKERS)]
    ran = [f.result(timeout=60) for f in futures]
    assert [value for _, value in ran] == list(range(8 * WORKERS))
    per_pid = Counter(pid for pid, _ in ran)
    assert max(per_pid.values()) <= 3
    assert len(per_pid) >= 8 * WORKERS // 3
    # a map's chunk counts as one task
    chunked = list(pool.map(tasks.pid_and_value, [0] * 60, range(60), chunksize=5))
    assert [value for _, value in chunked] == list(range(60))
    assert max(Counter(pid for pid, _ in chunked).values()) <= 3 * 5
    status = pool.status()
    assert status.totals.workers_lost == 0
    assert status.totals.renewals >= len(per_pid) - WORKERS
    assert wait_until(lambda: pool.status().ready_workers == WORKERS, timeout=30)
    now = set(pool.run_on_all(tasks.pid))
    assert len(now) == WORKERS and not now & initial
