"""The executor contract, finer points: argument names, callbacks, references,
what pickles where, initializers, and pools that are dropped or outlived.

Every test runs on each kind of pool; the first ones share a pool, the ones
from "initializers" on make their own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import gc
import os
import subprocess
import sys
import threading
import weakref

import pytest

from distex_zmq import PoolClosedError, SerializationError, WorkerStartError
from tests import tasks
from tests.contract.conftest import WORKERS
from tests.helpers import pid_alive, wait_until
from tests.multihost import ROOT

pytestmark = pytest.mark.timeout(90)

KEYWORDS = {"self": 2, "fn": 3, "func": 4}


# the names of the pool's own parameters are free for the task


def test_submit_passes_any_keyword_to_the_task(executor):
    assert executor.submit(tasks.capture, 1, **KEYWORDS).result(30) == ((1,), KEYWORDS)


@pytest.mark.parametrize("method", ["run", "run_async", "run_on_all", "run_on_all_async"])
def test_run_methods_pass_any_keyword_to_the_task(executor, method):
    call = getattr(executor, method)
    if method.endswith("_async"):
        result = asyncio.run(call(tasks.capture, 1, **KEYWORDS))
    else:
        result = call(tasks.capture, 1, **KEYWORDS)
    expected = ((1,), KEYWORDS)
    assert result == ([expected] * WORKERS if "on_all" in method else expected)


# futures, callbacks and references


def test_done_callbacks_run_once_and_may_submit(executor):
    seen: list[cf.Future] = []
    follow_ups: list[cf.Future] = []
    called = threading.Event()

    def callback(future):
        seen.append(future)
        follow_ups.append(executor.submit(tasks.square, future.result()))
        called.set()

    future = executor.submit(tasks.square, 3)
    future.add_done_callback(callback)
    assert called.wait(30) and follow_ups[0].result(timeout=30) == 81
    future.add_done_callback(seen.append)  # on a done future: at once, in this thread
    assert seen == [future, future]


def test_as_completed_edges(executor):
    slow = executor.submit(tasks.sleep_return, 0.5, "slow")
    with pytest.raises(cf.TimeoutError):
        next(cf.as_completed([slow], timeout=0))
    assert list(cf.as_completed([slow, slow], timeout=30)) == [slow]  # duplicates count once


def test_no_reference_to_arguments_is_kept(executor):
    kept = tasks.Scaler(2)
    ref = weakref.ref(kept)
    assert executor.submit(tasks.identity, kept).result(timeout=30).factor == 2
    dropped = tasks.Scaler(3)
    ref_dropped = weakref.ref(dropped)
    executor.submit(tasks.identity, dropped)  # future discarded at once
    del kept, dropped
    executor.run_on_all(int, 0)  # after the tasks above
    gc.collect()
    assert ref() is None and ref_dropped() is None


# what pickles where


def test_lambdas_and_closures_run(executor):
    k = 10
    assert executor.run(lambda: k * 2) == 20
    assert list(executor.map(lambda x: x + k, range(3))) == [10, 11, 12]


def test_unpicklable_argument_fails_its_future_as_under_a_process_pool(executor):
    # ProcessPoolExecutor returns such a future too: a loop that submits a
    # list and handles errors future by future meets the error where it looks
    futures = [executor.submit(tasks.identity, x) for x in (1, threading.Lock(), 3)]
    assert futures[1].done()
    with pytest.raises(TypeError, match="cannot pickle '_thread.lock' object"):
        futures[1].result(timeout=0)
    assert [futures[0].result(timeout=30), futures[2].result(timeout=30)] == [1, 3]
    with pytest.raises(TypeError, match="cannot pickle"):
        executor.run(tasks.identity, threading.Lock())


def test_unpicklable_result_and_error_are_serialization_errors(executor):
    with pytest.raises(SerializationError, match="could not be pickled"):
        executor.run(tasks.return_lock)
    # ProcessPoolExecutor raises the pickler's TypeError here: code that
    # catches that catches this too
    with pytest.raises(TypeError, match="cannot pickle '_thread.lock' object"):
        executor.submit(tasks.return_lock).result(timeout=30)
    with pytest.raises(SerializationError, match="UnpicklableError"):
        executor.run(tasks.raise_unpicklable_error)
    assert executor.run(tasks.square, 4) == 16


def failing_inputs():
    yield 1
    yield 2
    raise KeyError("in the input")


async def failing_async_inputs():
    for x in failing_inputs():
        yield x


def consume(executor, method, inputs):
    """What ``executor.<method>(tasks.square, inputs)`` yields before it raises ``KeyError``."""
    seen = []
    with pytest.raises(KeyError, match="in the input"):
        if method == "map":
            for r in executor.map(tasks.square, inputs, chunksize=1):
                seen.append(r)
        else:

            async def main():
                async for r in executor.map_async(tasks.square, inputs, chunksize=1):
                    seen.append(r)

            asyncio.run(main())
    return seen


@pytest.mark.parametrize("method", ["map", "map_async"])
def test_error_in_the_input_raises_in_its_place(executor, method):
    assert consume(executor, method, failing_inputs()) == [1, 4]


@pytest.mark.parametrize("method", ["map", "map_async"])
def test_error_in_an_async_input_raises(executor, method):
    assert consume(executor, method, failing_async_inputs()) == [1, 4]


# initializers


def test_initializer_runs_on_every_worker(make_executor):
    pool = make_executor(initializer=tasks.init_state, initargs=("key", 7))
    states = pool.run_on_all(tasks.get_state)
    assert [(s["key"], s["init_count"]) for s in states] == [(7, 1)] * WORKERS
    assert all(s["init_pid"] == s["pid"] for s in states)


def test_failing_initializer_is_a_worker_start_error(make_executor):
    pool = make_executor(initializer=tasks.init_fail)
    with pytest.raises(WorkerStartError, match="initializer exploded"):
        pool.run(tasks.square, 2)


# pools that are dropped, outlived or shut down early


def test_shutdown_with_an_unconsumed_map(make_executor):
    pool = make_executor()
    results = pool.map(str, [2] * (WORKERS + 1))
    pool.shutdown()
    # as Executor.map: the map starts at the call, and the shutdown waits for it
    assert list(results) == ["2"] * (WORKERS + 1)


def test_a_map_never_iterated_runs_all_its_inputs(make_executor, tmp_path):
    # pool.map(f, xs) run for its effects, as people do with Executor.map:
    # more inputs than a map reads ahead of its consumer
    path = str(tmp_path / "traces")
    with make_executor() as pool:
        pool.map(tasks.touch, [path] * 300)
    assert tasks.traces(path) == 300


def test_shutdown_timeout_fails_what_runs_on(make_executor):
    pool = make_executor()
    pool.run_on_all(int, 0)
    futures = [pool.submit(tasks.sleep_return, 30, i) for i in range(WORKERS)]
    pool.shutdown(timeout=0.5)
    assert all(isinstance(f.exception(), PoolClosedError) for f in futures)


def test_a_dropped_pool_stops_its_workers(kind):
    pool = kind.make()
    pids = pool.run_on_all(os.getpid)
    del pool
    gc.collect()
    assert wait_until(lambda: not any(pid_alive(pid) for pid in pids), timeout=20)


def test_a_program_that_exits_without_shutdown_ends_and_leaves_no_worker(kind, tmp_path):
    path = str(tmp_path / "traces")
    script = (
        "import os, sys\n"
        "from distex_zmq import Pool\n"
        f"pool = Pool({kind.num_workers!r}, {kind.hosts!r}, **{kind.options!r})\n"
        "print(*pool.run_on_all(os.getpid), flush=True)\n"
        "from tests import tasks\n"
        f"pool.submit(tasks.sleep_touch, {path!r}, 0.5)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    pids = [int(pid) for pid in proc.stdout.split()]
    assert len(pids) == WORKERS
    assert wait_until(lambda: not any(pid_alive(pid) for pid in pids), timeout=20)
    assert tasks.traces(path) == 1  # the exit waited for the task submitted
