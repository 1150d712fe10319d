"""The sync API of Pool: submit, run, map, run_on_all, the executor contract."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import gc
import inspect
import itertools
import multiprocessing
import os
import re
import socket
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import pytest

import distex_zmq
from distex_zmq import (
    DistexError,
    HostConnectionError,
    Pool,
    PoolClosedError,
    RemoteException,
    WorkerLostError,
    WorkerStartError,
)
from tests import tasks
from tests.helpers import (
    LoopbackSpawner,
    child_pids,
    pid_alive,
    wait_until,
    workers_run_sitecustomize,
)

pytestmark = pytest.mark.timeout(60)


def test_every_sync_api_matches_builtin_map(pool):
    xs = list(range(-20, 30))
    expected = list(map(tasks.square, xs))
    assert [pool.submit(tasks.square, x).result() for x in xs] == expected
    assert [pool.run(tasks.square, x) for x in xs] == expected
    assert list(pool.map(tasks.square, xs)) == expected
    for chunksize in (2, 7, 100):
        assert list(pool.map(tasks.square, xs, chunksize=chunksize)) == expected
    futures = [pool.submit(tasks.square, x) for x in xs]
    assert [f.result() for f in concurrent.futures.as_completed(futures)] != []
    assert [f.result() for f in futures] == expected


def test_submit_futures_wait_like_any_concurrent_future(pool):
    slow = pool.submit(tasks.sleep_return, 0.5, "slow")
    with pytest.raises(concurrent.futures.TimeoutError):
        slow.result(timeout=0.01)
    results: list[str] = []
    waiters = [
        threading.Thread(target=lambda: results.append(slow.result(timeout=10))) for _ in range(4)
    ]
    for waiter in waiters:
        waiter.start()
    called = threading.Event()
    slow.add_done_callback(lambda future: called.set())
    quick = pool.submit(tasks.square, 4)
    done, _ = concurrent.futures.wait(
        [slow, quick], timeout=10, return_when=concurrent.futures.FIRST_COMPLETED
    )
    assert done == {quick}
    assert [f.result() for f in concurrent.futures.as_completed([slow, quick], timeout=10)] != []
    for waiter in waiters:
        waiter.join(10)
    assert results == ["slow"] * 4
    assert called.wait(5)
    assert slow.exception(timeout=0) is None


def test_a_function_that_is_not_callable_is_refused_in_the_caller(pool):
    calls = [
        lambda: pool.submit(42),
        lambda: pool.run("square", 3),
        lambda: list(pool.map(None, [1, 2])),
        lambda: pool.run_on_all(3.5),
        lambda: asyncio.run(pool.run_async(42)),
        lambda: asyncio.run(_consume(pool.map_async([], [1]))),
    ]
    for call in calls:
        with pytest.raises(TypeError, match="is not callable: pass the function to run first") as e:
            call()
        # nothing was pickled: no note about what a function's globals must hold
        assert not getattr(e.value, "__notes__", None)
    assert pool.run(tasks.square, 3) == 9


async def _consume(results):
    return [r async for r in results]


def test_waiting_in_a_done_callback_raises_instead_of_hanging_the_pool(pool):
    # done callbacks run on the pool loop, which delivers the results
    pending = pool.submit(tasks.sleep_return, 0.5, "late")
    errors: list[BaseException] = []
    done = threading.Event()
    waits = [
        lambda: pool.run(tasks.square, 2),
        lambda: list(pool.map(tasks.square, [1, 2])),
        lambda: pool.run_on_all(tasks.pid),
        pending.result,
        pending.exception,
    ]

    def callback(_):
        for wait in waits:
            try:
                wait()
            except RuntimeError as e:
                errors.append(e)
        done.set()

    pool.submit(tasks.square, 1).add_done_callback(callback)
    assert done.wait(10), "a wait in the callback hung the pool loop"
    assert len(errors) == len(waits)
    assert all("would wait forever: this is the pool's own thread" in str(e) for e in errors)
    # the pool goes on, and so does the pending task
    assert pool.run(tasks.square, 3) == 9
    assert pending.result(timeout=10) == "late"


def test_a_done_callback_may_wait_for_another_pools_results(pool, make_pool):
    """Only a wait for the results of the pool whose thread runs the callback
    would hang; another pool delivers its results on a thread of its own, and
    a callback may wait for them, as a ProcessPoolExecutor's callback may wait
    for another executor's."""
    other = make_pool(1)
    outcome: concurrent.futures.Future = concurrent.futures.Future()

    def callback(future):
        try:
            waited = [
                other.run(tasks.square, future.result()),
                other.submit(tasks.square, 2).result(timeout=30),
                list(other.map(tasks.square, [1, 2, 3])),
                other.run_on_all(tasks.square, 4),
            ]
            with pytest.raises(RuntimeError, match="would wait forever"):
                pool.run(tasks.square, 5)  # this pool's own: refused still
            outcome.set_result(waited)
        except BaseException as e:  # noqa: BLE001 - the test raises it
            outcome.set_exception(e)

    pool.submit(tasks.square, 3).add_done_callback(callback)
    assert outcome.result(timeout=30) == [81, 4, [1, 4, 9], [16]]
    assert pool.run(tasks.square, 6) == 36


def test_the_async_api_in_a_done_callback_raises_instead_of_hanging(make_pool):
    """A done callback may call ``asyncio.run``; awaiting there what this
    pool's own thread would deliver, which runs the callback, raises as a
    sync wait does, and ``shutdown_async`` returns without waiting, as
    ``shutdown`` does there."""
    pool = make_pool(1)
    outcome: concurrent.futures.Future = concurrent.futures.Future()

    async def in_callback() -> list[str]:
        errors = []
        waits = [
            lambda: pool.run_async(tasks.square, 2),
            lambda: _consume(pool.map_async(tasks.square, [1, 2])),
            lambda: pool.run_on_all_async(tasks.pid),
            lambda: pool.resize_async(1),
        ]
        for wait in waits:
            try:
                # bounded: without the refusal each waits for ever
                await asyncio.wait_for(wait(), 10)
            except RuntimeError as e:
                errors.append(str(e))
        await asyncio.wait_for(pool.shutdown_async(), 10)
        return errors

    def callback(_):
        try:
            outcome.set_result(asyncio.run(in_callback()))
        except BaseException as e:  # noqa: BLE001 - the test raises it
            outcome.set_exception(e)

    late = pool.submit(tasks.sleep_return, 0.3, "late")
    pool.submit(tasks.square, 1).add_done_callback(callback)
    errors = outcome.result(timeout=60)
    assert len(errors) == 4
    assert all("would wait forever: this is the pool's own thread" in e for e in errors)
    assert late.result(timeout=30) == "late"  # the shutdown let it finish
    with pytest.raises(PoolClosedError):
        pool.submit(tasks.square, 1)


def test_a_done_callback_runs_with_no_event_loop_as_in_process_pool_executor(pool):
    """A done callback may call asyncio.run (or a sync API over asyncio), as
    on the thread of ProcessPoolExecutor: the pool's loop, on whose thread it
    runs, is not running for it."""

    async def notify(value):
        await asyncio.sleep(0)
        return value

    def running_loop():
        try:
            return asyncio.get_running_loop()
        except RuntimeError:
            return None

    outcome: concurrent.futures.Future = concurrent.futures.Future()

    def callback(future):
        try:
            before = running_loop()
            notified = asyncio.run(notify(future.result()))
            outcome.set_result((before, notified))
        except BaseException as e:  # noqa: BLE001 - the test raises it
            outcome.set_exception(e)

    pool.submit(tasks.square, 3).add_done_callback(callback)
    assert outcome.result(timeout=10) == (None, 9)
    # the pool's loop runs on, and so does the chain of a callback that submits
    chained: concurrent.futures.Future = concurrent.futures.Future()
    pool.submit(tasks.square, 2).add_done_callback(
        lambda f: pool.submit(tasks.square, f.result()).add_done_callback(
            lambda g: chained.set_result(g.result())
        )
    )
    assert chained.result(timeout=10) == 16
    assert pool.run(tasks.square, 5) == 25


@pytest.mark.parametrize("escape", [SystemExit, KeyboardInterrupt, ZeroDivisionError])
def test_a_done_callback_that_raises_is_logged_and_the_pool_goes_on(pool, caplog, escape):
    """sys.exit() in a done callback (or a KeyboardInterrupt raised there)
    ended the pool loop, whose thread runs the callbacks: later tasks never
    finished and the exit warned of a coroutine never awaited. It is logged
    as an Exception there is, as concurrent.futures does."""

    def callback(_):
        raise escape(3)

    first = pool.submit(tasks.square, 2)
    first.add_done_callback(callback)
    assert first.result(timeout=10) == 4
    assert pool.submit(tasks.square, 3).result(timeout=10) == 9
    assert wait_until(lambda: "exception calling callback for" in caplog.text, timeout=10)
    assert escape.__name__ in caplog.text
    if escape is not ZeroDivisionError:
        assert "ends neither the program nor the pool" in caplog.text, caplog.text


def test_star_and_zip_match_starmap(pool):
    a, b = list(range(40)), list(range(100, 137))
    pairs = list(zip(a, b, strict=False))
    assert list(pool.map(tasks.add, a, b)) == list(map(tasks.add, a, b))
    assert list(pool.map(tasks.add, pairs, star=True)) == list(itertools.starmap(tasks.add, pairs))
    assert list(pool.map(tasks.add, pairs, star=True, chunksize=5)) == list(
        itertools.starmap(tasks.add, pairs)
    )
    assert [pool.submit(tasks.add, *pair).result() for pair in pairs] == list(
        itertools.starmap(tasks.add, pairs)
    )


def test_submit_returns_a_concurrent_future_that_completes_without_a_loop(pool):
    future = pool.submit(tasks.sleep_return, 0.05, "done")
    assert isinstance(future, concurrent.futures.Future)
    done, not_done = concurrent.futures.wait([future], timeout=10)
    assert done == {future} and not not_done
    assert future.result() == "done"
    assert future.exception() is None


def test_submit_and_run_with_kwargs(pool):
    assert pool.submit(tasks.with_kwargs, 3, scale=2, offset=1).result() == 7
    assert pool.run(tasks.with_kwargs, 3, offset=5) == 8
    assert pool.run(tasks.with_kwargs, x=4, scale=3) == 12


def test_map_with_kwargs_via_submit_and_partial(pool):
    xs = list(range(25))
    expected = [tasks.with_kwargs(x, scale=3, offset=1) for x in xs]
    futures = [pool.submit(tasks.with_kwargs, x, scale=3, offset=1) for x in xs]
    assert [f.result() for f in futures] == expected
    func = functools.partial(tasks.with_kwargs, scale=3, offset=1)
    assert list(pool.map(func, xs)) == expected


def test_pool_is_an_executor(pool):
    assert isinstance(pool, concurrent.futures.Executor)
    assert Pool.TimeoutError is concurrent.futures.TimeoutError


@pytest.fixture(scope="module")
def spawn_context():
    """multiprocessing's "spawn", its resource tracker started: a process
    that lives as long as the test process, not one a test leaves behind."""
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    return multiprocessing.get_context("spawn")


@pytest.mark.parametrize("executor", [concurrent.futures.ProcessPoolExecutor, Pool])
def test_the_arguments_of_process_pool_executor_make_a_pool(executor, spawn_context):
    # code written for ProcessPoolExecutor(max_workers=..., mp_context=...)
    # raised "unexpected keyword argument 'max_workers'"
    # (ProcessPoolExecutor takes max_tasks_per_child from Python 3.11)
    newer = {"max_tasks_per_child": None} if executor is Pool or sys.version_info >= (3, 11) else {}
    with executor(
        max_workers=2,
        mp_context=spawn_context,
        initializer=tasks.square,
        initargs=(3,),
        **newer,
    ) as ex:
        assert list(ex.map(tasks.square, range(4))) == [0, 1, 4, 9]
        if isinstance(ex, Pool):
            assert len(ex.status().workers) == 2
    for bad in (0, -1):
        with pytest.raises(ValueError, match="^max_workers must be greater than 0$"):
            executor(max_workers=bad)


@pytest.mark.parametrize("method", ["terminate_workers", "kill_workers"])
@pytest.mark.parametrize(
    "executor",
    [
        pytest.param(
            concurrent.futures.ProcessPoolExecutor,
            marks=pytest.mark.skipif(
                not hasattr(concurrent.futures.ProcessPoolExecutor, "terminate_workers"),
                reason="ProcessPoolExecutor stops its workers at once from Python 3.14",
            ),
        ),
        Pool,
    ],
)
def test_code_that_stops_the_workers_of_process_pool_executor_at_once(
    executor, method, spawn_context
):
    # Python 3.14's ProcessPoolExecutor.terminate_workers and kill_workers:
    # what runs fails with a RuntimeError (BrokenProcessPool there,
    # PoolClosedError here), what waits is cancelled, nothing more is taken,
    # and the with block's shutdown waits for the workers' exit
    with executor(max_workers=2, mp_context=spawn_context) as ex:
        assert list(ex.map(tasks.square, range(4))) == [0, 1, 4, 9]
        pids = set(ex.map(tasks.pid_after, [0.3] * 2))
        running = [ex.submit(tasks.sleep_return, 60, i) for i in range(2)]
        waiting = [ex.submit(tasks.square, i) for i in range(4)]
        wait_until(lambda: all(f.running() for f in running), timeout=30)
        time.sleep(0.2)  # ProcessPoolExecutor's futures run once queued to a worker
        getattr(ex, method)()
        for f in running:
            assert isinstance(f.exception(timeout=30), RuntimeError)
        assert wait_until(lambda: all(f.done() for f in waiting), timeout=30)
        # (ProcessPoolExecutor's queue to its workers holds max_workers + 1
        # tasks: those it moved there count as running, and fail as they
        # do; under load its workers have taken theirs before the waiting
        # ones come, and 3 of them move there)
        assert sum(f.cancelled() for f in waiting) >= (3 if executor is Pool else 1)
        assert all(f.cancelled() or isinstance(f.exception(), RuntimeError) for f in waiting)
        if executor is Pool:
            # concurrent.futures.wait sees them done; it waits for ever for
            # those that ProcessPoolExecutor 3.14.8 cancels here, whose
            # waiters it never notifies
            assert len(concurrent.futures.wait(waiting, timeout=30).done) == 4
        with pytest.raises(RuntimeError):
            ex.submit(tasks.square, 1)
    assert wait_until(lambda: not any(pid_alive(pid) for pid in pids), timeout=10)


def test_the_positional_arguments_of_process_pool_executor_say_to_give_them_by_name(
    spawn_context,
):
    # Pool(2, ctx) and Pool(2, None, init, args), in ProcessPoolExecutor's
    # order, said "hosts must be a host specification" and "qsize must be an
    # integer", which did not tell why
    by_name = r"Pool takes \(num_workers, hosts, qsize, initializer, initargs, ...\) by position"
    with pytest.raises(
        TypeError, match=f"^Pool got a multiprocessing context .* as hosts: {by_name}"
    ):
        Pool(2, spawn_context)
    with pytest.raises(TypeError, match=f"^Pool got a function \\('square'\\) as qsize: {by_name}"):
        Pool(2, None, tasks.square, (3,))  # type: ignore[arg-type]


def test_max_workers_and_num_workers_together_say_which_to_give():
    with pytest.raises(TypeError, match=r"give one of them \(max_workers is ProcessPoolExecutor"):
        Pool(3, max_workers=2)
    with pytest.raises(TypeError, match=r"^max_workers must be an integer or None, not 1\.5$"):
        Pool(max_workers=1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name, instead",
    [
        ("apply", r"use pool\.run\(func, \*args, \*\*kwds\)"),
        (
            "apply_async",
            r"use pool\.submit\(func, .*\.result\(\) where multiprocessing has \.get\(\)",
        ),
        ("imap", r"use pool\.map\(func, iterable\)"),
        ("imap_unordered", r"use pool\.map\(func, iterable, ordered=False\)"),
        ("starmap", r"use pool\.map\(func, iterable, star=True\)"),
        ("starmap_async", r"use pool\.map\(func, iterable, star=True\)"),
        ("close", r"use pool\.shutdown\(\)"),
        ("join", r"use pool\.shutdown\(\)"),
        ("terminate", r"use pool\.terminate_workers\(\), .* then pool\.shutdown\(\)"),
    ],
)
def test_a_method_of_multiprocessing_pool_says_what_to_use_instead(name, instead):
    # it raised "'Pool' object has no attribute 'apply_async'" with no hint
    pool = Pool(2, lazy_create=True)
    try:
        with pytest.raises(
            AttributeError,
            match=rf"^'Pool' object has no attribute '{name}': Pool is a "
            rf"concurrent\.futures\.Executor with the API of distex, not a "
            rf"multiprocessing\.Pool; {instead}",
        ) as info:
            getattr(pool, name)
        assert info.value.name == name and info.value.obj is pool
        assert not hasattr(pool, name)  # duck typing sees no multiprocessing.Pool
        # the attribute that dynesty looks for, as any other, has no hint
        with pytest.raises(AttributeError, match=r"^'Pool' object has no attribute '_processes'$"):
            pool._processes  # noqa: B018
    finally:
        pool.shutdown()


def test_a_future_used_as_multiprocessing_async_result_says_what_to_use(pool):
    # pool.submit(f).get() raised "'TaskFuture' object has no attribute 'get'"
    future = pool.submit(tasks.square, 3)
    for name, instead in [
        ("get", r"\.result\(timeout\)"),
        ("wait", r"concurrent\.futures\.wait\(\[future\], timeout\)"),
        ("ready", r"\.done\(\)"),
        ("successful", r"\.done\(\) and \.exception\(\) is None"),
    ]:
        with pytest.raises(
            AttributeError,
            match=rf"^'TaskFuture' object has no attribute '{name}': Pool\.submit\(\.\.\.\) "
            rf"returns a concurrent\.futures\.Future, not multiprocessing's AsyncResult; "
            rf"use {instead}$",
        ):
            getattr(future, name)
    assert not hasattr(future, "get")
    assert getattr(future, "_asyncio_future_blocking", None) is None
    assert future.result(timeout=30) == 9


def test_a_future_of_submit_has_every_attribute_of_a_standard_future(pool):
    # TaskFuture sets Future.__init__'s attributes itself (it skips the
    # condition that Future.__init__ makes and drops): an attribute that a
    # later Python adds there would be missing, and wait(), as_completed()
    # or a done callback could fail on it
    future = pool.submit(tasks.square, 4)
    assert set(vars(concurrent.futures.Future())) <= set(vars(future))
    done = threading.Event()
    future.add_done_callback(lambda f: done.set())
    finished, _ = concurrent.futures.wait([future], timeout=30)
    assert finished == {future} and future.result() == 16
    assert done.wait(30)
    assert next(concurrent.futures.as_completed([future], timeout=30)) is future


def test_the_results_of_map_indexed_say_what_to_use(pool):
    # pool.map(f, xs)[0] raised "'SyncMap' object is not subscriptable"
    results = pool.map(tasks.square, range(3))
    with pytest.raises(TypeError, match=r"^Pool\.map\(\.\.\.\) returns an iterator .* list\("):
        results[0]  # noqa: B018
    assert list(results) == [0, 1, 4]  # not stopped
    assert 4 in pool.map(tasks.square, range(3))


def test_the_results_of_map_async_used_as_multiprocessing_async_result_say_what_to_use(pool):
    # pool.map_async(f, xs).get() raised "'AsyncMap' object has no attribute 'get'"
    mapping = pool.map_async(tasks.square, range(3))
    for name in ["get", "wait", "ready", "successful"]:
        with pytest.raises(
            AttributeError,
            match=rf"^'AsyncMap' object has no attribute '{name}': Pool\.map_async\(\.\.\.\) "
            r"is an async iterator \(the API of distex\), not multiprocessing's AsyncResult: "
            r"in sync code, list\(pool\.map\(\.\.\.\)\) is the list of the results",
        ):
            getattr(mapping, name)
    with pytest.raises(AttributeError, match=r"^'AsyncMap' object has no attribute 'result'$"):
        mapping.result()
    assert list(pool.map(tasks.square, range(3))) == [0, 1, 4]


def test_the_api_reference_renders_every_public_method_of_pool():
    # most come from the parts Pool is made of (pool_*.py), which the docs
    # render only as docs/api.md lists them
    api = (Path(__file__).resolve().parent.parent / "docs" / "api.md").read_text()
    directive = api.split("::: distex_zmq.Pool\n", 1)[1].split("\n\n", 1)[0]
    listed = re.findall(r"^ +- (\w+)$", directive, re.M)
    public = [
        name
        for name, value in inspect.getmembers(Pool)
        if inspect.isfunction(value) and not name.startswith("_")
    ]
    assert sorted(listed) == sorted(public)


def test_the_api_reference_renders_the_errors_and_nothing_else_of_their_module():
    # everything in it must be importable from distex_zmq, as the page says
    api = (Path(__file__).resolve().parent.parent / "docs" / "api.md").read_text()
    directive = api.split("::: distex_zmq.errors\n", 1)[1].split("\n\n", 1)[0]
    listed = re.findall(r"^ +- (\w+)$", directive, re.M)
    exported = [
        name
        for name in distex_zmq.__all__
        if inspect.isclass(getattr(distex_zmq, name))
        and getattr(distex_zmq, name).__module__ == "distex_zmq.errors"
    ]
    assert sorted(listed) == sorted(exported)


def test_tasks_run_in_parallel_on_two_workers(pool):
    futures = [pool.submit(tasks.interval, 0.5) for _ in range(2)]
    (pid_a, start_a, end_a), (pid_b, start_b, end_b) = (f.result() for f in futures)
    assert pid_a != pid_b
    assert max(start_a, start_b) < min(end_a, end_b), "the two tasks did not overlap"


def test_workers_are_child_processes(pool):
    pids = set(pool.run_on_all(tasks.pid))
    assert len(pids) == 2
    assert pids <= child_pids()
    assert os.getpid() not in pids


def test_one_task_at_a_time_stays_on_the_same_worker(pool):
    # the idle worker that finished last is taken first: its caches are warm,
    # and it polls a moment for the next task after the pool's only one
    assert len(set(pool.run_on_all(tasks.pid))) == 2
    assert len({pool.run(tasks.pid) for _ in range(20)}) == 1


def test_run_on_all_hits_each_worker_exactly_once(make_pool):
    before = child_pids()
    pool = make_pool(3)
    for _ in range(3):
        pids = pool.run_on_all(tasks.pid)
        workers = child_pids() - before
        assert len(pids) == 3
        assert len(set(pids)) == 3
        assert set(pids) <= workers


def test_run_on_all_passes_args_and_kwargs(pool):
    assert pool.run_on_all(tasks.with_kwargs, 2, scale=5, offset=1) == [11, 11]


def test_run_on_all_reaches_busy_worker_too(pool):
    busy = pool.submit(tasks.pid_after, 0.5)
    time.sleep(0.05)
    pids = pool.run_on_all(tasks.pid)
    assert busy.done()
    assert len(set(pids)) == 2
    assert busy.result() in pids


def test_run_on_all_waits_until_pending_work_drained(pool):
    futures = [pool.submit(tasks.sleep_return, 0.1, i) for i in range(8)]
    pool.run_on_all(tasks.pid)
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == list(range(8))


def test_run_on_all_raises_the_remote_error(pool):
    with pytest.raises(tasks.CustomError, match="everywhere"):
        pool.run_on_all(tasks.raise_custom, "everywhere")
    assert len(pool.run_on_all(tasks.pid)) == 2


def test_remote_exception_is_reraised_as_its_own_type(pool):
    with pytest.raises(tasks.CustomError, match="^boom$") as info:
        pool.run(tasks.raise_custom, "boom")
    cause = info.value.__cause__
    assert isinstance(cause, RemoteException)
    text = str(cause)
    assert "Remote traceback" in text
    assert "raise_custom" in text and "tasks.py" in text
    assert "CustomError: boom" in text

    with pytest.raises(KeyError, match="missing-key") as info:
        pool.submit(tasks.raise_key_error).result()
    assert isinstance(info.value.__cause__, RemoteException)
    assert "raise_key_error" in str(info.value.__cause__)


def test_pool_keeps_working_after_task_errors(pool):
    for _ in range(3):
        with pytest.raises(ValueError):
            pool.run(tasks.fail_on, 3)
    assert pool.run(tasks.fail_on, 4) == 40
    assert len(set(pool.run_on_all(tasks.pid))) == 2


def test_submit_from_8_threads_at_once(pool):
    barrier = threading.Barrier(8)

    def work(i: int) -> list[int]:
        barrier.wait()
        futures = [pool.submit(tasks.add, i, j) for j in range(50)]
        results = [f.result(timeout=30) for f in futures]
        results.append(pool.run(tasks.add, i, 1000))
        results.extend(pool.map(tasks.add, [i] * 10, range(10)))
        return results

    with concurrent.futures.ThreadPoolExecutor(8) as executor:
        results = list(executor.map(work, range(8)))
    for i, result in enumerate(results):
        assert result == [i + j for j in range(50)] + [i + 1000] + [i + j for j in range(10)]


def test_cancel_a_queued_submit(tmp_path, make_pool):
    marker = tmp_path / "cancelled-ran"
    pool = make_pool(1, qsize=1)
    pool.run_on_all(int, 0)
    first = pool.submit(tasks.sleep_return, 0.4, "first")
    queued = pool.submit(tasks.touch, str(marker), "queued")
    later = pool.submit(tasks.sleep_return, 0, "later")
    time.sleep(0.1)
    assert queued.cancel()
    assert queued.cancelled()
    with pytest.raises(concurrent.futures.CancelledError):
        queued.result()
    assert first.result() == "first"
    assert later.result() == "later"
    pool.run_on_all(tasks.pid)  # after every task before it
    assert not marker.exists(), "a cancelled queued task ran anyway"


def test_wait_and_as_completed_see_cancelled_futures_as_done(pool):
    # concurrent.futures.wait and as_completed count a cancelled future as
    # done only once the executor has been told (CANCELLED_AND_NOTIFIED)
    futures = [pool.submit(tasks.sleep_return, 0.05, i) for i in range(10)]
    cancelled = [f for f in futures[4:] if f.cancel()]
    assert cancelled, "every task had started: nothing to cancel"
    done, pending = concurrent.futures.wait(futures, timeout=10)
    assert not pending
    assert len(list(concurrent.futures.as_completed(futures, timeout=10))) == 10
    busy = [pool.submit(tasks.sleep_return, 1, i) for i in range(pool.total_workers() * 2)]
    first = pool.submit(tasks.sleep_return, 1, "slow")  # queued: every credit is busy
    assert first.cancel()
    done, _ = concurrent.futures.wait(
        [first, pool.submit(tasks.sleep_return, 1, "slow too")],
        timeout=10,
        return_when=concurrent.futures.FIRST_COMPLETED,
    )
    assert done == {first}
    assert [f.result(timeout=10) for f in busy] == list(range(len(busy)))


def test_a_dropped_future_is_freed_without_the_garbage_collector(pool):
    # 20,000 futures in reference cycles make the collector's full passes slow
    gc.disable()
    try:
        future = pool.submit(tasks.square, 3)
        assert future.result() == 9
        ref = weakref.ref(future)
        del future
        assert ref() is None
    finally:
        gc.enable()


def test_cancel_of_finished_future_is_refused(pool):
    future = pool.submit(tasks.square, 4)
    assert future.result() == 16
    assert not future.cancel()
    assert not future.cancelled()


def test_lazy_create_starts_no_workers_until_needed():
    before = child_pids()
    pool = Pool(2, lazy_create=True)
    try:
        time.sleep(0.2)
        assert child_pids() == before
        assert not pool.is_ready()
        assert not pool.ready.is_set()
        assert pool.total_workers() == 2
        assert not [t for t in threading.enumerate() if t.name == "distex_zmq pool loop"]
        assert pool.run(tasks.square, 5) == 25
        assert len(child_pids() - before) == 2
        assert pool.run_on_all(tasks.square, 3) == [9, 9]
        assert pool.is_ready()
        assert pool.ready.is_set()
    finally:
        pool.shutdown()


def test_lazy_pool_shut_down_before_use_starts_nothing():
    before = child_pids()
    pool = Pool(2, lazy_create=True)
    pool.shutdown()
    assert child_pids() == before
    with pytest.raises(PoolClosedError):
        pool.submit(tasks.square, 1)


def test_num_workers_zero_means_one_per_cpu():
    pool = Pool(0, lazy_create=True)
    try:
        assert pool.total_workers() == (os.cpu_count() or 1)
    finally:
        pool.shutdown()


def test_is_ready_and_total_workers(pool):
    assert pool.is_ready()
    assert pool.ready.is_set()
    assert pool.total_workers() == 2
    assert "2/2 workers up, ready" in repr(pool)
    pool.shutdown()
    assert not pool.is_ready()
    assert not pool.ready.is_set()


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"num_workers": -1}, ValueError),
        ({"num_workers": 1.5}, ValueError),
        ({"num_workers": False}, ValueError),  # it meant one per CPU
        ({"num_workers": True}, ValueError),
        ({"qsize": True}, ValueError),
        ({"max_retries": False}, ValueError),
        ({"max_worker_deaths": True}, ValueError),
        ({"num_workers": None}, ValueError),  # no local workers, and no hosts
        ({"qsize": 0}, ValueError),
        ({"max_retries": -1}, ValueError),
        ({"initializer": 42}, TypeError),
        ({"worker_loop": 99}, ValueError),
        ({"func_pickle": 7}, ValueError),
        ({"data_pickle": 7}, ValueError),
        ({"data_pickle": "dil"}, ValueError),
        ({"localport": 99999}, ValueError),  # libzmq would listen on 99999 % 65536
        ({"localport": -1}, ValueError),
        ({"agent_start_timeout": 0}, ValueError),
        ({"agent_start_timeout": float("inf")}, ValueError),
        ({"agent_start_timeout": True}, ValueError),
    ],
)
def test_bad_constructor_arguments_raise_at_once(kwargs, error):
    before = child_pids()
    with pytest.raises(error):
        Pool(**{"num_workers": 1, **kwargs})
    assert child_pids() == before


@pytest.mark.parametrize("flag", ["lazy_create", "ssh_tunnel", "ssh_accept_new_hosts"])
def test_a_flag_that_is_not_a_bool_is_refused(flag):
    # lazy_create="no" (a string read from a configuration) is true: the
    # pool did the opposite of what it said, silently
    before = child_pids()
    with pytest.raises(TypeError, match=f"^{flag} must be True or False, not 'no'$"):
        Pool(1, **{flag: "no"})
    assert child_pids() == before


def test_the_flags_of_shutdown_resize_and_map_that_are_not_bools_are_refused(pool):
    # each took any object as its truth value: shutdown(wait="no") waited;
    # nothing is done before the refusal
    calls = {
        "wait": lambda: pool.shutdown(wait="no"),
        "cancel_futures": lambda: pool.shutdown(cancel_futures=0),
        "drain": lambda: pool.resize(2, drain="no"),
        "ordered": lambda: pool.map(tasks.square, range(3), ordered="no"),
        "star": lambda: pool.map_async(tasks.add, [(1, 2)], star=1),
    }
    for flag, call in calls.items():
        with pytest.raises(TypeError, match=f"^{flag} must be True or False, not "):
            call()

    async def shutdown_async() -> None:
        with pytest.raises(TypeError, match="^wait must be True or False, not 'no'$"):
            await pool.shutdown_async(wait="no")
        with pytest.raises(TypeError, match="^drain must be True or False"):
            await pool.remove_hosts_async("nohost", drain=None)

    asyncio.run(shutdown_async())
    assert pool.run(tasks.square, 3) == 9
    assert sorted(pool.map(tasks.square, range(3), ordered=False)) == [0, 1, 4]


def test_picklers_may_be_given_by_name(make_pool):
    # data_pickle="dill" is what a user writes; it said "unknown PickleType"
    pool = make_pool(1, func_pickle="cloudpickle", data_pickle="Dill")
    assert pool.run(tasks.add, 2, 3) == 5
    with pytest.raises(
        ValueError, match=r"unknown PickleType 'dil'; use one of .*dill=2 \('dill'\)"
    ):
        Pool(1, data_pickle="dil")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        # each failed with a message that named no argument
        ({"task_timeout": "5"}, "task_timeout must be a positive number of seconds or None"),
        ({"initargs": 5}, r"initargs must be a tuple .*, not 5; for one argument write \(arg,\)"),
        # a string gave the initializer its characters: initargs=("x") for ("x",)
        ({"initargs": "x"}, "initargs must be a tuple of the initializer's arguments, not 'x'"),
    ],
)
def test_a_constructor_argument_of_the_wrong_type_names_itself(kwargs, message):
    with pytest.raises((TypeError, ValueError), match=message):
        Pool(1, lazy_create=True, **kwargs)


@pytest.mark.parametrize(
    "hosts",
    [
        ["127.0.0.1:47999/1", "127.0.0.1:47999/2"],
        ["mini/1", "mini:8899/3"],
        ["ssh://maxi/1", "ssh://me@maxi/2"],
    ],
)
def test_a_host_given_twice_is_refused(hosts):
    # it made two sessions there, one entry in status().hosts, and a
    # remove_hosts that took both; add_hosts refuses it as well
    with pytest.raises(ValueError, match=r"hosts name (mini|maxi|127\.0\.0\.1) twice"):
        Pool(None, hosts, lazy_create=True)


def test_a_dict_of_remote_pythons_without_one_for_a_host_is_refused(make_pool):
    # the host fell back to "python3", which failed there as "distex_zmq is
    # not installed", with no word of the dict
    with pytest.raises(ValueError, match=r"no command for the SSH host 'maxi': its keys are"):
        Pool(None, ["ssh://maxi/1"], remote_python={"ssh://maxi": "/opt/py"}, lazy_create=True)
    pool = make_pool(1, lazy_create=True, remote_python={"maxi": "/opt/py"})
    with pytest.raises(ValueError, match=r"no command for the SSH host 'mini'"):
        pool.add_hosts(["ssh://mini/1"])
    assert pool.run(abs, -2) == 2
    assert [h.spec for h in pool.status().hosts] == ["local"]
    # "*" is for the rest
    Pool(None, ["ssh://mini/1"], remote_python={"*": "/opt/py"}, lazy_create=True).shutdown()


def test_one_host_as_a_spawner_and_over_ssh_is_two_hosts():
    pool = Pool(None, ["mini/1", "ssh://mini/1"], lazy_create=True)
    assert pool.total_workers() == 2
    pool.shutdown()


@pytest.mark.parametrize("port", ["99999", "0", "-5"])
def test_spawner_refuses_a_port_out_of_range(port):
    # libzmq takes a port modulo 65536: 99999 would listen on 34463
    cmd = [sys.executable, "-m", "distex_zmq.spawner", "--port", port]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "--port must be from 1 to 65535" in result.stderr


@pytest.mark.parametrize("host", ["::1", "[::1]", "fe80::1%eth0"])
def test_spawner_refuses_an_ipv6_address(host):
    # it said "'::1' is not an address, a host name known here, or a network interface"
    cmd = [sys.executable, "-m", "distex_zmq.spawner", "--host", host, "--port", "18997"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert f"--host {host}: IPv6 addresses are not supported" in result.stderr


def test_spawner_on_an_unknown_host_name_says_so(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("a secret for this test only")
    secret.chmod(0o600)
    cmd = [sys.executable, "-m", "distex_zmq.spawner", "--host", "no-such-host.invalid"]
    cmd += ["--secret-file", str(secret), "--port", "18997"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "cannot listen on no-such-host.invalid:18997" in result.stderr
    assert "is not an address, a host name known here, or a network interface" in result.stderr


def test_pool_on_a_loopback_spawner(tmp_path):
    # a spawner without a secret, on loopback: no root, no cluster needed
    spawner = LoopbackSpawner(tmp_path / "spawner.log")
    try:
        with Pool(None, [f"127.0.0.1:{spawner.port}/2"], secret=None) as pool:
            pids = pool.run_on_all(os.getpid)
            assert len(set(pids)) == 2 and os.getpid() not in pids
            assert list(pool.map(tasks.square, range(100))) == [x * x for x in range(100)]
            # the spawner and its workers say their Python version (status shows it)
            status = pool.status()
            version = sys.version.split()[0]
            assert {(w.kind, w.python) for w in status.workers} == {("spawner", version)}
            assert [(h.kind, h.python) for h in status.hosts] == [("spawner", version)]
        # the workers were the spawner's children, and went with the pool
        assert wait_until(lambda: not any(pid_alive(p) for p in pids), timeout=10)
    finally:
        spawner.stop()
    assert spawner.proc.returncode == 0
    log = spawner.read()
    assert b"NO authentication" in log and b"opened from 127.0.0.1: up to 2 workers" in log


BOOM_SCRIPT = """
import sys
from distex_zmq import Pool

def boom(x):
    raise ValueError(f"boom {x}")  # the line the traceback shows

if __name__ == "__main__":
    with Pool(None, [sys.argv[1]], secret=None) as pool:
        try:
            pool.run(boom, 1)
        except ValueError as e:
            print(e.__cause__)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="hiding a directory from a spawner takes root")
def test_a_remote_traceback_shows_lines_of_a_script_its_host_has_no_copy_of(tmp_path):
    # the script's functions go to a host by value, and a host with no copy
    # of the script cannot show their lines: the client, which has them,
    # puts them in the remote traceback. The spawner here runs with the
    # script's directory hidden under an empty tmpfs, as on another machine.
    project = tmp_path / "project"
    project.mkdir()
    script = project / "boom.py"
    script.write_text(BOOM_SCRIPT)
    hide = f'mount -t tmpfs none {project} && exec "$@"'
    wrapper = ("unshare", "--mount", "--propagation", "private", "sh", "-c", hide, "sh")
    spawner = LoopbackSpawner(tmp_path / "spawner.log", wrapper=wrapper)
    try:
        result = subprocess.run(
            [sys.executable, str(script), f"127.0.0.1:{spawner.port}/1"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        spawner.stop()
    assert result.returncode == 0, result.stderr
    assert f'File "{script}", line 6, in boom' in result.stdout
    assert 'raise ValueError(f"boom {x}")  # the line the traceback shows' in result.stdout


def _logged(spawner: LoopbackSpawner, pattern: str) -> bool:
    """Whether the spawner logged a warning that matches ``pattern``."""
    return re.search(f"WARNING {pattern}", spawner.read().decode()) is not None


def test_a_spawner_logs_the_clients_it_refuses_in_the_handshake(tmp_path, make_pool):
    # they never reach its socket: the spawner's log said nothing of them
    secret = tmp_path / "secret"
    secret.write_text("correct horse battery staple 42\n")
    secret.chmod(0o600)
    spawner = LoopbackSpawner(
        tmp_path / "spawner.log", "--host", "127.0.0.1", "--secret-file", str(secret)
    )
    open_spawner = LoopbackSpawner(tmp_path / "open.log")
    try:
        cases = [
            (spawner, "another secret 12345", "has another shared secret"),
            # the pool may find the mismatch first and close: no detail then
            (spawner, None, "(has no|without a) shared secret"),
            (open_spawner, "another secret 12345", "shared secret.* this spawner (none|has not)"),
        ]
        for server, key, why in cases:
            with pytest.raises(HostConnectionError):
                make_pool(None, [f"127.0.0.1:{server.port}/1"], secret=key).run(abs, 1)
            logged = functools.partial(
                _logged, server, f"refused a connection in its handshake .*{why}"
            )
            assert wait_until(logged, timeout=10), server.read().decode()
        pool = make_pool(None, [f"127.0.0.1:{spawner.port}/1"], secret_file=str(secret))
        assert pool.run(abs, -1) == 1
    finally:
        spawner.stop()
        open_spawner.stop()
    assert spawner.proc.returncode == 0 == open_spawner.proc.returncode


@pytest.mark.parametrize(("mode", "who"), [(0o644, "its group and others"), (0o604, "others")])
def test_a_spawner_refuses_a_secret_file_others_can_read(tmp_path, mode, who):
    # as OpenSSH with a private key: whoever reads the secret runs code here
    secret = tmp_path / "secret"
    secret.write_text("correct horse battery staple 42\n")
    secret.chmod(mode)
    cmd = [sys.executable, "-m", "distex_zmq.spawner", "--secret-file", str(secret)]
    result = subprocess.run(cmd + ["--port", "18997"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1, result.stderr
    assert f"the secret file {secret} is open to {who} (mode {mode:04o})" in result.stderr
    assert f"`chmod 600 {secret}`, then start again" in result.stderr


def test_a_client_warns_of_a_secret_file_others_can_read(tmp_path, caplog, make_pool):
    # it still connects: the warning names the file and the fix
    private = tmp_path / "private"
    private.write_text("correct horse battery staple 42\n")
    private.chmod(0o600)
    shared = tmp_path / "shared"
    shared.write_text(private.read_text())
    shared.chmod(0o640)
    spawner = LoopbackSpawner(tmp_path / "spawner.log", "--secret-file", str(private))
    try:
        pool = make_pool(None, [f"127.0.0.1:{spawner.port}/1"], secret_file=str(shared))
        assert pool.run(abs, -1) == 1
    finally:
        spawner.stop()
    warnings = [r.getMessage() for r in caplog.records if r.name == "distex_zmq.security"]
    assert warnings == [
        f"the secret file {shared} is open to its group (mode 0640): whoever can read it "
        "can run any code, as the spawners' user, on every spawner of the cluster; make it "
        f"private with `chmod 600 {shared}`"
    ]
    assert b"the secret file" not in spawner.read()


def test_a_port_that_is_no_spawner_is_named_as_such(tmp_path, monkeypatch, make_pool):
    # host:22/2 for an SSH host, say: a peer that closes the connection is
    # not taken for a spawner that wants a secret
    monkeypatch.delenv("DISTEX_ZMQ_SECRET", raising=False)
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def close_each() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
            conn.close()

    threading.Thread(target=close_each, daemon=True).start()
    spawner = LoopbackSpawner(tmp_path / "spawner.log")
    try:
        for secret in (None, "correct horse battery staple 42"):
            with pytest.raises(HostConnectionError, match="not a distex_zmq spawner") as info:
                make_pool(None, [f"127.0.0.1:{port}/2"], secret=secret).run(abs, 1)
            assert "ssh://host/N" in str(info.value)
        # a spawner without a secret, and a pool with one: libzmq reports the
        # mechanisms' mismatch, or (as the spawner closes first) no detail
        with pytest.raises(
            HostConnectionError,
            match=r"runs without a shared secret: give it the cluster's secret"
            r"|another shared secret, or none \(give it the cluster's\)",
        ):
            secret = "correct horse battery staple 42"
            make_pool(None, [f"127.0.0.1:{spawner.port}/1"], secret=secret).run(abs, 1)
    finally:
        spawner.stop()
        server.close()


def test_secret_is_read_only_for_spawner_hosts(monkeypatch):
    monkeypatch.setenv("DISTEX_ZMQ_SECRET", "short")  # too short to derive keys from
    with Pool(1) as pool:  # no spawner host: the secret is not used
        assert pool.run(tasks.square, 3) == 9
    with pytest.raises(ValueError, match="at least 16"):
        Pool(1, ["127.0.0.1:1/1"])


@pytest.mark.parametrize("heartbeat_timeout", [0.6, 1500])
def test_a_heartbeat_timeout_a_spawner_refuses_is_refused_at_once(heartbeat_timeout):
    # the spawner refused it at the start, naming half of it ('heartbeat' =
    # 0.3 is out of range 0.5..600.0), a value the caller never gave
    with pytest.raises(ValueError, match=r"heartbeat_timeout must be from 1 to 1200 seconds"):
        Pool(None, ["127.0.0.1:1/1"], heartbeat_timeout=heartbeat_timeout, lazy_create=True)
    # an SSH host takes a short one
    Pool(None, ["ssh://mini/1"], heartbeat_timeout=0.6, lazy_create=True).shutdown()


@pytest.mark.parametrize("hosts", [["127.0.0.1:1/1"], ["ssh://mini/1"]])
def test_an_infinite_heartbeat_timeout_is_refused_at_once(hosts):
    # a spawner refused it at the start; the SSH launcher failed to set its
    # keepalive (int(inf))
    with pytest.raises(ValueError, match="heartbeat_timeout must be a positive, finite number"):
        Pool(None, hosts, heartbeat_timeout=float("inf"), lazy_create=True)


def test_add_hosts_refuses_a_spawner_host_the_heartbeat_timeout_does_not_fit(make_pool):
    pool = make_pool(1, heartbeat_timeout=0.6, connect_timeout=2, secret=None)
    with pytest.raises(ValueError, match=r"from 1 to 1200 seconds .* such as 127\.0\.0\.1:1/1"):
        pool.add_hosts(["127.0.0.1:1/1"])
    assert pool.run(tasks.square, 3) == 9


@pytest.mark.parametrize(
    "kwargs, message",
    [
        # an int made that many zero bytes: a secret anyone could guess
        ({"secret": 32}, "secret must be a string or bytes, not 32"),
        ({"secret_file": 5}, "secret_file must be a path, not 5"),
    ],
)
@pytest.mark.parametrize("hosts", [None, ["127.0.0.1:1/1"]])
def test_a_secret_of_the_wrong_type_is_refused_at_once(kwargs, message, hosts):
    with pytest.raises(TypeError, match=message):
        Pool(1, hosts, lazy_create=True, **kwargs)


def test_a_localhost_that_is_no_string_is_refused_at_once():
    # the SSH launcher handed it to the workers as their broker's address
    with pytest.raises(TypeError, match="localhost must be this machine's address or name"):
        Pool(1, ["ssh://mini/1"], localhost=5, lazy_create=True)


def test_unknown_spawner_host_is_a_clear_error():
    before = child_pids()
    pool = Pool(1, ["no-such-host.invalid/1"], secret=None)
    with pytest.raises(HostConnectionError) as info:
        pool.run_on_all(int, 0)
    pool.shutdown()
    assert "cannot resolve the host name 'no-such-host.invalid'" in str(info.value)
    assert wait_until(lambda: child_pids() == before, timeout=10)


def test_pool_with_a_bad_host_spec_raises_value_error():
    with pytest.raises(ValueError, match="number of workers"):
        Pool(hosts="just-a-host")


def test_initializer_state_is_visible_to_tasks(make_pool):
    pool = make_pool(2, initializer=tasks.init_state, initargs=("answer", 42))
    states = pool.run_on_all(tasks.get_state)
    assert len(states) == 2
    for state in states:
        assert state["answer"] == 42
        assert state["init_pid"] == state["pid"]
        assert state["init_count"] == 1
    results = [f.result() for f in [pool.submit(tasks.get_state) for _ in range(6)]]
    assert all(r["answer"] == 42 and r["init_count"] == 1 for r in results)


def pause_workers_after_hello(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the workers started from now on pause for half a second after
    their first message (the HELLO), as one that loses its core there on a
    loaded machine: the initializer is there before their loop first looks
    at their socket."""
    workers_run_sitecustomize(
        tmp_path,
        "import time, zmq\n"
        "_send = zmq.Socket.send_multipart\n"
        "def send_multipart(self, *args, **kwargs):\n"
        "    zmq.Socket.send_multipart = _send\n"
        "    tracker = _send(self, *args, **kwargs)\n"
        "    time.sleep(0.5)\n"
        "    return tracker\n"
        "zmq.Socket.send_multipart = send_multipart\n",
        monkeypatch,
    )


@pytest.mark.timeout(90)
@pytest.mark.parametrize("worker_loop", ["asyncio", "uvloop"])
def test_what_the_initializer_and_tasks_set_in_context_variables_holds_after(
    worker_loop, make_pool, tmp_path, monkeypatch
):
    # decimal's context is a ContextVar: an initializer that sets its
    # precision (as docs/guide/usage.md shows) sets it for the tasks after it,
    # and so does a task, in ProcessPoolExecutor's workers as in ours, where
    # the tasks run in callbacks of an event loop, each in a context of its own
    with concurrent.futures.ProcessPoolExecutor(
        1, initializer=tasks.set_context, initargs=("initializer", 50)
    ) as control:
        assert control.submit(tasks.read_context).result(timeout=30) == ("initializer", 50)
        control.submit(tasks.set_context, "task", 40).result(timeout=30)
        assert control.submit(tasks.read_context).result(timeout=30) == ("task", 40)
    if worker_loop == "uvloop":
        pytest.importorskip("uvloop")
    pause_workers_after_hello(tmp_path, monkeypatch)
    pool = make_pool(
        2, initializer=tasks.set_context, initargs=("initializer", 50), worker_loop=worker_loop
    )
    expected = ("initializer", 50)
    assert list(pool.map(tasks.read_context, range(40), chunksize=1)) == [expected] * 40
    assert pool.run_on_all(tasks.read_context_async) == [expected] * 2
    pool.run_on_all(tasks.set_context, "task", 40)
    expected = ("task", 40)
    assert list(pool.map(tasks.read_context, range(40))) == [expected] * 40
    assert list(pool.map(tasks.read_context_async, range(10))) == [expected] * 10


def test_initializer_that_raises_gives_worker_start_error(make_pool):
    pool = make_pool(2, initializer=tasks.init_fail)
    with pytest.raises(WorkerStartError, match="initializer exploded") as info:
        pool.run(tasks.square, 2)
    assert isinstance(info.value, DistexError)
    assert "init_fail" in str(info.value)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("bad", ["initargs", "initializer"])
def test_an_initializer_that_does_not_pickle_fails_the_start(make_pool, bad):
    # it was only logged by the broker, for each worker: no worker became
    # ready, every call waited for ever, and so did shutdown()
    unpicklable = (i for i in range(3))  # by any pickler, dill too
    if bad == "initargs":
        pool = make_pool(2, initializer=tasks.init_fail, initargs=(unpicklable,))
    else:
        pool = make_pool(2, initializer=functools.partial(tasks.init_fail, unpicklable))
    with pytest.raises(WorkerStartError, match="could not be pickled") as info:
        pool.run(tasks.square, 2)
    assert "cannot pickle 'generator' object" in str(info.value)
    with pytest.raises(WorkerStartError):
        pool.submit(tasks.square, 2).result(timeout=30)
    pool.shutdown()  # at once


def test_worker_death_fails_task_with_worker_lost_and_is_replaced(make_pool):
    pool = make_pool(1, max_retries=1)
    first_pid = pool.run(tasks.pid)
    with pytest.raises(WorkerLostError, match="exit code 7"):
        pool.run(tasks.exit_hard, 7)
    assert wait_until(lambda: not pid_alive(first_pid), timeout=5)
    new_pid = pool.run(tasks.pid)
    assert new_pid != first_pid
    assert pool.run(tasks.square, 9) == 81


def test_worker_death_with_no_retries_fails_at_once(make_pool):
    pool = make_pool(1, max_retries=0)
    pool.run_on_all(int, 0)
    # it said "killed its worker once (max_retries=0); the last: ... died"
    with pytest.raises(
        WorkerLostError,
        match=r"\(exit_hard\) killed its worker and is not run again \(the pool's "
        r"max_retries=0; Pool\(max_retries=n\) runs such a task up to n times more, "
        r"each time on another worker\): worker pid \d+ on \S+ died: exit code 3",
    ):
        pool.submit(tasks.exit_hard, 3).result(timeout=30)
    assert pool.run(tasks.square, 3) == 9


def test_tasks_queued_behind_a_dying_task_still_run(make_pool):
    pool = make_pool(1, qsize=3, max_retries=0)
    pool.run_on_all(int, 0)
    dying = pool.submit(tasks.exit_hard, 5)
    after = [pool.submit(tasks.square, i) for i in range(4)]
    with pytest.raises(WorkerLostError):
        dying.result()
    assert [f.result() for f in after] == [0, 1, 4, 9]


def test_qsize_1_keeps_queued_work_off_a_busy_worker(make_pool):
    # with one credit per worker, nothing waits behind the slow task: every
    # short task runs on the other worker
    pool = make_pool(2, qsize=1)
    pool.run_on_all(int, 0)
    slow = pool.submit(tasks.pid_after, 1.0)
    time.sleep(0.05)
    quick = [pool.submit(tasks.pid_after, 0.01) for _ in range(8)]
    done, _ = concurrent.futures.wait(quick, timeout=0.7)
    assert len(done) == 8, "short tasks waited behind the slow one"
    assert not slow.done()
    assert slow.result() not in {f.result() for f in quick}


def test_qsize_bounds_the_tasks_a_worker_holds():
    # coroutine tasks run concurrently in a worker, at most qsize at a time
    for qsize in (1, 3, 10):
        with Pool(1, qsize=qsize) as pool:
            pool.run_on_all(int, 0)
            results = list(pool.map(tasks.concurrency_probe, [0.05] * 20, range(20)))
            assert [value for value, _ in results] == list(range(20))
            most = max(seen for _, seen in results)
            assert most == qsize, f"qsize={qsize}: {most} tasks ran at once in the worker"


def test_a_callable_object_that_wraps_a_function_is_named_by_it():
    # scipy maps its objective through a _FunctionWrapper: the errors about
    # its tasks (a worker lost, a timeout) named the wrapper alone
    from scipy._lib._util import _FunctionWrapper

    from distex_zmq.tasks import callable_name

    assert callable_name(_FunctionWrapper(tasks.square, ())) == "_FunctionWrapper of square"
    assert callable_name(functools.partial(tasks.square, 3)) == "square"
    assert callable_name(tasks.square) == "square"

    class Tally:
        def __call__(self, x):
            return x

    assert callable_name(Tally()) == "Tally"
