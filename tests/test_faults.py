"""Fault tolerance: no future hangs, no worker is orphaned, the pool survives.

The crash matrix is one table: each case makes a worker (or the client
side) fail in one way, and says which exception the caller must get and
what its message must say. Every case runs under a bound on time, the leak
check of conftest.py proves no process is left, and where the pool survives
it must still compute correct results afterwards.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import faulthandler
import functools
import gc
import linecache
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from distex_zmq import (
    CrashLoopError,
    LoopType,
    Pool,
    SerializationError,
    TaskTimeoutError,
    WorkerLostError,
    WorkerStartError,
)
from distex_zmq.runtime import supervisor
from tests import fault_tasks as ft
from tests import tasks
from tests.helpers import LoopbackSpawner, MakePool, child_pids, pid_alive, wait_until

ROOT = Path(__file__).resolve().parent.parent


def assert_pool_works(pool: Pool) -> None:
    assert list(pool.map(ft.square, range(20))) == [x * x for x in range(20)]


# --- the crash matrix -------------------------------------------------------

#: a case: its pool, and the call that must raise
Case = tuple[Pool, Callable[[], Any]]


def submit_one(make_pool: MakePool, func: Any, *args: Any, **pool_kwargs: Any) -> Case:
    pool = make_pool(2, max_retries=1, **pool_kwargs)
    return pool, lambda: pool.submit(func, *args).result(timeout=30)


def case_sigkill(make_pool: MakePool) -> Case:
    return submit_one(make_pool, ft.sigkill_self)


def case_os_exit(make_pool: MakePool) -> Case:
    return submit_one(make_pool, ft.exit_3)


def case_segfault(make_pool: MakePool) -> Case:
    return submit_one(make_pool, ft.segfault)


def case_unpicklable_argument(make_pool: MakePool) -> Case:
    pool = make_pool(2)
    return pool, lambda: pool.submit(ft.takes_arg, threading.Lock()).result(timeout=0)


def case_unpicklable_result(make_pool: MakePool) -> Case:
    return submit_one(make_pool, ft.unpicklable_result)


def case_setstate_raises(make_pool: MakePool) -> Case:
    return submit_one(make_pool, ft.takes_arg, ft.BadState())


def case_poison_in_map(make_pool: MakePool) -> Case:
    pool = make_pool(2, max_retries=2)
    return pool, lambda: list(pool.map(ft.poison_at, range(40), [17] * 40))


def case_task_timeout(make_pool: MakePool) -> Case:
    return submit_one(make_pool, ft.sleep_then, 30, "never", task_timeout=0.5)


def case_initializer_raises(make_pool: MakePool) -> Case:
    pool = make_pool(2, initializer=ft.failing_initializer)
    return pool, lambda: pool.run(ft.square, 3)


CRASH_MATRIX = [
    # id, case, exception, pattern its message must match
    ("sigkill", case_sigkill, WorkerLostError, r"sigkill_self.*killed by SIGKILL"),
    ("os_exit", case_os_exit, WorkerLostError, r"exit_3.*exit code 3.*os\._exit\(3\)"),
    ("segfault", case_segfault, WorkerLostError, r"segfault.*killed by SIGSEGV.*address 0"),
    ("poison_map", case_poison_in_map, WorkerLostError, r"poison_at, input #17 .*3 times"),
    (
        "unpicklable_argument",
        case_unpicklable_argument,
        TypeError,
        r"cannot pickle '_thread.lock' object",
    ),
    (
        "unpicklable_result",
        case_unpicklable_result,
        SerializationError,
        r"result of type lock could not be pickled",
    ),
    (
        "setstate_raises",
        case_setstate_raises,
        SerializationError,
        r"could not unpickle the arguments of task .*BadState refuses",
    ),
    ("task_timeout", case_task_timeout, TaskTimeoutError, r"sleep_then.*task_timeout=0.5"),
    (
        "initializer_raises",
        case_initializer_raises,
        WorkerStartError,
        r"initializer 'failing_initializer' raised .*initializer failed on purpose",
    ),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "case, exception, pattern",
    [pytest.param(c, e, m, id=i) for i, c, e, m in CRASH_MATRIX],
)
def test_crash_matrix(
    make_pool: MakePool, case: Any, exception: type[BaseException], pattern: str
) -> None:
    pool, fail = case(make_pool)
    with pytest.raises(exception) as info:
        fail()
    assert re.search(pattern, str(info.value), re.S), str(info.value)
    if exception is not WorkerStartError:
        assert_pool_works(pool)
        # the workers up: the replacement counts once it is ready
        assert wait_until(lambda: pool.total_workers() == 2, timeout=20)


@pytest.mark.timeout(60)
def test_a_crash_says_how_to_see_where_it_crashed(make_pool: MakePool) -> None:
    # faulthandler off in the workers: the error says how to turn it on
    pool = make_pool(1, max_retries=0)
    with pytest.raises(WorkerLostError) as info:
        pool.submit(ft.segfault).result(timeout=30)
    message = str(info.value)
    assert "killed by SIGSEGV (to see the Python stack" in message, message
    assert "Pool(initializer=faulthandler.enable)" in message, message
    # as it says: the stack of the crash is in the error, and the hint is not
    pool = make_pool(1, max_retries=0, initializer=faulthandler.enable)
    with pytest.raises(WorkerLostError) as info:
        pool.submit(ft.segfault).result(timeout=30)
    message = str(info.value)
    assert "Fatal Python error: Segmentation fault" in message, message
    assert re.search(r'fault_tasks\.py", line \d+ in segfault', message), message
    assert "faulthandler.enable" not in message, message


def test_a_crash_error_keeps_the_python_stack_over_a_long_c_stack(make_pool: MakePool) -> None:
    # faulthandler writes the C stack after the Python one from Python 3.14:
    # the error's last lines of stderr keep the frame where the task crashed
    pool = make_pool(1, max_retries=0)
    with pytest.raises(WorkerLostError) as info:
        pool.submit(ft.dump_with_c_stack_and_die).result(timeout=30)
    message = str(info.value)
    assert "killed by SIGSEGV" in message, message
    assert "Fatal Python error: Segmentation fault" in message, message
    assert 'File "/srv/app/model.py", line 42 in crashing_frame' in message, message
    assert "Binary file" not in message, message
    assert "Extension modules: zmq.backend.cython._zmq" in message, message


# --- worker loss during a map ------------------------------------------------


@pytest.mark.timeout(60)
def test_worker_killed_mid_map_loses_nothing(pool: Pool, caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="distex_zmq")
    old_pids = set(pool.run_on_all(ft.pid))
    victim = min(old_pids)

    def kill_soon() -> None:
        time.sleep(0.3)
        os.kill(victim, signal.SIGKILL)

    killer = threading.Thread(target=kill_soon)
    killer.start()
    results = list(pool.map(ft.slow_square, range(1000)))
    killer.join()
    assert results == [x * x for x in range(1000)]
    # back to full size (the issue asks for 2 s; 5 s here leaves room for a loaded CI)
    assert wait_until(lambda: len(set(pool.run_on_all(ft.pid))) == 2, timeout=5)
    new_pids = set(pool.run_on_all(ft.pid))
    assert victim not in new_pids
    assert len(new_pids) == 2
    # and the user is told, on the logger's default level
    # (a send that failed first is logged too, but waits for the exit report)
    messages = [r.getMessage() for r in caplog.records]
    lost = [m for m in messages if m.startswith(f"worker pid {victim} on ") and "was lost" in m]
    assert len(lost) == 1, messages
    assert "was lost (of its tasks, " in lost[0] and " will run again and 0 failed): " in lost[0]
    assert "): killed by SIGKILL" in lost[0], lost[0]


@pytest.mark.timeout(60)
@pytest.mark.timeout(60)
def test_run_on_all_right_after_its_workers_died_waits_for_their_replacements(
    make_pool: MakePool,
) -> None:
    # no worker was ready for a moment: it ran nowhere and returned []
    pool = make_pool(2, max_retries=0)
    pool.run_on_all(int, 0)
    with pytest.raises(WorkerLostError):
        pool.run_on_all(ft.exit_3)
    pids = pool.run_on_all(ft.pid)
    assert pids and len(set(pids)) == len(pids), pids


def test_replacement_runs_the_initializer_again(make_pool: MakePool) -> None:
    pool = make_pool(2, initializer=ft.mark_initialized)
    assert pool.run_on_all(ft.initialized) == [True, True]
    victim = pool.run(ft.pid)
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: not pid_alive(victim), timeout=10)

    def replaced() -> bool:
        try:
            pids = pool.run_on_all(ft.pid)
        except WorkerLostError:  # run_on_all met the victim before its exit was seen
            return False
        return victim not in pids and len(pids) == 2

    assert wait_until(replaced, timeout=10)
    assert pool.run_on_all(ft.initialized) == [True, True]
    assert_pool_works(pool)


@pytest.mark.timeout(60)
def test_poison_task_does_not_fail_its_neighbours(make_pool: MakePool) -> None:
    pool = make_pool(2, max_retries=1)
    futures = [pool.submit(ft.poison_at, x, 7) for x in range(30)]
    done, not_done = concurrent.futures.wait(futures, timeout=30)
    assert not not_done
    for x, future in enumerate(futures):
        if x == 7:
            with pytest.raises(WorkerLostError, match=r"poison_at.*exit code 3"):
                future.result()
        else:
            assert future.result() == x * x


def test_poison_task_in_a_group_of_tiny_tasks_fails_alone(make_pool: MakePool) -> None:
    # tiny tasks queued behind busy credits travel in groups; the group that
    # dies is rerun one task at a time, so only the poison is blamed
    pool = make_pool(2, max_retries=1)
    assert pool.submit(ft.poison_at, 1, -1).result(timeout=10) == 1  # learn it is tiny
    futures = [pool.submit(ft.poison_at, x, 1000) for x in range(2000)]
    done, not_done = concurrent.futures.wait(futures, timeout=30)
    assert not not_done
    assert pool.status().totals.grouped_tasks > 1000
    for x, future in enumerate(futures):
        if x == 1000:
            with pytest.raises(
                WorkerLostError,
                match=r"killed its worker each of the last 2 times it ran \(the pool's "
                r"max_retries=1\): the last, worker pid \d+ on \S+, died: ",
            ):
                future.result()
        else:
            assert future.result() == x * x


@pytest.mark.timeout(60)
@pytest.mark.parametrize("chunksize", [10, None])
@pytest.mark.parametrize("ordered", [True, False])
def test_a_poison_input_of_a_chunk_fails_alone_and_is_named(
    make_pool: MakePool, chunksize: int | None, ordered: bool
) -> None:
    # a chunk that kills its worker runs again one input per task: the
    # inputs beside the poison in its chunk (#30 to #39 at chunksize=10)
    # yield their results, and the error names the poison, not the chunk
    pool = make_pool(2)
    yielded = []
    with pytest.raises(WorkerLostError) as info:
        for value in pool.map(
            functools.partial(ft.poison_at, poison=37),
            range(60),
            chunksize=chunksize,
            ordered=ordered,
        ):
            yielded.append(value)
    assert info.value.index == 37
    assert re.search(
        r"^task \d+ \(poison_at, input #37 of a map\) killed its worker each of the last 3 "
        r"times it ran \(the pool's max_retries=2\)",
        str(info.value),
    ), str(info.value)
    if ordered:
        assert yielded == [x * x for x in range(37)]
    else:
        assert 37 * 37 not in yielded
        assert set(yielded) <= {x * x for x in range(60)}
    # and the pool goes on
    assert list(pool.map(ft.square, range(5))) == [0, 1, 4, 9, 16]


@pytest.mark.timeout(60)
def test_a_chunk_that_killed_its_worker_with_no_retry_left_names_its_inputs(
    make_pool: MakePool,
) -> None:
    pool = make_pool(2, max_retries=0)
    with pytest.raises(WorkerLostError) as info:
        list(pool.map(functools.partial(ft.poison_at, poison=37), range(60), chunksize=10))
    assert info.value.index == 30
    assert re.search(
        r"^task \d+ \(poison_at, chunk #3 of a map: inputs #30 to #39\) killed its worker "
        r"and is not run again \(the pool's max_retries=0",
        str(info.value),
    ), str(info.value)


@pytest.mark.timeout(60)
def test_crash_loop_gives_up_with_a_clear_error(make_pool: MakePool) -> None:
    pool = make_pool(2, max_retries=0, max_worker_deaths=3)
    futures = [pool.submit(ft.exit_3) for _ in range(10)]
    concurrent.futures.wait(futures, timeout=30)
    errors = [f.exception(timeout=0) for f in futures]
    assert all(isinstance(e, (WorkerLostError, CrashLoopError)) for e in errors), errors
    assert any(isinstance(e, CrashLoopError) for e in errors)
    with pytest.raises(CrashLoopError, match="max_worker_deaths=3"):
        pool.submit(ft.square, 2)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("loop", [LoopType.default, LoopType.asyncio])
def test_a_task_that_closes_its_workers_file_descriptors_is_told_so(
    make_pool: MakePool, loop: LoopType
) -> None:
    # its worker aborts in an assertion of libzmq or the event loop; the
    # error gave only that assertion (src/signaler.cpp:238), which reads
    # as a bug of distex_zmq, not of the task
    pool = make_pool(1, max_retries=0, worker_loop=loop)
    assert pool.run(ft.square, 2) == 4
    with pytest.raises(WorkerLostError, match="killed by SIGABRT") as info:
        pool.run(ft.close_fds_not_its_own)
    assert "close_fds_not_its_own" in str(info.value)
    assert "does the task close or dup2 over file descriptors it did not open" in str(info.value)
    assert pool.run(ft.square, 3) == 9


def test_only_an_abort_in_an_assertion_on_io_is_blamed_on_closed_descriptors() -> None:
    from distex_zmq.launch.local import abort_hint

    assert abort_hint(-signal.SIGABRT, "Bad file descriptor (src/epoll.cpp:73)")
    assert abort_hint(-signal.SIGABRT, "src/unix/linux.c:1455: uv__io_poll: Assertion")
    # libzmq's failed allocation, a segfault, another abort: not a descriptor's
    assert not abort_hint(-signal.SIGABRT, "FATAL ERROR: OUT OF MEMORY (src/msg.cpp:55)")
    assert not abort_hint(-signal.SIGSEGV, "Bad file descriptor (src/epoll.cpp:73)")
    assert not abort_hint(-signal.SIGABRT, "free(): invalid pointer")


@pytest.mark.timeout(120)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS, /proc")
def test_a_result_the_client_has_no_memory_for_fails_its_task_not_the_pool() -> None:
    # libzmq in the client cannot allocate the result's message and drops
    # the worker's connection; the worker connected again, and the pool
    # waited for the lost result for ever (its shutdown too)
    script = textwrap.dedent(
        """
        import os, resource, sys
        from distex_zmq import Pool, WorkerLostError
        from tests import fault_tasks as ft

        with Pool(1, max_retries=0) as pool:
            print("RAN", pool.run(ft.square, 2), flush=True)
            with open("/proc/self/statm") as f:
                size = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            soft, hard = resource.getrlimit(resource.RLIMIT_AS)
            resource.setrlimit(resource.RLIMIT_AS, (size + (64 << 20), hard))
            try:
                pool.submit(ft.big_bytes, 256 << 20).result(timeout=60)
            except (WorkerLostError, MemoryError) as e:
                print("FAILED", type(e).__name__, e, flush=True)
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
            print("RAN", pool.run(ft.square, 3), flush=True)
        print("ENDS", flush=True)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=str(Path(__file__).parent.parent),
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "RAN 4\n" in proc.stdout and "RAN 9\nENDS\n" in proc.stdout, proc.stdout + proc.stderr
    assert "FAILED" in proc.stdout, proc.stdout + proc.stderr
    if "WorkerLostError" in proc.stdout:
        assert "its connection to the pool dropped" in proc.stdout, proc.stdout


@pytest.mark.timeout(60)
def test_a_pool_dropped_after_a_crash_loop_is_freed_and_stops() -> None:
    # The crash loop's error, kept by the pool and raised to the callers as
    # it was, took their frames along, the pool among their locals; the pool
    # loop, which runs on after a crash loop, kept that error, so a dropped
    # pool was never freed: its thread, sockets and worker lived on.
    before, threads_before = child_pids(), set(_pool_threads())

    def crash_loop() -> weakref.ref[Pool]:
        pool = Pool(2, max_retries=0, max_worker_deaths=2)
        futures = [pool.submit(ft.exit_3) for _ in range(6)]
        concurrent.futures.wait(futures, timeout=30)
        assert any(isinstance(f.exception(), CrashLoopError) for f in futures)
        with pytest.raises(CrashLoopError, match="max_worker_deaths=2"):
            pool.run(ft.square, 2)
        return weakref.ref(pool)

    dropped = crash_loop()
    gc.collect()
    assert dropped() is None
    assert wait_until(lambda: set(_pool_threads()) <= threads_before, timeout=20)
    assert wait_until(lambda: child_pids() <= before, timeout=20)


@pytest.mark.timeout(60)
def test_a_kept_error_whose_init_takes_other_arguments_is_raised_as_copies() -> None:
    # An error the pool keeps is raised as copies (fresh_error); one whose
    # class's __init__ takes other arguments than its args did not copy and
    # was raised itself: each raise gave it the caller's frames, the pool
    # among their locals, and the pool loop, which runs on, kept them, so a
    # dropped pool was never freed.
    threads_before = set(_pool_threads())

    def failed() -> weakref.ref[Pool]:
        pool = Pool(1)
        pool.run(ft.square, 2)
        runtime = pool._runtime
        assert runtime is not None
        kept = tasks.DiskError(28, "/data")
        runtime.loop.call_soon_threadsafe(runtime.fail, kept)
        assert wait_until(lambda: runtime.error is kept, timeout=10)
        raised = []
        for _ in range(2):
            with pytest.raises(tasks.DiskError, match="^code 28 on /data$") as info:
                pool.submit(ft.square, 2)
            raised.append(info.value)
        assert raised[0] is not kept and raised[1] is not kept and raised[0] is not raised[1]
        assert [(e.code, e.path) for e in raised] == [(28, "/data")] * 2
        return weakref.ref(pool)

    dropped = failed()
    gc.collect()
    assert dropped() is None
    assert wait_until(lambda: set(_pool_threads()) <= threads_before, timeout=20)


def _pool_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "distex_zmq pool loop"]


# --- start-up failures -------------------------------------------------------


@pytest.mark.timeout(30)
def test_worker_that_cannot_start_fails_create_fast(
    tmp_path: Path, monkeypatch: Any, make_pool: MakePool
) -> None:
    fake_python = tmp_path / "python"
    fake_python.write_text("#!/bin/sh\necho 'this interpreter is broken' >&2\nexit 7\n")
    fake_python.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake_python))
    pool = make_pool(2)
    broken = r"(?s)failed to start: exit code 7.*this interpreter is broken"
    with pytest.raises(WorkerStartError, match=broken):
        pool.submit(ft.square, 2).result(timeout=20)
    with pytest.raises(WorkerStartError):
        pool.submit(ft.square, 2)


# --- cancellation, timeouts, shutdown ---------------------------------------


@pytest.mark.timeout(60)
def test_a_task_that_runs_cannot_be_cancelled(make_pool: MakePool) -> None:
    # as with ProcessPoolExecutor: a future whose task runs is running, and
    # cancel() says no rather than let a "cancelled" task run; one that waits
    # in the queue is cancelled and never runs. (A task that the worker
    # held behind it is given back once it has run 20 ms, and is pending
    # again: tests/test_give_back.py.)
    pool = make_pool(1, qsize=2)
    before = pool.run(ft.pid)
    running = pool.submit(ft.sleep_then, 0.5, "ran")
    # a function never run: its worker gets no second task meanwhile
    queued = pool.submit(ft.takes_arg, "queued")
    time.sleep(0.1)
    assert running.running() and not queued.running()
    assert not running.cancel()
    assert queued.cancel() and queued.cancelled()
    assert running.result(timeout=10) == "ran"
    assert pool.run(ft.pid) == before  # not killed, not replaced


@pytest.mark.timeout(60)
def test_task_timeout_kills_and_replaces_only_that_worker(make_pool: MakePool) -> None:
    pool = make_pool(2, task_timeout=1.0)
    pids = set(pool.run_on_all(ft.pid))
    slow = pool.submit(ft.sleep_then, 30, "never")
    quick = [pool.submit(ft.sleep_then, 0.01, i) for i in range(50)]
    assert [f.result(timeout=20) for f in quick] == list(range(50))
    with pytest.raises(TaskTimeoutError, match="not retried") as raised:
        slow.result(timeout=20)
    # one class from Python 3.11, and before it, caught as each of them
    for timeout_error in (TimeoutError, asyncio.TimeoutError, concurrent.futures.TimeoutError):
        assert isinstance(raised.value, timeout_error)
    assert wait_until(lambda: len(set(pool.run_on_all(ft.pid))) == 2, timeout=5)
    assert len(pids & set(pool.run_on_all(ft.pid))) == 1


@pytest.mark.timeout(60)
def test_task_timeout_blames_the_slow_task_not_a_finished_neighbour(make_pool: MakePool) -> None:
    pool = make_pool(1, qsize=3, task_timeout=1.0)
    for _ in range(2):
        pool.submit(ft.sleep_then, 0, None).result(timeout=10)  # known as tiny
    blocker = pool.submit(time.sleep, 0.3)
    time.sleep(0.1)
    # while the blocker runs these two wait at the worker; it then runs
    # them in one go and holds the results of the blocker and the quick
    # one while the slow one runs: tasks of a tiny function do not make
    # it send first
    quick = pool.submit(ft.sleep_then, 0.0, "quick")
    slow = pool.submit(ft.sleep_then, 30, "never")
    assert blocker.result(timeout=20) is None
    assert quick.result(timeout=20) == "quick"
    with pytest.raises(TaskTimeoutError, match="not retried"):
        slow.result(timeout=20)


@pytest.mark.timeout(60)
def test_a_cancelled_neighbour_leaves_the_blame_open(make_pool: MakePool) -> None:
    """A worker dies while it holds a task whose ``run_async`` was cancelled
    and one other: either may have killed it, so the other runs again
    alone, no try counted, as when neither was cancelled. It failed with
    ``WorkerLostError`` (``max_retries=0``), blamed for the cancelled
    one's crash, or for a ``task_timeout`` that the cancelled one ran past."""
    pool = make_pool(1, qsize=2, max_retries=0)
    for _ in range(2):  # both known as tiny: the worker may hold both at once
        pool.submit(ft.sleep_then, 0, None).result(timeout=10)
        pool.submit(ft.sleep_then_exit, 0, 0).result(timeout=10)

    async def both() -> Any:
        crashing = asyncio.ensure_future(pool.run_async(ft.sleep_then_exit, 0.3, 3))
        innocent = asyncio.ensure_future(pool.run_async(ft.sleep_then, 0, "innocent"))
        while pool.status().totals.in_flight < 2:
            await asyncio.sleep(0.01)
        crashing.cancel()  # its worker holds it: it runs on, and kills the worker
        return await innocent

    assert asyncio.run(both()) == "innocent"
    assert_pool_works(pool)


@pytest.mark.timeout(60)
def test_a_result_is_not_held_back_behind_a_task_that_may_run_long(make_pool: MakePool) -> None:
    pool = make_pool(1, qsize=3)
    pool.submit(ft.square, 1).result(timeout=10)  # known as tiny
    blocker = pool.submit(time.sleep, 0.3)
    time.sleep(0.1)
    # these wait at the worker until the blocker ends; the slow one's
    # function is new to the pool, so what is done is sent before it starts
    quick = pool.submit(ft.square, 3)
    slow = pool.submit(ft.sleep_then, 3, "slow")
    assert quick.result(timeout=2) == 9
    assert blocker.done() and not slow.done()
    assert slow.result(timeout=20) == "slow"


@pytest.mark.timeout(60)
def test_a_worker_cut_off_alive_is_killed_and_replaced(tmp_path: Path, make_pool: MakePool) -> None:
    marker = tmp_path / "cut"
    pool = make_pool(2)
    cut = pool.submit(ft.cut_connection_once, str(marker))
    assert wait_until(marker.exists, timeout=10)
    time.sleep(0.1)  # the marker is written just before the cut
    victim = int(marker.read_text())
    # the cut-off worker holds a task of a function never run, so these go
    # to the other; the broker's probe of the workers that hold tasks fails
    # to reach it, and no exit is reported, as it lives on: the pool kills
    # and replaces it
    more = [pool.submit(ft.square, i) for i in range(20)]
    assert [f.result(timeout=20) for f in more] == [i * i for i in range(20)]
    assert cut.result(timeout=20) == "second run"  # ran again elsewhere
    assert wait_until(lambda: not pid_alive(victim), timeout=10)
    assert wait_until(lambda: len(set(pool.run_on_all(ft.pid))) == 2, timeout=10)
    assert victim not in set(pool.run_on_all(ft.pid))


@pytest.mark.timeout(60)
def test_a_worker_cut_off_alive_is_found_with_nothing_else_to_send(
    tmp_path: Path, make_pool: MakePool
) -> None:
    # no other task is sent that could find it cut off: the probe of the
    # workers that hold tasks does
    marker = tmp_path / "cut"
    pool = make_pool(1)
    cut = pool.submit(ft.cut_connection_once, str(marker))
    assert cut.result(timeout=30) == "second run"
    victim = int(marker.read_text())
    assert wait_until(lambda: not pid_alive(victim), timeout=10)


@pytest.mark.timeout(60)
def test_long_gil_holding_task_is_not_a_death(make_pool: MakePool) -> None:
    pool = make_pool(1)
    before = pool.run(ft.pid)
    assert pool.run(ft.catastrophic_regex, 25) is False  # seconds in C, GIL held
    assert pool.run(ft.pid) == before


@pytest.mark.timeout(60)
def test_shutdown_is_bounded_with_a_worker_stuck_in_c() -> None:
    pool = Pool(1)
    pid = pool.run(ft.pid)
    stuck = pool.submit(ft.catastrophic_regex, 60)  # would run for ages
    time.sleep(0.3)
    # shutdown(timeout=) returns although the worker never reads STOP: it escalates
    shutdown = threading.Thread(target=pool.shutdown, kwargs={"timeout": 0.5})
    shutdown.start()
    shutdown.join(timeout=30)
    assert not shutdown.is_alive(), "shutdown hung on a worker stuck in C"
    assert not pid_alive(pid)
    with pytest.raises(Exception, match="shut down"):
        stuck.result(timeout=5)


@pytest.mark.timeout(60)
def test_shutdown_kills_a_worker_whose_exit_hangs_and_says_so(caplog) -> None:
    # an atexit handler that never returns, SIGTERM ignored: the worker
    # cannot exit after STOP; the shutdown kills it and names it
    pool = Pool(1)
    pid = pool.run(tasks.hang_at_exit)
    with caplog.at_level(logging.WARNING, logger="distex_zmq.launch.local"):
        shutdown = threading.Thread(target=pool.shutdown)
        shutdown.start()
        shutdown.join(timeout=30)
    assert not shutdown.is_alive(), "shutdown hung on a worker whose exit hangs"
    assert not pid_alive(pid)
    assert f"pid {pid}," in caplog.text and "killed with SIGKILL" in caplog.text


@pytest.mark.timeout(90)
def test_spawner_kills_its_workers_whose_exit_hangs(tmp_path, make_pool, monkeypatch) -> None:
    # on a spawner host, the same: the worker renewed while the pool goes on
    # (killed on the pool's word) and the one left at the shutdown (killed by
    # the spawner, which says so in its log)
    monkeypatch.setattr(supervisor, "LEAVE_GRACE", 1.0)
    spawner = LoopbackSpawner(tmp_path / "spawner.log")
    try:
        pool = make_pool(None, [f"127.0.0.1:{spawner.port}/1"], max_tasks_per_child=1)
        renewed = pool.run(tasks.hang_at_exit)
        assert wait_until(lambda: not pid_alive(renewed), timeout=30)
        last = pool.run(tasks.hang_at_exit)
        pool.shutdown()
        assert not pid_alive(last)
        log = spawner.read().decode(errors="replace")
        assert f"pid {last}," in log and "did not exit after the pool's shutdown" in log
    finally:
        spawner.stop()


@pytest.mark.timeout(30)
def test_shutdown_cancel_futures_cancels_queued_tasks() -> None:
    pool = Pool(1)
    pool.run(ft.pid)
    running = pool.submit(ft.sleep_then, 0.5, "ran")
    queued = [pool.submit(ft.sleep_then, 0.5, i) for i in range(10)]
    time.sleep(0.1)
    pool.shutdown(cancel_futures=True)
    assert running.result(timeout=5) == "ran"
    assert all(f.cancelled() for f in queued[2:])  # beyond the worker's credits


# --- the client dies or is interrupted ---------------------------------------


#: Ctrl-C reaches the client as a terminal delivers it, also when the tests
#: run in the background: a shell without job control starts those with
#: SIGINT ignored, which the client would inherit.
SIGINT_AS_IN_A_TERMINAL = (
    "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n"
)


def run_client(script: str, **kwargs: Any) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *sys.path]))
    return subprocess.Popen(
        [sys.executable, "-c", SIGINT_AS_IN_A_TERMINAL + textwrap.dedent(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
        **kwargs,
    )


@pytest.mark.timeout(60)
def test_client_sigkill_leaves_no_orphans() -> None:
    client = run_client(
        """
        import time
        from distex_zmq import Pool
        from tests import fault_tasks as ft
        pool = Pool(2)
        print(*pool.run_on_all(ft.pid), flush=True)
        futures = [pool.submit(ft.sleep_then, 60, i) for i in range(4)]
        time.sleep(60)
        """
    )
    try:
        assert client.stdout is not None
        line = client.stdout.readline()
        pids = [int(p) for p in line.split()]
        assert len(pids) == 2, (line, client.stderr.read() if client.stderr else "")
        assert all(pid_alive(p) for p in pids)
        time.sleep(0.3)  # the workers are busy with the 60 s tasks
        client.kill()
        client.wait(timeout=10)
        assert wait_until(lambda: not any(pid_alive(p) for p in pids), timeout=5), pids
    finally:
        client.kill()
        client.wait(timeout=10)
        if client.stdout:
            client.stdout.close()
        if client.stderr:
            client.stderr.close()


@pytest.mark.timeout(60)
def test_a_client_stopped_past_task_timeout_blames_no_task() -> None:
    # Ctrl-Z and fg, a debugger, a suspended VM: the workers run on while the
    # client stands still, and the results of tasks that ended in time wait
    # unread; that time does not count against task_timeout
    client = run_client(
        """
        from distex_zmq import Pool
        from tests import fault_tasks as ft
        with Pool(2, task_timeout=1.0) as pool:
            pids = set(pool.run_on_all(ft.pid))
            futures = [pool.submit(ft.sleep_then, 0.3, i) for i in range(12)]
            print("ready", flush=True)
            print([f.result(timeout=30) for f in futures], flush=True)
            print(set(pool.run_on_all(ft.pid)) == pids, flush=True)
        """
    )
    try:
        assert client.stdout is not None
        assert client.stdout.readline().strip() == "ready"
        time.sleep(0.2)
        client.send_signal(signal.SIGSTOP)
        time.sleep(3.0)  # past task_timeout
        client.send_signal(signal.SIGCONT)
        out, err = client.communicate(timeout=30)
        assert client.returncode == 0, err
        assert out.splitlines() == [str(list(range(12))), "True"], (out, err)
    finally:
        client.kill()
        client.wait(timeout=10)


@pytest.mark.timeout(90)
def test_a_spawner_that_stood_still_keeps_the_pools_workers(tmp_path: Path) -> None:
    # its VM paused, or the spawner stopped by Ctrl-Z and fg: the pool's
    # pings wait unread, and that time is no silence of the pool's
    spawner = LoopbackSpawner(tmp_path / "spawner.log")
    try:
        hosts = [f"127.0.0.1:{spawner.port}/2"]
        with Pool(None, hosts, secret=None, heartbeat_timeout=6.0) as pool:
            pids = set(pool.run_on_all(ft.pid))
            spawner.proc.send_signal(signal.SIGSTOP)
            # past half the pool's timeout, the spawner's limit once a
            # connection closed; within the whole, which the pool waits
            # for the host's answers
            time.sleep(4.0)
            spawner.proc.send_signal(signal.SIGCONT)
            time.sleep(1.0)  # the spawner checks its pools again
            assert set(pool.run_on_all(ft.pid)) == pids
            assert pool.status().totals.workers_lost == 0
            assert_pool_works(pool)
    finally:
        spawner.proc.send_signal(signal.SIGCONT)
        spawner.stop()
    assert b"silent for" not in spawner.read(), spawner.read().decode()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sigchld", ["SIG_IGN", "SIG_DFL"])
def test_an_exit_status_the_kernel_discarded_is_unknown_not_0(sigchld: str) -> None:
    # with SIGCHLD ignored the kernel keeps no exit status: Popen says 0
    client = run_client(
        f"""
        import signal
        signal.signal(signal.SIGCHLD, signal.{sigchld})
        from distex_zmq import Pool, WorkerLostError
        from tests import tasks
        with Pool(1, max_retries=0) as pool:
            for code in (5, 0):
                try:
                    pool.submit(tasks.exit_hard, code).result(timeout=30)
                except WorkerLostError as e:
                    print("LOST", code, e, flush=True)
            print("THEN", pool.run(tasks.square, 3), flush=True)
        """
    )
    try:
        out, err = client.communicate(timeout=50)
    finally:
        client.kill()
        client.communicate()
    assert client.returncode == 0, out + err
    lines = out.splitlines()
    assert [line.split()[:2] for line in lines] == [["LOST", "5"], ["LOST", "0"], ["THEN", "9"]]
    if sigchld == "SIG_IGN":
        for line in lines[:2]:
            assert "exit code" not in line, line
            assert "exit status unknown: this process ignores SIGCHLD" in line, line
    else:
        assert lines[0].endswith("died: exit code 5"), lines[0]
        assert lines[1].endswith("died: exit code 0"), lines[1]


@pytest.mark.timeout(60)
def test_a_spawner_that_ignores_sigchld_reports_an_unknown_exit_status(
    tmp_path: Path, make_pool: MakePool
) -> None:
    spawner = LoopbackSpawner(tmp_path / "spawner.log", ignore_sigchld=True)
    try:
        pool = make_pool(None, [f"127.0.0.1:{spawner.port}/1"], max_retries=0, secret=None)
        with pytest.raises(WorkerLostError) as lost:
            pool.submit(ft.exit_3).result(timeout=30)
        assert "exit code" not in str(lost.value)
        unknown = "exit status unknown: the supervisor on its host could not collect it"
        assert unknown in str(lost.value)
        assert pool.run(ft.square, 3) == 9
        log = spawner.read().decode()
        assert "exit status unknown: this process ignores SIGCHLD" in log, log
    finally:
        spawner.stop()


@pytest.mark.timeout(60)
def test_what_a_task_left_running_dies_with_a_killed_spawner(
    tmp_path: Path, make_pool: MakePool
) -> None:
    # its workers died with it (their parent-death signal), and what their
    # tasks started ran on: the spawner would have killed each worker's
    # group as it reaped the worker
    spawner = LoopbackSpawner(tmp_path / "spawner.log")
    try:
        pool = make_pool(None, [f"127.0.0.1:{spawner.port}/1"], secret=None)
        [worker] = pool.run_on_all(ft.pid)
        sleeper = pool.run(tasks.start_sleeper, 60)
        assert pid_alive(sleeper)
        spawner.proc.kill()
        spawner.proc.wait(10)
        assert wait_until(lambda: not pid_alive(worker), timeout=10)
        assert wait_until(lambda: not pid_alive(sleeper), timeout=10)
    finally:
        spawner.stop()


@pytest.mark.timeout(60)
def test_sigint_during_map_interrupts_only_the_client() -> None:
    client = run_client(
        """
        from distex_zmq import Pool
        from tests import fault_tasks as ft
        with Pool(2) as pool:
            before = sorted(pool.run_on_all(ft.pid))
            print("ready", flush=True)
            try:
                for _ in pool.map(ft.sleep_then, [0.2] * 200, range(200)):
                    pass
                print("map finished: no interrupt arrived", flush=True)
            except KeyboardInterrupt:
                print("interrupted", flush=True)
            after = sorted(pool.run_on_all(ft.pid))
            print("same workers" if after == before else f"workers changed {before} {after}")
            print(list(pool.map(ft.square, range(5))), flush=True)
        """
    )
    out = _interrupt_when_ready(client, after=0.5)
    assert out.split("\n")[:3] == ["interrupted", "same workers", "[0, 1, 4, 9, 16]"], out


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["here", "in a running loop"])
def test_sigint_during_sync_map_of_an_async_iterable(where: str) -> None:
    """The sync map reads async inputs on a private loop, in the caller's
    thread or, inside a running loop (a Jupyter cell), in a thread of its
    own. Ctrl-C there raises KeyboardInterrupt, not the RuntimeError of an
    aclose() that finds the map still running on that loop, and leaves no
    task of that loop pending."""
    client = run_client(
        f"""
        import asyncio, gc, sys
        sys.stderr = sys.stdout  # asyncio's complaints are checked too
        from distex_zmq import Pool
        from tests import fault_tasks as ft

        async def endless():
            i = 0
            while True:
                await asyncio.sleep(0.001)
                yield i
                i += 1

        def interrupted_map(pool):
            try:
                for i, _ in enumerate(pool.map(ft.square, endless())):
                    if i == 10:
                        print("ready", flush=True)
                print("map finished: no interrupt arrived", flush=True)
            except KeyboardInterrupt:
                print("interrupted", flush=True)
            except BaseException as e:
                print("raised", type(e).__name__, e, flush=True)

        async def cell(pool):
            interrupted_map(pool)

        with Pool(2) as pool:
            if {where == "in a running loop"}:
                # not asyncio.run: its SIGINT handler only cancels the main task
                loop = asyncio.new_event_loop()
                loop.run_until_complete(cell(pool))
                loop.close()
            else:
                interrupted_map(pool)
            gc.collect()
            print(list(pool.map(ft.square, range(5))), flush=True)
        """
    )
    out = _interrupt_when_ready(client, after=0.3)
    assert out.split("\n") == ["interrupted", "[0, 1, 4, 9, 16]", ""], out


def test_sigint_during_run_cancels_its_task_if_it_has_not_started(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    client = run_client(
        f"""
        from distex_zmq import Pool
        from tests import fault_tasks as ft, tasks
        with Pool(1, qsize=1) as pool:
            pool.run(ft.square, 1)
            blocker = pool.submit(ft.sleep_then, 1.0, "blocker")
            print("ready", flush=True)
            try:
                pool.run(tasks.touch, {str(marker)!r})  # queued behind the blocker
                print("run finished: no interrupt arrived", flush=True)
            except KeyboardInterrupt:
                print("interrupted", flush=True)
            print(blocker.result(), pool.run(ft.square, 3), flush=True)
        """
    )
    out = _interrupt_when_ready(client, after=0.3)
    assert out.split("\n")[:2] == ["interrupted", "blocker 9"], out
    assert not marker.exists(), "the interrupted run's task ran anyway"


@pytest.mark.timeout(30)
def test_an_interrupt_as_a_map_step_is_handed_to_its_loop_leaves_no_step_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Ctrl-C may land anywhere in the sync caller's step, also just after
    the step was handed to the private loop's thread and before the caller
    holds anything to wait on (a rare race, seen once in CI). The step must
    still be cancelled and over when the interrupt is raised: the map's
    ``aclose()``, next, would find it running."""
    from distex_zmq.maps import _PrivateLoop

    async def in_a_cell() -> None:
        ended = threading.Event()

        async def step() -> None:
            try:
                await asyncio.sleep(10)
            finally:
                ended.set()

        private_loop = _PrivateLoop()
        private = private_loop._loop
        assert private is not asyncio.get_running_loop()
        with private_loop as run_step:
            handed_over = private.call_soon_threadsafe

            def interrupted_after(*args: Any, **kwargs: Any) -> Any:
                monkeypatch.setattr(private, "call_soon_threadsafe", handed_over)
                handed_over(*args, **kwargs)
                raise KeyboardInterrupt  # as a signal handler raises it, on the way out

            monkeypatch.setattr(private, "call_soon_threadsafe", interrupted_after)
            coro = step()
            with pytest.raises(KeyboardInterrupt):
                run_step(coro)
            assert ended.is_set() or coro.cr_frame is None, "the step runs on"

    asyncio.run(in_a_cell())


@pytest.mark.timeout(30)
def test_a_ctrl_c_as_a_map_step_is_made_cancels_it_before_it_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As above, with the private loop in the caller's thread (no loop
    running there): a Ctrl-C that comes while the step's task is made must
    not leave that task half made, to run at the next step or to be
    reported pending. It cancels the step, which then raises it."""
    from distex_zmq.maps import _PrivateLoop

    started = threading.Event()

    async def step() -> None:
        started.set()
        await asyncio.sleep(10)

    private_loop = _PrivateLoop()
    private = private_loop._loop
    make_task = private.create_task
    raised_inside: list[bool] = []

    def ctrl_c_meanwhile(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(private, "create_task", make_task)
        task = make_task(*args, **kwargs)
        try:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # Python runs the handler between two lines
                pass
        except KeyboardInterrupt:
            raised_inside.append(True)  # where asyncio would be left half done
            raise
        return task

    # as in a terminal (a run under nohup, say, inherits SIGINT ignored)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with private_loop as run_step:
            monkeypatch.setattr(private, "create_task", ctrl_c_meanwhile)
            coro = step()
            with pytest.raises(KeyboardInterrupt):
                run_step(coro)
            assert not raised_inside, "Ctrl-C raised inside asyncio"
            assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
            run_step(asyncio.sleep(0.01))  # the next step: it must not start the first
            assert not started.is_set(), "the interrupted step ran"
            assert coro.cr_frame is None
            assert not asyncio.all_tasks(private)
    finally:
        signal.signal(signal.SIGINT, previous)


def _interrupt_when_ready(client: subprocess.Popen[str], after: float) -> str:
    """Send SIGINT ``after`` seconds past the client's "ready" line; return the
    rest of its output once it exited, which it must do cleanly."""
    try:
        assert client.stdout is not None
        assert client.stdout.readline().strip() == "ready"
        time.sleep(after)
        client.send_signal(signal.SIGINT)
        out, err = client.communicate(timeout=30)
        assert client.returncode == 0, err
        return out
    finally:
        client.kill()
        client.wait(timeout=10)


def test_remote_exception_keeps_type_and_traceback(pool: Pool) -> None:
    with pytest.raises(ZeroDivisionError) as info:
        pool.run(divmod, 1, 0)
    assert "ZeroDivisionError" in str(info.value.__cause__)


def test_remote_traceback_shows_the_lines_of_code_typed_in_the_client(pool: Pool) -> None:
    # as IPython and Jupyter keep a cell: in linecache only, under a file
    # name that exists nowhere, so the worker cannot show its lines
    filename = "/nonexistent/ipykernel_0/cell.py"
    source = "def from_a_cell(x):\n    y = x + 1\n    raise ValueError(f'bad {y}')\n"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict[str, Any] = {"__name__": "__main__"}
    try:
        exec(compile(source, filename, "exec"), namespace)
        with pytest.raises(ValueError, match="bad 2") as info:
            pool.run(namespace["from_a_cell"], 1)
    finally:
        linecache.cache.pop(filename, None)
    remote = str(info.value.__cause__)
    assert f'File "{filename}", line 3, in from_a_cell\n' in remote, remote
    assert "\n    raise ValueError(f'bad {y}')\n" in remote, remote


def test_errors_do_not_cost_the_worker(pool: Pool) -> None:
    pids = set(pool.run_on_all(ft.pid))
    for _ in range(3):
        with pytest.raises(SerializationError):
            pool.run(ft.takes_arg, ft.BadState())
        with pytest.raises(SerializationError):
            pool.run(ft.unpicklable_result)
    assert set(pool.run_on_all(ft.pid)) == pids


def test_every_api_stays_correct_while_workers_are_killed_at_random(make_pool: MakePool) -> None:
    # a few seconds of chaos: workers die at random moments while maps,
    # submits with cancellations, and async runs go on; every result must be
    # right, every future must end, and the pool must work afterwards
    import asyncio
    import random

    rng = random.Random(7)
    stop = threading.Event()

    others = child_pids()  # the workers of other pools live on

    def killer() -> None:
        while not stop.wait(rng.uniform(0.2, 0.6)):
            victims = sorted(child_pids() - others)
            if victims:
                try:
                    os.kill(rng.choice(victims), signal.SIGKILL)
                except ProcessLookupError:
                    pass

    pool = make_pool(3, qsize=rng.choice([2, 4]), max_retries=100, max_worker_deaths=1000)
    pool.run_on_all(ft.pid)
    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            n = rng.randint(100, 1000)
            chunksize = rng.choice([None, 1, 9])
            results = list(pool.map(ft.slow_square, range(n), chunksize=chunksize))
            assert results == [x * x for x in range(n)]
            futures = [pool.submit(ft.slow_square, x) for x in range(200)]
            cancelled = {f for f in futures[::2] if f.cancel()}
            done, pending = concurrent.futures.wait(futures, timeout=60)
            assert not pending
            for x, future in enumerate(futures):
                if future not in cancelled:
                    assert future.result() == x * x

            async def runs() -> list[int]:
                return await asyncio.gather(*(pool.run_async(ft.square, x) for x in range(300)))

            assert asyncio.run(runs()) == [x * x for x in range(300)]
    finally:
        stop.set()
        thread.join(5)
    assert_pool_works(pool)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how, code", [("exit", 3), ("raise", 1), ("return", 0)])
def test_a_child_that_a_task_forks_ends_when_it_leaves_the_task(
    make_pool: MakePool, how: str, code: int
) -> None:
    # the child of a task's os.fork() that calls sys.exit(), raises or
    # returns ends there, with that exit code, as multiprocessing's forked
    # children do: it does not run the worker's loop on its parent's socket
    # (and outlive the pool), while the task waits for it
    pool = make_pool(1)
    pids = set(pool.run_on_all(ft.pid))
    assert pool.run(ft.fork_and_wait, how) == ("exited", code)
    # in a chunk of a map too
    results = pool.map(ft.fork_and_wait, [how] * 3, range(3), chunksize=3)
    assert list(results) == [("exited", code)] * 3
    assert set(pool.run_on_all(ft.pid)) == pids
    assert pool.run(ft.square, 7) == 49
