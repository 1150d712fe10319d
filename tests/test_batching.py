"""Adaptive batching: maps without a chunksize group tiny tasks, and only those;
so does the broker with tiny submitted tasks that wait for a credit.

How many tasks a map made is read from the pool's task id counter: every
task, a chunk included, takes one id. How many submitted tasks shared a
credit is counted by the broker.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable

import pytest

from distex_zmq import Pool
from tests import tasks


def grouped_tasks(pool: Pool) -> int:
    """Tasks the pool's broker sent in groups that shared a credit, so far."""
    return pool.status().totals.grouped_tasks


def tasks_made(pool: Pool, run: Callable[[], object]) -> int:
    """Run ``run()``; return how many tasks it submitted."""
    before = pool.status().totals.tasks_submitted
    run()
    return pool.status().totals.tasks_submitted - before


def test_tiny_tasks_are_grouped_by_default(shared_pool):
    n = 5000
    made = tasks_made(shared_pool, lambda: list(shared_pool.map(tasks.square, range(n))))
    assert made < n / 4, f"{made} tasks for {n} tiny inputs"


def test_an_explicit_chunksize_of_one_is_kept(shared_pool):
    n = 2000
    made = tasks_made(
        shared_pool, lambda: list(shared_pool.map(tasks.square, range(n), chunksize=1))
    )
    assert made == n


def test_an_explicit_chunksize_is_kept(shared_pool):
    made = tasks_made(
        shared_pool, lambda: list(shared_pool.map(tasks.square, range(1000), chunksize=7))
    )
    assert made == -(-1000 // 7)


def test_qsize_one_never_groups(make_pool):
    pool = make_pool(2, qsize=1)
    made = tasks_made(pool, lambda: list(pool.map(tasks.square, range(500))))
    assert made == 500


def test_tasks_of_a_few_milliseconds_are_never_grouped(shared_pool):
    n = 60
    results = []
    made = tasks_made(
        shared_pool,
        lambda: results.extend(shared_pool.map(tasks.sleep_return, [0.003] * n, range(n))),
    )
    assert results == list(range(n))
    assert made == n


def test_a_function_mapped_before_starts_with_its_chunks(pool):
    # a program that maps one function many times over a few dozen inputs
    # (an optimizer's generations, scipy's workers=pool.map) has each map
    # chunked from its start, not sent one input per task until that map
    # has learned the function's run time again: 1 task on a quiet machine,
    # 10 to 14 for a function not mapped before (chunks of 1, 2, 4, ...)
    made = []
    for _attempt in range(3):
        list(pool.map(tasks.square, range(3000)))
        made.append(tasks_made(pool, lambda: list(pool.map(tasks.square, range(60)))))
        # on a loaded machine a chunk's run time, measured by the clock, may
        # take in a worker preempted meanwhile: one of the first map's last
        # chunks preempted for milliseconds makes the function remembered
        # as slow, and the test needs another try
        if made[-1] <= 6:
            break
    assert min(made) <= 6, f"{made} tasks for 60 inputs of a function known as tiny"


def test_a_function_known_as_tiny_that_turns_slow_is_spread(pool):
    # what a map remembers of a function's run time may no longer hold: its
    # first chunk then runs past its budget and hands back the inputs it has
    # not started, so that every worker takes them
    list(pool.map(tasks.nap_pid, [0] * 2000))
    pids = set(pool.run_on_all(tasks.pid))
    assert set(pool.map(tasks.nap_pid, [0.05] * 20)) == pids


def test_each_input_keeps_its_error_and_place(shared_pool):
    results = []
    with pytest.raises(ValueError, match="bad input 2500"):
        for r in shared_pool.map(tasks.fail_on, range(4000), [2500] * 4000):
            results.append(r)
    assert results == [tasks.fail_on(x, -1) for x in range(2500)]
    # the pool goes on, and a later map is grouped again
    assert list(shared_pool.map(tasks.square, range(3000)))[-1] == 2999**2


def test_unordered_adaptive_map_yields_every_result(shared_pool):
    out = list(shared_pool.map(tasks.square, range(5000), ordered=False))
    assert sorted(out) == [x * x for x in range(5000)]


def test_adaptive_map_async(shared_pool):
    async def main():
        return [r async for r in shared_pool.map_async(tasks.square, range(5000))]

    made = tasks_made(shared_pool, lambda: asyncio.run(main()))
    assert made < 5000 / 4


# submit and run_async: tiny tasks queued behind busy credits share one


def test_tiny_submitted_tasks_share_credits(shared_pool):
    before = grouped_tasks(shared_pool)
    futures = [shared_pool.submit(tasks.square, i) for i in range(3000)]
    assert [f.result(timeout=30) for f in futures] == [i * i for i in range(3000)]
    assert grouped_tasks(shared_pool) - before > 1500


def test_tiny_run_async_tasks_share_credits(shared_pool):
    async def main():
        return await asyncio.gather(*(shared_pool.run_async(tasks.add, i, 1) for i in range(3000)))

    before = grouped_tasks(shared_pool)
    assert asyncio.run(main()) == [i + 1 for i in range(3000)]
    assert grouped_tasks(shared_pool) - before > 1500


def test_submitted_tasks_of_a_few_milliseconds_are_never_grouped(shared_pool):
    before = grouped_tasks(shared_pool)
    futures = [shared_pool.submit(tasks.sleep_return, 0.003, i) for i in range(60)]
    assert [f.result(timeout=30) for f in futures] == list(range(60))
    assert grouped_tasks(shared_pool) == before


def test_qsize_one_never_groups_submitted_tasks(make_pool):
    pool = make_pool(2, qsize=1)
    futures = [pool.submit(tasks.square, i) for i in range(1000)]
    assert [f.result(timeout=30) for f in futures] == [i * i for i in range(1000)]
    assert grouped_tasks(pool) == 0


def test_grouped_tasks_keep_their_own_errors(shared_pool):
    before = grouped_tasks(shared_pool)
    futures = [shared_pool.submit(tasks.fail_on, i, i if i % 7 == 0 else -1) for i in range(3000)]
    for i, future in enumerate(futures):
        if i % 7 == 0:
            with pytest.raises(ValueError, match=f"bad input {i}$"):
                future.result(timeout=30)
        else:
            assert future.result(timeout=30) == i * 10
    assert grouped_tasks(shared_pool) - before > 1500


def test_grouped_tasks_are_cancelled_one_by_one(pool):
    futures = [pool.submit(tasks.square, i) for i in range(4000)]
    cancelled = {i for i in range(0, 4000, 3) if futures[i].cancel()}
    assert len(cancelled) > 100, "the tasks ran before they could be cancelled"
    for i, future in enumerate(futures):
        if i in cancelled:
            assert future.cancelled()
            with pytest.raises(concurrent.futures.CancelledError):
                future.result(timeout=30)
        else:
            assert future.result(timeout=30) == i * i
    assert grouped_tasks(pool) > 1000
    # the workers and their credits are all there for what comes next
    assert pool.run_on_all(tasks.square, 3) == [9, 9]


def test_a_group_that_turns_out_slow_is_given_back_and_spread(pool):
    # the broker groups a function's tasks from its past run times; tasks
    # that turn out slow are given back after the first, and run on any
    # free worker instead of one after the other on one
    pids = set(pool.run_on_all(tasks.pid))
    for _attempt in range(5):
        warm_up = [pool.submit(tasks.nap_pid, 0) for _ in range(200)]
        concurrent.futures.wait(warm_up, timeout=30)  # known as tiny now
        blockers = [pool.submit(tasks.sleep_return, 0.3) for _ in range(4)]  # every credit
        time.sleep(0.1)
        before = grouped_tasks(pool)
        # queued behind the blockers: grouped when they finish, and the first
        # group, taken from the head of the queue, holds the slow ones. The
        # first slow one then stops the grouping for more tiny tasks than the
        # 12 behind them: any task grouped here was grouped with them (a
        # group takes its share of the queue, so 16 tasks on 4 credits still
        # lets the first take all 4)
        futures = [pool.submit(tasks.nap_pid, 0.05 if i < 4 else 0) for i in range(16)]
        concurrent.futures.wait(blockers + futures, timeout=30)
        # a tiny task that lost its core for a while on a loaded machine
        # makes the broker think its function slow: then nothing is grouped,
        # and the test needs another try
        if grouped_tasks(pool) - before >= 4:
            break
    assert grouped_tasks(pool) - before >= 4, "the test needs the tasks grouped"
    slow = [f.result(timeout=0) for f in futures[:4]]
    assert set(slow) == pids, "the slow tasks all ran on one worker"
    assert all(f.result(timeout=0) in pids for f in futures[4:])


def test_a_task_does_not_wait_behind_a_long_one_while_a_worker_is_free(make_pool):
    # as with ProcessPoolExecutor: with qsize=2 the second credit of a worker
    # that runs a task of a function known to run long is not used, so the
    # quick tasks go to the worker that is free first
    pool = make_pool(2, qsize=2)
    pool.run_on_all(int, 0)
    assert pool.run(tasks.nap_pid, 0.05)  # known to take 50 ms
    slow = pool.submit(tasks.nap_pid, 3)
    first = pool.submit(tasks.nap_pid, 0.5)
    quick = [pool.submit(tasks.nap_pid, 0.01) for _ in range(2)]
    done, _ = concurrent.futures.wait(quick, timeout=2.5)
    assert len(done) == 2 and not slow.done()
    assert {f.result() for f in quick} == {first.result()}
    assert slow.result(timeout=10) != first.result()


def test_a_task_does_not_wait_behind_one_of_a_function_never_run(make_pool, tmp_path):
    # a parameter sweep, submitted at once: nothing is known of the function
    # yet and its first task may be the long one, so no task is queued
    # behind a task of it; the others go to the worker that is free
    pool = make_pool(2, qsize=2)
    pool.run_on_all(int, 0)
    gate = tmp_path / "go"
    slow = pool.submit(tasks.pid_when_exists, str(gate))
    quick = [pool.submit(tasks.pid_when_exists, None) for _ in range(5)]
    done, _ = concurrent.futures.wait(quick, timeout=20)
    assert len(done) == 5 and not slow.done()
    gate.touch()
    assert slow.result(timeout=20) not in {f.result() for f in quick}


def test_awaited_tasks_share_their_worker_however_long_they_take(make_pool):
    # a coroutine's task that takes 50 ms keeps its worker from nothing:
    # qsize of them run there at once, as with the function unknown
    pool = make_pool(1, qsize=3)
    assert pool.run(tasks.concurrency_probe, 0.05) == (None, 1)  # 50 ms, awaited
    results = list(pool.map(tasks.concurrency_probe, [0.05] * 9, chunksize=1))
    assert max(seen for _, seen in results) == 3


@pytest.mark.parametrize("delay, held", [(0.005, 2), (0.05, 1)])
def test_a_worker_holds_a_second_task_only_behind_a_short_one(make_pool, delay, held):
    # what the second credit is for: the next short task is at the worker
    # when the one before ends (no round trip between them)
    pool = make_pool(1, qsize=2)
    assert pool.run(tasks.nap_pid, delay)  # its run time is known now
    futures = [pool.submit(tasks.nap_pid, delay) for _ in range(20)]
    most = 0
    while not all(f.done() for f in futures):
        most = max(most, pool.status().workers[0].tasks_held)
    assert most == held
