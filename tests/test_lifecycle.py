"""Start-up, shutdown and cleanup: processes, threads, ipc files, worker loops."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import glob
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import weakref
from pathlib import Path

import pytest

from distex_zmq import LoopType, Pool, PoolClosedError, WorkerStartError
from distex_zmq.runtime.ipc import SOCKET_NAME, UNBOUND_STALE_AFTER
from tests import tasks
from tests.helpers import (
    LeakCheck,
    LoopbackSpawner,
    child_pids,
    pid_alive,
    pool_threads,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent


def ipc_dirs() -> set[str]:
    """The ipc directories of this process's pools (named by its pid): those
    of other processes' pools come and go meanwhile."""
    return set(glob.glob(os.path.join(tempfile.gettempdir(), f"distex_zmq-{os.getpid()}-*")))


def test_shutdown_waits_for_submitted_tasks():
    pool = Pool(2, qsize=1)
    pids = pool.run_on_all(tasks.pid)
    futures = [pool.submit(tasks.sleep_return, 0.1, i) for i in range(6)]
    pool.shutdown()
    assert all(f.done() for f in futures)
    assert [f.result(timeout=0) for f in futures] == list(range(6))
    assert not any(pid_alive(pid) for pid in pids)


def test_shutdown_with_cancel_futures_runs_only_what_started(tmp_path):
    pool = Pool(1, qsize=1)
    pool.run_on_all(int, 0)
    running = pool.submit(tasks.sleep_return, 0.4, "running")
    markers = [tmp_path / f"queued{i}" for i in range(5)]
    queued = [pool.submit(tasks.touch, str(m), i) for i, m in enumerate(markers)]
    time.sleep(0.1)
    pool.shutdown(cancel_futures=True)
    assert running.result(timeout=0) == "running"
    for future in queued:
        assert future.done()
        with pytest.raises(concurrent.futures.CancelledError):
            future.result(timeout=0)
    assert not any(m.exists() for m in markers), "cancelled tasks ran"


def test_shutdown_with_cancel_futures_marks_futures_cancelled():
    pool = Pool(1, qsize=1)
    pool.run_on_all(int, 0)
    running = pool.submit(tasks.sleep_return, 0.3, "running")
    queued = [pool.submit(tasks.square, i) for i in range(4)]
    time.sleep(0.05)
    pool.shutdown(cancel_futures=True)
    assert running.result(timeout=0) == "running"
    assert not running.cancelled()
    # as concurrent.futures.Executor.shutdown(cancel_futures=True) does
    assert [f.cancelled() for f in queued] == [True] * 4


def test_shutdown_with_cancel_futures_ends_a_map_in_another_thread():
    pool = Pool(1, qsize=1)
    pool.run_on_all(int, 0)
    results: list[int] = []
    errors: list[BaseException] = []

    def consume():
        try:
            results.extend(pool.map(tasks.sleep_return, [0.2] * 50, [1] * 50))
        except concurrent.futures.CancelledError as e:
            errors.append(e)

    thread = threading.Thread(target=consume)
    thread.start()
    time.sleep(0.3)
    pool.shutdown(cancel_futures=True)
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert len(results) < 50
    assert len(errors) == 1
    assert "shut down with cancel_futures=True before task" in str(errors[0])
    assert "input #" in str(errors[0])


@pytest.mark.timeout(60)
def test_a_map_read_on_in_another_thread_says_its_inputs_taken_after_the_shutdown_did_not_run():
    # the shutdown waits for the tasks submitted; the map, which submits its
    # inputs as its results are taken, takes more while it waits: those fail,
    # and said they had not finished, as if a task that ran had been cut
    pool = Pool(2)
    pool.run_on_all(int, 0)
    results: list[int] = []
    errors: list[BaseException] = []

    def consume():
        try:
            results.extend(pool.map(tasks.sleep_return, [0.05] * 200, range(200)))
        except PoolClosedError as e:
            errors.append(e)

    thread = threading.Thread(target=consume)
    thread.start()
    while not results:
        time.sleep(0.01)
    pool.shutdown()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert len(errors) == 1, (len(results), errors)
    assert re.search(
        r"shut down before task \d+ \(sleep_return, input #\d+ of a map\) ran: a map submits "
        r"its inputs as its results are taken, and took this one after the shutdown began",
        str(errors[0]),
    ), str(errors[0])


@pytest.mark.parametrize("kind", ["map", "map_async"])
def test_a_map_of_an_async_input_read_after_the_shutdown_raises(kind):
    """A map of an async iterable reads it in a task of its own; an input
    read once another thread has shut the pool down cannot run, and the map
    raises PoolClosedError instead of waiting for ever for its result."""
    pool = Pool(1)
    pool.run_on_all(int, 0)
    first_taken = threading.Event()
    shut_down = threading.Event()
    outcome: list[object] = []

    async def inputs():
        yield 1
        while not shut_down.is_set():
            await asyncio.sleep(0.01)
        yield 2

    async def consume_async():
        results = []
        async for y in pool.map_async(tasks.square, inputs()):
            results.append(y)
            first_taken.set()
        return results

    def consume():
        try:
            if kind == "map":
                results = []
                for y in pool.map(tasks.square, inputs()):
                    results.append(y)
                    first_taken.set()
            else:
                results = asyncio.run(consume_async())
            outcome.append(results)
        except BaseException as e:  # noqa: BLE001 - the test looks at it
            outcome.append(e)

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    assert first_taken.wait(30)
    pool.shutdown()  # the map waits for its next input meanwhile
    shut_down.set()
    thread.join(30)
    assert not thread.is_alive(), "the map waits for ever for an input the pool cannot run"
    assert len(outcome) == 1 and isinstance(outcome[0], PoolClosedError), outcome
    # not "create a new Pool", which is for calls
    assert "the pool was shut down before input #1 of a map was submitted: a map submits" in str(
        outcome[0]
    ), outcome


@pytest.mark.parametrize("kind", ["run_on_all", "run_on_all_async"])
def test_run_on_all_waiting_behind_a_task_ends_when_the_shutdown_stops_it(kind):
    """run_on_all waits for the tasks before it; a shutdown whose timeout
    stops them (the worker killed after the grace) leaves nothing to wait
    for: the call raises PoolClosedError instead of waiting for ever."""
    pool = Pool(1, qsize=1)
    pool.run_on_all(int, 0)
    blocker = pool.submit(tasks.sleep_return, 30, "blocker")
    outcome: list[object] = []

    def call():
        try:
            if kind == "run_on_all":
                outcome.append(pool.run_on_all(tasks.pid))
            else:
                outcome.append(asyncio.run(pool.run_on_all_async(tasks.pid)))
        except BaseException as e:  # noqa: BLE001 - the test looks at it
            outcome.append(e)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    time.sleep(0.3)  # it waits behind the blocker
    pool.shutdown(timeout=0.1)
    assert isinstance(blocker.exception(timeout=0), PoolClosedError)
    thread.join(30)
    assert not thread.is_alive(), "run_on_all waits for ever after the shutdown"
    assert len(outcome) == 1 and isinstance(outcome[0], PoolClosedError), outcome
    assert "run_on_all(pid)" in str(outcome[0])


def test_inputs_of_a_map_that_ended_leave_the_queue_at_once():
    # they must not wait for a free worker to be dropped: there may be none
    # (a lost host), and a shutdown waits for every task still queued
    pool = Pool(1, qsize=1)
    pool.run_on_all(int, 0)
    blocker = pool.submit(tasks.sleep_return, 3, "blocker")
    with pytest.raises(concurrent.futures.TimeoutError):
        list(pool.map(tasks.square, range(50), timeout=0.3))
    queued = pool.submit(tasks.square, 5)
    assert queued.cancel()
    assert wait_until(lambda: pool.status().totals.queued == 0, timeout=1)
    assert not blocker.done()
    pool.shutdown()  # waits for the blocker only
    assert blocker.result(timeout=0) == "blocker"


def test_shutdown_without_cancel_futures_runs_everything(tmp_path):
    pool = Pool(1, qsize=1)
    markers = [tmp_path / f"m{i}" for i in range(5)]
    futures = [pool.submit(tasks.touch, str(m), i) for i, m in enumerate(markers)]
    pool.shutdown(cancel_futures=False)
    assert [f.result(timeout=0) for f in futures] == list(range(5))
    assert all(m.exists() for m in markers)


def test_shutdown_without_wait_returns_at_once_and_still_finishes():
    pool = Pool(2)
    pool.run_on_all(int, 0)
    future = pool.submit(tasks.sleep_return, 2, "late")
    pool.shutdown(wait=False)
    assert not future.done()  # shutdown did not wait for it
    with pytest.raises(PoolClosedError):
        pool.submit(tasks.square, 1)
    assert future.result(timeout=10) == "late"
    assert wait_until(lambda: not pool_threads(), timeout=10)


@pytest.mark.parametrize("timeout", ["1", float("nan"), -1])
def test_a_bad_shutdown_timeout_raises_and_stops_nothing(timeout):
    # "1" and nan left the pool loop stuck: shutdown waited for ever
    pool = Pool(1)
    try:
        future = pool.submit(tasks.sleep_return, 0.2, "kept")
        with pytest.raises(ValueError, match="timeout must be a number of seconds >= 0 or None"):
            pool.shutdown(timeout=timeout)
        with pytest.raises(ValueError, match="timeout must be a number of seconds >= 0 or None"):
            asyncio.run(pool.shutdown_async(timeout=timeout))
        assert future.result(timeout=10) == "kept"
        assert pool.run(tasks.sleep_return, 0, "still open") == "still open"
    finally:
        pool.shutdown()


def test_terminate_workers_stops_the_tasks_a_shutdown_without_wait_waits_for():
    pool = Pool(2, qsize=1)
    pids = pool.run_on_all(tasks.pid)
    futures = [pool.submit(tasks.sleep_return, 60, i) for i in range(2)]
    assert wait_until(lambda: all(f.running() for f in futures), timeout=30)
    pool.shutdown(wait=False)
    pool.terminate_workers()
    for f in futures:
        with pytest.raises(PoolClosedError, match=r"by terminate_workers\(\) \(SIGTERM\)"):
            f.result(timeout=30)
    pool.shutdown()
    assert not any(pid_alive(pid) for pid in pids)


def test_kill_workers_while_the_shutdown_stops_them_kills_them_now(tmp_path):
    # a shutdown whose timeout is over SIGTERMs its workers after a grace
    # (``FAILED_STOP_GRACE``): kill_workers() meanwhile does not wait for it
    path = str(tmp_path / "sigterms")
    pool = Pool(2, qsize=1)
    pids = pool.run_on_all(tasks.pid)
    futures = [pool.submit(tasks.note_sigterm_then_sleep, path, 60) for _ in range(2)]
    assert wait_until(lambda: tasks.traces(path + ".started") == 2, timeout=30)
    pool.shutdown(wait=False, timeout=0)
    runtime = pool._runtime
    assert runtime is not None
    assert wait_until(lambda: runtime.closing, timeout=10)
    pool.kill_workers()
    for f in futures:
        with pytest.raises(PoolClosedError, match="by kill_workers"):
            f.result(timeout=30)
    pool.shutdown()
    assert not any(pid_alive(pid) for pid in pids)
    assert tasks.traces(path) == 0  # killed before the shutdown's SIGTERM


def test_shutdown_is_idempotent():
    pool = Pool(2)
    pids = pool.run_on_all(tasks.pid)
    pool.shutdown(wait=False)
    pool.shutdown()
    pool.shutdown()
    pool.shutdown(cancel_futures=True)
    assert not any(pid_alive(pid) for pid in pids)


def test_every_method_raises_pool_closed_after_shutdown():
    pool = Pool(1)
    pool.shutdown()
    for call in (
        lambda: pool.submit(tasks.square, 1),
        lambda: pool.run(tasks.square, 1),
        lambda: list(pool.map(tasks.square, [1])),
        lambda: pool.run_on_all(tasks.pid),
        lambda: asyncio.run(pool.run_async(tasks.square, 1)),
        lambda: asyncio.run(pool.run_on_all_async(tasks.pid)),
        lambda: asyncio.run(pool.create()),
    ):
        with pytest.raises(PoolClosedError) as info:
            call()
        assert isinstance(info.value, RuntimeError)

    async def map_async():
        async for _ in pool.map_async(tasks.square, [1]):
            pass

    with pytest.raises(PoolClosedError):
        asyncio.run(map_async())
    assert not pool.is_ready()


def test_with_statement_stops_workers_and_thread():
    threads_before = set(pool_threads())
    with Pool(2) as pool:
        pids = pool.run_on_all(tasks.pid)
        assert all(pid_alive(pid) for pid in pids)
        assert len(set(pool_threads()) - threads_before) == 1
    assert not any(pid_alive(pid) for pid in pids)
    assert set(pool_threads()) <= threads_before
    assert not set(pids) & child_pids()


def test_no_pool_thread_left_after_shutdown():
    before = set(pool_threads())
    pools = [Pool(1) for _ in range(3)]
    for pool in pools:
        pool.run(int, 0)
    assert len(set(pool_threads()) - before) == 3
    for pool in pools:
        pool.shutdown()
    assert set(pool_threads()) <= before


def test_ipc_temp_dir_removed_after_shutdown():
    before = ipc_dirs()
    pool = Pool(1)
    pool.run(int, 0)
    new = ipc_dirs() - before
    assert len(new) == 1, f"expected one new ipc dir, found {new}"
    (ipc_dir,) = new
    assert os.listdir(ipc_dir), "the broker's ipc socket is not in its dir"
    pool.shutdown()
    assert not os.path.exists(ipc_dir)


def _dead_pid() -> int:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    return dead.pid


def test_ipc_dirs_of_killed_clients_are_swept():
    # a client killed by SIGKILL cannot remove its dir: the next pool does
    stale = tempfile.mkdtemp(prefix=f"distex_zmq-{_dead_pid()}-")
    unbound = tempfile.mkdtemp(prefix=f"distex_zmq-{_dead_pid()}-")
    old = time.time() - 2 * UNBOUND_STALE_AFTER
    os.utime(stale, (old, old))  # no socket in it, and long ago
    refused = tempfile.mkdtemp(prefix=f"distex_zmq-{_dead_pid()}-")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(os.path.join(refused, SOCKET_NAME))  # bound, never listened on
    sock.close()
    alive = tempfile.mkdtemp(prefix=f"distex_zmq-{os.getpid()}-")
    try:
        with Pool(1) as pool:
            pool.run(int, 0)
        assert not os.path.exists(stale) and not os.path.exists(refused)
        assert os.path.exists(alive)  # its process runs: not stale
        assert os.path.exists(unbound)  # a pool may bind its socket in a moment
    finally:
        for path in (stale, unbound, refused, alive):
            shutil.rmtree(path, ignore_errors=True)


def test_the_ipc_dir_of_a_pool_in_another_pid_namespace_is_kept():
    # a container's pool, its /tmp shared with ours: its pid does not run
    # here, but its broker listens, so its directory stays
    other = tempfile.mkdtemp(prefix=f"distex_zmq-{_dead_pid()}-")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(os.path.join(other, SOCKET_NAME))
        listener.listen()
        with Pool(1) as pool:
            pool.run(int, 0)
        assert os.path.exists(os.path.join(other, SOCKET_NAME))
    finally:
        listener.close()
        shutil.rmtree(other, ignore_errors=True)


def test_ipc_temp_dir_removed_when_start_up_fails():
    before = ipc_dirs()
    pool = Pool(1, initializer=tasks.init_fail)
    with pytest.raises(WorkerStartError):
        pool.run(tasks.square, 1)
    pool.shutdown()
    assert ipc_dirs() - before == set()


def _assert_collected_pool_stops(use) -> None:
    threads_before = set(pool_threads())
    dirs_before = ipc_dirs()
    children_before = child_pids()
    pool = Pool(2)
    use(pool)
    assert wait_until(lambda: len(child_pids() - children_before) == 2, timeout=10)
    pids = child_pids() - children_before
    ref = weakref.ref(pool)
    del pool
    gc.collect()
    assert ref() is None, "the pool is still referenced after del"
    assert wait_until(lambda: not any(pid_alive(pid) for pid in pids), timeout=15)
    assert wait_until(lambda: set(pool_threads()) <= threads_before, timeout=5)
    assert wait_until(lambda: ipc_dirs() - dirs_before == set(), timeout=5)


def test_garbage_collected_pool_stops_its_workers():
    def use(pool):
        assert pool.run(tasks.square, 3) == 9
        assert list(pool.map(tasks.square, range(5))) == [0, 1, 4, 9, 16]
        assert pool.submit(tasks.add, 1, 2).result() == 3

    _assert_collected_pool_stops(use)


def test_garbage_collected_pool_stops_its_workers_after_run_on_all():
    def use(pool):
        assert pool.run_on_all(tasks.square, 3) == [9, 9]

    _assert_collected_pool_stops(use)


def test_a_map_keeps_its_pool_alive_until_it_ends():
    # Pool(2).map(...): nothing else refers to the pool, as with
    # ProcessPoolExecutor(2).map(...), which returns every result too. The
    # pool's finalizer, run as map() returns, would shut it down, and the
    # inputs read after its tasks drained would fail.
    threads_before = set(pool_threads())
    results = []
    for result in Pool(2).map(tasks.square, range(100)):
        results.append(result)
        if len(results) % 25 == 1:  # a full collection costs a lot in the whole suite
            gc.collect()
    assert results == [i * i for i in range(100)]

    async def consume():
        found = []
        async for result in Pool(2).map_async(tasks.square, range(100)):
            found.append(result)
            if len(found) % 25 == 1:
                gc.collect()
        return found

    assert asyncio.run(consume()) == [i * i for i in range(100)]
    # the map over, nothing keeps the pools: they stop
    gc.collect()
    assert wait_until(lambda: set(pool_threads()) <= threads_before, timeout=15)


#: Ctrl-C reaches the script as a terminal delivers it, also when the tests
#: run in the background: a shell without job control starts those with
#: SIGINT ignored, which the script would inherit (as in ``test_faults``).
SIGINT_AS_IN_A_TERMINAL = (
    "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n"
)


def _start_script(tmp_path: Path, source: str) -> subprocess.Popen[str]:
    """Run ``source`` as a script of its own, the repository as its argument,
    with Ctrl-C as a terminal delivers it (``SIGINT_AS_IN_A_TERMINAL``)."""
    path = tmp_path / "script.py"
    path.write_text(SIGINT_AS_IN_A_TERMINAL + textwrap.dedent(source))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # a session of its own: a hung forked child is killed with the script
    return subprocess.Popen(
        [sys.executable, str(path), str(ROOT)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _run_script(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    with _start_script(tmp_path, source) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def test_pool_open_at_interpreter_exit_stops_its_workers(tmp_path):
    proc = _run_script(
        tmp_path,
        """
        import atexit, os, sys
        sys.path.insert(0, sys.argv[1])
        from tests.helpers import pid_alive, wait_until

        def check():
            # runs after the pool's exit hook (atexit is last in, first out)
            gone = wait_until(lambda: not any(pid_alive(p) for p in pids), timeout=10)
            print("WORKERS GONE" if gone else "WORKERS LEFT", flush=True)

        atexit.register(check)
        from distex_zmq import Pool
        from tests import tasks
        pool = Pool(2)
        pids = pool.run_on_all(tasks.pid)
        print("PIDS", *pids, flush=True)
        # no shutdown: the interpreter exits with the pool open
        """,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    pids = [int(p) for p in lines[0].split()[1:]]
    assert len(pids) == 2
    assert "WORKERS GONE" in lines, proc.stdout + proc.stderr
    assert not any(pid_alive(pid) for pid in pids)
    assert "Traceback" not in proc.stderr, proc.stderr


def test_a_pool_used_after_the_exit_shut_it_down_says_so(tmp_path):
    # atexit runs the handlers registered last first: one registered before
    # distex_zmq was imported runs after the pools' exit handler, and was told
    # "the pool was shut down; create a new Pool", which it never was
    proc = _run_script(
        tmp_path,
        """
        import atexit, sys

        def late():
            for use in (lambda: pool.submit(abs, -1), lambda: list(pool.map(abs, [-1]))):
                try:
                    use()
                except PoolClosedError as e:
                    print("REFUSED:", e, flush=True)

        atexit.register(late)  # before distex_zmq registers its handler
        sys.path.insert(0, sys.argv[1])
        from distex_zmq import Pool, PoolClosedError
        from tests import tasks

        pool = Pool(1)
        print("RAN", pool.run(tasks.square, 3), flush=True)
        """,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "RAN 9", proc.stdout + proc.stderr
    assert len(lines) == 3, proc.stdout + proc.stderr
    for line in lines[1:]:
        assert "shut down at the interpreter's exit" in line, line
        assert "registered after distex_zmq was imported" in line, line


@pytest.mark.parametrize("ending", ["shutdown(wait=False)", "no shutdown", "pool dropped"])
def test_the_exit_waits_for_the_tasks_submitted(tmp_path, ending):
    # as it does for a ProcessPoolExecutor's: "the entire Python program will
    # not exit until all pending futures are done executing"
    proc = _run_script(
        tmp_path,
        f"""
        import gc, os, sys
        sys.path.insert(0, sys.argv[1])
        from distex_zmq import Pool
        from tests import tasks

        ending = {ending!r}
        here = os.getcwd()
        pool = Pool(2)
        pool.run_on_all(int, 0)
        futures = [
            pool.submit(tasks.sleep_touch, f"{{here}}/done-{{i}}", 0.2, i) for i in range(8)
        ]
        if ending == "shutdown(wait=False)":
            pool.shutdown(wait=False)
        elif ending == "pool dropped":
            del pool
            gc.collect()
            print("RESULTS", *(f.result(timeout=20) for f in futures), flush=True)
        print("ENDS", flush=True)
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ENDS" in proc.stdout, proc.stdout + proc.stderr
    if ending == "pool dropped":
        assert "RESULTS 0 1 2 3 4 5 6 7" in proc.stdout
    assert sorted(p.name for p in tmp_path.glob("done-*")) == [f"done-{i}" for i in range(8)]
    assert "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_a_worker_whose_task_closed_its_stdout_or_stderr_exits_quietly(tmp_path, stream):
    # a task that closes sys.stdout or sys.stderr (as a library that
    # silences a tool may) leaves its worker serving, and its exit at the
    # pool's shutdown tracebackless, as in a worker of ProcessPoolExecutor
    proc = _run_script(
        tmp_path,
        f"""
        import sys
        sys.path.insert(0, sys.argv[1])
        from distex_zmq import Pool
        from tests import tasks

        with Pool(1) as pool:
            assert pool.run(tasks.close_std, {stream!r}) == {stream!r}
            print("RAN", pool.run(tasks.square, 3), flush=True)
        print("ENDS", flush=True)
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "RAN 9\nENDS\n", proc.stdout + proc.stderr
    assert proc.stderr == "", proc.stderr


@pytest.mark.parametrize("thread", [False, True])
def test_ctrl_c_while_the_exit_waits_drops_the_tasks(tmp_path, thread):
    # thread: a thread that is not a daemon runs on at the exit, which waits
    # for it first and swallows the KeyboardInterrupt ("Exception ignored"):
    # the exit then waited for the task as if no Ctrl-C had come
    script = f"""
        import sys, threading, time
        sys.path.insert(0, sys.argv[1])
        from distex_zmq import Pool
        from tests import tasks

        pool = Pool(1)
        print("PIDS", *pool.run_on_all(tasks.pid), flush=True)
        pool.submit(tasks.sleep_return, 60)
        if {thread}:
            threading.Thread(target=time.sleep, args=(3,)).start()
        print("ENDS", flush=True)
        """
    with _start_script(tmp_path, script) as proc:
        try:
            assert proc.stdout is not None
            pids = [int(p) for p in proc.stdout.readline().split()[1:]]
            assert proc.stdout.readline() == "ENDS\n"
            time.sleep(0.5)
            assert proc.poll() is None  # the exit waits for the task
            started = time.monotonic()
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert time.monotonic() - started < 15
    assert wait_until(lambda: not any(pid_alive(pid) for pid in pids), timeout=10)
    # Python's own word of the KeyboardInterrupt that ended its wait for the
    # thread, as with any program; none of the pool's
    assert stderr.count("Traceback") == thread, stderr
    assert stderr.count("KeyboardInterrupt") == thread, stderr
    # (Python 3.13 and later print it without this line)
    ignored = sys.version_info < (3, 13) and thread
    assert not ignored or "Exception ignored in: <module 'threading'" in stderr, stderr
    assert "exits once" not in stderr, stderr


def test_a_ctrl_c_that_ends_the_program_drops_the_tasks(tmp_path):
    # the Ctrl-C reaches the caller in future.result(): it ends the program,
    # whose exit then waits for no task (the task sleeps for 60 s)
    script = """
        import sys
        sys.path.insert(0, sys.argv[1])
        from distex_zmq import Pool
        from tests import tasks

        pool = Pool(1)
        print("PIDS", *pool.run_on_all(tasks.pid), flush=True)
        pool.submit(tasks.sleep_return, 60).result()
        """
    with _start_script(tmp_path, script) as proc:
        try:
            assert proc.stdout is not None
            pids = [int(p) for p in proc.stdout.readline().split()[1:]]
            time.sleep(0.5)
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGINT, stderr
    assert "KeyboardInterrupt" in stderr and "exits once" not in stderr, stderr
    assert wait_until(lambda: not any(pid_alive(pid) for pid in pids), timeout=10)


def test_shutdown_after_a_ctrl_c_interrupted_one_waits_for_the_workers(tmp_path):
    # a Ctrl-C in Thread.join leaves Python before 3.13 thinking the pool
    # loop thread ended: a second shutdown (and the exit) returned at once
    proc = _run_script(
        tmp_path,
        """
        import os, signal, sys, threading
        sys.path.insert(0, sys.argv[1])
        from distex_zmq import Pool
        from tests import tasks
        from tests.helpers import pid_alive

        pool = Pool(1)
        pids = pool.run_on_all(tasks.pid)
        pool.submit(tasks.sleep_return, 60)
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
        try:
            pool.shutdown()  # waits for the task
        except KeyboardInterrupt:
            print("INTERRUPTED", flush=True)
        pool.shutdown(timeout=0.5)
        print("ALIVE", any(pid_alive(pid) for pid in pids), flush=True)
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["INTERRUPTED", "ALIVE False"], proc.stdout + proc.stderr


def test_a_ctrl_c_that_ends_the_program_stops_a_running_task(tmp_path):
    # its worker gets a short grace, not the one of an orderly shutdown, in
    # which a task shorter than that grace would run to its end
    trace = tmp_path / "ran"
    proc = _run_script(
        tmp_path,
        f"""
        import os, signal, sys, threading
        sys.path.insert(0, sys.argv[1])
        from distex_zmq import Pool
        from tests import tasks

        pool = Pool(1)
        pool.run(tasks.square, 2)
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
        pool.submit(tasks.touch_later, 2.0, {str(trace)!r}).result()
        """,
    )
    assert proc.returncode == -signal.SIGINT, proc.stderr
    assert not trace.exists()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_what_a_task_left_running_dies_with_a_killed_client(tmp_path, sig):
    # the workers died with the client (their parent-death signal), but what
    # their tasks started ran on, orphaned, where the docs say it does not
    # outlive the pool: no launcher was left to kill the workers' groups
    script = """
        import sys, time
        sys.path.insert(0, sys.argv[1])
        from distex_zmq import Pool
        from tests import tasks

        pool = Pool(1)
        # the group's keeper is no child of the worker: a task that waits
        # for any child never meets it
        print("CHILDREN", pool.run(tasks.has_children), flush=True)
        print("PIDS", pool.run(tasks.start_sleeper, 60), *pool.run_on_all(tasks.pid), flush=True)
        time.sleep(60)
        """
    with _start_script(tmp_path, script) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == "CHILDREN False\n"
            sleeper, worker = map(int, proc.stdout.readline().split()[1:])
            assert pid_alive(sleeper)
            proc.send_signal(sig)
            proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -sig
    assert wait_until(lambda: not pid_alive(worker), timeout=10)
    assert wait_until(lambda: not pid_alive(sleeper), timeout=10)


def test_a_second_ctrl_c_as_the_exit_drops_the_tasks_ends_it_quietly(tmp_path):
    # a user who presses Ctrl-C again while the exit stops the workers got
    # "Exception ignored in atexit callback" and a traceback of the pool's
    # wait, once more from multiprocessing's finalizers
    proc = _run_script(
        tmp_path,
        """
        import atexit, os, signal, sys, threading
        sys.path.insert(0, sys.argv[1])
        from distex_zmq import Pool
        from tests import tasks

        pool = Pool(1)
        print("PIDS", *pool.run_on_all(tasks.pid), flush=True)
        # runs before the pool's exit hook (atexit is last in, first out)
        atexit.register(
            lambda: threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT)).start()
        )
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
        pool.submit(tasks.sleep_return, 60).result()
        """,
    )
    assert proc.returncode == -signal.SIGINT, proc.stderr
    pids = [int(p) for p in proc.stdout.split()[1:]]
    assert wait_until(lambda: not any(pid_alive(pid) for pid in pids), timeout=10)
    # the KeyboardInterrupt that ended the program, and nothing of the pool's
    assert proc.stderr.count("Traceback") == 1, proc.stderr
    assert "Exception ignored" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("caught", [False, True])
def test_a_ctrl_c_that_leaves_a_with_block_stops_the_running_tasks(tmp_path, caught):
    # the block's exit waited for the tasks that workers held, which ignore
    # SIGINT, until they ended (dask's compute on the pool keeps one running
    # on each worker), where the workers of a ProcessPoolExecutor stop at a
    # Ctrl-C in a terminal; also when the KeyboardInterrupt is caught outside
    trace = tmp_path / "ran"
    proc = _run_script(
        tmp_path,
        f"""
        import os, signal, sys, threading, time
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.path.insert(0, sys.argv[1])
        from distex_zmq import Pool
        from tests import tasks
        from tests.helpers import pid_alive

        try:
            with Pool(1) as pool:
                pids = pool.run_on_all(tasks.pid)
                threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
                pool.submit(tasks.touch_later, 2.0, {str(trace)!r}).result()
        except KeyboardInterrupt:
            if not {caught}:
                raise
            print("ALIVE", any(pid_alive(pid) for pid in pids), flush=True)
            time.sleep(2.5)  # the task would have ended
        """,
    )
    if caught:
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == "ALIVE False\n", proc.stdout + proc.stderr
    else:
        assert proc.returncode == -signal.SIGINT, proc.stderr
    assert not trace.exists()


@pytest.mark.parametrize(
    ("block", "cancel"),
    [("async with", "ctrl-c"), ("async with", "timeout"), ("with", "ctrl-c")],
)
def test_a_cancellation_that_leaves_a_with_block_stops_the_running_tasks(tmp_path, block, cancel):
    # asyncio.run turns a Ctrl-C into the cancellation of its main task: the
    # block's exit saw a CancelledError, not the KeyboardInterrupt that a
    # ``with`` outside asyncio sees, and waited for the running tasks to end;
    # so did a block that a timeout cancelled, past its timeout
    trace = tmp_path / "ran"
    proc = _run_script(
        tmp_path,
        f"""
        import asyncio, os, signal, sys, threading, time
        sys.path.insert(0, sys.argv[1])
        from distex_zmq import Pool
        from tests import tasks
        from tests.helpers import pid_alive

        pids = []

        async def block():
            {block} Pool(1) as pool:
                pids.extend(await pool.run_on_all_async(tasks.pid))
                if {cancel!r} == "ctrl-c":
                    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
                await pool.run_async(tasks.touch_later, 2.0, {str(trace)!r})

        try:
            asyncio.run(asyncio.wait_for(block(), 0.5 if {cancel!r} == "timeout" else None))
        except (KeyboardInterrupt, asyncio.TimeoutError) as e:
            print(type(e).__name__, "ALIVE", any(pid_alive(pid) for pid in pids), flush=True)
            time.sleep(2.5)  # the task would have ended
        """,
    )
    assert proc.returncode == 0, proc.stderr
    caught = "KeyboardInterrupt" if cancel == "ctrl-c" else "TimeoutError"
    assert proc.stdout == f"{caught} ALIVE False\n", proc.stdout + proc.stderr
    assert not trace.exists()


def test_a_ctrl_c_during_the_start_up_stops_it(tmp_path):
    # the exit of the program that the Ctrl-C ended waited for every worker
    # to be ready, their initializers run to the end, before it stopped them
    trace = tmp_path / "initialized"
    proc = _run_script(
        tmp_path,
        f"""
        import os, signal, sys, threading
        sys.path.insert(0, sys.argv[1])
        from distex_zmq import Pool
        from tests import tasks

        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
        with Pool(1, initializer=tasks.touch_later, initargs=(3.0, {str(trace)!r})) as pool:
            pass
        """,
    )
    assert proc.returncode == -signal.SIGINT, proc.stderr
    time.sleep(3.5)  # the initializer would have ended
    assert not trace.exists()


def test_a_program_ended_by_ctrl_c_dies_of_sigint(tmp_path):
    # so that a shell or a CI loop sees the Ctrl-C (exit status 130)
    proc = _run_script(
        tmp_path,
        """
        import sys
        sys.path.insert(0, sys.argv[1])
        from distex_zmq import Pool
        from tests import tasks

        pool = Pool(1)
        pool.run(tasks.square, 2)
        raise KeyboardInterrupt
        """,
    )
    assert proc.returncode == -signal.SIGINT, proc.stderr


@pytest.mark.parametrize("shell", ["repl", "ipython"])
def test_an_interactive_session_waits_for_the_tasks_after_an_earlier_interrupt(tmp_path, shell):
    # the REPL and IPython keep the last error they showed in sys.last_value
    # and go on: a statement interrupted earlier did not end the session,
    # whose exit waits for the tasks submitted later
    if shell == "ipython":
        pytest.importorskip("IPython")
        command = [sys.executable, "-m", "IPython", "--simple-prompt", "--no-banner"]
    else:
        command = [sys.executable, "-i"]
    statements = textwrap.dedent(
        f"""\
        raise KeyboardInterrupt
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from distex_zmq import Pool
        from tests import tasks
        pool = Pool(1)
        here = {str(tmp_path)!r}
        futures = [pool.submit(tasks.sleep_touch, f"{{here}}/{{i}}", 0.2) for i in range(6)]
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["IPYTHONDIR"] = str(tmp_path / "ipython")
    proc = subprocess.run(
        command,
        input=statements + "\n",
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert "KeyboardInterrupt" in proc.stdout + proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == [
        str(i) for i in range(6)
    ], proc.stderr


@pytest.mark.parametrize("closed", ["<&-", ">&-", "2>&-", "<&- >&- 2>&-"])
def test_a_program_started_with_standard_streams_closed(tmp_path, closed):
    # a daemon or a cron job: the pool's own files must not take fds 0 to 2
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            sys.path.insert(0, sys.argv[1])
            from distex_zmq import Pool
            from tests import tasks

            with Pool(2) as pool:
                result = [pool.run(tasks.square, 3), *pool.map(tasks.square, range(4))]
            with open(sys.argv[2], "w") as f:
                f.write(repr(result))
            """
        )
    )
    out = tmp_path / "out"
    proc = subprocess.run(
        ["bash", "-c", f'exec "$0" "$1" "$2" "$3" {closed}', sys.executable, script, ROOT, out],
        capture_output=True,
        text=True,
        timeout=40,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == "[9, 0, 1, 4, 9]"


def test_a_forked_child_cannot_use_its_parents_pool(tmp_path):
    # the child has none of the pool's threads: it used to wait forever
    proc = _run_script(
        tmp_path,
        """
        import os, sys
        sys.path.insert(0, sys.argv[1])
        from distex_zmq import Pool, PoolClosedError
        from tests import tasks

        pool = Pool(2)
        pids = sorted(pool.run_on_all(tasks.pid))
        child = os.fork()
        if child == 0:
            for use in (lambda: pool.run(tasks.square, 2), lambda: list(pool.map(abs, [1]))):
                try:
                    use()
                    print("CHILD RAN A TASK", flush=True)
                except PoolClosedError as e:
                    print("CHILD REFUSED:", e, flush=True)
            print("CHILD READY", pool.is_ready(), flush=True)
            status = pool.status()  # the pool as the child can use it: not at all
            print("CHILD STATUS", status.state, status.workers, status.hosts, flush=True)
            print("CHILD SEES", pool.total_workers(), repr(pool), flush=True)
            print("CHILD ERROR", status.error, flush=True)
            # the resource tracker the workers share is the parent's child:
            # Python 3.12.10 and later reap it at the exit, and a fork that
            # tried printed a ChildProcessError's traceback
            from multiprocessing import resource_tracker
            print("CHILD REAPS TRACKER", resource_tracker._resource_tracker._pid, flush=True)
            pool.shutdown()  # must neither wait nor touch the parent's workers
            print("CHILD DONE", repr(pool), pool.status().state, flush=True)
            sys.exit(0)  # a normal exit: finalizers and atexit hooks run
        _, status = os.waitpid(child, 0)
        print("CHILD EXIT", os.waitstatus_to_exitcode(status), flush=True)
        print("PARENT", pool.run(tasks.square, 3), sorted(pool.run_on_all(tasks.pid)) == pids)
        pool.shutdown()
        """,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    refusals = [line for line in lines if line.startswith("CHILD REFUSED:")]
    assert len(refusals) == 2, proc.stdout
    assert "is a fork of it" in refusals[0] and "Create a new Pool in the child" in refusals[0]
    assert "CHILD READY False" in lines
    assert "CHILD STATUS failed () ()" in lines
    assert "CHILD SEES 0 <Pool 0/2 workers up, failed: PoolClosedError: this pool" in proc.stdout
    assert f"CHILD ERROR {refusals[0].removeprefix('CHILD REFUSED: ')}" in lines
    assert "CHILD REAPS TRACKER None" in lines
    done = "CHILD DONE <Pool 0/2 workers up, shut down> shut down"
    assert lines[-3:] == [done, "CHILD EXIT 0", "PARENT 9 True"], proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr


def test_a_pool_made_in_a_forked_child_is_shut_down_at_its_exit(tmp_path):
    # the finalizer once compared pids with the process that imported distex_zmq,
    # so a pool made in a forked child was never shut down by it
    proc = _run_script(
        tmp_path,
        """
        import glob, os, sys, tempfile
        sys.path.insert(0, sys.argv[1])
        from distex_zmq import Pool
        from tests import tasks
        from tests.helpers import pid_alive, wait_until

        child = os.fork()
        if child == 0:
            pool = Pool(1)
            print("WORKER", pool.run(tasks.pid), flush=True)
            sys.exit(0)  # with the pool open
        os.waitpid(child, 0)
        pattern = os.path.join(tempfile.gettempdir(), f"distex_zmq-{child}-*")
        print("IPC DIRS LEFT", len(glob.glob(pattern)), flush=True)
        """,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    worker = int(lines[0].split()[1])
    assert lines[1] == "IPC DIRS LEFT 0", proc.stdout + proc.stderr
    assert wait_until(lambda: not pid_alive(worker), timeout=10)
    assert "Traceback" not in proc.stderr, proc.stderr


def test_a_pool_made_in_a_multiprocessing_fork_child_waits_for_its_tasks_at_its_exit(tmp_path):
    # such a child ends with os._exit after multiprocessing's finalizers: no
    # atexit hook ran, and the pool's queued tasks were dropped
    proc = _run_script(
        tmp_path,
        """
        import glob, multiprocessing, os, sys, tempfile
        sys.path.insert(0, sys.argv[1])
        from distex_zmq import Pool
        from tests import tasks
        from tests.helpers import pid_alive, wait_until

        def child(here, queue):
            pool = Pool(2)
            queue.put(pool.run_on_all(tasks.pid))
            for i in range(8):
                pool.submit(tasks.sleep_touch, f"{here}/done-{i}", 0.2, i)
            # it returns with the pool open and its tasks queued

        here = os.getcwd()
        parent_pool = Pool(1)  # inherited by the child, which must leave it alone
        parent_pids = parent_pool.run_on_all(tasks.pid)
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        proc = ctx.Process(target=child, args=(here, queue))
        proc.start()
        workers = queue.get(timeout=30)
        proc.join(30)
        print("CHILD EXIT", proc.exitcode, flush=True)
        print("DONE", len(glob.glob(f"{here}/done-*")), flush=True)
        gone = wait_until(lambda: not any(pid_alive(p) for p in workers), timeout=10)
        print("WORKERS GONE", gone, flush=True)
        pattern = os.path.join(tempfile.gettempdir(), f"distex_zmq-{proc.pid}-*")
        print("IPC DIRS LEFT", len(glob.glob(pattern)), flush=True)
        same = parent_pool.run_on_all(tasks.pid) == parent_pids
        print("PARENT", parent_pool.run(tasks.square, 3), same, flush=True)
        parent_pool.shutdown()
        """,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == [
        "CHILD EXIT 0",
        "DONE 8",
        "WORKERS GONE True",
        "IPC DIRS LEFT 0",
        "PARENT 9 True",
    ], proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


def test_a_fork_while_the_pool_spawns_workers_does_not_stall_it(tmp_path):
    # a child forked during Popen (a multiprocessing worker, say) held its
    # exec-status pipe open: the pool loop waited until that child exited
    proc = _run_script(
        tmp_path,
        """
        import os, sys, time
        sys.path.insert(0, sys.argv[1])
        from distex_zmq import Pool

        pool = Pool(2)
        children = []
        started = time.monotonic()
        while time.monotonic() - started < 0.5:  # while the pool spawns its workers
            child = os.fork()
            if child == 0:
                time.sleep(60)
                os._exit(0)
            children.append(child)
            time.sleep(0.002)
        try:
            print("RESULT", pool.submit(abs, -1).result(timeout=15), flush=True)
        finally:
            for child in children:
                os.kill(child, 9)
                os.waitpid(child, 0)
        pool.shutdown()
        """,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == ["RESULT 1"], proc.stdout + proc.stderr


def test_workers_ignore_sigint(pool):
    pids = pool.run_on_all(tasks.pid)
    for pid in pids:
        os.kill(pid, signal.SIGINT)
    time.sleep(0.3)
    assert all(pid_alive(pid) for pid in pids)
    assert sorted(pool.run_on_all(tasks.pid)) == sorted(pids)


def test_shutdown_inside_a_running_loop():
    async def main():
        pool = Pool(1)
        pids = pool.run_on_all(tasks.pid)
        assert await pool.run_async(tasks.square, 3) == 9
        pool.shutdown()
        return pids

    pids = asyncio.run(main())
    assert not any(pid_alive(pid) for pid in pids)


def test_repr_shows_the_state():
    pool = Pool(1, lazy_create=True)
    assert "1 workers" in repr(pool)
    pool.run_on_all(int, 0)
    assert "ready" in repr(pool)
    pool.shutdown()
    assert "shut down" in repr(pool)


def test_loop_type_values_are_those_of_distex():
    assert [(t.name, int(t)) for t in LoopType] == [
        ("default", 0),
        ("asyncio", 1),
        ("uvloop", 2),
        ("proactor", 3),
        ("quamash", 4),
    ]


@pytest.mark.parametrize(
    "loop_type, expected",
    [
        (LoopType.asyncio, "asyncio.unix_events._UnixSelectorEventLoop"),
        (LoopType.uvloop, "uvloop.Loop"),
        (LoopType.default, "uvloop.Loop"),  # uvloop is installed in the test env
        ("asyncio", "asyncio.unix_events._UnixSelectorEventLoop"),  # a name, as func_pickle's
        ("uvloop", "uvloop.Loop"),
    ],
)
def test_worker_loop_types(loop_type, expected):
    pytest.importorskip("uvloop")
    with Pool(1, worker_loop=loop_type) as pool:
        assert pool.run(tasks.running_loop_class_name) == expected
        assert list(pool.map(tasks.async_square, range(4))) == [0, 1, 4, 9]


@pytest.mark.parametrize(
    "loop_type, text",
    [(LoopType.proactor, "Windows only"), (LoopType.quamash, "quamash is not supported")],
)
def test_unsupported_worker_loop_gives_a_clear_error(loop_type, text):
    # either at once when the pool is made, or as a WorkerStartError at first use
    before = child_pids()
    with pytest.raises((ValueError, WorkerStartError), match=text):
        pool = Pool(1, worker_loop=loop_type)
        try:
            pool.run(tasks.square, 2)
        finally:
            pool.shutdown()
    assert wait_until(lambda: child_pids() <= before, timeout=5)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "how", ["timeout", "cancel_futures", "cancel_futures_no_wait", "nothing_submitted"]
)
def test_shutdown_does_not_wait_for_ever_for_an_initializer_that_does_not_return(how):
    # it waited for the start, whatever its timeout, and cancelled nothing
    before = child_pids()
    pool = Pool(2, initializer=tasks.init_hang)
    futures = [] if how == "nothing_submitted" else [pool.submit(abs, -i) for i in range(5)]
    time.sleep(0.5)  # the workers run their initializer
    started = time.monotonic()
    if how == "timeout":
        pool.shutdown(timeout=1)
    elif how == "cancel_futures_no_wait":
        pool.shutdown(wait=False, cancel_futures=True)
    else:
        pool.shutdown(cancel_futures=how == "cancel_futures")
    assert time.monotonic() - started < 20
    # (what the exit of a program waits for)
    assert wait_until(lambda: child_pids() <= before, timeout=20), "workers left"
    for future in futures:
        concurrent.futures.wait([future], timeout=10)
        if how == "timeout":
            assert isinstance(future.exception(timeout=0), PoolClosedError), future
        else:
            assert future.cancelled(), future


def test_a_pool_shut_down_as_it_starts_says_nothing_and_leaves_nothing(caplog):
    # its start is cut short, with nothing to run: no news for the user
    before = child_pids()
    with caplog.at_level(logging.WARNING, logger="distex_zmq"):
        Pool(2).shutdown()
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert wait_until(lambda: child_pids() <= before, timeout=10)


def test_unknown_worker_loop_is_a_value_error():
    with pytest.raises(ValueError, match="LoopType"):
        Pool(1, worker_loop=42)
    # the names it offers are those that run here
    offered = r"unknown LoopType 'uvlop'; use one of .*uvloop=2"
    with pytest.raises(ValueError, match=offered) as info:
        Pool(1, worker_loop="uvlop")
    assert "quamash" not in str(info.value) and "proactor" not in str(info.value)


def test_the_leak_check_sees_a_leaked_pool_and_process():
    # the autouse fixture of conftest.py relies on LeakCheck: prove that it
    # finds a pool that was not shut down and a stray child, and cleans up
    check = LeakCheck()
    assert check.leftovers() == (set(), [])
    stray = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    leaked = Pool(1)
    leaked.run_on_all(int, 0)
    pids, threads = check.leftovers(timeout=0.2)
    assert stray.pid in pids
    assert len(pids) == 2  # the stray and the pool's worker
    assert len(threads) == 1 and threads[0].name == "distex_zmq pool loop"
    assert any("distex_zmq.worker" in d for d in check.describe(pids))
    check.clean_up(pids, threads)
    stray.wait(timeout=5)  # (clean_up reaped it already: no exit status left)
    assert not pid_alive(stray.pid)
    assert check.leftovers(timeout=5) == (set(), [])
    with pytest.raises(PoolClosedError):
        leaked.submit(tasks.square, 1)


def test_cancel_futures_ends_a_task_requeued_after_its_host_was_lost(tmp_path, make_pool):
    # the task ran on the spawner's worker (its future running), went back
    # to the queue with the host, and was cancelled there by the shutdown:
    # its future stayed running for ever
    spawner = LoopbackSpawner(tmp_path / "spawner.log")
    try:
        pool = make_pool(None, [f"127.0.0.1:{spawner.port}/1"], heartbeat_timeout=1.0)
        pool.run(tasks.square, 3)
        started = tmp_path / "started"
        future = pool.submit(tasks.note_pid_then_sleep, str(started), 60)
        assert wait_until(started.exists, timeout=30) and future.running()
        spawner.proc.kill()
        spawner.proc.wait()
        assert wait_until(lambda: pool.status().totals.queued == 1, timeout=30)
        pool.shutdown(cancel_futures=True)
        with pytest.raises(concurrent.futures.CancelledError, match="cancel_futures=True"):
            future.result(timeout=10)
    finally:
        spawner.stop()


@pytest.mark.timeout(90)
def test_a_shutdown_does_not_wait_for_ever_for_tasks_no_worker_can_run(tmp_path, monkeypatch):
    # every host of the pool lost (its spawner killed): the task is queued,
    # the pool tries to reconnect, and the shutdown (and so the exit of a
    # program) gives up waiting after a while, failing the task with why
    from distex_zmq.runtime import loop as runtime_loop

    monkeypatch.setattr(runtime_loop, "DRAIN_WITHOUT_WORKERS", 2.0)
    spawner = LoopbackSpawner(tmp_path / "spawner.log")
    try:
        pool = Pool(None, [f"127.0.0.1:{spawner.port}/1"], heartbeat_timeout=1.0)
        assert pool.run(tasks.square, 3) == 9
        spawner.proc.kill()
        spawner.proc.wait()
        assert wait_until(lambda: pool.total_workers() == 0, timeout=20)
        future = pool.submit(tasks.square, 4)
        stopper = threading.Thread(target=pool.shutdown)
        stopper.start()
        stopper.join(timeout=45)
        assert not stopper.is_alive(), "the shutdown waited for a task no worker can run"
        with pytest.raises(PoolClosedError, match="no worker was left to run it"):
            future.result(timeout=5)
    finally:
        spawner.stop()


def test_a_task_that_outlasts_the_shutdown_timeout_is_stopped_not_waited_for(tmp_path):
    # its worker had the grace of an orderly shutdown on top of the timeout
    # (3 s), in which this task ran to its end: shutdown(timeout=0) took
    # that long, and the task's effects happened after it had failed
    done = tmp_path / "done"
    pool = Pool(1)
    (pid,) = pool.run_on_all(tasks.pid)
    running = pool.submit(tasks.sleep_touch, str(done), 2.0)
    assert wait_until(lambda: pool.status().totals.in_flight == 1, timeout=10)
    pool.shutdown(timeout=0)
    with pytest.raises(PoolClosedError):
        running.result(timeout=0)
    assert not pid_alive(pid)
    assert not done.exists()


def test_shutdown_that_stops_waiting_sends_no_task_to_a_stopped_worker(
    tmp_path, caplog, monkeypatch
):
    # the drain timed out: the worker was told to exit, and the tasks still
    # queued fail with the pool; a result that frees the worker's credit
    # after that must not send it one of them, which it would not run
    from distex_zmq.runtime import loop as runtime_loop

    # the grace after the timeout long enough for the running task to end
    # on a busy machine: it is the result that comes after the stop
    monkeypatch.setattr(runtime_loop, "FAILED_STOP_GRACE", 10.0)
    pool = Pool(1)
    pool.run(tasks.square, 2)
    # a large result: the worker may be gone by the time the pool reads it
    large = bytes(64 << 20)
    running = pool.submit(tasks.sleep_return, 0.25, large)
    queued = [pool.submit(tasks.touch, str(tmp_path / f"q{i}")) for i in range(4)]
    assert wait_until(lambda: pool.status().totals.in_flight == 1, timeout=10)
    # the task ends within the grace that follows the timeout
    pool.shutdown(timeout=0.05)
    assert running.result(timeout=10) == large
    for future in queued:
        with pytest.raises(PoolClosedError):
            future.result(timeout=10)
    assert list(tmp_path.iterdir()) == []
    assert "could not send" not in caplog.text, caplog.text
