"""``Pool.status()``, a truthful ``total_workers()``, where errors come from
(``host``, ``pid``, ``index``), and ``progress=`` on maps.

The last test needs the network-namespace cluster: run this file under the
cluster lock (see ``tests/conftest.py``), or deselect it with ``-k "not ssh"``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import os
import platform
import re
import socket
import sys
import threading
import time

import pytest

from distex_zmq import (
    HostConnectionError,
    HostStatus,
    PoolStatus,
    RemoteException,
    SerializationError,
    TaskTimeoutError,
    Totals,
    WorkerLostError,
    WorkerStatus,
)
from tests import fault_tasks as ft
from tests import tasks
from tests.helpers import LoopbackSpawner, MakePool, wait_until
from tests.multihost import REMOTE_PYTHON, unavailable

HERE = socket.gethostname()


# status and total_workers


def test_status_counts_done_and_failed(make_pool: MakePool) -> None:
    pool = make_pool(2)
    assert wait_until(lambda: pool.status().state == "ready", timeout=30)
    assert list(pool.map(tasks.square, range(10), chunksize=1)) == [x * x for x in range(10)]
    for _ in range(3):
        with pytest.raises(ValueError):
            pool.run(tasks.fail_on, 3)
    status = pool.status()
    assert isinstance(status, PoolStatus)
    assert status.state == "ready" and status.error is None
    assert status.configured_workers == 2 == status.ready_workers
    assert status.totals.done == 10 and status.totals.failed == 3
    assert status.totals.queued == status.totals.in_flight == 0
    assert status.totals.tasks_submitted >= 13 and status.totals.functions_cached == 2
    assert sum(w.done for w in status.workers) == 10
    assert sum(w.failed for w in status.workers) == 3
    pids = set(pool.run_on_all(os.getpid))
    assert {w.pid for w in status.workers} == pids
    assert {(w.kind, w.state, w.host) for w in status.workers} == {("local", "ready", HERE)}
    # each worker's Python version, from its hello (it was not shown)
    assert {w.python for w in status.workers} == {platform.python_version()}
    assert all(w.started_at <= status.taken_at for w in status.workers)
    (host,) = status.hosts
    assert (host.spec, host.kind, host.state, host.workers) == ("local", "local", "up", 2)
    assert host.python == platform.python_version()
    assert repr(pool) == "<Pool 2/2 workers up, ready>"


def test_status_shows_running_and_queued_tasks(make_pool: MakePool) -> None:
    pool = make_pool(1, qsize=1)
    pool.run(int, 0)
    futures = [pool.submit(ft.sleep_then, 0.5, x) for x in range(3)]

    def busy() -> bool:
        totals = pool.status().totals
        return totals.in_flight == 1 and totals.queued == 2

    assert wait_until(busy, timeout=10)
    status = pool.status()
    (worker,) = status.workers
    assert worker.tasks_held == 1
    # printed for an operator: the pool, its tasks, a line per host and worker
    lines = str(status).splitlines()
    assert lines[0] == "pool: ready, 1 of 1 workers ready (0 lost, 0 replaced, 0 renewed)"
    totals = status.totals
    assert lines[1] == (
        f"tasks: {totals.queued} queued, {totals.in_flight} in flight, {totals.done} done, "
        f"0 failed, 0 retried; {totals.tasks_submitted} submitted"
    )
    assert lines[2] == "hosts:"
    assert lines[3].split() == ["local", "local", "up", "1", "worker", "Python"] + [
        platform.python_version()
    ]
    assert lines[4] == "workers:"
    assert re.fullmatch(
        rf"  {worker.name}  {re.escape(HERE)}  pid {worker.pid}  ready  holds 1 for \d+\.\d s"
        rf"  done \d+, failed 0  task \d+ \(sleep_then\)",
        lines[5],
    ), lines[5]
    assert len(lines) == 6
    assert [f.result(timeout=10) for f in futures] == [0, 1, 2]
    status = pool.status()
    assert status.totals.in_flight == status.totals.queued == 0
    assert status.workers[0].tasks_held == 0


def test_a_printed_status_says_why_the_pool_failed_and_when_a_host_is_tried_again() -> None:
    # what the pool's states bring that a healthy local pool does not show
    failed = PoolStatus(
        "failed",
        HostConnectionError("SSH to maxi:22: cannot connect\n(refused)"),
        2,
        (),
        (HostStatus("ssh://maxi/2", "ssh", "lost", 0, 1004.25, "reset\nby peer"),),
        Totals(0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
        1000.0,
    )
    lines = str(failed).splitlines()
    assert lines[0] == (
        "pool: failed, 0 of 2 workers ready (0 lost, 0 replaced, 0 renewed); "
        "HostConnectionError: SSH to maxi:22: cannot connect (refused)"
    )
    assert lines[2:] == [
        "hosts:",
        "  ssh://maxi/2  ssh  lost  0 workers    retry in 4.2 s: reset by peer",
    ]
    starting = WorkerStatus("ssh-maxi-1", "maxi", None, "ssh", "starting", 0, 0, 0, 990.0)
    line = str(dataclasses.replace(failed, workers=(starting,))).splitlines()[-1]
    assert line == "  ssh-maxi-1  maxi  pid -  starting  holds 0  done 0, failed 0"


@pytest.mark.timeout(60)
def test_status_and_a_running_future_name_the_task_and_its_worker(
    make_pool: MakePool, tmp_path
) -> None:
    """A task that hangs is found: which worker holds it, since when, which
    input; and where the future of a submitted one runs (they said only how
    many tasks each worker held)."""
    pool = make_pool(1, qsize=2)
    (pid,) = pool.run_on_all(os.getpid)
    go = str(tmp_path / "go")
    inputs = [None, None, go, None]
    with concurrent.futures.ThreadPoolExecutor(1) as caller:
        mapped = caller.submit(lambda: list(pool.map(tasks.pid_when_exists, inputs, chunksize=1)))
        try:
            taken: list[PoolStatus] = []

            def holds_the_hung_input() -> bool:
                taken[:] = [pool.status()]
                (worker,) = taken[0].workers
                return worker.tasks_held == 2 and "input #2 " in worker.tasks[0]

            assert wait_until(holds_the_hung_input, timeout=20)
            (status,) = taken
            (worker,) = status.workers
            assert worker.pid == pid
            assert len(worker.tasks) == 2, worker.tasks
            assert worker.tasks[0].endswith("(pid_when_exists, input #2 of a map)"), worker.tasks
            assert worker.tasks[1].endswith("(pid_when_exists, input #3 of a map)"), worker.tasks
            assert worker.busy_since is not None and worker.busy_since <= status.taken_at
        finally:
            open(go, "w").close()  # also when an assertion failed: the map ends
        assert mapped.result(timeout=30) == [pid] * 4
    (worker,) = pool.status().workers
    assert (worker.tasks_held, worker.tasks, worker.busy_since) == (0, (), None)

    go = str(tmp_path / "go again")
    future = pool.submit(tasks.pid_when_exists, go)
    try:
        assert wait_until(future.running, timeout=20)
        (worker,) = pool.status().workers
        (held,) = worker.tasks
        assert held.endswith("(pid_when_exists)"), held
        assert f"state=running {held} on worker pid {pid} on {HERE}>" in repr(future), repr(future)
    finally:
        open(go, "w").close()
    assert future.result(timeout=30) == pid
    assert "on worker" not in repr(future), repr(future)


@pytest.mark.timeout(60)
def test_the_pool_logs_its_start_and_end_at_debug(make_pool: MakePool, caplog) -> None:
    # at DEBUG it said only each worker's hello and exit
    caplog.set_level(logging.DEBUG, logger="distex_zmq.pool")
    pool = make_pool(2)
    assert pool.run(tasks.square, 3) == 9
    with pytest.raises(ValueError):
        pool.run(tasks.fail_on, 3)
    pool.shutdown()
    messages = [r.getMessage() for r in caplog.records if r.name == "distex_zmq.pool"]
    assert any(
        re.match(r"up: 2 workers ready in [\d.]+ s, the broker at ipc://", m) for m in messages
    )
    assert messages[-1].startswith(
        "shut down: 1 tasks done (a map's chunk counts once), 1 failed, 0 retried; "
        "0 workers lost, 0 replaced"
    ), messages


def test_status_leaves_out_a_cancelled_queued_task_at_once(make_pool: MakePool) -> None:
    """A queued task whose future is cancelled, by ``cancel`` or by
    cancelling ``run_async``, is no longer counted as queued, without waiting
    for a worker to be free for it."""
    pool = make_pool(1, qsize=1)
    pool.run(int, 0)
    running = pool.submit(ft.sleep_then, 3, "done")
    queued = [pool.submit(ft.sleep_then, 0, x) for x in range(2)]
    assert wait_until(lambda: pool.status().totals.queued == 2, timeout=10)
    assert queued[0].cancel()
    assert pool.status().totals.queued == 1

    async def cancel_run_async() -> None:
        task = asyncio.ensure_future(pool.run_async(ft.sleep_then, 0, "never"))
        await asyncio.sleep(0.1)
        assert (await pool.status_async()).totals.queued == 2
        task.cancel()
        await asyncio.sleep(0)  # the future's done callbacks run
        assert (await pool.status_async()).totals.queued == 1

    asyncio.run(cancel_run_async())
    assert running.result(timeout=10) == "done"
    assert queued[1].result(timeout=10) == 1
    assert pool.status().totals.queued == 0


def test_status_follows_a_worker_kill(make_pool: MakePool, tmp_path) -> None:
    marker = tmp_path / "slow"
    pool = make_pool(2, max_retries=0, initializer=tasks.slow_start_if, initargs=(str(marker), 3))
    pool.run_on_all(int, 0)
    marker.touch()  # the replacement takes 3 s to be ready
    with pytest.raises(WorkerLostError) as info:
        pool.run(tasks.exit_hard, 3)
    victim = info.value.pid
    # the dead one is lost, its replacement starts: one worker up
    assert pool.total_workers() == 1 == pool._max_workers
    assert repr(pool) == "<Pool 1/2 workers up, ready>"
    status = pool.status()
    states = {w.state for w in status.workers}
    assert states == {"lost", "ready", "starting"}, status.workers
    (lost,) = [w for w in status.workers if w.state == "lost"]
    assert lost.pid == victim and lost.failed == 0
    assert status.totals.workers_lost == 1 and status.totals.replacements == 1
    assert status.totals.failed == 1 and status.ready_workers == 1
    assert status.hosts[0].workers == 2
    assert wait_until(lambda: pool.total_workers() == 2, timeout=20)
    status = pool.status()
    assert status.ready_workers == 2 and victim not in {
        w.pid for w in status.workers if w.state == "ready"
    }


def test_a_drained_worker_is_leaving_until_it_exits(make_pool: MakePool, tmp_path) -> None:
    # resize retires a worker: it drains, is told to stop, and exits; while
    # its exit takes time it is "leaving", with its pid, not "starting"
    release = tmp_path / "release"
    pool = make_pool(2)
    pids = set(pool.run_on_all(tasks.hold_exit_until, str(release)))

    def exiting() -> list[int]:
        return [pid for pid in pids if os.path.exists(f"{release}.{pid}.exiting")]

    shrink = threading.Thread(target=pool.resize, args=(1,))
    shrink.start()
    try:
        assert wait_until(exiting, timeout=30)
        (leaver,) = exiting()
        (stayer,) = pids - {leaver}
        status = pool.status()
        states = {w.pid: w.state for w in status.workers}
        assert states == {leaver: "leaving", stayer: "ready"}, status.workers
        # its host counts the workers that stay (starting or ready)
        assert status.ready_workers == 1 and status.hosts[0].workers == 1
    finally:
        release.touch()
        shrink.join(timeout=30)
    assert not shrink.is_alive()
    assert [(w.pid, w.state) for w in pool.status().workers] == [(stayer, "ready")]


def test_status_while_every_host_is_lost(make_pool: MakePool, tmp_path) -> None:
    # the pool's only host (a spawner) is killed: no worker is left, and the
    # status says so until the spawner is back and the pool reconnects
    spawner = LoopbackSpawner(tmp_path / "spawner.log")
    try:
        pool = make_pool(None, [f"127.0.0.1:{spawner.port}/1"], heartbeat_timeout=1.0)
        assert pool.run(tasks.square, 3) == 9
        assert pool.status().state == "ready"
        spawner.proc.kill()
        spawner.proc.wait()
        assert wait_until(lambda: pool.status().state == "hosts lost", timeout=30)
        status = pool.status()
        assert status.error is None and status.ready_workers == 0
        assert status.hosts[0].state in ("lost", "reconnecting")
        assert repr(pool) == "<Pool 0/1 workers up, hosts lost>"
        text = str(status)
        assert text.startswith("pool: hosts lost, 0 of 1 workers ready (1 lost, ")
        (host_line,) = [line for line in text.splitlines() if f":{spawner.port}/1" in line]
        assert host_line.split()[:4] == [f"127.0.0.1:{spawner.port}/1", "spawner"] + [
            status.hosts[0].state,
            "0",
        ]
        error = status.hosts[0].last_error
        assert error and " ".join(error.split()) in host_line
        waiting = pool.submit(tasks.square, 4)
        spawner = LoopbackSpawner(tmp_path / "again.log", port=spawner.port)
        assert waiting.result(timeout=60) == 16
        assert pool.status().state == "ready"
        assert repr(pool) == "<Pool 1/1 workers up, ready>"
    finally:
        spawner.stop()


def test_status_lists_every_host_from_the_start(make_pool: MakePool, tmp_path) -> None:
    # a status taken while the pool started listed no host at all, so an
    # operator could not tell a host still connecting from one left out
    spawner = LoopbackSpawner(tmp_path / "spawner.log")
    try:
        spec = f"127.0.0.1:{spawner.port}/1"
        pool = make_pool(1, [spec])
        status = pool.status()
        assert [(h.spec, h.kind) for h in status.hosts] == [("local", "local"), (spec, "spawner")]
        if status.state == "starting":
            assert status.hosts[1].state in ("connecting", "up")
        assert pool.run(tasks.square, 3) == 9
        assert [(h.state, h.workers) for h in pool.status().hosts] == [("up", 1), ("up", 1)]
    finally:
        spawner.stop()


def test_total_workers_before_start_and_after_shutdown(make_pool: MakePool) -> None:
    pool = make_pool(3, lazy_create=True)
    assert pool.total_workers() == 3 == pool._max_workers
    status = pool.status()
    assert status.state == "not started" and status.workers == ()
    assert repr(pool) == "<Pool 0/3 workers up, not started>"
    pool.run(int, 0)
    pool.shutdown()
    assert pool.total_workers() == 0 and pool._max_workers == 3
    status = pool.status()
    assert status.state == "shut down" and status.totals.done == 1
    assert {w.state for w in status.workers} == {"stopped"}
    assert repr(pool) == "<Pool 0/3 workers up, shut down>"


def test_status_async_and_on_the_pool_loop(make_pool: MakePool) -> None:
    pool = make_pool(1)

    async def main() -> PoolStatus:
        await pool.run_async(tasks.square, 2)
        return await pool.status_async()

    assert asyncio.run(main()).totals.done == 1
    # in a done callback, on the pool loop: taken there, at once
    seen: concurrent.futures.Future[PoolStatus] = concurrent.futures.Future()
    pool.submit(tasks.square, 3).add_done_callback(lambda f: seen.set_result(pool.status()))
    assert seen.result(timeout=10).totals.done >= 1


# where errors come from


def test_a_remote_exception_names_its_worker(make_pool: MakePool) -> None:
    pool = make_pool(1)
    pid = pool.run(os.getpid)
    with pytest.raises(ValueError) as info:
        pool.run(tasks.fail_on, 3)
    cause = info.value.__cause__
    assert isinstance(cause, RemoteException)
    assert (cause.host, cause.pid, cause.index) == (HERE, pid, None)
    assert str(cause).startswith(f"raised on worker pid {pid} on {HERE}\n")
    assert "Remote traceback" in str(cause)
    for chunksize in (1, 2, 4, None):
        with pytest.raises(ValueError) as info:
            list(pool.map(tasks.fail_on, range(10), [7] * 10, chunksize=chunksize))
        cause = info.value.__cause__
        assert isinstance(cause, RemoteException)
        assert (cause.host, cause.pid, cause.index) == (HERE, pid, 7), chunksize
        assert "(input #7 of a map)" in str(cause)


def test_a_map_input_index_after_adaptive_chunks(make_pool: MakePool) -> None:
    # tiny inputs are grouped into chunks, then a single one follows: the
    # index is the input's, not the task's
    pool = make_pool(1)
    n = 3000
    with pytest.raises(ValueError) as info:
        list(pool.map(tasks.fail_on, range(n), [n - 1] * n))
    assert info.value.__cause__.index == n - 1  # type: ignore[union-attr]


def test_worker_lost_error_names_its_worker(make_pool: MakePool) -> None:
    pool = make_pool(1, max_retries=0)
    pid = pool.run(os.getpid)
    with pytest.raises(WorkerLostError) as info:
        pool.run(tasks.exit_hard, 3)
    assert (info.value.host, info.value.pid, info.value.index) == (HERE, pid, None)
    with pytest.raises(WorkerLostError) as info:
        list(pool.map(ft.poison_at, range(6), [4] * 6, chunksize=1))
    assert info.value.index == 4 and info.value.host == HERE and info.value.pid is not None


def test_task_timeout_error_names_its_worker(make_pool: MakePool) -> None:
    pool = make_pool(1, task_timeout=0.5)
    pid = pool.run(os.getpid)
    with pytest.raises(TaskTimeoutError) as info:
        pool.run(ft.sleep_then, 10, 0)
    assert (info.value.host, info.value.pid, info.value.index) == (HERE, pid, None)
    inputs = [(0, 0), (0, 1), (10, 2)]
    with pytest.raises(TaskTimeoutError) as info:
        list(pool.map(ft.sleep_then, *zip(*inputs, strict=True)))
    assert info.value.index == 2 and info.value.host == HERE


def test_serialization_error_names_its_worker(make_pool: MakePool) -> None:
    pool = make_pool(1)
    pid = pool.run(os.getpid)
    with pytest.raises(SerializationError) as info:
        pool.run(ft.unpicklable_result)
    assert (info.value.host, info.value.pid, info.value.index) == (HERE, pid, None)
    with pytest.raises(SerializationError) as info:
        list(pool.map(tasks.apply, [tasks.square, ft.unpicklable_result], [2, 0]))
    assert (info.value.host, info.value.pid, info.value.index) == (HERE, pid, 1)


# progress


class Calls:
    """A progress callback that keeps what it was told."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int | None]] = []

    def __call__(self, done: int, total: int | None) -> None:
        self.calls.append((done, total))

    def check(self, n: int, total: int | None) -> None:
        """Every input counted once: done only grows, and ends at ``n``."""
        assert self.calls, "no progress reported"
        dones = [d for d, _ in self.calls]
        assert dones == sorted(dones) and len(set(dones)) == len(dones), self.calls
        assert self.calls[-1] == (n, total)
        assert {t for _, t in self.calls} == {total}


@pytest.mark.parametrize(
    "ordered, chunksize", [(True, 1), (False, 1), (True, 7), (False, 7), (True, None)]
)
def test_progress_counts_every_input_once(shared_pool, ordered, chunksize) -> None:
    n = 2000
    calls = Calls()
    results = shared_pool.map(
        tasks.square, range(n), ordered=ordered, chunksize=chunksize, progress=calls
    )
    assert sorted(results) == [x * x for x in range(n)]
    calls.check(n, n)


def test_progress_of_an_input_without_length(shared_pool) -> None:
    calls = Calls()
    assert len(list(shared_pool.map(tasks.square, iter(range(300)), progress=calls))) == 300
    calls.check(300, None)
    calls = Calls()
    assert len(list(shared_pool.map(tasks.add, range(50), range(80), progress=calls))) == 50
    calls.check(50, 50)


def test_progress_of_a_map_of_no_iterable_or_of_a_range_too_long_for_len(shared_pool) -> None:
    # no iterable: an empty map of length 0 (was: ValueError from min())
    calls = Calls()
    assert list(shared_pool.map(tasks.square, progress=calls)) == []
    assert calls.calls in ([], [(0, 0)])
    # len(range(10**20)) overflows: it bounds nothing (was: OverflowError)
    calls = Calls()
    assert list(shared_pool.map(tasks.add, range(10**20), [1, 2], progress=calls)) == [1, 3]
    calls.check(2, 2)
    calls = Calls()
    squares = shared_pool.map(tasks.square, range(10**20), progress=calls)
    assert [next(squares) for _ in range(5)] == [0, 1, 4, 9, 16]
    squares.close()
    assert {t for _, t in calls.calls} == {None}


def test_progress_of_an_async_map(shared_pool) -> None:
    async def gen():
        for x in range(100):
            yield x

    async def main() -> None:
        calls = Calls()
        results = [r async for r in shared_pool.map_async(tasks.square, range(500), progress=calls)]
        assert len(results) == 500
        calls.check(500, 500)
        calls = Calls()
        results = [r async for r in shared_pool.map_async(tasks.square, gen(), progress=calls)]
        assert len(results) == 100
        calls.check(100, None)

    asyncio.run(main())


def test_progress_counts_an_error(shared_pool) -> None:
    calls = Calls()
    with pytest.raises(ValueError):
        list(shared_pool.map(tasks.fail_on, [0], [0], progress=calls))
    assert calls.calls[-1] == (1, 1)
    calls = Calls()
    with pytest.raises(ValueError):
        list(shared_pool.map(tasks.fail_on, range(10), [0] * 10, progress=calls))
    # the error, and the results that reached the map before it was raised
    assert 1 <= calls.calls[-1][0] <= 10 and calls.calls[-1][1] == 10


class Stamps:
    """A progress callback that keeps when it was told what."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.calls: list[tuple[float, int]] = []

    def __call__(self, done: int, total: int | None) -> None:
        self.calls.append((time.monotonic() - self.started, done))

    def most_before(self, seconds: float) -> int:
        """The highest count reported in the first ``seconds``."""
        return max((done for at, done in self.calls if at < seconds), default=0)


@pytest.mark.timeout(60)
def test_progress_counts_results_held_behind_a_slow_input(pool) -> None:
    # an ordered map holds the results after a slow first input until it
    # ends; they count as they reach the map, not once they can be yielded
    stamps = Stamps()
    results = list(pool.map(time.sleep, [3] + [0.01] * 10, chunksize=1, progress=stamps))
    assert len(results) == 11
    assert stamps.most_before(2.5) == 10, stamps.calls
    assert stamps.calls[-1][1] == 11


@pytest.mark.timeout(60)
def test_progress_held_back_by_its_interval_is_reported_while_the_map_waits(pool) -> None:
    # quick inputs, then a slow one: the count of the last quick ones comes
    # within the interval of the report before it, and must not wait for
    # the slow input's end to be shown
    stamps = Stamps()
    results = list(pool.map(time.sleep, [0.01] * 10 + [3], chunksize=1, progress=stamps))
    assert len(results) == 11
    assert stamps.most_before(2.5) == 10, stamps.calls
    assert stamps.calls[-1][1] == 11


def test_progress_bar(shared_pool, capsys) -> None:
    pytest.importorskip("tqdm")
    assert len(list(shared_pool.map(tasks.square, range(100), progress=True))) == 100
    err = capsys.readouterr().err
    assert "100/100" in err


def test_progress_bar_without_tqdm(shared_pool, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with pytest.raises(ImportError, match=r"distex_zmq\[progress\]"):
        shared_pool.map(tasks.square, range(3), progress=True)


# the SSH side (needs the cluster: run under its lock)


@pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))
@pytest.mark.timeout(120)
def test_status_of_an_ssh_host_cut_off_and_back(ssh_home, make_pool: MakePool) -> None:
    pool = make_pool(
        1,
        ["ssh://dzq-b/2"],
        remote_python=REMOTE_PYTHON,
        heartbeat_timeout=2,
        connect_timeout=2,
    )
    try:  # the link must be up again before the pool shuts down
        pool.run_on_all(int, 0)

        def host() -> tuple[str, str, int]:
            h = pool.status().hosts[1]
            return h.spec, h.state, h.workers

        assert host() == ("ssh://dzq-b/2", "up", 2)
        ssh = [w for w in pool.status().workers if w.kind == "ssh"]
        assert len(ssh) == 2 and {w.host for w in ssh} == {"dzq-b"}
        ssh_home.link("dzq-b", up=False)
        assert wait_until(lambda: host()[1] != "up", timeout=20)
        status = pool.status()
        assert status.hosts[1].state in ("lost", "reconnecting")
        assert status.hosts[1].last_error
        assert {w.state for w in status.workers if w.kind == "ssh"} == {"lost"}
        assert pool.total_workers() == 1
        ssh_home.link("dzq-b", up=True)
        assert wait_until(lambda: host() == ("ssh://dzq-b/2", "up", 2), timeout=60)
        assert wait_until(lambda: pool.total_workers() == 3, timeout=30)
        assert pool.status().totals.workers_lost == 2
    finally:
        ssh_home.link("dzq-b", up=True)
