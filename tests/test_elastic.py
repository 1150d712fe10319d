"""Elastic pools on local workers: ``resize`` up and down while a map runs,
draining and requeueing, initializers of new workers, bad requests.
(Hosts added to and removed from a pool on the cluster: ``test_elastic_hosts``.)
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from distex_zmq import PoolClosedError, WorkerStartError
from distex_zmq.runtime import supervisor
from distex_zmq.runtime.supervisor import SLOW_REPLACEMENT_DELAY
from tests import tasks
from tests.helpers import child_pids, pid_alive, wait_until


def _worker_pids(pool) -> set[int]:
    return set(pool.run_on_all(tasks.pid))


def _map_in_thread(pool, n, delay):
    """Run ``pool.map`` over ``pid_and_value`` in a thread; return (thread,
    results, started) where ``started`` is set after the first result."""
    results: list = []
    started = threading.Event()

    def consume():
        for r in pool.map(tasks.pid_and_value, [delay] * n, range(n), chunksize=1):
            results.append(r)
            started.set()

    thread = threading.Thread(target=consume)
    thread.start()
    return thread, results, started


def test_resize_up_mid_map(make_pool):
    pool = make_pool(1, qsize=1)
    old = _worker_pids(pool)
    thread, results, started = _map_in_thread(pool, 40, 0.05)
    assert started.wait(30)
    pool.resize(3)
    assert pool.total_workers() == 3
    thread.join(60)
    assert [v for _, v in results] == list(range(40))
    pids = {p for p, _ in results}
    assert len(pids - old) >= 1, "a new worker took tasks of the running map"
    assert len(_worker_pids(pool)) == 3


def _most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The most of these ``(start, end)`` intervals that overlap at one time."""
    return max(sum(s <= start < e for s, e in intervals) for start, _ in intervals)


@pytest.mark.parametrize("api", ["map", "map_async"])
def test_a_running_map_widens_to_the_workers_added(make_pool, api):
    """Chunks in flight follow the workers: the window of a map that started
    on one worker (6 chunks of 2) grows to keep 8 busy once 7 more are ready."""
    pool = make_pool(1, qsize=1)
    delays = [0.05] * 240
    resized = threading.Event()

    def grow():
        pool.resize(8)
        resized.set()

    grower = threading.Timer(0.3, grow)
    intervals = []
    try:
        grower.start()
        if api == "map":
            intervals = list(pool.map(tasks.run_interval, delays, chunksize=2))
        else:

            async def consume():
                return [i async for i in pool.map_async(tasks.run_interval, delays, chunksize=2)]

            intervals = asyncio.run(consume())
    finally:
        grower.join(60)
    assert resized.is_set() and pool.total_workers() == 8
    assert len(intervals) == len(delays)
    # without: never more than the 6 chunks of the window it started with
    assert _most_at_once(intervals) == 8, "the 8 workers ran the map's tasks at once"


def test_resize_down_mid_map_leaves_no_process(make_pool):
    pool = make_pool(3, qsize=1)
    before = _worker_pids(pool)
    assert len(before) == 3
    thread, results, started = _map_in_thread(pool, 30, 0.05)
    assert started.wait(30)
    pool.resize(1)
    assert pool.total_workers() == 1
    (left,) = _worker_pids(pool)
    gone = before - {left}
    assert len(gone) == 2
    # resize returns when they have exited
    assert not any(pid_alive(pid) for pid in gone)
    thread.join(60)
    assert [v for _, v in results] == list(range(30))
    assert pool.run(tasks.pid) == left


def test_drained_worker_finishes_its_task_then_exits(make_pool, tmp_path):
    pool = make_pool(2, qsize=1)
    paths = [str(tmp_path / f"started-{i}") for i in range(2)]
    futures = [pool.submit(tasks.note_pid_then_sleep, path, 1.0) for path in paths]
    assert wait_until(lambda: all(os.path.exists(p) for p in paths), timeout=30)
    running_on = {int(Path(p).read_text()) for p in paths}
    assert len(running_on) == 2
    pool.resize(1, drain=True)
    # each task finished on the worker it started on: none was run twice
    assert {f.result(timeout=30) for f in futures} == running_on
    (left,) = _worker_pids(pool)
    (gone,) = running_on - {left}
    assert not pid_alive(gone)


def test_removed_without_drain_requeues_without_a_retry(make_pool, tmp_path):
    # max_retries=0: a task that counted a try for its lost worker would fail
    pool = make_pool(2, qsize=1, max_retries=0)
    paths = [str(tmp_path / f"started-{i}") for i in range(2)]
    futures = [pool.submit(tasks.note_pid_then_sleep, path, 1.0) for path in paths]
    assert wait_until(lambda: all(os.path.exists(p) for p in paths), timeout=30)
    running_on = {int(Path(p).read_text()) for p in paths}
    pool.resize(1, drain=False)
    (left,) = _worker_pids(pool)
    (gone,) = running_on - {left}
    # resize(drain=False) returns once the worker is gone: it did not finish
    assert not pid_alive(gone)
    assert [f.result(timeout=30) for f in futures] == [left, left]


@pytest.mark.timeout(60)
def test_resize_down_ends_though_a_task_left_a_thread_running(make_pool):
    """A thread that is not a daemon holds a leaving worker up for a grace
    only: the resize waited for ever for the worker's exit."""
    pool = make_pool(2)
    pids = set(pool.run_on_all(tasks.leave_thread_running, 600))
    pool.resize(1)
    assert pool.total_workers() == 1
    assert sum(pid_alive(pid) for pid in pids) == 1


@pytest.mark.timeout(60)
def test_resize_down_kills_a_leaving_worker_that_hangs_at_its_exit(make_pool, monkeypatch, caplog):
    """A leaving worker whose exit hangs (an atexit handler that never
    returns, SIGTERM ignored) is killed: the resize waited for its exit for
    ever, and the process stayed."""
    monkeypatch.setattr(supervisor, "LEAVE_GRACE", 1.0)
    pool = make_pool(2)
    pids = set(pool.run_on_all(tasks.hang_at_exit))
    with caplog.at_level(logging.WARNING, logger="distex_zmq.pool"):
        pool.resize(1)
    assert pool.total_workers() == 1
    (gone,) = pids - set(pool.run_on_all(tasks.pid))
    assert not pid_alive(gone)
    assert f"pid {gone}," in caplog.text and "killed with SIGKILL" in caplog.text


def test_shrink_drains_only_until_its_timeout(make_pool):
    pool = make_pool(2, qsize=1, max_retries=0)
    before = _worker_pids(pool)
    futures = [pool.submit(tasks.pid_and_value, 2.0, i) for i in range(2)]
    assert wait_until(lambda: pool.status().totals.in_flight == 2, timeout=10)
    pool.resize(1, drain=True, timeout=0.3)
    (left,) = _worker_pids(pool)
    (gone,) = before - {left}
    assert not pid_alive(gone)
    # the retired worker's task went back to the queue (no try counted, as
    # max_retries=0 shows) and ran on the one left
    assert [f.result(timeout=30) for f in futures] == [(left, 0), (left, 1)]
    with pytest.raises(ValueError, match="timeout"):
        pool.resize(2, timeout=-1)


def test_initializer_runs_on_new_workers(make_pool):
    pool = make_pool(1, initializer=tasks.init_state, initargs=("k", 42))
    pool.resize(3)
    states = pool.run_on_all(tasks.get_state)
    assert len(states) == 3
    assert all(s["k"] == 42 and s["init_pid"] == s["pid"] for s in states)


def test_new_worker_that_fails_to_start_raises_and_leaves(make_pool, tmp_path):
    flag = tmp_path / "fail"
    pool = make_pool(1, initializer=tasks.init_fail_if_exists, initargs=(str(flag),))
    before = _worker_pids(pool)
    flag.touch()
    with pytest.raises(WorkerStartError, match="exists"):
        pool.resize(3)
    assert pool.total_workers() == 1
    assert _worker_pids(pool) == before
    assert pool.run(tasks.square, 3) == 9


def test_resize_async(make_pool):
    pool = make_pool(1)

    async def main():
        await pool.resize_async(2)
        assert len(set(await pool.run_on_all_async(tasks.pid))) == 2
        await pool.resize_async(1)
        assert len(await pool.run_on_all_async(tasks.pid)) == 1

    asyncio.run(main())


def test_bad_requests(make_pool):
    pool = make_pool(1)
    with pytest.raises(ValueError, match="without any worker"):
        pool.resize(None)
    with pytest.raises(ValueError, match="num_workers"):
        pool.resize(-1)
    with pytest.raises(ValueError, match="'nosuchhost'"):
        pool.remove_hosts(["nosuchhost"])
    with pytest.raises(ValueError, match="number of workers"):
        pool.add_hosts(["nosuchhost"])
    with pytest.raises(ValueError, match="ssh://twin/1 and ssh://me@twin/2 name the same host"):
        pool.add_hosts(["ssh://twin/1", "ssh://me@twin/2"])
    assert pool.run(tasks.square, 4) == 16


def test_replacement_due_after_a_shrink_is_not_started(make_pool):
    """A replacement delayed by fast deaths does not grow the pool back."""
    others = child_pids()  # not the pool's (see test_scale)
    pool = make_pool(2)
    _worker_pids(pool)
    for _ in range(3):  # the third death within seconds delays its replacement
        victim = pool.run(tasks.pid)
        os.kill(victim, signal.SIGKILL)
        assert wait_until(lambda v=victim: not pid_alive(v), timeout=10)
    time.sleep(0.2)
    pool.resize(1)
    time.sleep(SLOW_REPLACEMENT_DELAY + 0.5)
    assert len(_worker_pids(pool)) == 1
    assert len(child_pids() - others) == 1


def test_status_lists_the_hosts_in_the_pool_only(make_pool, tmp_path):
    # a host whose adding failed, and a host removed, are no longer listed
    from distex_zmq import HostConnectionError
    from tests.helpers import LoopbackSpawner, free_port

    spawner = LoopbackSpawner(tmp_path / "spawner.log")
    try:
        pool = make_pool(1)
        pool.run(tasks.square, 1)
        nobody = f"127.0.0.1:{free_port()}/1"
        with pytest.raises(HostConnectionError):
            pool.add_hosts([nobody])
        assert [h.spec for h in pool.status().hosts] == ["local"]
        there = f"127.0.0.1:{spawner.port}/1"
        pool.add_hosts([there])
        assert {h.spec: h.state for h in pool.status().hosts} == {"local": "up", there: "up"}
        pool.remove_hosts([there])
        assert [h.spec for h in pool.status().hosts] == ["local"]
        assert pool.run(tasks.square, 3) == 9
    finally:
        spawner.stop()


def test_the_changes_of_the_pools_members_are_logged(make_pool, tmp_path, caplog):
    # an operator at INFO saw nothing of a host joining or leaving, nor of
    # a resize
    from tests.helpers import LoopbackSpawner

    spawner = LoopbackSpawner(tmp_path / "spawner.log")
    there = f"127.0.0.1:{spawner.port}/1"
    try:
        with caplog.at_level(logging.INFO, logger="distex_zmq"):
            pool = make_pool(1)
            pool.run(tasks.square, 1)
            pool.add_hosts([there])
            pool.resize(2)
            pool.resize(1)
            pool.remove_hosts([there])
    finally:
        spawner.stop()
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    python = ".".join(map(str, sys.version_info[:3]))
    for line in (
        f"connected to {there} (Python {python}): starting 1 worker",
        f"added {there}: 1 worker ready",
        "local workers: 2, from 1",
        "local workers: 1, from 2",
        f"removed {there}",
    ):
        assert line in said, said


def test_a_shutdown_during_a_resize_is_what_the_resize_raises(make_pool):
    # the workers the resize started were stopped by the shutdown as they
    # started (their initializer ran): the resize raised that they "failed
    # to start: exit code 0"
    pool = make_pool(1, initializer=time.sleep, initargs=(1.0,))
    pool.run(tasks.square, 1)
    raised: list[BaseException] = []

    def resize() -> None:
        try:
            pool.resize(3)
        except BaseException as e:  # noqa: BLE001 - the test looks at it
            raised.append(e)

    thread = threading.Thread(target=resize)
    thread.start()
    assert wait_until(lambda: len(pool.status().workers) == 3, timeout=10)
    pool.shutdown(wait=False)
    thread.join(timeout=30)
    [error] = raised
    assert isinstance(error, PoolClosedError), repr(error)
    assert str(error) == "the pool was shut down during the change"


def _runs(directory: Path) -> dict[int, int]:
    """How many times each input ran (``tasks.run_once_noted``'s files)."""
    counts: dict[int, int] = {}
    for path in directory.glob("run-*"):
        i = int(path.name.split("-")[1])
        counts[i] = counts.get(i, 0) + 1
    return counts


def test_a_failed_resize_lets_the_tasks_its_workers_took_finish(make_pool, tmp_path):
    # the second new worker fails its start after 2 s, while the first took
    # queued tasks: the workers the call added were killed, and their tasks
    # ran again elsewhere (twice their side effects)
    started, runs = tmp_path / "started", tmp_path / "runs"
    started.mkdir()
    runs.mkdir()
    pool = make_pool(1, initializer=tasks.init_fail_nth, initargs=(str(started), 3, 2.0))
    pool.run(tasks.square, 1)
    futures = [pool.submit(tasks.run_once_noted, str(runs), i, 1.0) for i in range(6)]
    with pytest.raises(WorkerStartError, match="worker 3 fails to start"):
        pool.resize(3)
    assert [f.result(timeout=60) for f in futures] == list(range(6))
    assert _runs(runs) == dict.fromkeys(range(6), 1)
    assert pool.status().totals.retried == 0
    # the worker that took tasks left once they were done
    assert wait_until(lambda: len(pool.status().workers) == 1, timeout=10), pool.status().workers


def test_status_counts_the_workers_a_host_keeps(make_pool):
    # while a resize down drains, the workers leaving are listed so, and
    # their host counts the workers that stay
    pool = make_pool(3)
    pool.run_on_all(tasks.square, 1)
    futures = [pool.submit(time.sleep, 1.0) for _ in range(3)]
    assert wait_until(lambda: pool.status().totals.in_flight == 3, timeout=10)
    resizing = threading.Thread(target=pool.resize, args=(1,))
    resizing.start()
    try:
        assert wait_until(
            lambda: sum(w.state == "leaving" for w in pool.status().workers) == 2, timeout=10
        )
        (local,) = pool.status().hosts
        assert (local.spec, local.state, local.workers) == ("local", "up", 1)
    finally:
        resizing.join(30)
        for f in futures:
            f.result(timeout=30)


@pytest.fixture
def spawners(tmp_path, monkeypatch):
    """Two spawners on loopback, the second with ``DZQ_FAIL_HERE`` set in its
    environment (and so in its workers'), which the client's lacks."""
    from tests.helpers import LoopbackSpawner

    good = LoopbackSpawner(tmp_path / "good.log")
    monkeypatch.setenv("DZQ_FAIL_HERE", "1")
    try:
        bad = LoopbackSpawner(tmp_path / "bad.log")
    except BaseException:
        good.stop()
        raise
    monkeypatch.delenv("DZQ_FAIL_HERE")
    try:
        yield good, bad
    finally:
        good.stop()
        bad.stop()


def test_a_failed_add_hosts_lets_the_tasks_its_workers_took_finish(make_pool, spawners, tmp_path):
    # the good host's workers took queued tasks while the bad one's worker
    # failed its start: they were killed, their tasks ran again elsewhere,
    # and the failed worker stayed listed as starting for good
    good, bad = spawners
    runs = tmp_path / "runs"
    runs.mkdir()
    pool = make_pool(1, initializer=tasks.init_fail_where, initargs=("DZQ_FAIL_HERE", 2.0))
    pool.run(tasks.square, 1)
    futures = [pool.submit(tasks.run_once_noted, str(runs), i, 1.0) for i in range(8)]
    with pytest.raises(WorkerStartError, match="DZQ_FAIL_HERE is set here"):
        pool.add_hosts([f"127.0.0.1:{good.port}/2", f"127.0.0.1:{bad.port}/1"])
    assert [f.result(timeout=60) for f in futures] == list(range(8))
    assert _runs(runs) == dict.fromkeys(range(8), 1)

    def only_local() -> bool:
        status = pool.status()
        return [h.spec for h in status.hosts] == ["local"] and [w.kind for w in status.workers] == [
            "local"
        ]

    assert wait_until(only_local, timeout=20), pool.status()


def test_a_host_removed_while_its_workers_renew_stays_removed(make_pool, spawners):
    # a renewal (max_tasks_per_child) that was due as the host left started
    # a worker there again: the host came back as "connecting", with a
    # worker "starting" for good
    good, _ = spawners
    there = f"127.0.0.1:{good.port}/1"
    pool = make_pool(1, [there], max_tasks_per_child=2)
    results = pool.map_async(tasks.square, range(40), chunksize=1)

    async def consume() -> list[int]:
        return [x async for x in results]

    remover = threading.Thread(target=pool.remove_hosts, args=([there],))
    remover.start()
    assert asyncio.run(consume()) == [x * x for x in range(40)]
    remover.join(30)
    time.sleep(1.0)  # a renewal's replacement would have started by now
    status = pool.status()
    assert [h.spec for h in status.hosts] == ["local"], status.hosts
    assert all(w.kind == "local" for w in status.workers), status.workers


def test_local_workers_added_to_a_pool_of_hosts_only(make_pool, spawners):
    # Pool(None, hosts) then resize(1): its local host said "connecting" for good
    good, _ = spawners
    pool = make_pool(None, [f"127.0.0.1:{good.port}/1"])
    pool.run(tasks.square, 1)
    pool.resize(1)
    states = {h.spec: (h.state, h.workers) for h in pool.status().hosts}
    assert states == {f"127.0.0.1:{good.port}/1": ("up", 1), "local": ("up", 1)}
    # a host is named by host and port too, and the error lists them whole
    with pytest.raises(ValueError, match=rf"its hosts: 127.0.0.1:{good.port}/1\)"):
        pool.remove_hosts(["127.0.0.1:1"])
    pool.remove_hosts([f"127.0.0.1:{good.port}"])
    assert [h.spec for h in pool.status().hosts] == ["local"]
