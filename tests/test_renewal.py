"""``max_tasks_per_child``: a worker runs that many tasks, then a fresh one
takes its place, as with ``ProcessPoolExecutor``.

The contract tests (``tests/contract/test_lifecycle.py``) run the basic case
on local, spawner and SSH pools; these cover the rest on local pools.
``ProcessPoolExecutor`` cannot be the control here: on Python 3.11 its
``max_tasks_per_child`` hangs when tasks are submitted faster than its
workers are replaced (CPython gh-115634), as in the first test below.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import sys
from collections import Counter

import pytest

from distex_zmq import Pool
from distex_zmq.runtime import supervisor
from tests import fault_tasks as ft
from tests import tasks
from tests.helpers import pid_alive, wait_until

pytestmark = pytest.mark.timeout(120)


def pids_of(executor: cf.Executor, count: int) -> Counter[int]:
    """How many of ``count`` tasks each worker process ran."""
    futures = [executor.submit(tasks.pid_and_value, 0, i) for i in range(count)]
    ran = [f.result(timeout=60) for f in futures]
    assert [value for _, value in ran] == list(range(count))
    return Counter(pid for pid, _ in ran)


def test_no_worker_runs_more_tasks_than_the_limit(make_pool) -> None:
    pool = make_pool(2, max_tasks_per_child=2)
    per_pid = pids_of(pool, 12)
    assert max(per_pid.values()) <= 2 and len(per_pid) >= 6


def test_each_worker_runs_the_initializer_and_one_task(make_pool) -> None:
    pool = make_pool(
        1, qsize=2, initializer=tasks.init_state, initargs=("k", 5), max_tasks_per_child=1
    )
    states = [pool.submit(tasks.get_state).result(timeout=30) for _ in range(4)]
    assert len({s["pid"] for s in states}) == 4
    for state in states:
        # the initializer ran once, in the process that ran the task
        assert (state["k"], state["init_pid"], state["init_count"]) == (5, state["pid"], 1)


def test_tiny_tasks_sent_in_groups_stop_at_the_limit(make_pool) -> None:
    # tiny tasks queued behind busy credits share one (the broker groups
    # them): a group takes no more than the worker's tasks left
    pool = make_pool(2, max_tasks_per_child=25)
    pool.run(tasks.pid)  # the function is known to be tiny from here on
    per_pid = pids_of(pool, 600)
    assert max(per_pid.values()) <= 25
    assert pool.status().totals.grouped_tasks > 0


def test_shutdown_runs_what_waits_on_fresh_workers(make_pool) -> None:
    pool = make_pool(2, max_tasks_per_child=1)
    futures = [pool.submit(tasks.pid_and_value, 0.05, i) for i in range(10)]
    pool.shutdown(wait=True)
    ran = [f.result(timeout=0) for f in futures]
    assert [value for _, value in ran] == list(range(10))
    assert len({pid for pid, _ in ran}) == 10


def test_a_renewal_is_no_death(make_pool) -> None:
    pool = make_pool(2, max_tasks_per_child=1, max_worker_deaths=1)
    per_pid = pids_of(pool, 20)
    assert len(per_pid) == 20
    status = pool.status()
    assert status.state == "ready"
    assert status.totals.workers_lost == status.totals.replacements == 0
    assert status.totals.renewals >= 18
    assert wait_until(lambda: pool.status().ready_workers == 2, timeout=30)


def test_a_renewal_on_a_spawner_host_is_no_death(make_pool, tmp_path) -> None:
    # the replacement started as the old worker took its last task, and the
    # spawner, which starts no more workers than the pool opened, refused it:
    # a death (CrashLoopError at max_worker_deaths=1), or a failed start
    from tests.helpers import LoopbackSpawner

    spawner = LoopbackSpawner(tmp_path / "spawner.log")
    try:
        there = f"127.0.0.1:{spawner.port}/2"
        pool = make_pool(None, [there], max_tasks_per_child=1, max_worker_deaths=1)
        per_pid = pids_of(pool, 12)
        assert len(per_pid) == 12
        status = pool.status()
        assert status.state == "ready", status
        assert status.totals.workers_lost == status.totals.replacements == 0
        assert status.totals.renewals >= 10
        assert wait_until(lambda: pool.status().ready_workers == 2, timeout=30)
        pool.shutdown()
    finally:
        spawner.stop()
    assert "refused" not in spawner.log.read_text()


def test_a_task_that_kills_its_worker_still_counts_as_a_death(make_pool) -> None:
    pool = make_pool(1, max_tasks_per_child=1, max_retries=0)
    with pytest.raises(Exception, match="died|exit"):
        pool.run(tasks.exit_hard, 3)
    assert pool.run(tasks.square, 4) == 16
    assert pool.status().totals.workers_lost == 1


@pytest.mark.parametrize(
    "bad, error",
    [(0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError), ("3", TypeError)],
)
def test_a_bad_limit_is_refused_as_process_pool_executor_refuses_it(bad, error) -> None:
    # ValueError for a value of the wrong type too, before
    with pytest.raises(error, match="max_tasks_per_child must be"):
        Pool(1, max_tasks_per_child=bad, lazy_create=True)
    if sys.version_info >= (3, 11) and bad is not True:  # the control takes it from 3.11
        # (and True, an int to it)
        with pytest.raises(error, match="max_tasks_per_child must be"):
            cf.ProcessPoolExecutor(1, max_tasks_per_child=bad)


def test_slow_tasks_are_not_lost_while_workers_renew(make_pool) -> None:
    pool = make_pool(2, qsize=3, max_tasks_per_child=2)
    results = list(pool.map(ft.sleep_then, [0.02] * 30, range(30)))
    assert results == list(range(30))


def test_status_shows_a_spent_worker_leaving_and_its_successor(make_pool) -> None:
    pool = make_pool(1, max_tasks_per_child=1)
    first = pool.run(tasks.pid)
    # the worker that takes this task has had its one: it leaves once it ends
    future = pool.submit(tasks.pid_after, 2.0)

    def leaving_and_ready() -> bool:
        states = {w.pid: w.state for w in pool.status().workers}
        return "leaving" in states.values() and "ready" in states.values()

    assert wait_until(leaving_and_ready, timeout=20)
    status = pool.status()
    (leaving,) = [w for w in status.workers if w.state == "leaving"]
    assert leaving.tasks_held == 1 and leaving.pid != first
    assert status.ready_workers == 1
    assert future.result(timeout=30) == leaving.pid
    # once it has exited, only its successor is left
    assert wait_until(lambda: [w.state for w in pool.status().workers] == ["ready"], timeout=20)


def test_tasks_given_back_unrun_do_not_count(make_pool) -> None:
    # A fresh worker's first task of a function runs slowly (it loads the
    # function) and the rest of its group comes back unrun, to run
    # elsewhere: the worker has run one task, not the group, and runs the
    # limit before it leaves.
    pool = make_pool(2, max_tasks_per_child=25)
    pool.run(tasks.pid)  # the function is known to be tiny from here on
    per_pid = pids_of(pool, 1000)
    assert max(per_pid.values()) <= 25
    # every worker that left ran its 25 (the first, 24 and the task above):
    # 1000 tasks take 40 of them, and the two that run at the end
    counts = sorted(per_pid.values())
    assert len(per_pid) <= 1000 // 25 + 2, counts
    assert len([n for n in counts if n < 24]) <= 2, counts


@pytest.mark.timeout(60)
def test_a_spent_worker_leaves_though_a_task_left_a_thread_running(make_pool) -> None:
    """A thread that is not a daemon holds a leaving worker up for a grace
    only: a spent worker waited for it, and stayed until the shutdown."""
    pool = make_pool(1, max_tasks_per_child=1)
    pids = {pool.run(tasks.leave_thread_running, 600) for _ in range(3)}
    assert len(pids) == 3
    assert wait_until(lambda: not any(pid_alive(pid) for pid in pids), timeout=30)


def test_a_renewed_worker_that_hangs_at_its_exit_is_killed(make_pool, monkeypatch, caplog):
    """A worker renewed while the pool goes on, whose exit hangs (an atexit
    handler that never returns, SIGTERM ignored), is killed: it stayed for
    as long as the pool ran."""
    monkeypatch.setattr(supervisor, "LEAVE_GRACE", 1.0)
    pool = make_pool(1, max_tasks_per_child=1)
    with caplog.at_level(logging.WARNING, logger="distex_zmq.pool"):
        stuck = pool.run(tasks.hang_at_exit)
        assert wait_until(lambda: not pid_alive(stuck), timeout=30)
    assert f"pid {stuck}," in caplog.text and "did not exit" in caplog.text
    assert pool.run(tasks.pid) != stuck
